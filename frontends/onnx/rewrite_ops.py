"""The ONNX rewrite handler of each op kind: attributes and static arguments that follow the pruned shapes.

Each is registered on the spec of the op kind its node lowers to
(``op_spec(kind).rewriter("onnx")``) with one signature,
:data:`frontends.onnx.rewrite.RewriteHandler`::

    handler(rw: OnnxRewrite, op: Op, node: int) -> set[int]

``node`` is the index of the ONNX node ``op`` was lowered from (``op.source``), in
``rw.nodes``; the handler returns the input indices of the static arguments it fixed.
Every other static argument of the node must keep its original value, which the
rewrite then sees to. A node lowered to several ops runs each distinct handler once,
with its first op of that handler: the node's arguments belong to the whole node (a
Slice over two axes is two ``slice`` ops and one ``starts``). Constants are sliced,
and static values re-evaluated on the pruned shapes (``rw.env``), before any handler
runs.

====================  =======================  ==============================================
kind                  from                     what follows the pruned shapes
====================  =======================  ==============================================
conv                  Conv, ConvTranspose      ``group``
group_norm            GroupNormalization       ``num_groups``
reshape               Reshape                  ``shape`` (0 and -1 kept where still valid)
expand                Expand                   ``shape`` (a 1 stays 1)
slice, identity       Slice                    ``starts`` / ``ends``: the kept positions of the
                                               same range (a Slice of whole axes is identity)
slice                 Gather of constant       ``indices``: the kept positions of the range
                      indices
split                 Split                    ``split`` sizes (an equal split whose pieces
                                               differ after pruning gets them as a new input)
spatial               Resize                   ``sizes``
reduce                ReduceMean               a Mul by kept / original after it: the mean
                                               keeps the original divisor
====================  =======================  ==============================================
"""

from __future__ import annotations

import logging
import math

import numpy as np
from onnx import TensorProto, helper

from frontends.errors import InternalError
from frontends.graph import Op
from frontends.onnx.proto import node_attrs
from frontends.onnx.rewrite import OnnxRewrite
from frontends.onnx.shapes import reshape_result, slice_range
from passes.ops import op_spec, strided_blocks

log = logging.getLogger(__name__)

__all__: list[str] = []  # handlers are reached through the op specs


# -- attributes ------------------------------------------------------------------------------


