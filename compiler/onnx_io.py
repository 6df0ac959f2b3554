"""Writing ONNX models with external data, atomically, under names prunec chooses.

The input's external-data entries are never carried over (the loader reads them into memory and the
writer clears any left): every tensor of at least ``min_bytes`` goes into one data file named
``<output name>.<content hash>.data`` beside the output, never a name found in a model (the write
direction of CVE-2025-51480). Both files are written to temporary files in the output's folder and
renamed into place, the data file first, then the model, so an existing output (and the data file it
references) stays complete until the new pair is; the old output's prunec-named data file is then
removed. Any failure or interruption removes the temporary files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compiler.atomic import Staging
from frontends.errors import InvalidArgumentError
from frontends.onnx import large

__all__ = ["save_with_external_data", "data_file_pattern"]

log = logging.getLogger(__name__)
ALIGN = 4096
MIN_BYTES = 1024  # smaller tensors stay inside the model file


def data_file_pattern(path: str) -> re.Pattern[str]:
    """The names prunec gives the data files of output ``path``."""
    return re.compile(re.escape(os.path.basename(path)) + r"\.[0-9a-f]{16}\.data")


def _tensors(m: onnx.ModelProto) -> list[onnx.TensorProto]:
    from frontends.onnx import all_tensors

    return list(all_tensors(m))


def _referenced(path: str) -> set[str]:
    """Data files the existing output at ``path`` references (prunec-named ones only)."""
    if not os.path.isfile(path):
        return set()
    try:
        old = onnx.load(path, load_external_data=False)
    except Exception:
        return set()
    pat = data_file_pattern(path)
    out = set()
    for t in _tensors(old):
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        if isinstance(loc, str) and pat.fullmatch(loc):
            out.add(loc)
    return out


def save_with_external_data(model: onnx.ModelProto, path: str, min_bytes: int | None = None) -> int:
    """Write ``model`` to ``path`` with its large tensors in a data file beside it; returns the bytes written.

    Memory stays near one tensor: the model is not copied whole (its top-level initializers are written from the
    model one at a time, the copy written holds only their dims), and the data is hashed, then written, tensor by
    tensor; a registered placeholder (:mod:`frontends.onnx.large`) is written from its mapped array."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"{path}: directory {folder} does not exist")
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    m = onnx.ModelProto()
    _copy_fields(model, m, "graph")
    _copy_fields(model.graph, m.graph, "initializer")
    big: list[tuple[onnx.TensorProto, onnx.TensorProto]] = []  # (the model's initializer, its dims-only copy in m)
    for t in model.graph.initializer:
        if large.is_registered(t) or (t.HasField("raw_data") and _nbytes(t) >= min_bytes):
            c = m.graph.initializer.add()
            c.name, c.data_type, c.doc_string = t.name, t.data_type, t.doc_string
            c.dims.extend(t.dims)
            big.append((t, c))
        else:
            m.graph.initializer.append(t)
    nested: list[onnx.TensorProto] = []  # every other tensor of the copy (small initializers, attributes, subgraphs)
    taken = {id(c) for _, c in big}
    for t in _tensors(m):
        if id(t) in taken:
            continue
        if t.data_location == onnx.TensorProto.EXTERNAL:  # never written with a name from the input
            raise InvalidArgumentError(f"tensor {t.name!r} still refers to external data; load the model with its data first")
        del t.external_data[:]
        if _nbytes(t) >= min_bytes:
            nested.append(t)
    digest = hashlib.sha256()
    for t, raw in _blobs(big, nested):
        digest.update(t.name.encode())
        digest.update(raw)
    name = f"{os.path.basename(path)}.{digest.hexdigest()[:16]}.data"
    old_refs = _referenced(path)
    offset, wrote = 0, False
    with Staging(wrap_oserror=False) as staging:  # the data file renamed first, the model last
        f = None
        for t, raw in _blobs(big, nested):  # streamed: the data file is never built in memory
            if f is None:
                f = staging.open(os.path.join(folder, name), "wb")
            pad = (-offset) % ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(raw)
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(field)
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", name), ("offset", str(offset)), ("length", str(len(raw)))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += len(raw)
            wrote = True
        data = m.SerializeToString()
        staging.open(path, "wb").write(data)
    for stale in old_refs - ({name} if wrote else set()):  # the previous output's data file, now referenced by nothing
        try:
            os.unlink(os.path.join(folder, stale))
        except OSError:
            log.warning("could not remove the old data file %s", stale)
    return len(data) + offset


def _nbytes(t: onnx.TensorProto) -> int:
    """About the bytes of a tensor's data as written, without copying its raw data out of the proto."""
    if large.is_registered(t):
        return int(large.tensor_array(t).nbytes)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    if t.HasField("raw_data"):
        return t.ByteSize()  # the raw bytes and a few of dims and name
    return len(numpy_helper.from_array(numpy_helper.to_array(t)).raw_data)


def _blobs(big: list[tuple[onnx.TensorProto, onnx.TensorProto]], nested: list[onnx.TensorProto]) -> Iterator[tuple[onnx.TensorProto, bytes | memoryview]]:
    """(tensor of the copy to point at the data file, its raw bytes), one tensor in memory at a time."""
    for src, dst in big:
        if large.is_registered(src):
            yield dst, np.ascontiguousarray(large.tensor_array(src)).reshape(-1).view(np.uint8).data
        else:
            yield dst, src.raw_data
    for t in nested:
        yield t, t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(numpy_helper.to_array(t), t.name).raw_data


def _copy_fields(src: Any, dst: Any, skip: str) -> None:
    from frontends.onnx.large import _copy_fields as copy_fields

    copy_fields(src, dst, skip)
