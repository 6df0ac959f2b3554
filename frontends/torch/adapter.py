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
        import torch

        if example_inputs is None:
            raise InvalidArgumentError("example_inputs are required for a PyTorch model, e.g. (torch.randn(1, 3, 224, 224),)")
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        self.model = model
        self.inputs = tuple(example_inputs)
        self.calibration, self.loss_fn = calibration, loss_fn
        self.model_name = type(model).__name__

    def load(self, steps: Callable[..., Any]) -> ChannelGraph:
        self.traced = steps("trace", load_torch, self.model, self.inputs)
        self.data = CalibrationData.from_user(self.calibration, self.inputs, self.loss_fn)
        self.handle, self.graph, self.trace_method = self.traced, self.traced.graph, self.traced.method
        return self.graph

    def example_inputs(self) -> tuple[Any, ...]:
        return self.inputs

    def criteria_data(self, analysis: Any, opts: Any) -> Any:
        return DataCriteria(self.traced, analysis, self.data, probes=opts.probes, seed=opts.seed)

    def rewrite(self, plan: Any, updates: dict[str, Any]) -> Rewritten:
        r = RewriteFX().call(self.traced, plan.analysis, plan.selection.pruned, updates)
        return Rewritten(r.module, {}, r)

    def verify(self, plan: Any, rewritten: Rewritten, updates: dict[str, Any], rtol: float) -> dict[str, Any]:
        pruned = plan.selection.pruned
        return VerifyFX(rtol=rtol).call(self.traced, plan.analysis, pruned, rewritten.model, self.inputs, updates).to_dict()

    def measure(self, rewritten: Rewritten) -> ChannelGraph:
        try:
            return load_torch(rewritten.model, self.inputs).graph
        except PrunecError as exc:
            raise InternalError(f"the pruned model does not trace again: {exc}") from exc

    def latency_model(self) -> Any:
        return copy.deepcopy(self.traced.gm)
