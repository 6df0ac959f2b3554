"""The maths of the data-driven criteria, over statistics an adapter collects (framework-neutral).

An adapter's data object (torch: :class:`frontends.torch.criteria.DataCriteria`; ONNX:
:class:`frontends.onnx.criteria.OnnxDataCriteria`) runs the model on calibration batches and
reduces what each **consumer** (an op contracting over channels: conv, linear, matmul, a sum over
channels; its spec's ``reads``) reads into three statistics, one batch at a time:

=====================  ===================================================================
``_mean_abs_activation``  per consumer: mean |x| per position along the read dim, averaged
                          over the batches (``activation``, ``n2ps``)
``_position_means``       per consumer: mean x per position over the samples (mean
                          replacement: ``mrp``, bias propagation)
``layers``                per OBS layer (:class:`ObsLayer`): H = mean of X̃ᵀX̃ over the rows
                          of its input, a column of ones for the bias (``obs``, compensation)
=====================  ===================================================================

:class:`ChannelStatistics` turns them into class scores and weight updates; what it asks of the
adapter beyond them is what only the format knows: whether a conv's recorded geometry is exact
(:meth:`ChannelStatistics.exact_geometry`), the name of a bias a layer without one gets
(:meth:`ChannelStatistics.new_bias_name`) and whether a constant can be given new values
(:meth:`ChannelStatistics.updatable`).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Container
from dataclasses import dataclass, field

import numpy as np

from frontends.errors import InternalError
from frontends.graph import Op
from passes.channel_analysis import AnalysisResult
from passes.ops import lookup

log = logging.getLogger(__name__)

__all__ = [
    "Consumer",
    "Unfold",
    "ObsLayer",
    "ChannelStatistics",
    "read_consumers",
    "obs_rows",
    "reduce_except",
    "per_sample_cross_entropy",
    "holdout_plan",
    "COMPENSATION_DAMPING",
    "Candidate",
    "guard_candidates",
    "LayerStats",
    "compensated",
    "reconstruction_loss",
]

#: the re-fits among the candidates of guarded compensation, (damping as a multiple of the mean of diag(H), anchored
#: at the current weights); the held-out split chooses among them, a bias shift and not compensating
#: (:func:`guard_candidates`)
COMPENSATION_DAMPING = ((0.01, False), (0.01, True), (0.1, True), (1.0, True))


def holdout_plan(sizes: list[int], split_single: bool = True) -> list[tuple[int, slice | None, bool]]:
    """How calibration batches are split for the compensation guard: ``(batch, samples, held_out)`` pieces.

    Every 4th batch is held out (with 2 or 3 batches, the last one); a single batch of N >= 2 samples is split
    along its first dim (the last ``max(1, N // 4)`` samples held out) where ``split_single``; else nothing is
    held out (``samples`` None: the whole batch)."""
    n = len(sizes)
    if n >= 4:
        return [(i, None, i % 4 == 3) for i in range(n)]
    if n >= 2:
        return [(i, None, i == n - 1) for i in range(n)]
    if n == 1 and split_single and sizes[0] >= 2:
        k = max(1, sizes[0] // 4)
        return [(0, slice(0, sizes[0] - k), False), (0, slice(sizes[0] - k, sizes[0]), True)]
    return [(i, None, False) for i in range(n)]


@dataclass
class Consumer:
    """A contracting op reading channel classes: where gates act and statistics are taken."""

    op: str
    node: str  # the adapter's key of the op's node (an FX node name, an ONNX op name)
    arg: int  # which input is the read (gated) one
    value: str
    dim: int
    classes: np.ndarray  # class per position along ``dim``
    kind: str
    weight: str | None = None  # its constant weight (conv/linear/matmul); None where it has none or it is computed
    extra: dict = field(default_factory=dict)


def read_consumers(analysis: AnalysisResult, key: Callable[[Op, str], str | None]) -> list[Consumer]:
    """Every op that contracts over a tracked channel dim of its input (its spec's ``reads``); ``key(op, value)``
    names the op's node for the adapter (``value``: the input it reads), None to leave the op out (one whose read
    the adapter cannot capture)."""
    out: list[Consumer] = []
    for op in analysis.graph.ops.values():
        spec = lookup(op)
        if spec is None or spec.reads is None:
            continue
        read = spec.reads(op, analysis)
        if read is None:
            continue
        x = op.inputs[read.input]
        lab = analysis.labels.get(x) if x is not None else None
        if x is None or not lab or lab[read.dim] is None:
            continue
        node = key(op, x)
        if node is None:
            continue
        cls = analysis.atom_class[lab[read.dim]]
        w = read.weight if read.weight is not None and analysis.graph.values[read.weight].is_const else None
        out.append(Consumer(op.name, node, read.input, x, read.dim, cls, op.kind, w, dict(op.attrs)))
    return out


def reduce_except(x: np.ndarray, dim: int, fn: str = "mean") -> np.ndarray:
    """Mean (``fn="absmean"``: mean |x|) over every dim of ``x`` but ``dim``, in float64."""
    dims = tuple(d for d in range(x.ndim) if d != dim)
    x = np.asarray(x, dtype=np.float64)
    return np.abs(x).mean(dims) if fn == "absmean" else x.mean(dims)


@dataclass(frozen=True)
class Unfold:
    """How a Conv1d/Conv2d reads its input as rows of patches (a Conv1d's input as height 1)."""

    kernel_size: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    stride: tuple[int, ...]
    conv1d: bool

    @staticmethod
    def of(op: Op, kernel: tuple[int, ...]) -> Unfold | None:
        """An ungrouped, not transposed Conv1d/Conv2d with zero padding mode and numeric padding; else None."""
        a = op.attrs
        stride, dilation, padding = a.get("stride"), a.get("dilation"), a.get("padding")
        if a.get("transposed") or a.get("groups", 1) != 1 or a.get("padding_mode") != "zeros" or len(kernel) not in (1, 2):
            return None
        if stride is None or dilation is None or padding is None or isinstance(padding, str):
            return None
        if len(kernel) == 1:
            return Unfold((1, kernel[0]), (1, dilation[0]), (0, padding[0]), (1, stride[0]), conv1d=True)
        return Unfold(tuple(kernel), tuple(dilation), tuple(padding), tuple(stride), conv1d=False)

    def rows(self, x: np.ndarray) -> np.ndarray:
        """The input patches as rows, ``[N * L, C * k]``, in the order of torch's ``F.unfold`` (channel-major)."""
        if self.conv1d:
            x = x[:, :, None, :]
        (kh, kw), (dh, dw), (ph, pw), (sh, sw) = self.kernel_size, self.dilation, self.padding, self.stride
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # [N, C, OH, OW, kh, kw]
        n, c, oh, ow = win.shape[:4]
        return win.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)


@dataclass(frozen=True)
class ObsLayer:
    """What OBS needs of one consumer layer."""

    consumer: Consumer
    weight: str
    bias: str | None  # value name of an existing (constant) bias
    bias_attr: str | None  # the name of a bias of its own the layer is given (it has none, or shares ``bias``)
    kernel: tuple[int, ...] = ()  # a conv's kernel size (its weight's shape[2:])
    unfold: Unfold | None = None  # a conv's input as rows; None for a linear layer


def obs_rows(lay: ObsLayer, x: np.ndarray) -> np.ndarray:
    """Rows of a layer's input, with a constant column for the bias: ``[rows, features + 1]`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    X = x.reshape(-1, x.shape[-1]) if lay.unfold is None else lay.unfold.rows(x)
    return np.concatenate([X, np.ones((X.shape[0], 1))], 1)


def per_sample_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample (classes on dim 1, summed over any further dims), in float64."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(1, keepdims=True)
    lse = np.log(np.exp(z - top).sum(1)) + top[:, 0]
    picked = np.take_along_axis(z, np.asarray(labels, dtype=np.int64)[:, None], 1)[:, 0]
    return (lse - picked).reshape(z.shape[0], -1).sum(1)


#: a compensation candidate: None (no change), "bias" (a bias shift), or (damping, anchored) (a least-squares re-fit)
Candidate = None | str | tuple[float, bool]


def guard_candidates() -> tuple[Candidate, ...]:
    """What the compensation guard chooses among, per layer: no change first (it wins ties), the bias shift, then
    the re-fits of :data:`COMPENSATION_DAMPING`."""
    return (None, "bias", *COMPENSATION_DAMPING)


@dataclass(frozen=True)
class LayerStats:
    """Second moments of one layer's input rows (a column of ones last, for the bias).

    ``Hp`` = E[x' x'ᵀ] over the inputs the layer will read (the pruned model's), ``Cx`` = E[x' xᵀ] between those
    and the original model's inputs, ``Ho`` = E[x xᵀ] of the original model's inputs. Where a layer is fitted on
    the original model's inputs (independent compensation) all three are one H (:meth:`of`)."""

    Hp: np.ndarray
    Cx: np.ndarray
    Ho: np.ndarray

    @staticmethod
    def of(H: np.ndarray) -> LayerStats:
        return LayerStats(H, H, H)


def compensated(W: np.ndarray, K: np.ndarray, s: LayerStats, cand: Candidate) -> np.ndarray:
    """W̃ (weights and bias column) of a layer that reads only the columns ``K``, after the candidate ``cand``.

    ``None``: the kept weights as they are. ``"bias"``: the kept weights as they are and the bias shifted by the
    mean change of the output, E[W̃ x] - E[W̃_K x'_K] (where x' = x, the removed columns' mean contribution
    W_R E[x_R]: seed 002's bias propagation; on the pruned model's inputs it also absorbs the mean drift from
    upstream). ``(damp, anchored)``: least squares of the original output on the kept inputs,
    argmin_A E||A x'_K - W̃ x||² + λ ||A - A₀||², λ = damp · mean diag(Hp), A₀ = 0, or W̃_K where ``anchored``."""
    Wn = np.zeros_like(W)
    Wn[:, K] = W[:, K]
    if cand is None:
        return Wn
    if cand == "bias":
        Wn[:, -1] += W @ s.Ho[:, -1] - Wn @ s.Hp[:, -1]
        return Wn
    assert isinstance(cand, tuple)
    damp, anchored = cand
    lam = damp * max(float(np.mean(np.diag(s.Hp))), 1e-12)
    HKK = s.Hp[np.ix_(K, K)] + lam * np.eye(len(K))
    rhs = W @ s.Cx[K, :].T  # W̃ E[x x'_Kᵀ]
    if anchored:
        rhs = rhs + lam * W[:, K]
    Wn[:, K] = np.linalg.solve(HKK, rhs.T).T
    return Wn


def reconstruction_loss(Wn: np.ndarray, W: np.ndarray, s: LayerStats) -> float:
    """E||Wn x' - W̃ x||² relative to E||W̃ x||²: the layer's output error over the rows ``s`` was taken on."""
    ref = float(np.sum((W @ s.Ho) * W))  # matrix products, not a three-operand einsum: this runs per candidate
    if s.Hp is s.Cx and s.Cx is s.Ho:
        E = Wn - W
        err = float(np.sum((E @ s.Hp) * E))
    else:
        err = float(np.sum((Wn @ s.Hp) * Wn)) - 2 * float(np.sum((Wn @ s.Cx) * W)) + ref
    return max(err, 0.0) / max(ref, 1e-30)


class ChannelStatistics(ABC):
    """Class scores and weight updates from per-consumer statistics (the module docstring's three).

    Subclasses set ``analysis``, ``cons`` (the consumers they collect for) and ``C`` (the number of classes),
    and supply the statistics.
    """

    analysis: AnalysisResult
    cons: list[Consumer]
    C: int
    compensation_report: dict | None = None  # what the last obs_compensation decided, per layer

    # -- what the adapter supplies -----------------------------------------------------
    @abstractmethod
    def _mean_abs_activation(self) -> dict[str, np.ndarray]:
        """Per consumer node: mean |input| per position along its read dim, averaged over the batches."""

    @abstractmethod
    def _position_means(self) -> dict[str, np.ndarray]:
        """Per consumer node: mean input per position along its read dim over the samples (float64, 1-d)."""

    @abstractmethod
    def layers(self) -> list[tuple[ObsLayer, np.ndarray]]:
        """The OBS layers (:meth:`obs_layers`) with their input Hessians: the mean of X̃ᵀX̃ over the rows."""

    def held_out_layers(self) -> list[tuple[ObsLayer, np.ndarray, np.ndarray]]:
        """Per OBS layer: its input Hessian on the fitting batches and on the held-out ones (:func:`holdout_plan`);
        empty where the calibration data could not be split (compensation is then not applied)."""
        return []

    def exact_geometry(self, op: Op) -> bool:
        """Whether a conv op's recorded stride, padding and dilation are exactly what it computes."""
        return True

    def new_bias_name(self, op: Op) -> str | None:
        """The update name of a bias of its own a conv/linear op is given where it has none, or where its bias
        cannot be updated in place (a constant other ops read too); None: it cannot be given one."""
        return None

    def updatable(self, value: str) -> bool:
        """Whether the constant ``value`` can be given new values (a weight update)."""
        return True

    # -- helpers -----------------------------------------------------------------------
    def _const(self, name: str) -> np.ndarray:
        """The data of a constant value (consumers' weights, OBS layers' biases, producers' weights)."""
        data = self.analysis.graph.values[name].data
        if data is None:
            raise InternalError(f"value {name!r} is not a constant")
        return data if data.dtype in (np.float32, np.float64) or data.dtype.kind not in "fV" else data.astype(np.float32)

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

    def _only_gated(self, scores: np.ndarray) -> np.ndarray:
        """``scores`` where a consumer reads the class, NaN elsewhere."""
        seen = np.zeros(self.C, dtype=bool)
        for c in self.cons:
            seen[c.classes] = True
        return np.where(seen, scores, np.nan)

    # -- activation statistics -----------------------------------------------------------
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

    # -- layer-wise OBS ------------------------------------------------------------------
    def _obs_layer(self, c: Consumer) -> ObsLayer | None:
        """``c`` as a layer OBS can re-fit: a linear layer, or a Conv1d/Conv2d of exact geometry (see
        :meth:`Unfold.of`), with a constant, updatable weight and bias; None for any other consumer."""
        graph = self.analysis.graph
        op = graph.ops[c.op]
        if c.kind not in ("linear", "conv") or c.weight is None or not self.updatable(c.weight):
            return None  # c.weight None: computed, nothing to re-fit
        bias = op.inputs[2]
        if bias is not None and not graph.values[bias].is_const:
            return None
        bias_attr = self.new_bias_name(op) if bias is None or not self.updatable(bias) else None
        if bias is not None and not self.updatable(bias) and bias_attr is None:
            return None
        if c.kind == "linear":
            return ObsLayer(c, c.weight, bias, bias_attr)
        if not self.exact_geometry(op):
            return None
        kernel = graph.shape(c.weight)[2:]
        unfold = Unfold.of(op, kernel)
        return None if unfold is None else ObsLayer(c, c.weight, bias, bias_attr, kernel, unfold)

    def obs_layers(self) -> dict[str, ObsLayer]:
        """The consumers OBS can handle, by node."""
        return {lay.consumer.node: lay for lay in map(self._obs_layer, self.cons) if lay is not None}

    def _wtilde(self, lay: ObsLayer) -> np.ndarray:
        w = self._const(lay.weight).astype(np.float64)
        W = w.reshape(w.shape[0], -1)
        b = self._const(lay.bias).astype(np.float64) if lay.bias is not None else np.zeros(W.shape[0])
        return np.concatenate([W, b[:, None]], 1)

    def _columns(self, lay: ObsLayer) -> np.ndarray:
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
    @staticmethod
    def _refit(W: np.ndarray, H: np.ndarray, K: np.ndarray, damp: float, anchored: bool = False) -> np.ndarray:
        """Least squares of the layer's output on the kept columns ``K`` with ridge λ = ``damp`` · mean diag(H):
        argmin_A ||(A - W) X||² + λ ||A - A₀||², A₀ = 0 (the classical OBS re-fit), or where ``anchored``, A₀ = W_K
        (their current weights: directions the data does not span keep their weights; large λ: no change)."""
        return compensated(W, K, LayerStats.of(H), (damp, anchored))

    @staticmethod
    def _loss(Wn: np.ndarray, W: np.ndarray, H: np.ndarray) -> float:
        """Mean squared change of the layer's output over the rows H was taken on, relative to the output's."""
        return reconstruction_loss(Wn, W, LayerStats.of(H))

    def _todo(self, pruned: np.ndarray) -> list[tuple[ObsLayer, np.ndarray, np.ndarray]]:
        """The OBS layers reading a removed class: (layer, W̃, kept columns of W̃; the bias column where it can have one)."""
        out = []
        for lay in self.obs_layers().values():
            cols = self._columns(lay)
            removed = np.zeros(len(cols), dtype=bool)
            removed[:-1] = pruned[cols[:-1]]
            if not removed.any():
                continue
            keep = ~removed
            if lay.bias is None and lay.bias_attr is None:
                keep[-1] = False
            out.append((lay, self._wtilde(lay), np.flatnonzero(keep)))
        return out

    def _layer_updates(self, lay: ObsLayer, Wn: np.ndarray) -> dict[str, np.ndarray]:
        """The new values of a layer's weight and bias from its re-fitted W̃ (full, unpruned shapes)."""
        w0 = self._const(lay.weight)
        out = {lay.weight: Wn[:, :-1].reshape(w0.shape).astype(w0.dtype)}
        if lay.bias_attr is not None:
            out[lay.bias_attr] = Wn[:, -1].astype(w0.dtype)
        elif lay.bias is not None:
            out[lay.bias] = Wn[:, -1].astype(self._const(lay.bias).dtype)
        return out

    def _guard_row(self, lay: ObsLayer, losses: np.ndarray, cands: tuple) -> tuple[Candidate, dict]:
        """The candidate with the lowest held-out loss (the first, no change, on ties) and its report row."""
        best = int(np.argmin(losses))
        pick = cands[best]
        op = self.analysis.graph.ops[lay.consumer.op]
        row = {
            "layer": op.label or op.name,
            "method": "none" if pick is None else "bias" if pick == "bias" else "refit",
            "damping": pick[0] if isinstance(pick, tuple) else None,
            "anchored": pick[1] if isinstance(pick, tuple) else None,
            "held_out_loss_before": round(float(losses[0]), 6),
            "held_out_loss_after": round(float(losses[best]), 6),
        }
        return pick, row

    @staticmethod
    def _held_out_losses(W: np.ndarray, K: np.ndarray, fit: LayerStats, held: LayerStats, cands: tuple) -> np.ndarray:
        """Held-out loss of each candidate fitted on ``fit`` (inf for a bias shift where the layer can have no bias)."""
        out = np.zeros(len(cands))
        for c, cand in enumerate(cands):
            if cand == "bias" and W.shape[1] - 1 not in K:
                out[c] = np.inf
            else:
                out[c] = reconstruction_loss(compensated(W, K, fit, cand), W, held)
        return out

    @staticmethod
    def _summary(note: str, candidates: int, done: int, rows: list[dict]) -> dict:
        before = sum(r["held_out_loss_before"] for r in rows)
        after = sum(r["held_out_loss_after"] for r in rows)
        return {
            "guard": note,
            "candidates": candidates,
            "applied": done,
            "refused": sum(1 for r in rows if r["method"] == "none"),
            "held_out_loss_before": round(before / len(rows), 6) if rows else None,
            "held_out_loss_after": round(after / len(rows), 6) if rows else None,
            "layers": rows,
        }

    def obs_compensation(
        self,
        pruned: np.ndarray,
        damp: float | None = None,
        reduce: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> tuple[dict[str, np.ndarray], set[str]]:
        """Least-squares re-fit of each consumer's remaining weights (and bias) on the calibration inputs, guarded.

        ``damp`` None (the guard): per layer, each candidate of :data:`GUARD_CANDIDATES` (not compensating; a bias
        shift by the removed columns' mean contribution, seed 002's bias propagation; the classical re-fit and
        re-fits anchored at the current weights with each damping of :data:`COMPENSATION_DAMPING`) is made on the
        fitting split of the calibration batches, and the one with the lowest reconstruction loss on the held-out
        split wins; the chosen candidate is then made on all the data. A layer whose compensation does not lower
        its held-out loss keeps its weights, so compensation never makes a layer's held-out reconstruction worse.
        Without a held-out split nothing is re-fitted. ``reduce`` (an all-reduce under torch.distributed) is
        applied to the held-out losses, so that every rank decides alike. A number ``damp`` makes the classical
        re-fit of every layer with that damping on all the data, unguarded. Each layer is fitted on the original
        model's inputs (independently of the others; the torch adapter's ``compensate="sequential"`` fits each on
        the inputs of the model pruned and compensated up to it). What was decided is in :attr:`compensation_report`.
        """
        updates: dict[str, np.ndarray] = {}
        done: set[str] = set()
        full = {lay.consumer.node: H for lay, H in self.layers()}
        todo = [(lay, W, K) for lay, W, K in self._todo(pruned) if lay.consumer.node in full]
        chosen: dict[str, Candidate] = {}
        rows: list[dict] = []
        if damp is not None:
            chosen = {lay.consumer.node: (damp, False) for lay, *_ in todo}
            note = f"unguarded, damping {damp}"
        else:
            split = {lay.consumer.node: (Hf, Hh) for lay, Hf, Hh in self.held_out_layers()}
            note = "held-out split of the calibration batches" if split else "no held-out split: not applied"
            cands = guard_candidates()
            losses = np.zeros((len(todo), len(cands)))
            avail = np.zeros((len(todo), 1))
            for r, (lay, W, K) in enumerate(todo):
                if lay.consumer.node not in split:
                    continue
                avail[r] = 1.0
                Hf, Hh = split[lay.consumer.node]
                losses[r] = self._held_out_losses(W, K, LayerStats.of(Hf), LayerStats.of(Hh), cands)
            if reduce is not None and len(todo):  # every rank decides on the same (summed) losses
                losses, avail = np.asarray(reduce(losses)), np.asarray(reduce(avail))
            for r, (lay, *_rest) in enumerate(todo):
                if avail[r, 0] <= 0:
                    continue
                chosen[lay.consumer.node], row = self._guard_row(lay, losses[r], cands)
                rows.append(row)
        for lay, W, K in todo:
            choice = chosen.get(lay.consumer.node)
            if choice is None:
                continue
            updates.update(self._layer_updates(lay, compensated(W, K, LayerStats.of(full[lay.consumer.node]), choice)))
            done.add(lay.consumer.node)
        self.compensation_report = self._summary(note, len(todo), len(done), rows)
        return updates, done

    def bias_propagation(
        self, pruned: np.ndarray, skip: Container[str] = frozenset()
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        """Fold each removed channel's mean input into the consumer's bias (seed 002 eq. 1.5-1.6).

        Exact for consumers without padding (linear; a conv of exact geometry with zero padding); a
        padded conv sees the constant only away from its borders, so it is skipped (its removed
        channels are dropped as zeros) and listed, as is a linear or conv consumer whose weight or
        bias is computed rather than constant, or cannot be updated.
        """
        means = self._position_means()
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
            m = np.where(removed, means[c.node], 0.0)
            w = self._const(c.weight).astype(np.float64)
            if c.kind == "linear":
                delta = w @ m
            elif c.kind == "conv" and not op.attrs.get("transposed") and op.attrs.get("groups", 1) == 1:
                padding = op.attrs.get("padding") if self.exact_geometry(op) else None
                if padding is None or isinstance(padding, str) or any(p != 0 for p in padding):
                    skipped.append(op.label or op.name)
                    continue
                delta = w.reshape(w.shape[0], w.shape[1], -1).sum(2) @ m
            else:
                skipped.append(op.label or op.name)
                continue
            bias = op.inputs[2]
            if bias is not None and g.values[bias].is_const and self.updatable(bias):
                b0 = self._const(bias)
                base = updates.get(bias, b0.astype(np.float64))
                updates[bias] = (base + delta).astype(b0.dtype)
            elif bias is None and (name := self.new_bias_name(op)) is not None:
                updates[name] = (updates.get(name, 0) + delta).astype(w.dtype)
            elif bias is not None and g.values[bias].is_const and (name := self.new_bias_name(op)) is not None:
                b0 = self._const(bias)  # shared with other ops: this op gets a bias of its own
                updates[name] = (updates.get(name, b0.astype(np.float64)) + delta).astype(b0.dtype)
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
