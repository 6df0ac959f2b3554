"""Example inputs of an ONNX model: the user's, checked against the declared inputs, or random ones.

A declared dim is fixed where it is a positive ``dim_value``; a symbolic, absent, ``-1`` or ``0`` dim
is dynamic (exporters write ``-1`` and ``0`` for "any size"): a given example may have any size there,
and random inputs need the user's example or ``--input-shape`` for it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx

from frontends.errors import InvalidArgumentError, UnsupportedModelError
from frontends.onnx.proto import numpy_dtype, real_inputs, tensor_dims, to_numpy

log = logging.getLogger(__name__)

__all__ = ["MAX_EXAMPLE_ELEMENTS", "check_input_size", "make_example_inputs"]

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
    ins = real_inputs(model)
    if given is None:
        return _random_inputs(ins, where, seed)
    values = _given_in_order(ins, given, where)
    return {vi.name: _conform(vi, x, where) for vi, x in zip(ins, values, strict=True)}


def _random_inputs(ins: list[onnx.ValueInfoProto], where: str, seed: int) -> dict[str, np.ndarray]:
    """Standard normal floats and zero integers of the declared static shapes."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for vi in ins:
        shape = tensor_dims(vi.type)
        if shape is None or any(d <= 0 for d in shape):
            raise InvalidArgumentError(
                f"{where}: input {vi.name!r} has a dynamic or unknown shape; pass example_inputs "
                "(a tuple of arrays) or --input-shape"
            )
        dt = numpy_dtype(vi.type.tensor_type.elem_type)
        check_input_size(vi.name, shape, where)
        if dt.kind == "f":
            out[vi.name] = rng.standard_normal(shape).astype(dt)
        else:
            out[vi.name] = np.zeros(shape, dtype=dt)
    return out


def _given_in_order(ins: list[onnx.ValueInfoProto], given: Any, where: str) -> list[Any]:
    """The user's inputs (a dict by name, one array, or a sequence) in graph-input order."""
    if isinstance(given, Mapping):
        missing = [vi.name for vi in ins if vi.name not in given]
        extra = [k for k in given if k not in {vi.name for vi in ins}]
        if missing or extra:
            raise InvalidArgumentError(f"{where}: example_inputs names {sorted(given)} do not match the inputs {[vi.name for vi in ins]}")
        return [given[vi.name] for vi in ins]
    values = [given] if hasattr(given, "shape") else list(given)
    if len(values) != len(ins):
        raise InvalidArgumentError(f"{where}: the model has {len(ins)} inputs {[vi.name for vi in ins]}, got {len(values)} example inputs")
    return values


def _conform(vi: onnx.ValueInfoProto, x: Any, where: str) -> np.ndarray:
    """One given input as a C-ordered array of the declared dtype (a same-kind cast), checked against the declared shape."""
    a = to_numpy(x)
    dt = numpy_dtype(vi.type.tensor_type.elem_type)
    if a.dtype != dt:
        if a.dtype.kind == dt.kind or (a.dtype.kind in "iu" and dt.kind in "iu"):
            a = a.astype(dt)
        else:
            raise InvalidArgumentError(f"{where}: input {vi.name!r} is {dt}, got an example of dtype {a.dtype}")
    decl = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else None
    if decl is not None:
        if len(decl) != a.ndim or any(d.HasField("dim_value") and 0 < d.dim_value != n for d, n in zip(decl, a.shape, strict=True)):
            want = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in decl]
            raise InvalidArgumentError(f"{where}: input {vi.name!r} has shape {want}, got an example of shape {list(a.shape)}")
    return np.asarray(a, order="C")
