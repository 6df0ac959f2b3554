"""Rewrite pass (ONNX): a new, smaller, dense ``ModelProto``.

Works on a copy of the original model; node names, op types, opset imports and
the graph's input and output names and types are kept. The steps of
:meth:`RewriteONNX.call`, in order:

1. **slice constants**: every constant with pruned indices on a tracked dim
   (``analysis.labels``, ``analysis.atom_class``, as the torch rewrite) is sliced
   along it: an initializer in place (and its graph input, where it is one), a
   ``Constant`` node's tensor in place;
2. **re-evaluate static values** on the pruned shapes (Shape outputs of the pruned
   tensors through the same Gather/Concat/... nodes); a static node that cannot be
   re-run is fine only when nothing outside the static part reads what it gives;
3. **materialize computed constants**: a constant computed from constants whose
   value changes gets it as a new initializer (an ``Identity`` of a shared
   constant, the exporters' de-duplication, gets its own; an ``Identity`` of a
   ``Constant`` node read only there has the node's value sliced in place); a
   quantized weight (``DequantizeLinear`` of codes) has its codes and per-axis
   scale and zero point sliced instead, so it stays quantized
   (:func:`frontends.onnx.quantized.slice_dequantized`); a shape-derived value
   used as tensor data must keep its value;
4. **op handlers**: each lowered node's ops' ONNX handlers
   (``op_spec(kind).rewriter("onnx")``, the built-in ones in
   :mod:`frontends.onnx.rewrite_ops`) make attributes and static arguments follow
   the pruned shapes: conv ``group``, ``num_groups``, Reshape / Expand shapes,
   Slice bounds, Gather indices, Split and Resize sizes, a ReduceMean over pruned
   channels rescaled to the original divisor;
5. **keep the other arguments**: every static argument no handler fixed must keep
   its original value; one that does not is replaced, for that node only, by a
   constant with the original value;
6. **insert added nodes** (the rescaling ``Mul`` s) right after their producers;
7. **clean up**: nodes and initializers the rewrite left without a consumer are
   removed, stale ``value_info`` is dropped and shapes are inferred again; under
   IR version < 4 every initializer (sliced, renamed or new) is listed as a graph
   input with its shape; the result must pass
   ``onnx.checker.check_model(full_check=True)``;
8. **write back the opset**: a model upgraded from an older opset goes back to it
   where that can be done and checked (:func:`frontends.onnx.opsets.write_back`),
   else stays at the working opset; a note (``written at opset N ...``) in the
   loaded model's ``notes`` says which.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from frontends.adapter import PlannedShapes
from frontends.errors import InternalError, UnsupportedModelError
from frontends.graph import ChannelGraph, Op
from frontends.onnx import large
from frontends.onnx.evaluate import evaluate_static
from frontends.onnx.model import ArgSlot, OnnxModel
from frontends.onnx.opsets import list_initializers_as_inputs, write_back
from frontends.onnx.proto import UniqueNames, implicit_inputs
from frontends.onnx.quantized import slice_dequantized
from passes.ops import lookup

if TYPE_CHECKING:
    from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["RewriteONNX", "RewriteOnnxResult", "OnnxRewrite", "RewriteHandler"]

RewriteHandler = Callable[["OnnxRewrite", Op, int], set[int]]  # the static argument slots it fixed


@dataclass
class RewriteOnnxResult:
    model: onnx.ModelProto
    sliced: int  # constants given new data
    updated_args: int  # static node arguments given new values
    materialized: list[str] = field(default_factory=list)  # computed constants replaced by initializers
    removed_nodes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _tensor(arr: np.ndarray, name: str, data_type: int | None = None) -> onnx.TensorProto:
    """``arr`` as a TensorProto, of ``data_type`` where given."""
    arr = np.asarray(arr, order="C")
    t = numpy_helper.from_array(arr, name)
    if data_type is not None and t.data_type != data_type:
        np_t = helper.tensor_dtype_to_np_dtype(data_type)
        t = helper.make_tensor(name, data_type, arr.shape, arr.astype(np_t).tobytes(), raw=True)
    return t


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both absent, or equal in shape and values."""
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


