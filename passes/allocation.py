"""Sensitivity allocation: one global budget spread over the groups by the damage each one does alone.

``allocation="sensitivity"`` (:class:`SensitivityAllocation`): instead of the same ratio in every group,

1. **probe** every prunable group alone at a few ratios (``levels``): the channels removed are the ones
   the final plan would remove at that ratio (lowest saliency first, the per-group rounding of
   :class:`passes.selection.GroupPlanner`), and the adapter's data object measures the damage of each such
   plan on the calibration data (``data.damage(masks)``: the task loss increase with labels, else the
   relative squared error of the outputs; one forward per probe, batched where the adapter can). Where the compile
   compensates (``updates``), each probe is measured with the weight updates the compile would make for its plan
   (the torch adapter; ONNX measures without them and says so in ``measure``);
2. **predict** a group's damage at any ratio by linear interpolation between its probes (0 at ratio 0), made
   non-decreasing, and take what it saves from the cost model (``cost(pruned)``: the planned MACs, or the kept
   channels for a ``ratio`` budget) on the group's own plans;
3. **choose** per-group ratios greedily on the lower convex hull: start with nothing pruned and repeatedly move
   the group whose next step costs the least predicted damage per unit saved, until the *measured* cost of the
   combined plan (not the sum of the parts: a layer between two pruned groups loses both) meets the budget.

The predicted damage of a combination is the sum of its groups' damages (they are measured alone). The result
lists per group the ratio chosen and the measured sensitivity, for the report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from passes.channel_analysis import AnalysisResult, Group
from passes.selection import GroupPlanner, balanced_scores, keep_nonempty

log = logging.getLogger(__name__)

__all__ = ["SensitivityAllocation", "AllocationResult", "GroupSensitivity", "DamageProbe", "LEVELS"]

LEVELS = (0.25, 0.5, 0.75, 0.9)  # the ratios each group is probed at
_GRID = 20  # candidate ratios per group between 0 and the largest level, interpolated


class DamageProbe(Protocol):
    """What the adapter's data object offers: the damage of each plan (bool per class) on the calibration data."""

    def damage(
        self, masks: list[np.ndarray], progress: Callable[[str], None] | None = None, mean_replacement: bool = False
    ) -> tuple[np.ndarray, str]: ...


Updates = Callable[[np.ndarray], dict[str, np.ndarray]]  # a plan (bool per class) -> the weight updates the compile makes for it


@dataclass
class GroupSensitivity:
    """One group's probes and the ratio the allocation chose for it."""

    group: int
    producers: list[str]
    channels: int  # prunable width
    levels: list[float]  # the ratios probed (after rounding: the fraction of the prunable width removed)
    damage: list[float]  # measured at each level
    ratio: float = 0.0  # chosen: the fraction of the prunable width removed
    predicted_damage: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "producers": self.producers,
            "channels": self.channels,
            "ratio": round(self.ratio, 4),
            "sensitivity": {f"{lv:.3g}": None if np.isnan(d) else float(f"{d:.4g}") for lv, d in zip(self.levels, self.damage, strict=True)},
            "predicted_damage": float(f"{self.predicted_damage:.4g}"),
        }


@dataclass
class AllocationResult:
    pruned: np.ndarray  # bool per class
    groups: list[GroupSensitivity]
    measure: str  # what damage is, in words
    budget: str  # what was met, in words
    cost: float  # the combined plan's cost (MACs, or kept channels)
    target: float
    probes: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "sensitivity",
            "measure": self.measure,
            "budget": self.budget,
            "target": float(self.target),
            "cost": float(self.cost),
            "probes": self.probes,
            "predicted_damage": float(f"{sum(g.predicted_damage for g in self.groups):.4g}"),
            "groups": [g.to_dict() for g in self.groups],
            **({"notes": self.notes} if self.notes else {}),
        }


@dataclass
class _Curve:
    """A group's candidate plans: per grid point the classes removed, the predicted damage and the cost saved."""

    group: Group
    removed: list[np.ndarray]  # class ids removed at each grid point (point 0: none)
    ratio: np.ndarray  # fraction of the prunable width removed at each point
    damage: np.ndarray
    saved: np.ndarray


