"""ONNX frontend: load an ONNX model and lower it to a ChannelGraph.

Loading (:func:`load_proto`) accepts a path or an ``onnx.ModelProto`` of opset
13 or later. External data is read only from files inside the model's own folder:
every tensor's ``location`` is checked (no absolute paths, no ``..``, no symlink
that leaves the folder, no read past the end of the file) before any byte is read.

Shapes come from ONNX shape inference (``data_prop=True``) on a copy whose graph
inputs are pinned to the example inputs' shapes; values still without a static
shape are read from one ONNX Runtime run of a copy that lists them as outputs.

Values are of two kinds. *Static* values are known at lowering: initializers,
``Constant`` outputs, ``Shape``/``Size`` outputs and everything computed only from
those (the Shape -> Gather -> Unsqueeze -> Concat subgraphs exporters emit). They
are evaluated once with the ONNX reference evaluator and their nodes are not
lowered: a static value used as a shape argument (Reshape's shape, Slice bounds,
Split sizes, ...) is recorded as an :class:`ArgSlot` the rewrite checks and fixes;
one used as tensor data becomes a constant of the channel graph (one derived from a
tensor's shape too, such as the exporter's ``1/sqrt(head size)`` of attention: the
rewrite keeps its original value, as the masked original has it). Every other node is lowered into the neutral kinds the
torch frontend uses (``conv``, ``linear``, ``matmul``, ``batch_norm``, ...); a node
the tables do not know, or whose arguments are only known at run time, becomes
``kind="unknown"`` with ``target`` = its op type, never a guess.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from frontends.errors import InvalidArgumentError, UnsupportedModelError
from frontends.graph import ChannelGraph, Op, Value

log = logging.getLogger(__name__)

__all__ = [
    "ArgSlot",
    "OnnxModel",
    "load_proto",
    "load_onnx",
    "lower_onnx",
    "evaluate_static",
    "ort_session",
    "run_ort",
    "onnx_opset",
    "MIN_OPSET",
]

MIN_OPSET = 13
_DEFAULT_DOMAINS = ("", "ai.onnx")
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass
class ArgSlot:
    """A static, non-tensor argument of a lowered node (a shape, bounds, sizes, axes).

    ``role`` says what the rewrite must make of it: ``shape`` (Reshape), ``starts``/
    ``ends``/``axes``/``steps`` (Slice), ``split`` (Split), ``sizes``/``scales``/``roi``
    (Resize), ``indices`` (Gather of a tensor), or ``arg`` (must keep its value).
    """

    node: int
    index: int
    value: str
    role: str


@dataclass
class OnnxModel:
    """A loaded ONNX model, its channel graph, and what the rewrite needs to go back."""

    model: onnx.ModelProto  # the original, with external data read into memory
    graph: ChannelGraph
    path: str | None
    inputs: dict[str, np.ndarray]  # example inputs by graph input name
    shapes: dict[str, tuple[int, ...]]  # static shapes of tensor values (ONNX names)
    elem_types: dict[str, int]
    static: dict[str, np.ndarray]  # values known at lowering
    static_nodes: list[int]  # nodes evaluated at lowering, in graph order
    shape_derived: set[str]  # static values computed from a tensor's shape
    args: list[ArgSlot]
    node_ops: dict[int, list[str]]  # node index -> neutral op names
    opset: int
    notes: list[str] = field(default_factory=list)
    method: str = "onnx"

    @property
    def name(self) -> str:
        if self.path:
            return os.path.basename(self.path)
        return self.model.graph.name or "onnx model"

    def input_tuple(self) -> tuple[np.ndarray, ...]:
        return tuple(self.inputs.values())


# ---------------------------------------------------------------------------
# loading


def onnx_opset(model: onnx.ModelProto) -> int | None:
    for o in model.opset_import:
        if o.domain in _DEFAULT_DOMAINS:
            return int(o.version)
    return None


def _iter_graphs(g: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    yield g
    for n in g.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    yield from _iter_graphs(sub)


def _all_tensors(model: onnx.ModelProto) -> Iterable[onnx.TensorProto]:
    """Every TensorProto of the model: initializers and attribute tensors, subgraphs and functions too."""
    graphs = list(_iter_graphs(model.graph))
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


def _check_external_data(model: onnx.ModelProto, folder: str | None, where: str) -> bool:
    """Validate the location of every external-data tensor; True when there is any."""
    found = False
    root = os.path.realpath(folder) if folder is not None else None
    for t in _all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        what = f"{where}: tensor {t.name!r} has external data"
        if root is None:
            raise UnsupportedModelError(
                f"{what} ({loc!r}) but the model was given in memory; load it with onnx.load(path) or pass the file's path"
            )
        if not loc:
            raise UnsupportedModelError(f"{what} without a location")
        if not isinstance(loc, str) or "\x00" in loc:
            raise UnsupportedModelError(f"{what} at a malformed location {loc!r}")
        parts = re.split(r"[\\/]+", loc)
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", loc):
            raise UnsupportedModelError(f"{what} at an absolute path {loc!r}: only files inside the model's folder are read")
        if ".." in parts:
            raise UnsupportedModelError(f"{what} at {loc!r}, outside the model's folder ('..' is not allowed)")
        full = os.path.realpath(os.path.join(root, *[p for p in parts if p]))
        if os.path.commonpath([full, root]) != root:
            raise UnsupportedModelError(f"{what} at {loc!r}, a link that leaves the model's folder")
        if not os.path.isfile(full):
            raise UnsupportedModelError(f"{what} in {loc!r}, which does not exist")
        size = os.path.getsize(full)
        try:
            offset = int(info.get("offset", "0") or 0)
            length = int(info["length"]) if info.get("length") else None
        except ValueError:
            raise UnsupportedModelError(f"{what} with a malformed offset/length") from None
        if offset < 0 or (length is not None and length < 0) or offset > size or (length is not None and offset + length > size):
            raise UnsupportedModelError(f"{what}: {loc!r} is {size} bytes, shorter than offset {offset} + length {length}")
    return found


def load_proto(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Read and validate a model; returns (model with external data in memory, path or None)."""
    path: str | None = None
    if isinstance(model, onnx.ModelProto):
        proto = model
        _check_external_data(proto, None, proto.graph.name or "model")
        where = proto.graph.name or "model"
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        where = path
        if not os.path.exists(path):
            raise UnsupportedModelError(f"{path}: no such file")
        if os.path.isdir(path):
            raise UnsupportedModelError(f"{path}: is a directory, not an ONNX file")
        if os.path.getsize(path) == 0:
            raise UnsupportedModelError(f"{path}: empty file, not an ONNX model")
        try:
            proto = onnx.load(path, load_external_data=False)
        except Exception as exc:  # DecodeError, truncated or not a protobuf at all
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedModelError(f"{path}: not a readable ONNX model ({first})") from None
        folder = os.path.dirname(os.path.abspath(path))
        if _check_external_data(proto, folder, path):
            from onnx.external_data_helper import load_external_data_for_model

            try:
                load_external_data_for_model(proto, folder)
            except Exception as exc:
                raise UnsupportedModelError(f"{path}: cannot read external data ({exc})") from None
    else:
        raise UnsupportedModelError(f"expected an onnx.ModelProto or a path to an .onnx file, got {type(model).__name__}")
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise UnsupportedModelError(f"{where}: not an ONNX model (no graph)")
    opset = onnx_opset(proto)
    if opset is None:
        raise UnsupportedModelError(f"{where}: the model imports no ai.onnx opset")
    if opset > onnx.defs.onnx_opset_version():
        raise UnsupportedModelError(
            f"{where}: opset {opset} is newer than this onnx library knows (at most {onnx.defs.onnx_opset_version()})"
        )
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"{where}: opset {opset} is not supported (prunec needs opset >= {MIN_OPSET}; "
            "convert it with onnx.version_converter.convert_version(model, 13))"
        )
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"{where}: invalid ONNX model: {first}") from None
    _check_consistent(proto, where)
    return proto, path


