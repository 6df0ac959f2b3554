"""The ONNX adapter: a ``ModelProto`` or ``.onnx`` file lowered into the channel graph, run in ONNX Runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

from frontends.adapter import Adapter, Rewritten
from frontends.errors import InternalError, PrunecError
from frontends.graph import ChannelGraph
from frontends.onnx.frontend import load_onnx
from frontends.onnx.rewrite import RewriteONNX
from frontends.onnx.verify import VerifyONNX

log = logging.getLogger(__name__)

__all__ = ["OnnxAdapter"]


class OnnxAdapter(Adapter):
    """Loads (with its security checks), rewrites and verifies an ONNX model; the input file is never touched."""

    name: ClassVar[str] = "onnx"
    capabilities: ClassVar[frozenset[str]] = frozenset({"weights"})
    tolerance_floor: ClassVar[float] = 1e-4  # ONNX Runtime computes in float32

    def __init__(self, model: Any, example_inputs: Any = None, seed: int = 0) -> None:
        self.model, self.given_inputs, self.seed = model, example_inputs, seed

    def load(self, steps: Callable[..., Any]) -> ChannelGraph:
        self.loaded = steps("load", load_onnx, self.model, self.given_inputs, self.seed)
        self.handle, self.graph = self.loaded, self.loaded.graph
        self.model_name, self.trace_method = self.loaded.name, self.loaded.method
        return self.graph

    def example_inputs(self) -> tuple[Any, ...]:
        return tuple(self.loaded.input_tuple())

    def rewrite(self, plan: Any, updates: dict[str, Any]) -> Rewritten:
        r = RewriteONNX().call(self.loaded, plan.analysis, plan.selection.pruned)
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
        return VerifyONNX(rtol=rtol).call(self.loaded, plan.analysis, plan.selection.pruned, rewritten.model).to_dict()

    def measure(self, rewritten: Rewritten) -> ChannelGraph:
        try:
            return load_onnx(rewritten.model, self.loaded.inputs).graph
        except PrunecError as exc:
            raise InternalError(f"the pruned ONNX model does not load again: {exc}") from exc

    def latency_model(self) -> Any:
        return self.loaded.model
