"""The PyTorch adapter: an ``nn.Module`` traced with torch.fx (or torch.export) into the channel graph."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from frontends.adapter import Adapter, Rewritten
from frontends.errors import InternalError, InvalidArgumentError, PrunecError
from frontends.graph import ChannelGraph
from frontends.torch.calibration import CalibrationData
from frontends.torch.criteria import DataCriteria
from frontends.torch.rewrite import RewriteFX
from frontends.torch.structured import is_plain, split_inputs, structured_module
from frontends.torch.trace import load_torch
from frontends.torch.verify import VerifyFX

log = logging.getLogger(__name__)

__all__ = ["TorchAdapter"]


class TorchAdapter(Adapter):
    """Traces, runs (gated, with gradients), rewrites and verifies a PyTorch module; the input is never modified."""

    name: ClassVar[str] = "torch"
    capabilities: ClassVar[frozenset[str]] = frozenset(
        {"weights", "activations", "gradients", "labels", "hvp", "weight_updates"}
    )

    def __init__(
        self,
        model: Any,
        example_inputs: Sequence[Any] | Any,
        calibration: Iterable[Any] | None = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
    ) -> None:

        if example_inputs is None:
            raise InvalidArgumentError("example_inputs are required for a PyTorch model, e.g. (torch.randn(1, 3, 224, 224),)")
        self.model = model
        self.args, self.kwargs = split_inputs(example_inputs)  # a tensor: one argument; a dict: keyword arguments
        self.inputs = tuple(self.args) if is_plain(self.args, self.kwargs) else ()  # the traced graph's inputs, set by load
        self.calibration, self.loss_fn = calibration, loss_fn
        self.model_name = type(model).__name__

    def load(self, steps: Callable[..., Any]) -> ChannelGraph:
        example = self.inputs if is_plain(self.args, self.kwargs) else (self.args if not self.kwargs else self.kwargs)
        if self.kwargs and self.args:
            raise InvalidArgumentError("example_inputs: pass positional arguments as a tuple or keyword arguments as a dict, not both")
        self.traced = steps("trace", load_torch, self.model, example)
        self.inputs = self.traced.example_inputs
        self.data = CalibrationData.from_user(self.calibration, self.inputs, self.loss_fn, signature=self.traced.signature)
        self.handle, self.graph, self.trace_method = self.traced, self.traced.graph, self.traced.method
        return self.graph

    def example_inputs(self) -> tuple[Any, ...]:
        return self.inputs

    def criteria_data(self, analysis: Any, opts: Any) -> Any:
        return DataCriteria(self.traced, analysis, self.data, probes=opts.probes, seed=opts.seed)

    def rewrite(self, plan: Any, updates: dict[str, Any]) -> Rewritten:
        r = RewriteFX().call(self.traced, plan.analysis, plan.selection.pruned, updates)
        sig = self.traced.signature
        # structured arguments: the graph takes and returns leaves; the model handed back takes the arguments as given
        model = r.module if sig is None else structured_module(r.module, sig)
        info: dict[str, Any] = {"trace_notes": list(self.traced.notes)} if self.traced.notes else {}  # to the report's settings
        dtype = model_dtype(self.model)
        if dtype is not None:
            info["model_dtype"] = dtype
        return Rewritten(model, info, r)

    def verify(self, plan: Any, rewritten: Rewritten, updates: dict[str, Any], rtol: float) -> dict[str, Any]:
        pruned = plan.selection.pruned
        flat = rewritten.raw.module if self.traced.signature is not None else rewritten.model
        return VerifyFX(rtol=rtol).call(self.traced, plan.analysis, pruned, flat, self.inputs, updates).to_dict()

    def measure(self, rewritten: Rewritten) -> ChannelGraph:
        flat = rewritten.raw.module if self.traced.signature is not None else rewritten.model
        try:
            return load_torch(flat, self.inputs).graph
        except PrunecError as exc:
            raise InternalError(f"the pruned model does not trace again: {exc}") from exc

    def latency_model(self) -> Any:
        return copy.deepcopy(self.traced.gm)

    def depth(self) -> Any:
        from frontends.torch.depth import TorchDepth

        return TorchDepth(self.traced, self.data, self.inputs, self.calibration is not None)


def model_dtype(model: Any) -> str | None:
    """The floating-point dtype that holds most of the model's parameters (None: no floating parameters)."""
    count: dict[str, int] = {}
    for p in getattr(model, "parameters", lambda: [])():
        if p.is_floating_point():
            key = str(p.dtype).replace("torch.", "")
            count[key] = count.get(key, 0) + p.numel()
    return max(count, key=lambda k: count[k]) if count else None
