"""Label arithmetic the op families share: broadcasting, slicing, reshape runs, einsum, head detection."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from passes.atoms import Labels
from passes.ops.context import RuleContext

log = logging.getLogger(__name__)

__all__ = [
    "broadcast_labels", "strided_blocks", "sliced_labels", "reshape_groups", "HEAD_PRESERVING",
    "feeds_attention", "indexed_labels", "parse_einsum",
]  # fmt: skip


def broadcast_labels(ctx: RuleContext, labels: list[Labels], shapes: list[tuple[int, ...]], reason: str) -> Labels:
    rank = max((len(s) for s in shapes), default=0)
    out: Labels = []
    for d in range(rank):
        label, size = None, None
        ones: list[np.ndarray | None] = []
        for lab, s in zip(labels, shapes, strict=True):
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
            for one in ones:
                label = one if label is None else ctx.tie(label, one, reason)
        out.append(label)
    return out


def strided_blocks(start: int, stop: int, step: int, n: int) -> bool:
    """Is ``range(start, stop, step)`` over ``n`` positions one position of every block of ``step``
    (``x[..., ::2]`` and ``x[..., 1::2]``: the interleaved pairs of a rotary embedding)?"""
    return step > 1 and 0 <= start < step and n % step == 0 and len(range(start, stop, step)) == n // step


def sliced_labels(ctx: RuleContext, lab: np.ndarray | None, n: int, start: int, stop: int, step: int) -> np.ndarray | None:
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


HEAD_PRESERVING = {
    "permute", "identity", "unary", "split", "unbind", "select", "slice", "layer_norm", "binary", "concat",
    "reshape", "expand",
}  # fmt: skip


def feeds_attention(ctx: RuleContext, value: str, depth: int = 10) -> bool:
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
                if op.kind in HEAD_PRESERVING and user not in seen:
                    seen.add(user)
                    nxt.extend(op.outputs)
        frontier = nxt
    return False


def indexed_labels(ctx: RuleContext, x: str, items: list[tuple], what: str,
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
        labels.append(sliced_labels(ctx, lab, shape[d], start, stop, step))
        sizes.append(len(range(start, stop, step)))
    return labels, sizes


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
