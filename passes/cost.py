"""Cost model: multiply-accumulates and parameters from tensor shapes.

Shapes come from a function so the same code counts the original graph and a
planned pruning (``AnalysisResult.pruned_shape``) before anything is rewritten.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from frontends.graph import ChannelGraph, Op

__all__ = ["op_macs", "graph_macs", "graph_params"]

ShapeFn = Callable[[str], tuple[int, ...]]


def op_macs(op: Op, shape: ShapeFn) -> int:
    """Multiply-accumulates of one op (0 for ops that are not layers)."""
    if op.kind == "conv":
        w = shape(op.inputs[1])
        n = math.prod(shape(op.inputs[0])) if op.attrs.get("transposed") else math.prod(shape(op.outputs[0]))
        return n * math.prod(w[1:])
    if op.kind == "linear":
        return math.prod(shape(op.outputs[0])) * shape(op.inputs[1])[1]
    if op.kind == "matmul":
        return math.prod(shape(op.outputs[0])) * shape(op.inputs[0])[-1]
    if op.kind == "attention":  # q @ k^T, then weights @ v
        q, k, v = shape(op.inputs[0]), shape(op.inputs[1]), shape(op.inputs[2])
        scores = math.prod(q[:-1]) * k[-2]
        return scores * q[-1] + scores * v[-1]
    return 0


def graph_macs(graph: ChannelGraph, shape: ShapeFn | None = None) -> int:
    fn = shape or graph.shape
    return sum(op_macs(op, fn) for op in graph.ops.values())


def graph_params(graph: ChannelGraph, shape: ShapeFn | None = None) -> int:
    """Number of trainable parameters the graph uses."""
    fn = shape or graph.shape
    return sum(math.prod(fn(v.name)) for v in graph.values.values() if v.is_const and v.trainable)
