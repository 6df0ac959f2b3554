"""The op registry: how channels flow through each op kind.

One rule per neutral op kind (see :mod:`frontends.graph`). A rule reads the atom
labels of the op's inputs from a :class:`RuleContext`, relates them (``tie``:
pruned together), freezes what must never be pruned, declares *producers*
(the units a saliency criterion scores) and sets the labels of the outputs.

Users extend it for custom ops with :func:`register`; a rule registered under a
source-level target name (a module class name such as ``"MyGate"`` or an ONNX
op type) is used for ops the frontend lowered as ``unknown``. An op with no rule
is never guessed at: every channel that touches it is frozen, and the report
names it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from frontends.graph import ChannelGraph, Op
from passes.atoms import AtomTable, Labels

log = logging.getLogger(__name__)

__all__ = ["RuleContext", "Producer", "register", "lookup", "RULES", "strided_blocks"]

Rule = Callable[[Op, "RuleContext"], None]
RULES: dict[str, Rule] = {}


def register(*kinds: str) -> Callable[[Rule], Rule]:
    """Register a channel-flow rule for one or more op kinds (or source targets)."""

    def deco(fn: Rule) -> Rule:
        for k in kinds:
            RULES[k] = fn
        return fn

    return deco


def lookup(op: Op) -> Rule | None:
    if op.kind != "unknown":
        return RULES.get(op.kind)
    return RULES.get(op.target)


@dataclass
class Producer:
    """Units (output channels) of a layer that a saliency criterion scores.

    ``weight`` is the constant whose slices along ``axis`` are the units' fan-in
    weights; ``atoms[i]`` is the atom of unit ``i``.
    """

    op: str
    weight: str
    axis: int
    atoms: np.ndarray


class RuleContext:
    """What a rule may do while the analysis walks the graph."""

    def __init__(self, graph: ChannelGraph, atoms: AtomTable, options: dict | None = None) -> None:
        self.graph = graph
        self.atoms = atoms
        self.options = dict(options or {})  # e.g. {"attention": "heads"}
        self.labels: dict[str, Labels] = {}
        self.producers: list[Producer] = []
        self.op: Op | None = None  # op being analysed

    # -- labels -------------------------------------------------------------
    def shape(self, value: str) -> tuple[int, ...]:
        return self.graph.shape(value)

    def get(self, value: str) -> Labels:
        """Labels of a value; constants get fresh atoms on every dimension."""
        lab = self.labels.get(value)
        if lab is None:
            v = self.graph.values[value]
            if v.shape is None:
                lab = []
            elif v.is_const:
                lab = [self.atoms.fresh(n) for n in v.shape]
            else:
                lab = [None] * len(v.shape)
            self.labels[value] = lab
        return lab

    def set(self, value: str, labels: Labels) -> None:
        shape = self.graph.values[value].shape
        if shape is None:
            return
        if len(labels) != len(shape):
            raise AssertionError(f"{value}: {len(labels)} labels for shape {shape}")
        for d, (lab, n) in enumerate(zip(labels, shape)):
            if lab is not None and len(lab) != n:
                raise AssertionError(f"{value} dim {d}: {len(lab)} atoms for size {n}")
        self.labels[value] = list(labels)

    # -- relations ----------------------------------------------------------
    def freeze(self, atoms: np.ndarray | None, reason: str) -> None:
        if atoms is not None:
            self.atoms.freeze(atoms, self.op.name if self.op else "", reason)

    def freeze_all(self, value: str, reason: str) -> None:
        for lab in self.get(value):
            self.freeze(lab, reason)

    def tie(self, a: np.ndarray | None, b: np.ndarray | None, reason: str) -> np.ndarray | None:
        """Channels ``a[i]`` and ``b[i]`` are the same channel: prune together.

        A tracked dimension tied to an untracked one of the same size is frozen,
        and the result is untracked (None): a frozen label carried further would
        only freeze more, e.g. the head dim merged with it by a reshape (Swin's
        relative position bias, a per-head constant, added to the attention scores).
        Returns the label the result carries.
        """
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.freeze(a if a is not None else b, reason)
            return None
        self.atoms.union(a, b)
        return a

    def tie_blocks(self, atoms: np.ndarray, block: int) -> None:
        """Tie every consecutive block of ``block`` atoms into one channel."""
        n = len(atoms)
        if block > 1 and n % block == 0:
            blocks = atoms.reshape(n // block, block)
            self.atoms.union(blocks, np.repeat(blocks[:, :1], block, axis=1))

    def tie_strided(self, atoms: np.ndarray, parts: int) -> None:
        """Tie position ``j`` of every one of ``parts`` equal chunks together."""
        n = len(atoms)
        if parts > 1 and n % parts == 0:
            chunks = atoms.reshape(parts, n // parts)
            self.atoms.union(chunks, np.repeat(chunks[:1], parts, axis=0))

    def producer(self, weight: str, axis: int, atoms: np.ndarray | None) -> None:
        """Declare the units a criterion scores; only constant weights can be scored."""
        assert self.op is not None
        if atoms is not None and self.is_const(weight):
            self.producers.append(Producer(self.op.name, weight, axis, atoms))

    def is_const(self, value: str | None) -> bool:
        return value is not None and self.graph.values[value].is_const


# ---------------------------------------------------------------------------
# helpers


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# ---------------------------------------------------------------------------
# rules


@register("identity", "unary")
def _unary(op: Op, ctx: RuleContext) -> None:
    """Element-wise op of one tensor (activations, dropout, clamp, ...)."""
    ctx.set(op.outputs[0], ctx.get(op.inputs[0]))


@register("binary")
def _binary(op: Op, ctx: RuleContext) -> None:
    """Add, sub, mul, div, max, min ... with broadcasting (SE gates, residuals)."""
    ins = op.tensor_inputs()
    labels = _broadcast_labels(
        ctx, [ctx.get(v) for v in ins], [ctx.shape(v) for v in ins], f"{op.target} of a tracked and an untracked tensor"
    )
    ctx.set(op.outputs[0], labels)


@register("conv")
def _conv(op: Op, ctx: RuleContext) -> None:
    """Conv1d/2d/3d and ConvTranspose, grouped and depthwise.

    A plain conv ties the weight's input axis to the input channels; its output
    channels are the weight's output axis. A grouped conv is pruned by whole
    groups: the input block and the output block of each group are one channel,
    so the group width never changes (depthwise: width 1, channel multiplier ok).
    """
    x, w = op.inputs[0], op.inputs[1]
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
        if xl[1] is None:
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
    x, w = op.inputs[0], op.inputs[1]
    b = op.inputs[2] if len(op.inputs) > 2 else None
    xl, wl = ctx.get(x), ctx.get(w)
    ctx.tie(xl[-1], wl[1], "linear over an untracked input")
    ctx.producer(w, 0, wl[0])
    if b is not None:
        ctx.tie(wl[0], ctx.get(b)[0], "linear bias")
    ctx.set(op.outputs[0], list(xl[:-1]) + [wl[0]])


def _broadcast_labels(ctx: RuleContext, labels: list[Labels], shapes: list[tuple[int, ...]], reason: str) -> Labels:
    rank = max((len(s) for s in shapes), default=0)
    out: Labels = []
    for d in range(rank):
        label, size = None, None
        ones: list[np.ndarray | None] = []
        for lab, s in zip(labels, shapes):
            k = d - (rank - len(s))
            if k < 0:
                continue
            if s[k] == 1:
                ones.append(lab[k])
                continue
            if size is None:
                label, size = lab[k], s[k]
            else:
                label = ctx.tie(label, lab[k], reason)
        if size is None:  # size 1 everywhere: the same single channel
            for lab in ones:
                label = lab if label is None else ctx.tie(label, lab, reason)
        out.append(label)
    return out


@register("matmul")
def _matmul(op: Op, ctx: RuleContext) -> None:
    """torch.matmul / ONNX MatMul: contraction ties a[-1] to b[-2]; batch dims broadcast.

    A constant operand is a layer: its non-contracted axis is scored as a producer.
    """
    a, b = op.inputs[0], op.inputs[1]
    al, bl = list(ctx.get(a)), list(ctx.get(b))
    sa, sb = ctx.shape(a), ctx.shape(b)
    squeeze_a, squeeze_b = len(sa) == 1, len(sb) == 1
    if squeeze_a:
        al, sa = [None] + al, (1,) + sa
    if squeeze_b:
        bl, sb = bl + [None], sb + (1,)
    ctx.tie(al[-1], bl[-2], "matmul contraction over an untracked operand")
    batch = _broadcast_labels(ctx, [al[:-2], bl[:-2]], [sa[:-2], sb[:-2]], "matmul batch dims")
    out = batch + [al[-2], bl[-1]]
    if squeeze_b:
        out.pop(-1)
    if squeeze_a:
        out.pop(-2 if not squeeze_b else -1)
    if ctx.is_const(b) and not squeeze_b and bl[-1] is not None:
        ctx.producer(b, len(sb) - 1, bl[-1])
    elif ctx.is_const(a) and not squeeze_a and al[-2] is not None:
        ctx.producer(a, len(sa) - 2, al[-2])
    ctx.set(op.outputs[0], out)


@register("batch_norm", "instance_norm")
def _per_channel_norm(op: Op, ctx: RuleContext) -> None:
    """Per-channel affine/statistics on axis 1: every parameter follows its channel.

    InstanceNorm's statistics span every dim after axis 1; a tracked one there (a
    GroupNorm exported as Reshape -> InstanceNormalization) is frozen.
    """
    x = op.inputs[0]
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
    x = op.inputs[0]
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
    x = op.inputs[0]
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
    x, w = op.inputs[0], op.inputs[1]
    xl = ctx.get(x)
    ws = ctx.shape(w)
    if len(ws) == 1 and ws[0] > 1 and len(xl) > 1:
        ctx.tie(xl[1], ctx.get(w)[0], "prelu over an untracked input")
    ctx.set(op.outputs[0], xl)


@register("embedding")
def _embedding(op: Op, ctx: RuleContext) -> None:
    """Lookup rows of W [vocab, dim]: the embedding dim is a producer's channel."""
    idx, w = op.inputs[0], op.inputs[1]
    wl = ctx.get(w)
    ctx.producer(w, 1, wl[1])
    ctx.set(op.outputs[0], list(ctx.get(idx)) + [wl[1]])


