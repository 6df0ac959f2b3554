"""Verification pass (ONNX): the pruned model against the masked original, in ONNX Runtime.

The reference (:func:`masked_reference`) is a copy of the *original* model in which every
tensor value with removed channels is passed through ``Where(keep_mask, value, 0)`` right
after its producer (so inf/nan of a removed channel never leak). A node whose op has ONNX
reference semantics (``op_spec(kind).reference_semantics("onnx")``) is replaced, in the
reference only, by what they give where zeroing is not the reference: a LayerNormalization
(or a one-instance InstanceNormalization, lowered as layer norm) whose normalized dims lose
channels computes its statistics over the kept channels (ReduceSum with the mask), as the
pruned model does. Both models run in ONNX Runtime on the CPU provider with graph
optimizations off, in the model's own precision (float32 for exported models), on private
copies that list the intermediate values as extra graph outputs; every output and every
intermediate tensor both compute is compared at its kept positions, each within its own
tolerance (:class:`VerifyONNX` gives the rule, :func:`_intermediates` what is skipped).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from frontends.adapter import VerifyResult
from frontends.errors import InternalError, UnsupportedModelError, VerificationError
from frontends.graph import Op
from frontends.onnx.large import is_large, light_copy
from frontends.onnx.model import OnnxModel
from frontends.onnx.proto import UniqueNames, implicit_inputs, node_attrs
from frontends.onnx.quantized import CodeCheck, bypass_activation_quantizers, compare_codes
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
    """The original model with every removed channel zeroed after its producer. Over 2 GB it is a light copy
    (:func:`frontends.onnx.large.light_copy`): run it with ``arrays=om.static``."""
    m = onnx.ModelProto()
    m.CopyFrom(light_copy(om.model)[0] if is_large(om.model) else om.model)  # over 2 GB: weights from om.static
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
            new_nodes.append(helper.make_node("Where", [keep, raw, _zero_of(ref, n, elem)], [v], name=name))


def _zero_of(ref: MaskedReference, n: onnx.NodeProto, elem: int) -> str:
    """What a removed channel holds: 0, or for the codes of a QuantizeLinear its zero point (which dequantizes to 0;
    a per-axis one laid along its axis)."""
    if n.op_type != "QuantizeLinear" or len(n.input) < 3 or not n.input[2]:
        return ref.zero(elem)
    zp = np.asarray(ref.om.static[n.input[2]])
    if zp.ndim == 1:
        rank = len(ref.om.shapes[n.input[0]])
        shape = [1] * rank
        shape[int(node_attrs(n).get("axis", 1)) % rank] = -1
        zp = zp.reshape(shape)
    return ref.const(f"{n.output[0]}__zero_point", zp)


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


# -- the comparison --------------------------------------------------------------------------------------

FLOAT_TYPES: dict[int, type[np.floating]] = {
    TensorProto.FLOAT16: np.float16,
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
}
FLOOR_ULPS = 64.0  # every tensor's absolute tolerance floor: FLOOR_ULPS * eps * (largest magnitude along its path)
CHUNK_BYTES = 512 << 20  # intermediate tensors fetched per run, per model


@dataclass
class _Tensor:
    """An intermediate value both models compute: its ONNX element type, kept indices per dim (None: all), size."""

    name: str
    elem: int
    kept: list[np.ndarray | None]
    nbytes: int


@dataclass
class _Check:
    """One tensor compared: max |difference|, max |reference|, and the tolerance it was held to."""

    name: str
    err: float
    scale: float
    tol: float
    rtol: float  # the relative part of ``tol``
    dtype: str

    @property
    def passed(self) -> bool:
        return self.err <= self.tol

    @property
    def ratio(self) -> float:
        return self.err / self.tol if self.tol > 0 else (0.0 if self.err == 0 else math.inf)

    @property
    def rel(self) -> float:
        """|difference| / max |reference|, the scale raised to what the floor allows for: passes at most ``rtol``."""
        return self.ratio * self.rtol if self.rtol > 0 else self.ratio


class VerifyONNX:
    """``call(loaded, analysis, pruned, pruned_model) -> VerifyResult``; raises ``VerificationError`` on a mismatch.

    **What is compared.** Every graph output, and every intermediate tensor of the original that the pruned
    model still computes, at its kept positions (``analysis.keep_mask`` per dim): private copies of the masked
    reference and of the pruned model list those values as extra graph outputs and run once each (in chunks of
    ``chunk_bytes`` per model where the tensors are many). :func:`_intermediates` says which values are skipped.
    ``nodes_checked``, ``max_node_error`` and ``worst_node`` (a value name) report the intermediate tensors;
    ``max_abs_error`` and ``tolerance`` are the output's with the largest error relative to its tolerance.

    **Tolerance, per tensor** ``t`` of a float dtype with machine epsilon ``eps``::

        max |ref_t - pruned_t|  <=  atol + r * max |ref_t| + FLOOR_ULPS * eps * S_t,   r = max(rtol, 10 * eps)

    ``S_t`` is the largest magnitude along the paths into ``t``: max |value| (at kept positions) over the float
    graph inputs and every intermediate tensor ``t`` depends on, ``t`` included; constants do not count;
    ``FLOOR_ULPS`` is 64 (the largest seen on the test models is 2.5 ulps of ``S_t``). The
    floor is what float rounding leaves in a small tensor computed from large ones (a probability from a large
    logit, a difference of nearly equal values): of the order ``eps * S_t``, not ``eps * max |t|``, so the
    tolerance never collapses to ~0 where the values along the path were large. ``max_node_error`` is
    ``|difference| / max |reference|`` with the scale raised by the floor (``floor / r``): at most ``r`` passes.
    Non-float tensors must be equal.

    **NaN and inf** must be at the same positions in both models, with the same values (NaN equals NaN,
    an inf its sign); anything else, NaN or inf on one side only included, is an infinite error.

    **A constant reference is no pass.** Where every output of the reference is constant (a zero-initialized
    classifier gives zeros whatever comes before it), the output comparison proves nothing: the intermediate
    tensors carry the check, and where none could be compared, ``VerificationError`` is raised.
    """

    def __init__(self, rtol: float = 1e-4, atol: float = 0.0, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.rtol, self.atol, self.chunk_bytes = rtol, atol, chunk_bytes

    def call(
        self,
        om: OnnxModel,
        analysis: AnalysisResult,
        pruned: np.ndarray,
        model: onnx.ModelProto,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> VerifyResult:
        feeds = dict(om.inputs if inputs is None else inputs)
        bypassed = bypass_activation_quantizers(om, model)
        if bypassed is None:
            return self._compare(om, analysis, pruned, model, feeds)
        exact = self._compare(bypassed[0], analysis, pruned, bypassed[1], feeds)
        codes = self._compare_codes(om, analysis, pruned, model, feeds, bypassed[2])
        om.notes[:] = [n for n in om.notes if not n.startswith("quantized activations:")] + [codes.describe()]
        if not codes.passed:
            raise VerificationError(f"pruned ONNX model differs from the original with removed channels zeroed: {codes.describe()}")
        return exact

    def _compare_codes(
        self, om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray, model: onnx.ModelProto, feeds: dict[str, np.ndarray], codes: list[str]
    ) -> CodeCheck:
        """The codes of every activation quantizer in the quantized models, at their kept positions."""
        graph = analysis.graph
        tensors = [
            _Tensor(v, om.elem_types[v], [_kept_index(analysis, v, d, pruned) for d in range(len(graph.shape(v)))], 0)
            for v in codes
            if v in graph.values
        ]
        run = _Runs(om, _Runner(masked_reference(om, analysis, pruned), copy=False, arrays=om.static), _Runner(model, copy=True), feeds)
        ref, got = run.both(tensors)
        return compare_codes(ref, got, {t.name: t.kept for t in tensors})

    def _compare(
        self, om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray, model: onnx.ModelProto, feeds: dict[str, np.ndarray]
    ) -> VerifyResult:
        ref_model = masked_reference(om, analysis, pruned)
        run = _Runs(om, _Runner(ref_model, copy=False, arrays=om.static), _Runner(model, copy=True), feeds)
        path = _PathScale(ref_model, om, feeds)
        names = [o.name for o in om.model.graph.output]
        nodes: list[_Check] = []
        for k, chunk in enumerate(_chunks(_intermediates(om, analysis, pruned, model), self.chunk_bytes)):
            ref, got = run.both(chunk)
            if k == 0:
                for n in names:
                    path.measure(n, _scale(run.ref_out[n]))
            for t in chunk:  # the reference at its kept positions: each full tensor goes at once
                ref[t.name] = _select_kept(ref[t.name], t.kept)
                path.measure(t.name, _scale(ref[t.name]))
            nodes += [self._check(t.name, ref.pop(t.name), got.pop(t.name), path.upto(t.name)) for t in chunk]
            del ref, got
        outs = [self._check(n, run.ref_out[n], run.got_out[n], path.upto(n)) for n in names]
        return self._result(outs, nodes, all(_constant(run.ref_out[n]) for n in names))

    def _check(self, name: str, r: np.ndarray, m: np.ndarray, path_scale: float) -> _Check:
        """One tensor against the reference at its kept positions (the rule of the class docstring)."""
        if np.shape(r) != np.shape(m):
            raise VerificationError(
                f"{name}: the pruned ONNX model gives shape {tuple(np.shape(m))}, the masked original's kept positions "
                f"{tuple(np.shape(r))}"
            )
        r, m = np.asarray(r), np.asarray(m)
        if r.dtype.kind != "f":
            err = 0.0 if np.array_equal(r, m) else math.inf
            return _Check(name, err, 0.0, 0.0, 0.0, str(r.dtype))
        eps = float(np.finfo(r.dtype).eps)
        rt = max(self.rtol, 10 * eps)  # float16 rounds 8000x coarser than float32
        scale = _scale(r)
        tol = self.atol + rt * scale + FLOOR_ULPS * eps * path_scale
        return _Check(name, _tensor_error(r, m), scale, tol, rt, str(r.dtype))

    def _result(self, outs: list[_Check], nodes: list[_Check], constant: bool) -> VerifyResult:
        """The worst output (by error over tolerance) and the worst intermediate tensor; raises where one fails,
        or where the reference's outputs are constant and no intermediate tensor was compared."""
        out = max(outs, key=lambda c: c.ratio, default=_Check("", 0.0, 0.0, 0.0, 0.0, "float32"))
        dtype = next((c.dtype for c in reversed(outs) if c.dtype.startswith("float")), "float32")
        node = max(nodes, key=lambda c: c.ratio, default=None)
        scale = max((c.scale for c in outs), default=0.0)
        res = VerifyResult(
            all(c.passed for c in outs + nodes), out.err, scale, out.tol, f"{dtype} (onnxruntime)",
            len(nodes), node.rel if node is not None else 0.0, node.name if node is not None else "",
        )  # fmt: skip
        if not res.passed:
            where = f"; worst intermediate tensor {node.name}: error {node.err:.3g}, tolerance {node.tol:.3g}" if node else ""
            raise VerificationError(
                f"pruned ONNX model differs from the original with removed channels zeroed: max abs error "
                f"{out.err:.3g} at the outputs (tolerance {out.tol:.3g}, {res.dtype}){where}",
                out.err,
            )
        if constant and not nodes:
            raise VerificationError(
                "cannot verify the pruned ONNX model: the original's outputs are constant (a check on them proves "
                "nothing) and no intermediate tensor could be compared"
            )
        if constant:
            log.info("the reference's outputs are constant: verified on %d intermediate tensors", len(nodes))
        return res


