"""Torch handlers of the ``recurrent`` op (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``; passes/ops/recurrent.py).

Rewrite: the weights are sliced before the handler runs (gate blocks, recurrent and
next-layer columns, biases); the handler makes the module's ``input_size`` and
``hidden_size`` follow them and refreshes its flat weight list.

Reference semantics for verification: the masked original must compute what the
pruned layer computes. Zeroing a removed hidden unit's output after the call is not
enough: inside the call the unit still feeds every other unit through the recurrent
weight (and the next layer through its input weight). The reference runs a copy of the
module whose columns reading removed units are zero — the recurrent weight of every
layer, the input weight of every layer after the first — so the kept units see exactly
what they see in the pruned layer; the removed units' own outputs are zeroed after the
call like every other removed channel. (A removed unit with its rows zeroed too would
stay at zero on its own: LSTM c' = 0.5 c + 0.5 tanh(0) = 0 from c0 = 0, h = o tanh(c) = 0;
GRU n = tanh(0) = 0, h' = 0.5 h = 0 from h0 = 0; RNN tanh(0) = relu(0) = 0. The reference
does not rely on it.)
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from frontends.graph import Op
from frontends.torch.nodes import call_name
from frontends.torch.rewrite import RewriteTarget, TorchRewrite
from frontends.torch.verify import MaskedInterpreter
from passes.ops import op_spec
from passes.ops.recurrent import torch_weight_slots

log = logging.getLogger(__name__)

__all__: list[str] = []  # handlers are reached through the op spec

_spec = op_spec("recurrent")


@_spec.rewriter("torch")
def _recurrent_module(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """``input_size`` and ``hidden_size`` from the sliced first-layer weights; the flat weight list follows."""
    if not isinstance(target, nn.RNNBase):
        return False
    rows, cols = target.get_parameter("weight_ih_l0").shape
    changed = rw.set_attrs(target, input_size=int(cols), hidden_size=int(rows) // int(op.attrs["gates"]))
    target._init_flat_weights()  # the parameters were replaced: the list the forward reads must hold the new ones
    return changed


@op_spec("factory").rewriter("torch")
def _zeros_size(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """``zeros(size)`` whose tensor follows pruned channels (a recurrent layer's initial state made by
    torch.export): the size given follows the pruned shape."""
    if not isinstance(target, torch.fx.Node) or call_name(target) != "zeros" or not target.args:
        return False
    new = list(rw.pruned_shape(op.outputs[0]))
    if new == list(rw.original_shape(op.outputs[0])):
        return False
    size = target.args[0]
    if not (isinstance(size, (list, tuple)) and len(size) == len(new) and all(isinstance(s, int) for s in size)):
        return False  # a size computed at run time: left as it is (verification would name it)
    return rw.set_args(target, [new, *target.args[1:]], dict(target.kwargs))


def removed_hidden(op: Op, y_mask: torch.Tensor | None) -> np.ndarray | None:
    """Indices of the removed hidden units, read off the keep mask of the output ``y`` (None: none removed)."""
    if y_mask is None:
        return None
    keep = y_mask.reshape(-1).cpu().numpy()
    width = keep.size // int(op.attrs["directions"])
    gone = np.flatnonzero(~keep[:width])
    return gone if gone.size else None


@_spec.reference_semantics("torch")
def _masked_recurrent(run: MaskedInterpreter, op: Op, n: torch.fx.Node) -> Any:
    """The module with the columns that read removed hidden units zeroed (module docstring)."""
    masks = run.masks.get(n.name) or [None]
    gone = removed_hidden(op, masks[0]) if "y" in op.attrs["outputs"][:1] else None
    if gone is None:
        return run.run_op(n)
    dirs = int(op.attrs["directions"])
    width = len(run.masks[n.name][0].reshape(-1)) // dirs  # type: ignore[union-attr]
    cols = torch.as_tensor(gone)
    next_cols = torch.as_tensor(np.concatenate([gone + d * width for d in range(dirs)]))
    args, kwargs = run.cast(run.fetch_args_kwargs_from_env(n))
    if n.op == "call_module":
        module = copy.deepcopy(run.submodule(str(n.target)))
        weights = {f"{k}{sfx}": getattr(module, f"{k}{sfx}") for sfx in _suffixes(op) for k in ("weight_hh", "weight_ih")}
        _drop_columns(weights, cols, next_cols, op)
        return module(*args, **kwargs)
    # aten.lstm / gru / rnn_*(x, hx, params, ...): the same columns of the params given
    params = [p.clone() for p in args[2]]
    per = len(params) // len(_suffixes(op))
    weights = {}
    for k, sfx in enumerate(_suffixes(op)):
        weights[f"weight_ih{sfx}"], weights[f"weight_hh{sfx}"] = params[k * per], params[k * per + 1]
    _drop_columns(weights, cols, next_cols, op)
    return n.target(args[0], args[1], params, *args[3:], **kwargs)  # type: ignore[operator]


def _suffixes(op: Op) -> list[str]:
    """``_l{layer}`` and ``_l{layer}_reverse``, in the order of the weights."""
    return [f"_l{layer}" + ("_reverse" if d else "") for layer, d, _ws in torch_weight_slots(op)]


def _drop_columns(weights: dict[str, torch.Tensor], cols: torch.Tensor, next_cols: torch.Tensor, op: Op) -> None:
    """Zero the recurrent columns over removed units, and the input columns of every layer after the first."""
    with torch.no_grad():
        for sfx in _suffixes(op):
            weights[f"weight_hh{sfx}"][:, cols] = 0
            if not sfx.startswith("_l0"):
                weights[f"weight_ih{sfx}"][:, next_cols] = 0
