"""The saliency criteria registry: one :class:`Criterion` record per name accepted by ``importance=``.

A criterion says at which **level** it scores and what it **needs** from the framework adapter:

``level="unit"``   raw scores per unit of each producer (a layer's output channels); the
                   Saliency pass normalizes them per layer and equalizes them across a group
``level="class"``  raw scores per channel class (one coupled channel of a group); the Saliency
                   pass normalizes them per group

``needs`` is a subset of the adapter capability vocabulary (:data:`frontends.adapter.CAPABILITIES`):

``weights``      read constant weights (every adapter)
``activations``  run the model on calibration data and capture (``mrp``, ``mrs``: mean-replace)
                 the tensors layers read
``gradients``    back-propagate a loss (to channel gates; ``obd``, ``synflow``: to the weights)
``hvp``          Hessian-vector products (double back-propagation)
``labels``       a task loss from labels: optional for every criterion here (without labels the
                 loss is the change of the model's outputs), so no criterion needs it

A criterion that needs more than ``weights`` runs the model (:attr:`Criterion.runs_model`): it reads
the adapter's data object (for PyTorch, :class:`frontends.torch.criteria.DataCriteria`; for ONNX,
:class:`frontends.onnx.criteria.OnnxDataCriteria`, which serves the criteria that need no gradients; the
contract is :class:`CriteriaData`), and its raw statistics are the ones a statistics reducer (an all-reduce
under torch.distributed) is applied to. ``bn_scale`` reads the norm layers' scales from the
channel graph, so it needs only ``weights`` and runs under every adapter.

Criteria are listed in the order of DESIGN.md's "Saliency" section.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias

import numpy as np

from frontends.adapter import CAPABILITIES
from frontends.errors import UnsupportedModelError
from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = [
    "Criterion",
    "CriteriaData",
    "ScoreInputs",
    "CRITERIA",
    "LEVELS",
    "criterion",
    "register_criterion",
    "servable",
    "require",
    "unit_norms",
]

LEVELS = ("unit", "class")

# unit level: producer index -> raw score per unit (producers left out are unscored);
# class level: one raw score per class, NaN where the criterion does not score a class
RawScores: TypeAlias = "dict[int, np.ndarray] | np.ndarray"


class CriteriaData(Protocol):
    """What data-driven criteria ask of an adapter's data object (:class:`frontends.torch.criteria.DataCriteria`;
    an adapter without ``gradients`` need not have the gradient criteria's methods)."""

    def activation(self) -> np.ndarray: ...
    def n2ps(self) -> np.ndarray: ...
    def taylor(self) -> np.ndarray: ...
    def taylor2(self) -> np.ndarray: ...
    def mrs(self) -> np.ndarray: ...
    def mrp(self, classes: np.ndarray) -> np.ndarray: ...
    def obs(self) -> np.ndarray: ...
    def obd(self) -> dict[int, np.ndarray]: ...
    def synflow(self) -> dict[int, np.ndarray]: ...


@dataclass(frozen=True)
class ScoreInputs:
    """What a criterion's score function reads."""

    analysis: AnalysisResult
    data: Any  # a CriteriaData where the criterion runs the model, else possibly None
    rng: np.random.Generator  # the Saliency pass's seeded generator (``random``)


@dataclass(frozen=True)
class Criterion:
    """One saliency criterion: its name, level, what it needs of the adapter, and its raw scores."""

    name: str
    level: Literal["unit", "class"]
    needs: frozenset[str]
    doc: str  # one line
    score: Callable[[ScoreInputs], RawScores]
    fallback: str | None = None  # a weights-only criterion scoring the classes this one leaves NaN

    @property
    def runs_model(self) -> bool:
        """Whether it needs the adapter's data object (anything beyond constant weights)."""
        return bool(self.needs - {"weights"})


CRITERIA: dict[str, Criterion] = {}


