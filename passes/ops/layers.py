"""Layers that contract over channels: conv, linear, matmul, embedding, attention, einsum."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from frontends.graph import Op
from passes.ops.common import broadcast_labels, parse_einsum
from passes.ops.context import RuleContext
from passes.ops.spec import ChannelRead, ShapeFn, op_spec, register

log = logging.getLogger(__name__)


@register("conv")
def _conv(op: Op, ctx: RuleContext) -> None:
    """Conv1d/2d/3d and ConvTranspose, grouped and depthwise.

    A plain conv ties the weight's input axis to the input channels; its output
    channels are the weight's output axis. A grouped conv is pruned by whole
    groups: the input block and the output block of each group are one channel,
    so the group width never changes (depthwise: width 1, channel multiplier ok).
    """
    x, w = op.input(0), op.input(1)
    b = op.inputs[2] if len(op.inputs) > 2 else None
    xl, wl = ctx.get(x), ctx.get(w)
    groups = int(op.attrs.get("groups", 1))
    transposed = bool(op.attrs.get("transposed", False))
    c_in = ctx.shape(x)[1]
    c_out = ctx.shape(op.outputs[0])[1]
    if groups == 1:
        in_axis, out_axis = (0, 1) if transposed else (1, 0)
        ctx.tie(xl[1], wl[in_axis], "conv over an untracked input")
        out_atoms = wl[out_axis]
        ctx.producer(w, out_axis, out_atoms)
    else:
        if transposed:  # weight [C_in, C_out/g, k...]: rows follow the input
            ctx.tie(xl[1], wl[0], "conv over an untracked input")
            out_atoms = ctx.atoms.fresh(c_out)
            ctx.producer(w, 0, wl[0])
        else:  # weight [C_out, C_in/g, k...]
            out_atoms = wl[0]
            ctx.producer(w, 0, out_atoms)
        if out_atoms is None:  # an untracked weight (a model input, an unknown op's output): no groups to prune
            ctx.freeze(xl[1], "grouped conv with an untracked weight")
        elif xl[1] is None:
            ctx.freeze(out_atoms, "grouped conv over an untracked input")
        else:
            xin = xl[1].reshape(groups, c_in // groups)
            xo = out_atoms.reshape(groups, c_out // groups)
            ctx.atoms.union(xin, np.repeat(xin[:, :1], xin.shape[1], axis=1))
            ctx.atoms.union(xo, np.repeat(xin[:, :1], xo.shape[1], axis=1))
    if b is not None:
        ctx.tie(out_atoms, ctx.get(b)[0], "conv bias")
    rank = len(ctx.shape(op.outputs[0]))
    ctx.set(op.outputs[0], [xl[0], out_atoms] + [None] * (rank - 2))


@register("linear")
def _linear(op: Op, ctx: RuleContext) -> None:
    """y = x @ W.T + b on the last dimension; W is [out, in]."""
    x, w = op.input(0), op.input(1)
    b = op.inputs[2] if len(op.inputs) > 2 else None
    xl, wl = ctx.get(x), ctx.get(w)
    ctx.tie(xl[-1], wl[1], "linear over an untracked input")
    ctx.producer(w, 0, wl[0])
    if b is not None:
        ctx.tie(wl[0], ctx.get(b)[0], "linear bias")
    ctx.set(op.outputs[0], list(xl[:-1]) + [wl[0]])


@register("matmul")
def _matmul(op: Op, ctx: RuleContext) -> None:
    """torch.matmul / ONNX MatMul: contraction ties a[-1] to b[-2]; batch dims broadcast.

    A constant operand is a layer: its non-contracted axis is scored as a producer.
    """
    a, b = op.input(0), op.input(1)
    al, bl = list(ctx.get(a)), list(ctx.get(b))
    sa, sb = ctx.shape(a), ctx.shape(b)
    squeeze_a, squeeze_b = len(sa) == 1, len(sb) == 1
    if squeeze_a:
        al.insert(0, None)
        sa = (1, *sa)
    if squeeze_b:
        bl.append(None)
        sb = (*sb, 1)
    ctx.tie(al[-1], bl[-2], "matmul contraction over an untracked operand")
    batch = broadcast_labels(ctx, [al[:-2], bl[:-2]], [sa[:-2], sb[:-2]], "matmul batch dims")
    out = batch + [al[-2], bl[-1]]
    if squeeze_b:
        out.pop(-1)
    if squeeze_a:
        out.pop(-2 if not squeeze_b else -1)
    if ctx.is_const(b) and not squeeze_b and bl[-1] is not None:
        ctx.producer(b, len(sb) - 1, bl[-1])
    elif ctx.is_const(a) and not squeeze_a and al[-2] is not None:
        ctx.producer(a, len(sa) - 2, al[-2])
    elif not squeeze_b and bl[-1] is not None and (w := _transposed_const(ctx, b)) is not None:
        ctx.producer(w[0], w[1][len(sb) - 1], bl[-1])  # x @ W.T (Falcon's FalconLinear): a linear layer
    ctx.set(op.outputs[0], out)


def _transposed_const(ctx: RuleContext, value: str) -> tuple[str, list[int]] | None:
    """(the constant, the permutation) where ``value`` is a permutation of a constant (``W.T``, ``W.transpose``)."""
    src = ctx.graph.values[value].producer
    op = ctx.graph.ops.get(src) if src is not None else None
    if op is None or op.kind != "permute" or not ctx.is_const(op.input(0)):
        return None
    return op.input(0), [int(p) for p in op.attrs["perm"]]


@register("embedding")
def _embedding(op: Op, ctx: RuleContext) -> None:
    """Lookup rows of W [vocab, dim]: the embedding dim is a producer's channel."""
    idx, w = op.input(0), op.input(1)
    wl = ctx.get(w)
    ctx.producer(w, 1, wl[1])
    ctx.set(op.outputs[0], list(ctx.get(idx)) + [wl[1]])


