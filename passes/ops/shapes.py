"""Ops that move channels around without computing on them: concat, split, slice, pad, permute, reshape, expand, ..."""

from __future__ import annotations

import logging
import math

import numpy as np

from frontends.graph import Op
from passes.atoms import Labels
from passes.ops.common import feeds_attention, reshape_groups, sliced_labels
from passes.ops.context import RuleContext, axis
from passes.ops.spec import register

log = logging.getLogger(__name__)


@register("spatial")
def _spatial(op: Op, ctx: RuleContext) -> None:
    """Pooling (max, avg, adaptive), resize: the last ``nspatial`` dims change, channels pass."""
    x = op.input(0)
    xl = ctx.get(x)
    k = int(op.attrs["nspatial"])
    out_rank = len(ctx.shape(op.outputs[0]))
    for lab in xl[len(xl) - k :]:
        ctx.freeze(lab, f"{op.target} over a channel dimension")
    ctx.set(op.outputs[0], list(xl[: len(xl) - k]) + [None] * (out_rank - (len(xl) - k)))


@register("concat")
def _concat(op: Op, ctx: RuleContext) -> None:
    """Concatenation: channels keep their identity at an offset along the axis."""
    ins = op.tensor_inputs()
    rank = len(ctx.shape(ins[0]))
    ax = axis(int(op.attrs["axis"]), rank)
    labs = [ctx.get(v) for v in ins]
    along = []
    for v, lab in zip(ins, labs, strict=True):
        a = lab[ax]
        if a is None:  # an untracked part (a model input, an unknown op's output): its own frozen channels
            a = ctx.atoms.fresh(ctx.shape(v)[ax])
            ctx.freeze(a, "concat with an untracked tensor")
        along.append(a)
    cat = np.concatenate(along)
    out: Labels = []
    for d in range(rank):
        if d == ax:
            out.append(cat)
            continue
        label = labs[0][d]
        for lab in labs[1:]:
            label = ctx.tie(label, lab[d], "concat of tracked and untracked tensors")
        out.append(label)
    ctx.set(op.outputs[0], out)


@register("stack")
def _stack(op: Op, ctx: RuleContext) -> None:
    """Stack: every input is pruned identically; the new axis has no channels."""
    ins = op.tensor_inputs()
    labs = [ctx.get(v) for v in ins]
    rank = len(labs[0])
    ax = axis(int(op.attrs["axis"]), rank + 1)
    out: Labels = []
    for d in range(rank):
        label = labs[0][d]
        for lab in labs[1:]:
            label = ctx.tie(label, lab[d], "stack of tracked and untracked tensors")
        out.append(label)
    out.insert(ax, None)
    ctx.set(op.outputs[0], out)


@register("split")
def _split(op: Op, ctx: RuleContext) -> None:
    """split/chunk/unbind-free splits along an axis.

    Sizes given as a list are rewritten per chunk; a split into equal chunks
    (chunk(n), split(size)) stays equal: position j of every chunk goes together.
    """
    x = op.input(0)
    xl = ctx.get(x)
    ax = axis(int(op.attrs["axis"]), len(xl))
    sizes = [int(s) for s in op.attrs["sizes"]]
    lab = xl[ax]
    if lab is not None and op.attrs.get("equal", False):
        if len(set(sizes)) == 1:
            ctx.tie_strided(lab, len(sizes))
        else:
            ctx.freeze(lab, "split into equal chunks of an indivisible dimension")
    start = 0
    for out, n in zip(op.outputs, sizes, strict=False):
        ol = list(xl)
        ol[ax] = None if lab is None else lab[start : start + n]
        ctx.set(out, ol)
        start += n


@register("slice")
def _slice(op: Op, ctx: RuleContext) -> None:
    """Slice along one axis: contiguous, or one position of every block of channels (else frozen)."""
    x = op.input(0)
    xl = list(ctx.get(x))
    ax = axis(int(op.attrs["axis"]), len(xl))
    n = ctx.shape(x)[ax]
    start, stop, step = slice(op.attrs.get("start"), op.attrs.get("stop"), op.attrs.get("step")).indices(n)
    xl[ax] = sliced_labels(ctx, xl[ax], n, start, stop, step)
    ctx.set(op.outputs[0], xl)


