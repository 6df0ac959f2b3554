"""The compact graph view of a report: ops, edges, module blocks, groups and channels per op.

Built from the channel analysis so that a picture (``compiler.html_report``) needs
nothing but the report. Blocks are the module scopes ops live in: the PyTorch
module stack (``layer1.0`` of ``layer1.0.conv1`` and of the residual add inside
``layer1.0``), or the ``/``-separated scope of an ONNX node name
(``/layer1/layer1.0/conv1/Conv``). An op without a scope of its own takes the
block of its first input's producer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import numpy as np

from compiler.report import GraphBlock, GraphNode, GraphView
from frontends.graph import Op
from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["build_graph_view", "op_scope"]


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
    class_group = np.full(a.n_classes, -1, dtype=np.int64)
    for grp in a.groups:
        class_group[grp.classes] = grp.id
    index = {name: i for i, name in enumerate(g.ops)}
    blocks: list[GraphBlock] = []
    block_index: dict[str, int] = {}
    node_block: list[int | None] = []
    nodes: list[GraphNode] = []
    edges: set[tuple[int, int]] = set()
    for i, op in enumerate(g.ops.values()):
        preds = []
        for v in op.tensor_inputs():
            prod = g.values[v].producer
            if prod is not None and prod in index and index[prod] != i:
                preds.append(index[prod])
                edges.add((index[prod], i))
        scopes = op_scope(op)
        if scopes is None:
            block = node_block[preds[0]] if preds else None
        else:
            block = None
            for name, tname in scopes:
                if name not in block_index:
                    block_index[name] = len(blocks)
                    blocks.append(GraphBlock(name, block, tname))
                block = block_index[name]
        node_block.append(block)
        groups: set[int] = set()
        tracked = np.zeros(0, dtype=np.int64)
        before = after = 0
        has_channels = False
        for out in op.outputs:
            lab = a.labels.get(out)
            val = g.values.get(out)
            if not lab or val is None or val.shape is None:
                continue
            dims = [d for d, x in enumerate(lab) if x is not None]
            if not dims:
                continue
            has_channels = True
            for d in dims:
                tracked = np.concatenate([tracked, a.atom_class[lab[d]]])
            pshape = shape_after(out)
            before += math.prod(val.shape[d] for d in dims)
            after += math.prod(pshape[d] for d in dims)
        if tracked.size:
            cls = np.unique(tracked)
            groups = {int(x) for x in class_group[cls] if x >= 0}
            all_frozen = bool(a.class_frozen[cls].all())
        else:
            all_frozen = False
        first = g.values.get(op.outputs[0]) if op.outputs else None
        nodes.append(
            GraphNode(
                name=op.label or op.name,
                kind=op.kind,
                target=op.target,
                block=block,
                groups=sorted(groups),
                channels=(int(before), int(after)) if has_channels else None,
                shape=list(first.shape) if first is not None and first.shape is not None else None,
                frozen=all_frozen or op.name in unknown,
                unknown=op.name in unknown,
                layer=layer_of.get(op.name),
            )
        )
    return GraphView(nodes, sorted(edges), blocks)