def _check_consistent(proto: onnx.ModelProto, where: str) -> None:
    """What the checker lets through but the analysis relies on: text names, tensor data that fits its
    dims, declared shapes that agree with strict shape inference (found by the atheris fuzzer)."""
    for g in _iter_graphs(proto.graph):
        for n in g.node:
            for text in (n.name, n.op_type, n.domain, *n.input, *n.output):
                if not isinstance(text, str) or "\x00" in text:
                    raise UnsupportedModelError(f"{where}: node {n.name!r} has a malformed name {text!r}")
        for vi in (*g.input, *g.output, *g.value_info):
            if not isinstance(vi.name, str) or "\x00" in vi.name:
                raise UnsupportedModelError(f"{where}: a value has a malformed name {vi.name!r}")
    for t in _all_tensors(proto):
        try:
            numpy_helper.to_array(t)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedModelError(f"{where}: tensor {t.name!r}: its data does not fit dims {list(t.dims)} ({first})") from None
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(f"{where}: the model's declared shapes or types are inconsistent: {first}") from None


# ---------------------------------------------------------------------------
# ONNX Runtime


def _providers(device: str = "cpu") -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    avail = ort.get_available_providers()
    out = []
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in avail and _cuda_present():
        out.append("CUDAExecutionProvider")
    return out + ["CPUExecutionProvider"]


def _cuda_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a dependency
        return False


