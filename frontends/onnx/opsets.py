"""Models below the working opset: upgraded on a private copy, and the pruned model written back.

prunec analyses and rewrites models of opset :data:`WORKING_OPSET` (13) or later. A model of opset
:data:`OLDEST_OPSET` (7) to 12 is upgraded with ``onnx.version_converter.convert_version`` on a private
copy (:func:`upgrade`); that copy is checked before anything else reads it:

* the converter's own failure is one line naming the op it could not convert (found by converting one
  opset at a time where its message does not say);
* ``Resize`` nodes that stand for an ``Upsample`` or an opset-10 ``Resize`` get the coordinate
  transformation those ops had (``asymmetric``, nearest ``floor``): the converter leaves the opset-11
  default (``half_pixel``), which computes something else;
* the upgraded copy must pass the checker and compute what the model computes, in ONNX Runtime, on the
  example inputs (where the model itself runs there).

The pruned model is written (:func:`write_back`) at the model's own opset where one of these gives a
model that passes ``onnx.checker`` (full check) and computes what the pruned model computes in ONNX
Runtime: the converter takes it back down; or the upgrade changed no node (only the opset number), so the
same nodes mean the same at the model's opset. Otherwise it is written at the working opset, with the IR
version that opset needs. The report's ``settings["onnx"]["notes"]`` says which (``written at opset N``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from frontends.errors import UnsupportedModelError
from frontends.onnx.proto import DEFAULT_DOMAINS, first_line, iter_graphs, onnx_opset

log = logging.getLogger(__name__)

__all__ = [
    "OLDEST_OPSET",
    "WORKING_OPSET",
    "OpsetOrigin",
    "list_initializers_as_inputs",
    "run_quietly",
    "same_outputs",
    "upgrade",
    "write_back",
]

WORKING_OPSET = 13
OLDEST_OPSET = 7
RTOL = 1e-5  # outputs of two forms of one model agree within RTOL * max|reference| (float32 kernels differ)


@dataclass(frozen=True)
class OpsetOrigin:
    """The opset and IR version a model came with, and whether the upgrade changed any of its nodes."""

    opset: int
    ir_version: int
    nodes_unchanged: bool  # the upgrade changed only the opset number


def upgrade(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], where: str) -> tuple[onnx.ModelProto, OpsetOrigin, str]:
    """``model`` (opset 7 to 12) at :data:`WORKING_OPSET`, checked; returns (the upgraded copy, its origin, a note)."""
    opset = onnx_opset(model)
    assert opset is not None and opset < WORKING_OPSET
    up = _convert_up(model, opset, where)
    fixed = _old_resize_semantics(up) if opset < 11 else 0
    del up.graph.value_info[:]  # the converter's inferred shapes; the model's own hints come back
    up.graph.value_info.extend(model.graph.value_info)
    if up.ir_version < 4:  # the converter's new initializers (Pad's pads) are graph inputs too
        list_initializers_as_inputs(up)
    try:
        onnx.checker.check_model(up)
    except Exception as exc:
        raise UnsupportedModelError(f"{where}: onnx.version_converter's opset-{WORKING_OPSET} form of the model is invalid: {first_line(exc)}") from None
    unchanged = _node_bytes(model) == _node_bytes(up)
    why = same_outputs(model, up, inputs)
    if why == "reference":
        log.info("%s: the opset-%d model does not run in ONNX Runtime; its upgrade is checked by the checker only", where, opset)
    elif why is not None:
        changed = _changed_nodes(model, up)
        raise UnsupportedModelError(
            f"{where}: onnx.version_converter changed what the model computes when upgrading opset {opset} to "
            f"{WORKING_OPSET} ({why}); the nodes it rewrote: {', '.join(changed[:5]) or 'none'}"
        )
    origin = OpsetOrigin(opset, int(model.ir_version), unchanged)
    note = f"opset {opset} upgraded to opset {WORKING_OPSET} with onnx.version_converter for pruning"
    if fixed:
        note += f" ({fixed} Resize given the asymmetric coordinates of opset {opset}'s Upsample/Resize)"
    return up, origin, note


def write_back(pruned: onnx.ModelProto, origin: OpsetOrigin, inputs: Mapping[str, np.ndarray]) -> tuple[onnx.ModelProto, str]:
    """The pruned model at the model's own opset where that passes the full checker and computes the same; else
    at the working opset. Returns (the model to write, a note: ``written at opset N ...``)."""
    opset = onnx_opset(pruned) or WORKING_OPSET
    target = origin.opset
    reasons: list[str] = []
    down, failure = _convert_down(pruned, target, origin.ir_version)
    why = _acceptable(down, pruned, inputs) if down is not None else failure
    if down is not None and why is None:
        return down, f"written at opset {target}, the model's own (onnx.version_converter took the pruned model back from opset {opset})"
    reasons.append(f"onnx.version_converter: {why}")
    if origin.nodes_unchanged:
        same = _retagged(pruned, target, origin.ir_version)
        why = _acceptable(same, pruned, inputs)
        if why is None:
            return same, f"written at opset {target}, the model's own (the upgrade to opset {opset} changed no node)"
        reasons.append(f"the same nodes at opset {target}: {why}")
    else:
        reasons.append(f"the upgrade rewrote nodes for opset {opset}")
    out = _at_working_opset(pruned, origin)
    if out is not pruned:
        try:
            onnx.checker.check_model(out, full_check=True)
        except Exception as exc:  # the IR version as it was then: the pruned model passed the checker so
            log.info("the pruned model at IR version %d fails the checker (%s); its IR version is kept", out.ir_version, first_line(exc))
            out = pruned
    return out, f"written at opset {opset} (IR version {out.ir_version}), not the model's opset {target}: {'; '.join(reasons)}"


def same_outputs(reference: onnx.ModelProto, other: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> str | None:
    """None when both models give the same outputs in ONNX Runtime (within RTOL); else what differs
    (``"reference"``: the reference itself does not run)."""
    try:
        want = run_quietly(reference, inputs)
    except Exception as exc:
        log.info("cannot run the reference model in ONNX Runtime: %s", first_line(exc))
        return "reference"
    try:
        got = run_quietly(other, inputs)
    except Exception as exc:
        return f"it does not run in ONNX Runtime: {first_line(exc)}"
    for name, a in want.items():
        b = got.get(name)
        if b is None or np.shape(a) != np.shape(b):
            return f"output {name!r} is {None if b is None else list(np.shape(b))}, not {list(np.shape(a))}"
        a, b = np.asarray(a), np.asarray(b)
        if a.dtype.kind not in "fc":
            if not np.array_equal(a, b):
                return f"output {name!r} differs"
            continue
        if not np.array_equal(np.isfinite(a), np.isfinite(b)):
            return f"output {name!r} differs in its non-finite values"
        fin = np.isfinite(a)
        if fin.any():
            err = float(np.abs(a[fin].astype(np.float64) - b[fin].astype(np.float64)).max())
            scale = float(np.abs(a[fin].astype(np.float64)).max())
            if err > RTOL * scale + 1e-30:
                return f"output {name!r} differs by {err:.3g} at scale {scale:.3g}"
    return None


def run_quietly(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of one CPU run in ONNX Runtime, optimizations off, by name; a failure is an exception, not a
    log line on the terminal (these runs are probes: their failure is an answer)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(inputs)), strict=True))


def list_initializers_as_inputs(model: onnx.ModelProto) -> int:
    """IR version < 4: every initializer of the main graph is also a graph input, declared with its own type and
    shape (a pruned, renamed or new one too). Returns how many inputs were added or changed."""
    g = model.graph
    inputs = {vi.name: vi for vi in g.input}
    n = 0
    for t in g.initializer:
        vi = inputs.get(t.name)
        want = helper.make_tensor_value_info(t.name, t.data_type, [int(d) for d in t.dims])
        if vi is None:
            g.input.append(want)
            n += 1
        elif vi.type != want.type:
            vi.type.CopyFrom(want.type)
            n += 1
    return n


# -- upgrade ----------------------------------------------------------------------------------------------


def _convert_up(model: onnx.ModelProto, opset: int, where: str) -> onnx.ModelProto:
    """The converter's opset-13 copy; its failure names the op (one opset at a time to find it where needed)."""
    from onnx import version_converter

    try:
        return version_converter.convert_version(model, WORKING_OPSET)
    except Exception as exc:
        step, why = _failing_step(model, opset, exc)
    raise UnsupportedModelError(
        f"{where}: onnx.version_converter cannot upgrade the model from opset {opset} to {WORKING_OPSET}: {why}"
        + (f" (at opset {step} -> {step + 1})" if step is not None else "")
    )


