"""Normalizations and per-channel affine ops: BatchNorm, InstanceNorm, LayerNorm, GroupNorm, PReLU, F.normalize."""

from __future__ import annotations

import logging

from frontends.graph import Op
from passes.ops.context import RuleContext, axis
from passes.ops.spec import register

log = logging.getLogger(__name__)


@register("batch_norm", "instance_norm")
def _per_channel_norm(op: Op, ctx: RuleContext) -> None:
    """Per-channel affine/statistics on axis 1: every parameter follows its channel.

    InstanceNorm's statistics span every dim after axis 1; a tracked one there (a
    GroupNorm exported as Reshape -> InstanceNormalization) is frozen.
    """
    x = op.input(0)
    xl = ctx.get(x)
    for p in op.inputs[1:]:
        if p is not None and len(ctx.shape(p)) == 1 and ctx.shape(p)[0] == ctx.shape(x)[1]:
            ctx.tie(xl[1], ctx.get(p)[0], f"{op.target} over an untracked input")
    if op.kind == "instance_norm":
        for lab in xl[2:]:
            ctx.freeze(lab, f"{op.target}: statistics over a channel dimension")
    ctx.set(op.outputs[0], xl)


@register("layer_norm")
def _layer_norm(op: Op, ctx: RuleContext) -> None:
    """Normalizes over the last ``ndim`` dims (channels-last LayerNorm as in ConvNeXt).

    Removing channels changes the statistics, so the verification reference
    normalizes over the kept channels only.
    """
    x = op.input(0)
    xl = ctx.get(x)
    k = int(op.attrs["ndim"])
    for p in op.inputs[1:3]:
        if p is not None:
            pl = ctx.get(p)
            for i in range(k):
                ctx.tie(xl[len(xl) - k + i], pl[len(pl) - k + i], "layer norm over an untracked input")
    ctx.set(op.outputs[0], xl)


@register("group_norm")
def _group_norm(op: Op, ctx: RuleContext) -> None:
    """GroupNorm on axis 1: channels of one norm group go together (whole groups).

    A single group (PoolFormer's ``GroupNorm(1, C)``, a LayerNorm over C, H, W)
    prunes channel by channel like LayerNorm where the frontend says the
    verification reference can take its statistics over the kept channels
    (``stats_over_kept``, the torch path).
    """
    x = op.input(0)
    xl = ctx.get(x)
    groups = int(op.attrs["num_groups"])
    c = ctx.shape(x)[1]
    if xl[1] is not None and not (groups == 1 and op.attrs.get("stats_over_kept")):
        ctx.tie_blocks(xl[1], c // groups)
    for p in op.inputs[1:3]:
        if p is not None:
            ctx.tie(xl[1], ctx.get(p)[0], "group norm over an untracked input")
    ctx.set(op.outputs[0], xl)


@register("prelu")
def _prelu(op: Op, ctx: RuleContext) -> None:
    """PReLU: a per-channel slope (axis 1) follows its channel; a single slope broadcasts."""
    x, w = op.input(0), op.input(1)
    xl = ctx.get(x)
    ws = ctx.shape(w)
    if len(ws) == 1 and ws[0] > 1 and len(xl) > 1:
        ctx.tie(xl[1], ctx.get(w)[0], "prelu over an untracked input")
    ctx.set(op.outputs[0], xl)


@register("normalize")
def _normalize(op: Op, ctx: RuleContext) -> None:
    """F.normalize: x / ||x||_p along an axis. For p > 0 a removed (zeroed) channel adds nothing to
    the norm, so the kept channels' values are exact; other p freeze the axis."""
    xl = list(ctx.get(op.input(0)))
    if not float(op.attrs.get("p", 2.0)) > 0:
        ctx.freeze(xl[axis(int(op.attrs["axis"]), len(xl))], "normalize with p <= 0 over a channel dimension")
    ctx.set(op.outputs[0], xl)
