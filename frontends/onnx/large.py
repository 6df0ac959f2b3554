"""Models over protobuf's 2 GB limit: checked, shape-inferred and run without serializing them whole.

A ``ModelProto`` over 2 GB cannot be serialized, and ``onnx.checker``, ONNX shape inference and
``onnxruntime.InferenceSession`` all serialize the model they are given. For a model over
:data:`LARGE_BYTES` (its external data read into memory, as the loader does):

* the **checker** runs on the file's path where the model was read from one (``onnx.checker.check_model(path)``
  reads the external data itself), else on a *light copy* written to a temporary folder: every top-level
  initializer of :data:`MIN_EXTERNAL` bytes or more becomes external data in a sparse file of the right size
  (no byte of it written), so the checker sees every tensor's type and dims;
* **shape inference** runs on the light copy in memory (it reads dims, never the data of a large tensor);
* **ONNX Runtime** gets the light copy with the large initializers turned into graph inputs, fed with their
  arrays at every run (:class:`FedSession`): nothing is written to disk, and nothing copied (ONNX Runtime copies
  the initializers it is given, ``add_external_initializers`` included, but reads a fed array where it lies).

The output is written by :func:`compiler.onnx_io.save_with_external_data` (data file and model to temporary
names, then renamed: nothing half-written), which the CLI chooses where the pruned model is over 2 GB.

**Memory near the weights.** A model read from a file whose external data is over :data:`LARGE_BYTES` is never
read into memory: its top-level initializers of :data:`MIN_EXTERNAL` bytes or more (of a plain numeric type) are
mapped from the data file (:func:`load_lazily`: ``numpy.memmap``, copy-on-write, the file is never written) and
become *registered placeholders* in the proto (external data at :data:`PLACEHOLDER`, plus the key
:data:`SOURCE_KEY`, a random token naming the mapped array in this process). :func:`tensor_array` gives any
tensor's value (a placeholder's mapped array, no copy); sessions, the checker and shape inference see light copies
with the token keys stripped. A pruned model is a plain proto again (:func:`materialize`); :func:`lazy_view` gives
a short-lived light view of a model in memory (verification, measurement) whose large initializers are arrays
taken out of the proto one by one, so neither the checker nor ONNX Runtime ever gets the model serialized whole.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

__all__ = [
    "FedSession",
    "LARGE_BYTES",
    "MIN_EXTERNAL",
    "check_model",
    "external_bytes",
    "infer_shapes",
    "is_large",
    "is_lazy",
    "is_placeholder",
    "lazy_view",
    "light_copy",
    "load_lazily",
    "materialize",
    "session_parts",
    "tensor_array",
    "tokens",
]

LARGE_BYTES = 2**31 - (64 << 20)  # protobuf's 2 GB limit, with a margin for what a copy adds (outputs, masks)
MIN_EXTERNAL = 1 << 20  # initializers of this many bytes or more leave the light copy
PLACEHOLDER = "prunec-large-model.data"
SOURCE_KEY = "prunec_source"  # external_data key of a registered placeholder: the token of its array in _SOURCES
_SOURCES: dict[str, np.ndarray] = {}  # token -> the array of a registered placeholder (a mapped file, or a view's)


def is_large(model: onnx.ModelProto) -> bool:
    """Over :data:`LARGE_BYTES` (protobuf cannot serialize it near or over 2 GB; over 2 GB it cannot even say its
    size, and raises instead), or holding registered placeholders (:func:`is_lazy`: its data is not in the proto)."""
    if is_lazy(model):
        return True
    try:
        return model.ByteSize() > LARGE_BYTES
    except Exception:  # google.protobuf.message.EncodeError: "Failed to serialize proto"
        return True


def _tensor_bytes(t: onnx.TensorProto) -> int:
    if t.HasField("raw_data"):
        return len(t.raw_data)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    return t.ByteSize()


def light_copy(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of ``model`` whose top-level initializers of :data:`MIN_EXTERNAL` bytes or more are external data in
    :data:`PLACEHOLDER` (their bytes laid end to end), and those initializers (the model's own protos, not copies).
    Registered placeholders stay placeholders (laid out in the same file, their tokens left out: the checker and
    ONNX Runtime know no such key)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, "graph")
    g, lg = model.graph, light.graph
    _copy_fields(g, lg, "initializer")
    moved: list[onnx.TensorProto] = []
    offset = 0
    for t in g.initializer:
        placeholder = is_placeholder(t)
        size = _tensor_bytes(t)
        if not placeholder and size < MIN_EXTERNAL:
            lg.initializer.append(t)
            continue
        p = lg.initializer.add()
        p.name, p.data_type = t.name, t.data_type
        p.dims.extend(t.dims)
        p.data_location = onnx.TensorProto.EXTERNAL
        nbytes = _nbytes(t)
        for k, v in (("location", PLACEHOLDER), ("offset", str(offset)), ("length", str(nbytes))):
            e = p.external_data.add()
            e.key, e.value = k, v
        offset += nbytes
        if not placeholder:
            moved.append(t)
    return light, moved


def _nbytes(t: onnx.TensorProto) -> int:
    return math.prod(t.dims) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    """Every field of the message ``src`` but ``skip`` into ``dst`` (copies)."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def check_model(model: onnx.ModelProto, full_check: bool = False, path: str | None = None, light: bool = False) -> None:
    """``onnx.checker.check_model`` that works over 2 GB: on ``path`` (the file ``model`` was read from, with its
    external data) or on a light copy with a sparse data file; in memory otherwise (``light``: never in memory,
    where the model is near the weights of one over 2 GB and a serialized copy would double it)."""
    if not light and not is_large(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    if path is not None:
        onnx.checker.check_model(path, full_check=full_check)
        return
    copy, moved = light_copy(model)
    size = sum(int(next(e.value for e in t.external_data if e.key == "length")) for t in copy.graph.initializer if t.external_data)
    with tempfile.TemporaryDirectory(prefix="prunec-check-") as folder:
        with open(os.path.join(folder, PLACEHOLDER), "wb") as f:
            f.truncate(size)  # sparse: the checker reads types and dims, not the bytes
        model_path = os.path.join(folder, "model.onnx")
        with open(model_path, "wb") as f:
            f.write(copy.SerializeToString())
        log.info("checking a model over 2 GB through a light copy (%d initializers external)", len(moved))
        onnx.checker.check_model(model_path, full_check=full_check)


def infer_shapes(model: onnx.ModelProto, light: bool = False, **kwargs: Any) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` that works over 2 GB (on a light copy: the result's large initializers
    are placeholders; read its shapes, not its data); ``light``: on a light copy whatever the size."""
    if light or is_large(model):
        model = light_copy(model)[0]
    return onnx.shape_inference.infer_shapes(model, **kwargs)


def is_placeholder(t: onnx.TensorProto) -> bool:
    """An initializer of a light copy (its data left out), or a registered placeholder."""
    return t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == "location" and e.value == PLACEHOLDER for e in t.external_data)


def _token(t: onnx.TensorProto) -> str | None:
    """The token of a registered placeholder (None: not one, or one this process does not hold)."""
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    token = next((e.value for e in t.external_data if e.key == SOURCE_KEY), None)
    return token if token in _SOURCES else None


def is_registered(t: onnx.TensorProto) -> bool:
    """A placeholder whose data this process holds (made by :func:`load_lazily` or :func:`lazy_view`)."""
    return _token(t) is not None


def tokens(model: onnx.ModelProto) -> list[str]:
    """The tokens of the model's registered placeholders (top-level initializers)."""
    return [tok for t in model.graph.initializer if (tok := _token(t)) is not None]


def is_lazy(model: onnx.ModelProto) -> bool:
    """Whether any top-level initializer is a registered placeholder."""
    return any(t.data_location == onnx.TensorProto.EXTERNAL and is_registered(t) for t in model.graph.initializer)


def tensor_array(t: onnx.TensorProto) -> np.ndarray:
    """A tensor's value: a registered placeholder's array (no copy), else ``numpy_helper.to_array``."""
    token = _token(t)
    if token is not None:
        return _SOURCES[token]
    return numpy_helper.to_array(t)


def _register(t: onnx.TensorProto, arr: np.ndarray) -> str:
    """Make ``t`` a placeholder of ``arr`` (its data and external data replaced); returns the token."""
    token = secrets.token_hex(16)
    _SOURCES[token] = arr
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(field)
    del t.external_data[:]
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", PLACEHOLDER), ("offset", "0"), ("length", str(arr.nbytes)), (SOURCE_KEY, token)):
        e = t.external_data.add()
        e.key, e.value = k, v
    return token


def release(tokens: list[str]) -> None:
    """Forget the arrays of these tokens (their placeholders no longer resolve)."""
    for token in tokens:
        _SOURCES.pop(token, None)


def _plain_dtype(elem: int) -> np.dtype | None:
    """The numpy dtype an element type's raw bytes read as directly (None: bfloat16, float8, int4, strings ...)."""
    plain: dict[int, type] = {
        onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
        onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT16: np.int16, onnx.TensorProto.INT32: np.int32,
        onnx.TensorProto.INT64: np.int64, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.UINT16: np.uint16,
        onnx.TensorProto.UINT32: np.uint32, onnx.TensorProto.UINT64: np.uint64, onnx.TensorProto.BOOL: np.bool_,
    }  # fmt: skip
    return np.dtype(plain[elem]) if elem in plain and sys.byteorder == "little" else None


def external_bytes(model: onnx.ModelProto) -> int:
    """The bytes of the model's external data (as its tensors declare them)."""
    total = 0
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            dtype = _plain_dtype(t.data_type)
            total += math.prod(t.dims) * (dtype.itemsize if dtype is not None else 1)
    return total


def load_lazily(model: onnx.ModelProto, folder: str) -> list[str]:
    """Read a model's external data (locations already checked to lie inside ``folder``): its top-level initializers
    of :data:`MIN_EXTERNAL` bytes or more of a plain numeric type become registered placeholders of the data file
    mapped copy-on-write (nothing read yet; the file is never written), every other external tensor is read into
    the proto. Returns the tokens. Raises ValueError where a tensor's data does not fit its dims."""
    from onnx.external_data_helper import load_external_data_for_tensor

    from frontends.onnx.proto import all_tensors

    tokens: list[str] = []
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        dtype = _plain_dtype(t.data_type)
        nbytes = math.prod(t.dims) * dtype.itemsize if dtype is not None else 0
        if dtype is not None and nbytes >= MIN_EXTERNAL:
            full = os.path.join(folder, info["location"])
            offset = int(info.get("offset") or 0)
            length = int(info["length"]) if info.get("length") else os.path.getsize(full) - offset
            if length != nbytes or offset + nbytes > os.path.getsize(full):
                raise ValueError(f"tensor {t.name!r}: its data ({length} bytes at {offset}) does not fit dims {list(t.dims)}")
            arr = np.memmap(full, dtype=dtype, mode="c", offset=offset, shape=tuple(t.dims)).view(np.ndarray)
            tokens.append(_register(t, arr))
    for t in all_tensors(model):  # every other external tensor is read
        if t.data_location != onnx.TensorProto.EXTERNAL or is_registered(t):
            continue
        load_external_data_for_tensor(t, folder)
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]
    log.info("%d initializers mapped from their data files, not read", len(tokens))
    return tokens


def materialize(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every registered placeholder's data put back into the proto (in place; returned)."""
    for t in model.graph.initializer:
        if is_registered(t):
            t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(tensor_array(t)), t.name))
    return model


@contextlib.contextmanager
def lazy_view(model: onnx.ModelProto) -> Iterator[onnx.ModelProto]:
    """A private copy of ``model`` whose top-level initializers of :data:`MIN_EXTERNAL` bytes or more are registered
    placeholders of arrays taken from the proto one at a time (registered ones stay), for as long as the context."""
    view = onnx.ModelProto()
    _copy_fields(model, view, "graph")
    _copy_fields(model.graph, view.graph, "initializer")
    tokens: list[str] = []
    try:
        for t in model.graph.initializer:
            p = view.graph.initializer.add()
            if is_registered(t) or _tensor_bytes(t) < MIN_EXTERNAL or _plain_dtype(t.data_type) is None:
                p.CopyFrom(t)
                continue
            p.name, p.data_type, p.doc_string = t.name, t.data_type, t.doc_string
            p.dims.extend(t.dims)
            tokens.append(_register(p, numpy_helper.to_array(t)))
        yield view
    finally:
        release(tokens)


def session_parts(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray] | None = None) -> tuple[bytes, dict[str, np.ndarray]]:
    """What an ONNX Runtime session is made from: the serialized model, and the arrays fed to it at every run in place
    of its large initializers (none under 2 GB, unless ``model`` is itself a light copy or holds registered
    placeholders). Those initializers become graph inputs of the serialized model: ONNX Runtime copies an initializer
    it is given (``add_external_initializers`` included) but reads a fed array where it lies, so a mapped weight stays
    in the page cache, once. A placeholder's data comes from ``arrays`` (the loaded model's static values: no copy)
    or, for a registered one, from its own array; other large initializers are read from the model (one copy)."""
    placeholders = [t for t in model.graph.initializer if is_placeholder(t)]
    if not placeholders and not is_large(model):
        return model.SerializeToString(), {}
    light, moved = light_copy(model)
    fed: dict[str, np.ndarray] = {}
    missing = []
    for t in placeholders:
        if arrays is not None and t.name in arrays:
            fed[t.name] = np.asarray(arrays[t.name])
        elif is_registered(t):
            fed[t.name] = tensor_array(t)
        else:
            missing.append(t.name)
    if missing:
        raise ValueError(f"no data for the initializers {missing[:3]} of a light copy")
    for t in moved:
        fed[t.name] = numpy_helper.to_array(t)
    g = light.graph
    kept = [t for t in g.initializer if t.name not in fed]
    declared = {vi.name for vi in g.input}
    for t in g.initializer:
        if t.name in fed and t.name not in declared:  # under IR 3 it is a graph input already
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del g.initializer[:]
    g.initializer.extend(kept)
    return light.SerializeToString(), {k: np.ascontiguousarray(v) for k, v in fed.items()}


class FedSession:
    """An ONNX Runtime session whose large weights are graph inputs (:func:`session_parts`): ``run`` feeds them with
    the caller's feeds, ``get_inputs`` lists the caller's only; anything else is the session's."""

    def __init__(self, session: Any, fed: Mapping[str, np.ndarray]) -> None:
        self.session, self.fed = session, dict(fed)

    def run(self, output_names: Any, input_feed: Mapping[str, Any], run_options: Any = None) -> Any:
        return self.session.run(output_names, {**input_feed, **self.fed}, run_options)

    def get_inputs(self) -> list[Any]:
        return [i for i in self.session.get_inputs() if i.name not in self.fed]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)