class OnnxRewrite(PlannedShapes):
    """The model being rewritten: what an ONNX rewrite handler reads, and the edits it makes.

    Shapes of channel-graph values: ``original_shape(v)``, ``pruned_shape(v)``, and
    ``keep_mask(v, dim)`` (the kept indices of a dim; None where it is not tracked).
    Nodes: ``nodes`` (the copy's, by the original index), ``args(i)`` / ``arg(i, role)``
    (a node's static arguments, :class:`ArgSlot`). Static values: ``env`` holds them
    evaluated on the pruned shapes, ``original(v)`` gives the original model's.
    Edits: ``set_arg``, ``set_int_attr``, ``new_initializer``, ``insert_after``.
    """

    def __init__(self, om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray) -> None:
        self.om, self.analysis, self.pruned = om, analysis, pruned
        self.graph: ChannelGraph = analysis.graph
        self.model = onnx.ModelProto()
        self.model.CopyFrom(om.model)
        self.g = self.model.graph
        self.nodes = self.g.node
        self.names = UniqueNames(self.g)
        self.result = RewriteOnnxResult(self.model, 0, 0)
        self.static_nodes = set(om.static_nodes)
        self.outputs = {o.name for o in self.g.output}
        self.init_pos = {t.name: k for k, t in enumerate(self.g.initializer)}
        self.const_node = {n.output[0]: i for i, n in enumerate(self.nodes) if n.op_type == "Constant"}
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers = _consumers(self.nodes)
        self.slots: dict[int, dict[int, ArgSlot]] = defaultdict(dict)
        for a in om.args:
            self.slots[a.node][a.index] = a
        self.env: dict[str, np.ndarray] = {}  # static values on the pruned shapes (step 2 fills it)
        self.added: dict[int, onnx.NodeProto] = {}  # node index -> a node to insert right after it

    # -- what handlers read -----------------------------------------------------------
    def args(self, node: int) -> dict[int, ArgSlot]:
        """A node's static arguments by input index."""
        return self.slots.get(node, {})

    def arg(self, node: int, role: str) -> ArgSlot | None:
        """A node's static argument of ``role`` (``shape``, ``starts``, ``split``, ...; see ArgSlot)."""
        return next((a for a in self.args(node).values() if a.role == role), None)

    def original(self, value: str) -> np.ndarray:
        """A static value in the original model."""
        return self.om.static[value]

    def dtype_of(self, value: str) -> int | None:
        """The ONNX element type of a value."""
        if value in self.init_pos:
            return self.g.initializer[self.init_pos[value]].data_type
        return self.om.elem_types.get(value)

    # -- edits ----------------------------------------------------------------------------
    def new_initializer(self, base: str, arr: np.ndarray, data_type: int | None) -> str:
        """A new initializer with a fresh name from ``base``; returns the name."""
        name = self.names.fresh(base)
        self.g.initializer.append(_tensor(arr, name, data_type))
        return name

    def set_arg(self, i: int, k: int, arr: np.ndarray) -> None:
        """Give input ``k`` of node ``i`` the value ``arr``: in place where only this node reads it, else a new constant."""
        name = self.nodes[i].input[k]
        if _same(self.env.get(name), arr):
            return
        only_here = self.consumers.get(name) == [(i, k)] and name not in self.graph.values and name not in self.outputs
        if only_here and name in self.init_pos:
            old = self.g.initializer[self.init_pos[name]]
            old.CopyFrom(_tensor(arr, name, old.data_type))
        elif only_here and name in self.const_node:
            n = self.nodes[self.const_node[name]]
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("value", _tensor(arr, "", self.dtype_of(name))))
        else:
            base = f"{name}_{self.nodes[i].name}" if self.nodes[i].name else f"{name}_pruned"
            self.nodes[i].input[k] = self.new_initializer(base, arr, self.dtype_of(name))
        self.env[self.nodes[i].input[k]] = np.asarray(arr)
        self.result.updated_args += 1

    def set_int_attr(self, i: int, key: str, value: int) -> None:
        """Set (or add) an int attribute of node ``i``."""
        node = self.nodes[i]
        for a in node.attribute:
            if a.name == key:
                a.i = int(value)
                return
        node.attribute.append(helper.make_attribute(key, int(value)))

    def insert_after(self, i: int, node: onnx.NodeProto) -> None:
        """Insert ``node`` right after node ``i`` (once the handlers are done, so indices stay valid)."""
        if i in self.added:
            raise InternalError(f"two nodes to insert after {self.nodes[i].name or self.nodes[i].op_type}")
        self.added[i] = node


