"""Data-driven and second-order saliency criteria, and the weight updates they imply (torch adapter).

The torch adapter's data object (:class:`DataCriteria`) for the criteria registry
(:mod:`passes.importance`). Class-level criteria act through gates
(:mod:`frontends.torch.calibration`): a class is one coupled channel, so coupling
needs no equalization. Unit-level criteria (``obd``, ``synflow``) score producer
units like ``l1``/``l2`` and are equalized across a group. ``bn_scale`` needs only
the weights and is computed in :mod:`passes.importance`. The statistics-only criteria
(``activation``, ``n2ps``, ``obs``) and the weight updates are computed from the statistics
collected here by the framework-neutral maths of :mod:`passes.data_criteria`, which the ONNX
adapter shares.

========== ======================================================================
activation mean |x| of the channel where layers read it (seed 004)
n2ps       mean |x| times the channel's total |fan-out weight| (seed 001); with
           ``normalizer="mean", threshold=1.0`` it prunes below the layer average
taylor     |dL/dg| per sample, averaged (seed 002 taylor1, Molchanov)
taylor2    |Δg (∇L + H Δg)| with Δg = -1 on every gate, HVP by double backward
           (seed 002 taylor2, λ = 1)
mrs        |(m - x)·∇L| per sample: first-order mean-replacement saliency (seed 002
           eq. 3.3); removal propagates the mean into the consumers' biases
mrp        Σ_k |L_k(channel := its mean) - L_k|: the exact penalty, one forward per
           channel (seed 002 eq. 3.1), for validating ``mrs``
obd        ½ Σ_unit H_ii w_i², diag(H) by Hutchinson probes (seeds 000, 003)
obs        layer-wise OBS (seed 001, Dong et al.): per consumer, H = X̃ᵀX̃ of its
           inputs (bias column included); cost of a channel block q is
           ½ Σ_o w_oq [H⁻¹]_qq⁻¹ w_oqᵀ; removal re-solves the remaining weights
synflow    |θ ⊙ ∂R/∂θ| on |θ| with an all-ones input, data-free (seed 003)
========== ======================================================================

Without labels the loss is replaced as described in :mod:`frontends.torch.calibration`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from frontends.errors import InvalidArgumentError
from frontends.graph import Op
from frontends.torch.calibration import (
    CalibrationData,
    Consumer,
    GatedRunner,
    all_outputs,
    consumers,
    output_tensor,
    task_loss,
)
from frontends.torch.nodes import module_attr
from frontends.torch.trace import TracedModel
from passes.channel_analysis import AnalysisResult
from passes.data_criteria import ChannelStatistics, ObsLayer, holdout_plan

log = logging.getLogger(__name__)

__all__ = ["DataCriteria"]


def _sum_tensors(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``t_0 + t_1 + ...`` in order (the model's outputs are not empty)."""
    total: torch.Tensor | None = None
    for t in terms:
        total = t if total is None else total + t
    if total is None:
        raise InvalidArgumentError("the model's output holds no tensor")
    return total


