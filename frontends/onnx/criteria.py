"""Data-driven criteria and weight updates for the ONNX adapter, run in ONNX Runtime.

The ONNX adapter's data object for the criteria registry (:mod:`passes.importance`): the statistics
:class:`passes.data_criteria.ChannelStatistics` turns into ``activation``, ``n2ps`` and ``obs`` scores, OBS
compensation and bias propagation are collected here by running a private copy of the model that lists every
consumer's input as an extra graph output (:func:`frontends.onnx.calibration.capture_model`), one calibration
batch at a time; each batch's tensors are reduced to the statistics at once and dropped (values are fetched in
chunks of at most ``chunk_bytes`` per run). ``mrp`` runs a gated copy
(:func:`frontends.onnx.calibration.gated_model`) once per channel class and batch.

A consumer is collected where its node reads the ONNX value directly (a Gemm with ``transA`` reads a transposed
copy the lowering made, which no run computes: its classes are left to the other consumers, or unscored). Weight
updates go to initializers and ``Constant`` nodes that one node reads; a conv or Gemm without a bias, or whose
bias other nodes share (exporters de-duplicate equal constants), gets one of its own
(:attr:`OnnxDataCriteria.new_biases`, applied by :mod:`frontends.onnx.updates`); a shared weight is not re-fitted.

Criteria that need gradients (``taylor``, ``taylor2``, ``mrs``, ``obd``, ``synflow``) are not served: the adapter
does not declare ``gradients`` and the registry refuses them in one line naming those that run.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import onnx

from frontends.graph import Op
from frontends.onnx.calibration import GatedRead, OnnxCalibration, capture_model, gated_model
from frontends.onnx.large import is_large, light_copy
from frontends.onnx.model import OnnxModel
from frontends.onnx.proto import UniqueNames, implicit_inputs, node_attrs
from frontends.onnx.quantized import dequantized_weight
from frontends.onnx.runtime import ort_session
from passes.channel_analysis import AnalysisResult
from passes.data_criteria import (
    ChannelStatistics,
    ObsLayer,
    holdout_plan,
    obs_rows,
    per_sample_cross_entropy,
    read_consumers,
    reduce_except,
)

log = logging.getLogger(__name__)

__all__ = ["OnnxDataCriteria", "CHUNK_BYTES"]

CHUNK_BYTES = 256 << 20  # consumer inputs fetched per run
_FLOATS = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


class OnnxDataCriteria(ChannelStatistics):
    """Computes criteria on calibration data for one loaded ONNX model and analysis."""

    def __init__(self, om: OnnxModel, analysis: AnalysisResult, data: OnnxCalibration, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.om, self.analysis, self.data, self.chunk_bytes = om, analysis, data, chunk_bytes
        self.C = analysis.n_classes
        self.nodes = list(om.model.graph.node)
        g = om.model.graph
        self.constants = {t.name for t in g.initializer} | {n.output[0] for n in self.nodes if n.op_type == "Constant"}
        self._dequantized = {n.output[0]: n for n in self.nodes if dequantized_weight(n, om.static)}
        self.reads: dict[str, int] = {}  # how often each value is read (by nodes, their subgraphs, as an output)
        for n in self.nodes:
            for x in list(n.input) + implicit_inputs(n):
                self.reads[x] = self.reads.get(x, 0) + 1
        for o in g.output:
            self.reads[o.name] = self.reads.get(o.name, 0) + 1
        self._computed = {o for n in self.nodes for o in n.output if o} | {vi.name for vi in g.input}
        self.cons = read_consumers(analysis, self._key)
        self.new_biases: dict[str, int] = {}  # update name of a new bias -> index of the node it goes to
        self._bias_names: dict[str, str] = {}
        self._names = UniqueNames(g)
        self._abs: dict[str, np.ndarray] | None = None
        self._means: dict[str, np.ndarray] | None = None
        self._layers: list[tuple[ObsLayer, np.ndarray]] | None = None
        self._split: list[tuple[ObsLayer, np.ndarray, np.ndarray]] | None = None

    # -- what only the ONNX model knows --------------------------------------------------------
    def _key(self, op: Op, value: str) -> str | None:
        """The op's name where its node reads ``value`` itself and a run can fetch it (a graph input, a node's
        output or a static value) as a float tensor; else None."""
        i = op.source
        if not isinstance(i, int) or value not in self.nodes[i].input:
            return None
        if value not in self._computed and value not in self.om.static:
            return None
        if value not in self.om.static and self.om.elem_types.get(value) not in _FLOATS:
            return None
        return op.name

    def updatable(self, value: str) -> bool:
        """An initializer or a ``Constant`` node's output that only one node input reads (exporters share equal
        constants between layers: an update in place would change the others too); or a quantized weight (the
        output of a ``DequantizeLinear`` of constant codes) that one node input reads, of codes only it reads
        (the update quantizes the new value again on the existing scales, :func:`frontends.onnx.updates.with_updates`)."""
        if value in self.constants:
            return self.reads.get(value, 0) == 1
        n = self._dequantized.get(value)
        return n is not None and self.reads.get(value, 0) == 1 and n.input[0] in self.constants and self.reads.get(n.input[0], 0) == 1

    def new_bias_name(self, op: Op) -> str | None:
        """A Conv, or a Gemm lowered as a linear layer with ``beta`` 1, that has no bias input, or one other nodes
        read too, gets one of its own."""
        i = op.source
        if not isinstance(i, int):
            return None
        n = self.nodes[i]
        if n.op_type not in ("Conv", "Gemm") or (len(n.input) > 2 and n.input[2] and self.updatable(n.input[2])):
            return None
        if n.op_type == "Gemm" and float(node_attrs(n).get("beta", 1.0)) != 1.0:
            return None
        if op.name not in self._bias_names:
            name = self._names.fresh(f"{n.name or n.output[0]}_bias")
            self._bias_names[op.name] = name
            self.new_biases[name] = i
        return self._bias_names[op.name]

    # -- the runs ------------------------------------------------------------------------------
    def _base(self) -> onnx.ModelProto:
        """The model the private copies are made of: over 2 GB, a light copy whose large initializers ONNX
        Runtime gets from the loaded static values (:mod:`frontends.onnx.large`)."""
        return light_copy(self.om.model)[0] if is_large(self.om.model) else self.om.model

    def _value(self, name: str, outs: dict[str, np.ndarray], feeds: dict[str, np.ndarray]) -> np.ndarray:
        if name in outs:
            return outs[name]
        if name in feeds:
            return feeds[name]
        return np.asarray(self.om.static[name])

    def _chunks(self, values: list[str]) -> list[list[str]]:
        """The values to fetch, in runs of at most ``chunk_bytes`` at the largest calibration batch."""
        rows = max(b.size for b in self.data.batches)
        example = max((int(a.shape[0]) for a in self.om.inputs.values() if a.ndim), default=1) or 1
        chunks: list[list[str]] = [[]]
        size = 0.0
        for v in values:
            shape = self.analysis.graph.shape(v)
            nbytes = math.prod(shape) * 8 * max(rows / example, 1.0)
            if chunks[-1] and size + nbytes > self.chunk_bytes:
                chunks.append([])
                size = 0.0
            chunks[-1].append(v)
            size += nbytes
        return chunks

    def _collect(self, hessians: bool) -> None:
        """One pass over the batches: mean |x| and the mean of every consumer's input, and where ``hessians``,
        X̃ᵀX̃ of every OBS layer's input rows."""
        layers = self.obs_layers() if hessians else {}
        fetch = [v for v in dict.fromkeys(c.value for c in self.cons) if v not in self.om.static and v not in self.om.inputs]
        by_value: dict[str, list[Any]] = {}
        for c in self.cons:
            by_value.setdefault(c.value, []).append(c)
        absmean: dict[str, np.ndarray] = {}
        sums: dict[str, np.ndarray] = {}
        hess: dict[str, np.ndarray] = {}
        rows: dict[str, int] = {}
        held_hess: dict[str, np.ndarray] = {}
        held_rows: dict[str, int] = {}
        held_out = {i for i, _part, held in holdout_plan([b.size for b in self.data.batches], split_single=False) if held}
        done_local: set[str] = set()
        for chunk in self._chunks(fetch) if fetch else [[]]:
            sess = ort_session(capture_model(self._base(), chunk, self.om.elem_types), arrays=self.om.static)
            local = [v for v in by_value if v not in fetch and v not in done_local]  # inputs and static values: once
            done_local |= set(local)
            for bi, b in enumerate(self.data.batches):
                outs = dict(zip(chunk, sess.run(chunk, b.inputs), strict=True)) if chunk else {}
                for v in chunk + local:
                    x = self._value(v, outs, b.inputs)
                    for c in by_value[v]:
                        absmean[c.node] = absmean.get(c.node, 0) + reduce_except(x, c.dim, "absmean")
                        sums[c.node] = sums.get(c.node, 0) + reduce_except(x, c.dim) * x.shape[0]
                        lay = layers.get(c.node)
                        if lay is not None:
                            X = obs_rows(lay, x)
                            XtX = X.T @ X
                            hess[c.node] = hess.get(c.node, 0) + XtX
                            rows[c.node] = rows.get(c.node, 0) + X.shape[0]
                            if bi in held_out:
                                held_hess[c.node] = held_hess.get(c.node, 0) + XtX
                                held_rows[c.node] = held_rows.get(c.node, 0) + X.shape[0]
                del outs
        n = sum(b.size for b in self.data.batches)
        nb = len(self.data.batches)
        self._abs = {node: v / nb for node, v in absmean.items()}
        self._means = {node: v / n for node, v in sums.items()}
        if hessians:
            self._layers = [(lay, hess[node] / rows[node]) for node, lay in layers.items() if node in hess]
            self._split = [
                (lay, (hess[node] - held_hess[node]) / (rows[node] - held_rows[node]), held_hess[node] / held_rows[node])
                for node, lay in layers.items()
                if node in held_hess and rows[node] > held_rows[node]
            ]

    def _mean_abs_activation(self) -> dict[str, np.ndarray]:
        if self._abs is None:
            self._collect(hessians=False)
        assert self._abs is not None
        return self._abs

    def _position_means(self) -> dict[str, np.ndarray]:
        if self._means is None:
            self._collect(hessians=False)
        assert self._means is not None
        return self._means

    def layers(self) -> list[tuple[ObsLayer, np.ndarray]]:
        if self._layers is None:
            self._collect(hessians=True)
        assert self._layers is not None
        return self._layers

    def held_out_layers(self) -> list[tuple[ObsLayer, np.ndarray, np.ndarray]]:
        """The Hessians on the fitting and held-out batches (:func:`passes.data_criteria.holdout_plan`; a single
        batch is not split: an ONNX model's batch size may be fixed)."""
        if self._split is None:
            self._collect(hessians=True)
        assert self._split is not None
        return self._split

    def damage(
        self, masks: list[np.ndarray], progress: Any = None, mean_replacement: bool = False, updates: Any = None
    ) -> tuple[np.ndarray, str]:
        """The damage of each plan (bool per class) on the calibration data, and what it measures
        (:func:`frontends.onnx.sensitivity.onnx_damage`; ``allocation="sensitivity"``; ``updates`` not applied)."""
        from frontends.onnx.sensitivity import onnx_damage

        return onnx_damage(self, masks, progress, mean_replacement, updates)

    # -- mean-replacement penalty ----------------------------------------------------------------
    def mrp(self, classes: np.ndarray) -> np.ndarray:
        """Exact mean-replacement penalty of each class in ``classes`` (one run per class and batch): the summed
        change of the per-sample cross-entropy with labels, else of the outputs' squared difference."""
        means = self._position_means()
        reads: dict[tuple[int, int], GatedRead] = {}
        for c in self.cons:
            if c.node not in means or c.value in self.om.static:
                continue
            i = self.analysis.graph.ops[c.op].source
            assert isinstance(i, int)
            node = self.nodes[i]
            k = c.arg if c.arg < len(node.input) and node.input[c.arg] == c.value else list(node.input).index(c.value)
            rank = len(self.analysis.graph.shape(c.value))
            elem = self.om.elem_types[c.value] if c.value in self.om.elem_types else onnx.TensorProto.FLOAT
            reads.setdefault((i, k), GatedRead(i, k, c.value, c.dim, rank, c.classes, means[c.node], elem))
        model, gates = gated_model(self._base(), list(reads.values()), self.C)
        sess = ort_session(model, arrays=self.om.static)
        outputs = [o.name for o in self.om.model.graph.output]
        ones = np.ones(self.C + 1, dtype=np.float32)
        scores = np.full(self.C, np.nan)
        gated = self._only_gated(np.zeros(self.C))
        refs = []
        for b in self.data.batches:
            out = sess.run(outputs, {**b.inputs, gates: ones})
            refs.append((out, None if b.labels is None else per_sample_cross_entropy(out[0], b.labels)))
        for k in classes.tolist():
            if np.isnan(gated[k]):
                continue
            g = ones.copy()
            g[k] = 0.0
            total = 0.0
            for b, (ref_out, ref_loss) in zip(self.data.batches, refs, strict=True):
                out = sess.run(outputs, {**b.inputs, gates: g})
                if b.labels is not None and ref_loss is not None:
                    total += float(np.abs(per_sample_cross_entropy(out[0], b.labels) - ref_loss).sum())
                else:
                    total += float(sum(((o.astype(np.float64) - r) ** 2).sum() for o, r in zip(out, ref_out, strict=True)))
            scores[k] = total
        return scores