def _consumers(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[tuple[int, int]]]:
    """Where each value is read: (node, input index), -1 for a read by the node's subgraphs."""
    consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, n in enumerate(nodes):
        for k, x in enumerate(n.input):
            if x:
                consumers[x].append((i, k))
        for x in implicit_inputs(n):
            consumers[x].append((i, -1))
    return consumers


class RewriteONNX:
    """``call(loaded, analysis, pruned) -> RewriteOnnxResult`` (the steps of the module docstring)."""

    def call(self, om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray) -> RewriteOnnxResult:
        rw = OnnxRewrite(om, analysis, pruned)
        desired = _slice_constants(rw)
        _evaluate_static(rw, desired)
        _materialize_computed_constants(rw, desired)
        _check_shape_derived(rw, desired)
        _run_handlers(rw)
        _insert_added_nodes(rw)
        _remove_dead(rw.model, om, rw.result)
        graph = analysis.graph
        tensors = [v for v, val in graph.values.items() if val.is_tensor and not val.is_const]
        _refresh_shapes(rw.model, {v: rw.pruned_shape(v) for v in tensors}, om)
        if rw.model.ir_version < 4:
            list_initializers_as_inputs(rw.model)
        _check(rw.model, om)
        _write_back_opset(rw, om)
        large.materialize(rw.result.model)  # initializers still mapped from the input's data file: into the proto
        return rw.result


# -- 1. slice constants --------------------------------------------------------------------------


def _slice_constants(rw: OnnxRewrite) -> dict[str, np.ndarray]:
    """Every constant's value with its pruned indices removed (sliced in place where it is an initializer or a Constant)."""
    desired: dict[str, np.ndarray] = {}
    for v in rw.graph.constants():
        arr = rw.om.static.get(v.name)
        if arr is None:
            continue
        new = arr
        for d in range(arr.ndim):
            keep = rw.keep_mask(v.name, d)
            if keep is not None and not keep.all():
                new = np.take(new, np.flatnonzero(keep), axis=d)
        desired[v.name] = new
        if new is arr:
            continue
        rw.result.sliced += 1
        if v.name in rw.init_pos:
            old = rw.g.initializer[rw.init_pos[v.name]]
            old.CopyFrom(_tensor(new, v.name, old.data_type))
            for vi in rw.g.input:
                if vi.name == v.name:
                    _set_dims(vi, new.shape)
        elif v.name in rw.const_node:
            _set_constant(rw.nodes[rw.const_node[v.name]], new)
    return desired


def _set_constant(n: onnx.NodeProto, arr: np.ndarray) -> None:
    """A ``Constant`` node's value set to ``arr`` (as a ``value`` tensor of the node's element type)."""
    dt = n.attribute[0].t.data_type if n.attribute[0].name == "value" else None
    del n.attribute[:]
    n.attribute.append(helper.make_attribute("value", _tensor(arr, "", dt)))


# -- 2. static values on the pruned shapes ---------------------------------------------------------


def _evaluate_static(rw: OnnxRewrite, desired: dict[str, np.ndarray]) -> None:
    """``rw.env``: the static nodes re-run on the pruned shapes, and the arguments read straight from an initializer."""
    om, graph = rw.om, rw.graph

    def shape_of(v: str) -> tuple[int, ...] | None:
        if v in graph.values and graph.values[v].is_tensor:
            return rw.pruned_shape(v)
        return om.shapes.get(v)

    env, done = evaluate_static(rw.model, om.static_nodes, shape_of, all_initializers=False)
    if done != om.static_nodes:
        _check_lost_static_nodes(rw, set(done), desired)
    for a in om.args:
        if a.value not in env and a.value in rw.init_pos:
            env[a.value] = large.tensor_array(rw.g.initializer[rw.init_pos[a.value]])
    rw.env = env


def _check_lost_static_nodes(rw: OnnxRewrite, done: set[int], desired: dict[str, np.ndarray]) -> None:
    """A constant computed from weights whose channels are pruned (EdgeNeXt's Fourier position encoding: a conv
    over a constant grid, then a reshape with the old width) cannot be re-run; that is fine when every value it
    feeds outside the static part is a constant taken from ``desired`` (sliced from the original value) and none
    is an argument the rewrite reads."""
    lost = [i for i in rw.om.static_nodes if i not in done]
    needed = {a.value for a in rw.om.args}
    for i, n in enumerate(rw.nodes):
        if i not in rw.static_nodes:
            needed |= {x for x in list(n.input) + implicit_inputs(n) if x}
    needed |= rw.outputs
    stuck = [rw.nodes[i].name or rw.nodes[i].op_type for i in lost if any(o in needed and o not in desired for o in rw.nodes[i].output)]
    if stuck:
        raise InternalError(f"cannot evaluate {stuck[:3]} on the pruned shapes")


