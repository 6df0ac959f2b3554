"""Loading an ONNX model: a path or a ``ModelProto``, validated before anything reads it further.

A model must import the default opset at version 7 or later (and no later than the installed onnx
library knows), pass ``onnx.checker`` and strict shape inference, and name its values with text.
External data is read only from files inside the model's own folder: every tensor's ``location`` is
checked (no absolute paths, no ``..``, no symlink that leaves the folder, no read past the end of the
file) before any byte is read.

What prunec then works on is a private copy (:func:`working_copy`; the model given is never changed):

* **stored shapes are hints**: the graph's ``value_info`` is dropped where shape inference gives the
  value a shape of its own (and kept for the values it cannot see, such as a custom op's outputs), so a
  stale entry (a ``Reshape``'s old output shape) is never believed; the consistency check above runs
  without them. A declared graph *output* shape that contradicts the ops is refused only where ONNX
  Runtime does not run the model on the example inputs either; where it does, the copy (and the pruned
  model) declares the shape the ops give.
* **dynamic dims**: a graph input dim declared ``-1`` or ``0`` is dynamic, like a symbolic one (some
  exporters write ``-1``); an example of any size is taken there, and a ``0`` the example does not have
  becomes an unnamed dim (ONNX Runtime would read it as a fixed 0).
* **opsets 7 to 12** are upgraded to opset :data:`MIN_OPSET` (13) with ``onnx.version_converter``
  (:mod:`frontends.onnx.opsets`: the converter's failure is one line naming the op; the upgraded copy
  must pass the checker and compute what the model computes in ONNX Runtime). The pruned model is
  written at the model's own opset (and IR version) where the converter takes it back down, or where
  the upgrade changed no node, and the result passes ``onnx.checker`` (full check) and computes what the
  pruned model computes in ONNX Runtime; else at opset 13, with the IR version opset 13 needs. The
  report's ``settings["onnx"]["notes"]`` says which: ``written at opset N ...``.
* **over 2 GB** (external data beside the file): checked on the file's path and shape-inferred and run on
  light copies (:mod:`frontends.onnx.large`), never serialized whole; the large initializers are mapped from
  the data file (copy-on-write), never read into the proto (:func:`frontends.onnx.large.load_lazily`);
* **IR version 3** (every initializer also a graph input): kept; the pruned model lists every
  initializer it holds (sliced, renamed or new) as a graph input with its shape.

Opsets below 7 are refused in one line.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from frontends.errors import UnsupportedModelError
from frontends.onnx import large
from frontends.onnx.opsets import OLDEST_OPSET, WORKING_OPSET, run_quietly
from frontends.onnx.proto import all_tensors, first_line, iter_graphs, onnx_opset

log = logging.getLogger(__name__)

__all__ = ["MIN_OPSET", "OLDEST_OPSET", "CheckedModel", "ShapeCheck", "load_checked", "load_proto", "working_copy"]

MIN_OPSET = WORKING_OPSET  # the opset prunec works at; older models are upgraded to it (OLDEST_OPSET at least)


@dataclass
class ShapeCheck:
    """What strict shape inference makes of a model without its stored ``value_info``."""

    inferred: set[str]  # the values it gives a shape
    conflicts: dict[str, onnx.TypeProto] = field(default_factory=dict)  # declared outputs the ops contradict: the ops' types
    error: str | None = None  # inference's message where there are conflicts


@dataclass
class CheckedModel:
    """A model read and validated: the proto (external data in memory), its path, its shape check."""

    proto: onnx.ModelProto
    path: str | None
    shapes: ShapeCheck

    @property
    def where(self) -> str:
        return self.path or self.proto.graph.name or "model"


def load_proto(model: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, str | None]:
    """Read and validate a model; returns (model with external data in memory, path or None)."""
    checked = load_checked(model)
    return checked.proto, checked.path


def load_checked(model: str | os.PathLike | onnx.ModelProto) -> CheckedModel:
    """Read and validate a model (:func:`load_proto`), with what its shape check found for :func:`working_copy`."""
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
        large.check_model(proto, path=path)  # over 2 GB: on the file, which holds the external data
    except Exception as exc:
        raise UnsupportedModelError(f"{where}: invalid ONNX model: {first_line(exc)}") from None
    return CheckedModel(proto, path, _check_consistent(proto, where))


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
            if large.external_bytes(proto) + os.path.getsize(path) > large.LARGE_BYTES:  # mapped, not read
                large.load_lazily(proto, folder)
            else:
                load_external_data_for_model(proto, folder)
        except Exception as exc:
            raise UnsupportedModelError(f"{path}: cannot read external data ({exc})") from None
    return proto


def _check_opset(proto: onnx.ModelProto, where: str) -> None:
    """The default opset is imported, at least OLDEST_OPSET and known to the installed onnx."""
    opset = onnx_opset(proto)
    if opset is None:
        raise UnsupportedModelError(f"{where}: the model imports no ai.onnx opset")
    if opset > onnx.defs.onnx_opset_version():
        raise UnsupportedModelError(
            f"{where}: opset {opset} is newer than this onnx library knows (at most {onnx.defs.onnx_opset_version()})"
        )
    if opset < OLDEST_OPSET:
        raise UnsupportedModelError(f"{where}: opset {opset} is not supported (prunec reads opset {OLDEST_OPSET} or later)")


def _check_external_data(model: onnx.ModelProto, folder: str | None, where: str) -> bool:
    """Validate the location of every external-data tensor; True when there is any."""
    found = False
    root = os.path.realpath(folder) if folder is not None else None
    for t in all_tensors(model):
        if t.data_location != onnx.TensorProto.EXTERNAL or large.is_registered(t):  # registered: prunec's own mapping
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


def _check_consistent(proto: onnx.ModelProto, where: str) -> ShapeCheck:
    """What the checker lets through but the analysis relies on: text names, tensor data that fits its
    dims, shapes that agree with strict shape inference (found by the atheris fuzzer). Stored ``value_info``
    is left out of that (hints, dropped by :func:`working_copy`); declared output shapes that contradict
    the ops are left to :func:`working_copy`, which refuses them where ONNX Runtime does not run the model
    on the example inputs and declares the shapes the ops give where it does."""
    for g in iter_graphs(proto.graph):
        for n in g.node:
            for text in (n.name, n.op_type, n.domain, *n.input, *n.output):
                if not isinstance(text, str) or "\x00" in text:
                    raise UnsupportedModelError(f"{where}: node {n.name!r} has a malformed name {text!r}")
        for vi in (*g.input, *g.output, *g.value_info):
            if not isinstance(vi.name, str) or "\x00" in vi.name:
                raise UnsupportedModelError(f"{where}: a value has a malformed name {vi.name!r}")
    for t in all_tensors(proto):
        if large.is_registered(t):  # mapped from its file; its size was checked against its dims then
            continue
        try:
            numpy_helper.to_array(t)
        except Exception as exc:
            raise UnsupportedModelError(f"{where}: tensor {t.name!r}: its data does not fit dims {list(t.dims)} ({first_line(exc)})") from None
    bare = _without_value_info(proto)
    try:
        inferred = large.infer_shapes(bare, check_type=True, strict_mode=True)
    except Exception as exc:
        found = _output_conflicts(bare)
        if found is None:
            raise _inconsistent(where, first_line(exc)) from None
        log.info("%s: declared output shapes contradict shape inference: %s", where, first_line(exc))
        return ShapeCheck(found[1], found[0], first_line(exc))  # working_copy asks ONNX Runtime, on the example inputs
    return ShapeCheck(_shaped(inferred))


def _inconsistent(where: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{where}: the model's declared shapes or types are inconsistent: {why}")


def working_copy(checked: CheckedModel, inputs: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, list[str]]:
    """What prunec works on (the module docstring): the model itself where nothing is to change, else a copy with
    its stale ``value_info`` dropped, contradicted output shapes declared as the ops give them (refused where
    ONNX Runtime does not run the model on ``inputs``) and declared ``0`` input dims the example does not have
    left unnamed. Returns (the model, notes)."""
    proto, where, check = checked.proto, checked.where, checked.shapes
    notes: list[str] = []
    stored = sum(len(g.value_info) for g in iter_graphs(proto.graph))
    zeros = _zero_dims(proto, inputs)
    if check.error is not None:
        why = _ort_refuses(_without_value_info(proto), inputs)
        if why is not None:  # ONNX Runtime does not run it either: the declarations are the user's to fix
            log.info("%s: ONNX Runtime does not run the model either: %s", where, why)
            raise _inconsistent(where, check.error)
    if not stored and not zeros and not check.conflicts:
        return proto, notes
    m = _without_value_info(proto) if stored else _copy(proto)  # never the model given: it is the user's
    if stored:
        kept = _keep_hints(m, proto, check.inferred)
        notes.append(f"stored value_info: {stored - kept} shapes dropped for shape inference's, {kept} kept as hints")
    for vi in m.graph.output:
        if vi.name in check.conflicts:
            notes.append(f"output {vi.name!r} is declared {_dims(vi.type)}; its ops give {_dims(check.conflicts[vi.name])}, declared so")
            vi.type.CopyFrom(check.conflicts[vi.name])
    for vi in m.graph.input:
        for k in zeros.get(vi.name, []):
            vi.type.tensor_type.shape.dim[k].Clear()
            notes.append(f"input {vi.name!r}: dim {k} declared 0 is dynamic (unnamed in the pruned model)")
    return m, notes


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    return m


def _without_value_info(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy with no stored intermediate shapes, in any graph (``proto`` itself where it has none)."""
    if not any(g.value_info for g in iter_graphs(proto.graph)):
        return proto
    m = _copy(proto)
    for g in iter_graphs(m.graph):
        del g.value_info[:]
    return m


