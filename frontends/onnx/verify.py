"""Verification pass (ONNX): the pruned model against the masked original, in ONNX Runtime.

The reference is a copy of the *original* model in which every tensor value with
removed channels is passed through ``Where(keep_mask, value, 0)`` right after its
producer (so inf/nan of a removed channel never leak). A LayerNormalization whose
normalized dims lose channels is replaced, in the reference only, by the same
computation with statistics over the kept channels (ReduceSum with the mask), as
the pruned model computes it. Both models run in ONNX Runtime on the CPU provider
with graph optimizations off, in the model's own precision (float32 for exported
models), and must agree within ``atol + rtol * max|reference|`` on every output
(``rtol`` at least ten times the output dtype's epsilon: 1e-2 for float16).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from frontends.errors import UnsupportedModelError, VerificationError
from frontends.onnx import OnnxModel, UniqueNames, node_attrs, run_ort
from frontends.torch import VerifyResult
from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["VerifyONNX", "masked_reference"]


def _mask(analysis: AnalysisResult, value: str, pruned: np.ndarray, dims: range | None = None) -> np.ndarray | None:
    """Bool keep mask of a value, broadcastable to it (None: nothing removed)."""
    lab = analysis.labels.get(value)
    if not lab:
        return None
    mask = None
    for d, dl in enumerate(lab):
        if dl is None or (dims is not None and d not in dims):
            continue
        keep = ~pruned[analysis.atom_class[dl]]
        if keep.all():
            continue
        shape = [1] * len(lab)
        shape[d] = len(keep)
        km = keep.reshape(shape)
        mask = km if mask is None else (mask & km)
    return mask


def masked_reference(om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray) -> onnx.ModelProto:
    """The original model with every removed channel zeroed after its producer."""
    m = onnx.ModelProto()
    m.CopyFrom(om.model)
    g = m.graph
    names = UniqueNames(g)
    graph = analysis.graph
    outputs = {o.name for o in g.output}
    zeros: dict[int, str] = {}

    def const(base: str, arr: np.ndarray) -> str:
        name = names.fresh(base)
        g.initializer.append(numpy_helper.from_array(np.asarray(arr, order="C"), name))
        return name

    def zero(elem: int) -> str:
        if elem not in zeros:
            name = names.fresh(f"prunec_zero_{elem}")
            g.initializer.append(helper.make_tensor(name, elem, [], [0] if elem != TensorProto.BOOL else [False]))
            zeros[elem] = name
        return zeros[elem]

    ln_nodes: dict[int, int] = {}
    for op in graph.ops.values():
        if op.kind == "layer_norm" and isinstance(op.source, int):
            x = op.inputs[0]
            rank = len(graph.shape(x))
            k = int(op.attrs["ndim"])
            if _mask(analysis, x, pruned, range(rank - k, rank)) is not None:
                ln_nodes[op.source] = k
    new_nodes: list[onnx.NodeProto] = []
    for i, n in enumerate(g.node):
        if i in ln_nodes:
            new_nodes.extend(_masked_layer_norm(n, ln_nodes[i], om, analysis, pruned, const, names))
        else:
            copy_n = onnx.NodeProto()
            copy_n.CopyFrom(n)
            new_nodes.append(copy_n)
        prod = new_nodes[-1]  # the producer (or the decomposition's last node)
        for v in n.output:
            val = graph.values.get(v)
            if not v or val is None or val.is_const or not val.is_tensor or v in outputs:
                continue
            mask = _mask(analysis, v, pruned)
            if mask is None:
                continue
            elem = om.elem_types.get(v)
            if not elem:
                raise VerificationError(f"cannot build the masked reference: the element type of {v!r} is unknown")
            raw = names.fresh(f"{v}__unmasked")
            for k, o in enumerate(prod.output):
                if o == v:
                    prod.output[k] = raw
            keep, name = const(f"{v}__keep", mask), names.fresh(f"{v}__mask")
            if elem == TensorProto.BOOL:  # ONNX Runtime has no boolean Where
                new_nodes.append(helper.make_node("And", [raw, keep], [v], name=name))
            else:
                new_nodes.append(helper.make_node("Where", [keep, raw, zero(elem)], [v], name=name))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return m


def _masked_layer_norm(
    n: onnx.NodeProto, k: int, om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray, const, names: UniqueNames
) -> list[onnx.NodeProto]:
    """LayerNormalization with mean and variance over the kept channels only."""
    x, y = n.input[0], n.output[0]
    scale = n.input[1] if len(n.input) > 1 and n.input[1] else None
    bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    eps = float(node_attrs(n).get("epsilon", 1e-5))
    rank = len(om.shapes[x])
    dims = range(rank - k, rank)
    mask = _mask(analysis, x, pruned, dims)
    full = np.broadcast_to(mask, tuple(1 if d not in dims else om.shapes[x][d] for d in range(rank)))
    count = float(full.sum())
    elem = om.elem_types.get(x, TensorProto.FLOAT)
    base = n.name or y
    tmp: dict[str, str] = {}

    def t(s: str) -> str:
        if s not in tmp:
            tmp[s] = names.fresh(f"{base}__ln_{s}")
        return tmp[s]

    nodes: list[onnx.NodeProto] = []
    xf = x
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], [t("xf")], to=TensorProto.FLOAT))
        xf = t("xf")
    mf = const(t("mask"), mask.astype(np.float32))
    axes = const(t("axes"), np.array(list(dims), dtype=np.int64))
    cnt = const(t("count"), np.array(count, dtype=np.float32))
    epsc = const(t("eps"), np.array(eps, dtype=np.float32))
    nodes += [
        helper.make_node("Mul", [xf, mf], [t("xm")]),
        helper.make_node("ReduceSum", [t("xm"), axes], [t("sum")], keepdims=1),
        helper.make_node("Div", [t("sum"), cnt], [t("mean")]),
        helper.make_node("Sub", [xf, t("mean")], [t("d")]),
        helper.make_node("Mul", [t("d"), mf], [t("dm")]),
        helper.make_node("Mul", [t("dm"), t("dm")], [t("sq")]),
        helper.make_node("ReduceSum", [t("sq"), axes], [t("vs")], keepdims=1),
        helper.make_node("Div", [t("vs"), cnt], [t("var")]),
        helper.make_node("Add", [t("var"), epsc], [t("ve")]),
        helper.make_node("Sqrt", [t("ve")], [t("sd")]),
        helper.make_node("Div", [t("d"), t("sd")], [t("yn")]),
    ]
    cur = t("yn")
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [cur], [t("yc")], to=elem))
        cur = t("yc")
    if scale is not None:
        nodes.append(helper.make_node("Mul", [cur, scale], [t("ys") if bias else y]))
        cur = t("ys")
    if bias is not None:
        nodes.append(helper.make_node("Add", [cur, bias], [y]))
    if scale is None and bias is None:
        nodes.append(helper.make_node("Identity", [cur], [y]))
    nodes[-1].name = n.name
    return nodes


def _eps(dtype: str) -> float:
    try:
        return float(np.finfo(np.dtype(dtype)).eps)
    except (TypeError, ValueError):
        return 0.0


class VerifyONNX:
    """``call(loaded, analysis, pruned, pruned_model) -> VerifyResult``; raises on mismatch."""

    def __init__(self, rtol: float = 1e-4, atol: float = 0.0) -> None:
        self.rtol, self.atol = rtol, atol

    def call(
        self,
        om: OnnxModel,
        analysis: AnalysisResult,
        pruned: np.ndarray,
        model: onnx.ModelProto,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> VerifyResult:
        feeds = dict(om.inputs if inputs is None else inputs)
        ref_model = masked_reference(om, analysis, pruned)
        try:
            ref = run_ort(ref_model, feeds, optimize=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            try:  # the input itself does not run in ONNX Runtime: nothing can verify it (the user's, exit 2)
                run_ort(om.model, feeds, optimize=False)
            except Exception:
                raise UnsupportedModelError(
                    f"{om.name}: cannot verify: ONNX Runtime cannot run the model ({first}); prune without verification "
                    "(--no-verify, verify=False) to accept the result unchecked"
                ) from None
            raise VerificationError(f"cannot run the masked original in ONNX Runtime: {first}") from None
        try:
            got = run_ort(model, feeds, optimize=False)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VerificationError(f"the pruned ONNX model does not run in ONNX Runtime: {first}") from None
        names = [o.name for o in om.model.graph.output]
        bad = [n for n in names if n not in got or np.shape(got[n]) != np.shape(ref[n])]
        if bad:
            raise VerificationError(
                f"pruned model outputs {[(n, np.shape(got.get(n))) for n in bad]} but the original gives {[(n, np.shape(ref[n])) for n in bad]}"
            )
        err, scale = 0.0, 0.0
        dtype = "float32"
        for n in names:
            a, b = np.asarray(ref[n]), np.asarray(got[n])
            if a.size == 0:
                continue
            if a.dtype.kind != "f":
                err = max(err, float((a != b).any()) * math.inf)
                continue
            dtype = str(a.dtype)
            fa, fb = np.isfinite(a), np.isfinite(b)
            if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb]):
                err = math.inf
            a64, b64 = a[fa & fb].astype(np.float64), b[fa & fb].astype(np.float64)
            if a64.size:
                err = max(err, float(np.abs(a64 - b64).max()))
                scale = max(scale, float(np.abs(a64).max()))
        tol = self.atol + max(self.rtol, 10 * _eps(dtype)) * scale  # float16 rounds 8000x coarser than float32
        res = VerifyResult(bool(err <= tol), err, scale, tol, f"{dtype} (onnxruntime)")
        if not res.passed:
            raise VerificationError(
                f"pruned ONNX model differs from the original with removed channels zeroed: max abs error "
                f"{err:.3g} > tolerance {tol:.3g} ({res.dtype})",
                err,
            )
        return res