@register("spatial")
def _spatial(op: Op, ctx: RuleContext) -> None:
    """Pooling (max, avg, adaptive), resize: the last ``nspatial`` dims change, channels pass."""
    x = op.inputs[0]
    xl = ctx.get(x)
    k = int(op.attrs["nspatial"])
    out_rank = len(ctx.shape(op.outputs[0]))
    for lab in xl[len(xl) - k :]:
        ctx.freeze(lab, f"{op.target} over a channel dimension")
    ctx.set(op.outputs[0], list(xl[: len(xl) - k]) + [None] * (out_rank - (len(xl) - k)))


@register("reduce")
def _reduce(op: Op, ctx: RuleContext) -> None:
    """Reductions: a sum over channels is exact with removed channels, and so are the L1 and L2 norms and
    the sum of squares (a zeroed channel adds 0); so is a mean whose rewrite keeps the original divisor
    (``rescalable``: the torch rewrite multiplies it by kept / original count, RMSNorm's mean of squares);
    max/min/var/logsumexp/... over channels are not."""
    x = op.inputs[0]
    xl = ctx.get(x)
    dims = {_axis(d, len(xl)) for d in op.attrs["dims"]}
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


@register("softmax")
def _softmax(op: Op, ctx: RuleContext) -> None:
    """Softmax over a dim couples all of it: a tracked softmax dim is frozen."""
    x = op.inputs[0]
    xl = list(ctx.get(x))
    ax = _axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[ax], f"{op.target} over a channel dimension")
    ctx.set(op.outputs[0], xl)