def _shaped(inferred: onnx.ModelProto) -> set[str]:
    """The values an inferred model gives a shape."""
    g = inferred.graph
    names = {vi.name for sub in iter_graphs(g) for vi in sub.value_info if vi.type.tensor_type.HasField("shape")}
    return names | {vi.name for vi in list(g.input) + list(g.output)}


def _keep_hints(bare: onnx.ModelProto, proto: onnx.ModelProto, inferred: set[str]) -> int:
    """Put back into ``bare`` the stored ``value_info`` of the values shape inference gives no shape (a custom op's
    outputs), where the model stays consistent with them; returns how many."""
    kept = 0
    for g_bare, g_orig in zip(iter_graphs(bare.graph), iter_graphs(proto.graph), strict=True):
        for vi in g_orig.value_info:
            if vi.name not in inferred:
                g_bare.value_info.append(vi)
                kept += 1
    if kept:
        try:
            large.infer_shapes(bare, check_type=True, strict_mode=True)
        except Exception as exc:
            log.info("stored value_info hints contradict shape inference (%s); all dropped", first_line(exc))
            for g in iter_graphs(bare.graph):
                del g.value_info[:]
            return 0
    return kept


def _output_conflicts(bare: onnx.ModelProto) -> tuple[dict[str, onnx.TypeProto], set[str]] | None:
    """Where the only contradiction is in the declared graph output shapes: (the types shape inference gives those
    outputs, by name; the values it gives a shape); None when the model is inconsistent without them too."""
    m = _copy(bare)
    for vi in m.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")
    try:
        inferred = large.infer_shapes(m, check_type=True, strict_mode=True)
    except Exception:
        return None
    declared = {vi.name: vi.type for vi in bare.graph.output}
    out: dict[str, onnx.TypeProto] = {}
    for vi in inferred.graph.output:
        old = declared.get(vi.name)
        if old is not None and vi.type.tensor_type.HasField("shape") and _conflict(old, vi.type):
            out[vi.name] = vi.type
    return out, _shaped(inferred)


