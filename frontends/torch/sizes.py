"""Sizes a traced model computes at run time (``x.size(1)``, ``x.shape[:-1] + (h, d)``), after pruning.

The torch rewrite handlers (:mod:`frontends.torch.rewrite_ops`) evaluate such sizes
on the pruned shapes to decide which constant sizes to change and which run-time
sizes to keep, fix or freeze.
"""

from __future__ import annotations

import logging
import operator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.fx

if TYPE_CHECKING:
    from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["SizeEval", "UnknownSize", "SIZE_ERRORS", "resize", "drop_dead_size_arithmetic"]


class UnknownSize(Exception):
    """A size this evaluator cannot follow (not read from a tensor's shape by plain int arithmetic)."""


SIZE_ERRORS = (UnknownSize, IndexError, TypeError, ZeroDivisionError)  # what evaluating a size may raise


class SizeEval:
    """Sizes computed at run time, evaluated on the pruned shapes (all-False ``pruned``: the original ones).

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

    def _shape(self, node: Any) -> tuple[int, ...]:
        if not isinstance(node, torch.fx.Node):
            raise UnknownSize
        vals = self.node_values.get(node.name)
        if not vals or vals[0] not in self.analysis.graph.values or not self.analysis.graph.values[vals[0]].is_tensor:
            raise UnknownSize
        return self.analysis.pruned_shape(vals[0], self.pruned)

    def eval(self, a: Any) -> Any:
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            return a
        if isinstance(a, (tuple, list)):
            return tuple(self.eval(x) for x in a)
        if not isinstance(a, torch.fx.Node):
            raise UnknownSize
        args: tuple[Any, ...] = a.args
        if a.op == "call_method" and a.target == "size":
            shape = self._shape(args[0])
            dim: Any = args[1] if len(args) > 1 else a.kwargs.get("dim")
            return shape if dim is None else shape[dim]
        if a.op == "call_function" and a.target is getattr and args[1] == "shape":
            return self._shape(args[0])
        if a.op == "call_function" and a.target is operator.getitem:
            return self.eval(args[0])[args[1]]
        if a.op == "call_function" and a.target in self._ARITH:
            return self._ARITH[a.target](self.eval(args[0]), self.eval(args[1]))
        raise UnknownSize

    def fix(self, a: Any, want: Any) -> Any:
        """``a`` (an int, a node, a tuple of them) made to evaluate to ``want``."""
        if isinstance(a, int):
            return a if a == -1 else want
        try:
            if self.eval(a) == want:
                return a
        except SIZE_ERRORS:
            return a  # cannot tell: verification will
        if isinstance(a, torch.fx.Node) and a.op == "call_function" and a.target is operator.add and isinstance(want, tuple):
            try:
                k = len(self.eval(a.args[0]))
            except (UnknownSize, TypeError):
                return tuple(want)
            a.args = (self.fix(a.args[0], want[:k]), self.fix(a.args[1], want[k:])) + tuple(a.args[2:])
            return a
        return tuple(want) if isinstance(want, tuple) else want

    def fix_list(self, sizes: list, new_shape: tuple[int, ...]) -> list:
        """Each size of a list made to evaluate to the new shape's (``-1`` stays)."""
        if len(sizes) != len(new_shape):
            return sizes
        return [s if isinstance(s, int) and s == -1 else self.fix(s, int(n)) for s, n in zip(sizes, new_shape, strict=True)]


def resize(sizes: list, new_shape: tuple[int, ...]) -> list:
    """New constant sizes: -1 and run-time sizes stay; other ints follow the new shape."""
    if len(sizes) != len(new_shape):
        return sizes
    return [s if (not isinstance(s, int) or s == -1) else int(n) for s, n in zip(sizes, new_shape, strict=True)]


def drop_dead_size_arithmetic(graph: torch.fx.Graph) -> None:
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
