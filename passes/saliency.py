"""Saliency pass: score every channel class of every group.

Each producer scores its units (seed 004: the L1/L2 norm of a unit's fan-in
weights), normalized per layer by the layer's ``max`` (default) or ``mean`` unit
score so that thresholds compare across layers. A class holds units of several
layers (a residual stream, an SE gate, a whole conv group); units of one layer in
a class are averaged, then the layers are combined by the equalization operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["Saliency", "SaliencyResult", "EQUALIZATIONS", "unit_norms", "equalize"]

_EPS = 1e-12


def _geo(sums_log: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return np.exp(sums_log / counts)


# name -> (per-class reducer over the member layers' scores)
EQUALIZATIONS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = {
    # each: (values sorted by class, segment starts, segment counts) -> per-class value
    "arithmetic_mean": lambda v, s, c: np.add.reduceat(v, s) / c,
    "geometric_mean": lambda v, s, c: np.exp(np.add.reduceat(np.log(v + _EPS), s) / c),
    # union: pruned if ANY member is below the threshold -> the smallest member decides
    "union": lambda v, s, c: np.minimum.reduceat(v, s),
    # intersection: pruned only if ALL members are below -> the largest member decides
    "intersection": lambda v, s, c: np.maximum.reduceat(v, s),
    "max": lambda v, s, c: np.maximum.reduceat(v, s),
    "sum": lambda v, s, c: np.add.reduceat(v, s),
}

NORMALIZERS = ("max", "mean", "none")


def unit_norms(weight: np.ndarray, axis: int, p: int) -> np.ndarray:
    w = np.moveaxis(np.asarray(weight, dtype=np.float64), axis, 0).reshape(weight.shape[axis], -1)
    return np.abs(w).sum(1) if p == 1 else np.sqrt((w * w).sum(1))


def equalize(cls: np.ndarray, layer: np.ndarray, value: np.ndarray, n_classes: int, op: str) -> np.ndarray:
    """Combine per-unit scores into one score per class (NaN where a class has none)."""
    if op not in EQUALIZATIONS:
        raise ValueError(f"unknown equalization {op!r}; choose from {', '.join(EQUALIZATIONS)}")
    out = np.full(n_classes, np.nan)
    if cls.size == 0:
        return out
    # 1) mean of a layer's units inside a class
    key = cls.astype(np.int64) * (int(layer.max()) + 1) + layer
    uniq, inv = np.unique(key, return_inverse=True)
    per = np.bincount(inv, weights=value) / np.bincount(inv)
    per_cls = uniq // (int(layer.max()) + 1)
    # 2) equalization across layers (uniq is sorted, so classes are contiguous)
    starts = np.flatnonzero(np.r_[True, per_cls[1:] != per_cls[:-1]])
    counts = np.diff(np.r_[starts, per_cls.size])
    out[per_cls[starts]] = EQUALIZATIONS[op](per, starts, counts)
    return out


@dataclass
class SaliencyResult:
    scores: np.ndarray  # per class, NaN for classes in no group
    unit_scores: dict[str, np.ndarray]  # per producer op: normalized unit scores
    importance: str
    equalization: str


class Saliency:
    """Score channels. ``call(analysis) -> SaliencyResult``.

    Criteria available here: ``l1``, ``l2`` (weight norms), ``random``.
    """

    CRITERIA = ("l1", "l2", "random")

    def __init__(self, importance: str = "l2", equalization: str = "arithmetic_mean", normalizer: str = "max", seed: int = 0):
        if importance not in self.CRITERIA:
            raise ValueError(f"unknown importance {importance!r}; available: {', '.join(self.CRITERIA)}")
        if equalization not in EQUALIZATIONS:
            raise ValueError(f"unknown equalization {equalization!r}; choose from {', '.join(EQUALIZATIONS)}")
        if normalizer not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {normalizer!r}; choose from {', '.join(NORMALIZERS)}")
        self.importance, self.equalization, self.normalizer = importance, equalization, normalizer
        self.rng = np.random.default_rng(seed)

    def unit_scores(self, analysis: AnalysisResult, producer_index: int) -> np.ndarray:
        p = analysis.producers[producer_index]
        w = analysis.graph.values[p.weight].data
        assert w is not None
        if self.importance == "random":
            return self.rng.random(w.shape[p.axis])
        return unit_norms(w, p.axis, 1 if self.importance == "l1" else 2)

    def call(self, analysis: AnalysisResult) -> SaliencyResult:
        cls_parts, layer_parts, val_parts = [], [], []
        unit: dict[str, np.ndarray] = {}
        for i, p in enumerate(analysis.producers):
            s = self.unit_scores(analysis, i)
            if self.normalizer != "none":
                norm = s.max() if self.normalizer == "max" else s.mean()
                s = s / norm if norm > 0 else np.zeros_like(s)
            unit[p.op] = s
            cls_parts.append(analysis.atom_class[p.atoms])
            layer_parts.append(np.full(s.size, i))
            val_parts.append(s)
        if cls_parts:
            scores = equalize(
                np.concatenate(cls_parts), np.concatenate(layer_parts), np.concatenate(val_parts), analysis.n_classes, self.equalization
            )
        else:
            scores = np.full(analysis.n_classes, np.nan)
        return SaliencyResult(scores, unit, self.importance, self.equalization)
