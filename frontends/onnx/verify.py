"""Verification pass (ONNX): the pruned model against the masked original, in ONNX Runtime.

The reference (:func:`masked_reference`) is a copy of the *original* model in which every
tensor value with removed channels is passed through ``Where(keep_mask, value, 0)`` right
after its producer (so inf/nan of a removed channel never leak). A node whose op has ONNX
reference semantics (``op_spec(kind).reference_semantics("onnx")``) is replaced, in the
reference only, by what they give where zeroing is not the reference: a LayerNormalization
(or a one-instance InstanceNormalization, lowered as layer norm) whose normalized dims lose
channels computes its statistics over the kept channels (ReduceSum with the mask), as the
pruned model does. Both models run in ONNX Runtime on the CPU provider with graph
optimizations off, in the model's own precision (float32 for exported models), and must agree
within ``atol + rtol * max|reference|`` on every output (``rtol`` at least ten times the output
dtype's epsilon: 1e-2 for float16).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from frontends.adapter import VerifyResult
from frontends.errors import InternalError, UnsupportedModelError, VerificationError
from frontends.graph import Op
from frontends.onnx.model import OnnxModel
from frontends.onnx.proto import UniqueNames, node_attrs
from frontends.onnx.runtime import run_ort
from passes.ops import lookup, op_spec

if TYPE_CHECKING:
    from passes.channel_analysis import AnalysisResult

log = logging.getLogger(__name__)

__all__ = ["VerifyONNX", "masked_reference", "MaskedReference", "ReferenceHandler"]


class MaskedReference:
    """The reference model being built: what an ONNX reference-semantics handler reads, and what it may add.

    ``keep_mask(value, dims)`` is a value's boolean keep mask, broadcastable to it (None: nothing removed
    there); ``const(base, arr)`` adds an initializer with a fresh name; ``names`` gives fresh value names.
    """

    def __init__(self, om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray, model: onnx.ModelProto) -> None:
        self.om, self.analysis, self.pruned = om, analysis, pruned
        self.model = model
        self.outputs = {o.name for o in model.graph.output}
        self.names = UniqueNames(model.graph)
        self._zeros: dict[int, str] = {}

    def keep_mask(self, value: str, dims: range | None = None) -> np.ndarray | None:
        """Bool keep mask of a value over ``dims`` (all its dims by default), broadcastable to it (None: nothing removed)."""
        analysis = self.analysis
        lab = analysis.labels.get(value)
        if not lab:
            return None
        mask = None
        for d, dl in enumerate(lab):
            if dl is None or (dims is not None and d not in dims):
                continue
            keep = ~self.pruned[analysis.atom_class[dl]]
            if keep.all():
                continue
            shape = [1] * len(lab)
            shape[d] = len(keep)
            km = keep.reshape(shape)
            mask = km if mask is None else (mask & km)
        return mask

    def const(self, base: str, arr: np.ndarray) -> str:
        """A new initializer holding ``arr``; returns its name."""
        name = self.names.fresh(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(arr, order="C"), name))
        return name

    def zero(self, elem: int) -> str:
        """A scalar zero of ONNX element type ``elem`` (one per type)."""
        if elem not in self._zeros:
            name = self.names.fresh(f"prunec_zero_{elem}")
            self.model.graph.initializer.append(helper.make_tensor(name, elem, [], [0] if elem != TensorProto.BOOL else [False]))
            self._zeros[elem] = name
        return self._zeros[elem]


# (reference, op, node) -> the nodes that replace ``node`` in the reference, None where the node itself is it
ReferenceHandler = Callable[[MaskedReference, Op, onnx.NodeProto], "list[onnx.NodeProto] | None"]


def masked_reference(om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray) -> onnx.ModelProto:
    """The original model with every removed channel zeroed after its producer."""
    m = onnx.ModelProto()
    m.CopyFrom(om.model)
    g = m.graph
    ref = MaskedReference(om, analysis, pruned, m)
    ops: dict[int, list[Op]] = defaultdict(list)
    for op in analysis.graph.ops.values():
        if isinstance(op.source, int):
            ops[op.source].append(op)
    new_nodes: list[onnx.NodeProto] = []
    for i, n in enumerate(g.node):
        new_nodes.extend(_reference_nodes(ref, ops.get(i, []), n))
        _mask_outputs(ref, n, new_nodes)
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]
    return m


def _reference_nodes(ref: MaskedReference, ops: list[Op], n: onnx.NodeProto) -> list[onnx.NodeProto]:
    """The node's ONNX reference semantics where its op has them (and they apply), else a copy of the node.

    Reference semantics are an op's: a node lowered to several ops (Gemm with a bias, a Slice over two axes)
    has none of its own, and one of whose ops has them is an error rather than a guess.
    """
    handlers = [(op, h) for op in ops if (h := _handler(op)) is not None]
    if handlers and len(ops) > 1:
        raise InternalError(f"{n.name or n.op_type}: reference semantics for one of the {len(ops)} ops it lowers to")
    if handlers:
        op, handler = handlers[0]
        replaced = handler(ref, op, n)
        if replaced is not None:
            return replaced
    copy_n = onnx.NodeProto()
    copy_n.CopyFrom(n)
    return [copy_n]


def _handler(op: Op) -> ReferenceHandler | None:
    spec = lookup(op)
    return spec.reference.get("onnx") if spec is not None else None


def _mask_outputs(ref: MaskedReference, n: onnx.NodeProto, new_nodes: list[onnx.NodeProto]) -> None:
    """Each tensor output of ``n`` with removed channels goes through Where(keep, value, 0) (And for booleans)."""
    graph = ref.analysis.graph
    prod = new_nodes[-1]  # the producer (or the last node of its replacement)
    for v in n.output:
        val = graph.values.get(v)
        if not v or val is None or val.is_const or not val.is_tensor or v in ref.outputs:
            continue
        mask = ref.keep_mask(v)
        if mask is None:
            continue
        elem = ref.om.elem_types.get(v)
        if not elem:
            raise VerificationError(f"cannot build the masked reference: the element type of {v!r} is unknown")
        raw = ref.names.fresh(f"{v}__unmasked")
        for k, o in enumerate(prod.output):
            if o == v:
                prod.output[k] = raw
        keep, name = ref.const(f"{v}__keep", mask), ref.names.fresh(f"{v}__mask")
        if elem == TensorProto.BOOL:  # ONNX Runtime has no boolean Where
            new_nodes.append(helper.make_node("And", [raw, keep], [v], name=name))
        else:
            new_nodes.append(helper.make_node("Where", [keep, raw, ref.zero(elem)], [v], name=name))


@op_spec("layer_norm").reference_semantics("onnx")
def _layer_norm_over_kept(ref: MaskedReference, op: Op, n: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """LayerNormalization (or InstanceNormalization of one instance, lowered as layer norm) whose normalized dims
    lose channels: mean and variance over the kept channels only, then the node's own scale and bias."""
    x = op.input(0)
    rank = len(ref.analysis.graph.shape(x))
    k = int(op.attrs["ndim"])
    dims = range(rank - k, rank)
    mask = ref.keep_mask(x, dims)
    if mask is None:
        return None
    return _normalize_over_kept(ref, n, mask, dims)


