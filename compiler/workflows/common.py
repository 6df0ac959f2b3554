"""What the workflow modules share: the layers they weigh, the policy keywords they own, input normalization."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from frontends.errors import InvalidArgumentError

__all__ = ["WEIGHT_LAYERS", "POLICY_KEYWORDS", "as_inputs", "reject_policies", "clone_state", "zero_like", "layer_weight"]

# the layers whose weights magnitude pruning and the regularizers act on
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)

# compile()'s policy keywords; a workflow that sets the policy itself refuses them
POLICY_KEYWORDS = ("ratio", "threshold", "target_macs", "f_nz")


def as_inputs(example_inputs: Sequence[torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Example inputs as a tuple (a bare tensor is one input)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    return tuple(example_inputs)


def reject_policies(compile_kwargs: Mapping[str, Any], reason: str) -> None:
    """Raise :class:`InvalidArgumentError` when ``compile_kwargs`` set a policy the workflow sets itself."""
    given = [k for k in POLICY_KEYWORDS if compile_kwargs.get(k) is not None]
    if given:
        raise InvalidArgumentError(f"{reason}; do not pass {', '.join(given)}")


def clone_state(state: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of a state dict, or of a model's state dict."""
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise InvalidArgumentError(f"expected a state dict or a model, got {type(state).__name__}")
    return {k: v.detach().clone() for k, v in state.items()}


def zero_like(model: nn.Module) -> torch.Tensor:
    """A scalar zero on the device and of the dtype of the model's first parameter."""
    p = next(model.parameters(), None)
    if p is None:
        return torch.zeros(())
    return torch.zeros((), device=p.device, dtype=p.dtype)


def layer_weight(layer: nn.Module) -> torch.Tensor:
    """The weight tensor of a conv/linear layer."""
    w = layer.weight
    if not isinstance(w, torch.Tensor):
        raise InvalidArgumentError(f"{type(layer).__name__} has no weight tensor")
    return w
