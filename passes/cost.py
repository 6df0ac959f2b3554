"""Cost model: multiply-accumulates and parameters from tensor shapes.

Shapes come from a function so the same code counts the original graph and a
planned pruning (``AnalysisResult.pruned_shape``) before anything is rewritten.
Each op kind's count is part of its spec (:mod:`passes.ops`).
"""

from __future__ import annotations

import math

from frontends.graph import ChannelGraph, Op
from passes.ops import lookup
from passes.ops.spec import ShapeFn

__all__ = ["op_macs", "graph_macs", "graph_params"]


def op_macs(op: Op, shape: ShapeFn) -> int:
    """Multiply-accumulates of one op: its spec's ``macs`` (0 for ops whose spec counts none)."""
    spec = lookup(op)
    return spec.macs(op, shape) if spec is not None and spec.macs is not None else 0


def graph_macs(graph: ChannelGraph, shape: ShapeFn | None = None) -> int:
    fn = shape or graph.shape
    return sum(op_macs(op, fn) for op in graph.ops.values())


def graph_params(graph: ChannelGraph, shape: ShapeFn | None = None) -> int:
    """Number of trainable parameters the graph uses."""
    fn = shape or graph.shape
    return sum(math.prod(fn(v.name)) for v in graph.values.values() if v.is_const and v.trainable)
