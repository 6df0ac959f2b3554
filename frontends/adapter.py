"""The framework adapter interface: what one source format gives the one pipeline.

``compiler.pipeline.compile_with(adapter, options)`` runs the same steps for every
source format; an adapter is the only place that knows the format:

=====================  ===========================================================
``load(steps)``        bring the model into a :class:`ChannelGraph` (trace / parse)
``capabilities``       what it can supply to criteria and weight updates, from the
                       vocabulary in :data:`CAPABILITIES`
``criteria_data(a)``   a runner over calibration data for data-driven criteria
                       (captures activations and gradients), or None
``rewrite(plan, u)``   the smaller dense model from a plan and weight updates
``verify(...)``        compare it with the original, removed channels zeroed, on
                       intermediate tensors as well as outputs
``measure(r)``         the pruned model lowered again (MACs and params re-counted)
``latency_model()``    the model the latency tables and measurements run
=====================  ===========================================================

A third frontend (a JAX or TFLite graph) is one more subclass plus its lowering
into the channel graph and its per-op rewrite handlers (docs/architecture.md).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from frontends.errors import VerificationError
from frontends.graph import ChannelGraph

log = logging.getLogger(__name__)

__all__ = ["Adapter", "Rewritten", "VerifyResult", "verify_wide_then_narrow", "PlannedShapes", "CAPABILITIES"]

CAPABILITIES: dict[str, str] = {
    "weights": "read constant weights",
    "activations": "run the model on calibration data and capture the tensors layers read",
    "gradients": "back-propagate a loss to channel gates",
    "labels": "compute a task loss from labels",
    "hvp": "Hessian-vector products (double back-propagation)",
    "weight_updates": "write new values of constants before the rewrite (compensation, bias propagation)",
}


class PlannedShapes:
    """Shape queries a rewrite handler makes about a plan (``graph``, ``analysis`` and ``pruned`` set by the subclass)."""

    graph: ChannelGraph
    analysis: Any
    pruned: Any

    def original_shape(self, value: str) -> tuple[int, ...]:
        return self.graph.shape(value)

    def pruned_shape(self, value: str) -> tuple[int, ...]:
        return tuple(self.analysis.pruned_shape(value, self.pruned))

    def keep_mask(self, value: str, dim: int) -> Any:
        return self.analysis.keep_mask(value, dim, self.pruned)


@dataclass
class VerifyResult:
    """What a verification compared: the outputs and every intermediate tensor at its kept positions."""

    passed: bool
    max_abs_error: float  # at the model outputs
    reference_scale: float  # max |output| of the reference
    tolerance: float
    dtype: str
    nodes_checked: int = 0  # intermediate tensors compared at their kept positions
    max_node_error: float = 0.0  # worst |difference| / scale over those tensors (ONNX: the scale raised by its floor)
    worst_node: str = ""

    @property
    def basis(self) -> str:
        """What the check rests on, in words (a zero reference output proves nothing by itself)."""
        if self.nodes_checked == 0:
            return "outputs only"
        inner = f"{self.nodes_checked} intermediate tensors at their kept positions"
        if self.reference_scale == 0.0:
            return f"{inner} (the reference outputs are all zero, so they carry the check)"
        return f"outputs and {inner}"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "basis": self.basis}

    def failure(self, subject: str, reference: str) -> VerificationError:
        """The error of a failed check, worded in this one place: ``subject`` (the pruned model) differs from
        ``reference`` (what it must equal), by how much at the outputs, and where inside."""
        where = f"; worst intermediate tensor {self.worst_node}: relative error {self.max_node_error:.3g}" if self.worst_node else ""
        return VerificationError(
            f"{subject} differs from {reference}: max abs error {self.max_abs_error:.3g} at the outputs "
            f"(tolerance {self.tolerance:.3g}, {self.dtype}){where}",
            self.max_abs_error,
        )


def verify_wide_then_narrow(
    compare: Callable[[Any], VerifyResult], subject: str, reference: str, levels: Sequence[Any] = (True, False)
) -> VerifyResult:
    """The flow of a check that runs both models: ``compare(level)`` for each of ``levels`` in turn until one
    runs — by default ``True``, the wide dtype (float64), then ``False`` (float32); an adapter may name its own
    (torch: float64, float32, then the model's own half precision). Raises :class:`VerificationError` where
    none can run (the pruned model or the reference does not run: prunec's failure) or where the comparison
    fails (:meth:`VerifyResult.failure`)."""
    for i, level in enumerate(levels):
        try:
            res = compare(level)
            break
        except VerificationError:
            raise
        except Exception as exc:  # an op without support for this precision: the next one
            if i + 1 < len(levels):
                log.info("verification of the %s at %s failed (%s); trying %s", subject, level, exc, levels[i + 1])
                continue
            first = (str(exc).strip().splitlines() or [""])[0]
            raise VerificationError(f"the {subject} cannot be compared with {reference}: {type(exc).__name__}: {first}") from exc
    if not res.passed:
        raise res.failure(subject, reference)
    return res


@dataclass
class Rewritten:
    """The pruned model and what the rewrite reports about itself (``info`` goes to the report's settings)."""

    model: Any
    info: dict[str, Any] = field(default_factory=dict)
    raw: Any = None  # the adapter's own rewrite result


class Adapter(ABC):
    """One source format (see the module docstring)."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]
    tolerance_floor: ClassVar[float] = 0.0  # the smallest rtol the format's runtime computes to

    graph: ChannelGraph
    handle: Any  # the adapter's loaded form (a TracedModel, an OnnxModel): CompileResult.traced
    model: Any  # the model as given to compile() (an nn.Module; for ONNX, whatever load_onnx accepts)
    model_name: str
    trace_method: str

    @abstractmethod
    def load(self, steps: Callable[..., Any]) -> ChannelGraph:
        """Bring the model in; sets ``graph``, ``model_name`` and ``trace_method``."""

    @abstractmethod
    def example_inputs(self) -> tuple[Any, ...]:
        """The inputs the model was traced with (what latency is measured at)."""

    def criteria_data(self, analysis: Any, opts: Any) -> Any:
        """The calibration runner data-driven criteria and weight updates read; None where it cannot run."""
        return None

    @abstractmethod
    def rewrite(self, plan: Any, updates: dict[str, Any]) -> Rewritten:
        """The smaller dense model; the input model is never modified."""

    @abstractmethod
    def verify(self, plan: Any, rewritten: Rewritten, updates: dict[str, Any], rtol: float) -> dict[str, Any]:
        """Compare with the original (removed channels zeroed); raise ``VerificationError`` on a mismatch."""

    @abstractmethod
    def measure(self, rewritten: Rewritten) -> ChannelGraph:
        """The pruned model lowered again: MACs and params are counted on what was built."""

    def depth(self) -> Any:
        """The depth-pruning handler of the loaded model (``frontends/<format>/depth.py``: runs it for the block
        ranking, removes residual branches, verifies); None where the format has none."""
        return None

    @abstractmethod
    def latency_model(self) -> Any:
        """A model the backend can run for latency measurements of the original."""