@register("attention")
def _attention(op: Op, ctx: RuleContext) -> None:
    """scaled_dot_product_attention(q, k, v[, mask]): q·k contract the head dim, v gives the output's.

    Batch and head dims broadcast across q, k and v; the key/value sequence dims
    are the same positions. A pruned head dim keeps the original scale (the
    rewrite passes it explicitly).
    """
    q, k, v = op.input(0), op.input(1), op.input(2)
    mask = op.inputs[3] if len(op.inputs) > 3 else None
    ql, kl, vl = ctx.get(q), ctx.get(k), ctx.get(v)
    sq, sk, sv = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    ctx.tie(ql[-1], kl[-1], "attention over an untracked query/key")
    ctx.tie(kl[-2], vl[-2], "attention over an untracked key/value sequence")
    batch = broadcast_labels(ctx, [ql[:-2], kl[:-2], vl[:-2]], [sq[:-2], sk[:-2], sv[:-2]], "attention batch dims")
    if mask is not None:
        for lab in ctx.get(mask):
            ctx.freeze(lab, "attention mask over a channel dimension")
    ctx.freeze(ql[-2], "attention over a channel dimension of the sequence")
    ctx.freeze(kl[-2], "attention over a channel dimension of the sequence")
    ctx.set(op.outputs[0], batch + [ql[-2], vl[-1]])


@register("einsum")
def _einsum(op: Op, ctx: RuleContext) -> None:
    """torch.einsum: dims that share a letter are the same channels, across operands and the output.

    A contracted letter (absent from the output) is a sum over products: exact
    with removed channels zeroed, so it is only tied. A size-1 dim broadcasts and
    carries no channel. A constant operand is a layer: its first dim whose letter
    reaches the output and no other operand is scored as a producer.
    """
    ins = op.tensor_inputs()
    parsed = parse_einsum(str(op.attrs["equation"]), len(ins))
    if parsed is None:
        for v in ins:
            ctx.freeze_all(v, f"einsum {op.attrs['equation']!r} not understood")
        return
    subs, out = parsed
    label: dict[str, np.ndarray | None] = {}
    seen: set[str] = set()
    for v, sub in zip(ins, subs, strict=True):
        lab, shape = ctx.get(v), ctx.shape(v)
        for c, lc, n in zip(sub, lab, shape, strict=False):
            if n == 1 and len(ins) > 1:
                ctx.freeze(lc, "einsum broadcast of a single-channel dimension")
                continue
            if c not in seen:
                seen.add(c)
                label[c] = lc
            else:
                label[c] = ctx.tie(label[c], lc, "einsum over a tracked and an untracked operand")
    for k, (v, sub) in enumerate(zip(ins, subs, strict=True)):
        if not ctx.is_const(v):
            continue
        others = "".join(s for j, s in enumerate(subs) if j != k)
        for d, c in enumerate(sub):
            if c in out and c not in others and label.get(c) is not None:
                ctx.producer(v, d, label[c])
                break
    oshape = ctx.shape(op.outputs[0])
    ctx.set(op.outputs[0], [label.get(c) if n > 1 or len(ins) == 1 else None for c, n in zip(out, oshape, strict=False)])