def ort_session(model: onnx.ModelProto, optimize: bool = True, device: str = "cpu") -> Any:
    """An ONNX Runtime session for an in-memory model (CPU unless ``device`` asks for CUDA)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=_providers(device))


def run_ort(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], optimize: bool = True) -> dict[str, np.ndarray]:
    sess = ort_session(model, optimize=optimize)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, dict(inputs))
    return dict(zip(names, outs))


# ---------------------------------------------------------------------------
# example inputs and shapes


def _np_dtype(elem: int) -> np.dtype:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except (KeyError, TypeError, ValueError):
        raise UnsupportedModelError(f"unsupported tensor element type {elem}") from None


def _dims(t: onnx.TypeProto) -> tuple[int, ...] | None:
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        else:
            return None
    return tuple(dims)


def _real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


MAX_EXAMPLE_ELEMENTS = 1 << 28  # 1 GiB of float32: larger declared inputs are refused, not allocated


def check_input_size(name: str, shape: Sequence[int], where: str) -> None:
    """Refuse an input shape too large to build an example of (a hostile or mistaken declaration)."""
    n = 1
    for d in shape:
        n *= int(d)
    if n > MAX_EXAMPLE_ELEMENTS:
        raise UnsupportedModelError(
            f"{where}: input {name!r} declares shape {list(shape)} ({n} elements), too large for an example input "
            f"(at most {MAX_EXAMPLE_ELEMENTS}); pass smaller example_inputs or --input-shape"
        )


def make_example_inputs(model: onnx.ModelProto, given: Any, where: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs by name: the user's (a sequence in graph order, or a dict) or random ones of the static input shapes."""
    ins = _real_inputs(model)
    out: dict[str, np.ndarray] = {}
    if given is None:
        rng = np.random.default_rng(seed)
        for vi in ins:
            shape = _dims(vi.type)
            if shape is None:
                raise InvalidArgumentError(
                    f"{where}: input {vi.name!r} has a dynamic or unknown shape; pass example_inputs "
                    "(a tuple of arrays) or --input-shape"
                )
            dt = _np_dtype(vi.type.tensor_type.elem_type)
            check_input_size(vi.name, shape, where)
            if dt.kind == "f":
                out[vi.name] = rng.standard_normal(shape).astype(dt)
            else:
                out[vi.name] = np.zeros(shape, dtype=dt)
        return out
    if isinstance(given, Mapping):
        missing = [vi.name for vi in ins if vi.name not in given]
        extra = [k for k in given if k not in {vi.name for vi in ins}]
        if missing or extra:
            raise InvalidArgumentError(f"{where}: example_inputs names {sorted(given)} do not match the inputs {[vi.name for vi in ins]}")
        values = [given[vi.name] for vi in ins]
    else:
        values = [given] if hasattr(given, "shape") else list(given)
        if len(values) != len(ins):
            raise InvalidArgumentError(f"{where}: the model has {len(ins)} inputs {[vi.name for vi in ins]}, got {len(values)} example inputs")
    for vi, x in zip(ins, values):
        a = _to_numpy(x)
        dt = _np_dtype(vi.type.tensor_type.elem_type)
        if a.dtype != dt:
            if a.dtype.kind == dt.kind or (a.dtype.kind in "iu" and dt.kind in "iu"):
                a = a.astype(dt)
            else:
                raise InvalidArgumentError(f"{where}: input {vi.name!r} is {dt}, got an example of dtype {a.dtype}")
        decl = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else None
        if decl is not None:
            if len(decl) != a.ndim or any(d.HasField("dim_value") and d.dim_value != n for d, n in zip(decl, a.shape)):
                want = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in decl]
                raise InvalidArgumentError(f"{where}: input {vi.name!r} has shape {want}, got an example of shape {list(a.shape)}")
        out[vi.name] = np.asarray(a, order="C")
    return out


