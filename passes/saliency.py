"""Saliency pass: score every channel class of every group.

The criterion comes from the registry (:mod:`passes.importance`). A unit-level
criterion scores each producer's units (seed 004: the L1/L2 norm of a unit's
fan-in weights), normalized per layer by the layer's ``max`` (default) or
``mean`` unit score so that thresholds compare across layers; a class holds units
of several layers (a residual stream, an SE gate, a whole conv group): units of
one layer in a class are averaged, then the layers are combined by the
equalization operator. A class-level criterion scores each coupled channel
directly and is normalized per group.

Options are validated once, by ``compiler.options.Options.validate``; this pass
trusts them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from passes.channel_analysis import AnalysisResult
from passes.importance import CRITERIA, Criterion, ScoreInputs

log = logging.getLogger(__name__)

__all__ = ["Saliency", "SaliencyResult", "EQUALIZATIONS", "NORMALIZERS", "equalize"]

_EPS = 1e-12

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


def equalize(cls: np.ndarray, layer: np.ndarray, value: np.ndarray, n_classes: int, op: str) -> np.ndarray:
    """Combine per-unit scores into one score per class (NaN where a class has none); ``op`` names an EQUALIZATIONS entry."""
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

    ``data`` is the adapter's data object (:class:`passes.importance.CriteriaData`)
    for a criterion that runs the model (``CRITERIA[importance].runs_model``).
    ``reduce(array) -> array``, where given, is applied to such a criterion's raw
    statistics before normalization (an all-reduce under torch.distributed, so that
    every rank prunes identically); criteria of weights alone are the same on every
    rank and are not reduced.
    """

    def __init__(
        self,
        importance: str = "l2",
        equalization: str = "arithmetic_mean",
        normalizer: str = "max",
        seed: int = 0,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.criterion: Criterion = CRITERIA[importance]
        self.importance, self.equalization, self.normalizer = importance, equalization, normalizer
        self.reduce = reduce
        self.rng = np.random.default_rng(seed)

    def call(self, analysis: AnalysisResult, data: Any = None) -> SaliencyResult:
        c = self.criterion
        if c.runs_model and data is None:
            raise ValueError(f"importance={c.name!r} needs the model and calibration data")
        inputs = ScoreInputs(analysis, data, self.rng)
        if c.level == "unit":
            scores, unit = self._unit_level(inputs, c)
            return SaliencyResult(scores, unit, c.name, self.equalization)
        return SaliencyResult(self._class_level(inputs, c), {}, c.name, self.equalization)

    def _raw(self, inputs: ScoreInputs, c: Criterion) -> Any:
        raw = c.score(inputs)
        if self.reduce is None or not c.runs_model:
            return raw
        if isinstance(raw, dict):
            return {i: self.reduce(raw[i]) for i in sorted(raw)}  # the same order on every rank
        return self.reduce(raw)

    def _normalize(self, s: np.ndarray) -> np.ndarray:
        if self.normalizer == "none" or s.size == 0 or np.all(np.isnan(s)):
            return s
        norm = np.nanmax(s) if self.normalizer == "max" else np.nanmean(s)
        return s / norm if norm > 0 else np.zeros_like(s)

    def _unit_level(self, inputs: ScoreInputs, c: Criterion) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Per-layer normalized unit scores, equalized into one score per class."""
        analysis = inputs.analysis
        raw = self._raw(inputs, c)
        assert isinstance(raw, dict), f"unit criterion {c.name!r} returned {type(raw).__name__}"
        cls_parts, layer_parts, val_parts = [], [], []
        unit: dict[str, np.ndarray] = {}
        for i, p in enumerate(analysis.producers):
            if i not in raw:
                continue
            s = self._normalize(np.asarray(raw[i], dtype=np.float64))
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

    def _class_level(self, inputs: ScoreInputs, c: Criterion) -> np.ndarray:
        """Per-group normalized class scores; the fallback criterion's scores where ``c`` leaves a class NaN."""
        analysis = inputs.analysis
        raw = self._raw(inputs, c)
        assert isinstance(raw, np.ndarray), f"class criterion {c.name!r} returned {type(raw).__name__}"
        scores = np.full(analysis.n_classes, np.nan)
        for g in analysis.groups:
            scores[g.classes] = self._normalize(raw[g.classes].astype(np.float64))
        if c.fallback is not None:
            fb = CRITERIA[c.fallback]
            fallback = self._unit_level(inputs, fb)[0] if fb.level == "unit" else self._class_level(inputs, fb)
            missing = np.isnan(scores) & ~np.isnan(fallback)
            scores[missing] = fallback[missing]
        return scores