def _failing_step(model: onnx.ModelProto, opset: int, exc: Exception) -> tuple[int | None, str]:
    """(the opset the conversion fails from, the op it fails at and why), converting one opset at a time."""
    from onnx import version_converter

    msg = _converter_message(exc)
    m = model
    for v in range(opset, WORKING_OPSET):
        try:
            m = version_converter.convert_version(m, v + 1)
        except Exception as step_exc:
            msg = _converter_message(step_exc)
            if re.search(r"\bfor \w+$", msg):  # "No Adapter To Version $9 for Foo" names the op itself
                return v, msg
            ops = _ops_changed_at(m, v + 1)
            return v, f"{', '.join(ops) or 'an op'}: {msg}"
    return None, msg


def _converter_message(exc: Exception) -> str:
    """The converter's message without its C++ file and assertion text."""
    text = first_line(exc)
    text = re.sub(r"^.*?Assertion `.*?` failed: ", "", text)
    text = re.sub(r"^/\S+:\d+: \w+: ", "", text)
    return text.replace("$", "").strip()


def _ops_changed_at(model: onnx.ModelProto, version: int) -> list[str]:
    """The model's nodes (``OpType 'name'``) whose op has a new definition at ``version``."""
    out: list[str] = []
    for g in iter_graphs(model.graph):
        for n in g.node:
            if n.domain not in DEFAULT_DOMAINS:
                continue
            try:
                since = onnx.defs.get_schema(n.op_type, version, "").since_version
            except Exception:
                since = None
            if since == version:
                out.append(f"{n.op_type} {n.name!r}" if n.name else n.op_type)
    return out


