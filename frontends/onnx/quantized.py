"""Quantized ONNX models in the QDQ format: what prunec knows of them, and where it refuses.

A QDQ model keeps float ops and marks quantization with ``QuantizeLinear`` / ``DequantizeLinear`` pairs
(what ``onnxruntime.quantization.quantize_static(quant_format=QDQ)`` writes):

* **weights** are int8/uint8 (or int32 for biases) codes behind a ``DequantizeLinear`` with a per-tensor
  (scalar) or per-axis (1-D, ``axis``) scale and zero point. The dequantized weight is a static value
  the analysis scores like any weight; the rewrite slices the *codes* as the weight is sliced and the
  per-axis scale and zero point with them (:func:`slice_dequantized`), so the pruned model stays quantized;
  a weight update (OBS compensation, bias propagation) of such a weight is quantized again on its own scales
  and zero points (:func:`requantize`, from :func:`frontends.onnx.updates.with_updates`);
* **activations** go through ``QuantizeLinear`` -> ``DequantizeLinear``: element-wise, channels pass through
  (``op_spec("quantize")``); per-axis parameters are sliced with their channels.

Zeroing a removed channel in the masked reference means its *codes* hold the zero point (which dequantizes to
exactly 0), not 0. Verification (:func:`frontends.onnx.verify.VerifyONNX`) checks a model with activation
quantizers twice: exactly, with every activation quantizer bypassed in both models (the float tolerance), and
as quantized, the codes of every activation quantizer at their kept positions (:func:`compare_codes`): float
summation order can move a value that sits on a rounding boundary by one code, so codes may differ by one
step at a small share of positions, never more.

Refused, in one line naming the node (:func:`check_quantization`): the QOperator format (``QLinearConv``,
``ConvInteger``, ``QGemm``, ...), block-wise quantization (``block_size``), per-axis parameters that are not
1-D along the axis, codes of 4 bits or of a float8 type, and the com.microsoft quantize ops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

from frontends.errors import UnsupportedModelError, VerificationError
from frontends.onnx.model import OnnxModel
from frontends.onnx.proto import DEFAULT_DOMAINS, iter_graphs, node_attrs

if TYPE_CHECKING:
    from frontends.onnx.rewrite import OnnxRewrite

log = logging.getLogger(__name__)

__all__ = [
    "QDQ_OPS",
    "QOPERATOR_OPS",
    "CodeCheck",
    "activation_quantizers",
    "bypass_activation_quantizers",
    "check_quantization",
    "compare_codes",
    "dequantized_weight",
    "requantize",
    "slice_dequantized",
]

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# the QOperator format: ops that compute on codes (default domain, and ONNX Runtime's com.microsoft ones)
QOPERATOR_OPS = {
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QGemm", "QLinearAdd",
    "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSoftmax", "QLinearWhere", "QLinearReduceMean", "QAttention",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "DynamicQuantizeLSTM", "QEmbedLayerNormalization",
    "QuantizeBFP", "DequantizeBFP", "QOrderedMatMul", "QOrderedLayerNormalization", "GatherBlockQuantized",
}  # fmt: skip
CODE_TYPES = {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32}
MAX_FLIP_SHARE = 0.01  # codes of an activation that may differ by one step (values on a rounding boundary)


def check_quantization(model: onnx.ModelProto, where: str) -> None:
    """Refuse a quantization scheme prunec does not prune (the module docstring), naming the node."""
    inits = {t.name: t for g in iter_graphs(model.graph) for t in g.initializer}
    for g in iter_graphs(model.graph):
        for n in g.node:
            what = f"{where}: node {n.name or n.output[0]!r} ({n.op_type}"
            if n.op_type in QOPERATOR_OPS or (n.domain not in DEFAULT_DOMAINS and n.op_type.startswith(("QLinear", "Quantize", "Dequantize"))):
                raise UnsupportedModelError(
                    f"{what}{'' if n.domain in DEFAULT_DOMAINS else ', domain ' + n.domain}): this quantization format is "
                    "not supported; prunec prunes QDQ models (QuantizeLinear/DequantizeLinear around float ops, "
                    "quantize_static(quant_format=QuantFormat.QDQ))"
                )
            if n.op_type not in QDQ_OPS or n.domain not in DEFAULT_DOMAINS:
                continue
            block = int(node_attrs(n).get("block_size", 0))
            if block:
                raise UnsupportedModelError(f"{what}): block-wise quantization (block_size {block}) is not supported; per-tensor and per-axis are")
            for k in (1, 2):
                t = inits.get(n.input[k]) if len(n.input) > k and n.input[k] else None
                if t is not None and len(t.dims) > 1:
                    raise UnsupportedModelError(f"{what}): a quantization parameter of shape {list(t.dims)} (only scalars and 1-D per-axis ones are supported)")
            codes = inits.get(n.input[0] if n.op_type == "DequantizeLinear" else "")
            zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            for t in (codes, zp):
                if t is not None and t.data_type not in CODE_TYPES:
                    raise UnsupportedModelError(
                        f"{what}): codes of type {TensorProto.DataType.Name(t.data_type)} are not supported (8-, 16- and 32-bit integers are)"
                    )


# -- rewrite -----------------------------------------------------------------------------------------------------


def slice_dequantized(rw: OnnxRewrite, name: str, want: np.ndarray) -> bool:
    """``name`` is a weight computed by a ``DequantizeLinear`` of constants and ``want`` its pruned value: slice its
    codes (and its per-axis scale and zero point) as the weight was sliced, so it stays quantized. A value that is
    not the original sliced (changed by a criterion's compensation) is quantized again with the kept channels'
    scales (a changed value is one the sliced codes do not dequantize to). False where ``name`` is not such a weight."""
    p = rw.producer.get(name)
    if p is None:
        return False
    n = rw.nodes[p]
    if n.op_type != "DequantizeLinear" or n.domain not in DEFAULT_DOMAINS or name not in rw.om.static:
        return False
    ins = (list(n.input) + ["", ""])[:3]  # codes, scale, zero point (optional)
    if any(x and x not in rw.om.static for x in ins):
        return False
    orig = rw.om.static[name]  # the value the rewrite slices (a compensation may have changed it)
    keep = [rw.keep_mask(name, d) for d in range(orig.ndim)]
    codes = _take(rw.om.static[ins[0]], keep)
    axis = int(node_attrs(n).get("axis", 1)) % max(orig.ndim, 1)
    along = keep[axis] if orig.ndim and keep[axis] is not None and not keep[axis].all() else None
    params: list[np.ndarray | None] = []
    sliced: list[int] = []
    for k, x in enumerate(ins[1:], start=1):
        v = rw.om.static[x] if x else None
        if v is not None and along is not None and v.ndim == 1 and v.size == orig.shape[axis]:  # per axis, pruned
            v = v[np.flatnonzero(along)]
            sliced.append(k)
        params.append(v)
    scale, zp = params
    assert scale is not None
    if not np.allclose(_dequantize(codes, scale, zp, axis), want, rtol=1e-6, atol=0.0):  # new values (compensated):
        codes = _quantize(want, scale, zp, axis, rw.om.static[ins[0]].dtype)  # quantized again on the kept grid
        rw.result.notes.append(f"{name}: changed weights quantized again ({n.name or n.op_type})")
    rw.set_arg(p, 0, codes)
    for k in sliced:
        v = params[k - 1]
        assert v is not None
        rw.set_arg(p, k, v)
    rw.env[name] = np.asarray(want)
    return True


def dequantized_weight(n: onnx.NodeProto, static: dict[str, np.ndarray]) -> bool:
    """Whether ``n`` is a default-domain ``DequantizeLinear`` of constant integer codes with constant parameters
    (a quantized weight or bias, whose value a weight update can change by quantizing it again)."""
    if n.op_type != "DequantizeLinear" or n.domain not in DEFAULT_DOMAINS:
        return False
    ins = [x for x in n.input if x]
    if not ins or any(x not in static for x in ins) or int(node_attrs(n).get("block_size", 0)):
        return False
    return static[ins[0]].dtype.kind in "iu"


def requantize(n: onnx.NodeProto, static: dict[str, np.ndarray], new: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``new`` (the full-size new value of the weight ``n`` dequantizes) as codes on ``n``'s own scales and zero
    points (round half to even, saturating), the value those codes dequantize to, and how many saturated."""
    codes0 = static[n.input[0]]
    scale = static[n.input[1]]
    zp = static[n.input[2]] if len(n.input) > 2 and n.input[2] else None
    axis = int(node_attrs(n).get("axis", 1)) % max(codes0.ndim, 1)
    new = np.asarray(new, dtype=np.float32).reshape(codes0.shape)
    codes = _quantize(new, scale, zp, axis, codes0.dtype)
    value = _dequantize(codes, scale, zp, axis).astype(np.float32)
    size = codes0.shape[axis] if codes0.ndim else 1
    step = np.abs(_per_axis(scale, codes0.ndim, axis, size)).astype(np.float32)
    saturated = int(np.count_nonzero(np.abs(value - new) > step / 2 + 1e-6 * np.abs(new)))
    return codes, value, saturated


def _take(arr: np.ndarray, keep: list[np.ndarray | None]) -> np.ndarray:
    for d, k in enumerate(keep):
        if k is not None and not k.all():
            arr = np.take(arr, np.flatnonzero(k), axis=d)
    return arr


def _per_axis(v: np.ndarray, ndim: int, axis: int, size: int) -> np.ndarray:
    """A scale or zero point laid along ``axis`` where it is per axis (else as it is)."""
    if v.ndim == 1 and ndim and v.size == size:
        shape = [1] * ndim
        shape[axis] = -1
        return v.reshape(shape)
    return v


def _dequantize(codes: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear of ``codes``."""
    size = codes.shape[axis] if codes.ndim else 1
    z = 0.0 if zp is None else _per_axis(zp, codes.ndim, axis, size).astype(np.float32)
    return (codes.astype(np.float32) - z) * _per_axis(scale, codes.ndim, axis, size)


def _quantize(w: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, axis: int, dtype: np.dtype) -> np.ndarray:
    """ONNX QuantizeLinear of ``w`` (round half to even, saturate) into ``dtype``."""
    size = w.shape[axis] if w.ndim else 1
    z = 0 if zp is None else _per_axis(zp, w.ndim, axis, size).astype(np.int64)
    info = np.iinfo(dtype)
    return np.clip(np.rint(w / _per_axis(scale, w.ndim, axis, size)) + z, info.min, info.max).astype(dtype)


# -- verification ------------------------------------------------------------------------------------------------


def activation_quantizers(model: onnx.ModelProto, static: set[str]) -> list[int]:
    """The top-level ``QuantizeLinear`` nodes of activations (input not static), by index."""
    return [i for i, n in enumerate(model.graph.node) if n.op_type == "QuantizeLinear" and n.domain in DEFAULT_DOMAINS and n.input[0] not in static]


def _bypassed(model: onnx.ModelProto, quantizers: list[int], codes: set[str]) -> onnx.ModelProto:
    """A copy in which each activation quantizer, and each ``DequantizeLinear`` of its codes, is an ``Identity``
    (same node positions, names and value names; the codes are then float)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    qs = set(quantizers)
    for i, n in enumerate(m.graph.node):
        if i in qs or (n.op_type == "DequantizeLinear" and n.input[0] in codes):
            x = n.input[0]
            del n.input[:]
            n.input.append(x)
            del n.attribute[:]
            n.op_type, n.domain = "Identity", ""
    for vi in m.graph.value_info:
        if vi.name in codes:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    return m


def bypass_activation_quantizers(om: OnnxModel, pruned_model: onnx.ModelProto) -> tuple[OnnxModel, onnx.ModelProto, list[str]] | None:
    """(the loaded model, the pruned model) with every activation quantizer bypassed, and the codes values;
    None where the model has no activation quantizer. Codes read by anything but a ``DequantizeLinear`` (or a
    graph output) are left quantized: None then too."""
    quantizers = activation_quantizers(om.model, set(om.static))
    if not quantizers:
        return None
    g = om.model.graph
    codes = {g.node[i].output[0] for i in quantizers}
    readers = [n for n in g.node if any(x in codes for x in n.input)]
    if any(n.op_type != "DequantizeLinear" for n in readers) or any(o.name in codes for o in g.output):
        return None
    types = dict(om.elem_types)
    for i in quantizers:
        types[g.node[i].output[0]] = om.elem_types.get(g.node[i].input[0], TensorProto.FLOAT)
    new = replace(om, model=_bypassed(om.model, quantizers, codes), elem_types=types)
    pq = [i for i, n in enumerate(pruned_model.graph.node) if n.op_type == "QuantizeLinear" and n.output[0] in codes]
    return new, _bypassed(pruned_model, pq, codes), sorted(codes)


@dataclass
class CodeCheck:
    """The codes of the activation quantizers compared at their kept positions."""

    tensors: int  # quantized activations compared
    positions: int  # codes compared
    flips: int  # codes that differ (by one step)
    max_step: int  # the largest difference in steps
    worst: str  # the quantized activation with the largest share of differing codes
    worst_share: float

    @property
    def passed(self) -> bool:
        return self.max_step <= 1 and self.worst_share <= MAX_FLIP_SHARE

    def describe(self) -> str:
        return (
            f"quantized activations: {self.tensors} code tensors compared at their kept positions, {self.flips} of "
            f"{self.positions} codes differ (largest difference {self.max_step} step, worst {self.worst!r} at "
            f"{self.worst_share:.2%}; at most 1 step at {MAX_FLIP_SHARE:.0%} allowed: values on a rounding boundary); "
            "exact check with the activation quantizers bypassed in both models"
        )


def compare_codes(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], kept: dict[str, list[np.ndarray | None]]) -> CodeCheck:
    """Codes of the masked original (at the kept positions) against the pruned model's."""
    positions = flips = max_step = 0
    worst, worst_share = "", 0.0
    for name, k in kept.items():
        r = ref[name]
        for d, ix in enumerate(k):
            if ix is not None:
                r = np.take(r, ix, axis=d)
        m = got[name]
        if r.shape != m.shape:
            raise VerificationError(f"{name}: the pruned ONNX model gives codes of shape {m.shape}, the masked original's kept positions {r.shape}")
        diff = np.abs(r.astype(np.int64) - m.astype(np.int64))
        nz = int(np.count_nonzero(diff))
        positions += diff.size
        flips += nz
        max_step = max(max_step, int(diff.max()) if diff.size else 0)
        share = nz / diff.size if diff.size else 0.0
        if share >= worst_share:
            worst, worst_share = name, share
    return CodeCheck(len(kept), positions, flips, max_step, worst, worst_share)
