"""Lowering an ONNX graph, its shapes and static values known, into a ChannelGraph.

Every node that is not static is lowered into the neutral kinds the torch frontend uses
(``conv``, ``linear``, ``matmul``, ``batch_norm``, ...) by the handler its op type registered in
:mod:`frontends.onnx.handlers`. A static value used as a shape argument (Reshape's shape, Slice
bounds, Split sizes, ...) is recorded as an :class:`ArgSlot` the rewrite checks and fixes; one used
as tensor data becomes a constant of the channel graph. A node the tables do not know, or whose
arguments are only known at run time, becomes ``kind="unknown"`` with ``target`` = its op type.

Every op's ``source`` is the index of its node; one node may lower to several ops (Gemm with a
bias: ``linear`` or ``matmul`` and ``binary``; a Slice over two axes: two ``slice`` ops; a Gather of
one index: ``slice`` and ``reshape``), and ``node_ops`` lists them. Attributes recorded for the
framework-neutral passes, with the meaning the torch lowering gives them:

=============  ==============================================================
conv           ``groups``, ``transposed``, and its geometry: ``stride`` and
               ``dilation`` (ints per spatial dim), ``padding`` (ints per
               spatial dim, or ``"same"`` / ``"valid"``; left out where the
               pads differ on the two sides), ``padding_mode`` (``"zeros"``)
layer_norm     ``ndim``: how many trailing dims it normalizes
group_norm     ``num_groups``
=============  ==============================================================
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from frontends.errors import InternalError, UnsupportedModelError
from frontends.graph import ChannelGraph, Op, Value
from frontends.onnx.handlers import ARG_ROLES, HANDLERS
from frontends.onnx.model import ArgSlot
from frontends.onnx.proto import DEFAULT_DOMAINS, has_subgraph, implicit_inputs, numpy_dtype, real_inputs

log = logging.getLogger(__name__)

__all__ = ["Lowered", "Lowering", "lower_graph"]


@dataclass
class Lowered:
    """The channel graph of a model and what ties it back to the ONNX nodes."""

    graph: ChannelGraph
    args: list[ArgSlot]  # static arguments of the lowered nodes
    node_ops: dict[int, list[str]]  # node index -> neutral op names


def lower_graph(
    model: onnx.ModelProto,
    shapes: dict[str, tuple[int, ...]],
    types: dict[str, int],
    static: dict[str, np.ndarray],
    static_nodes: list[int],
    derived: set[str],
    where: str,
) -> Lowered:
    """Lower every node of ``model`` that is not in ``static_nodes``; a handler's refusal names the model."""
    lw = Lowering(model, shapes, types, static, static_nodes, derived)
    try:
        graph = lw.run()
    except UnsupportedModelError as exc:
        if str(exc).startswith(f"{where}: "):
            raise
        raise UnsupportedModelError(f"{where}: {exc}") from None
    unknown = [op for op in graph.ops.values() if op.kind == "unknown"]
    if unknown:
        log.info("%s: %d ops lowered as unknown: %s", where, len(unknown), sorted({op.target for op in unknown}))
    return Lowered(graph, lw.args, lw.node_ops)