# -- 3. computed constants ----------------------------------------------------------------------------


def _materialize_computed_constants(rw: OnnxRewrite, desired: dict[str, np.ndarray]) -> None:
    """A constant computed from constants (not an initializer or a Constant) whose value changed: a new initializer."""
    for name, want in desired.items():
        if name in rw.init_pos or name in rw.const_node or _same(rw.env.get(name), want):
            continue
        if slice_dequantized(rw, name, want):  # a quantized weight: its codes and scales are sliced instead
            continue
        users = rw.consumers.get(name, [])
        p = rw.producer.get(name)
        if p is not None and rw.nodes[p].op_type == "Identity" and all(i not in rw.static_nodes and k >= 0 for i, k in users):
            src = rw.nodes[p].input[0]
            if src in rw.const_node and rw.consumers.get(src) == [(p, 0)] and src not in rw.outputs:
                _set_constant(rw.nodes[rw.const_node[src]], want)  # a Constant node read only here: sliced in place
            else:
                rw.nodes[p].input[0] = rw.new_initializer(f"{name}_data", want, rw.dtype_of(name))
        else:
            if any(k < 0 for _, k in users) or name in rw.outputs:
                raise InternalError(f"cannot give computed constant {name!r} new data")
            new = rw.new_initializer(f"{name}_pruned", want, rw.dtype_of(name))
            for i, k in users:
                if i not in rw.static_nodes:
                    rw.nodes[i].input[k] = new
        rw.result.materialized.append(name)


def _check_shape_derived(rw: OnnxRewrite, desired: dict[str, np.ndarray]) -> None:
    """Shape-derived values used as tensor data (SDPA's 1/sqrt(head size), a divisor read off a shape) keep their
    original values: they are constants, materialized above where pruning would change them."""
    graph = rw.graph
    for v in rw.om.shape_derived:
        if v in graph.values and graph.values[v].is_tensor and v not in desired and not _same(rw.env.get(v), rw.om.static.get(v)):
            raise InternalError(f"shape-derived value {v!r} changes with pruning")


# -- 4, 5. op handlers; every other static argument keeps its value ------------------------------------


def _run_handlers(rw: OnnxRewrite) -> None:
    """Each lowered node's handlers, then its static arguments no handler fixed set back to their original values.

    A node's handlers are those of its ops' specs, each called once per node with the node's first op of that
    handler: a node lowered to several ops (a Slice over two axes: two ``slice`` ops; a Gather of one index:
    ``slice`` and ``reshape``) has one set of arguments. A node with static arguments and no op would get the
    fallback alone (the lowering records arguments only for the nodes it emits, so there is none today).
    """
    ops: dict[int, list[Op]] = defaultdict(list)
    for op in rw.graph.ops.values():
        if isinstance(op.source, int):
            ops[op.source].append(op)
    for i in sorted(set(ops) | set(rw.slots)):
        fixed: set[int] = set()
        for op, handler in _node_handlers(ops.get(i, [])):
            fixed |= handler(rw, op, i)
        for k, slot in rw.args(i).items():
            if k not in fixed and not _same(rw.env.get(rw.nodes[i].input[k]), rw.original(slot.value)):
                rw.set_arg(i, k, rw.original(slot.value))


def _node_handlers(ops: list[Op]) -> Iterator[tuple[Op, RewriteHandler]]:
    """The distinct ONNX handlers of a node's ops, each with the first op that has it."""
    seen: set[RewriteHandler] = set()
    for op in ops:
        spec = lookup(op)
        handler = spec.rewrite.get("onnx") if spec is not None else None
        if handler is not None and handler not in seen:
            seen.add(handler)
            yield op, handler


# -- 6. added nodes -------------------------------------------------------------------------------------


