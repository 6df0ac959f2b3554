"""The compact graph view of a report: ops, edges, module blocks, groups and channels per op.

Built from the channel analysis so that a picture (``compiler.html_report``) needs
nothing but the report. Blocks are the module scopes ops live in: the PyTorch
module stack (``layer1.0`` of ``layer1.0.conv1`` and of the residual add inside
``layer1.0``), or the ``/``-separated scope of an ONNX node name
(``/layer1/layer1.0/conv1/Conv``). An op without a scope of its own takes the
block of its first input's producer.

An op the registry does not know freezes every channel of its inputs; only one that
had a tracked channel to freeze is reported as unknown (:func:`unknown_ops_that_froze`).
A *side* op computes from no channel at all: no tracked dim on its inputs or outputs,
and every producer of its inputs is a side op too (or a model input). Causal masks
and positions built from token ids are side ops; the page folds them out of its
default picture.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from compiler.report import GraphBlock, GraphNode, GraphView
from frontends.graph import Op
from passes.channel_analysis import AnalysisResult, UnknownOp

log = logging.getLogger(__name__)

__all__ = ["build_graph_view", "op_scope", "unknown_ops_that_froze", "side_ops"]


def _tracked(a: AnalysisResult, value: str) -> bool:
    """The value has a channel-labelled dim."""
    lab = a.labels.get(value)
    return lab is not None and any(x is not None for x in lab)


def unknown_ops_that_froze(a: AnalysisResult) -> list[UnknownOp]:
    """The unknown ops that froze a tracked channel: some input had a channel-labelled dim. An unknown op on
    integer masks or positions freezes nothing and is not among them."""
    g = a.graph
    return [u for u in a.unknown_ops if any(v is not None and _tracked(a, v) for v in g.ops[u.op].inputs)]


def side_ops(a: AnalysisResult) -> set[str]:
    """Names of the ops that compute from no channel: none of their values is tracked and their inputs come
    from model inputs, constants or other side ops (causal masks, position ids)."""
    g = a.graph
    side: set[str] = set()
    for op in g.ops.values():
        if any(_tracked(a, v) for v in op.outputs) or any(v is not None and _tracked(a, v) for v in op.inputs):
            continue
        producers = (g.values[v].producer for v in op.tensor_inputs())
        if all(p is None or p not in g.ops or p in side for p in producers):
            side.add(op.name)
    return side


def op_scope(op: Op) -> list[tuple[str, str]] | None:
    """Enclosing scopes of an op, outermost first, as (name, type): what its frontend recorded, else the
    scope an exporter wrote into the node name (``/layer1/0/conv1/Conv``); None when there is neither."""
    if op.scope is not None:
        return op.scope
    label = op.label or op.name
    if "/" in label:
        parts = [p for p in label.split("/") if p]
        return [("/" + "/".join(parts[: i + 1]), "") for i in range(len(parts) - 1)]
    return None


def build_graph_view(
    a: AnalysisResult,
    layer_of: Mapping[str, int],
    unknown: set[str],
    shape_after: Callable[[str], tuple[int, ...]],
) -> GraphView:
    """Nodes in topological order with their groups, channels before/after (``shape_after``: a value's
    shape once pruned), frozen state and block."""
    g = a.graph
    class_group = _group_of_class(a)
    index = {name: i for i, name in enumerate(g.ops)}
    blocks = _Blocks()
    side = side_ops(a)
    nodes: list[GraphNode] = []
    edges: set[tuple[int, int]] = set()
    for i, op in enumerate(g.ops.values()):
        preds = _predecessors(a, op, i, index)
        edges.update((p, i) for p in preds)
        block = blocks.place(op, preds)
        node = _graph_node(a, op, block, class_group, _OpChannels.of(a, op, shape_after), unknown, layer_of)
        node.side = op.name in side
        nodes.append(node)
    return GraphView(nodes, sorted(edges), blocks.blocks)


def _group_of_class(a: AnalysisResult) -> np.ndarray:
    """Per atom class, the id of its group (-1: in none)."""
    class_group = np.full(a.n_classes, -1, dtype=np.int64)
    for grp in a.groups:
        class_group[grp.classes] = grp.id
    return class_group


def _predecessors(a: AnalysisResult, op: Op, i: int, index: Mapping[str, int]) -> list[int]:
    """Indices of the ops producing the tensor inputs of ``op`` (the ``i``-th op), in input order; not itself."""
    g = a.graph
    preds = []
    for v in op.tensor_inputs():
        prod = g.values[v].producer
        if prod is not None and prod in index and index[prod] != i:
            preds.append(index[prod])
    return preds


class _Blocks:
    """The module blocks met so far, and the block of every op placed (in order)."""

    def __init__(self) -> None:
        self.blocks: list[GraphBlock] = []
        self.index: dict[str, int] = {}  # block name -> its index in blocks
        self.of_node: list[int | None] = []

    def place(self, op: Op, preds: list[int]) -> int | None:
        """The block of ``op`` (innermost scope, its blocks added as met), else that of its first predecessor."""
        scopes = op_scope(op)
        if scopes is None:
            block = self.of_node[preds[0]] if preds else None
        else:
            block = None
            for name, tname in scopes:
                if name not in self.index:
                    self.index[name] = len(self.blocks)
                    self.blocks.append(GraphBlock(name, block, tname))
                block = self.index[name]
        self.of_node.append(block)
        return block


@dataclass
class _OpChannels:
    """The channel-labelled dims of an op's outputs: their atom classes, and the product of their sizes before
    and after pruning, summed over the outputs (``has_channels``: some output has such dims)."""

    tracked: np.ndarray
    before: int = 0
    after: int = 0
    has_channels: bool = False

    @classmethod
    def of(cls, a: AnalysisResult, op: Op, shape_after: Callable[[str], tuple[int, ...]]) -> _OpChannels:
        ch = cls(np.zeros(0, dtype=np.int64))
        for out in op.outputs:
            lab = a.labels.get(out)
            val = a.graph.values.get(out)
            if not lab or val is None or val.shape is None:
                continue
            dims = [d for d, x in enumerate(lab) if x is not None]
            if not dims:
                continue
            ch.has_channels = True
            for d in dims:
                ch.tracked = np.concatenate([ch.tracked, a.atom_class[lab[d]]])
            pshape = shape_after(out)
            ch.before += math.prod(val.shape[d] for d in dims)
            ch.after += math.prod(pshape[d] for d in dims)
        return ch


def _groups_and_frozen(a: AnalysisResult, class_group: np.ndarray, tracked: np.ndarray) -> tuple[set[int], bool]:
    """The groups of the ``tracked`` classes, and whether all of them are frozen (False when there are none)."""
    if not tracked.size:
        return set(), False
    cls = np.unique(tracked)
    return {int(x) for x in class_group[cls] if x >= 0}, bool(a.class_frozen[cls].all())


def _graph_node(
    a: AnalysisResult,
    op: Op,
    block: int | None,
    class_group: np.ndarray,
    ch: _OpChannels,
    unknown: set[str],
    layer_of: Mapping[str, int],
) -> GraphNode:
    """The view of one op."""
    groups, all_frozen = _groups_and_frozen(a, class_group, ch.tracked)
    first = a.graph.values.get(op.outputs[0]) if op.outputs else None
    return GraphNode(
        name=op.label or op.name,
        kind=op.kind,
        target=op.target,
        block=block,
        groups=sorted(groups),
        channels=(int(ch.before), int(ch.after)) if ch.has_channels else None,
        shape=list(first.shape) if first is not None and first.shape is not None else None,
        frozen=all_frozen or op.name in unknown,
        unknown=op.name in unknown,
        layer=layer_of.get(op.name),
    )
