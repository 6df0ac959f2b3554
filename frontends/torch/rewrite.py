"""Rewrite pass (torch): a new, smaller, dense ``GraphModule``.

Works on a deep copy of the traced module; the caller's model is untouched.
Cases handled:

1. every constant (parameter, buffer, ``get_attr`` tensor) with pruned indices
   on a tracked dim is sliced along it; a new bias (bias propagation into a layer
   that had none) follows its layer's output channels;
2. every op's spec handler for torch (``op_spec(kind).rewriter("torch")``, the
   built-in ones in :mod:`frontends.torch.rewrite_ops`; a user's own layer by its
   class name) makes module attributes and call arguments follow the new shapes:
   conv channels and groups, norm sizes, view / split / slice sizes, ...;
3. size arithmetic left unused by a constant size is removed; the graph is
   linted and recompiled.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from frontends.adapter import PlannedShapes
from frontends.graph import ChannelGraph, Op
from frontends.torch.nodes import module_attr
from frontends.torch.sizes import SIZE_ERRORS, SizeEval, drop_dead_size_arithmetic
from frontends.torch.trace import TracedModel
from passes.channel_analysis import AnalysisResult
from passes.ops import lookup

log = logging.getLogger(__name__)

__all__ = ["RewriteFX", "RewriteResult", "TorchRewrite", "RewriteTarget", "RewriteHandler", "apply_updates"]

RewriteTarget = torch.fx.Node | nn.Module  # an op's module (a call_module node) or its call node
RewriteHandler = Callable[["TorchRewrite", Op, RewriteTarget], bool]  # True: it changed something


@dataclass
class RewriteResult:
    module: torch.fx.GraphModule
    sliced: int  # constants sliced
    updated_nodes: int  # ops whose module attributes or call arguments a handler changed


class TorchRewrite(PlannedShapes):
    """What a torch rewrite handler reads, and the edits it makes.

    Shapes of graph values: ``original_shape(v)``, ``pruned_shape(v)``, and
    ``keep_mask(v, dim)`` (the kept indices of a dim; None where it is not tracked).
    Sizes the model computes at run time: ``sizes`` evaluates them on the pruned
    shapes, ``original_sizes`` on the original ones. Edits: ``set_args``,
    ``set_call_arg``, ``set_attrs``, each True when it changed something.
    """

    def __init__(self, analysis: AnalysisResult, pruned: np.ndarray, node_values: dict[str, list[str]]) -> None:
        self.analysis, self.pruned, self.node_values = analysis, pruned, node_values
        self.graph: ChannelGraph = analysis.graph
        self.sizes = SizeEval(node_values, analysis, pruned)
        self.original_sizes = SizeEval(node_values, analysis, np.zeros_like(pruned))

    def unchanged_size(self, a: Any) -> Any:
        """A run-time size that must keep its original value: the node while it still evaluates to it, else the constant."""
        if not isinstance(a, torch.fx.Node):
            return a
        try:
            before, after = self.original_sizes.eval(a), self.sizes.eval(a)
        except SIZE_ERRORS:
            return a
        return a if before == after else before

    @staticmethod
    def set_args(node: torch.fx.Node, args: list, kwargs: dict) -> bool:
        """Give ``node`` these arguments if they differ from its own."""
        if (tuple(args), kwargs) == (tuple(node.args), dict(node.kwargs)):
            return False
        node.args, node.kwargs = tuple(args), kwargs
        return True

    def set_call_arg(self, node: torch.fx.Node, i: int, name: str, value: Any) -> bool:
        """Set a call's argument where the call gives it: by keyword ``name``, else at position ``i``."""
        args, kwargs = list(node.args), dict(node.kwargs)
        if name in kwargs:
            kwargs[name] = value
        else:
            args[i] = value
        return self.set_args(node, args, kwargs)

    @staticmethod
    def set_attrs(module: nn.Module, **attrs: Any) -> bool:
        """Set a module's attributes (in the order given); True if any changed."""
        changed = False
        for k, v in attrs.items():
            changed = changed or getattr(module, k) != v
            setattr(module, k, v)
        return changed


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
        for k, p in m._parameters.items():
            if p is not None and id(p) in src:
                m._parameters[k] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for k, b in m._buffers.items():
            if b is not None and id(b) in src:
                m._buffers[k] = b.clone()
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
        cuts = self._cuts(analysis, pruned)
        # tensors about to be sliced are not copied: slicing makes the new ones
        gm = copy.deepcopy(traced.gm, {id(t): t for t in (module_attr(traced.gm, name) for name in cuts)})
        created = apply_updates(gm, updates)
        with torch.no_grad():
            for name, dims in cuts.items():
                new = module_attr(gm, name)
                for d, keep in dims:
                    new = new.index_select(d, torch.as_tensor(np.flatnonzero(keep), device=new.device))
                _set_tensor(gm, name, new.contiguous())  # index_select made a new tensor
            _unshare(gm, traced.gm)
            self._slice_new_biases(gm, created, analysis, pruned)
        updated = self._run_handlers(gm, TorchRewrite(analysis, pruned, traced.node_values))
        drop_dead_size_arithmetic(gm.graph)
        gm.graph.lint()
        gm.recompile()
        return RewriteResult(gm, len(cuts), updated)

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

    @staticmethod
    def _slice_new_biases(gm: nn.Module, created: list[str], analysis: AnalysisResult, pruned: np.ndarray) -> None:
        """A bias bias propagation created (full size) follows its layer's output channels."""
        graph = analysis.graph
        for name in created:
            module = name.rpartition(".")[0]
            op = next(o for o in graph.ops.values() if o.label == module and o.kind in ("conv", "linear"))
            y = op.outputs[0]
            keep = analysis.keep_mask(y, 1 if op.kind == "conv" else len(graph.shape(y)) - 1, pruned)
            if keep is not None and not keep.all():
                t = module_attr(gm, name)
                _set_tensor(gm, name, t[torch.as_tensor(np.flatnonzero(keep))].clone())

    @staticmethod
    def _run_handlers(gm: torch.fx.GraphModule, rw: TorchRewrite) -> int:
        """Each op's torch handler, on the copy's module (a call_module node) or call node. Returns how many changed."""
        nodes = {n.name: n for n in gm.graph.nodes}
        updated = 0
        for op in rw.graph.ops.values():
            src = op.source
            if not isinstance(src, torch.fx.Node) or src.name not in nodes:
                continue
            spec = lookup(op)
            handler = spec.rewrite.get("torch") if spec is not None else None
            if handler is None:
                continue
            node = nodes[src.name]  # the copy's node
            if node.op == "call_module":
                target: RewriteTarget = gm.get_submodule(str(node.target))
            elif node.op in ("call_function", "call_method"):
                target = node
            else:
                continue
            if handler(rw, op, target):
                updated += 1
        return updated