class Lowering:
    """The state of one lowering: the channel graph being built and what handlers ask of the ONNX values."""

    def __init__(
        self,
        model: onnx.ModelProto,
        shapes: dict[str, tuple[int, ...]],
        types: dict[str, int],
        static: dict[str, np.ndarray],
        static_nodes: list[int],
        derived: set[str],
    ) -> None:
        self.model = model
        self.nodes = list(model.graph.node)
        self.shapes = shapes
        self.types = types
        self.static = static
        self.static_set = set(static_nodes)
        self.derived = derived
        self.graph = ChannelGraph("onnx")
        self.args: list[ArgSlot] = []
        self.node_ops: dict[int, list[str]] = {}
        self.op_names = _op_names(self.nodes)
        self.producer: dict[str, int] = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers = _consumer_counts(model.graph, self.nodes)
        self.stats_only: dict[str, bool] = {}

    # -- values ---------------------------------------------------------------
    def dtype(self, name: str) -> str | None:
        t = self.types.get(name)
        if not t:
            return None
        try:
            return str(numpy_dtype(t))
        except Exception:
            return None

    def value(self, name: str) -> str | None:
        """Channel-graph value for an ONNX value used as tensor data (None: absent or unknown)."""
        if not name:
            return None
        if name in self.graph.values:
            return name
        if name in self.static:
            arr = self.static[name]
            # computed from sizes, used as data: the rewrite keeps its original value
            trainable = name not in self.derived and arr.dtype.kind == "f"
            self.graph.add_value(Value(name, tuple(arr.shape), str(arr.dtype), data=arr, trainable=trainable))
            return name
        return None

    def tensor(self, name: str) -> str | None:
        v = self.value(name)
        return v if v is not None and self.graph.values[v].is_tensor else None

    def out(self, name: str) -> str:
        if name not in self.graph.values:
            self.graph.add_value(Value(name, self.shapes.get(name), self.dtype(name)))
        return name

    def tmp(self, i: int, k: int, shape: tuple[int, ...], dtype: str | None) -> str:
        name = f"{self.op_names[i]}::{k}"
        self.graph.add_value(Value(name, tuple(shape), dtype))
        return name

    def emit(self, i: int, kind: str, inputs: list[str | None], outputs: list[str], attrs: dict | None = None, k: int | None = None) -> Op:
        n = self.nodes[i]
        name = self.op_names[i] if k is None else f"{self.op_names[i]}::op{k}"
        for o in outputs:
            self.out(o)
        op = Op(name, kind, inputs, outputs, attrs or {}, label=n.name or self.op_names[i], target=n.op_type, source=i)
        self.graph.add_op(op)
        self.node_ops.setdefault(i, []).append(name)
        return op

    def shape(self, name: str | None) -> tuple[int, ...] | None:
        """A value's static shape where it is known (None: absent, or not known)."""
        if not name:
            return None
        if name in self.graph.values:
            return self.graph.values[name].shape
        if name in self.static:
            return tuple(self.static[name].shape)
        return self.shapes.get(name)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """The static shape of a value a handler requires: a data input's (which ``_lowerable`` checked has one)."""
        shape = self.shape(name)
        if shape is None:
            raise InternalError(f"lowering needs the shape of {name!r}, which is not known")
        return shape

    def used(self, name: str) -> bool:
        return bool(name) and self.consumers.get(name, 0) > 0

    # -- driver ------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        g = self.model.graph
        for vi in real_inputs(self.model):
            self.graph.add_value(Value(vi.name, self.shapes.get(vi.name), self.dtype(vi.name)))
            self.graph.inputs.append(vi.name)
        for i, n in enumerate(self.nodes):
            if i in self.static_set:
                continue
            if not self._lower(i, n):
                self.unknown(i, n)
        for o in g.output:
            v = self.value(o.name)
            if v is not None and self.graph.values[v].is_tensor and v not in self.graph.outputs:
                self.graph.outputs.append(v)
        for name, only_stats in self.stats_only.items():
            if only_stats and name in self.graph.values:
                self.graph.values[name].trainable = False
        return self.graph

    def _lower(self, i: int, n: onnx.NodeProto) -> bool:
        """Lower one node with its op type's handler; False when it must become ``unknown``."""
        if n.domain not in DEFAULT_DOMAINS or has_subgraph(n):
            return False
        entry = HANDLERS.get(n.op_type)
        if entry is None:
            return False
        fn, data = entry
        data_idx = set(range(len(n.input))) if data == "all" else set(data)
        if not self._lowerable(i, n, data_idx):
            return False
        if not fn(self, i, n):
            assert i not in self.node_ops, f"the lowering of {n.op_type} emitted ops and then gave up"
            return False
        roles = ARG_ROLES.get(n.op_type, {})
        for k, x in enumerate(n.input):
            if x and k not in data_idx:
                self.args.append(ArgSlot(i, k, x, roles.get(k, "arg")))
        return True

    def _lowerable(self, i: int, n: onnx.NodeProto, data_idx: set[int]) -> bool:
        """Data inputs of known shape, static arguments, and a known shape for each output that is read."""
        for k, x in enumerate(n.input):
            if not x:
                continue
            if k in data_idx:
                if self.shape(x) is None:  # data of unknown shape: nothing can be said
                    return False
            elif x not in self.static:
                log.debug("%s: argument %d (%s) is computed at run time", self.op_names[i], k, x)
                return False
        return not any(o and self.shapes.get(o) is None for k, o in enumerate(n.output) if k == 0 or self.used(o))

    def unknown(self, i: int, n: onnx.NodeProto) -> None:
        ins: list[str | None] = []
        for x in list(n.input) + implicit_inputs(n):
            v = self.value(x)
            if v is not None and v not in ins:
                ins.append(v)
        outs = [o for o in n.output if o]
        self.emit(i, "unknown", ins, outs)

    # -- helpers for handlers ----------------------------------------------------------
    def only_first_output_used(self, n: onnx.NodeProto) -> bool:
        return not any(self.used(o) for o in n.output[1:])

    def static_ints(self, name: str) -> list[int] | None:
        if not name or name not in self.static:
            return None
        return [int(v) for v in np.asarray(self.static[name]).reshape(-1)]


def _op_names(nodes: list[onnx.NodeProto]) -> dict[int, str]:
    """A unique channel-graph op name per node: its own name, or ``OpType_index``."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for i, n in enumerate(nodes):
        name = n.name or f"{n.op_type}_{i}"
        if name in used:
            name = f"{name}_{i}"
        used.add(name)
        names[i] = name
    return names


def _consumer_counts(g: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> dict[str, int]:
    """How many times each value is read: by nodes (their subgraphs too) and as a graph output."""
    consumers: dict[str, int] = {}
    for n in nodes:
        for x in list(n.input) + implicit_inputs(n):
            if x:
                consumers[x] = consumers.get(x, 0) + 1
    for o in g.output:
        consumers[o.name] = consumers.get(o.name, 0) + 1
    return consumers
