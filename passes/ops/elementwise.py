"""Element-wise ops, reductions, softmax, scans and tensor factories."""

from __future__ import annotations

import logging
from typing import Any

from frontends.graph import Op
from passes.atoms import Labels
from passes.ops.common import broadcast_labels
from passes.ops.context import RuleContext, axis
from passes.ops.spec import ChannelRead, op_spec, register

log = logging.getLogger(__name__)


@register("identity", "unary")
def _unary(op: Op, ctx: RuleContext) -> None:
    """Element-wise op of one tensor (activations, dropout, clamp, ...)."""
    ctx.set(op.outputs[0], ctx.get(op.input(0)))


@register("binary")
def _binary(op: Op, ctx: RuleContext) -> None:
    """Add, sub, mul, div, max, min ... with broadcasting (SE gates, residuals)."""
    ins = op.tensor_inputs()
    labels = broadcast_labels(
        ctx, [ctx.get(v) for v in ins], [ctx.shape(v) for v in ins], f"{op.target} of a tracked and an untracked tensor"
    )
    ctx.set(op.outputs[0], labels)


@register("quantize")
def _quantize(op: Op, ctx: RuleContext) -> None:
    """QuantizeLinear / DequantizeLinear: element-wise, so channels pass through. A per-axis scale and zero
    point (1-D, one entry per index of ``axis``) are that axis's channels: the codes and their parameters are
    pruned together. A scalar scale (or a 1-D one of one entry) carries no channel."""
    x = op.input(0)
    xl = list(ctx.get(x))
    if xl:
        ax = axis(int(op.attrs.get("axis", 1)), len(xl))
        for p in op.inputs[1:]:
            if p is not None and ctx.shape(p) == (ctx.shape(x)[ax],):
                xl[ax] = ctx.tie(xl[ax], ctx.get(p)[0], "per-axis quantization parameters of an untracked tensor")
    ctx.set(op.outputs[0], xl)


@register("softmax")
def _softmax(op: Op, ctx: RuleContext) -> None:
    """Softmax over a dim couples all of it: a tracked softmax dim is frozen."""
    x = op.input(0)
    xl = list(ctx.get(x))
    ax = axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[ax], f"{op.target} over a channel dimension")
    ctx.set(op.outputs[0], xl)


@register("reduce")
def _reduce(op: Op, ctx: RuleContext) -> None:
    """Reductions: a sum over channels is exact with removed channels, and so are the L1 and L2 norms and
    the sum of squares (a zeroed channel adds 0); so is a mean whose rewrite keeps the original divisor
    (``rescalable``: the torch rewrite multiplies it by kept / original count, RMSNorm's mean of squares);
    max/min/var/logsumexp/... over channels are not."""
    x = op.input(0)
    xl = ctx.get(x)
    dims = {axis(d, len(xl)) for d in op.attrs["dims"]}
    keepdim = bool(op.attrs.get("keepdim", False))
    exact = op.attrs.get("fn") in ("sum", "l1", "l2", "sumsquare") or (op.attrs.get("fn") == "mean" and op.attrs.get("rescalable", False))
    out: Labels = []
    for d, lab in enumerate(xl):
        if d in dims:
            if lab is not None and not exact:
                ctx.freeze(lab, f"{op.attrs.get('fn')} over a channel dimension")
            if keepdim:
                out.append(None)
        else:
            out.append(lab)
    ctx.set(op.outputs[0], out)


@register("scan")
def _scan(op: Op, ctx: RuleContext) -> None:
    """cumsum/cumprod along ``axis``: every position mixes those before it, so a channel axis is frozen."""
    xl = list(ctx.get(op.input(0)))
    d = axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[d], "running sum along a channel dimension")
    xl[d] = None
    ctx.set(op.outputs[0], xl)


@register("factory")
def _factory(op: Op, ctx: RuleContext) -> None:
    """new_zeros/zeros_like/...: a fresh tensor with no channels of its own."""
    for out in op.outputs:
        ctx.get(out)


@op_spec("reduce").channel_read
def _reduce_reads(op: Op, analysis: Any) -> ChannelRead | None:
    """A sum over channels, or a mean that the rewrite rescales, contracts its first tracked reduced dim."""
    if not (op.attrs.get("fn") == "sum" or (op.attrs.get("fn") == "mean" and op.attrs.get("rescalable"))):
        return None
    x = op.input(0)
    rank = len(analysis.graph.shape(x))
    lab = analysis.labels.get(x)
    tracked = [d % rank for d in op.attrs["dims"] if lab and lab[d % rank] is not None]
    return ChannelRead(0, tracked[0]) if tracked else None
