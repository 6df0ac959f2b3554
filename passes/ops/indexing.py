"""Indexing: basic indexing, in-place item assignment, gather by index tensor."""

from __future__ import annotations

import logging

from frontends.graph import Op
from passes.ops.common import broadcast_labels, indexed_labels
from passes.ops.context import RuleContext, axis
from passes.ops.spec import register

log = logging.getLogger(__name__)


@register("index")
def _index(op: Op, ctx: RuleContext) -> None:
    """Basic indexing x[..., a:b:s, i, None]: contiguous slices of a channel dim keep their channels;
    strided slices and single indices of a channel dim are frozen."""
    labels, _ = indexed_labels(ctx, op.input(0), op.attrs["items"], "indexing", ctx.shape(op.outputs[0]))
    ctx.set(op.outputs[0], labels)


@register("setitem")
def _setitem(op: Op, ctx: RuleContext) -> None:
    """x[index] = v in place: v's channels are the indexed positions' channels (v broadcasts).

    Contiguous slices of a channel dim keep their channels (the rewrite moves the
    bounds); a single index or a strided slice of a channel dim freezes it.
    """
    labels, sizes = indexed_labels(ctx, op.input(0), op.attrs["items"], "writing into")
    if len(op.inputs) > 1:
        v = op.input(1)
        broadcast_labels(ctx, [labels, ctx.get(v)], [tuple(sizes), ctx.shape(v)], "value written into a slice")


@register("take")
def _take(op: Op, ctx: RuleContext) -> None:
    """x[..., idx] with an integer index tensor on one axis: rows are gathered by value.

    The indexed axis is frozen (its positions are data) and so is the index; the
    index's dims replace the axis; the other dims keep their channels (Swin's
    relative position bias table keeps its head dim).
    """
    x = op.input(0)
    xl = list(ctx.get(x))
    ax = axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[ax], "indexing a channel dimension with a tensor")
    if len(op.inputs) > 1:
        idx = op.input(1)
        ctx.freeze_all(idx, "index tensor")
        index_rank = len(ctx.shape(idx))
    else:  # a constant index (ONNX Gather with static indices): only its shape matters here
        index_rank = len(op.attrs["index_shape"])
    ctx.set(op.outputs[0], xl[:ax] + [None] * index_rank + xl[ax + 1 :])