@register("pad")
def _pad(op: Op, ctx: RuleContext) -> None:
    """Constant/reflect padding: a padded channel dim is frozen, others pass."""
    x = op.input(0)
    xl = list(ctx.get(x))
    if "padded_dims" in op.attrs:  # widths known only at run time
        padded = [axis(d, len(xl)) for d in op.attrs["padded_dims"]]
    else:
        pads = list(op.attrs["pads"])  # torch order: (last_lo, last_hi, prev_lo, prev_hi, ...)
        padded = [len(xl) - 1 - i for i in range(len(pads) // 2) if pads[2 * i] or pads[2 * i + 1]]
    for d in padded:
        ctx.freeze(xl[d], "padding along a channel dimension")
        xl[d] = None
    ctx.set(op.outputs[0], xl)


@register("permute")
def _permute(op: Op, ctx: RuleContext) -> None:
    xl = ctx.get(op.input(0))
    ctx.set(op.outputs[0], [xl[axis(p, len(xl))] for p in op.attrs["perm"]])


@register("reshape")
def _reshape(op: Op, ctx: RuleContext) -> None:
    """view/reshape/flatten/unflatten/(un)squeeze.

    Each run of dims is one block of positions. A tracked input dim gives every
    position of its block a channel (flatten: each channel expands to its spatial
    block). The output dim that carries the channel is one whose index already
    determines it (unflatten); otherwise the largest one (innermost on ties), and positions are tied so
    that it does (heads split [h*d] -> [h, d] prunes head dims; channel shuffle
    [C] -> [g, C/g] ties channel j of every group).
    """
    x, y = op.input(0), op.outputs[0]
    xl = ctx.get(x)
    si, so = ctx.shape(x), ctx.shape(y)
    yl: Labels = [None] * len(so)
    for d, n in enumerate(si):
        if n == 1 and xl[d] is not None:
            ctx.freeze(xl[d], "reshape of a single-channel dimension")
    for gi, go in reshape_groups(si, so):
        tracked = [d for d in gi if xl[d] is not None]
        if not tracked or not go:
            for d in tracked:
                ctx.freeze(xl[d], "reshape drops a channel dimension")
            continue
        t = tracked[0]
        for d in tracked[1:]:
            ctx.freeze(xl[d], "reshape merges two channel dimensions")
        total = math.prod(si[d] for d in gi)
        stride = math.prod(si[d] for d in gi[gi.index(t) + 1 :])
        pos = np.arange(total)
        xt = xl[t]
        assert xt is not None  # t is in tracked
        lab = xt[(pos // stride) % si[t]]
        if len(go) == 1:
            yl[go[0]] = lab
            continue
        ostrides = [math.prod(so[d] for d in go[k + 1 :]) for k in range(len(go))]
        choice, exact = None, False
        for k, o in enumerate(go):
            canon = lab[((pos // ostrides[k]) % so[o]) * ostrides[k]]
            if np.array_equal(canon, lab):
                choice, exact = k, True
                break
        if choice is None and len(go) >= 2 and ctx.options.get("attention") == "heads" and feeds_attention(ctx, y):
            choice = len(go) - 2  # [.., h, d]: keep whole heads
        if choice is None:
            choice = max(range(len(go)), key=lambda k: (so[go[k]], k))  # ties: the innermost
        o, st = go[choice], ostrides[choice]
        if not exact:
            ctx.atoms.union(lab, lab[((pos // st) % so[o]) * st])
        yl[o] = lab[np.arange(so[o]) * st]
    ctx.set(y, yl)


@register("expand")
def _expand(op: Op, ctx: RuleContext) -> None:
    """expand/broadcast_to: kept dims keep their channels. A size-1 dim grown by broadcasting holds copies of
    one value, so it can take any channels: it gets fresh atoms, which whatever it meets ties to (F.normalize as
    exported to ONNX: x / Expand(ReduceL2(x), Shape(x)) prunes with x; the rewrite fits the target shape)."""
    x, y = op.input(0), op.outputs[0]
    xl, si, so = ctx.get(x), ctx.shape(x), ctx.shape(y)
    lead = len(so) - len(si)
    out: Labels = [None] * lead
    for d, lab in enumerate(xl):
        if si[d] == so[lead + d]:
            out.append(lab)
        else:
            ctx.freeze(lab, "expand of a single-channel dimension")
            out.append(ctx.atoms.fresh(so[lead + d]))
    ctx.set(y, out)


@register("unbind", "select")
def _unbind_select(op: Op, ctx: RuleContext) -> None:
    """unbind(dim) / x.select(dim, i) / x[:, i]: each output is one index of ``dim``, which goes away
    (a tracked dim there is frozen)."""
    xl = list(ctx.get(op.input(0)))
    ax = axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[ax], "unbind along a channel dimension" if op.kind == "unbind" else "indexing a single channel")
    for out in op.outputs:
        ctx.set(out, xl[:ax] + xl[ax + 1 :])


@register("unfold")
def _unfold(op: Op, ctx: RuleContext) -> None:
    """im2col ([N, C, H, W] -> [N, C*k, L], channel-major): each channel expands to its k kernel positions,
    as in a flatten; the spatial dims become the window index L (a tracked one is frozen)."""
    x, y = op.input(0), op.outputs[0]
    xl = ctx.get(x)
    si, so = ctx.shape(x), ctx.shape(y)
    for d in (2, 3):
        ctx.freeze(xl[d], "unfold over a channel dimension")
    k = so[1] // si[1]
    ctx.set(y, [xl[0], None if xl[1] is None else np.repeat(xl[1], k), None])


@register("roll")
def _roll(op: Op, ctx: RuleContext) -> None:
    """torch.roll: a rolled channel dim is frozen (its order changes); other dims pass."""
    xl = list(ctx.get(op.input(0)))
    for d in op.attrs["dims"]:
        d = axis(d, len(xl))
        ctx.freeze(xl[d], "roll along a channel dimension")
        xl[d] = None
    ctx.set(op.outputs[0], xl)


@register("repeat")
def _repeat(op: Op, ctx: RuleContext) -> None:
    """repeat_interleave / Tensor.repeat along ``axes`` (input dims): a repeated channel dim is frozen; other
    dims keep their channels; ``lead`` new leading dims (Tensor.repeat with more repeats than dims) have none."""
    xl = list(ctx.get(op.input(0)))
    for d in op.attrs["axes"]:
        d = axis(d, len(xl))
        ctx.freeze(xl[d], "repeat along a channel dimension")
        xl[d] = None
    lead: Labels = [None] * int(op.attrs.get("lead", 0))
    ctx.set(op.outputs[0], lead + xl)