def _old_resize_semantics(model: onnx.ModelProto) -> int:
    """Every Resize (an Upsample or an opset-10 Resize before the upgrade) with the coordinates those had:
    ``asymmetric``, and ``floor`` for nearest. Returns how many were given them."""
    n = 0
    for g in iter_graphs(model.graph):
        for node in g.node:
            if node.op_type != "Resize" or node.domain not in DEFAULT_DOMAINS:
                continue
            have = {a.name for a in node.attribute}
            if "coordinate_transformation_mode" not in have:
                node.attribute.append(helper.make_attribute("coordinate_transformation_mode", "asymmetric"))
            mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"nearest")
            if mode in (b"nearest", "nearest") and "nearest_mode" not in have:
                node.attribute.append(helper.make_attribute("nearest_mode", "floor"))
            n += 1
    return n


def _node_bytes(model: onnx.ModelProto) -> list[bytes]:
    return [n.SerializeToString() for g in iter_graphs(model.graph) for n in g.node]


def _changed_nodes(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Nodes of ``after`` that ``before`` does not have as they are (``OpType 'name'``)."""
    old = set(_node_bytes(before))
    return [f"{n.op_type} {n.name!r}" if n.name else n.op_type for g in iter_graphs(after.graph) for n in g.node if n.SerializeToString() not in old]


# -- write back -------------------------------------------------------------------------------------------


def _convert_down(pruned: onnx.ModelProto, target: int, ir_version: int) -> tuple[onnx.ModelProto | None, str]:
    from onnx import version_converter

    try:
        down = version_converter.convert_version(pruned, target)
    except Exception as exc:
        return None, _converter_message(exc)
    down.ir_version = ir_version
    del down.graph.value_info[:]
    down.graph.value_info.extend(pruned.graph.value_info)
    if ir_version < 4:
        list_initializers_as_inputs(down)
    return down, ""


def _retagged(pruned: onnx.ModelProto, target: int, ir_version: int) -> onnx.ModelProto:
    """The pruned model's nodes as they are, importing opset ``target``."""
    m = onnx.ModelProto()
    m.CopyFrom(pruned)
    for o in m.opset_import:
        if o.domain in DEFAULT_DOMAINS:
            o.version = target
    m.ir_version = ir_version
    return m


def _acceptable(candidate: onnx.ModelProto, pruned: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> str | None:
    """None when ``candidate`` passes the full checker and computes what ``pruned`` computes; else why not."""
    try:
        onnx.checker.check_model(candidate, full_check=True)
    except Exception as exc:
        return f"the checker refuses it: {first_line(exc)}"
    why = same_outputs(pruned, candidate, inputs)
    if why == "reference":
        return "the pruned model does not run in ONNX Runtime to compare"
    return why


def _at_working_opset(pruned: onnx.ModelProto, origin: OpsetOrigin) -> onnx.ModelProto:
    """The pruned model as it is, with the IR version its opset needs (under IR < 4 initializers were graph inputs:
    from IR 4 on that makes them overridable inputs, so they are inputs no more)."""
    opset = onnx_opset(pruned) or WORKING_OPSET
    need = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    if pruned.ir_version >= need:
        return pruned
    m = onnx.ModelProto()
    m.CopyFrom(pruned)
    m.ir_version = need
    if origin.ir_version < 4:
        inits = {t.name for t in m.graph.initializer}
        keep = [vi for vi in m.graph.input if vi.name not in inits]
        del m.graph.input[:]
        m.graph.input.extend(keep)
    return m
