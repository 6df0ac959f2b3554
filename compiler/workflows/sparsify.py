"""Unstructured sparsity (seed 000): magnitude thresholding and top-k, on a copy of the model.

Used before the ``f_nz`` policy turns units with too few non-zero weights into
structured removal (seed 002, fig. 2.11).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["sparsify"]

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


def sparsify(model: nn.Module, amount: float | None = None, threshold: float | None = None, scope: str = "layer") -> nn.Module:
    """A copy of ``model`` whose conv/linear weights are zeroed by magnitude.

    ``threshold``: every weight with |w| < threshold becomes 0. ``amount``: the
    fraction of weights to zero (top-k by magnitude kept), per layer
    (``scope="layer"``) or over all layers (``"global"``).
    """
    if (amount is None) == (threshold is None):
        raise ValueError("give exactly one of amount= or threshold=")
    if amount is not None and not 0.0 <= amount < 1.0:
        raise ValueError(f"amount must be in [0, 1), got {amount}")
    out = copy.deepcopy(model)
    weights = [m.weight for m in out.modules() if isinstance(m, _LAYERS)]
    with torch.no_grad():
        if threshold is not None:
            for w in weights:
                w[w.abs() < threshold] = 0.0
            return out
        assert amount is not None  # exactly one of amount= and threshold= was given, and threshold is None
        if scope == "global":
            allw = torch.cat([w.abs().flatten() for w in weights])
            k = int(amount * allw.numel())
            if k:
                cut = allw.kthvalue(k).values
                for w in weights:
                    w[w.abs() <= cut] = 0.0
            return out
        for w in weights:
            k = int(amount * w.numel())
            if k:
                cut = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= cut] = 0.0
    return out
