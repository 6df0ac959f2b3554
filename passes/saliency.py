"""Saliency pass: score every channel class of every group.

Each producer scores its units (seed 004: the L1/L2 norm of a unit's fan-in
weights), normalized per layer by the layer's ``max`` (default) or ``mean`` unit
score so that thresholds compare across layers. A class holds units of several
layers (a residual stream, an SE gate, a whole conv group); units of one layer in
a class are averaged, then the layers are combined by the equalization operator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np

from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["Saliency", "SaliencyResult", "EQUALIZATIONS", "unit_norms", "equalize", "reduce_statistics", "reduce_stat"]

_EPS = 1e-12

# An optional reduction of raw statistics across processes (torch.distributed), set by
# ``reduce_statistics``: applied to every criterion's raw scores before normalization and to
# the weight updates (bias propagation, compensation), so that every rank prunes identically.
_REDUCER: ContextVar[Callable[[np.ndarray], np.ndarray] | None] = ContextVar("prunec_reduce", default=None)


@contextmanager
def reduce_statistics(fn: Callable[[np.ndarray], np.ndarray]) -> Iterator[None]:
    """Within the block, raw criterion statistics pass through ``fn(array) -> array`` (e.g. an all-reduce)."""
    token = _REDUCER.set(fn)
    try:
        yield
    finally:
        _REDUCER.reset(token)


def reduce_stat(a: np.ndarray) -> np.ndarray:
    fn = _REDUCER.get()
    return a if fn is None else fn(a)


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
    """Score channels. ``call(analysis, data=None) -> SaliencyResult``.

    Unit criteria (``l1``, ``l2``, ``random``, ``obd``, ``synflow``) score each
    producer's units, normalize per layer and equalize across the group.
    Class criteria (the data-driven ones and ``bn_scale``) score each coupled
    channel directly and are normalized per group. ``data`` is a
    :class:`passes.criteria.DataCriteria` for the criteria that need the model.
    """

    UNIT = ("l1", "l2", "random", "obd", "synflow")
    CLASS = ("bn_scale", "activation", "n2ps", "taylor", "taylor2", "mrs", "mrp", "obs")
    CRITERIA = UNIT + CLASS
    NEEDS_MODEL = ("obd", "synflow", "bn_scale", "activation", "n2ps", "taylor", "taylor2", "mrs", "mrp", "obs")

    def __init__(self, importance: str = "l2", equalization: str = "arithmetic_mean", normalizer: str = "max", seed: int = 0):
        if importance not in self.CRITERIA:
            raise ValueError(f"unknown importance {importance!r}; available: {', '.join(self.CRITERIA)}")
        if equalization not in EQUALIZATIONS:
            raise ValueError(f"unknown equalization {equalization!r}; choose from {', '.join(EQUALIZATIONS)}")
        if normalizer not in NORMALIZERS:
            raise ValueError(f"unknown normalizer {normalizer!r}; choose from {', '.join(NORMALIZERS)}")
        self.importance, self.equalization, self.normalizer = importance, equalization, normalizer
        self.rng = np.random.default_rng(seed)

    def _weight_units(self, analysis: AnalysisResult, i: int, kind: str) -> np.ndarray:
        p = analysis.producers[i]
        w = analysis.graph.values[p.weight].data
        assert w is not None
        if kind == "random":
            return self.rng.random(w.shape[p.axis])
        return unit_norms(w, p.axis, 1 if kind == "l1" else 2)

    def _normalize(self, s: np.ndarray) -> np.ndarray:
        if self.normalizer == "none" or s.size == 0 or np.all(np.isnan(s)):
            return s
        norm = np.nanmax(s) if self.normalizer == "max" else np.nanmean(s)
        return s / norm if norm > 0 else np.zeros_like(s)

    def _unit_scores(self, analysis: AnalysisResult, kind: str, data) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        computed: dict[int, np.ndarray] = {}
        if kind == "obd":
            computed = data.obd()
        elif kind == "synflow":
            computed = data.synflow()
        computed = {i: reduce_stat(computed[i]) for i in sorted(computed)}
        cls_parts, layer_parts, val_parts = [], [], []
        unit: dict[str, np.ndarray] = {}
        for i, p in enumerate(analysis.producers):
            s = computed.get(i) if kind in ("obd", "synflow") else self._weight_units(analysis, i, kind)
            if s is None:
                continue
            s = self._normalize(np.asarray(s, dtype=np.float64))
            unit[p.op] = s
            cls_parts.append(analysis.atom_class[p.atoms])
            layer_parts.append(np.full(s.size, i))
            val_parts.append(s)
        if not cls_parts:
            return np.full(analysis.n_classes, np.nan), unit
        scores = equalize(
            np.concatenate(cls_parts), np.concatenate(layer_parts), np.concatenate(val_parts), analysis.n_classes, self.equalization
        )
        return scores, unit

    def call(self, analysis: AnalysisResult, data=None) -> SaliencyResult:
        kind = self.importance
        if kind in self.NEEDS_MODEL and data is None:
            raise ValueError(f"importance={kind!r} needs the model and calibration data")
        if kind in self.UNIT:
            scores, unit = self._unit_scores(analysis, kind, data)
            return SaliencyResult(scores, unit, kind, self.equalization)
        if kind == "mrp":
            cand = np.concatenate([g.classes[~g.frozen] for g in analysis.groups]) if analysis.groups else np.zeros(0, int)
            raw = data.mrp(cand)
        else:
            raw = getattr(data, kind)()
        raw = reduce_stat(raw)
        scores = np.full(analysis.n_classes, np.nan)
        for g in analysis.groups:
            scores[g.classes] = self._normalize(raw[g.classes].astype(np.float64))
        if kind == "bn_scale":  # channels without a norm layer fall back to their weight norm
            fallback, _ = self._unit_scores(analysis, "l2", None)
            missing = np.isnan(scores) & ~np.isnan(fallback)
            scores[missing] = fallback[missing]
        return SaliencyResult(scores, {}, kind, self.equalization)
