"""Depth pruning on an ONNX model: run it for the ranking, remove residual branches, verify.

:class:`OnnxDepth` is the ONNX side of :mod:`passes.depth`:

1. ``values`` / ``loss`` / ``quality``: ONNX Runtime (CPU, graph optimizations off) on a
   copy that lists the wanted values as extra outputs, over the calibration batches (the
   example inputs where none were given);
2. ``remove``: a copy of the model in which the consumers of each removed ``Add`` read the
   stream instead (an ``Identity`` keeps the name where the add's output is a graph
   output), the nodes and initializers nothing reads any more are deleted, names, opset and
   I/O kept, and the ONNX checker runs on the result;
3. ``verify``: the original with each removed branch replaced at its add by zeros of its
   shape (``ConstantOfShape(Shape(branch))``) against the pruned model, on every
   intermediate tensor both compute and on the outputs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from frontends.adapter import VerifyResult
from frontends.errors import InternalError, InvalidArgumentError, VerificationError
from frontends.onnx.model import OnnxModel
from frontends.onnx.proto import implicit_inputs
from frontends.onnx.runtime import ort_session
from passes.depth import Block

log = logging.getLogger(__name__)

__all__ = ["OnnxDepth"]

_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every output and ``extra`` values of one CPU run (optimizations off), by name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in extra:
        if name not in present:
            m.graph.output.append(helper.make_empty_tensor_value_info(name))
            present.add(name)
    sess = ort_session(m, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, dict(feeds)), strict=True))


def _used(g: onnx.GraphProto) -> set[str]:
    used = {o.name for o in g.output}
    for n in g.node:
        used.update(x for x in n.input if x)
        used.update(implicit_inputs(n))
    return used


class OnnxDepth:
    """The :class:`passes.depth.DepthRunner` of a loaded ONNX model, and its block removal and verification.

    ``batches``: the calibration inputs (by graph-input name); the example inputs where none were given."""

    def __init__(self, om: OnnxModel, batches: Sequence[dict[str, np.ndarray]] | None = None, has_calibration: bool = False) -> None:
        self.om = om
        self.batches = list(batches) if batches else [dict(om.inputs)]
        self.has_calibration = has_calibration and bool(batches)
        self.held: list[dict[str, np.ndarray]] = []
        self._reference: dict[int, dict[str, np.ndarray]] = {}

    def values(self, names: Sequence[str], data: str) -> Iterator[dict[str, np.ndarray]]:
        for feeds in self.batches if data == "calibration" else [self.om.inputs]:
            out = _run(self.om.model, feeds, names)
            yield {n: out[n] for n in names}

    def calibration(self) -> list[dict[str, np.ndarray]]:
        """The ranking's batches in the form ``compile(calibration=)`` takes."""
        return [dict(b) for b in self.batches]

    def hold_out(self, fraction: float = 0.25) -> list[dict[str, np.ndarray]]:
        """Set the last ``fraction`` of the calibration batches (at least one) aside for :meth:`quality`."""
        n = len(self.batches)
        if not self.has_calibration or n < 2:
            raise InvalidArgumentError(
                "depth='auto' measures quality on calibration batches the ranking does not see: give calibration= "
                f"with at least 2 batches (got {n if self.has_calibration else 0})"
            )
        k = max(1, int(n * fraction))
        self.held, self.batches = self.batches[n - k :], self.batches[: n - k]
        self._reference.clear()
        return self.held

    def quality(self, model: onnx.ModelProto, batches: Sequence[dict[str, np.ndarray]]) -> float:
        """Mean cosine similarity, per sample, of ``model``'s first output to the original's on ``batches``."""
        first = self.om.model.graph.output[0].name
        sims: list[float] = []
        for feeds in batches:
            want = np.asarray(_run(self.om.model, feeds)[first], np.float64)
            got = np.asarray(_run(model, feeds)[first], np.float64)
            w, g = want.reshape(want.shape[0], -1), got.reshape(got.shape[0], -1)
            den = np.linalg.norm(w, axis=1) * np.linalg.norm(g, axis=1)
            sims.extend(((w * g).sum(1) / np.where(den > 0, den, 1.0)).tolist())
        return float(np.mean(sims)) if sims else float("nan")

    def _add_node(self, g: onnx.GraphProto, out: str) -> onnx.NodeProto:
        for n in g.node:
            if out in n.output and n.op_type == "Add":
                return n
        raise InternalError(f"depth: no Add produces {out}")

    def zeroed(self, blocks: Sequence[Block]) -> onnx.ModelProto:
        """The original with the branches of ``blocks`` replaced by zeros at their adds."""
        m = onnx.ModelProto()
        m.CopyFrom(self.om.model)
        g = m.graph
        for blk in blocks:
            for br in blk.branches:
                add = self._add_node(g, br.out)
                shape, zeros = f"{br.out}__prunec_shape", f"{br.out}__prunec_zeros"
                elem = self.om.elem_types.get(br.branch, onnx.TensorProto.FLOAT)
                value = numpy_helper.from_array(np.zeros(1, dtype=helper.tensor_dtype_to_np_dtype(elem)))
                at = list(g.node).index(add)
                g.node.insert(at, helper.make_node("ConstantOfShape", [shape], [zeros], value=value))
                g.node.insert(at, helper.make_node("Shape", [br.branch], [shape]))
                add.input[list(add.input).index(br.branch)] = zeros
        return m

    def loss(self, removed: Sequence[Block]) -> float:
        """Mean over the calibration batches of the relative squared change of the outputs from the original's."""
        if not removed:
            return 0.0
        model = self.zeroed(removed)
        total = 0.0
        for i, feeds in enumerate(self.batches):
            if i not in self._reference:
                self._reference[i] = _run(self.om.model, feeds)
            got = _run(model, feeds)
            for name, ref in self._reference[i].items():
                r, x = np.asarray(ref, np.float64), np.asarray(got[name], np.float64)
                total += float(((x - r) ** 2).sum()) / max(float((r**2).sum()), 1e-30)
        return total / len(self.batches)

    def remove(self, blocks: Sequence[Block]) -> onnx.ModelProto:
        """A new model without the branches of ``blocks`` (the loaded one is not touched)."""
        m = onnx.ModelProto()
        m.CopyFrom(self.om.model)
        g = m.graph
        dead_before = self._dead(g)
        unused_before = {t.name for t in g.initializer} - _used(g)
        graph_outputs = {o.name for o in g.output}
        now: dict[str, str] = {}  # a removed add's output -> what its consumers read now (consecutive blocks chain)
        for blk in blocks:
            for br in blk.branches:
                add = self._add_node(g, br.out)
                at = list(g.node).index(add)
                g.node.remove(add)
                stream = now.get(br.stream, br.stream)
                if br.out in graph_outputs:
                    g.node.insert(at, helper.make_node("Identity", [stream], [br.out], name=add.name))
                    continue
                now[br.out] = stream
                for n in g.node:
                    for i, x in enumerate(n.input):
                        if x == br.out:
                            n.input[i] = stream
                    if implicit_inputs(n) and br.out in implicit_inputs(n):
                        raise InternalError(f"depth: {br.out} is read inside a subgraph of {n.name}; not rewritten")
        while True:  # nodes nothing reads any more (the branches), not those dead in the original
            used = _used(g)
            drop = [n for n in g.node if tuple(n.output) not in dead_before and n.output and not any(o in used for o in n.output if o)]
            if not drop:
                break
            for n in drop:
                g.node.remove(n)
        used = _used(g)
        keep = [t for t in g.initializer if t.name in used or t.name in unused_before]
        del g.initializer[:]
        g.initializer.extend(keep)
        names = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | {i.name for i in g.input}
        kept_info = [vi for vi in g.value_info if vi.name in names]
        del g.value_info[:]
        g.value_info.extend(kept_info)
        onnx.checker.check_model(m, full_check=False)
        return m

    @staticmethod
    def _dead(g: onnx.GraphProto) -> set[tuple[str, ...]]:
        """The outputs of nodes nothing reads in the original (left alone by the removal)."""
        used = _used(g)
        return {tuple(n.output) for n in g.node if n.output and not any(o in used for o in n.output if o)}

    def verify(self, blocks: Sequence[Block], model: onnx.ModelProto, rtol: float) -> VerifyResult:
        """Raise :class:`VerificationError` unless ``model`` equals the original with ``blocks`` zeroed."""
        ref_model = self.zeroed(blocks)
        computed = {o for n in model.graph.node for o in n.output if o}
        inter = [
            o
            for n in self.om.model.graph.node
            for o in n.output
            if o in computed and self.om.elem_types.get(o) in _FLOAT and o not in self.om.static
        ]
        ref = _run(ref_model, self.om.inputs, inter)
        got = _run(model, self.om.inputs, inter)
        outs = [o.name for o in self.om.model.graph.output]
        err, scale = 0.0, 0.0
        for name in outs:
            r, x = np.asarray(ref[name], np.float64), np.asarray(got[name], np.float64)
            if r.shape != x.shape:
                raise VerificationError(f"output {name}: the depth-pruned model gives shape {x.shape}, the original {r.shape}")
            if r.size:
                err = max(err, _abs(r, x))
                scale = max(scale, float(np.abs(r[np.isfinite(r)]).max(initial=0.0)))
        n, worst_err, worst = 0, 0.0, ""
        for name in inter:
            if name in outs or name not in ref or name not in got:
                continue
            r, x = np.asarray(ref[name], np.float64), np.asarray(got[name], np.float64)
            if r.shape != x.shape:
                raise VerificationError(f"value {name}: the depth-pruned model gives shape {x.shape}, the original {r.shape}")
            e = _rel(r, x)
            n += 1
            if e > worst_err:
                worst_err, worst = e, name
        tol = rtol * max(scale, 1.0)
        res = VerifyResult(bool(err <= tol and worst_err <= rtol), err, scale, tol, "float32", n, worst_err, worst)
        if not res.passed:
            raise res.failure("depth-pruned model", "the original with the removed branches zeroed")
        return res



def _abs(r: np.ndarray, x: np.ndarray) -> float:
    fr, fx = np.isfinite(r), np.isfinite(x)
    if not np.array_equal(fr, fx):
        return math.inf
    return float(np.abs(r[fr] - x[fx]).max(initial=0.0))


def _rel(r: np.ndarray, x: np.ndarray) -> float:
    if r.size == 0:
        return 0.0
    fr, fx = np.isfinite(r), np.isfinite(x)
    if not np.array_equal(fr, fx):
        return math.inf
    scale = float(np.abs(r[fr]).max(initial=0.0))
    diff = float(np.abs(r[fr] - x[fx]).max(initial=0.0))
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
