"""Running ONNX models in ONNX Runtime: execution providers, sessions, one run for values by name."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from frontends.onnx.large import FedSession, session_parts

log = logging.getLogger(__name__)

__all__ = ["ort_session", "ort_values", "run_ort"]


def _providers(device: str = "cpu") -> list[str]:
    """Execution providers for ``device`` ("cpu", "cuda" or "auto"); the CPU provider always comes last."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    import onnxruntime as ort

    avail = ort.get_available_providers()
    out = []
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in avail and _cuda_present():
        out.append("CUDAExecutionProvider")
    return out + ["CPUExecutionProvider"]


def _cuda_present() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a dependency
        return False


def ort_session(model: onnx.ModelProto, optimize: bool = True, device: str = "cpu", arrays: Mapping[str, np.ndarray] | None = None) -> Any:
    """An ONNX Runtime session for an in-memory model (CPU unless ``device`` asks for CUDA); ``arrays``: the data of a
    light copy's initializers (:mod:`frontends.onnx.large`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    blob, fed = session_parts(model, arrays)  # over 2 GB: the large initializers fed as inputs, read in place
    sess = ort.InferenceSession(blob, so, providers=_providers(device))
    return FedSession(sess, fed) if fed else sess


def run_ort(
    model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], optimize: bool = True, arrays: Mapping[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Every output of one CPU run, by name (``arrays``: as :func:`ort_session`)."""
    sess = ort_session(model, optimize=optimize, arrays=arrays)
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, dict(inputs))
    return dict(zip(names, outs, strict=True))


def ort_values(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], names: Sequence[str], types: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Run a copy of the model that lists ``names`` as extra outputs; their values by name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for n in names:
        if n not in present:
            m.graph.output.append(helper.make_tensor_value_info(n, types.get(n, 0), None) if types.get(n) else helper.make_empty_tensor_value_info(n))
    return run_ort(m, inputs)
