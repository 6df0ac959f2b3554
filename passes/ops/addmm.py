"""``addmm``: ``y = bias + x @ W`` with ``W`` stored ``[in, out]`` (torch.addmm; transformers' ``Conv1D``, the layer
of the whole GPT-2 family, is one ``view -> addmm -> view``).

inputs ``[x, W, bias]`` (``x`` and ``W`` two-dimensional; ``bias`` broadcast to ``[m, out]``), no attributes.
"""

from __future__ import annotations

import logging
import math

from frontends.graph import Op
from passes.ops.common import broadcast_labels
from passes.ops.context import RuleContext
from passes.ops.spec import ShapeFn, op_spec

log = logging.getLogger(__name__)

__all__: list[str] = []

addmm = op_spec("addmm")


@addmm.channel_rule
def _addmm(op: Op, ctx: RuleContext) -> None:
    """Like a linear layer with a transposed weight: ``x``'s columns are ``W``'s rows, the output's
    columns ``W``'s columns (a constant ``W`` is scored along them), and the bias broadcasts onto the output."""
    x, w = op.input(0), op.input(1)
    b = op.inputs[2] if len(op.inputs) > 2 else None
    xl, wl = ctx.get(x), ctx.get(w)
    ctx.tie(xl[-1], wl[0], "addmm contraction over an untracked operand")
    out = [xl[0], wl[1]]
    if b is not None:
        out = broadcast_labels(ctx, [out, ctx.get(b)], [ctx.shape(op.outputs[0]), ctx.shape(b)], "addmm bias")
    if ctx.is_const(w) and wl[1] is not None:
        ctx.producer(w, 1, wl[1])
    ctx.set(op.outputs[0], out)


@addmm.cost
def _addmm_macs(op: Op, shape: ShapeFn) -> int:
    return math.prod(shape(op.outputs[0])) * shape(op.input(1))[0]