def register_criterion(c: Criterion) -> Criterion:
    """Add ``c`` to :data:`CRITERIA`; a name is registered once, with needs from the capability vocabulary."""
    if c.name in CRITERIA:
        raise ValueError(f"criterion {c.name!r} is already registered")
    if c.level not in LEVELS:
        raise ValueError(f"criterion {c.name!r}: level must be one of {', '.join(LEVELS)}, got {c.level!r}")
    if not c.needs or not c.needs <= CAPABILITIES.keys():
        raise ValueError(f"criterion {c.name!r}: needs must be a non-empty subset of {', '.join(CAPABILITIES)}")
    if not c.doc or "\n" in c.doc:
        raise ValueError(f"criterion {c.name!r}: doc must be one line")
    if c.fallback is not None and (c.fallback not in CRITERIA or CRITERIA[c.fallback].runs_model):
        raise ValueError(f"criterion {c.name!r}: fallback must be a registered weights-only criterion")
    CRITERIA[c.name] = c
    return c


def criterion(
    name: str, level: Literal["unit", "class"], needs: set[str], doc: str, fallback: str | None = None
) -> Callable[[Callable[[ScoreInputs], RawScores]], Callable[[ScoreInputs], RawScores]]:
    """Decorator form of :func:`register_criterion` for a score function."""

    def register(fn: Callable[[ScoreInputs], RawScores]) -> Callable[[ScoreInputs], RawScores]:
        register_criterion(Criterion(name, level, frozenset(needs), doc, fn, fallback))
        return fn

    return register


def servable(capabilities: frozenset[str]) -> list[str]:
    """Names of the criteria an adapter with these capabilities can run, in registry order."""
    return [name for name, c in CRITERIA.items() if c.needs <= capabilities]


def require(name: str, capabilities: frozenset[str], adapter_name: str) -> Criterion:
    """The criterion ``name``; :class:`UnsupportedModelError` in one line if the adapter cannot serve it."""
    c = CRITERIA[name]
    missing = sorted(c.needs - capabilities)
    if missing:
        raise UnsupportedModelError(
            f"importance={name!r} needs {' and '.join(missing)}, which the {adapter_name} adapter cannot supply; "
            f"criteria for {adapter_name} models: {', '.join(servable(capabilities))}"
        )
    return c


# ---------------------------------------------------------------------------
# the criteria, in DESIGN.md order


