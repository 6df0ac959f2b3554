"""Rewrite pass (torch): a new, smaller, dense ``GraphModule``.

Works on a deep copy of the traced module; the caller's model is untouched.
Cases handled:

1. every constant (parameter, buffer, ``get_attr`` tensor) with pruned indices
   on a tracked dim is sliced along it;
2. module attributes follow the new shapes: ``in/out_channels`` and ``groups``
   of convs, ``in/out_features``, ``num_features``, ``normalized_shape``,
   ``num_groups``/``num_channels``, ``num_parameters``, ``embedding_dim``,
   ``unflattened_size``;
3. constant arguments of calls follow the new shapes: view/reshape/unflatten
   sizes, split sizes, slice and narrow bounds, ``F.layer_norm``'s normalized
   shape, ``F.group_norm``'s group count, functional conv ``groups``. Sizes that
   are computed at run time (``x.size(1)``) need nothing;
4. the graph is linted and recompiled.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from frontends.torch_fx import TracedModel, _fn_name, _get_attr
from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["RewriteFX", "RewriteResult", "apply_updates"]


@dataclass
class RewriteResult:
    module: torch.fx.GraphModule
    sliced: int  # constants sliced
    updated_nodes: int  # call nodes whose constant arguments changed


def _set_tensor(root: nn.Module, path: str, new: torch.Tensor) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    old = getattr(parent, name)
    if isinstance(old, nn.Parameter):
        setattr(parent, name, nn.Parameter(new, requires_grad=old.requires_grad))
    elif name in parent._buffers:
        parent._buffers[name] = new
    else:
        setattr(parent, name, new)


def _unshare(gm: nn.Module, source: nn.Module) -> None:
    """Copy every tensor ``gm`` still shares with ``source`` (a tied weight of a sliced one)."""
    src = {id(t) for t in source.parameters()} | {id(t) for t in source.buffers()}
    src |= {id(t) for m in source.modules() for t in vars(m).values() if isinstance(t, torch.Tensor)}
    for m in gm.modules():
        for k, t in m._parameters.items():
            if t is not None and id(t) in src:
                m._parameters[k] = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
        for k, t in m._buffers.items():
            if t is not None and id(t) in src:
                m._buffers[k] = t.clone()
        for k, t in list(vars(m).items()):
            if isinstance(t, torch.Tensor) and id(t) in src:
                setattr(m, k, t.clone())


def apply_updates(gm: nn.Module, updates: dict[str, np.ndarray] | None) -> list[str]:
    """Set constants to new full-size values (bias propagation, OBS compensation).

    A name that is not an attribute yet is a new bias of a module that had none.
    Returns the names of the new biases.
    """
    created: list[str] = []
    if not updates:
        return created
    with torch.no_grad():
        for name, arr in updates.items():
            parent_path, _, attr = name.rpartition(".")
            parent = gm.get_submodule(parent_path) if parent_path else gm
            old = getattr(parent, attr, None)
            if isinstance(old, torch.Tensor):
                _set_tensor(gm, name, torch.as_tensor(arr, dtype=old.dtype, device=old.device).reshape(old.shape).clone())
            else:
                ref = next(parent.parameters())
                setattr(parent, attr, nn.Parameter(torch.as_tensor(arr, dtype=ref.dtype, device=ref.device).clone()))
                created.append(name)
    return created


class RewriteFX:
    """``call(traced, analysis, pruned, updates=None) -> RewriteResult``."""

    def call(
        self, traced: TracedModel, analysis: AnalysisResult, pruned: np.ndarray, updates: dict[str, np.ndarray] | None = None
    ) -> RewriteResult:
        graph = analysis.graph
        cuts = self._cuts(analysis, pruned)
        # tensors about to be sliced are not copied: slicing makes the new ones
        gm = copy.deepcopy(traced.gm, {id(t): t for t in (_get_attr(traced.gm, name) for name in cuts)})
        self._node_values = traced.node_values
        created = apply_updates(gm, updates)
        sliced = 0
        with torch.no_grad():
            for name, dims in cuts.items():
                new = _get_attr(gm, name)
                for d, keep in dims:
                    new = new.index_select(d, torch.as_tensor(np.flatnonzero(keep), device=new.device))
                _set_tensor(gm, name, new.contiguous())  # index_select made a new tensor
                sliced += 1
            _unshare(gm, traced.gm)
            for name in created:  # new biases follow their layer's output channels
                module = name.rpartition(".")[0]
                op = next(o for o in graph.ops.values() if o.label == module and o.kind in ("conv", "linear"))
                y = op.outputs[0]
                keep = analysis.keep_mask(y, 1 if op.kind == "conv" else len(graph.shape(y)) - 1, pruned)
                if keep is not None and not keep.all():
                    t = _get_attr(gm, name)
                    _set_tensor(gm, name, t[torch.as_tensor(np.flatnonzero(keep))].clone())
        updated = 0
        nodes = {n.name: n for n in gm.graph.nodes}
        for op in graph.ops.values():
            src = op.source
            if not isinstance(src, torch.fx.Node) or src.name not in nodes:
                continue
            node = nodes[src.name]  # the copy's node
            if node.op == "call_module":
                self._update_module(gm.get_submodule(str(node.target)), op, analysis, pruned)
            elif node.op in ("call_function", "call_method"):
                if self._update_call(node, op, analysis, pruned):
                    updated += 1
        _drop_dead_size_arithmetic(gm.graph)
        gm.graph.lint()
        gm.recompile()
        return RewriteResult(gm, sliced, updated)

    @staticmethod
    def _cuts(analysis: AnalysisResult, pruned: np.ndarray) -> dict[str, list[tuple[int, np.ndarray]]]:
        """Constants with pruned indices: name -> [(dim, kept mask)]."""
        cuts: dict[str, list[tuple[int, np.ndarray]]] = {}
        for v in analysis.graph.constants():
            lab = analysis.labels.get(v.name)
            if not lab:
                continue
            dims = [(d, ~pruned[analysis.atom_class[dl]]) for d, dl in enumerate(lab) if dl is not None]
            dims = [(d, keep) for d, keep in dims if not keep.all()]
            if dims:
                cuts[v.name] = dims
        return cuts

    # -- modules ---------------------------------------------------------------
    @staticmethod
    def _update_module(m: nn.Module, op, analysis: AnalysisResult, pruned: np.ndarray) -> None:
        graph = analysis.graph
        shape = lambda v: analysis.pruned_shape(v, pruned)  # noqa: E731
        x = op.inputs[0] if op.inputs else None
        if isinstance(m, nn.modules.conv._ConvNd) and x:
            new_in = shape(x)[1]
            m.in_channels = new_in
            m.out_channels = shape(op.outputs[0])[1]
            if m.groups > 1:  # from the sliced weight, so a module called several times (CoaT's shared cpe) is updated once
                m.groups = (m.out_channels if m.transposed else new_in) // m.weight.shape[1]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)) and x:
            m.num_features = shape(x)[1]
        elif isinstance(m, nn.LayerNorm) and x:
            k = len(m.normalized_shape)
            m.normalized_shape = tuple(shape(x)[-k:])
        elif isinstance(m, nn.GroupNorm) and x:
            old, new = graph.shape(x)[1], shape(x)[1]
            if m.num_channels == old:  # not yet updated (a module called several times is updated once)
                m.num_groups = 1 if m.num_groups == 1 else m.num_groups * new // old
                m.num_channels = new
        elif isinstance(m, nn.PReLU):
            m.num_parameters = m.weight.numel()
        elif isinstance(m, nn.Embedding):
            m.embedding_dim = m.weight.shape[1]
        elif isinstance(m, nn.Unflatten) and x:
            k = len(m.unflattened_size)
            out = shape(op.outputs[0])
            dim = m.dim % len(graph.shape(x))
            m.unflattened_size = tuple(out[dim : dim + k])

    def _unchanged_size(self, a: Any, analysis: AnalysisResult, pruned: np.ndarray) -> Any:
        """A run-time size that must keep its original value: the node while it still evaluates to it, else the constant."""
        if not isinstance(a, torch.fx.Node):
            return a
        try:
            before = _SizeEval(self._node_values, analysis, np.zeros_like(pruned)).eval(a)
            after = _SizeEval(self._node_values, analysis, pruned).eval(a)
        except (_Unknown, IndexError, TypeError, ZeroDivisionError):
            return a
        return a if before == after else before

    # -- calls -------------------------------------------------------------------
    def _update_call(self, node: torch.fx.Node, op, analysis: AnalysisResult, pruned: np.ndarray) -> bool:
        graph = analysis.graph
        shape = lambda v: analysis.pruned_shape(v, pruned)  # noqa: E731
        fn = _fn_name(node)
        args, kwargs = list(node.args), dict(node.kwargs)
        before = (tuple(args), dict(kwargs))
        if op.kind == "reshape" and fn in ("view", "reshape", "_unsafe_view"):
            new_out = shape(op.outputs[0])
            ev = _SizeEval(self._node_values, analysis, pruned)
            if len(args) == 2 and isinstance(args[1], torch.fx.Node):
                args[1] = ev.fix(args[1], tuple(new_out))
            elif len(args) == 2 and isinstance(args[1], (list, tuple, torch.Size)):
                resized = ev.fix_list(list(args[1]), new_out)
                args[1] = resized if isinstance(args[1], list) else tuple(resized)
            elif len(args) >= 2:
                args[1:] = ev.fix_list(list(args[1:]), new_out)
            elif "shape" in kwargs:
                kwargs["shape"] = tuple(_resize(list(kwargs["shape"]), new_out))
        elif op.kind == "reshape" and fn == "unflatten":
            x = op.inputs[0]
            dim = (args[1] if len(args) > 1 else kwargs["dim"]) % len(graph.shape(x))
            sizes = args[2] if len(args) > 2 else kwargs["sizes"]
            new = _resize(list(sizes), shape(op.outputs[0])[dim : dim + len(sizes)])
            if len(args) > 2:
                args[2] = tuple(new)
            else:
                kwargs["sizes"] = tuple(new)
        elif op.kind == "expand" and fn == "expand":
            varargs = len(args) > 2 or (len(args) == 2 and not isinstance(args[1], (list, tuple)))  # x.expand(a, b)
            sizes = args[1:] if varargs else args[1] if len(args) == 2 else kwargs.get("size")
            if isinstance(sizes, (list, tuple)):
                new = _resize(list(sizes), shape(op.outputs[0]))
                if varargs:
                    args[1:] = new
                elif len(args) == 2:
                    args[1] = new if isinstance(args[1], list) else tuple(new)
                else:
                    kwargs["size"] = new
        elif op.kind == "layer_norm":
            k = op.attrs["ndim"]
            key = 1
            new_shape = list(shape(op.inputs[0])[-k:])
            if "normalized_shape" in kwargs:
                kwargs["normalized_shape"] = new_shape
            else:
                args[key] = new_shape
        elif op.kind == "group_norm":
            x = op.inputs[0]
            g = op.attrs["num_groups"]
            new_g = 1 if g == 1 else g * shape(x)[1] // graph.shape(x)[1]
            if "num_groups" in kwargs:
                kwargs["num_groups"] = new_g
            else:
                args[1] = new_g
        elif op.kind == "conv" and op.attrs.get("groups", 1) > 1:
            x = op.inputs[0]
            new_g = op.attrs["groups"] * shape(x)[1] // graph.shape(x)[1]
            if fn == "convolution":
                args[8] = new_g
            elif "groups" in kwargs:
                kwargs["groups"] = new_g
            else:
                args[6] = new_g
        elif op.kind == "attention":
            q = op.inputs[0]
            old_d, new_d = graph.shape(q)[-1], shape(q)[-1]
            if old_d != new_d and op.attrs.get("scale") is None:
                kwargs["scale"] = 1.0 / math.sqrt(old_d)
        elif op.kind == "split" and not op.attrs.get("equal") and fn in ("chunk", "split") and isinstance(
            _arg_at(args, kwargs, 1, ("chunks", "split_size_or_sections", "split_size")), int
        ):
            # an uneven chunk/split by size, pruned chunk by chunk: a split with the new sizes spelled out
            ax = op.attrs["axis"] % len(graph.shape(op.inputs[0]))
            new_sizes = [shape(o)[ax] for o in op.outputs]
            dim = _arg_at(args, kwargs, 2, ("dim",))
            args = [args[0], list(new_sizes), 0 if dim is None else dim]
            kwargs = {}
            if node.op == "call_method":
                node.target = "split"
            elif node.target in (torch.ops.aten.split.Tensor, torch.ops.aten.chunk.default):
                node.target = torch.ops.aten.split_with_sizes.default
            else:
                node.target = torch.split
        elif op.kind == "split":
            ax = op.attrs["axis"] % len(graph.shape(op.inputs[0]))
            new_sizes = [shape(o)[ax] for o in op.outputs]
            key = next((k for k in ("split_size_or_sections", "split_size", "split_sizes") if k in kwargs), None)
            spec = kwargs[key] if key else (args[1] if len(args) > 1 else None)
            if fn == "tensor_split":
                key = next((k for k in ("indices", "sections", "indices_or_sections") if k in kwargs), None)
                spec = kwargs[key] if key else args[1]
            if fn != "chunk" and spec is not None:
                new_spec: Any = new_sizes[0] if isinstance(spec, int) else list(new_sizes)
                if fn == "tensor_split":  # sections stay; indices are where the new chunks start
                    new_spec = spec if isinstance(spec, int) else [int(i) for i in np.cumsum(new_sizes[:-1])]
                if key:
                    kwargs[key] = new_spec
                else:
                    args[1] = new_spec
        elif op.kind in ("index", "setitem"):
            x = op.inputs[0]
            n_shape = graph.shape(x)
            old_idx = args[1] if isinstance(args[1], tuple) else (args[1],)
            new_idx: list = []
            for item in op.attrs["items"]:
                if item[0] == "new":
                    new_idx.append(None)
                elif item[0] == "int":
                    new_idx.append(item[2])
                elif item[0] == "dslice":  # a frozen dim: the bounds stay, read at run time from sizes that do not change
                    b = old_idx[item[2]]
                    new_idx.append(slice(*(self._unchanged_size(v, analysis, pruned) for v in (b.start, b.stop, b.step))))
                else:
                    d = item[1]
                    s = slice(item[2], item[3], item[4])
                    mask = analysis.keep_mask(x, d, pruned)
                    if mask is not None and not mask.all() and s != slice(None):
                        start, stop, step = s.indices(n_shape[d])
                        if step != 1:  # one position of every whole block (the rule tied them)
                            s = slice(start, None, step)
                        else:
                            a = int(mask[:start].sum())
                            s = slice(a, a + int(mask[start:stop].sum()), s.step)
                    new_idx.append(s)
            args[1] = tuple(new_idx)
        elif op.kind in ("binary", "unary"):
            ev = _SizeEval(self._node_values, analysis, pruned)
            orig = _SizeEval(self._node_values, analysis, np.zeros_like(pruned))
            for i, a in enumerate(args):
                if isinstance(a, torch.fx.Node):
                    try:
                        before, after = orig.eval(a), ev.eval(a)
                    except (_Unknown, IndexError, TypeError, ZeroDivisionError):
                        continue
                    if isinstance(before, (int, float)) and before != after:
                        args[i] = before  # a scale computed from a size keeps the original model's value
        elif op.kind == "reduce" and op.attrs.get("rescalable"):
            x = op.inputs[0]
            rank = len(graph.shape(x))
            dims = {d % rank for d in op.attrs["dims"]}
            n_old = math.prod(graph.shape(x)[d] for d in dims)
            n_new = math.prod(shape(x)[d] for d in dims)
            if n_new == n_old:
                return False
            with node.graph.inserting_after(node):  # mean over the kept channels * kept / original = the original mean
                scaled = node.graph.call_function(operator.mul, (node, n_new / n_old))
            node.replace_all_uses_with(scaled, delete_user_cb=lambda u: u is not scaled)
            node.meta["prunec_partial"] = True  # its value is not the original's: verification compares the product
            return True
        elif op.kind == "slice":
            x = op.inputs[0]
            rank = len(graph.shape(x))
            ax = op.attrs["axis"] % rank
            n = graph.shape(x)[ax]
            start, stop, _ = slice(op.attrs.get("start"), op.attrs.get("stop"), op.attrs.get("step")).indices(n)
            mask = analysis.keep_mask(x, ax, pruned)
            keep = np.ones(n, dtype=bool) if mask is None else mask
            new_start = int(keep[:start].sum())
            new_stop = new_start + int(keep[start:stop].sum())
            step = op.attrs.get("step") or 1
            if step != 1 and not keep.all():  # one position of every whole block: the same slice of the pruned dim
                new_start, new_stop = start, int(keep.sum())
            if fn == "narrow":
                args[2], args[3] = new_start, new_stop - new_start
            elif fn == "slice":  # aten.slice.Tensor(x, dim, start, end, step)
                args += [None] * max(0, 4 - len(args))
                new_len = int(keep.sum())
                args[2] = None if args[2] is None and new_start == 0 else new_start
                args[3] = args[3] if (args[3] is None or args[3] >= n) and new_stop == new_len else new_stop
            else:
                idx = args[1] if isinstance(args[1], tuple) else (args[1],)
                idx = list(idx)
                old = idx[ax] if ax < len(idx) else slice(None)
                new_len = int(keep.sum())
                idx[ax] = slice(
                    None if old.start is None and new_start == 0 else new_start,
                    None if old.stop is None and new_stop == new_len else new_stop,
                    old.step,
                )
                args[1] = tuple(idx) if isinstance(args[1], tuple) else idx[0]
        else:
            return False
        if (tuple(args), kwargs) != before:
            node.args, node.kwargs = tuple(args), kwargs
            return True
        return False


def _arg_at(args: list, kwargs: dict, pos: int, names: tuple[str, ...]) -> Any:
    """A call's argument by position or by one of its keyword names (None: absent)."""
    if len(args) > pos:
        return args[pos]
    return next((kwargs[k] for k in names if k in kwargs), None)


