"""The torch rewrite handler of each op kind: attributes and arguments that follow the pruned shapes.

Each is registered on its op's spec (``op_spec(kind).rewriter("torch")``) with one
signature, :data:`frontends.torch.rewrite.RewriteHandler`::

    handler(rw: TorchRewrite, op: Op, target: torch.fx.Node | nn.Module) -> bool

``target`` is the op's module in the pruned copy (a ``call_module`` node) or its call
node (``call_function`` / ``call_method``); the handler returns True when it changed
something. Constants are sliced before any handler runs. Sizes computed at run time
(``x.size(1)``) need nothing unless they no longer evaluate right. A user's own layer
registers its handler the same way, under its class name.

==============================  =====================================================
conv                            module: ``in/out_channels``, ``groups``; call: ``groups``
linear                          module: ``in/out_features``
batch_norm, instance_norm       module: ``num_features``
layer_norm                      ``normalized_shape``
group_norm                      ``num_groups`` (and the module's ``num_channels``)
prelu                           module: ``num_parameters``
embedding                       module: ``embedding_dim``
reshape                         view / reshape sizes, unflatten sizes, ``nn.Unflatten``
expand                          expand sizes
attention                       ``scale`` kept at the original head dim's
split                           split sizes; an uneven chunk becomes a split by sizes
slice                           slice and narrow bounds
index, setitem                  basic index items
unary, binary                   scalars computed from sizes keep their original values
reduce                          a mean over pruned channels keeps the original divisor
==============================  =====================================================
"""

from __future__ import annotations

import logging
import math
import operator
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from frontends.graph import Op
from frontends.torch.nodes import call_name
from frontends.torch.rewrite import RewriteTarget, TorchRewrite
from frontends.torch.sizes import SIZE_ERRORS, resize
from passes.ops import op_spec

log = logging.getLogger(__name__)

__all__: list[str] = []  # handlers are reached through the op specs


# -- layers ------------------------------------------------------------------------