def unit_norms(weight: np.ndarray, axis: int, p: int) -> np.ndarray:
    """L1 (``p=1``) or L2 norm of each unit's fan-in weights, units along ``axis``."""
    units = np.moveaxis(np.asarray(weight), axis, 0)  # a view: the weight is read in chunks of units, so the
    n = units.shape[0]  # float64 temporaries stay small however large the layer (an LLM's vocabulary head)
    step = max(1, _CHUNK // max(1, units[0].size))
    out = np.empty(n, dtype=np.float64)
    for s in range(0, n, step):
        w = units[s : s + step].reshape(min(step, n - s), -1).astype(np.float64)
        out[s : s + step] = np.abs(w).sum(1) if p == 1 else np.sqrt((w * w).sum(1))
    return out


_CHUNK = 1 << 22  # elements per float64 chunk (32 MB)


def _producer_weight(a: AnalysisResult, i: int) -> np.ndarray:
    w = a.graph.values[a.producers[i].weight].data
    assert w is not None, f"producer {a.producers[i].op} has no constant weight"
    return w


@criterion("l1", "unit", {"weights"}, "L1 norm of a unit's fan-in weights (seed 004)")
def _l1(x: ScoreInputs) -> RawScores:
    a = x.analysis
    return {i: unit_norms(_producer_weight(a, i), p.axis, 1) for i, p in enumerate(a.producers)}


@criterion("l2", "unit", {"weights"}, "L2 norm of a unit's fan-in weights (seed 004)")
def _l2(x: ScoreInputs) -> RawScores:
    a = x.analysis
    return {i: unit_norms(_producer_weight(a, i), p.axis, 2) for i, p in enumerate(a.producers)}


@criterion(
    "obd", "unit", {"weights", "gradients", "hvp"}, "Optimal Brain Damage: ½ Σ H_ii w², diag(H) by Hutchinson probes"
)
def _obd(x: ScoreInputs) -> RawScores:
    return x.data.obd()


@criterion(
    "obs", "class", {"weights", "activations"}, "layer-wise OBS: cost of removing a channel's input block, from X̃ᵀX̃"
)
def _obs(x: ScoreInputs) -> RawScores:
    return x.data.obs()


@criterion("taylor", "class", {"gradients"}, "first-order Taylor: |dL/dg| per sample, averaged (Molchanov)")
def _taylor(x: ScoreInputs) -> RawScores:
    return x.data.taylor()


@criterion("taylor2", "class", {"gradients", "hvp"}, "second-order Taylor: |Δg (∇L + H Δg)|, HVP by double backward")
def _taylor2(x: ScoreInputs) -> RawScores:
    return x.data.taylor2()


@criterion("mrs", "class", {"activations", "gradients"}, "mean-replacement saliency: |(m - x)·∇L| per sample")
def _mrs(x: ScoreInputs) -> RawScores:
    return x.data.mrs()


@criterion(
    "mrp", "class", {"activations"}, "mean-replacement penalty: loss change of each channel := its mean, exactly"
)
def _mrp(x: ScoreInputs) -> RawScores:
    groups = x.analysis.groups
    candidates = np.concatenate([g.classes[~g.frozen] for g in groups]) if groups else np.zeros(0, dtype=np.int64)
    return x.data.mrp(candidates)


@criterion("activation", "class", {"activations"}, "mean |x| of the channel where layers read it (seed 004)")
def _activation(x: ScoreInputs) -> RawScores:
    return x.data.activation()


@criterion(
    "n2ps", "class", {"weights", "activations"}, "mean |x| times the channel's total |fan-out weight| (seed 001)"
)
def _n2ps(x: ScoreInputs) -> RawScores:
    return x.data.n2ps()


@criterion(
    "synflow", "unit", {"weights", "gradients"}, "|θ ⊙ ∂R/∂θ| on |θ| with an all-ones input, data-free (seed 003)"
)
def _synflow(x: ScoreInputs) -> RawScores:
    return x.data.synflow()


_NORM_SCALE = {"batch_norm": 3, "group_norm": 1, "instance_norm": 1}  # input index of the scale (γ)


@criterion(
    "bn_scale", "class", {"weights"}, "mean |γ| of the BatchNorm/GroupNorm/InstanceNorm on the channel", fallback="l2"
)
def _bn_scale(x: ScoreInputs) -> RawScores:
    """Per class: mean |γ| over the norm layers on the channel; NaN where none (the ``l2`` fallback scores those)."""
    a = x.analysis
    total, count = np.zeros(a.n_classes), np.zeros(a.n_classes)
    for op in a.graph.ops.values():
        if op.kind not in _NORM_SCALE:
            continue
        gamma = op.inputs[_NORM_SCALE[op.kind]] if len(op.inputs) > _NORM_SCALE[op.kind] else None
        if gamma is None or not a.graph.values[gamma].is_const:
            continue
        lab = a.labels.get(gamma)
        if not lab or lab[0] is None:
            continue
        cls = a.atom_class[lab[0]]
        np.add.at(total, cls, np.abs(np.asarray(a.graph.values[gamma].data, dtype=np.float64)))
        np.add.at(count, cls, 1)
    out = np.full(a.n_classes, np.nan)
    out[count > 0] = total[count > 0] / count[count > 0]
    return out


@criterion("random", "unit", {"weights"}, "uniform random scores (baseline); reads only the weights' shapes")
def _random(x: ScoreInputs) -> RawScores:
    a = x.analysis
    return {i: x.rng.random((_producer_weight(a, i).shape[p.axis],)) for i, p in enumerate(a.producers)}
