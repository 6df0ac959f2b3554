"""Models over protobuf's 2 GB limit: checked, shape-inferred and run without serializing them whole.

A ``ModelProto`` over 2 GB cannot be serialized, and ``onnx.checker``, ONNX shape inference and
``onnxruntime.InferenceSession`` all serialize the model they are given. For a model over
:data:`LARGE_BYTES` (its external data read into memory, as the loader does):

* the **checker** runs on the file's path where the model was read from one (``onnx.checker.check_model(path)``
  reads the external data itself), else on a *light copy* written to a temporary folder: every top-level
  initializer of :data:`MIN_EXTERNAL` bytes or more becomes external data in a sparse file of the right size
  (no byte of it written), so the checker sees every tensor's type and dims;
* **shape inference** runs on the light copy in memory (it reads dims, never the data of a large tensor);
* **ONNX Runtime** gets the light copy with the large initializers handed over as ``OrtValue`` s
  (``SessionOptions.add_external_initializers``): nothing is written to disk.

The output is written by :func:`compiler.onnx_io.save_with_external_data` (data file and model to temporary
names, then renamed: nothing half-written), which the CLI chooses where the pruned model is over 2 GB.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

__all__ = ["LARGE_BYTES", "MIN_EXTERNAL", "check_model", "infer_shapes", "is_large", "is_placeholder", "light_copy", "session_parts"]

LARGE_BYTES = 2**31 - (64 << 20)  # protobuf's 2 GB limit, with a margin for what a copy adds (outputs, masks)
MIN_EXTERNAL = 1 << 20  # initializers of this many bytes or more leave the light copy
PLACEHOLDER = "prunec-large-model.data"


def is_large(model: onnx.ModelProto) -> bool:
    """Over :data:`LARGE_BYTES` (protobuf cannot serialize it near or over 2 GB; over 2 GB it cannot even say its
    size, and raises instead)."""
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
    :data:`PLACEHOLDER` (their bytes laid end to end), and those initializers (the model's own protos, not copies)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, "graph")
    g, lg = model.graph, light.graph
    _copy_fields(g, lg, "initializer")
    moved: list[onnx.TensorProto] = []
    offset = 0
    for t in g.initializer:
        size = _tensor_bytes(t)
        if size < MIN_EXTERNAL:
            lg.initializer.append(t)
            continue
        p = lg.initializer.add()
        p.name, p.data_type = t.name, t.data_type
        p.dims.extend(t.dims)
        p.data_location = onnx.TensorProto.EXTERNAL
        nbytes = int(np.prod(t.dims, dtype=np.int64)) * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        for k, v in (("location", PLACEHOLDER), ("offset", str(offset)), ("length", str(nbytes))):
            e = p.external_data.add()
            e.key, e.value = k, v
        offset += nbytes
        moved.append(t)
    return light, moved


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


def check_model(model: onnx.ModelProto, full_check: bool = False, path: str | None = None) -> None:
    """``onnx.checker.check_model`` that works over 2 GB: on ``path`` (the file ``model`` was read from, with its
    external data) or on a light copy with a sparse data file; in memory otherwise."""
    if not is_large(model):
        onnx.checker.check_model(model, full_check=full_check)
        return
    if path is not None:
        onnx.checker.check_model(path, full_check=full_check)
        return
    light, moved = light_copy(model)
    size = sum(int(next(e.value for e in t.external_data if e.key == "length")) for t in light.graph.initializer if t.external_data)
    with tempfile.TemporaryDirectory(prefix="prunec-check-") as folder:
        with open(os.path.join(folder, PLACEHOLDER), "wb") as f:
            f.truncate(size)  # sparse: the checker reads types and dims, not the bytes
        model_path = os.path.join(folder, "model.onnx")
        with open(model_path, "wb") as f:
            f.write(light.SerializeToString())
        log.info("checking a model over 2 GB through a light copy (%d initializers external)", len(moved))
        onnx.checker.check_model(model_path, full_check=full_check)


def infer_shapes(model: onnx.ModelProto, **kwargs: Any) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes`` that works over 2 GB (on a light copy: the result's large initializers
    are placeholders; read its shapes, not its data)."""
    if is_large(model):
        model = light_copy(model)[0]
    return onnx.shape_inference.infer_shapes(model, **kwargs)


def is_placeholder(t: onnx.TensorProto) -> bool:
    """An initializer of a light copy (its data left out)."""
    return t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == "location" and e.value == PLACEHOLDER for e in t.external_data)


def session_parts(model: onnx.ModelProto, arrays: Mapping[str, np.ndarray] | None = None) -> tuple[bytes, list[str], list[Any]]:
    """What an ONNX Runtime session is made from: the serialized model, and the names and ``OrtValue`` s of the
    initializers given to it apart (none under 2 GB, unless ``model`` is itself a light copy). A light copy's
    initializers come from ``arrays`` (the loaded model's static values: no copy); other large ones are read
    from the model. The arrays must outlive the session."""
    placeholders = [t.name for t in model.graph.initializer if is_placeholder(t)]
    if not placeholders and not is_large(model):
        return model.SerializeToString(), [], []
    import onnxruntime as ort

    light, moved = (model, []) if not is_large(model) else light_copy(model)
    missing = [n for n in placeholders if arrays is None or n not in arrays]
    if missing:
        raise ValueError(f"no data for the initializers {missing[:3]} of a light copy")
    names = placeholders + [t.name for t in moved]
    data = [np.asarray(arrays[n]) for n in placeholders] if arrays is not None else []
    data += [numpy_helper.to_array(t) for t in moved]
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a)) for a in data]
    return light.SerializeToString(), names, values