@dataclass(frozen=True)
class SensitivityAllocation:
    """``call(analysis, scores, probe, cost, target) -> AllocationResult``: per-group ratios whose combined plan's
    ``cost`` is at most ``target``, with the least predicted damage (see the module docstring)."""

    granularity: int = 8
    min_channels: int = 1
    levels: tuple[float, ...] = LEVELS
    mean_replacement: bool = False  # a removed channel reads its mean in the probes (bias propagation), else 0
    progress: Callable[[str], None] | None = None
    updates: Updates | None = None  # where the compile compensates: each probe measured with its plan's weight updates

    def call(
        self,
        analysis: AnalysisResult,
        scores: np.ndarray,
        probe: DamageProbe,
        cost: Callable[[np.ndarray], float],
        target: float,
        budget: str,
    ) -> AllocationResult:
        planner = GroupPlanner(self.granularity, self.min_channels)
        ranked = balanced_scores(analysis, scores)
        groups = [g for g in analysis.groups if g.prunable]
        probes: list[tuple[int, float, np.ndarray]] = []  # (group index, ratio removed, classes removed)
        for gi, g in enumerate(groups):
            seen: set[int] = set()
            for lv in self.levels:
                removed = self._removed(planner, analysis, g, ranked, lv)
                if removed.size and removed.size not in seen:
                    seen.add(removed.size)
                    probes.append((gi, _fraction(g, removed, analysis), removed))
        masks = []
        for _, _, removed in probes:
            m = np.zeros(analysis.n_classes, dtype=bool)
            m[removed] = True
            masks.append(m)
        if self.progress:
            self.progress(f"sensitivity: {len(masks)} probes over {len(groups)} groups")
        with_updates: dict[str, Any] = {"updates": self.updates} if self.updates is not None else {}
        measured, measure = probe.damage(masks, self.progress, self.mean_replacement, **with_updates) if masks else (np.zeros(0), "none")
        measured = np.asarray(measured, dtype=np.float64)
        curves = []
        notes: list[str] = []
        sens: list[GroupSensitivity] = []
        label = {op.name: op.label or op.name for op in analysis.graph.ops.values()}
        none = np.zeros(analysis.n_classes, dtype=bool)
        base = cost(none)
        for gi, g in enumerate(groups):
            mine = [(r, float(measured[k])) for k, (i, r, _) in enumerate(probes) if i == gi]
            sens.append(
                GroupSensitivity(g.id, [label.get(p, p) for p in g.producers], int(g.widths[~g.frozen].sum()), [r for r, _ in mine], [d for _, d in mine])
            )
            if mine and all(np.isnan(d) for _, d in mine):  # no layer the probes gate reads these channels
                notes.append(f"group {g.id}: no probe could measure it (no gated layer reads its channels); not pruned")
            elif mine and all(d == 0.0 for _, d in mine):  # removing up to 90% changed nothing: the gates did not reach it
                notes.append(f"group {g.id}: its probes measured no change at all (gates that do not reach it); not pruned")
                mine = []
            mine = [(r, d) for r, d in mine if not np.isnan(d)]
            curves.append(self._curve(planner, analysis, g, ranked, mine, cost, base))
        pruned, unreachable = self._choose(analysis, scores, curves, cost, target)
        notes += unreachable
        for s, c in zip(sens, curves, strict=True):
            s.ratio = _fraction(c.group, c.group.classes[pruned[c.group.classes]], analysis)
            s.predicted_damage = float(np.interp(s.ratio, c.ratio, c.damage))
        return AllocationResult(pruned, sens, measure, budget, float(cost(pruned)), float(target), len(masks), notes)

    def _removed(self, planner: GroupPlanner, analysis: AnalysisResult, g: Group, ranked: np.ndarray, ratio: float) -> np.ndarray:
        """The classes of ``g`` that a per-group ``ratio`` removes (the planner's rounding and order)."""
        return planner.removed_classes(g, ranked, int(round(ratio * (~g.frozen).sum())))

    def _curve(
        self,
        planner: GroupPlanner,
        analysis: AnalysisResult,
        g: Group,
        ranked: np.ndarray,
        probes: list[tuple[float, float]],
        cost: Callable[[np.ndarray], float],
        base: float,
    ) -> _Curve:
        top = max(self.levels) if probes else 0.0  # an unmeasured group stays whole
        removed = [np.zeros(0, dtype=np.int64)]
        for r in np.linspace(0.0, top, _GRID + 1)[1:]:
            rem = self._removed(planner, analysis, g, ranked, float(r))
            if rem.size > removed[-1].size:
                removed.append(rem)
        ratio = np.array([_fraction(g, rem, analysis) for rem in removed])
        xs = np.array([0.0] + [r for r, _ in probes])
        ys = np.maximum.accumulate(np.maximum(np.array([0.0] + [d for _, d in probes]), 0.0))  # more pruning never helps
        order = np.argsort(xs, kind="stable")
        damage = np.interp(ratio, xs[order], ys[order])
        saved = np.zeros(len(removed))
        for k, rem in enumerate(removed[1:], 1):
            m = np.zeros(analysis.n_classes, dtype=bool)
            m[rem] = True
            saved[k] = base - cost(m)
        return _Curve(g, removed, ratio, damage, saved)

    def _choose(
        self, analysis: AnalysisResult, scores: np.ndarray, curves: list[_Curve], cost: Callable[[np.ndarray], float], target: float
    ) -> tuple[np.ndarray, list[str]]:
        """Greedy on the lower convex hull of each curve: the step with the least damage per unit saved, until the
        combined plan's measured cost meets ``target``."""
        at = [0] * len(curves)
        pruned = np.zeros(analysis.n_classes, dtype=bool)
        notes: list[str] = []
        while cost(keep_nonempty(analysis, scores, pruned.copy())) > target:
            best: tuple[float, int, int] | None = None
            for ci, c in enumerate(curves):
                i = at[ci]
                gain = c.saved[i + 1 :] - c.saved[i]
                if not gain.size:
                    continue
                slope = np.where(gain > 0, (c.damage[i + 1 :] - c.damage[i]) / np.maximum(gain, 1e-300), np.inf)
                j = int(np.argmin(slope))
                if np.isfinite(slope[j]) and (best is None or slope[j] < best[0]):
                    best = (float(slope[j]), ci, i + 1 + j)
            if best is None:
                notes.append(f"the budget is not reachable with at most {max(self.levels):.0%} of each group removed")
                log.warning("allocation='sensitivity': %s", notes[-1])
                break
            _, ci, j = best
            c = curves[ci]
            for k in range(at[ci] + 1, j + 1):  # the hull's next vertex, or the first point before it that meets the budget
                pruned[c.group.classes] = False
                pruned[c.removed[k]] = True
                if k == j or cost(keep_nonempty(analysis, scores, pruned.copy())) <= target:
                    break
            at[ci] = k
        return keep_nonempty(analysis, scores, pruned), notes


def _fraction(g: Group, removed: np.ndarray, analysis: AnalysisResult) -> float:
    """The fraction of ``g``'s prunable width that ``removed`` (class ids) takes."""
    total = float(g.widths[~g.frozen].sum())
    if not removed.size or total == 0:
        return 0.0
    pos = np.isin(g.classes, removed)
    return float(g.widths[pos].sum()) / total
