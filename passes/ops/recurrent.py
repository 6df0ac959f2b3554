"""Recurrent layers: LSTM, GRU and Elman RNN (``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``, ONNX ``LSTM`` / ``GRU`` / ``RNN``).

Both frontends lower a recurrent layer into one neutral op of kind ``recurrent``:

inputs (canonical order)
    ``[x, h0, c0, sequence_lens, *weights]``; absent ones are ``None``. ``x`` carries
    its input features on its last dim (batch-first or not, batched or not).
attrs
    ``cell``: ``"lstm"``, ``"gru"`` or ``"rnn"``; ``gates``: 4, 3 or 1 (blocks of rows
    in every weight, in the format's own order: torch i,f,g,o / r,z,n, ONNX i,o,f,c /
    z,r,h; the rule does not depend on the order); ``layers``; ``directions`` (1 or 2);
    ``hidden``; ``proj`` (torch ``proj_size``, 0 without); ``weights``: how the
    weights are laid out after the first four inputs:

    - ``"per_layer"`` (torch): for each layer, for each direction,
      ``w_ih [G*H, in]``, ``w_hh [G*H, P or H]``, ``b_ih [G*H]``, ``b_hh [G*H]``,
      ``w_hr [P, H]`` (biases and ``w_hr`` ``None`` where absent);
    - ``"stacked"`` (ONNX, one layer): ``W [D, G*H, in]``, ``R [D, G*H, H]``,
      ``B [D, 2*G*H]``, ``P [D, 3*H]`` (peepholes, LSTM only).

    ``outputs``: the role of each output, in order, from ``"y"`` (the sequence of
    hidden states), ``"h"`` (the last hidden state), ``"c"`` (the last cell state);
    ``y_concat``: True where ``y`` holds the directions concatenated on its last dim
    (torch: ``[..., D*H]``), False where they have a dim of their own (ONNX:
    ``[..., D, ..., H]``).

Channels. Hidden unit ``j`` is one channel: row ``g*H + j`` of every gate block ``g``
of every input, recurrent and bias weight, column ``j`` of the recurrent weight, the
last dim of the states and of ``y`` (at offset ``d*H + j`` for direction ``d`` where the
directions are concatenated), and the input column of the next layer. Decisions:

- both directions of a bidirectional layer share the channel set (unit ``j`` forward and
  unit ``j`` backward go together): a layer has one hidden size;
- the layers of one torch module share it too (``nn.LSTM`` has one ``hidden_size``);
  separate ONNX nodes (one layer each) prune on their own;
- torch ``proj_size`` (LSTM with projections) is frozen, with the reason;
- the input features tie to the input columns of the first layer's weights;
- an initial state from elsewhere ties to the hidden units (a model input freezes them); a tensor of
  zeros made for the layer alone (torch.export's ``zeros`` for a call without one) follows them.

Zeroing a removed unit's rows is not what makes the masked original equal the pruned
layer (an LSTM's gates see sigmoid(0) = 0.5): the reference semantics of each adapter
drop its recurrent and next-layer columns (frontends/torch/rewrite_recurrent.py,
frontends/onnx/rewrite_recurrent.py).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from frontends.graph import Op
from passes.atoms import Labels
from passes.ops.context import RuleContext
from passes.ops.spec import ShapeFn, op_spec

log = logging.getLogger(__name__)

__all__ = ["GATES", "torch_weight_slots"]

GATES = {"lstm": 4, "gru": 3, "rnn": 1}

recurrent = op_spec("recurrent")

_PER_SLOT = 5  # torch: w_ih, w_hh, b_ih, b_hh, w_hr per (layer, direction)


def torch_weight_slots(op: Op) -> list[tuple[int, int, list[str | None]]]:
    """``(layer, direction, [w_ih, w_hh, b_ih, b_hh, w_hr])`` of a ``per_layer`` op, in input order."""
    out = []
    ws = op.inputs[4:]
    k = 0
    for layer in range(int(op.attrs["layers"])):
        for d in range(int(op.attrs["directions"])):
            out.append((layer, d, list(ws[k : k + _PER_SLOT])))
            k += _PER_SLOT
    return out


@recurrent.channel_rule
def _recurrent(op: Op, ctx: RuleContext) -> None:
    """Hidden unit j is one channel across gates, directions, layers, states and the output (module docstring)."""
    a = op.attrs
    g, dirs, hidden, proj = int(a["gates"]), int(a["directions"]), int(a["hidden"]), int(a.get("proj", 0) or 0)
    x = op.input(0)
    xl = ctx.get(x)
    cell = ctx.atoms.fresh(hidden)  # the cell's hidden units
    out = cell if not proj else ctx.atoms.fresh(proj)  # what leaves the cell: h, y, the next layer's input
    if proj:
        ctx.freeze(cell, "LSTM proj_size: the hidden size of a projected LSTM is not pruned")
        ctx.freeze(out, "LSTM proj_size: the projection size is not pruned")
    rows = np.tile(cell, g)

    def tie(value: str | None, dim: int, atoms: np.ndarray | None, reason: str) -> None:
        if value is not None:
            ctx.tie(ctx.get(value)[dim], atoms, reason)

    if a["weights"] == "stacked":
        w, r, b, p = (op.inputs[4 + i] if len(op.inputs) > 4 + i else None for i in range(4))
        tie(w, 1, rows, "recurrent input weight")
        tie(w, 2, xl[-1], "recurrent layer over an untracked input")
        tie(r, 1, rows, "recurrent weight")
        tie(r, 2, out, "recurrent weight")
        tie(b, 1, np.tile(cell, 2 * g), "recurrent bias")
        tie(p, 1, np.tile(cell, 3), "LSTM peepholes")
        for v in (w, r):
            if v is not None:
                ctx.producer(v, 1, rows)
    else:
        for layer, _d, (w_ih, w_hh, b_ih, b_hh, w_hr) in torch_weight_slots(op):
            tie(w_ih, 0, rows, "recurrent input weight")
            tie(w_ih, 1, xl[-1] if layer == 0 else np.tile(out, dirs), "recurrent layer over an untracked input")
            tie(w_hh, 0, rows, "recurrent weight")
            tie(w_hh, 1, out, "recurrent weight")
            tie(b_ih, 0, rows, "recurrent bias")
            tie(b_hh, 0, rows, "recurrent bias")
            tie(w_hr, 0, out, "LSTM projection")
            tie(w_hr, 1, cell, "LSTM projection")
            for v in (w_ih, w_hh):
                if v is not None:
                    ctx.producer(v, 0, rows)
    _initial_state(op, ctx, op.inputs[1], out, "initial hidden state from an untracked tensor")
    _initial_state(op, ctx, op.inputs[2], cell, "initial cell state from an untracked tensor")
    for role, v in zip(a["outputs"], op.outputs, strict=True):
        lab: Labels = [None] * len(ctx.shape(v))
        if role == "y":
            lab[-1] = np.tile(out, dirs) if a.get("y_concat") else out
        elif role == "h":
            lab[-1] = out
        elif role == "c":
            lab[-1] = cell
        ctx.set(v, lab)


def _initial_state(op: Op, ctx: RuleContext, value: str | None, atoms: np.ndarray, reason: str) -> None:
    """An initial state carries the hidden units on its last dim. A tensor of zeros made for this layer alone
    (torch.export's ``zeros([L*D, B, H])`` for an ``nn.LSTM`` called without one) takes them: its size follows."""
    if value is None:
        return
    lab = list(ctx.get(value))
    v = ctx.graph.values[value]
    made = ctx.graph.ops.get(v.producer) if v.producer else None
    if lab[-1] is None and made is not None and made.kind == "factory" and "zeros" in made.target and v.users == [op.name]:
        lab[-1] = atoms
        ctx.set(value, lab)
        return
    ctx.tie(lab[-1], atoms, reason)


@recurrent.cost
def _recurrent_macs(op: Op, shape: ShapeFn) -> int:
    """Per time step and sequence: every weight matrix times its input (gates, recurrence, projection)."""
    x = shape(op.input(0))
    steps = math.prod(x[:-1])  # time steps x batch
    if op.attrs["weights"] == "stacked":
        mats = [v for v in op.inputs[4:6] if v is not None]
    else:
        mats = [v for _l, _d, ws in torch_weight_slots(op) for v in (ws[0], ws[1], ws[4]) if v is not None]
    return steps * sum(math.prod(shape(v)) for v in mats)