@register("concat")
def _concat(op: Op, ctx: RuleContext) -> None:
    """Concatenation: channels keep their identity at an offset along the axis."""
    ins = op.tensor_inputs()
    rank = len(ctx.shape(ins[0]))
    ax = _axis(int(op.attrs["axis"]), rank)
    labs = [ctx.get(v) for v in ins]
    along = []
    for v, lab in zip(ins, labs):
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
    ax = _axis(int(op.attrs["axis"]), rank + 1)
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
    x = op.inputs[0]
    xl = ctx.get(x)
    ax = _axis(int(op.attrs["axis"]), len(xl))
    sizes = [int(s) for s in op.attrs["sizes"]]
    lab = xl[ax]
    if lab is not None and op.attrs.get("equal", False):
        if len(set(sizes)) == 1:
            ctx.tie_strided(lab, len(sizes))
        else:
            ctx.freeze(lab, "split into equal chunks of an indivisible dimension")
    start = 0
    for out, n in zip(op.outputs, sizes):
        ol = list(xl)
        ol[ax] = None if lab is None else lab[start : start + n]
        ctx.set(out, ol)
        start += n


def strided_blocks(start: int, stop: int, step: int, n: int) -> bool:
    """Is ``range(start, stop, step)`` over ``n`` positions one position of every block of ``step``
    (``x[..., ::2]`` and ``x[..., 1::2]``: the interleaved pairs of a rotary embedding)?"""
    return step > 1 and 0 <= start < step and n % step == 0 and len(range(start, stop, step)) == n // step