def _pinned(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy whose graph inputs carry the example inputs' static shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in inputs:
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for n in inputs[vi.name].shape:
                shape.dim.add().dim_value = int(n)
    return m


def _collect_types(g: onnx.GraphProto, shapes: dict, types: dict) -> None:
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            if vi.type.tensor_type.elem_type:
                types.setdefault(vi.name, vi.type.tensor_type.elem_type)
            s = _dims(vi.type)
            if s is not None:
                shapes.setdefault(vi.name, s)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        types[t.name] = t.data_type


def infer_shapes(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> tuple[dict[str, tuple[int, ...]], dict[str, int]]:
    """Static shapes and element types from ONNX shape inference (with data propagation)."""
    pinned = _pinned(model, inputs)
    try:
        inferred = onnx.shape_inference.infer_shapes(pinned, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference is best effort: ORT fills the gaps
        log.info("shape inference failed: %s", exc)
        inferred = pinned
    shapes: dict[str, tuple[int, ...]] = {}
    types: dict[str, int] = {}
    _collect_types(inferred.graph, shapes, types)
    for name, a in inputs.items():
        shapes[name] = tuple(a.shape)
    return shapes, types


def ort_values(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], names: Sequence[str], types: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Run a copy of the model that lists ``names`` as extra outputs; their values by name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for n in names:
        if n not in present:
            m.graph.output.append(helper.make_tensor_value_info(n, types.get(n, 0), None) if types.get(n) else helper.make_empty_tensor_value_info(n))
    return run_ort(m, inputs)


# ---------------------------------------------------------------------------
# static values


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    v = helper.get_attribute_value(a)
    if a.name == "value_float":
        return np.array(v, dtype=np.float32)
    if a.name == "value_floats":
        return np.array(v, dtype=np.float32)
    if a.name == "value_int":
        return np.array(v, dtype=np.int64)
    if a.name == "value_ints":
        return np.array(v, dtype=np.int64)
    if a.name == "value_string":
        return np.array(v)
    if a.name == "value_strings":
        return np.array(v)
    raise ValueError(f"Constant with a {a.name} attribute")


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def static_candidates(model: onnx.ModelProto) -> tuple[list[int], set[str]]:
    """Nodes computable at lowering (in graph order) and the values they give that depend on a shape."""
    g = model.graph
    real_inputs = {vi.name for vi in _real_inputs(model)}
    known = {t.name for t in g.initializer if t.name not in real_inputs}
    derived: set[str] = set()
    nodes: list[int] = []
    for i, n in enumerate(g.node):
        if n.domain not in _DEFAULT_DOMAINS or n.op_type in _NONDETERMINISTIC or _has_subgraph(n):
            continue
        ins = [x for x in n.input if x]
        if n.op_type == "Constant":
            ok, from_shape = True, False
        elif n.op_type in ("Shape", "Size"):
            ok, from_shape = bool(ins), True
        else:
            ok = bool(ins) and all(x in known for x in ins)
            from_shape = any(x in derived for x in ins)
        if ok:
            nodes.append(i)
            for o in n.output:
                if o:
                    known.add(o)
                    if from_shape:
                        derived.add(o)
    return nodes, derived


def evaluate_static(
    model: onnx.ModelProto,
    nodes: Sequence[int],
    shape_of: Callable[[str], tuple[int, ...] | None],
    all_initializers: bool = True,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Evaluate static nodes with the reference evaluator; ``Shape``/``Size`` read ``shape_of``.

    Returns (values, nodes evaluated): the outputs of the evaluated nodes and the
    initializers (all of them, or only those the nodes read). A node that cannot
    be evaluated, and every static node depending on it, is left out.
    """
    from onnx.reference import ReferenceEvaluator

    g = model.graph
    real_inputs = {vi.name for vi in _real_inputs(model)}
    inits = [t for t in g.initializer if t.name not in real_inputs]
    if not all_initializers:
        read = {x for i in nodes for x in g.node[i].input}
        inits = [t for t in inits if t.name in read]
    env: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in inits}
    opsets = {(o.domain or ""): int(o.version) for o in model.opset_import}
    opsets.setdefault("", onnx_opset(model) or MIN_OPSET)
    done: list[int] = []
    for i in nodes:
        n = g.node[i]
        ins = [x for x in n.input if x]
        try:
            if n.op_type == "Constant":
                outs = [_constant_value(n)]
            elif n.op_type in ("Shape", "Size"):
                shape = shape_of(ins[0]) if ins[0] not in env else tuple(env[ins[0]].shape)
                if shape is None:
                    continue
                if n.op_type == "Size":
                    outs = [np.array(math.prod(shape), dtype=np.int64)]
                else:
                    at = _attrs(n)
                    start, end = int(at.get("start", 0)), at.get("end")
                    outs = [np.array(shape[start : (None if end is None else int(end))], dtype=np.int64)]
            elif any(x not in env for x in ins):
                continue
            elif n.op_type == "Identity":
                outs = [env[ins[0]]]
            else:
                feeds = {x: env[x] for x in ins}
                outs = ReferenceEvaluator(n, opsets=opsets).run(None, feeds)
        except Exception as exc:  # an op the reference evaluator cannot run: the node stays dynamic
            log.info("cannot evaluate %s (%s) at lowering: %s", n.name or n.op_type, n.op_type, exc)
            continue
        for o, v in zip(n.output, outs):
            if o:
                env[o] = np.asarray(v)
        done.append(i)
    return env, done


# ---------------------------------------------------------------------------
# lowering tables

UNARY_OPS = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike", "Ceil", "Celu", "Clip",
    "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "IsInf", "IsNaN", "LeakyRelu",
    "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
}  # fmt: skip
BINARY_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Greater", "GreaterOrEqual",
    "Less", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu",
}  # fmt: skip
REDUCE_OPS = {
    "ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod",
    "ReduceL1": "l1", "ReduceL2": "l2", "ReduceLogSum": "logsum", "ReduceLogSumExp": "logsumexp",
    "ReduceSumSquare": "sumsquare",
}  # fmt: skip
POOL_OPS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
SOFTMAX_OPS = {"Softmax", "LogSoftmax", "Hardmax", "LpNormalization"}
# roles of the static arguments the rewrite may change (all others must keep their value)
ARG_ROLES: dict[str, dict[int, str]] = {
    "Reshape": {1: "shape"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Split": {1: "split"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"},
    "Gather": {1: "indices"},
    "Expand": {1: "shape"},
}

Handler = Callable[["_Lowering", int, onnx.NodeProto], bool]
_HANDLERS: dict[str, tuple[Handler, Any]] = {}


def _op(*op_types: str, data: Any = (0,)) -> Callable[[Handler], Handler]:
    """Register a lowering for op types; ``data`` are the input indices that are tensors ("all": every input)."""

    def deco(fn: Handler) -> Handler:
        for t in op_types:
            _HANDLERS[t] = (fn, data)
        return fn

    return deco


def slice_range(start: int, end: int, step: int, n: int) -> tuple[int, int, int]:
    """ONNX Slice bounds on a dim of size ``n`` -> (start, stop, step) of Python's ``range``."""
    if step == 0:
        raise ValueError("slice step 0")
    if start < 0:
        start += n
    if end < 0:
        end += n
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return start, end, step


def reshape_result(in_shape: Sequence[int], spec: Sequence[int], allowzero: bool) -> tuple[int, ...] | None:
    """The output shape ONNX Reshape gives for ``spec`` (None: invalid)."""
    out: list[int] = []
    infer = -1
    for i, s in enumerate(int(v) for v in spec):
        if s == 0 and not allowzero:
            if i >= len(in_shape):
                return None
            out.append(int(in_shape[i]))
        elif s == -1:
            if infer >= 0:
                return None
            infer = i
            out.append(1)
        elif s < 0:
            return None
        else:
            out.append(s)
    total = math.prod(in_shape)
    if infer >= 0:
        rest = math.prod(out)
        if rest == 0 or total % rest:
            return None
        out[infer] = total // rest
    if math.prod(out) != total:
        return None
    return tuple(out)


class _Lowering:
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
        self.op_names: dict[int, str] = {}
        self.producer: dict[str, int] = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.consumers: dict[str, int] = {}
        for n in self.nodes:
            for x in list(n.input) + _implicit_inputs(n):
                if x:
                    self.consumers[x] = self.consumers.get(x, 0) + 1
        for o in model.graph.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        self.stats_only: dict[str, bool] = {}
        used: set[str] = set()
        for i, n in enumerate(self.nodes):
            name = n.name or f"{n.op_type}_{i}"
            if name in used:
                name = f"{name}_{i}"
            used.add(name)
            self.op_names[i] = name

    # -- values ---------------------------------------------------------------
    def dtype(self, name: str) -> str | None:
        t = self.types.get(name)
        if not t:
            return None
        try:
            return str(_np_dtype(t))
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
            if name in self.derived:  # computed from sizes, used as data: the rewrite keeps its original value
                self.graph.add_value(Value(name, tuple(arr.shape), str(arr.dtype), data=arr, trainable=False))
            else:
                data = arr
                self.graph.add_value(
                    Value(name, tuple(arr.shape), str(arr.dtype), data=data, trainable=arr.dtype.kind == "f")
                )
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
        if not name:
            return None
        if name in self.graph.values:
            return self.graph.values[name].shape
        if name in self.static:
            return tuple(self.static[name].shape)
        return self.shapes.get(name)

    def used(self, name: str) -> bool:
        return bool(name) and self.consumers.get(name, 0) > 0

    # -- driver ------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        g = self.model.graph
        for vi in _real_inputs(self.model):
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
        if n.domain not in _DEFAULT_DOMAINS or _has_subgraph(n):
            return False
        entry = _HANDLERS.get(n.op_type)
        if entry is None:
            return False
        fn, data = entry
        data_idx = set(range(len(n.input))) if data == "all" else set(data)
        for k, x in enumerate(n.input):
            if not x:
                continue
            if k in data_idx:
                if self.shape(x) is None:  # data of unknown shape: nothing can be said
                    return False
            elif x not in self.static:
                log.debug("%s: argument %d (%s) is computed at run time", self.op_names[i], k, x)
                return False
        if any(o and self.shapes.get(o) is None for k, o in enumerate(n.output) if k == 0 or self.used(o)):
            return False
        if not fn(self, i, n):
            assert i not in self.node_ops, f"the lowering of {n.op_type} emitted ops and then gave up"
            return False
        roles = ARG_ROLES.get(n.op_type, {})
        for k, x in enumerate(n.input):
            if x and k not in data_idx:
                self.args.append(ArgSlot(i, k, x, roles.get(k, "arg")))
        return True

    def unknown(self, i: int, n: onnx.NodeProto) -> None:
        ins = []
        for x in list(n.input) + _implicit_inputs(n):
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


def _implicit_inputs(n: onnx.NodeProto) -> list[str]:
    """Outer-scope values a node's subgraphs read."""
    out: list[str] = []
    for a in n.attribute:
        subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
        for sg in subs:
            defined = {vi.name for vi in sg.input} | {t.name for t in sg.initializer}
            for sn in sg.node:
                for x in list(sn.input) + _implicit_inputs(sn):
                    if x and x not in defined and x not in out:
                        out.append(x)
                defined.update(o for o in sn.output if o)
    return out


# -- handlers: return True when they emitted the node ---------------------------------


@_op("Conv", "ConvTranspose", data="all")
def _h_conv(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x, w = lw.tensor(n.input[0]), lw.tensor(n.input[1])
    b = lw.tensor(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if not (x and w) or len(lw.shape(x)) < 3 or not lw.only_first_output_used(n):
        return False
    groups = int(_attrs(n).get("group", 1))
    xs, ws = lw.shape(x), lw.shape(w)
    if ws is not None and len(ws) >= 2 and groups >= 1:  # shape inference does not check this (found by atheris)
        want = ws[0] if n.op_type == "ConvTranspose" else ws[1] * groups
        bs = lw.shape(b) if b else None
        outs = ws[1] * groups if n.op_type == "ConvTranspose" else ws[0]
        if xs[1] != want or outs % groups or (bs is not None and tuple(bs) != (outs,)):
            raise UnsupportedModelError(
                f"node {n.name!r} ({n.op_type}): input of {xs[1]} channels, weight {list(ws)}, group {groups}"
                f"{'' if bs is None else f', bias {list(bs)}'}: inconsistent"
            )
    lw.emit(i, "conv", [x, w, b], [n.output[0]], {"groups": groups, "transposed": n.op_type == "ConvTranspose"})
    return True


@_op("Gemm", data="all")
def _h_gemm(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    at = _attrs(n)
    a, b = lw.tensor(n.input[0]), lw.tensor(n.input[1])
    c = lw.tensor(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if not (a and b):
        return False
    sa, sb = lw.shape(a), lw.shape(b)
    y = n.output[0]
    sy = lw.shapes[y]
    dt = lw.dtype(y)
    k = 0
    if int(at.get("transA", 0)):
        t = lw.tmp(i, k, (sa[1], sa[0]), dt)
        lw.emit(i, "permute", [a], [t], {"perm": [1, 0]}, k=k)
        a, k = t, k + 1
    trans_b = bool(int(at.get("transB", 0)))
    n_out = sb[0] if trans_b else sb[1]
    bias_in_linear = trans_b and c is not None and lw.graph.values[c].is_const and lw.shape(c) == (n_out,)
    main_out = y if c is None or bias_in_linear else lw.tmp(i, k, sy, dt)
    if trans_b:
        lw.emit(i, "linear", [a, b, c if bias_in_linear else None], [main_out], k=k if main_out != y else None)
    else:
        lw.emit(i, "matmul", [a, b], [main_out], k=k if main_out != y else None)
    if main_out != y:
        lw.emit(i, "binary", [main_out, c], [y], {"fn": "Add"})
    return True


@_op("MatMul", data="all")
def _h_matmul(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    a, b = lw.tensor(n.input[0]), lw.tensor(n.input[1])
    if not (a and b):
        return False
    lw.emit(i, "matmul", [a, b], [n.output[0]])
    return True


@_op("BatchNormalization", data="all")
def _h_bn(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    if int(_attrs(n).get("training_mode", 0)) or not lw.only_first_output_used(n):
        return False
    x, scale, bias, mean, var = (lw.tensor(v) for v in list(n.input) + [""] * (5 - len(n.input)))
    if not x or len(lw.shape(x)) < 2:
        return False
    c = lw.shape(x)[1]
    if any(p is not None and lw.shape(p) != (c,) for p in (scale, bias, mean, var)):
        return False
    for s in (mean, var):
        if s is not None:
            lw.stats_only.setdefault(s, True)
    for p in (scale, bias):
        if p is not None:
            lw.stats_only[p] = False
    lw.emit(i, "batch_norm", [x, mean, var, scale, bias], [n.output[0]])
    return True


@_op("InstanceNormalization", data="all")
def _h_instance_norm(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x, scale, bias = (lw.tensor(v) for v in n.input[:3])
    if not x or len(lw.shape(x)) < 3:
        return False
    c = lw.shape(x)[1]
    if any(p is not None and lw.shape(p) != (c,) for p in (scale, bias)):
        return False
    if c == 1:
        # one instance: a LayerNorm over every dim after the first two. torch exports GroupNorm(1, C) (PoolFormer)
        # as Reshape to [N, 1, C*H*W], this, Reshape back, then the per-channel affine: the flattened channels
        # prune like LayerNorm's, the verification normalizing over the kept ones. The [1]-sized scale and bias
        # carry no channel.
        lw.emit(i, "layer_norm", [x, None, None], [n.output[0]], {"ndim": len(lw.shape(x)) - 2})
        return True
    lw.emit(i, "instance_norm", [x, scale, bias, None, None], [n.output[0]])
    return True


@_op("LayerNormalization", data="all")
def _h_layer_norm(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    if not lw.only_first_output_used(n):
        return False
    x = lw.tensor(n.input[0])
    scale = lw.tensor(n.input[1]) if len(n.input) > 1 else None
    bias = lw.tensor(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if not x:
        return False
    sx = lw.shape(x)
    axis = int(_attrs(n).get("axis", -1))
    axis = axis + len(sx) if axis < 0 else axis
    norm = tuple(sx[axis:])
    if any(p is not None and lw.shape(p) != norm for p in (scale, bias)):
        return False  # broadcast parameters: not the per-channel affine the rule knows
    lw.emit(i, "layer_norm", [x, scale, bias], [n.output[0]], {"ndim": len(norm)})
    return True


@_op("GroupNormalization", data="all")
def _h_group_norm(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x, scale, bias = (lw.tensor(v) for v in n.input[:3])
    if not x or len(lw.shape(x)) < 3:
        return False
    c = lw.shape(x)[1]
    groups = int(_attrs(n)["num_groups"])
    if groups <= 0 or c % groups or any(p is not None and lw.shape(p) != (c,) for p in (scale, bias)):
        return False  # opset 18's per-group scale: not per channel
    lw.emit(i, "group_norm", [x, scale, bias], [n.output[0]], {"num_groups": groups})
    return True


@_op(*sorted(UNARY_OPS), data=(0,))
def _h_unary(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or lw.shape(n.output[0]) != lw.shape(x):
        return False
    lw.emit(i, "unary", [x], [n.output[0]], {"fn": n.op_type})
    return True


_h_castlike_data = (0, 1)
_HANDLERS["CastLike"] = (_h_unary, _h_castlike_data)


@_op("Identity", "Dropout", data=(0,))
def _h_identity(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or not lw.only_first_output_used(n):
        return False
    if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
        mode = lw.static.get(n.input[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            return False  # training-mode dropout is random
    lw.emit(i, "identity", [x], [n.output[0]], {"fn": n.op_type})
    return True


@_op(*sorted(BINARY_OPS), data="all")
def _h_binary(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    ins = [lw.tensor(x) for x in n.input]
    if not ins or any(v is None for v in ins):
        return False
    lw.emit(i, "binary", ins, [n.output[0]], {"fn": n.op_type})
    return True


@_op("Concat", data="all")
def _h_concat(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    ins = [lw.tensor(x) for x in n.input if x]
    if not ins or any(v is None for v in ins):
        return False
    lw.emit(i, "concat", ins, [n.output[0]], {"axis": int(_attrs(n)["axis"])})
    return True


@_op("Split", data=(0,))
def _h_split(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or any(not o for o in n.output):
        return False
    sx = lw.shape(x)
    axis = int(_attrs(n).get("axis", 0))
    ax = axis + len(sx) if axis < 0 else axis
    outs = [lw.shapes.get(o) for o in n.output]
    if any(s is None for s in outs):
        return False
    sizes = [s[ax] for s in outs]
    equal = not (len(n.input) > 1 and n.input[1])
    lw.emit(i, "split", [x], list(n.output), {"axis": axis, "sizes": sizes, "equal": equal})
    return True


@_op("Slice", data=(0,))
def _h_slice(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    sx = lw.shape(x)
    starts, ends = lw.static_ints(n.input[1]), lw.static_ints(n.input[2])
    axes = lw.static_ints(n.input[3]) if len(n.input) > 3 and n.input[3] else list(range(len(starts or [])))
    steps = lw.static_ints(n.input[4]) if len(n.input) > 4 and n.input[4] else [1] * len(starts or [])
    if starts is None or ends is None or axes is None or steps is None or not (len(starts) == len(ends) == len(axes) == len(steps)):
        return False
    axes = [a + len(sx) if a < 0 else a for a in axes]
    cuts = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        start, end, step = slice_range(s, e, st, sx[a])
        if len(range(start, end, step)) == sx[a] and step == 1:
            continue  # the whole axis
        cuts.append((a, start, None if end < 0 else end, step))
    y = n.output[0]
    if not cuts:
        lw.emit(i, "identity", [x], [y], {"fn": "Slice"})
        return True
    cur, shape = x, list(sx)
    for k, (a, start, stop, step) in enumerate(cuts):
        shape[a] = len(range(*slice(start, stop, step).indices(sx[a])))
        last = k == len(cuts) - 1
        nxt = y if last else lw.tmp(i, k, tuple(shape), lw.dtype(y))
        lw.emit(i, "slice", [cur], [nxt], {"axis": a, "start": start, "stop": stop, "step": step}, k=None if last else k)
        cur = nxt
    if tuple(shape) != lw.shapes[y]:
        raise AssertionError(f"{n.name}: slice gives {shape}, inference said {lw.shapes[y]}")
    return True


@_op("Gather", data=(0,))
def _h_gather(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    """Embedding lookup (constant table, tensor indices) or a constant index on one axis."""
    at = _attrs(n)
    axis = int(at.get("axis", 0))
    data, idx = n.input[0], n.input[1]
    y = n.output[0]
    if idx not in lw.static:
        w = lw.tensor(data)
        ix = lw.tensor(idx)
        if w and ix and axis == 0 and lw.graph.values[w].is_const and len(lw.shape(w)) == 2:
            # indices are data here, not an argument: re-declare
            lw.emit(i, "embedding", [ix, w], [y])
            return True
        if w and ix:  # rows picked by a computed index: the axis and the index are frozen, other dims keep channels
            lw.emit(i, "take", [w, ix], [y], {"axis": axis})
            return True
        return False
    x = lw.tensor(data)
    if not x:
        return False
    sx = lw.shape(x)
    ax = axis + len(sx) if axis < 0 else axis
    ind = np.asarray(lw.static[idx]).astype(np.int64)
    vals = [int(v) + sx[ax] if v < 0 else int(v) for v in ind.reshape(-1)]
    if ind.ndim == 0:
        mid = list(sx)
        mid[ax] = 1
        t = lw.tmp(i, 0, tuple(mid), lw.dtype(y))
        lw.emit(i, "slice", [x], [t], {"axis": ax, "start": vals[0], "stop": vals[0] + 1, "step": 1}, k=0)
        lw.emit(i, "reshape", [t], [y])
    elif ind.ndim == 1 and vals and vals == list(range(vals[0], vals[0] + len(vals))):
        lw.emit(i, "slice", [x], [y], {"axis": ax, "start": vals[0], "stop": vals[0] + len(vals), "step": 1})
    else:  # any other constant index (an im2col gather): the axis is frozen, the index keeps its value
        lw.emit(i, "take", [x], [y], {"axis": ax, "index_shape": tuple(ind.shape)})
    lw.args.append(ArgSlot(i, 1, idx, "indices"))
    return True


# Gather's indices are data for an embedding lookup: the generic check must not demand they be static.
_HANDLERS["Gather"] = (_h_gather, (0, 1))


@_op("Expand", data=(0,))
def _h_expand(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    """Broadcast to a static shape: dims the input already has keep their channels; the rewrite fits the shape."""
    x = lw.tensor(n.input[0])
    if not x or n.input[1] not in lw.static:
        return False
    lw.emit(i, "expand", [x], [n.output[0]])
    lw.args.append(ArgSlot(i, 1, n.input[1], "shape"))
    return True


@_op("Reshape", "Flatten", "Squeeze", "Unsqueeze", data=(0,))
def _h_reshape(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    lw.emit(i, "reshape", [x], [n.output[0]])
    return True


@_op("Transpose", data=(0,))
def _h_transpose(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    rank = len(lw.shape(x))
    perm = [int(p) for p in _attrs(n).get("perm", list(range(rank))[::-1])]
    lw.emit(i, "permute", [x], [n.output[0]], {"perm": perm})
    return True


@_op(*sorted(REDUCE_OPS), data=(0,))
def _h_reduce(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    at = _attrs(n)
    rank = len(lw.shape(x))
    if len(n.input) > 1 and n.input[1]:
        axes = lw.static_ints(n.input[1])
    else:
        axes = [int(a) for a in at["axes"]] if "axes" in at else []
    if axes is None:
        return False
    if not axes:
        if int(at.get("noop_with_empty_axes", 0)):
            lw.emit(i, "identity", [x], [n.output[0]], {"fn": n.op_type})
            return True
        axes = list(range(rank))
    keep = bool(int(at.get("keepdims", 1)))
    attrs = {"dims": axes, "keepdim": keep, "fn": REDUCE_OPS[n.op_type]}
    if n.op_type == "ReduceMean":  # the rewrite keeps the original divisor (a Mul after it)
        attrs["rescalable"] = True
    lw.emit(i, "reduce", [x], [n.output[0]], attrs)
    return True


@_op("ArgMax", "ArgMin", data=(0,))
def _h_arg_reduce(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    at = _attrs(n)
    lw.emit(i, "reduce", [x], [n.output[0]], {"dims": [int(at.get("axis", 0))], "keepdim": bool(int(at.get("keepdims", 1))), "fn": n.op_type.lower()})
    return True


@_op(*sorted(POOL_OPS), data=(0,))
def _h_pool(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or len(lw.shape(x)) < 3 or not lw.only_first_output_used(n):
        return False
    lw.emit(i, "spatial", [x], [n.output[0]], {"nspatial": len(lw.shape(x)) - 2})
    return True


@_op("Resize", data=(0,))
def _h_resize(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    sx, sy = lw.shape(x), lw.shapes[n.output[0]]
    at = _attrs(n)
    ctm = at.get("coordinate_transformation_mode", b"half_pixel")
    if len(sx) < 3 or tuple(sx[:2]) != tuple(sy[:2]) or ctm in (b"tf_crop_and_resize", "tf_crop_and_resize"):
        return False
    lw.emit(i, "spatial", [x], [n.output[0]], {"nspatial": len(sx) - 2})
    return True


@_op("Pad", data=(0,))
def _h_pad(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    rank = len(lw.shape(x))
    pads = lw.static_ints(n.input[1]) if len(n.input) > 1 and n.input[1] else None
    if pads is None:
        return False
    axes = lw.static_ints(n.input[3]) if len(n.input) > 3 and n.input[3] else list(range(rank))
    if axes is None or len(pads) != 2 * len(axes):
        return False
    begin, end = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        a = a + rank if a < 0 else a
        begin[a], end[a] = pads[k], pads[k + len(axes)]
    torch_order: list[int] = []
    for d in range(rank - 1, -1, -1):
        torch_order += [begin[d], end[d]]
    lw.emit(i, "pad", [x], [n.output[0]], {"pads": torch_order})
    return True


@_op(*sorted(SOFTMAX_OPS), data=(0,))
def _h_softmax(lw: _Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    lw.emit(i, "softmax", [x], [n.output[0]], {"axis": int(_attrs(n).get("axis", -1))})
    return True


# ---------------------------------------------------------------------------


def lower_onnx(
    proto: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    path: str | None = None,
) -> OnnxModel:
    """Shapes, static values and the channel graph of a loaded, validated model."""
    where = path or proto.graph.name or "model"
    notes: list[str] = []
    shapes, types = infer_shapes(proto, inputs)
    candidates, _ = static_candidates(proto)
    cand_set = set(candidates)
    missing = []
    for i, n in enumerate(proto.graph.node):
        for o in n.output:
            if o and o not in shapes and i not in cand_set:
                missing.append(o)
        if n.op_type in ("Shape", "Size") and i in cand_set and n.input[0] not in shapes:
            missing.append(n.input[0])
    if missing:
        try:
            vals = ort_values(proto, inputs, missing, types)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            notes.append(f"ONNX Runtime could not run the model to find {len(missing)} shapes: {first}")
            log.warning("%s: ONNX Runtime could not run the model (%s); %d values have no static shape", where, first, len(missing))
        else:
            for k, v in vals.items():
                if isinstance(v, np.ndarray):
                    shapes.setdefault(k, tuple(v.shape))
                    if k not in types:
                        try:
                            types[k] = helper.np_dtype_to_tensor_dtype(v.dtype)
                        except Exception:
                            pass
            notes.append(f"{len(missing)} shapes read from one ONNX Runtime run")
    static, done = evaluate_static(proto, candidates, shapes.get)
    # a node the evaluator could not run is dynamic, and so is every static node after it
    _, derived = static_candidates(proto)
    derived &= set(static)
    for k, v in static.items():
        shapes.setdefault(k, tuple(v.shape))
        if k not in types:
            try:
                types[k] = helper.np_dtype_to_tensor_dtype(v.dtype)
            except Exception:
                pass
    lw = _Lowering(proto, shapes, types, static, done, derived)
    graph = lw.run()
    unknown = [op for op in graph.ops.values() if op.kind == "unknown"]
    if unknown:
        log.info("%s: %d ops lowered as unknown: %s", where, len(unknown), sorted({op.target for op in unknown}))
    method = "onnx shape inference" + (" + onnxruntime" if missing else "")
    return OnnxModel(
        method=method,
        model=proto,
        graph=graph,
        path=path,
        inputs=dict(inputs),
        shapes=shapes,
        elem_types=types,
        static=static,
        static_nodes=done,
        shape_derived=derived,
        args=lw.args,
        node_ops=lw.node_ops,
        opset=onnx_opset(proto) or MIN_OPSET,
        notes=notes,
    )


def load_onnx(model: str | os.PathLike | onnx.ModelProto, example_inputs: Any = None, seed: int = 0) -> OnnxModel:
    """Load, validate and lower an ONNX model (a path or a ModelProto)."""
    proto, path = load_proto(model)
    where = path or proto.graph.name or "model"
    inputs = make_example_inputs(proto, example_inputs, where, seed)
    return lower_onnx(proto, inputs, path)