def _intermediates(om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray, model: onnx.ModelProto) -> list[_Tensor]:
    """The intermediate values compared, in graph order: outputs of the original's top-level nodes that the pruned
    model computes under the same name (the rewrite keeps node and value names).

    Skipped, and why:

    * constants and static values (weights, shape arithmetic evaluated at load): the rewrite slices or
      re-evaluates them; the tensors they feed are compared;
    * values of a type other than float16/32/64 (shapes, indices, masks) or of unknown type: they are either
      static or feed float tensors that are compared;
    * values the pruned model no longer computes: nodes the rewrite removed as dead, computed constants it
      replaced with initializers;
    * graph inputs (the same feeds) and graph outputs (compared as outputs), and the values inside
      subgraphs (If, Loop: a subgraph's values cannot be graph outputs); empty tensors.

    A ReduceMean over pruned channels is not skipped: the rewrite renames its output ``<v>_kept`` and a ``Mul``
    rescales it to the original divisor under the original name ``<v>``, so ``<v>`` is the original mean,
    which the masked reference computes (``<v>_kept`` exists only in the pruned model and is not compared).
    """
    graph, g = analysis.graph, om.model.graph
    computed = {o for n in model.graph.node for o in n.output if o}
    skip = {o.name for o in g.output} | set(om.static) | {t.name for t in g.initializer}
    out: list[_Tensor] = []
    for n in g.node:
        for v in n.output:
            val = graph.values.get(v)
            elem = om.elem_types.get(v, 0)
            if not v or v in skip or v not in computed or val is None or val.is_const or not val.is_tensor:
                continue
            if elem not in FLOAT_TYPES or math.prod(val.shape or ()) == 0:
                continue
            kept = [_kept_index(analysis, v, d, pruned) for d in range(len(val.shape or ()))]
            nbytes = math.prod(val.shape or ()) * np.dtype(FLOAT_TYPES[elem]).itemsize
            out.append(_Tensor(v, elem, kept, nbytes))
    return out