def _normalize_over_kept(ref: MaskedReference, n: onnx.NodeProto, mask: np.ndarray, dims: range) -> list[onnx.NodeProto]:
    """``n`` (a normalization with input, scale, bias and ``epsilon``) with its statistics over ``mask`` in ``dims``."""
    om, names, const = ref.om, ref.names, ref.const
    x, y = n.input[0], n.output[0]
    scale = n.input[1] if len(n.input) > 1 and n.input[1] else None
    bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
    eps = float(node_attrs(n).get("epsilon", 1e-5))
    rank = len(om.shapes[x])
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
        ref = _run_reference(om, masked_reference(om, analysis, pruned), feeds)
        got = _run_pruned(model, feeds)
        names = [o.name for o in om.model.graph.output]
        _check_output_shapes(names, ref, got)
        err, scale, dtype = _output_error(names, ref, got)
        tol = self.atol + max(self.rtol, 10 * _eps(dtype)) * scale  # float16 rounds 8000x coarser than float32
        res = VerifyResult(bool(err <= tol), err, scale, tol, f"{dtype} (onnxruntime)")
        if not res.passed:
            raise VerificationError(
                f"pruned ONNX model differs from the original with removed channels zeroed: max abs error "
                f"{err:.3g} > tolerance {tol:.3g} ({res.dtype})",
                err,
            )
        return res


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _run_reference(om: OnnxModel, ref_model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The masked original's outputs. Where it does not run: UnsupportedModelError if the input model itself does
    not run in ONNX Runtime (nothing can verify it: the user's, exit 2), else VerificationError (prunec's)."""
    try:
        return run_ort(ref_model, feeds, optimize=False)
    except Exception as exc:
        first = _first_line(exc)
        try:
            run_ort(om.model, feeds, optimize=False)
        except Exception:
            raise UnsupportedModelError(
                f"{om.name}: cannot verify: ONNX Runtime cannot run the model ({first}); prune without verification "
                "(--no-verify, verify=False) to accept the result unchecked"
            ) from None
        raise VerificationError(f"cannot run the masked original in ONNX Runtime: {first}") from None


def _run_pruned(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The pruned model's outputs; VerificationError where it does not run."""
    try:
        return run_ort(model, feeds, optimize=False)
    except Exception as exc:
        raise VerificationError(f"the pruned ONNX model does not run in ONNX Runtime: {_first_line(exc)}") from None


def _check_output_shapes(names: list[str], ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> None:
    """Raises where an output of the pruned model is missing or differs from the original's in shape."""
    bad = [n for n in names if n not in got or np.shape(got[n]) != np.shape(ref[n])]
    if bad:
        raise VerificationError(
            f"pruned model outputs {[(n, np.shape(got[n]) if n in got else ()) for n in bad]} but the original gives {[(n, np.shape(ref[n])) for n in bad]}"
        )


def _output_error(
    names: list[str], ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
) -> tuple[float, float, str]:
    """(max |ref - got|, max |ref|) over the finite positions of the outputs, in float64, and the dtype of the last
    float output ("float32" without one). A differing non-float output, or inf/nan that differ, count inf."""
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
    return err, scale, dtype
