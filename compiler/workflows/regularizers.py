"""Sparsity-inducing loss terms: group weight decay per coupling group (seed 004) and BatchNorm-scale L1."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from compiler.workflows.common import WEIGHT_LAYERS, as_inputs, layer_weight, zero_like

log = logging.getLogger(__name__)

__all__ = ["SparsityRegularizer", "group_weight_decay", "bn_l1"]


def group_weight_decay(
    model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None
) -> torch.Tensor:
    """Σ over output channels of the L2 norm of the channel's fan-in weights (group lasso, seed 004).

    Without ``example_inputs``: every conv/linear output channel on its own. With them the model
    is traced and coupled channels share one norm (see :class:`SparsityRegularizer`, which
    traces once; use it inside a training loop).
    """
    return SparsityRegularizer(model, example_inputs, group_decay=1.0)()


def bn_l1(model: nn.Module) -> torch.Tensor:
    """Σ |γ| over the BatchNorm layers' scales (network slimming)."""
    terms = [
        m.weight.abs().sum()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]
    if not terms:
        return zero_like(model)
    return torch.stack(terms).sum()


class SparsityRegularizer:
    """A loss term that drives whole channels to zero: ``loss = task_loss + reg()``.

    ``group_decay * Σ_c sqrt(Σ_{units u of channel c} ||w_u||²)`` over channel classes: the
    fan-in weights of every unit of a channel, where ``u`` runs over all layers of the
    channel's coupling group when ``example_inputs`` are given (a residual stream's channel is
    one group of weights across all its producers; the model's output channels and other frozen
    channels are left out), or over one layer's output channel without them. Plus
    ``bn_l1 * Σ|γ|`` over BatchNorm scales. Seed 004 picks ``group_decay`` so that the penalty is
    about the size of the task loss.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
        group_decay: float = 1e-4,
        bn_l1: float = 0.0,
        eps: float = 1e-12,
    ) -> None:
        self.model, self.group_decay, self.bn_l1, self.eps = model, float(group_decay), float(bn_l1), eps
        self.terms: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # (weight, unit axis, class per unit)
        self.n_classes = 0
        self.keep: torch.Tensor | None = None  # classes that are penalized
        if example_inputs is None:
            self._per_layer()
        else:
            self._per_group(as_inputs(example_inputs))

    def _per_layer(self) -> None:
        """One class per output channel of every conv/linear layer."""
        for m in self.model.modules():
            if isinstance(m, WEIGHT_LAYERS):
                w = layer_weight(m)
                axis = 1 if isinstance(m, nn.modules.conv._ConvNd) and m.transposed else 0
                n = w.shape[axis]
                self.terms.append((w, axis, torch.arange(self.n_classes, self.n_classes + n)))
                self.n_classes += n

    def _per_group(self, example_inputs: tuple[torch.Tensor, ...]) -> None:
        """One class per coupled channel of the traced model; frozen channels are not penalized."""
        from frontends.torch import load_torch
        from passes.channel_analysis import ChannelAnalysis

        traced = load_torch(self.model, example_inputs)
        analysis = ChannelAnalysis().call(traced.graph)
        params = dict(self.model.named_parameters())
        skipped = []
        for p in analysis.producers:
            w = params.get(p.weight)
            if w is None:
                skipped.append(p.weight)
                continue
            self.terms.append((w, p.axis, torch.as_tensor(analysis.atom_class[p.atoms], dtype=torch.long)))
        if skipped:
            log.warning("SparsityRegularizer: no parameter of the model for %s; not penalized", ", ".join(skipped))
        self.n_classes = analysis.n_classes
        keep = np.zeros(self.n_classes, dtype=bool)
        for g in analysis.groups:
            keep[g.classes[~g.frozen]] = True
        self.keep = torch.as_tensor(keep)

    def group_term(self) -> torch.Tensor:
        """Σ over penalized channel classes of the L2 norm of their fan-in weights."""
        if not self.terms:
            return zero_like(self.model)
        w0 = self.terms[0][0]
        sq = torch.zeros(self.n_classes, dtype=w0.dtype, device=w0.device)
        for w, axis, cls in self.terms:
            u = w.movedim(axis, 0).reshape(w.shape[axis], -1).pow(2).sum(1)
            sq = sq.index_add(0, cls.to(w.device), u)
        if self.keep is not None:
            sq = sq[self.keep.to(sq.device)]
        return torch.sqrt(sq + self.eps).sum()

    def __call__(self) -> torch.Tensor:
        total = zero_like(self.model)
        if self.group_decay:
            total = total + self.group_decay * self.group_term()
        if self.bn_l1:
            total = total + self.bn_l1 * bn_l1(self.model)
        return total
