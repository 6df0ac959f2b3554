"""Selection pass: decide which channel classes go.

Policies (one of): ``ratio`` (fraction of each group's prunable channels, or of
all of them with ``scope="global"``), ``threshold`` (normalized saliency below
it), ``target_macs`` (the smallest global ratio whose planned MACs meet it).
Then per group: kept counts round *up* to a multiple of ``granularity`` channels
where the group is larger than that, and never below ``min_channels``; the
lowest-scored prunable classes go first. Frozen classes are never selected.

A group whose channels a split cuts into pieces (a CSP stage's two halves, an
uneven ``chunk``, an exported ``Split``) loses the same share of every piece
under a per-group ratio: the lowest-scored channels of each piece go, not the
lowest of the group, which could leave one piece a single channel. An unused
piece goes first.
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

__all__ = ["Selection", "SelectionResult"]


@dataclass
class SelectionResult:
    pruned: np.ndarray  # bool per class
    ratio: float | None  # the ratio used (target_macs: the one found)
    planned_macs: int


class Selection:
    """``call(analysis, scores) -> SelectionResult``."""

    def __init__(
        self,
        ratio: float | None = None,
        threshold: float | None = None,
        target_macs: float | None = None,
        scope: str = "local",
        granularity: int = 8,
        min_channels: int = 1,
    ) -> None:
        given = [x is not None for x in (ratio, threshold, target_macs)]
        if sum(given) != 1:
            raise ValueError("give exactly one of ratio=, threshold=, target_macs=")
        if ratio is not None and not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        if target_macs is not None and target_macs <= 0:
            raise ValueError(f"target_macs must be positive, got {target_macs}")
        if scope not in ("local", "global"):
            raise ValueError(f"scope must be 'local' or 'global', got {scope!r}")
        if int(granularity) < 1 or int(min_channels) < 1:
            raise ValueError("granularity and min_channels must be >= 1")
        self.ratio, self.threshold, self.target_macs = ratio, threshold, target_macs
        self.scope, self.granularity, self.min_channels = scope, int(granularity), int(min_channels)

    # -- per group ------------------------------------------------------------
    def _finish(self, g: Group, scores: np.ndarray, n_remove: int, pruned: np.ndarray) -> None:
        """Remove ``n_remove`` (before rounding) lowest classes of ``g``."""
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
        n_remove = n - keep
        if n_remove <= 0:
            return
        s = scores[g.classes[prunable]]
        s = np.where(np.isnan(s), np.inf, s)
        order = np.argsort(s, kind="stable")
        pruned[g.classes[prunable[order[:n_remove]]]] = True

    def _plan(self, analysis: AnalysisResult, scores: np.ndarray, ratio: float | None, threshold: float | None) -> np.ndarray:
        return keep_nonempty(analysis, scores, self._plan_groups(analysis, scores, ratio, threshold))

    def _plan_groups(self, analysis: AnalysisResult, scores: np.ndarray, ratio: float | None, threshold: float | None) -> np.ndarray:
        pruned = np.zeros(analysis.n_classes, dtype=bool)
        groups = [g for g in analysis.groups if g.prunable]
        if threshold is not None:
            for g in groups:
                s = scores[g.classes]
                self._finish(g, scores, int(((s < threshold) & ~g.frozen).sum()), pruned)
            return pruned
        assert ratio is not None
        if self.scope == "local":
            scores = balanced_scores(analysis, scores)
            for g in groups:
                self._finish(g, scores, int(round(ratio * (~g.frozen).sum())), pruned)
            return pruned
        # global: one threshold over all prunable channels, weighted by width
        cls = np.concatenate([g.classes[~g.frozen] for g in groups]) if groups else np.zeros(0, dtype=np.int64)
        wid = np.concatenate([g.widths[~g.frozen] for g in groups]) if groups else np.zeros(0, dtype=np.int64)
        if cls.size == 0:
            return pruned
        s = np.nan_to_num(scores[cls], nan=np.inf)
        order = np.argsort(s, kind="stable")
        cum = np.cumsum(wid[order])
        k = int(np.searchsorted(cum, ratio * wid.sum(), side="right"))
        chosen = np.zeros(analysis.n_classes, dtype=bool)
        chosen[cls[order[:k]]] = True
        for g in groups:
            self._finish(g, scores, int((chosen[g.classes] & ~g.frozen).sum()), pruned)
        return pruned

    def call(self, analysis: AnalysisResult, scores: np.ndarray) -> SelectionResult:
        graph: ChannelGraph = analysis.graph

        def macs(pruned: np.ndarray) -> int:
            return graph_macs(graph, lambda v: analysis.pruned_shape(v, pruned))

        if self.target_macs is None:
            pruned = self._plan(analysis, scores, self.ratio, self.threshold)
            return SelectionResult(pruned, self.ratio, macs(pruned))
        base = graph_macs(graph)
        target = self.target_macs * base if self.target_macs <= 1.0 else self.target_macs
        lo, hi = 0.0, 0.999
        best = self._plan(analysis, scores, hi, None)
        if macs(best) > target:
            log.warning("target_macs %.3g not reachable: at most %.3g", target, macs(best))
            return SelectionResult(best, hi, macs(best))
        for _ in range(20):
            mid = (lo + hi) / 2
            plan = self._plan(analysis, scores, mid, None)
            if macs(plan) <= target:
                hi, best = mid, plan
            else:
                lo = mid
        return SelectionResult(best, hi, macs(best))


    def call_cost(
        self, analysis: AnalysisResult, scores: np.ndarray, cost: Callable[[np.ndarray], float], target: float
    ) -> SelectionResult:
        """The smallest global ratio whose ``cost(pruned)`` meets ``target`` (e.g. an estimated latency).

        ``scores`` rank channels across groups (``scope="global"``): pass saliency
        divided by what removing a channel saves, and the channels that cost the
        most for what they contribute go first.
        """
        graph: ChannelGraph = analysis.graph
        lo, hi = 0.0, 0.999
        best = self._plan_global(analysis, scores, hi)
        if cost(best) > target:
            log.warning("target %.4g not reachable: at best %.4g", target, cost(best))
            return SelectionResult(best, hi, graph_macs(graph, lambda v: analysis.pruned_shape(v, best)))
        if cost(self._plan_global(analysis, scores, 0.0)) <= target:
            best, hi = self._plan_global(analysis, scores, 0.0), 0.0
        else:
            for _ in range(16):
                mid = (lo + hi) / 2
                p = self._plan_global(analysis, scores, mid)
                if cost(p) <= target:
                    hi, best = mid, p
                else:
                    lo = mid
        return SelectionResult(best, hi, graph_macs(graph, lambda v: analysis.pruned_shape(v, best)))

    def _plan_global(self, analysis: AnalysisResult, scores: np.ndarray, ratio: float) -> np.ndarray:
        scope, self.scope = self.scope, "global"
        try:
            return self._plan(analysis, scores, ratio, None)
        finally:
            self.scope = scope


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
        x = op.inputs[0]
        lab = analysis.labels.get(x)
        if not lab:
            continue
        ax = int(op.attrs["axis"]) % len(lab)
        if lab[ax] is None:
            continue
        for out in op.outputs:
            ol = analysis.labels.get(out)
            if not ol or ol[ax] is None or not ol[ax].size:
                continue
            cls = np.unique(analysis.atom_class[ol[ax]])
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
