"""Reading ONNX protos: the graphs and tensors of a model, node attributes, value types, fresh names.

Small helpers the loader, the lowering, the rewrite and the verification all use; none of them
runs, evaluates or validates a model.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper

from frontends.errors import UnsupportedModelError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DOMAINS",
    "UniqueNames",
    "all_tensors",
    "first_line",
    "has_subgraph",
    "implicit_inputs",
    "iter_graphs",
    "node_attrs",
    "numpy_dtype",
    "onnx_opset",
    "real_inputs",
    "tensor_dims",
    "to_numpy",
]

DEFAULT_DOMAINS = ("", "ai.onnx")


def onnx_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default (ai.onnx) opset the model imports; None when it imports none."""
    for o in model.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            return int(o.version)
    return None


def iter_graphs(g: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    """A graph and every subgraph of its nodes' attributes, depth first."""
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from iter_graphs(sub)


def all_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Every TensorProto of the model: initializers and attribute tensors, subgraphs and functions too."""
    graphs = list(iter_graphs(model.graph))
    nodes: list[onnx.NodeProto] = [n for g in graphs for n in g.node]
    for f in model.functions:
        nodes.extend(f.node)
    for g in graphs:
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
    for n in nodes:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t
            elif a.type == onnx.AttributeProto.TENSORS:
                yield from a.tensors


def node_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values, by name."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def has_subgraph(node: onnx.NodeProto) -> bool:
    """Whether the node carries a subgraph (If, Loop, Scan)."""
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def implicit_inputs(n: onnx.NodeProto) -> list[str]:
    """Outer-scope values a node's subgraphs read."""
    out: list[str] = []
    for a in n.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for sg in subs:
            defined = {vi.name for vi in sg.input} | {t.name for t in sg.initializer}
            for sn in sg.node:
                for x in list(sn.input) + implicit_inputs(sn):
                    if x and x not in defined and x not in out:
                        out.append(x)
                defined.update(o for o in sn.output if o)
    return out


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph inputs a caller feeds (those that are not also initializers)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def tensor_dims(t: onnx.TypeProto) -> tuple[int, ...] | None:
    """A tensor type's static shape; None when it is not a tensor or any dim is symbolic or unknown."""
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        else:
            return None
    return tuple(dims)


def numpy_dtype(elem: int) -> np.dtype:
    """The numpy dtype of an ONNX tensor element type (UnsupportedModelError when it has none)."""
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError, ValueError):
        raise UnsupportedModelError(f"unsupported tensor element type {elem}") from None


def to_numpy(x: Any) -> np.ndarray:
    """An array of a torch tensor (detached, on the CPU) or of anything numpy accepts."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (onnx's run to pages), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UniqueNames:
    """Fresh value names for a graph: never one its inputs, outputs, value infos, initializers or nodes use."""

    def __init__(self, g: onnx.GraphProto) -> None:
        self.used = {vi.name for vi in list(g.input) + list(g.output) + list(g.value_info)}
        self.used |= {t.name for t in g.initializer}
        self.used |= {o for n in g.node for o in n.output}

    def fresh(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``, ... the first one not used yet; it is used from now on."""
        name, k = base, 1
        while name in self.used:
            name = f"{base}_{k}"
            k += 1
        self.used.add(name)
        return name
