"""Selection pass: decide which channel classes go.

Policies (one of): ``ratio`` (fraction of each group's prunable channels, or of
all of them with ``scope="global"``), ``threshold`` (normalized saliency below
it), ``target_macs`` (the smallest global ratio whose planned MACs meet it) —
:class:`Selection`; or any cost model with a target (an estimated latency) —
:class:`CostSelection`. Then per group (:class:`GroupPlanner`): kept counts
round *up* to a multiple of ``granularity`` channels where the group is larger
than that, and never below ``min_channels``; the lowest-scored prunable classes
go first. Frozen classes are never selected. With a runtime channel ``block``
(``compiler.channel_block``: the channel count the runtime's kernels compute in
steps of), kept counts round up to a multiple of it too, and a group no wider
than one block is kept whole: a count between two blocks costs the runtime what
the next block costs.

A group whose channels a split cuts into pieces (a CSP stage's two halves, an
uneven ``chunk``, an exported ``Split``) loses the same share of every piece
under a per-group ratio: the lowest-scored channels of each piece go, not the
lowest of the group, which could leave one piece a single channel. An unused
piece goes first.

Options are validated once, by ``compiler.options.Options.validate``; these
passes trust them and never change their own settings.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from frontends.graph import ChannelGraph
from passes.channel_analysis import AnalysisResult, Group
from passes.cost import graph_macs

log = logging.getLogger(__name__)

__all__ = ["Selection", "CostSelection", "SelectionResult", "GroupPlanner"]


@dataclass
class SelectionResult:
    pruned: np.ndarray  # bool per class
    ratio: float | None  # the ratio used (target_macs, CostSelection: the one found)
    planned_macs: int


def _planned_macs(analysis: AnalysisResult, pruned: np.ndarray) -> int:
    return graph_macs(analysis.graph, lambda v: analysis.pruned_shape(v, pruned))


@dataclass(frozen=True)
class GroupPlanner:
    """Turns a ratio or threshold into pruned classes, group by group, within the rounding limits."""

    granularity: int = 8
    min_channels: int = 1
    block: int = 1  # the runtime's channel block (compiler.channel_block); 1: none

    def by_ratio(self, analysis: AnalysisResult, scores: np.ndarray, ratio: float, scope: str) -> np.ndarray:
        """``ratio`` of each group's prunable channels (``scope="local"``) or of all of them (``"global"``)."""
        if scope == "local":
            pruned = self._local(analysis, balanced_scores(analysis, scores), ratio)
        else:
            pruned = self._global(analysis, scores, ratio)
        return keep_nonempty(analysis, scores, pruned)

    def by_threshold(self, analysis: AnalysisResult, scores: np.ndarray, threshold: float) -> np.ndarray:
        """The prunable channels scored below ``threshold``."""
        pruned = np.zeros(analysis.n_classes, dtype=bool)
        for g in _prunable(analysis):
            s = scores[g.classes]
            self._remove(g, scores, int(((s < threshold) & ~g.frozen).sum()), pruned)
        return keep_nonempty(analysis, scores, pruned)

    def _local(self, analysis: AnalysisResult, scores: np.ndarray, ratio: float) -> np.ndarray:
        pruned = np.zeros(analysis.n_classes, dtype=bool)
        for g in _prunable(analysis):
            self._remove(g, scores, int(round(ratio * (~g.frozen).sum())), pruned)
        return pruned

    def _global(self, analysis: AnalysisResult, scores: np.ndarray, ratio: float) -> np.ndarray:
        """One threshold over all prunable channels, weighted by width."""
        pruned = np.zeros(analysis.n_classes, dtype=bool)
        groups = _prunable(analysis)
        if not groups:
            return pruned
        cls = np.concatenate([g.classes[~g.frozen] for g in groups])
        wid = np.concatenate([g.widths[~g.frozen] for g in groups])
        if cls.size == 0:
            return pruned
        s = np.nan_to_num(scores[cls], nan=np.inf)
        order = np.argsort(s, kind="stable")
        cum = np.cumsum(wid[order])
        k = int(np.searchsorted(cum, ratio * wid.sum(), side="right"))
        chosen = np.zeros(analysis.n_classes, dtype=bool)
        chosen[cls[order[:k]]] = True
        for g in groups:
            self._remove(g, scores, int((chosen[g.classes] & ~g.frozen).sum()), pruned)
        return pruned

    def removed_classes(self, g: Group, scores: np.ndarray, n_remove: int) -> np.ndarray:
        """The class ids of ``g`` that removing ``n_remove`` (before rounding) of its lowest-scored prunable classes
        takes, after the group's rounding (what a per-group plan removes; ``passes.allocation`` probes these)."""
        pruned = np.zeros(int(g.classes.max()) + 1 if g.classes.size else 0, dtype=bool)
        self._remove(g, scores, n_remove, pruned)
        return g.classes[pruned[g.classes]]

    def _remove(self, g: Group, scores: np.ndarray, n_remove: int, pruned: np.ndarray) -> None:
        """Mark the ``n_remove`` (before rounding) lowest-scored prunable classes of ``g`` in ``pruned``."""
        n = len(g.classes)
        prunable = np.flatnonzero(~g.frozen)
        if n_remove <= 0 or prunable.size == 0:
            return
        w = int(g.widths.max())
        uniform = bool((g.widths == w).all())
        gran = self.granularity // math.gcd(self.granularity, w) if uniform else 1
        if n <= gran:
            gran = 1
        keep = max(n - min(n_remove, prunable.size), math.ceil(self.min_channels / w), n - prunable.size, 1)
        keep = min(n, math.ceil(keep / gran) * gran)
        if self.block > 1 and uniform:
            unit = math.lcm(gran, self.block // math.gcd(self.block, w))  # in classes
            keep = n if n <= unit else min(n, math.ceil(keep / unit) * unit)
        n_remove = n - keep
        if n_remove <= 0:
            return
        s = scores[g.classes[prunable]]
        s = np.where(np.isnan(s), np.inf, s)
        order = np.argsort(s, kind="stable")
        pruned[g.classes[prunable[order[:n_remove]]]] = True


def _prunable(analysis: AnalysisResult) -> list[Group]:
    return [g for g in analysis.groups if g.prunable]


@dataclass(frozen=True)
class Selection:
    """``call(analysis, scores) -> SelectionResult`` under one of ``ratio``, ``threshold``, ``target_macs``."""

    ratio: float | None = None
    threshold: float | None = None
    target_macs: float | None = None  # a fraction of the original MACs when <= 1, else a count
    scope: str = "local"
    granularity: int = 8
    min_channels: int = 1
    block: int = 1  # the runtime's channel block (compiler.channel_block)
    # constraint(analysis, scores, pruned) -> pruned: applied to every plan the policy considers (compiler.hf_constraints)
    constraint: Callable[[AnalysisResult, np.ndarray, np.ndarray], np.ndarray] | None = None

    @property
    def planner(self) -> GroupPlanner:
        return GroupPlanner(self.granularity, self.min_channels, self.block)

    def _by_ratio(self, planner: GroupPlanner, analysis: AnalysisResult, scores: np.ndarray, ratio: float) -> np.ndarray:
        pruned = planner.by_ratio(analysis, scores, ratio, self.scope)
        return pruned if self.constraint is None else self.constraint(analysis, scores, pruned)

    def call(self, analysis: AnalysisResult, scores: np.ndarray) -> SelectionResult:
        planner = self.planner
        if self.target_macs is not None:
            return self._meet_macs(analysis, scores, planner, self.target_macs)
        if self.threshold is not None:
            pruned = planner.by_threshold(analysis, scores, self.threshold)
            if self.constraint is not None:
                pruned = self.constraint(analysis, scores, pruned)
        else:
            assert self.ratio is not None, "Options.validate leaves one policy"
            pruned = self._by_ratio(planner, analysis, scores, self.ratio)
        return SelectionResult(pruned, self.ratio, _planned_macs(analysis, pruned))

    def _meet_macs(self, analysis: AnalysisResult, scores: np.ndarray, planner: GroupPlanner, target_macs: float) -> SelectionResult:
        """The smallest ratio (bisection, 20 steps) whose planned MACs meet ``target_macs``."""
        graph: ChannelGraph = analysis.graph
        target = target_macs * graph_macs(graph) if target_macs <= 1.0 else target_macs
        lo, hi = 0.0, 0.999
        best = self._by_ratio(planner, analysis, scores, hi)
        if _planned_macs(analysis, best) > target:
            log.warning("target_macs %.3g not reachable: at most %.3g", target, _planned_macs(analysis, best))
            return SelectionResult(best, hi, _planned_macs(analysis, best))
        for _ in range(20):
            mid = (lo + hi) / 2
            plan = self._by_ratio(planner, analysis, scores, mid)
            if _planned_macs(analysis, plan) <= target:
                hi, best = mid, plan
            else:
                lo = mid
        return SelectionResult(best, hi, _planned_macs(analysis, best))


@dataclass(frozen=True)
class CostSelection:
    """``call(analysis, scores, cost, target) -> SelectionResult``: the smallest global ratio whose
    ``cost(pruned)`` meets ``target`` (e.g. an estimated latency in milliseconds).

    ``scores`` rank channels across groups (the ratio is global): pass saliency
    divided by what removing a channel saves, and the channels that cost the most
    for what they contribute go first.
    """

    granularity: int = 8
    min_channels: int = 1
    block: int = 1

    def call(
        self, analysis: AnalysisResult, scores: np.ndarray, cost: Callable[[np.ndarray], float], target: float
    ) -> SelectionResult:
        planner = GroupPlanner(self.granularity, self.min_channels, self.block)
        plan = lambda ratio: planner.by_ratio(analysis, scores, ratio, "global")  # noqa: E731
        lo, hi = 0.0, 0.999
        best = plan(hi)
        if cost(best) > target:
            log.warning("target %.4g not reachable: at best %.4g", target, cost(best))
            return SelectionResult(best, hi, _planned_macs(analysis, best))
        none = plan(0.0)
        if cost(none) <= target:
            best, hi = none, 0.0
        else:
            for _ in range(16):
                mid = (lo + hi) / 2
                p = plan(mid)
                if cost(p) <= target:
                    hi, best = mid, p
                else:
                    lo = mid
        return SelectionResult(best, hi, _planned_macs(analysis, best))


def keep_nonempty(analysis: AnalysisResult, scores: np.ndarray, pruned: np.ndarray) -> np.ndarray:
    """No tensor loses a whole channel dim: a split part or slice that only holds some of a
    group's channels keeps its best-scored one (a layer with no inputs cannot be rewritten)."""
    for lab in analysis.labels.values():
        for d in lab:
            if d is not None and d.size and pruned[analysis.atom_class[d]].all():
                cls = np.unique(analysis.atom_class[d])
                pruned[cls[np.argmax(np.nan_to_num(scores[cls], nan=-np.inf))]] = False
    return pruned


def split_cells(analysis: AnalysisResult) -> tuple[np.ndarray, np.ndarray]:
    """Per class: a cell id (the classes of one group in the same piece of every sized split share one) and
    whether the class lies in a piece nothing reads."""
    graph = analysis.graph
    used = {v for op in graph.ops.values() for v in op.inputs if v}
    sig = np.zeros(analysis.n_classes, dtype=np.uint64)
    dead = np.zeros(analysis.n_classes, dtype=bool)
    rng = np.random.default_rng(0)
    for op in graph.ops.values():
        if op.kind != "split" or op.attrs.get("equal") or len(op.outputs) < 2:
            continue
        lab = analysis.labels.get(op.input(0))
        if not lab:
            continue
        ax = int(op.attrs["axis"]) % len(lab)
        if lab[ax] is None:
            continue
        for out in op.outputs:
            ol = analysis.labels.get(out)
            piece = ol[ax] if ol else None
            if piece is None or not piece.size:
                continue
            cls = np.unique(analysis.atom_class[piece])
            sig[cls] ^= rng.integers(1, 2**63, dtype=np.uint64)
            if out not in used:
                dead[cls] = True
    return sig, dead


def balanced_scores(analysis: AnalysisResult, scores: np.ndarray) -> np.ndarray:
    """Scores re-expressed, in groups that sized splits cut into pieces, as each channel's rank within its piece
    (0 lowest .. 1 highest; channels of unused pieces below 0), so a per-group ratio takes the same share of
    every piece. Other groups keep their scores."""
    sig, dead = split_cells(analysis)
    if not sig.any():
        return scores
    out = np.array(scores, dtype=np.float64, copy=True)
    for g in analysis.groups:
        cls = g.classes[~g.frozen]
        if cls.size < 2 or np.unique(sig[cls]).size < 2:
            continue
        s = np.nan_to_num(np.asarray(scores, dtype=np.float64)[cls], nan=np.inf)
        for cell in np.unique(sig[cls]):
            members = np.flatnonzero(sig[cls] == cell)
            order = np.argsort(s[members], kind="stable")
            q = np.empty(members.size)
            q[order] = (np.arange(members.size) + 0.5) / members.size
            out[cls[members]] = np.where(dead[cls[members]], q - 2.0, q)
    return out
