"""Data-driven and second-order saliency criteria, and the weight updates they imply (torch adapter).

The torch adapter's data object (:class:`DataCriteria`) for the criteria registry
(:mod:`passes.importance`). Class-level criteria act through gates
(:mod:`frontends.torch.calibration`): a class is one coupled channel, so coupling
needs no equalization. Unit-level criteria (``obd``, ``synflow``) score producer
units like ``l1``/``l2`` and are equalized across a group. ``bn_scale`` needs only
the weights and is computed in :mod:`passes.importance`.

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
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from frontends.errors import InternalError, InvalidArgumentError
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

log = logging.getLogger(__name__)

__all__ = ["DataCriteria"]


@dataclass(frozen=True)
class _Unfold:
    """How a Conv1d/Conv2d reads its input: ``F.unfold`` on a 2-d view (a Conv1d's input as height 1)."""

    kernel_size: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    stride: tuple[int, ...]
    conv1d: bool

    @staticmethod
    def of(op: Op, kernel: tuple[int, ...]) -> _Unfold | None:
        """An ungrouped, not transposed Conv1d/Conv2d with zero padding mode and numeric padding; else None."""
        a = op.attrs
        stride, dilation, padding = a.get("stride"), a.get("dilation"), a.get("padding")
        if a.get("transposed") or a.get("groups", 1) != 1 or a.get("padding_mode") != "zeros" or len(kernel) not in (1, 2):
            return None
        if stride is None or dilation is None or padding is None or isinstance(padding, str):
            return None
        if len(kernel) == 1:
            return _Unfold((1, kernel[0]), (1, dilation[0]), (0, padding[0]), (1, stride[0]), conv1d=True)
        return _Unfold(kernel, tuple(dilation), tuple(padding), tuple(stride), conv1d=False)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """The input patches as rows: [N * L, C * k]."""
        if self.conv1d:
            x = x.unsqueeze(2)
        cols = F.unfold(x, kernel_size=self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@dataclass(frozen=True)
class _Layer:
    """What OBS needs of one consumer layer."""

    consumer: Consumer
    weight: str
    bias: str | None  # value name of an existing (constant) bias
    bias_attr: str | None  # module path + ".bias" where a bias can be created
    kernel: tuple[int, ...] = ()  # a conv's kernel size (its weight's shape[2:])
    unfold: _Unfold | None = None  # a conv's input as rows; None for a linear layer


def _sum_tensors(terms: Iterable[torch.Tensor]) -> torch.Tensor:
    """``t_0 + t_1 + ...`` in order (the model's outputs are not empty)."""
    total: torch.Tensor | None = None
    for t in terms:
        total = t if total is None else total + t
    if total is None:
        raise InvalidArgumentError("the model's output holds no tensor")
    return total


class DataCriteria:
    """Computes criteria on calibration data for one traced model and analysis."""

    def __init__(self, traced: TracedModel, analysis: AnalysisResult, data: CalibrationData, probes: int = 4, seed: int = 0) -> None:
        self.traced, self.analysis, self.data = traced, analysis, data
        self.gm = traced.gm
        self.cons = consumers(traced, analysis)
        self.C = analysis.n_classes
        self.probes = probes
        self.gen = torch.Generator().manual_seed(seed)
        self._means: dict[str, torch.Tensor] | None = None
        self._layers: list[tuple[_Layer, np.ndarray]] | None = None

    # -- helpers -----------------------------------------------------------------
    def _runner(self) -> GatedRunner:
        return GatedRunner(self.gm, self.cons, self.C)

    def _const(self, name: str) -> np.ndarray:
        """The data of a constant value (consumers' weights, OBS layers' biases, producers' weights)."""
        data = self.analysis.graph.values[name].data
        if data is None:
            raise InternalError(f"value {name!r} is not a constant")
        return data

    def _scatter_mean(self, per_cons: list[tuple[Consumer, np.ndarray]]) -> np.ndarray:
        total = np.zeros(self.C)
        count = np.zeros(self.C)
        for c, vals in per_cons:
            np.add.at(total, c.classes, vals)
            np.add.at(count, c.classes, 1)
        out = np.full(self.C, np.nan)
        ok = count > 0
        out[ok] = total[ok] / count[ok]
        return out

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

    def activation(self) -> np.ndarray:
        act = self._mean_abs_activation()
        return self._scatter_mean([(c, act[c.node]) for c in self.cons if c.node in act])

    def _fanout(self, c: Consumer) -> np.ndarray | None:
        """Total |weight| leaving each input position of a consumer."""
        if c.weight is None:
            return None
        w = np.abs(self._const(c.weight))
        if c.kind == "conv":
            groups = int(c.extra.get("groups", 1))
            if c.extra.get("transposed"):
                return w.reshape(w.shape[0], -1).sum(1)
            per_col = w.sum(axis=tuple(d for d in range(w.ndim) if d != 1))  # [C_in/g]
            if groups == 1:
                return per_col
            return np.tile(per_col, groups)
        if c.kind == "linear":
            return w.sum(0)
        if c.kind == "matmul":
            w2 = w.reshape(-1, w.shape[-2], w.shape[-1])
            return w2.sum((0, 2))
        return None

    def n2ps(self) -> np.ndarray:
        act = self._mean_abs_activation()
        parts = []
        for c in self.cons:
            fo = self._fanout(c)
            if c.node in act and fo is not None and fo.shape[0] == len(c.classes):
                parts.append((c, act[c.node] * fo))
        return self._scatter_mean(parts)

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

    def _only_gated(self, scores: np.ndarray) -> np.ndarray:
        seen = np.zeros(self.C, dtype=bool)
        for c in self.cons:
            seen[c.classes] = True
        return np.where(seen, scores, np.nan)

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
    def _obs_layer(self, c: Consumer) -> _Layer | None:
        """``c`` as a layer OBS can re-fit: a Linear, or a Conv1d/Conv2d module (see :meth:`_Unfold.of`),
        with a constant weight and bias; None for any other consumer."""
        graph = self.analysis.graph
        op = graph.ops[c.op]
        node = op.source
        if c.kind not in ("linear", "conv") or c.weight is None:
            return None  # c.weight None: computed, nothing to re-fit
        bias = op.inputs[2]
        if bias is not None and not graph.values[bias].is_const:
            return None
        bias_attr = f"{node.target}.bias" if bias is None and node.op == "call_module" else None
        if c.kind == "linear":
            return _Layer(c, c.weight, bias, bias_attr)
        if node.op != "call_module":
            return None
        kernel = graph.shape(c.weight)[2:]
        unfold = _Unfold.of(op, kernel)
        return None if unfold is None else _Layer(c, c.weight, bias, bias_attr, kernel, unfold)

    def layers(self) -> list[tuple[_Layer, np.ndarray]]:
        """Consumers OBS can handle (Linear, ungrouped Conv1d/Conv2d), with their input Hessians
        (the mean of X̃ᵀX̃ over the calibration rows)."""
        if self._layers is not None:
            return self._layers
        by_node = {lay.consumer.node: lay for lay in map(self._obs_layer, self.cons) if lay is not None}
        sums: dict[str, np.ndarray] = {}
        rows: dict[str, int] = {}
        runner = self._runner()

        def rec(c: Consumer, x: torch.Tensor) -> None:
            lay = by_node.get(c.node)
            if lay is None:
                return
            X = self._rows(lay, x.detach().double())
            sums[c.node] = sums.get(c.node, 0) + (X.T @ X).numpy()
            rows[c.node] = rows.get(c.node, 0) + X.shape[0]

        runner.record = rec
        with torch.no_grad():
            for b in self.data.batches:
                runner.run(*b.inputs)
        self._layers = [(lay, sums[node] / rows[node]) for node, lay in by_node.items() if node in sums]
        return self._layers

    @staticmethod
    def _rows(lay: _Layer, x: torch.Tensor) -> torch.Tensor:
        """Rows of layer inputs, with a constant column for the bias: [rows, features + 1]."""
        X = x.reshape(-1, x.shape[-1]) if lay.unfold is None else lay.unfold.rows(x)
        return torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], 1)

    def _wtilde(self, lay: _Layer) -> np.ndarray:
        w = self._const(lay.weight).astype(np.float64)
        W = w.reshape(w.shape[0], -1)
        b = self._const(lay.bias).astype(np.float64) if lay.bias is not None else np.zeros(W.shape[0])
        return np.concatenate([W, b[:, None]], 1)

    def _columns(self, lay: _Layer) -> np.ndarray:
        """Class of every input column of W̃ (the bias column: -1)."""
        k = int(np.prod(lay.kernel)) if lay.kernel else 1
        return np.concatenate([np.repeat(lay.consumer.classes, k), [-1]])

    @staticmethod
    def _damped(H: np.ndarray, damp: float) -> np.ndarray:
        lam = damp * max(float(np.mean(np.diag(H))), 1e-12)
        return H + lam * np.eye(H.shape[0])

    def obs(self, damp: float = 0.01) -> np.ndarray:
        scores = np.zeros(self.C)
        seen = np.zeros(self.C, dtype=bool)
        for lay, H in self.layers():
            Hinv = np.linalg.inv(self._damped(H, damp))
            W = self._wtilde(lay)
            cols = self._columns(lay)
            for k in np.unique(lay.consumer.classes).tolist():
                q = np.flatnonzero(cols == k)
                Wq = W[:, q]
                M = np.linalg.inv(Hinv[np.ix_(q, q)])
                scores[k] += 0.5 * float(np.einsum("oi,ij,oj->", Wq, M, Wq))
                seen[k] = True
        return np.where(seen, scores, np.nan)

    # -- weight updates ----------------------------------------------------------------
    def obs_compensation(self, pruned: np.ndarray, damp: float = 0.01) -> tuple[dict[str, np.ndarray], set[str]]:
        """Least-squares re-fit of each consumer's remaining weights (and bias) on the calibration inputs."""
        updates: dict[str, np.ndarray] = {}
        done: set[str] = set()
        for lay, H in self.layers():
            cols = self._columns(lay)
            removed = np.zeros(len(cols), dtype=bool)
            removed[:-1] = pruned[cols[:-1]]
            if not removed.any():
                continue
            has_bias = lay.bias is not None or lay.bias_attr is not None
            keep = ~removed
            if not has_bias:
                keep[-1] = False
            W = self._wtilde(lay)
            K = np.flatnonzero(keep)
            HKK = self._damped(H[np.ix_(K, K)], damp)
            A = np.linalg.solve(HKK, (W @ H[:, K]).T).T  # [O, |K|]
            Wn = np.zeros_like(W)
            Wn[:, K] = A
            w0 = self._const(lay.weight)
            updates[lay.weight] = Wn[:, :-1].reshape(w0.shape).astype(w0.dtype)
            if lay.bias is not None:
                updates[lay.bias] = Wn[:, -1].astype(self._const(lay.bias).dtype)
            elif lay.bias_attr is not None:
                updates[lay.bias_attr] = Wn[:, -1].astype(w0.dtype)
            done.add(lay.consumer.node)
        return updates, done

    def bias_propagation(
        self, pruned: np.ndarray, skip: Container[str] = frozenset()
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Fold each removed channel's mean input into the consumer's bias (seed 002 eq. 1.5-1.6).

        Exact for consumers without padding (linear; a conv module with zero padding); a
        padded conv sees the constant only away from its borders, so it is skipped
        (its removed channels are dropped as zeros) and listed, as is a linear or conv
        consumer whose weight or bias is computed rather than constant.
        """
        means = self.means()
        updates: dict[str, np.ndarray] = {}
        skipped: list[str] = []
        g = self.analysis.graph
        for c in self.cons:
            if c.node in skip or c.node not in means:
                continue
            removed = pruned[c.classes]
            if not removed.any():
                continue
            op = g.ops[c.op]
            if c.weight is None:
                if c.kind in ("linear", "conv"):  # a computed weight
                    skipped.append(op.label or op.name)
                continue
            node = op.source
            m = means[c.node].reshape(-1).double().numpy()
            m = np.where(removed, m, 0.0)
            w = self._const(c.weight).astype(np.float64)
            if c.kind == "linear":
                delta = w @ m
            elif c.kind == "conv" and not op.attrs.get("transposed") and op.attrs.get("groups", 1) == 1:
                padding = op.attrs.get("padding") if node.op == "call_module" else None
                if padding is None or isinstance(padding, str) or any(p != 0 for p in padding):
                    skipped.append(op.label or op.name)
                    continue
                delta = w.reshape(w.shape[0], w.shape[1], -1).sum(2) @ m
            else:
                skipped.append(op.label or op.name)
                continue
            bias = op.inputs[2]
            if bias is not None and g.values[bias].is_const:
                b0 = self._const(bias)
                base = updates.get(bias, b0.astype(np.float64))
                updates[bias] = (base + delta).astype(b0.dtype)
            elif bias is None and node.op == "call_module":
                name = f"{node.target}.bias"
                updates[name] = (updates.get(name, 0) + delta).astype(w.dtype)
            else:
                skipped.append(op.label or op.name)
        return updates, skipped

    def nz_fraction(self) -> np.ndarray:
        """Per class: the larger of fan-in and fan-out non-zero fractions over its members (seed 002 f_nz)."""
        a = self.analysis
        fan_in = np.zeros(self.C)
        for p in a.producers:
            w = self._const(p.weight)
            u = np.moveaxis(w, p.axis, 0).reshape(w.shape[p.axis], -1)
            np.maximum.at(fan_in, a.atom_class[p.atoms], (u != 0).mean(1))
        fan_out = np.zeros(self.C)
        seen = np.zeros(self.C, dtype=bool)
        for c in self.cons:
            if c.weight is None:
                continue
            w = self._const(c.weight)
            if c.kind == "linear":
                nz = (w != 0).mean(0)
            elif c.kind == "conv" and not c.extra.get("transposed") and c.extra.get("groups", 1) == 1:
                nz = (w != 0).mean(axis=tuple(d for d in range(w.ndim) if d != 1))
            elif c.kind == "matmul":
                nz = (w.reshape(-1, w.shape[-2], w.shape[-1]) != 0).mean((0, 2))
            else:
                nz = np.ones(len(c.classes))
            if len(nz) != len(c.classes):
                continue
            np.maximum.at(fan_out, c.classes, nz)
            seen[c.classes] = True
        fan_out = np.where(seen, fan_out, 1.0)
        return np.minimum(fan_in, fan_out)
