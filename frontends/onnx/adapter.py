"""The ONNX adapter: a ``ModelProto`` or ``.onnx`` file lowered into the channel graph, run in ONNX Runtime.

Data-driven criteria that need only forward runs (``activation``, ``n2ps``, ``obs``, ``mrp``) and the weight
updates (OBS compensation, bias propagation) run in ONNX Runtime on calibration batches
(:mod:`frontends.onnx.criteria`); criteria that need gradients are refused by the registry, naming those that run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np

from frontends.adapter import Adapter, Rewritten
from frontends.errors import InternalError, InvalidArgumentError, PrunecError
from frontends.graph import ChannelGraph
from frontends.onnx import large
from frontends.onnx.calibration import OnnxCalibration
from frontends.onnx.criteria import OnnxDataCriteria
from frontends.onnx.frontend import load_onnx
from frontends.onnx.rewrite import RewriteONNX
from frontends.onnx.updates import with_updates
from frontends.onnx.verify import VerifyONNX

log = logging.getLogger(__name__)

__all__ = ["OnnxAdapter"]


class OnnxAdapter(Adapter):
    """Loads (with its security checks), rewrites and verifies an ONNX model; the input file is never touched."""

    name: ClassVar[str] = "onnx"
    capabilities: ClassVar[frozenset[str]] = frozenset({"weights", "activations", "labels", "weight_updates"})
    tolerance_floor: ClassVar[float] = 1e-4  # ONNX Runtime computes in float32

    def __init__(
        self,
        model: Any,
        example_inputs: Any = None,
        seed: int = 0,
        calibration: Iterable[Any] | None = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        if loss_fn is not None:
            raise InvalidArgumentError(
                "loss_fn applies to PyTorch models; for an ONNX model give integer labels in the calibration batches "
                "(cross-entropy), or none (the change of the outputs)"
            )
        self.model, self.given_inputs, self.seed, self.calibration = model, example_inputs, seed, calibration

    def load(self, steps: Callable[..., Any]) -> ChannelGraph:
        self.loaded = steps("load", load_onnx, self.model, self.given_inputs, self.seed)
        self.data = OnnxCalibration.from_user(self.calibration, self.loaded)
        self.handle, self.graph = self.loaded, self.loaded.graph
        self.model_name, self.trace_method = self.loaded.name, self.loaded.method
        return self.graph

    def criteria_data(self, analysis: Any, opts: Any) -> Any:
        return OnnxDataCriteria(self.loaded, analysis, self.data)

    def updated(self, plan: Any, updates: dict[str, Any], cut: bool) -> Any:
        """The loaded model with ``updates`` applied to a private copy; a new bias cut to its layer's kept outputs
        where ``cut`` (the rewrite), full size where not (the verification's reference)."""
        new_biases = getattr(plan.data, "new_biases", {})
        analysis, pruned = plan.analysis, plan.selection.pruned

        def kept_outputs(i: int) -> np.ndarray | None:
            op = next(o for o in analysis.graph.ops.values() if o.source == i and o.kind in ("conv", "linear"))
            y = op.outputs[0]
            keep = analysis.keep_mask(y, 1 if op.kind == "conv" else len(analysis.graph.shape(y)) - 1, pruned)
            return None if keep is None or keep.all() else np.flatnonzero(keep)

        return with_updates(self.loaded, updates, new_biases, kept_outputs if cut else None)

    def example_inputs(self) -> tuple[Any, ...]:
        return tuple(self.loaded.input_tuple())

    def rewrite(self, plan: Any, updates: dict[str, Any]) -> Rewritten:
        r = RewriteONNX().call(self.updated(plan, updates, cut=True), plan.analysis, plan.selection.pruned)
        info = {
            "onnx": {
                "sliced_constants": r.sliced,
                "updated_arguments": r.updated_args,
                "materialized_constants": len(r.materialized),
                "removed_nodes": r.removed_nodes,
                "notes": self.loaded.notes,
            }
        }
        return Rewritten(r.model, info, r)

    def verify(self, plan: Any, rewritten: Rewritten, updates: dict[str, Any], rtol: float) -> dict[str, Any]:
        reference = self.updated(plan, updates, cut=False)
        with self._view(rewritten.model) as model:  # a model near 2 GB: never serialized whole for ONNX Runtime
            return VerifyONNX(rtol=rtol).call(reference, plan.analysis, plan.selection.pruned, model).to_dict()

    def _view(self, model: Any) -> Any:
        """The pruned model as :func:`frontends.onnx.large.lazy_view` where the input was mapped or it is over 2 GB."""
        return large.lazy_view(model) if large.is_lazy(self.loaded.model) or large.is_large(model) else contextlib.nullcontext(model)

    def measure(self, rewritten: Rewritten) -> ChannelGraph:
        try:
            with self._view(rewritten.model) as model:
                return load_onnx(model, self.loaded.inputs).graph
        except PrunecError as exc:
            raise InternalError(f"the pruned ONNX model does not load again: {exc}") from exc

    def latency_model(self) -> Any:
        return self.loaded.model

    def depth(self) -> Any:
        from frontends.onnx.depth import OnnxDepth

        return OnnxDepth(self.loaded, [dict(b.inputs) for b in self.data.batches], self.calibration is not None)