class DataCriteria(ChannelStatistics):
    """Computes criteria on calibration data for one traced model and analysis (the statistics' maths:
    :class:`passes.data_criteria.ChannelStatistics`)."""

    def __init__(self, traced: TracedModel, analysis: AnalysisResult, data: CalibrationData, probes: int = 4, seed: int = 0) -> None:
        self.traced, self.analysis, self.data = traced, analysis, data
        self.gm = traced.gm
        self.cons = consumers(traced, analysis)
        self.C = analysis.n_classes
        self.probes = probes
        self.gen = torch.Generator().manual_seed(seed)
        self._means: dict[str, torch.Tensor] | None = None
        self._layers: list[tuple[ObsLayer, np.ndarray]] | None = None
        self._split: list[tuple[ObsLayer, np.ndarray, np.ndarray]] | None = None

    # -- what only the torch graph knows ---------------------------------------------------
    def exact_geometry(self, op: Op) -> bool:
        """A conv module's attributes are its geometry; a functional conv's arguments may be computed."""
        return isinstance(op.source, torch.fx.Node) and op.source.op == "call_module"

    def new_bias_name(self, op: Op) -> str | None:
        """A module without a bias gets ``<module path>.bias``."""
        node = op.source
        return f"{node.target}.bias" if isinstance(node, torch.fx.Node) and node.op == "call_module" else None

    # -- helpers -----------------------------------------------------------------
    def _runner(self) -> GatedRunner:
        return GatedRunner(self.gm, self.cons, self.C)

    @staticmethod
    def _reduce_except(x: torch.Tensor, dim: int, fn: str = "mean") -> torch.Tensor:
        dims = [d for d in range(x.dim()) if d != dim]
        return x.abs().mean(dims) if fn == "absmean" else x.mean(dims)

    def means(self) -> dict[str, torch.Tensor]:
        """Per-position mean of every consumer's input over the calibration data."""
        if self._means is not None:
            return self._means
        sums: dict[str, torch.Tensor] = {}
        n = 0
        runner = self._runner()

        def rec(c: Consumer, x: torch.Tensor) -> None:
            s = self._reduce_except(x.detach().double(), c.dim) * x.shape[0]
            sums[c.node] = sums.get(c.node, 0) + s

        runner.record = rec
        with torch.no_grad():
            for b in self.data.batches:
                runner.run(*b.inputs)
                n += b.inputs[0].shape[0]
        means = {}
        for c in self.cons:
            if c.node in sums:
                shape = [1] * len(self.analysis.graph.shape(c.value))
                shape[c.dim] = len(c.classes)
                means[c.node] = (sums[c.node] / n).float().reshape(shape)
        self._means = means
        return means

    # -- activation statistics -------------------------------------------------------
    def _mean_abs_activation(self) -> dict[str, np.ndarray]:
        """Per consumer node: mean |input| per position along its channel dim, averaged over the batches."""
        acc: dict[str, np.ndarray] = {}
        runner = self._runner()

        def rec(c: Consumer, x: torch.Tensor) -> None:
            v = self._reduce_except(x.detach().double(), c.dim, "absmean").numpy()
            acc[c.node] = acc.get(c.node, 0) + v

        runner.record = rec
        with torch.no_grad():
            for b in self.data.batches:
                runner.run(*b.inputs)
        return {node: v / len(self.data.batches) for node, v in acc.items()}

    def _position_means(self) -> dict[str, np.ndarray]:
        return {node: m.reshape(-1).double().numpy() for node, m in self.means().items()}

    # -- gradient criteria -------------------------------------------------------------
    def _first_order(self, mean_replacement: bool) -> np.ndarray:
        if not self.cons:  # no gated channel: the output does not depend on the gates (found by benchmarks/fuzz.py)
            return self._only_gated(np.zeros(self.C))
        runner = self._runner()
        if mean_replacement:
            runner.means = self.means()
        acc = torch.zeros(self.C + 1, dtype=torch.float64)
        n = 0
        labelled = self.data.labelled
        for b in self.data.batches:
            N = b.inputs[0].shape[0]
            gates = torch.ones(N, self.C + 1, requires_grad=True)
            runner.gates = gates
            out = runner.run(*b.inputs)
            if b.labels is not None:  # labelled: every batch has labels
                loss = task_loss(out, b.labels, self.data.loss_fn, "sum")
                (g,) = torch.autograd.grad(loss, gates)
                acc += g.detach().double().abs().sum(0)
            else:
                outs = all_outputs(out)
                for probe in range(self.probes):
                    proj = _sum_tensors((o * torch.randn(o.shape, generator=self.gen)).sum() for o in outs)
                    (g,) = torch.autograd.grad(proj, gates, retain_graph=probe < self.probes - 1)
                    acc += (g.detach().double() ** 2).sum(0)
            n += N
        runner.gates = None
        scores = (acc / n).numpy() if labelled else np.sqrt((acc / (n * self.probes)).numpy())
        return self._only_gated(scores[: self.C])

    def taylor(self) -> np.ndarray:
        return self._first_order(False)

    def mrs(self) -> np.ndarray:
        return self._first_order(True)

    def taylor2(self) -> np.ndarray:
        with sdpa_kernel([SDPBackend.MATH]):  # fused attention kernels have no double backward
            return self._taylor2()

    def _taylor2(self) -> np.ndarray:
        if not self.cons:
            return self._only_gated(np.zeros(self.C))
        runner = self._runner()
        acc = torch.zeros(self.C + 1, dtype=torch.float64)
        delta = -torch.ones(self.C + 1)
        delta[-1] = 0.0
        for b in self.data.batches:
            gates = torch.ones(self.C + 1, requires_grad=True)
            if b.labels is not None:
                runner.gates = gates
                loss = task_loss(runner.run(*b.inputs), b.labels, self.data.loss_fn, "mean")
            else:
                runner.gates = None
                with torch.no_grad():
                    ref = [o.detach() for o in all_outputs(runner.run(*b.inputs))]
                runner.gates = gates
                outs = all_outputs(runner.run(*b.inputs))
                loss = _sum_tensors(((o - r) ** 2).sum() for o, r in zip(outs, ref, strict=True)) / b.inputs[0].shape[0]
            (g,) = torch.autograd.grad(loss, gates, create_graph=True)
            (hv,) = torch.autograd.grad((g * delta).sum(), gates)
            acc += (delta * (g.detach() + hv.detach())).double().abs()
        runner.gates = None
        return self._only_gated((acc / len(self.data.batches)).numpy()[: self.C])

    def mrp(self, classes: np.ndarray) -> np.ndarray:
        """Exact mean-replacement penalty of each class in ``classes`` (one forward per class and batch)."""
        runner = self._runner()
        runner.means = self.means()
        scores = np.full(self.C, np.nan)
        base_g = torch.ones(self.C + 1)
        with torch.no_grad():
            refs = []
            for b in self.data.batches:
                runner.gates = base_g
                out = runner.run(*b.inputs)
                refs.append((out, None if b.labels is None else self._per_sample_loss(out, b.labels)))
            gated = self._only_gated(np.zeros(self.C))
            for k in classes.tolist():
                if np.isnan(gated[k]):
                    continue
                g = base_g.clone()
                g[k] = 0.0
                runner.gates = g
                total = 0.0
                for b, (ref_out, ref_loss) in zip(self.data.batches, refs, strict=True):
                    out = runner.run(*b.inputs)
                    if b.labels is not None and ref_loss is not None:
                        total += float((self._per_sample_loss(out, b.labels) - ref_loss).abs().sum())
                    else:
                        pairs = zip(all_outputs(out), all_outputs(ref_out), strict=True)
                        total += float(_sum_tensors(((o - r) ** 2).sum() for o, r in pairs))
                scores[k] = total
        runner.gates = None
        return scores

    def damage(
        self, masks: list[np.ndarray], progress: Any = None, mean_replacement: bool = False, updates: Any = None
    ) -> tuple[np.ndarray, str]:
        """The damage of each plan (bool per class) on the calibration data, and what it measures
        (:func:`frontends.torch.sensitivity.probe_damage`; ``allocation="sensitivity"``); ``updates(plan)``: the
        weight updates the compile would make for a plan, applied in its probe."""
        from frontends.torch.sensitivity import attention_reads, probe_damage

        means = self.means() if mean_replacement and updates is None else None
        report = getattr(self, "compensation_report", None)  # the probes' re-fits are not the compile's
        try:
            return probe_damage(self.gm, self.cons, self.C, self.data.batches, self.data.loss_fn, masks, progress, means,
                                attention=attention_reads(self.analysis), updates_for=updates)  # fmt: skip
        finally:
            if updates is not None:
                self.compensation_report = report

    def _per_sample_loss(self, out: Any, labels: torch.Tensor) -> torch.Tensor:
        """The loss of each sample: the caller's ``loss_fn`` one sample at a time, else cross-entropy."""
        loss_fn = self.data.loss_fn
        if loss_fn is not None:
            per_sample = (loss_fn(out[i : i + 1] if isinstance(out, torch.Tensor) else out, labels[i : i + 1]) for i in range(labels.shape[0]))
            return torch.stack(list(per_sample))
        logits = output_tensor(out)
        return F.cross_entropy(logits, labels.long(), reduction="none").reshape(logits.shape[0], -1).sum(1)

    # -- unit criteria -------------------------------------------------------------------
    def _producer_params(self) -> dict[str, torch.Tensor]:
        return {p.weight: module_attr(self.gm, p.weight) for p in self.analysis.producers}

    def obd(self) -> dict[int, np.ndarray]:
        with sdpa_kernel([SDPBackend.MATH]):  # fused attention kernels have no double backward
            return self._obd()

    def _obd(self) -> dict[int, np.ndarray]:
        params = self._producer_params()
        names = [n for n, t in params.items() if isinstance(t, torch.Tensor) and t.requires_grad]
        if not names:
            return {}
        tensors = [params[n] for n in names]
        diag = [torch.zeros_like(t, dtype=torch.float64) for t in tensors]
        runs = 0
        for b in self.data.batches:
            if b.labels is not None:
                loss = task_loss(self.gm(*b.inputs), b.labels, self.data.loss_fn, "mean")
            else:
                with torch.no_grad():
                    ref = [o.detach() for o in all_outputs(self.gm(*b.inputs))]
                outs = all_outputs(self.gm(*b.inputs))
                loss = _sum_tensors(((o - r) ** 2).sum() for o, r in zip(outs, ref, strict=True)) / b.inputs[0].shape[0]
            grads = torch.autograd.grad(loss, tensors, create_graph=True)
            for probe in range(self.probes):
                vs = [torch.randint(0, 2, t.shape, generator=self.gen).to(t.dtype) * 2 - 1 for t in tensors]
                hvp = _sum_tensors((g * v).sum() for g, v in zip(grads, vs, strict=True))
                hvs = torch.autograd.grad(hvp, tensors, retain_graph=probe < self.probes - 1)
                for d, v, hv in zip(diag, vs, hvs, strict=True):
                    d += (v * hv).double().detach()
                runs += 1
        sal = {n: 0.5 * (d / runs).numpy() * params[n].detach().double().numpy() ** 2 for n, d in zip(names, diag, strict=True)}
        out: dict[int, np.ndarray] = {}
        for i, p in enumerate(self.analysis.producers):
            if p.weight in sal:
                s = np.moveaxis(sal[p.weight], p.axis, 0).reshape(sal[p.weight].shape[p.axis], -1).sum(1)
                out[i] = np.abs(s)
        return out

    def synflow(self) -> dict[int, np.ndarray]:
        gm = copy.deepcopy(self.gm).double().eval()
        with torch.no_grad():
            for t in list(gm.parameters()) + list(gm.buffers()):
                if t.is_floating_point():
                    t.abs_()
        ins = []
        for x in self.traced.example_inputs:
            if not x.is_floating_point():
                raise InvalidArgumentError("importance='synflow' needs floating-point model inputs")
            ins.append(torch.ones((1,) + tuple(x.shape[1:]), dtype=torch.float64))
        tensors = {p.weight: module_attr(gm, p.weight) for p in self.analysis.producers}
        names = [n for n, t in tensors.items() if isinstance(t, torch.Tensor) and t.requires_grad]
        R = _sum_tensors(o.sum() for o in all_outputs(gm(*ins)))
        grads = torch.autograd.grad(R, [tensors[n] for n in names], allow_unused=True)
        sal = {}
        for n, g in zip(names, grads, strict=True):
            t = tensors[n].detach()
            sal[n] = np.zeros(t.shape) if g is None else (t * g).abs().numpy()
        out: dict[int, np.ndarray] = {}
        for i, p in enumerate(self.analysis.producers):
            if p.weight in sal:
                out[i] = np.moveaxis(sal[p.weight], p.axis, 0).reshape(sal[p.weight].shape[p.axis], -1).sum(1)
        return out

    # -- layer-wise OBS ------------------------------------------------------------------
    def layers(self) -> list[tuple[ObsLayer, np.ndarray]]:
        """Consumers OBS can handle (Linear, ungrouped Conv1d/Conv2d), with their input Hessians
        (the mean of X̃ᵀX̃ over the calibration rows)."""
        if self._layers is None:
            self._collect_hessians()
        assert self._layers is not None
        return self._layers

    def sequential_compensation(self, pruned: np.ndarray, reduce: Any = None) -> tuple[dict[str, np.ndarray], set[str]]:
        """``compensate="sequential"``: each layer re-fitted on the pruned, compensated model's inputs, guarded
        (:func:`frontends.torch.refit.sequential_compensation`)."""
        from frontends.torch.refit import sequential_compensation

        return sequential_compensation(self, pruned, reduce)

    def held_out_layers(self) -> list[tuple[ObsLayer, np.ndarray, np.ndarray]]:
        """The same Hessians on the fitting and the held-out pieces of :func:`passes.data_criteria.holdout_plan`."""
        if self._split is None:
            self._collect_hessians()
        assert self._split is not None
        return self._split

    def _collect_hessians(self) -> None:
        by_node = self.obs_layers()
        sums: dict[str, np.ndarray] = {}
        rows: dict[str, int] = {}
        held_sums: dict[str, np.ndarray] = {}
        held_rows: dict[str, int] = {}
        runner = self._runner()
        held = [False]  # whether the piece being run is held out

        def rec(c: Consumer, x: torch.Tensor) -> None:
            lay = by_node.get(c.node)
            if lay is None:
                return
            X = self._rows(lay, x.detach().double())
            XtX = (X.T @ X).numpy()
            sums[c.node] = sums.get(c.node, 0) + XtX
            rows[c.node] = rows.get(c.node, 0) + X.shape[0]
            if held[0]:
                held_sums[c.node] = held_sums.get(c.node, 0) + XtX
                held_rows[c.node] = held_rows.get(c.node, 0) + X.shape[0]

        batches = self.data.batches
        sizes = [int(b.inputs[0].shape[0]) for b in batches]
        one = len(batches) == 1 and all(isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == sizes[0] for x in batches[0].inputs)
        runner.record = rec
        with torch.no_grad():
            for i, part, held[0] in holdout_plan(sizes, split_single=one):
                ins = batches[i].inputs if part is None else tuple(x[part] for x in batches[i].inputs)
                runner.run(*ins)
        self._layers = [(lay, sums[node] / rows[node]) for node, lay in by_node.items() if node in sums]
        self._split = [
            (lay, (sums[node] - held_sums[node]) / (rows[node] - held_rows[node]), held_sums[node] / held_rows[node])
            for node, lay in by_node.items()
            if node in held_sums and rows[node] > held_rows[node]
        ]

    @staticmethod
    def _rows(lay: ObsLayer, x: torch.Tensor) -> torch.Tensor:
        """Rows of layer inputs, with a constant column for the bias: [rows, features + 1] (``F.unfold`` for a conv)."""
        if lay.unfold is None:
            X = x.reshape(-1, x.shape[-1])
        else:
            u = lay.unfold
            x = x.unsqueeze(2) if u.conv1d else x
            cols = F.unfold(x, kernel_size=u.kernel_size, dilation=u.dilation, padding=u.padding, stride=u.stride)
            X = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)
