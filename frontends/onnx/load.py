"""Loading an ONNX model: a path or a ``ModelProto``, validated before anything reads it further.

A model must import the default opset at version 13 or later (and no later than the installed
onnx library knows), pass ``onnx.checker`` and strict shape inference, and name its values with
text. External data is read only from files inside the model's own folder: every tensor's
``location`` is checked (no absolute paths, no ``..``, no symlink that leaves the folder, no read
past the end of the file) before any byte is read.
"""

from __future__ import annotations

import logging
import os
import re

import onnx
from onnx import numpy_helper

from frontends.errors import UnsupportedModelError
from frontends.onnx.proto import all_tensors, first_line, iter_graphs, onnx_opset

log = logging.getLogger(__name__)

__all__ = ["MIN_OPSET", "load_proto"]

MIN_OPSET = 13


def load_proto(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Read and validate a model; returns (model with external data in memory, path or None)."""
    path: str | None = None
    if isinstance(model, onnx.ModelProto):
        proto = model
        where = proto.graph.name or "model"
        _check_external_data(proto, None, where)
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        where = path
        proto = _read_file(path)
    else:
        raise UnsupportedModelError(f"expected an onnx.ModelProto or a path to an .onnx file, got {type(model).__name__}")
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise UnsupportedModelError(f"{where}: not an ONNX model (no graph)")
    _check_opset(proto, where)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise UnsupportedModelError(f"{where}: invalid ONNX model: {first_line(exc)}") from None
    _check_consistent(proto, where)
    return proto, path


def _read_file(path: str) -> onnx.ModelProto:
    """The model in an .onnx file, with its external data read (after its locations are checked)."""
    if not os.path.exists(path):
        raise UnsupportedModelError(f"{path}: no such file")
    if os.path.isdir(path):
        raise UnsupportedModelError(f"{path}: is a directory, not an ONNX file")
    if os.path.getsize(path) == 0:
        raise UnsupportedModelError(f"{path}: empty file, not an ONNX model")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError, truncated or not a protobuf at all
        raise UnsupportedModelError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    folder = os.path.dirname(os.path.abspath(path))
    if _check_external_data(proto, folder, path):
        from onnx.external_data_helper import load_external_data_for_model

        try:
            load_external_data_for_model(proto, folder)
        except Exception as exc:
            raise UnsupportedModelError(f"{path}: cannot read external data ({exc})") from None
    return proto


def _check_opset(proto: onnx.ModelProto, where: str) -> None:
    """The default opset is imported, at least MIN_OPSET and known to the installed onnx."""
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


def _check_external_data(model: onnx.ModelProto, folder: str | None, where: str) -> bool:
    """Validate the location of every external-data tensor; True when there is any."""
    found = False
    root = os.path.realpath(folder) if folder is not None else None
    for t in all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        found = True
        _check_location(t, root, where)
    return found


def _check_location(t: onnx.TensorProto, root: str | None, where: str) -> None:
    """One external-data tensor reads an existing file inside ``root``, within the file's size."""
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


def _check_consistent(proto: onnx.ModelProto, where: str) -> None:
    """What the checker lets through but the analysis relies on: text names, tensor data that fits its
    dims, declared shapes that agree with strict shape inference (found by the atheris fuzzer)."""
    for g in iter_graphs(proto.graph):
        for n in g.node:
            for text in (n.name, n.op_type, n.domain, *n.input, *n.output):
                if not isinstance(text, str) or "\x00" in text:
                    raise UnsupportedModelError(f"{where}: node {n.name!r} has a malformed name {text!r}")
        for vi in (*g.input, *g.output, *g.value_info):
            if not isinstance(vi.name, str) or "\x00" in vi.name:
                raise UnsupportedModelError(f"{where}: a value has a malformed name {vi.name!r}")
    for t in all_tensors(proto):
        try:
            numpy_helper.to_array(t)
        except Exception as exc:
            raise UnsupportedModelError(f"{where}: tensor {t.name!r}: its data does not fit dims {list(t.dims)} ({first_line(exc)})") from None
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        raise UnsupportedModelError(f"{where}: the model's declared shapes or types are inconsistent: {first_line(exc)}") from None