def _drop_dead_size_arithmetic(graph: torch.fx.Graph) -> None:
    """Remove unused size reads and int arithmetic (left over where a constant replaced them); nothing else."""
    changed = True
    while changed:
        changed = False
        for n in reversed(list(graph.nodes)):
            if n.users:
                continue
            pure = (n.op == "call_method" and n.target in ("size", "dim")) or (
                n.op == "call_function" and (n.target is getattr or getattr(n.target, "__module__", "") in ("_operator", "operator"))
                and n.target not in (operator.setitem, operator.iadd, operator.imul, operator.isub, operator.itruediv)
            )
            if pure:
                graph.erase_node(n)
                changed = True


class _Unknown(Exception):
    pass


class _SizeEval:
    """Sizes computed at run time (``x.size(1)``, ``x.shape[:-1] + (h, d)``), evaluated on the pruned shapes.

    A run-time size is right after pruning only if it comes from a tensor pruned
    like the reshaped one; MaxViT and Swin read the residual width to reshape
    attention heads. Sizes that evaluate to the wrong value are replaced by the
    right constant (or, for ``tuple + tuple``, the constant part is fixed), and
    sizes that still evaluate right stay dynamic (the batch size).
    """

    _ARITH = {
        operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
        operator.floordiv: operator.floordiv, operator.mod: operator.mod, operator.pow: operator.pow,
        operator.truediv: operator.truediv,
    }  # fmt: skip

    def __init__(self, node_values: dict[str, list[str]], analysis: AnalysisResult, pruned: np.ndarray) -> None:
        self.node_values, self.analysis, self.pruned = node_values, analysis, pruned

    def _shape(self, node: torch.fx.Node) -> tuple[int, ...]:
        vals = self.node_values.get(node.name)
        if not vals or vals[0] not in self.analysis.graph.values or not self.analysis.graph.values[vals[0]].is_tensor:
            raise _Unknown
        return self.analysis.pruned_shape(vals[0], self.pruned)

    def eval(self, a: Any) -> Any:
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return a
        if isinstance(a, (tuple, list)):
            return tuple(self.eval(x) for x in a)
        if not isinstance(a, torch.fx.Node):
            raise _Unknown
        if a.op == "call_method" and a.target == "size":
            shape = self._shape(a.args[0])
            dim = a.args[1] if len(a.args) > 1 else a.kwargs.get("dim")
            return shape if dim is None else shape[dim]
        if a.op == "call_function" and a.target is getattr and a.args[1] == "shape":
            return self._shape(a.args[0])
        if a.op == "call_function" and a.target is operator.getitem:
            return self.eval(a.args[0])[a.args[1]]
        if a.op == "call_function" and a.target in self._ARITH:
            return self._ARITH[a.target](self.eval(a.args[0]), self.eval(a.args[1]))
        raise _Unknown

    def fix(self, a: Any, want: Any) -> Any:
        """``a`` (an int, a node, a tuple of them) made to evaluate to ``want``."""
        if isinstance(a, int):
            return a if a == -1 else want
        try:
            if self.eval(a) == want:
                return a
        except (_Unknown, IndexError, TypeError, ZeroDivisionError):
            return a  # cannot tell: verification will
        if isinstance(a, torch.fx.Node) and a.op == "call_function" and a.target is operator.add and isinstance(want, tuple):
            try:
                k = len(self.eval(a.args[0]))
            except (_Unknown, TypeError):
                return tuple(want)
            a.args = (self.fix(a.args[0], want[:k]), self.fix(a.args[1], want[k:])) + tuple(a.args[2:])
            return a
        return tuple(want) if isinstance(want, tuple) else want

    def fix_list(self, sizes: list, new_shape: tuple[int, ...]) -> list:
        if len(sizes) != len(new_shape):
            return sizes
        return [s if isinstance(s, int) and s == -1 else self.fix(s, int(n)) for s, n in zip(sizes, new_shape)]


def _resize(sizes: list, new_shape: tuple[int, ...]) -> list:
    """New constant sizes: -1 and run-time sizes stay; other ints follow the new shape."""
    if len(sizes) != len(new_shape):
        return sizes
    return [s if (not isinstance(s, int) or s == -1) else int(n) for s, n in zip(sizes, new_shape)]