def _sliced_labels(ctx: RuleContext, lab: np.ndarray | None, n: int, start: int, stop: int, step: int) -> np.ndarray | None:
    """Labels of ``x[start:stop:step]`` along a dim of ``n``: a contiguous slice keeps its channels; a slice
    taking one position of every block of ``step`` ties each block into one channel (whole blocks are pruned,
    so the pruned tensor sliced the same way takes the kept ones); another strided slice freezes the dim."""
    if lab is None:
        return None
    if step != 1:
        if strided_blocks(start, stop, step, n):
            ctx.tie_blocks(lab, step)
        else:
            ctx.freeze(lab, "strided slice over a channel dimension")
    return lab[np.arange(start, stop, step)]  # range semantics: slice.indices() gives stop -1 for a reversal


@register("slice")
def _slice(op: Op, ctx: RuleContext) -> None:
    """Slice along one axis: contiguous, or one position of every block of channels (else frozen)."""
    x = op.inputs[0]
    xl = list(ctx.get(x))
    ax = _axis(int(op.attrs["axis"]), len(xl))
    n = ctx.shape(x)[ax]
    start, stop, step = slice(op.attrs.get("start"), op.attrs.get("stop"), op.attrs.get("step")).indices(n)
    xl[ax] = _sliced_labels(ctx, xl[ax], n, start, stop, step)
    ctx.set(op.outputs[0], xl)