def _conflict(declared: onnx.TypeProto, inferred: onnx.TypeProto) -> bool:
    """Two tensor types whose ranks or fixed dims differ."""
    a, b = declared.tensor_type, inferred.tensor_type
    if not a.HasField("shape") or not b.HasField("shape"):
        return False
    if len(a.shape.dim) != len(b.shape.dim):
        return True
    return any(x.HasField("dim_value") and y.HasField("dim_value") and x.dim_value != y.dim_value for x, y in zip(a.shape.dim, b.shape.dim, strict=True))


def _dims(t: onnx.TypeProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.tensor_type.shape.dim]


def _ort_refuses(proto: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> str | None:
    """Why ONNX Runtime does not run the model on ``inputs``; None when it does."""
    try:
        run_quietly(proto, inputs)
    except Exception as exc:
        return first_line(exc)
    return None


def _zero_dims(proto: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """Graph input dims declared 0 where the example is not empty, by input name."""
    out: dict[str, list[int]] = {}
    for vi in proto.graph.input:
        x = inputs.get(vi.name)
        if x is None or not vi.type.tensor_type.HasField("shape"):
            continue
        ks = [k for k, d in enumerate(vi.type.tensor_type.shape.dim) if d.HasField("dim_value") and d.dim_value == 0 and k < x.ndim and x.shape[k] != 0]
        if ks:
            out[vi.name] = ks
    return out