# ---------------------------------------------------------------------------
# cost, channel reads and latency descriptions of the layers

conv, linear, matmul, attention = op_spec("conv"), op_spec("linear"), op_spec("matmul"), op_spec("attention")


@conv.cost
def _conv_macs(op: Op, shape: ShapeFn) -> int:
    w = shape(op.input(1))
    n = math.prod(shape(op.input(0))) if op.attrs.get("transposed") else math.prod(shape(op.outputs[0]))
    return n * math.prod(w[1:])


@linear.cost
def _linear_macs(op: Op, shape: ShapeFn) -> int:
    return math.prod(shape(op.outputs[0])) * shape(op.input(1))[1]


@matmul.cost
def _matmul_macs(op: Op, shape: ShapeFn) -> int:
    return math.prod(shape(op.outputs[0])) * shape(op.input(0))[-1]


@attention.cost
def _attention_macs(op: Op, shape: ShapeFn) -> int:
    """q @ k^T, then weights @ v."""
    q, k, v = shape(op.input(0)), shape(op.input(1)), shape(op.input(2))
    scores = math.prod(q[:-1]) * k[-2]
    return scores * q[-1] + scores * v[-1]


def _constant(analysis: Any, value: str | None) -> str | None:
    """``value`` where it is a constant weight (not a computed one), else None."""
    return value if value is not None and analysis.graph.values[value].is_const else None


@conv.channel_read
def _conv_reads(op: Op, analysis: Any) -> ChannelRead:
    return ChannelRead(0, 1, _constant(analysis, op.inputs[1]))


@linear.channel_read
def _linear_reads(op: Op, analysis: Any) -> ChannelRead:
    return ChannelRead(0, len(analysis.graph.shape(op.input(0))) - 1, _constant(analysis, op.inputs[1]))


@matmul.channel_read
def _matmul_reads(op: Op, analysis: Any) -> ChannelRead:
    return ChannelRead(0, len(analysis.graph.shape(op.input(0))) - 1, _constant(analysis, op.inputs[1]))


@dataclass(frozen=True)
class ConvSpec:
    """A 2-d convolution up to its channel counts, as the latency tables time it: batch, spatial sizes,
    kernel, stride, padding."""

    n: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    depthwise: bool
    group_width: int  # input channels per group (grouped convs prune whole groups)


@dataclass(frozen=True)
class LinearSpec:
    """A linear layer up to its channel counts: ``m`` rows (the product of the leading dims)."""

    m: int


@dataclass(frozen=True)
class LatencyLayer:
    """``layer`` timed at input width ``cin`` and output width ``cout`` (read off the shapes given)."""

    layer: ConvSpec | LinearSpec
    cin: int
    cout: int


def _conv_geometry(x: Sequence[int], w: Sequence[int], y: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Stride and padding that give ``y``'s spatial size from ``x``'s with kernel ``w``."""
    stride, pad = [], []
    for i in range(2):
        n_in, n_out, k = x[2 + i], y[2 + i], w[2 + i]
        s = max(1, round(n_in / max(n_out, 1)))
        p = max(0, math.ceil(((n_out - 1) * s + k - n_in) / 2))
        stride.append(s)
        pad.append(p)
    return (stride[0], stride[1]), (pad[0], pad[1])


@conv.latency_layer
def _conv_latency(op: Op, shape: ShapeFn) -> LatencyLayer | None:
    if op.attrs.get("transposed"):
        return None
    x, w, y = shape(op.input(0)), shape(op.input(1)), shape(op.outputs[0])
    if len(x) != 4 or len(w) != 4 or len(y) != 4:
        return None
    stride, pad = _conv_geometry(x, w, y)
    groups = int(op.attrs.get("groups", 1))
    depthwise = groups > 1 and groups == x[1] and w[1] == 1
    return LatencyLayer(ConvSpec(x[0], x[2], x[3], w[2], w[3], stride, pad, depthwise, w[1]), x[1], w[0])


@linear.latency_layer
def _linear_latency(op: Op, shape: ShapeFn) -> LatencyLayer:
    x, w = shape(op.input(0)), shape(op.input(1))
    return LatencyLayer(LinearSpec(int(math.prod(x[:-1]))), w[1], w[0])
