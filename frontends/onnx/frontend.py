"""The ONNX frontend as one sequence of named steps: load -> example inputs -> working copy (an older opset
upgraded) -> shapes -> static values -> lowering."""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

import numpy as np
import onnx

from frontends.onnx import large
from frontends.onnx.evaluate import evaluate_static, static_candidates
from frontends.onnx.inputs import make_example_inputs
from frontends.onnx.load import MIN_OPSET, load_checked, working_copy
from frontends.onnx.lower import lower_graph
from frontends.onnx.model import OnnxModel
from frontends.onnx.opsets import OpsetOrigin, upgrade
from frontends.onnx.proto import onnx_opset
from frontends.onnx.quantized import check_quantization
from frontends.onnx.shapes import add_value_shapes, infer_shapes, shapes_from_ort, unshaped_values

log = logging.getLogger(__name__)

__all__ = ["load_onnx", "lower_onnx"]


def load_onnx(model: str | os.PathLike | onnx.ModelProto, example_inputs: Any = None, seed: int = 0) -> OnnxModel:
    """Load, validate and lower an ONNX model (a path or a ModelProto); what is lowered is a private copy where
    anything is to change (stale ``value_info``, an opset below 13: :func:`frontends.onnx.load.working_copy`)."""
    checked = load_checked(model)
    proto, path, where = checked.proto, checked.path, checked.where
    inputs = make_example_inputs(proto, example_inputs, where, seed)
    work, notes = working_copy(checked, inputs)
    origin = None
    if (onnx_opset(work) or MIN_OPSET) < MIN_OPSET:
        work, origin, note = upgrade(work, inputs, where)
        notes.append(note)
    om = lower_onnx(work, inputs, path, origin, notes)
    tokens = large.tokens(proto) if path is not None else []  # a model given in memory: its placeholders are not ours
    if tokens:  # initializers this load mapped from the data file: the mappings go with the loaded model
        weakref.finalize(om, large.release, tokens)
    return om


def lower_onnx(
    proto: onnx.ModelProto,
    inputs: dict[str, np.ndarray],
    path: str | None = None,
    origin: OpsetOrigin | None = None,
    notes: list[str] | None = None,
) -> OnnxModel:
    """Shapes, static values and the channel graph of a loaded, validated model (at opset 13 or later; ``origin``:
    the opset it was upgraded from)."""
    where = path or proto.graph.name or "model"
    notes = list(notes or [])
    check_quantization(proto, where)
    shapes, types = infer_shapes(proto, inputs)
    candidates, _ = static_candidates(proto)
    missing = unshaped_values(proto, shapes, set(candidates))
    if missing:
        notes.append(shapes_from_ort(proto, inputs, missing, shapes, types, where))
    static, done = evaluate_static(proto, candidates, shapes.get)
    # a node the evaluator could not run is dynamic, and so is every static node after it
    _, derived = static_candidates(proto)
    derived &= set(static)
    add_value_shapes(static, shapes, types)
    lowered = lower_graph(proto, shapes, types, static, done, derived, where)
    return OnnxModel(
        method="onnx shape inference" + (" + onnxruntime" if missing else ""),
        model=proto,
        graph=lowered.graph,
        path=path,
        inputs=dict(inputs),
        shapes=shapes,
        elem_types=types,
        static=static,
        static_nodes=done,
        shape_derived=derived,
        args=lowered.args,
        node_ops=lowered.node_ops,
        opset=onnx_opset(proto) or MIN_OPSET,
        notes=notes,
        origin=origin,
    )