def _insert_added_nodes(rw: OnnxRewrite) -> None:
    if not rw.added:
        return
    order: list[onnx.NodeProto] = []
    for i, n in enumerate(rw.nodes):
        order.append(n)
        if i in rw.added:
            order.append(rw.added[i])
    new_nodes = [onnx.NodeProto() for _ in order]
    for dst, src in zip(new_nodes, order, strict=True):
        dst.CopyFrom(src)
    del rw.nodes[:]
    rw.nodes.extend(new_nodes)


# -- 7. clean up ------------------------------------------------------------------------------------------


def _remove_dead(m: onnx.ModelProto, om: OnnxModel, res: RewriteOnnxResult) -> None:
    """Drop nodes and initializers this rewrite left unused (what was dead before stays)."""

    def uses(graph: onnx.GraphProto) -> dict[str, int]:
        c: dict[str, int] = defaultdict(int)
        for n in graph.node:
            for x in list(n.input) + implicit_inputs(n):
                if x:
                    c[x] += 1
        for o in graph.output:
            c[o.name] += 1
        return c

    before = uses(om.model.graph)
    g = m.graph
    while True:
        c = uses(g)
        dead = [
            k for k, n in enumerate(g.node)
            if all(not o or (c.get(o, 0) == 0 and before.get(o, 0) > 0) for o in n.output) and any(o for o in n.output)
        ]  # fmt: skip
        if not dead:
            break
        for k in reversed(dead):
            res.removed_nodes.append(g.node[k].name or g.node[k].op_type)
            del g.node[k]
    c = uses(g)
    graph_inputs = {vi.name for vi in g.input}
    drop = [
        k for k, t in enumerate(g.initializer)
        if c.get(t.name, 0) == 0 and before.get(t.name, 0) > 0 and t.name not in graph_inputs
    ]  # fmt: skip
    for k in reversed(drop):
        del g.initializer[k]


def _set_dims(vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    s = vi.type.tensor_type.shape
    s.ClearField("dim")
    for d in shape:
        s.dim.add().dim_value = int(d)


def _refresh_shapes(m: onnx.ModelProto, pruned_shapes: dict[str, tuple[int, ...]], om: OnnxModel) -> None:
    """Drop stale intermediate shapes and infer them again.

    Outputs of nodes that inference cannot see through (custom domains) get the
    shapes the plan gives them, so the pruned model is as well described as the
    original was.
    """
    del m.graph.value_info[:]
    try:
        inferred = large.infer_shapes(m, light=large.is_lazy(om.model))  # a mapped input: never serialized whole
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise InternalError(f"shape inference fails on the pruned ONNX model: {first}") from exc
    m.graph.value_info.extend(inferred.graph.value_info)
    known = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.HasField("shape")}
    known |= {vi.name for vi in list(m.graph.input) + list(m.graph.output)}
    for n in m.graph.node:
        if n.domain in ("", "ai.onnx"):
            continue
        for o in n.output:
            if o and o not in known and o in pruned_shapes and om.elem_types.get(o):
                m.graph.value_info.append(helper.make_tensor_value_info(o, om.elem_types[o], list(pruned_shapes[o])))


WRITTEN_AT = "written at opset"


def _write_back_opset(rw: OnnxRewrite, om: OnnxModel) -> None:
    """A model upgraded from an older opset: the pruned model at that opset where it can be (see
    :func:`frontends.onnx.opsets.write_back`); the note replaces the one of an earlier rewrite of ``om``."""
    if om.origin is None:
        return
    model, note = write_back(rw.model, om.origin, om.inputs)
    rw.model = rw.result.model = model
    rw.result.notes.append(note)
    om.notes[:] = [n for n in om.notes if not n.startswith(WRITTEN_AT)] + [note]
    log.info("%s: %s", om.name, note)


def _check(m: onnx.ModelProto, om: OnnxModel) -> None:
    """The pruned model must pass the full checker; where the input itself does not, the input is refused."""
    try:
        large.check_model(m, full_check=True, light=large.is_lazy(om.model))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        try:  # an input whose declared shapes contradict its ops fails the same check: refuse the input
            large.check_model(om.model, full_check=True, path=om.path)
        except Exception as orig_exc:
            why = str(orig_exc).strip().splitlines()[0] if str(orig_exc).strip() else type(orig_exc).__name__
            raise UnsupportedModelError(f"{om.name}: the model's declared shapes are inconsistent: {why}") from None
        raise InternalError(f"the pruned ONNX model does not pass the checker: {first}") from exc
