"""Static shapes and element types of an ONNX model's values, and the shape arithmetic of its ops.

Shapes come from ONNX shape inference (``data_prop=True``) on a copy whose graph inputs are
pinned to the example inputs' shapes; values still without a static shape are read from one
ONNX Runtime run of a copy that lists them as outputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from frontends.onnx.large import is_large, light_copy
from frontends.onnx.proto import first_line, tensor_dims
from frontends.onnx.runtime import ort_values

log = logging.getLogger(__name__)

__all__ = [
    "add_value_shapes",
    "infer_shapes",
    "reshape_result",
    "shapes_from_ort",
    "slice_range",
    "unshaped_values",
]

Shapes = dict[str, tuple[int, ...]]


def infer_shapes(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> tuple[Shapes, dict[str, int]]:
    """Static shapes and element types from ONNX shape inference (with data propagation)."""
    pinned = _pinned(model, inputs)
    try:
        inferred = onnx.shape_inference.infer_shapes(pinned, check_type=False, strict_mode=False, data_prop=True)  # pinned is light
    except Exception as exc:  # inference is best effort: ORT fills the gaps
        log.info("shape inference failed: %s", exc)
        inferred = pinned
    shapes: Shapes = {}
    types: dict[str, int] = {}
    _collect_types(inferred.graph, shapes, types)
    for name, a in inputs.items():
        shapes[name] = tuple(a.shape)
    return shapes, types


def _pinned(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy whose graph inputs carry the example inputs' static shapes."""
    m = onnx.ModelProto()
    m.CopyFrom(light_copy(model)[0] if is_large(model) else model)  # over 2 GB: shapes only, large data left out
    for vi in m.graph.input:
        if vi.name in inputs:
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for n in inputs[vi.name].shape:
                shape.dim.add().dim_value = int(n)
    return m


def _collect_types(g: onnx.GraphProto, shapes: Shapes, types: dict[str, int]) -> None:
    """Shapes and element types a graph declares for its values and initializers."""
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            if vi.type.tensor_type.elem_type:
                types.setdefault(vi.name, vi.type.tensor_type.elem_type)
            s = tensor_dims(vi.type)
            if s is not None:
                shapes.setdefault(vi.name, s)
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        types[t.name] = t.data_type


def unshaped_values(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], static_nodes: Collection[int]) -> list[str]:
    """Values still without a static shape that lowering needs: outputs of the nodes that are not
    static, and the inputs of static ``Shape``/``Size`` nodes."""
    missing = []
    for i, n in enumerate(model.graph.node):
        for o in n.output:
            if o and o not in shapes and i not in static_nodes:
                missing.append(o)
        if n.op_type in ("Shape", "Size") and i in static_nodes and n.input[0] not in shapes:
            missing.append(n.input[0])
    return missing


def shapes_from_ort(
    model: onnx.ModelProto,
    inputs: Mapping[str, np.ndarray],
    missing: Sequence[str],
    shapes: Shapes,
    types: dict[str, int],
    where: str,
) -> str:
    """Fill ``shapes`` and ``types`` of ``missing`` values from one ONNX Runtime run; a note of what happened."""
    try:
        vals = ort_values(model, inputs, missing, types)
    except Exception as exc:
        first = first_line(exc)
        log.warning("%s: ONNX Runtime could not run the model (%s); %d values have no static shape", where, first, len(missing))
        return f"ONNX Runtime could not run the model to find {len(missing)} shapes: {first}"
    add_value_shapes(vals, shapes, types)
    return f"{len(missing)} shapes read from one ONNX Runtime run"


def add_value_shapes(values: Mapping[str, object], shapes: Shapes, types: dict[str, int]) -> None:
    """The shape and element type of each array in ``values``, where not known already."""
    for k, v in values.items():
        if isinstance(v, np.ndarray):
            shapes.setdefault(k, tuple(v.shape))
            if k not in types:
                try:
                    types[k] = helper.np_dtype_to_tensor_dtype(v.dtype)
                except Exception:
                    pass


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
