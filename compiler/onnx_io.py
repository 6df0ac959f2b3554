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

import onnx
from onnx import numpy_helper

from compiler.atomic import Staging
from frontends.errors import InvalidArgumentError

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
    """Write ``model`` to ``path`` with its large tensors in a data file beside it; returns the bytes written."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"{path}: directory {folder} does not exist")
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    m = onnx.ModelProto()
    m.CopyFrom(model)
    blobs: list[tuple[onnx.TensorProto, bytes]] = []
    for t in _tensors(m):
        if t.data_location == onnx.TensorProto.EXTERNAL:  # never written with a name from the input
            raise InvalidArgumentError(f"tensor {t.name!r} still refers to external data; load the model with its data first")
        del t.external_data[:]
        raw = t.raw_data if t.HasField("raw_data") else numpy_helper.from_array(numpy_helper.to_array(t), t.name).raw_data
        if len(raw) >= min_bytes:
            blobs.append((t, raw))
    digest = hashlib.sha256()
    for t, raw in blobs:
        digest.update(t.name.encode())
        digest.update(raw)
    name = f"{os.path.basename(path)}.{digest.hexdigest()[:16]}.data"
    old_refs = _referenced(path)
    offset = 0
    with Staging(wrap_oserror=False) as staging:  # the data file renamed first, the model last
        if blobs:
            f = staging.open(os.path.join(folder, name), "wb")
            for t, raw in blobs:  # streamed: the data file is never built in memory
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
        data = m.SerializeToString()
        staging.open(path, "wb").write(data)
    for stale in old_refs - ({name} if blobs else set()):  # the previous output's data file, now referenced by nothing
        try:
            os.unlink(os.path.join(folder, stale))
        except OSError:
            log.warning("could not remove the old data file %s", stale)
    return len(data) + offset