def _kept_index(analysis: AnalysisResult, value: str, dim: int, pruned: np.ndarray) -> np.ndarray | None:
    """The kept indices of a value's dim (None: every index kept)."""
    keep = analysis.keep_mask(value, dim, pruned)
    return None if keep is None or keep.all() else np.flatnonzero(keep)


def _chunks(tensors: list[_Tensor], budget: int) -> list[list[_Tensor]]:
    """Consecutive runs of ``tensors`` of at most ``budget`` bytes each (one tensor at least); one empty chunk
    where there are none (the outputs are compared all the same)."""
    chunks: list[list[_Tensor]] = [[]]
    size = 0
    for t in tensors:
        if chunks[-1] and size + t.nbytes > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(t)
        size += t.nbytes
    return chunks


class _Runner:
    """A model whose graph outputs are extended by intermediate values for a run (on a private copy)."""

    def __init__(self, model: onnx.ModelProto, copy: bool, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        self.arrays = arrays  # the data of a light copy's initializers (a masked reference over 2 GB)
        if copy:
            copy_m = onnx.ModelProto()
            copy_m.CopyFrom(model)
            model = copy_m
        self.model, self.n_outputs = model, len(model.graph.output)

    def run(self, tensors: list[_Tensor], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The graph outputs and ``tensors`` of one ONNX Runtime run (graph optimizations off), by name."""
        outs = self.model.graph.output
        del outs[self.n_outputs :]
        outs.extend(helper.make_tensor_value_info(t.name, t.elem, None) for t in tensors)
        return run_ort(self.model, feeds, optimize=False, arrays=self.arrays)


class _PathScale:
    """The largest magnitude along the paths into each value of the reference: ``S(v) = max(own(v), S(inputs))``
    over float, non-constant inputs (graph inputs: their feeds; a value added by the reference, of unknown type,
    passes its inputs' on). ``measure`` records a value's own max |value|; ``upto(v)`` walks the nodes up to
    ``v``'s producer, so values are measured before anything after them is asked for."""

    def __init__(self, ref_model: onnx.ModelProto, om: OnnxModel, feeds: Mapping[str, np.ndarray]) -> None:
        g = ref_model.graph
        self.consts = set(om.static) | {t.name for t in g.initializer}
        self.consts |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
        self.types = om.elem_types
        self.nodes = [(list(n.input) + implicit_inputs(n), list(n.output)) for n in g.node]
        self.pos = 0
        self.own: dict[str, float] = {}
        self.scale = {k: _scale(np.asarray(x)) for k, x in feeds.items() if np.asarray(x).dtype.kind == "f"}

    def measure(self, value: str, scale: float) -> None:
        self.own[value] = scale

    def upto(self, value: str) -> float:
        while value not in self.scale and self.pos < len(self.nodes):
            ins, outs = self.nodes[self.pos]
            s = max((self.scale.get(x, 0.0) for x in ins if x and self._floating(x)), default=0.0)
            for o in outs:
                self.scale[o] = max(s, self.own.get(o, 0.0))
            self.pos += 1
        return self.scale.get(value, self.own.get(value, 0.0))

    def _floating(self, value: str) -> bool:
        if value in self.consts:
            return False
        elem = self.types.get(value)
        return elem is None or elem in FLOAT_TYPES


def _select_kept(r: np.ndarray, kept: list[np.ndarray | None]) -> np.ndarray:
    """``r`` at the kept indices of each of its pruned dims."""
    for d, ix in enumerate(kept):
        if ix is not None and d < r.ndim:
            r = np.take(r, ix, axis=d)
    return r


def _scale(a: np.ndarray) -> float:
    """max |a| over its finite values, in float64 (0 for none, and for a non-float tensor)."""
    if a.dtype.kind != "f" or a.size == 0:
        return 0.0
    fin = a[np.isfinite(a)]
    return float(np.abs(fin.astype(np.float64)).max()) if fin.size else 0.0


def _tensor_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over the finite positions, in float64; inf where NaN or inf differ in place or value
    (NaN at the same positions on both sides compare equal)."""
    if a.size == 0:
        return 0.0
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return math.inf
    if not fa.all() and not np.array_equal(a[~fa], b[~fb], equal_nan=True):
        return math.inf
    if not fa.any():
        return 0.0
    return float(np.abs(a[fa].astype(np.float64) - b[fb].astype(np.float64)).max())


def _constant(a: np.ndarray) -> bool:
    """Every element equal: a check on it proves nothing (a single element counts only where it is zero)."""
    a = np.asarray(a)
    if a.size == 0:
        return True
    first = a.reshape(-1)[0]
    return bool(np.all(a == first)) and (a.size > 1 or first == 0)


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class _Runs:
    """Both models run on the same feeds, chunk by chunk; the graph outputs of the first run of each are kept
    (``ref_out``, ``got_out``) after checking their shapes."""

    def __init__(self, om: OnnxModel, ref: _Runner, got: _Runner, feeds: dict[str, np.ndarray]) -> None:
        self.om, self.ref, self.got, self.feeds = om, ref, got, feeds
        self.names = [o.name for o in om.model.graph.output]
        self.ref_out: dict[str, np.ndarray] = {}
        self.got_out: dict[str, np.ndarray] = {}

    def both(self, tensors: list[_Tensor]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The values of ``tensors`` in the masked original and in the pruned model (raises where one does not run)."""
        ref = self._reference(tensors)
        got = self._pruned(tensors)
        if not self.ref_out:
            _check_output_shapes(self.names, ref, got)
            self.ref_out = {n: ref[n] for n in self.names}
            self.got_out = {n: got[n] for n in self.names}
        return ref, got

    def _reference(self, tensors: list[_Tensor]) -> dict[str, np.ndarray]:
        """Where the masked original does not run: UnsupportedModelError if the input model itself does not run in
        ONNX Runtime (nothing can verify it: the user's, exit 2), else VerificationError (prunec's)."""
        try:
            return self.ref.run(tensors, self.feeds)
        except Exception as exc:
            first = _first_line(exc)
            try:
                run_ort(self.om.model, self.feeds, optimize=False)
            except Exception:
                raise UnsupportedModelError(
                    f"{self.om.name}: cannot verify: ONNX Runtime cannot run the model ({first}); prune without "
                    "verification (--no-verify, verify=False) to accept the result unchecked"
                ) from None
            raise VerificationError(f"cannot run the masked original in ONNX Runtime: {first}") from None

    def _pruned(self, tensors: list[_Tensor]) -> dict[str, np.ndarray]:
        try:
            return self.got.run(tensors, self.feeds)
        except Exception as exc:
            raise VerificationError(f"the pruned ONNX model does not run in ONNX Runtime: {_first_line(exc)}") from None


def _check_output_shapes(names: list[str], ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> None:
    """Raises where an output of the pruned model is missing or differs from the original's in shape."""
    bad = [n for n in names if n not in got or np.shape(got[n]) != np.shape(ref[n])]
    if bad:
        raise VerificationError(
            f"pruned model outputs {[(n, np.shape(got[n]) if n in got else ()) for n in bad]} but the original gives {[(n, np.shape(ref[n])) for n in bad]}"
        )