@op_spec("conv").rewriter("torch")
def _conv(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """Channels follow the pruned input and output; a grouped conv's group count follows its input."""
    if isinstance(target, nn.modules.conv._ConvNd):
        return _conv_module(rw, op, target)
    if isinstance(target, torch.fx.Node) and op.attrs.get("groups", 1) > 1:
        x = op.input(0)
        groups = op.attrs["groups"] * rw.pruned_shape(x)[1] // rw.original_shape(x)[1]
        position = 8 if call_name(target) == "convolution" else 6  # aten.convolution / F.conv*d
        return rw.set_call_arg(target, position, "groups", groups)
    return False


def _conv_module(rw: TorchRewrite, op: Op, m: nn.modules.conv._ConvNd) -> bool:
    new_in, new_out = rw.pruned_shape(op.input(0))[1], rw.pruned_shape(op.outputs[0])[1]
    if m.groups == 1:
        return rw.set_attrs(m, in_channels=new_in, out_channels=new_out)
    # groups from the sliced weight, so a module called several times (CoaT's shared cpe) is updated once
    groups = (new_out if m.transposed else new_in) // m.weight.shape[1]
    return rw.set_attrs(m, in_channels=new_in, out_channels=new_out, groups=groups)


@op_spec("linear").rewriter("torch")
def _linear(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """nn.Linear: ``in/out_features`` from the sliced weight (F.linear has no sizes)."""
    if not isinstance(target, nn.Linear):
        return False
    out_features, in_features = target.weight.shape
    return rw.set_attrs(target, out_features=out_features, in_features=in_features)


@op_spec("embedding").rewriter("torch")
def _embedding(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """nn.Embedding: ``embedding_dim`` from the sliced table."""
    if not isinstance(target, nn.Embedding):
        return False
    return rw.set_attrs(target, embedding_dim=target.weight.shape[1])


@op_spec("attention").rewriter("torch")
def _attention(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """scaled_dot_product_attention with pruned head dims: the default scale was 1/sqrt(original head dim)."""
    if not isinstance(target, torch.fx.Node):
        return False
    q = op.input(0)
    old_d, new_d = rw.original_shape(q)[-1], rw.pruned_shape(q)[-1]
    if old_d == new_d or op.attrs.get("scale") is not None:
        return False
    return rw.set_args(target, list(target.args), {**target.kwargs, "scale": 1.0 / math.sqrt(old_d)})


# -- normalizations ------------------------------------------------------------------


@op_spec("batch_norm").rewriter("torch")
@op_spec("instance_norm").rewriter("torch")
def _per_channel_norm(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """BatchNorm / InstanceNorm modules: ``num_features`` follows the input's channels."""
    if not isinstance(target, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        return False
    return rw.set_attrs(target, num_features=rw.pruned_shape(op.input(0))[1])


@op_spec("layer_norm").rewriter("torch")
def _layer_norm(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """``normalized_shape`` follows the pruned input's last ``ndim`` dims (the module's attribute, F.layer_norm's argument)."""
    new_shape = rw.pruned_shape(op.input(0))[-int(op.attrs["ndim"]) :]
    if isinstance(target, nn.LayerNorm):
        return rw.set_attrs(target, normalized_shape=tuple(new_shape))
    if isinstance(target, torch.fx.Node):
        return rw.set_call_arg(target, 1, "normalized_shape", list(new_shape))
    return False


@op_spec("group_norm").rewriter("torch")
def _group_norm(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """Whole groups were pruned: the group count shrinks with the channels (one group stays one)."""
    x = op.input(0)
    old, new = rw.original_shape(x)[1], rw.pruned_shape(x)[1]
    if isinstance(target, nn.GroupNorm):
        if target.num_channels != old:  # updated already (a module called several times is updated once)
            return False
        groups = 1 if target.num_groups == 1 else target.num_groups * new // old
        return rw.set_attrs(target, num_groups=groups, num_channels=new)
    if isinstance(target, torch.fx.Node):
        g = op.attrs["num_groups"]
        return rw.set_call_arg(target, 1, "num_groups", 1 if g == 1 else g * new // old)
    return False


@op_spec("prelu").rewriter("torch")
def _prelu(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """nn.PReLU: ``num_parameters`` from the sliced slopes."""
    if not isinstance(target, nn.PReLU):
        return False
    return rw.set_attrs(target, num_parameters=target.weight.numel())


# -- shapes ------------------------------------------------------------------------


@op_spec("reshape").rewriter("torch")
def _reshape(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """The target sizes of view / reshape, of unflatten, and nn.Unflatten's (flatten, squeeze, ... have none)."""
    if isinstance(target, nn.Unflatten):
        return _unflatten_module(rw, op, target)
    if isinstance(target, torch.fx.Node) and call_name(target) in ("view", "reshape", "_unsafe_view"):
        return _view_sizes(rw, op, target)
    if isinstance(target, torch.fx.Node) and call_name(target) == "unflatten":
        return _unflatten_sizes(rw, op, target)
    return False


def _view_sizes(rw: TorchRewrite, op: Op, node: torch.fx.Node) -> bool:
    """x.view(sizes), x.view(*sizes), x.view(shape=...): each size made to evaluate to the pruned output's."""
    args: list[Any] = list(node.args)
    kwargs: dict[str, Any] = dict(node.kwargs)
    new_out = rw.pruned_shape(op.outputs[0])
    if len(args) == 2 and isinstance(args[1], torch.fx.Node):  # a shape computed at run time
        args[1] = rw.sizes.fix(args[1], tuple(new_out))
    elif len(args) == 2 and isinstance(args[1], (list, tuple, torch.Size)):
        resized = rw.sizes.fix_list(list(args[1]), new_out)
        args[1] = resized if isinstance(args[1], list) else tuple(resized)
    elif len(args) >= 2:
        args[1:] = rw.sizes.fix_list(list(args[1:]), new_out)
    elif "shape" in kwargs:
        kwargs["shape"] = tuple(resize(list(kwargs["shape"]), new_out))
    return rw.set_args(node, args, kwargs)


def _unflatten_sizes(rw: TorchRewrite, op: Op, node: torch.fx.Node) -> bool:
    """x.unflatten(dim, sizes): the constant sizes follow the pruned output's dims there."""
    args: list[Any] = list(node.args)
    kwargs: dict[str, Any] = dict(node.kwargs)
    dim = (args[1] if len(args) > 1 else kwargs["dim"]) % len(rw.original_shape(op.input(0)))
    sizes = args[2] if len(args) > 2 else kwargs["sizes"]
    new = tuple(resize(list(sizes), rw.pruned_shape(op.outputs[0])[dim : dim + len(sizes)]))
    if len(args) > 2:
        args[2] = new
    else:
        kwargs["sizes"] = new
    return rw.set_args(node, args, kwargs)


def _unflatten_module(rw: TorchRewrite, op: Op, m: nn.Unflatten) -> bool:
    k = len(m.unflattened_size)
    dim = m.dim % len(rw.original_shape(op.input(0)))
    return rw.set_attrs(m, unflattened_size=tuple(rw.pruned_shape(op.outputs[0])[dim : dim + k]))


@op_spec("expand").rewriter("torch")
def _expand(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """x.expand(sizes) / x.expand(*sizes): constant sizes follow the pruned output (-1 stays); expand_as has none."""
    if not isinstance(target, torch.fx.Node) or call_name(target) != "expand":
        return False
    args, kwargs = list(target.args), dict(target.kwargs)
    varargs = len(args) > 2 or (len(args) == 2 and not isinstance(args[1], (list, tuple)))  # x.expand(a, b)
    sizes = args[1:] if varargs else args[1] if len(args) == 2 else kwargs.get("size")
    if not isinstance(sizes, (list, tuple)):
        return False
    new = resize(list(sizes), rw.pruned_shape(op.outputs[0]))
    if varargs:
        args[1:] = new
    elif len(args) == 2:
        args[1] = new if isinstance(args[1], list) else tuple(new)
    else:
        kwargs["size"] = new
    return rw.set_args(target, args, kwargs)


@op_spec("split").rewriter("torch")
def _split(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """Split sizes follow the pruned pieces; an uneven chunk / split by one size becomes a split by the new sizes."""
    if not isinstance(target, torch.fx.Node):
        return False
    args, kwargs = list(target.args), dict(target.kwargs)
    by_size = _arg_at(args, kwargs, 1, ("chunks", "split_size_or_sections", "split_size"))
    if not op.attrs.get("equal") and call_name(target) in ("chunk", "split") and isinstance(by_size, int):
        return _uneven_split_by_sizes(rw, op, target)
    return _split_sizes(rw, op, target)


def _new_split_sizes(rw: TorchRewrite, op: Op) -> list[int]:
    ax = op.attrs["axis"] % len(rw.original_shape(op.input(0)))
    return [rw.pruned_shape(o)[ax] for o in op.outputs]


def _uneven_split_by_sizes(rw: TorchRewrite, op: Op, node: torch.fx.Node) -> bool:
    """chunk(3) of 88 channels (30, 30, 28), pruned piece by piece: split(x, [new sizes], dim)."""
    dim = _arg_at(list(node.args), dict(node.kwargs), 2, ("dim",))
    if node.op == "call_method":
        node.target = "split"
    elif node.target in (torch.ops.aten.split.Tensor, torch.ops.aten.chunk.default):
        node.target = torch.ops.aten.split_with_sizes.default
    else:
        node.target = torch.split
    return rw.set_args(node, [node.args[0], _new_split_sizes(rw, op), 0 if dim is None else dim], {})


def _split_sizes(rw: TorchRewrite, op: Op, node: torch.fx.Node) -> bool:
    """split(size or sizes) and tensor_split(indices): the new sizes, or where the new pieces start; chunk has none."""
    fn = call_name(node)
    args: list[Any] = list(node.args)
    kwargs: dict[str, Any] = dict(node.kwargs)
    new_sizes = _new_split_sizes(rw, op)
    key: str | None = next((k for k in ("split_size_or_sections", "split_size", "split_sizes") if k in kwargs), None)
    spec = kwargs[key] if key else (args[1] if len(args) > 1 else None)
    if fn == "tensor_split":
        key = next((k for k in ("indices", "sections", "indices_or_sections") if k in kwargs), None)
        spec = kwargs[key] if key else args[1]
    if fn == "chunk" or spec is None:
        return False
    new_spec: Any = new_sizes[0] if isinstance(spec, int) else list(new_sizes)
    if fn == "tensor_split":  # sections stay; indices are where the new chunks start
        new_spec = spec if isinstance(spec, int) else [int(i) for i in np.cumsum(new_sizes[:-1])]
    if key:
        kwargs[key] = new_spec
    else:
        args[1] = new_spec
    return rw.set_args(node, args, kwargs)


def _arg_at(args: list, kwargs: dict, pos: int, names: tuple[str, ...]) -> Any:
    """A call's argument by position or by one of its keyword names (None: absent)."""
    if len(args) > pos:
        return args[pos]
    return next((kwargs[k] for k in names if k in kwargs), None)


# -- indexing ----------------------------------------------------------------------


@op_spec("slice").rewriter("torch")
def _slice(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """Bounds of x[..., a:b], x.narrow and aten.slice count the kept positions before and inside the slice."""
    if not isinstance(target, torch.fx.Node):
        return False
    x = op.input(0)
    ax = op.attrs["axis"] % len(rw.original_shape(x))
    n = rw.original_shape(x)[ax]
    start, stop, _ = slice(op.attrs.get("start"), op.attrs.get("stop"), op.attrs.get("step")).indices(n)
    mask = rw.keep_mask(x, ax)
    keep = np.ones(n, dtype=bool) if mask is None else mask
    new_start = int(keep[:start].sum())
    new_stop = new_start + int(keep[start:stop].sum())
    new_len = int(keep.sum())
    if (op.attrs.get("step") or 1) != 1 and not keep.all():  # one position of every whole block: the same slice of the pruned dim
        new_start, new_stop = start, new_len
    args = list(target.args)
    fn = call_name(target)
    if fn == "narrow":
        args[2], args[3] = new_start, new_stop - new_start
    elif fn == "slice":  # aten.slice.Tensor(x, dim, start, end, step)
        args += [None] * max(0, 4 - len(args))
        args[2] = None if args[2] is None and new_start == 0 else new_start
        args[3] = args[3] if (args[3] is None or args[3] >= n) and new_stop == new_len else new_stop
    else:  # x[..., a:b]
        idx = list(args[1] if isinstance(args[1], tuple) else (args[1],))
        old = idx[ax] if ax < len(idx) else slice(None)
        idx[ax] = slice(
            None if old.start is None and new_start == 0 else new_start,
            None if old.stop is None and new_stop == new_len else new_stop,
            old.step,
        )
        args[1] = tuple(idx) if isinstance(args[1], tuple) else idx[0]
    return rw.set_args(target, args, dict(target.kwargs))


@op_spec("index").rewriter("torch")
@op_spec("setitem").rewriter("torch")
def _index(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """x[items] (read or written): slices of pruned dims count the kept positions; a frozen dim's
    bounds read at run time keep their original values."""
    if not isinstance(target, torch.fx.Node):
        return False
    x = op.input(0)
    args = list(target.args)
    old_idx = args[1] if isinstance(args[1], tuple) else (args[1],)
    new_idx: list = []
    for item in op.attrs["items"]:
        if item[0] == "new":
            new_idx.append(None)
        elif item[0] == "int":
            new_idx.append(item[2])
        elif item[0] == "dslice":  # a frozen dim: the bounds stay, read at run time from sizes that do not change
            b = old_idx[item[2]]
            new_idx.append(slice(*(rw.unchanged_size(v) for v in (b.start, b.stop, b.step))))
        else:
            new_idx.append(_kept_slice(rw, x, item[1], slice(item[2], item[3], item[4])))
    args[1] = tuple(new_idx)
    return rw.set_args(target, args, dict(target.kwargs))


def _kept_slice(rw: TorchRewrite, x: str, d: int, s: slice) -> slice:
    """Slice ``s`` of dim ``d`` of ``x`` on the pruned dim."""
    mask = rw.keep_mask(x, d)
    if mask is None or mask.all() or s == slice(None):
        return s
    start, stop, step = s.indices(rw.original_shape(x)[d])
    if step != 1:  # one position of every whole block (the rule tied them)
        return slice(start, None, step)
    a = int(mask[:start].sum())
    return slice(a, a + int(mask[start:stop].sum()), s.step)


# -- element-wise ------------------------------------------------------------------


@op_spec("unary").rewriter("torch")
@op_spec("binary").rewriter("torch")
def _scalars_from_sizes(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """A scalar operand computed from a size (``x / x.size(1) ** 0.5``) keeps the original model's value."""
    if not isinstance(target, torch.fx.Node):
        return False
    args = list(target.args)
    for i, a in enumerate(args):
        if isinstance(a, torch.fx.Node):
            try:
                before, after = rw.original_sizes.eval(a), rw.sizes.eval(a)
            except SIZE_ERRORS:
                continue
            if isinstance(before, (int, float)) and before != after:
                args[i] = before
    return rw.set_args(target, args, dict(target.kwargs))


@op_spec("reduce").rewriter("torch")
def _mean_keeps_divisor(rw: TorchRewrite, op: Op, target: RewriteTarget) -> bool:
    """A mean over pruned channels (RMSNorm's mean of squares) times kept / original: the original mean."""
    if not isinstance(target, torch.fx.Node) or not op.attrs.get("rescalable"):
        return False
    x = op.input(0)
    rank = len(rw.original_shape(x))
    dims = {d % rank for d in op.attrs["dims"]}
    n_old = math.prod(rw.original_shape(x)[d] for d in dims)
    n_new = math.prod(rw.pruned_shape(x)[d] for d in dims)
    if n_new == n_old:
        return False
    with target.graph.inserting_after(target):
        scaled = target.graph.call_function(operator.mul, (target, n_new / n_old))
    target.replace_all_uses_with(scaled, delete_user_cb=lambda u: u is not scaled)
    target.meta["prunec_partial"] = True  # its value is not the original's: verification compares the product
    return True