@op_spec("conv").rewriter("onnx")
def _conv_groups(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """A grouped Conv / ConvTranspose keeps its group size: ``group`` follows the pruned input channels."""
    _scale_groups(rw, op, node, "group", int(op.attrs.get("groups", 1)))
    return set()


@op_spec("group_norm").rewriter("onnx")
def _group_norm_groups(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """Whole groups were pruned: ``num_groups`` shrinks with the channels."""
    _scale_groups(rw, op, node, "num_groups", int(op.attrs["num_groups"]))
    return set()


def _scale_groups(rw: OnnxRewrite, op: Op, node: int, key: str, old: int) -> None:
    x = op.input(0)
    old_c, new_c = rw.original_shape(x)[1], rw.pruned_shape(x)[1]
    if old > 1 and new_c != old_c:
        if (old * new_c) % old_c:
            raise InternalError(f"{op.label}: {new_c} of {old_c} channels is not a whole number of {old} groups")
        rw.set_int_attr(node, key, old * new_c // old_c)


# -- shapes ------------------------------------------------------------------------------------


@op_spec("reshape").rewriter("onnx")
def _reshape_shape(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """Reshape's ``shape`` must give the pruned output shape; 0 and -1 are kept where they stay valid.
    Flatten, Squeeze, Unsqueeze and a Gather of one index lower to reshape too: they have no ``shape``."""
    slot = rw.arg(node, "shape")
    if slot is None:
        return set()
    k = slot.index
    spec = rw.nodes[node].input[k]
    allowzero = bool(int(node_attrs(rw.nodes[node]).get("allowzero", 0)))
    pin, pout = rw.pruned_shape(op.input(0)), rw.pruned_shape(op.outputs[0])
    if reshape_result(pin, rw.env[spec].reshape(-1).tolist(), allowzero) == pout:
        return {k}
    orig = [int(s) for s in rw.original(spec).reshape(-1)]
    new: list[int] = []
    for d, s in enumerate(orig):
        if s == -1:
            new.append(-1)
        elif s == 0 and not allowzero and d < len(pin) and pin[d] == pout[d]:
            new.append(0)
        else:
            new.append(int(pout[d]))
    if reshape_result(pin, new, allowzero) != pout:
        new = [int(s) for s in pout]
    rw.set_arg(node, k, np.array(new, dtype=rw.original(spec).dtype))
    return {k}


@op_spec("expand").rewriter("onnx")
def _expand_shape(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """Expand's target shape broadcasts with the input (ONNX's bidirectional rule): a 1 stays 1, any
    other entry becomes the pruned output size."""
    slot = rw.arg(node, "shape")
    if slot is None:
        return set()
    k = slot.index
    spec = rw.nodes[node].input[k]
    pin, pout = rw.pruned_shape(op.input(0)), rw.pruned_shape(op.outputs[0])
    cur = [int(s) for s in np.asarray(rw.env[spec]).reshape(-1)]
    if _broadcast_shape(pin, cur) == pout:
        return {k}
    orig = [int(s) for s in np.asarray(rw.original(spec)).reshape(-1)]
    off = len(pout) - len(orig)
    new = [1 if s == 1 else int(pout[off + d]) for d, s in enumerate(orig)]
    if _broadcast_shape(pin, new) != pout:
        raise InternalError(f"{rw.nodes[node].name or 'Expand'}: no target shape gives {pout} from {pin}")
    rw.set_arg(node, k, np.array(new, dtype=np.asarray(rw.original(spec)).dtype))
    return {k}


def _broadcast_shape(a: tuple[int, ...], b: list[int]) -> tuple[int, ...] | None:
    """numpy/ONNX multidirectional broadcasting of two shapes (None: incompatible)."""
    try:
        return tuple(int(n) for n in np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        return None


@op_spec("split").rewriter("onnx")
def _split_sizes(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """Split's ``split`` sizes are the pruned pieces'. An equal split (no ``split`` input; ``num_outputs`` from
    opset 18) whose pieces are no longer what it computes for the pruned axis gets them as a new ``split`` input
    (and loses ``num_outputs``, which must not be given with it)."""
    ax = int(op.attrs["axis"])
    ax = ax + len(rw.original_shape(op.input(0))) if ax < 0 else ax
    sizes = [rw.pruned_shape(o)[ax] for o in op.outputs]
    slot = rw.arg(node, "split")
    if slot is not None:
        rw.set_arg(node, slot.index, np.array(sizes, dtype=np.int64))
        return {slot.index}
    n = rw.nodes[node]
    if len(n.input) > 1 and n.input[1]:
        return set()  # sizes that are not static: the channel rule kept the pieces as they were
    total, k = sum(sizes), len(sizes)
    piece = -(-total // k)  # ONNX: pieces of ceil(total / k), the last one smaller
    if sizes == [piece] * (k - 1) + [total - piece * (k - 1)]:
        return set()
    name = rw.new_initializer(f"{n.name or n.output[0]}_split", np.array(sizes, dtype=np.int64), TensorProto.INT64)
    del n.input[1:]
    n.input.append(name)
    keep = [a for a in n.attribute if a.name != "num_outputs"]
    del n.attribute[:]
    n.attribute.extend(keep)
    return set()


@op_spec("spatial").rewriter("onnx")
def _resize_sizes(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """Resize's ``sizes`` are the pruned output's (on its ``axes``); pools and a Resize by scales have none."""
    slot = rw.arg(node, "sizes")
    if slot is None:
        return set()
    out = rw.pruned_shape(op.outputs[0])
    axes = node_attrs(rw.nodes[node]).get("axes")
    rank = len(out)
    want = [out[a + rank if a < 0 else a] for a in axes] if axes else list(out)
    rw.set_arg(node, slot.index, np.array(want, dtype=np.int64))
    return {slot.index}


# -- indexing --------------------------------------------------------------------------------


@op_spec("slice").rewriter("onnx")
@op_spec("identity").rewriter("onnx")
def _slice_bounds(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """What a slice keeps is a static argument of its node: Slice's ``starts`` / ``ends`` (a Slice of whole
    axes lowers to identity, and its bounds must still select the whole pruned axes), or a Gather's constant
    ``indices`` (a slice of one position or of a contiguous range). Other identities have neither."""
    if rw.arg(node, "starts") is not None:
        return _slice_node_bounds(rw, node)
    if rw.arg(node, "indices") is not None:
        return _gather_indices(rw, node)
    return set()


def _slice_node_bounds(rw: OnnxRewrite, node: int) -> set[int]:
    """Slice bounds select the kept positions of the same range; a strided slice over a pruned dim keeps one
    position of every whole kept block. Bounds that still select them (read off a shape) are left alone."""
    n = rw.nodes[node]
    x = n.input[0]
    sx, px = rw.om.shapes[x], rw.pruned_shape(x)
    rank = len(sx)

    def ints(k: int, default: list[int], values: dict) -> list[int]:
        if len(n.input) > k and n.input[k]:
            return [int(v) for v in np.asarray(values[n.input[k]]).reshape(-1)]
        return default

    starts, ends = ints(1, [], rw.om.static), ints(2, [], rw.om.static)
    axes = [a + rank if a < 0 else a for a in ints(3, list(range(len(starts))), rw.om.static)]
    steps = ints(4, [1] * len(starts), rw.om.static)
    want: dict[int, range] = {}
    new_starts, new_ends = list(starts), list(ends)
    for k, (a, s, e, st) in enumerate(zip(axes, starts, ends, steps, strict=False)):
        r = range(*slice_range(s, e, st, sx[a]))
        keep = rw.keep_mask(x, a)
        if keep is None or keep.all():
            want[a] = range(*slice_range(s, e, st, px[a]))
            continue
        if st != 1:
            if not strided_blocks(r.start, r.stop, st, sx[a]):
                raise InternalError(f"{n.name}: strided slice over a pruned channel dim")
            want[a] = range(r.start, px[a], st)  # one position of every whole kept block
            new_starts[k], new_ends[k] = r.start, (e if e >= sx[a] else px[a])
            continue
        want[a] = _kept_range(keep, r)
        new_starts[k], new_ends[k] = _kept_bounds(s, e, sx[a], px[a], want[a])
    # do the bounds the pruned model computes select what they must?
    cur_s, cur_e = ints(1, [], rw.env), ints(2, [], rw.env)
    cur_axes = [a + rank if a < 0 else a for a in ints(3, list(range(len(cur_s))), rw.env)]
    cur_steps = ints(4, [1] * len(cur_s), rw.env)
    ok = sorted(cur_axes) == sorted(axes) and all(
        range(*slice_range(s, e, st, px[a])) == want[a] for a, s, e, st in zip(cur_axes, cur_s, cur_e, cur_steps, strict=False)
    )
    if not ok:
        dt_s, dt_e = rw.original(n.input[1]).dtype, rw.original(n.input[2]).dtype
        rw.set_arg(node, 1, np.array(new_starts, dtype=dt_s))
        rw.set_arg(node, 2, np.array(new_ends, dtype=dt_e))
    return {1, 2}


def _kept_range(keep: np.ndarray, r: range) -> range:
    """The positions of the kept indices of ``r`` (step 1) on the pruned dim."""
    ns = int(keep[: r.start].sum())
    return range(ns, ns + int(keep[r.start : r.stop].sum()))


def _kept_bounds(s: int, e: int, old_n: int, new_n: int, want: range) -> tuple[int, int]:
    """New (start, end) selecting ``want`` of a dim of ``new_n``, in the form of the old ones where it still fits
    (a negative start, an end past the dim or from its end)."""
    ns, ne = want.start, want.stop
    cand_s = ns - new_n if s < 0 and ns < new_n else ns
    if e >= old_n and ne == new_n:
        cand_e = e
    elif e < 0 and ne < new_n:
        cand_e = ne - new_n
    else:
        cand_e = ne
    if range(*slice_range(cand_s, cand_e, 1, new_n)) != want:
        cand_s, cand_e = ns, ne
    return cand_s, cand_e


def _gather_indices(rw: OnnxRewrite, node: int) -> set[int]:
    """A Gather's constant index on a pruned axis: the kept positions of the range it picked (one index stays one)."""
    n = rw.nodes[node]
    x, idx = n.input[0], n.input[1]
    sx = rw.om.shapes[x]
    ax = int(node_attrs(n).get("axis", 0))
    ax = ax + len(sx) if ax < 0 else ax
    orig = np.asarray(rw.original(idx))
    vals = [int(v) + sx[ax] if v < 0 else int(v) for v in orig.reshape(-1)]
    keep = rw.keep_mask(x, ax)
    if keep is None or keep.all():
        return set()  # an ordinary argument: must keep its value
    start = int(keep[: vals[0]].sum())
    count = int(keep[vals[0] : vals[-1] + 1].sum())
    want = np.array(start, dtype=orig.dtype) if orig.ndim == 0 else np.arange(start, start + count, dtype=orig.dtype)
    rw.set_arg(node, 1, want)
    return {1}


# -- reductions -------------------------------------------------------------------------------


@op_spec("reduce").rewriter("onnx")
def _mean_keeps_divisor(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
    """A ReduceMean over pruned channels times kept / original (a Mul after it): the original mean."""
    if not op.attrs.get("rescalable"):
        return set()
    x = op.input(0)
    rank = len(rw.original_shape(x))
    dims = {d % rank for d in op.attrs["dims"]}
    n_old = math.prod(rw.original_shape(x)[d] for d in dims)
    n_new = math.prod(rw.pruned_shape(x)[d] for d in dims)
    if n_old == n_new:
        return set()
    n = rw.nodes[node]
    out = n.output[0]
    n.output[0] = rw.names.fresh(f"{out}_kept")
    factor = rw.new_initializer(f"{out}_scale", np.array(n_new / n_old), rw.dtype_of(out))
    rw.insert_after(node, helper.make_node("Mul", [n.output[0], factor], [out], name=rw.names.fresh(f"{n.name or out}_scale")))
    return set()
