"""Unstructured magnitude sparsity, and the dead units it leaves removed into a dense network."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from compiler.api import CompileResult
from compiler.api import compile as _compile
from compiler.workflows.common import WEIGHT_LAYERS, as_inputs, layer_weight, reject_policies
from frontends.errors import InvalidArgumentError

__all__ = ["MagnitudePruner", "sparsify_and_compact", "CompactResult", "weight_sparsity"]


class MagnitudePruner:
    """Unstructured magnitude pruning during training (seed 002 section 2.2, seed 000).

    ``prune(fraction)`` zeroes the ``fraction`` of conv/linear weights with the smallest
    magnitude (over all layers with ``scope="global"``, as seed 002; per layer with
    ``"layer"``); fractions are cumulative and masks only grow. The zeros are held during
    training: gradients of removed weights are masked, and ``attach(optimizer)`` re-applies the
    masks after every optimizer step (momentum or weight decay would otherwise move them).
    ``remove()`` drops the hooks. Then :func:`sparsify_and_compact`'s second half
    (``compile(model, x, f_nz=0.0)``) turns dead units into a smaller dense network.
    """

    def __init__(self, model: nn.Module, scope: str = "global") -> None:
        if scope not in ("global", "layer"):
            raise InvalidArgumentError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.model, self.scope = model, scope
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(layer_weight(m), dtype=torch.bool) for n, m in self.layers.items()
        }
        self._handles: list[RemovableHandle] = []
        for n, m in self.layers.items():
            self._handles.append(layer_weight(m).register_hook(lambda g, n=n: g * self.masks[n].to(g.dtype)))

    def prune(self, fraction: float) -> float:
        """Zero the smallest weights until ``fraction`` of them are zero; returns the sparsity reached."""
        from compiler.workflows.sparsify import sparsify

        if not 0.0 <= fraction < 1.0:
            raise InvalidArgumentError(f"fraction must be in [0, 1), got {fraction}")
        # sparsify zeroes a copy of its model: here a ModuleDict of the layers (its keys may not hold dots)
        probe: nn.Module = nn.ModuleDict({_key(n): m for n, m in self.layers.items()})
        if fraction > 0:
            probe = sparsify(probe, amount=fraction, scope=self.scope)
        sparse = dict(probe.named_children())
        with torch.no_grad():
            for n in self.layers:
                self.masks[n] &= layer_weight(sparse[_key(n)]) != 0
        self.apply()
        return self.sparsity

    def apply(self) -> None:
        """Zero the masked weights again."""
        with torch.no_grad():
            for n, m in self.layers.items():
                w = layer_weight(m)
                w.mul_(self.masks[n].to(w.dtype))

    def attach(self, optimizer: torch.optim.Optimizer) -> MagnitudePruner:
        """Re-apply the masks after every step of ``optimizer``."""
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply()))
        return self

    def remove(self) -> None:
        """Drop the gradient and optimizer hooks (the zeros stay)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0


def _key(name: str) -> str:
    return name.replace(".", "/")


@dataclass
class CompactResult:
    """The unstructured-sparse copy of a model and the dense network compiled from it."""

    sparse: nn.Module  # the unstructured-sparse copy (same architecture)
    sparsity: float  # fraction of conv/linear weights that are zero in it
    result: CompileResult  # the dense network without its dead units

    @property
    def model(self) -> nn.Module:
        model: nn.Module = self.result.model
        return model


def weight_sparsity(model: nn.Module) -> float:
    """The fraction of conv/linear weights of ``model`` that are zero."""
    ws = [layer_weight(m) for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    total = sum(w.numel() for w in ws)
    return float(sum(int((w == 0).sum()) for w in ws)) / total if total else 0.0


def sparsify_and_compact(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    amount: float | None = None,
    threshold: float | None = None,
    *,
    scope: str = "layer",
    f_nz: float = 0.0,
    **compile_kwargs: Any,
) -> CompactResult:
    """Unstructured magnitude pruning (top-k ``amount`` or ``threshold``, seed 000), then the units
    with at most ``f_nz`` non-zero fan-in or fan-out weights removed into a dense network (seed 002).

    ``compile_kwargs`` go to ``compile`` (``bias_propagation`` is on by default with ``f_nz``;
    give ``calibration`` for the means it propagates; ``granularity`` defaults to 1 here, since
    dead units come one at a time). Without ``amount`` and ``threshold`` the model is compacted as it is.
    """
    from compiler.workflows.sparsify import sparsify

    reject_policies(compile_kwargs, "the policy is f_nz")
    inputs = as_inputs(example_inputs)
    if amount is None and threshold is None:
        sparse = copy.deepcopy(model)
    else:
        sparse = sparsify(model, amount=amount, threshold=threshold, scope=scope)
    compile_kwargs.setdefault("granularity", 1)
    result = _compile(sparse, inputs, f_nz=f_nz, **compile_kwargs)
    return CompactResult(sparse, weight_sparsity(sparse), result)