@register("pad")
def _pad(op: Op, ctx: RuleContext) -> None:
    """Constant/reflect padding: a padded channel dim is frozen, others pass."""
    x = op.inputs[0]
    xl = list(ctx.get(x))
    if "padded_dims" in op.attrs:  # widths known only at run time
        padded = [_axis(d, len(xl)) for d in op.attrs["padded_dims"]]
    else:
        pads = list(op.attrs["pads"])  # torch order: (last_lo, last_hi, prev_lo, prev_hi, ...)
        padded = [len(xl) - 1 - i for i in range(len(pads) // 2) if pads[2 * i] or pads[2 * i + 1]]
    for d in padded:
        ctx.freeze(xl[d], "padding along a channel dimension")
        xl[d] = None
    ctx.set(op.outputs[0], xl)


@register("permute")
def _permute(op: Op, ctx: RuleContext) -> None:
    xl = ctx.get(op.inputs[0])
    ctx.set(op.outputs[0], [xl[_axis(p, len(xl))] for p in op.attrs["perm"]])


def reshape_groups(ins: Sequence[int], outs: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Split a reshape into runs of input and output dims with equal products.

    Size-1 dims belong to no run. Returns ``[(in_dims, out_dims), ...]``.
    """
    a = [d for d, n in enumerate(ins) if n != 1]
    b = [d for d, n in enumerate(outs) if n != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        gi, gj = [a[i]], [b[j]]
        pi, pj = ins[a[i]], outs[b[j]]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= len(a):
                    break
                gi.append(a[i])
                pi *= ins[a[i]]
                i += 1
            else:
                if j >= len(b):
                    break
                gj.append(b[j])
                pj *= outs[b[j]]
                j += 1
        groups.append((gi, gj))
    if i < len(a) or j < len(b):
        if groups:
            gi, gj = groups.pop()
        else:
            gi, gj = [], []
        groups.append((gi + a[i:], gj + b[j:]))
    return groups


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
    x, y = op.inputs[0], op.outputs[0]
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
        lab = xl[t][(pos // stride) % si[t]]
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
        if choice is None and len(go) >= 2 and ctx.options.get("attention") == "heads" and _feeds_attention(ctx, y):
            choice = len(go) - 2  # [.., h, d]: keep whole heads
        if choice is None:
            choice = max(range(len(go)), key=lambda k: (so[go[k]], k))  # ties: the innermost
        o, st = go[choice], ostrides[choice]
        if not exact:
            ctx.atoms.union(lab, lab[((pos // st) % so[o]) * st])
        yl[o] = lab[np.arange(so[o]) * st]
    ctx.set(y, yl)


_PASS_THROUGH = {
    "permute", "identity", "unary", "split", "unbind", "select", "slice", "layer_norm", "binary", "concat",
    "reshape", "expand",
}  # fmt: skip


def _feeds_attention(ctx: RuleContext, value: str, depth: int = 10) -> bool:
    """Does ``value`` reach attention (SDPA, or a matmul of two activations) through head-preserving ops?

    Rotary embeddings (slice, cat, mul) and grouped-query ``repeat_kv`` (unsqueeze,
    expand, reshape) lie on the way in LLaMA-style attention.
    """
    frontier, seen = [value], set()
    for _ in range(depth):
        nxt = []
        for v in frontier:
            for user in ctx.graph.values[v].users:
                op = ctx.graph.ops[user]
                if op.kind == "attention":
                    return True
                if op.kind == "matmul" and not any(ctx.is_const(i) for i in op.tensor_inputs()):
                    return True
                if op.kind in _PASS_THROUGH and user not in seen:
                    seen.add(user)
                    nxt.extend(op.outputs)
        frontier = nxt
    return False


@register("attention")
def _attention(op: Op, ctx: RuleContext) -> None:
    """scaled_dot_product_attention(q, k, v[, mask]): q·k contract the head dim, v gives the output's.

    Batch and head dims broadcast across q, k and v; the key/value sequence dims
    are the same positions. A pruned head dim keeps the original scale (the
    rewrite passes it explicitly).
    """
    q, k, v, mask = (op.inputs + [None] * 4)[:4]
    ql, kl, vl = ctx.get(q), ctx.get(k), ctx.get(v)
    sq, sk, sv = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    ctx.tie(ql[-1], kl[-1], "attention over an untracked query/key")
    ctx.tie(kl[-2], vl[-2], "attention over an untracked key/value sequence")
    batch = _broadcast_labels(ctx, [ql[:-2], kl[:-2], vl[:-2]], [sq[:-2], sk[:-2], sv[:-2]], "attention batch dims")
    if mask is not None:
        for lab in ctx.get(mask):
            ctx.freeze(lab, "attention mask over a channel dimension")
    ctx.freeze(ql[-2], "attention over a channel dimension of the sequence")
    ctx.freeze(kl[-2], "attention over a channel dimension of the sequence")
    ctx.set(op.outputs[0], batch + [ql[-2], vl[-1]])


@register("expand")
def _expand(op: Op, ctx: RuleContext) -> None:
    """expand/broadcast_to: kept dims keep their channels. A size-1 dim grown by broadcasting holds copies of
    one value, so it can take any channels: it gets fresh atoms, which whatever it meets ties to (F.normalize as
    exported to ONNX: x / Expand(ReduceL2(x), Shape(x)) prunes with x; the rewrite fits the target shape)."""
    x, y = op.inputs[0], op.outputs[0]
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
    xl = list(ctx.get(op.inputs[0]))
    ax = _axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[ax], "unbind along a channel dimension" if op.kind == "unbind" else "indexing a single channel")
    for out in op.outputs:
        ctx.set(out, xl[:ax] + xl[ax + 1 :])


@register("factory")
def _factory(op: Op, ctx: RuleContext) -> None:
    """new_zeros/zeros_like/...: a fresh tensor with no channels of its own."""
    for out in op.outputs:
        ctx.get(out)


@register("unfold")
def _unfold(op: Op, ctx: RuleContext) -> None:
    """im2col ([N, C, H, W] -> [N, C*k, L], channel-major): each channel expands to its k kernel positions,
    as in a flatten; the spatial dims become the window index L (a tracked one is frozen)."""
    x, y = op.inputs[0], op.outputs[0]
    xl = ctx.get(x)
    si, so = ctx.shape(x), ctx.shape(y)
    for d in (2, 3):
        ctx.freeze(xl[d], "unfold over a channel dimension")
    k = so[1] // si[1]
    ctx.set(y, [xl[0], None if xl[1] is None else np.repeat(xl[1], k), None])


@register("scan")
def _scan(op: Op, ctx: RuleContext) -> None:
    """cumsum/cumprod along ``axis``: every position mixes those before it, so a channel axis is frozen."""
    xl = list(ctx.get(op.inputs[0]))
    d = _axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[d], "running sum along a channel dimension")
    xl[d] = None
    ctx.set(op.outputs[0], xl)


@register("roll")
def _roll(op: Op, ctx: RuleContext) -> None:
    """torch.roll: a rolled channel dim is frozen (its order changes); other dims pass."""
    xl = list(ctx.get(op.inputs[0]))
    for d in op.attrs["dims"]:
        d = _axis(d, len(xl))
        ctx.freeze(xl[d], "roll along a channel dimension")
        xl[d] = None
    ctx.set(op.outputs[0], xl)


@register("index")
def _index(op: Op, ctx: RuleContext) -> None:
    """Basic indexing x[..., a:b:s, i, None]: contiguous slices of a channel dim keep their channels;
    strided slices and single indices of a channel dim are frozen."""
    labels, _ = _indexed_labels(ctx, op.inputs[0], op.attrs["items"], "indexing", ctx.shape(op.outputs[0]))
    ctx.set(op.outputs[0], labels)


def _indexed_labels(ctx: RuleContext, x: str, items: list[tuple], what: str,
                    out_shape: tuple[int, ...] | None = None) -> tuple[Labels, list[int]]:
    """Labels and shape of ``x[items]`` (basic indexing); single channels and strided channel slices are frozen,
    and so are dims sliced with bounds computed at run time (``dslice``; their size is read off ``out_shape``)."""
    xl, shape = ctx.get(x), ctx.shape(x)
    labels: Labels = []
    sizes: list[int] = []
    for item in items:
        if item[0] == "new":
            labels.append(None)
            sizes.append(1)
            continue
        d = item[1]
        lab = xl[d]
        if item[0] == "int":
            ctx.freeze(lab, f"{what} a single channel")
            continue
        if item[0] == "dslice":
            ctx.freeze(lab, "slice bounds computed at run time over a channel dimension")
            if out_shape is None or len(sizes) >= len(out_shape):
                raise ValueError("a run-time slice needs the output's shape")
            labels.append(None)
            sizes.append(out_shape[len(sizes)])
            continue
        start, stop, step = slice(item[2], item[3], item[4]).indices(shape[d])
        labels.append(_sliced_labels(ctx, lab, shape[d], start, stop, step))
        sizes.append(len(range(start, stop, step)))
    return labels, sizes


@register("setitem")
def _setitem(op: Op, ctx: RuleContext) -> None:
    """x[index] = v in place: v's channels are the indexed positions' channels (v broadcasts).

    Contiguous slices of a channel dim keep their channels (the rewrite moves the
    bounds); a single index or a strided slice of a channel dim freezes it.
    """
    labels, sizes = _indexed_labels(ctx, op.inputs[0], op.attrs["items"], "writing into")
    if len(op.inputs) > 1:
        v = op.inputs[1]
        _broadcast_labels(ctx, [labels, ctx.get(v)], [tuple(sizes), ctx.shape(v)], "value written into a slice")


@register("repeat")
def _repeat(op: Op, ctx: RuleContext) -> None:
    """repeat_interleave / Tensor.repeat along ``axes`` (input dims): a repeated channel dim is frozen; other
    dims keep their channels; ``lead`` new leading dims (Tensor.repeat with more repeats than dims) have none."""
    xl = list(ctx.get(op.inputs[0]))
    for d in op.attrs["axes"]:
        d = _axis(d, len(xl))
        ctx.freeze(xl[d], "repeat along a channel dimension")
        xl[d] = None
    ctx.set(op.outputs[0], [None] * int(op.attrs.get("lead", 0)) + xl)


@register("take")
def _take(op: Op, ctx: RuleContext) -> None:
    """x[..., idx] with an integer index tensor on one axis: rows are gathered by value.

    The indexed axis is frozen (its positions are data) and so is the index; the
    index's dims replace the axis; the other dims keep their channels (Swin's
    relative position bias table keeps its head dim).
    """
    x = op.inputs[0]
    xl = list(ctx.get(x))
    ax = _axis(int(op.attrs["axis"]), len(xl))
    ctx.freeze(xl[ax], "indexing a channel dimension with a tensor")
    if len(op.inputs) > 1:
        idx = op.inputs[1]
        ctx.freeze_all(idx, "index tensor")
        index_rank = len(ctx.shape(idx))
    else:  # a constant index (ONNX Gather with static indices): only its shape matters here
        index_rank = len(op.attrs["index_shape"])
    ctx.set(op.outputs[0], xl[:ax] + [None] * index_rank + xl[ax + 1 :])


def parse_einsum(equation: str, n_operands: int) -> tuple[list[str], str] | None:
    """``"bhid,bhjd->bhij"`` as operand subscripts and output subscripts (spaces ignored).

    Implicit output (no ``->``): the letters that occur once, in alphabetical order.
    None for ellipsis or a malformed equation.
    """
    eq = equation.replace(" ", "")
    if "." in eq:
        return None
    lhs, arrow, rhs = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != n_operands or not all(s.isalpha() for s in ins if s) or (rhs and not rhs.isalpha()):
        return None
    if not arrow:
        letters = "".join(ins)
        rhs = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    if len(set(rhs)) != len(rhs) or not set(rhs) <= set("".join(ins)):
        return None
    return ins, rhs


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
    for v, sub in zip(ins, subs):
        lab, shape = ctx.get(v), ctx.shape(v)
        for c, lc, n in zip(sub, lab, shape):
            if n == 1 and len(ins) > 1:
                ctx.freeze(lc, "einsum broadcast of a single-channel dimension")
                continue
            if c not in seen:
                seen.add(c)
                label[c] = lc
            else:
                label[c] = ctx.tie(label[c], lc, "einsum over a tracked and an untracked operand")
    for k, (v, sub) in enumerate(zip(ins, subs)):
        if not ctx.is_const(v):
            continue
        others = "".join(s for j, s in enumerate(subs) if j != k)
        for d, c in enumerate(sub):
            if c in out and c not in others and label.get(c) is not None:
                ctx.producer(v, d, label[c])
                break
    oshape = ctx.shape(op.outputs[0])
    ctx.set(op.outputs[0], [label.get(c) if n > 1 or len(ins) == 1 else None for c, n in zip(out, oshape)])


@register("normalize")
def _normalize(op: Op, ctx: RuleContext) -> None:
    """F.normalize: x / ||x||_p along an axis. For p > 0 a removed (zeroed) channel adds nothing to
    the norm, so the kept channels' values are exact; other p freeze the axis."""
    xl = list(ctx.get(op.inputs[0]))
    if not float(op.attrs.get("p", 2.0)) > 0:
        ctx.freeze(xl[_axis(int(op.attrs["axis"]), len(xl))], "normalize with p <= 0 over a channel dimension")
    ctx.set(op.outputs[0], xl)
