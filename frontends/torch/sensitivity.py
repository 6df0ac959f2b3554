"""The damage of candidate plans on the calibration data (torch adapter), for ``allocation="sensitivity"``.

Each plan (bool per channel class) is run as gates on the traced model (:class:`GatedRunner`: a removed class
reads 0, or its mean with bias propagation) and compared with the unpruned run of the same batch:

* with labels: the increase of the task loss per sample (:func:`frontends.torch.calibration.task_loss`, or the
  caller's ``loss_fn``);
* without: the relative squared error of all outputs, ``Σ‖f(g) - f‖² / Σ‖f‖²`` over the calibration batches.

A plan none of whose classes a gated layer reads cannot be measured: its damage is NaN.

The query and key of an attention op (``scaled_dot_product_attention``) are read by no layer with weights: only
the attention product ``q·k`` contracts over their head dim. The probes gate them there too
(:func:`attention_reads`, always with 0: the rewrite removes a channel's ``q_i k_i`` term, which no mean can stand
in for), so removing a head-dim channel of the query/key group shows its real damage through the softmax.

``updates_for(plan) -> {constant: new value}`` (where the compile compensates): each plan is measured on a copy of
the model with the weight updates the compile would make for it (the guarded re-fit, bias propagation) and its
removed channels gated by 0, i.e. the pruned model the compile would build; one plan per forward.

Probes are batched: ``k`` plans run in one forward on the batch repeated ``k`` times, each copy with its own
gate row (per-sample gates), up to ``max_rows`` rows; a model whose graph does not keep the batch dimension
apart (a consumer gated on dim 0, an output without the batch rows, a caller's ``loss_fn``) runs one plan per
forward instead.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from frontends.torch.calibration import Batch, GatedRunner, all_outputs, task_loss
from frontends.torch.nodes import call_arg
from frontends.torch.rewrite import apply_updates
from passes.data_criteria import Consumer

log = logging.getLogger(__name__)

__all__ = ["probe_damage", "attention_reads"]


_QK = ("query", "key")  # scaled_dot_product_attention's first two arguments by keyword


def attention_reads(analysis: Any) -> list[Consumer]:
    """The query (arg 0) and key (arg 1) of every ``attention`` op whose head dim (the last) carries channel
    classes: what the attention product reads, for the probes to gate (no layer with weights reads them)."""
    out = []
    for op in analysis.graph.ops.values():
        node = op.source
        if op.kind != "attention" or not isinstance(node, torch.fx.Node):
            continue
        for arg, value in enumerate(op.inputs[:2]):
            lab = analysis.labels.get(value) if value is not None else None
            if not lab or lab[-1] is None:
                continue
            cls = analysis.atom_class[lab[-1]]
            out.append(Consumer(op.name, node.name, arg, value, len(lab) - 1, cls, op.kind))
    return out


class _ProbeRunner(GatedRunner):
    """:class:`GatedRunner` that also gates the query and key of attention ops (:func:`attention_reads`) by 0."""

    def __init__(self, gm: torch.fx.GraphModule, cons: list[Any], n_classes: int, attention: Sequence[Consumer]) -> None:
        super().__init__(gm, cons, n_classes)
        self.attention: dict[str, list[tuple[Consumer, torch.Tensor]]] = {}
        for c in attention:
            idx = torch.as_tensor(np.where(c.classes >= 0, c.classes, n_classes))
            self.attention.setdefault(c.node, []).append((c, idx))

    def run_node(self, n: torch.fx.Node) -> Any:
        reads = self.attention.get(n.name)
        if not reads or self.gates is None:
            return super().run_node(n)
        fetched, kw = self.fetch_args_kwargs_from_env(n)
        pos, kwargs = list(fetched), dict(kw)
        for c, idx in reads:
            name = _QK[c.arg]
            x = call_arg(pos, kwargs, c.arg, name)
            if not isinstance(x, torch.Tensor):
                continue
            shape = [1] * x.dim()
            shape[c.dim] = len(idx)
            if self.gates.dim() == 1:
                g = self.gates[idx].reshape(shape)
            else:  # per-sample gates: the batch rows on dim 0
                shape[0] = x.shape[0]
                g = self.gates[:, idx].reshape(shape)
            if name in kwargs:
                kwargs[name] = x * g.to(x.dtype)
            else:
                pos[c.arg] = x * g.to(x.dtype)
        return getattr(self, n.op)(n.target, tuple(pos), kwargs)


def _tiled(inputs: tuple[Any, ...], k: int) -> tuple[Any, ...]:
    return tuple(torch.cat([x] * k) if isinstance(x, torch.Tensor) else x for x in inputs)


def _can_tile(b: Batch) -> bool:
    """Every tensor input carries the batch rows on dim 0."""
    n = b.inputs[0].shape[0] if isinstance(b.inputs[0], torch.Tensor) and b.inputs[0].dim() else None
    return n is not None and all(not isinstance(x, torch.Tensor) or (x.dim() > 0 and x.shape[0] == n) for x in b.inputs)


class _Damage:
    """Accumulates each plan's damage over the batches."""

    def __init__(self, n_plans: int, labelled: bool, loss_fn: Callable[[Any, Any], torch.Tensor] | None) -> None:
        self.labelled, self.loss_fn = labelled, loss_fn
        self.num = np.zeros(n_plans)
        self.den = 0.0
        self.samples = 0

    def reference(self, out: Any, b: Batch) -> tuple[list[torch.Tensor], float]:
        outs = [o.detach().double() for o in all_outputs(out)]
        n = int(b.inputs[0].shape[0])
        self.samples += n
        if not self.labelled:
            self.den += float(sum((o**2).sum() for o in outs))
            return outs, 0.0
        assert b.labels is not None
        return outs, self._loss(out, b.labels, n)

    def _loss(self, out: Any, labels: torch.Tensor, n: int) -> float:
        if self.loss_fn is not None:  # the caller's reduction: a mean per batch counts once per sample
            return float(self.loss_fn(out, labels)) * n
        return float(task_loss(out, labels, None, "sum"))

    def add(self, j: int, out: Any, ref: tuple[list[torch.Tensor], float], b: Batch) -> None:
        if self.labelled:
            assert b.labels is not None
            self.num[j] += self._loss(out, b.labels, int(b.inputs[0].shape[0])) - ref[1]
        else:
            self.num[j] += float(sum(((o.double() - r) ** 2).sum() for o, r in zip(all_outputs(out), ref[0], strict=True)))

    def result(self) -> np.ndarray:
        if self.labelled:
            return self.num / max(self.samples, 1)
        return self.num / self.den if self.den > 0 else self.num


def probe_damage(
    gm: torch.fx.GraphModule,
    cons: list[Any],
    n_classes: int,
    batches: list[Batch],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    masks: Sequence[np.ndarray],
    progress: Callable[[str], None] | None = None,
    means: dict[str, torch.Tensor] | None = None,
    max_rows: int = 512,
    attention: Sequence[Consumer] = (),
    updates_for: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None,
) -> tuple[np.ndarray, str]:
    """The damage of each plan in ``masks`` (bool per class) on ``batches``, and what it measures in words;
    ``attention``: the attention reads gated as well (:func:`attention_reads`); ``updates_for``: each plan with
    the weight updates it would get (then ``means`` is not used: the updates carry any bias propagation)."""
    labelled = all(b.labels is not None for b in batches)
    acc = _Damage(len(masks), labelled, loss_fn)
    gates = torch.ones(len(masks), n_classes + 1)
    if masks:
        gates[:, :n_classes][torch.as_tensor(np.stack(masks))] = 0.0
    measure = "relative squared error of the outputs" if not labelled else "task loss increase per sample"
    if updates_for is not None:
        _with_updates(gm, cons, n_classes, batches, acc, masks, gates, attention, updates_for, progress)
        return _unmeasured(cons, attention, n_classes, masks, acc.result()), measure + ", with the compile's weight updates"
    runner = _ProbeRunner(gm, cons, n_classes, attention)
    if means:
        runner.means = means
    tile = loss_fn is None and all(c.dim != 0 for c in cons)
    total, done, shown = len(masks) * len(batches), 0, 0
    with torch.no_grad():
        for b in batches:
            runner.gates = None
            ref = acc.reference(runner.run(*b.inputs), b)
            n = int(b.inputs[0].shape[0])
            k = max(1, max_rows // max(n, 1)) if tile and _can_tile(b) else 1
            start = 0
            while start < len(masks):
                rows = gates[start : start + k]
                if k > 1 and not _run_tiled(runner, rows, b, n, ref, acc, start):
                    log.info("sensitivity probes: this graph does not keep the batch rows apart; one plan per forward")
                    tile, k = False, 1
                    continue
                if k == 1:
                    runner.gates = rows[0]
                    acc.add(start, runner.run(*b.inputs), ref, b)
                start += len(rows)
                done += len(rows)
                if progress and (done - shown) * 10 >= total:
                    shown = done
                    progress(f"sensitivity: {done}/{total} probe runs")
    runner.gates = None
    return _unmeasured(cons, attention, n_classes, masks, acc.result()), measure


def _unmeasured(cons: list[Any], attention: Sequence[Consumer], n_classes: int, masks: Sequence[np.ndarray], damage: np.ndarray) -> np.ndarray:
    """``damage`` with NaN for each plan none of whose classes a gated read carries."""
    gated = np.zeros(n_classes, dtype=bool)
    for c in [*cons, *attention]:
        gated[c.classes[c.classes >= 0]] = True
    unmeasured = np.array([not (m & gated).any() for m in masks], dtype=bool)
    return np.where(unmeasured, np.nan, damage)


def _with_updates(
    gm: torch.fx.GraphModule,
    cons: list[Any],
    n_classes: int,
    batches: list[Batch],
    acc: _Damage,
    masks: Sequence[np.ndarray],
    gates: torch.Tensor,
    attention: Sequence[Consumer],
    updates_for: Callable[[np.ndarray], dict[str, np.ndarray]],
    progress: Callable[[str], None] | None,
) -> None:
    """Each plan on a private copy of ``gm`` holding the plan's weight updates (put back after it), gated by 0."""
    work = copy.deepcopy(gm)
    runner = _ProbeRunner(work, cons, n_classes, attention)
    with torch.no_grad():
        refs = [acc.reference(runner.run(*b.inputs), b) for b in batches]
    shown = 0
    for j, mask in enumerate(masks):
        saved = _current(work, updates := updates_for(mask))
        try:
            apply_updates(work, updates)
            runner.gates = gates[j]
            with torch.no_grad():
                for b, ref in zip(batches, refs, strict=True):
                    acc.add(j, runner.run(*b.inputs), ref, b)
        finally:
            runner.gates = None
            _put_back(work, saved)
        if progress and (j + 1 - shown) * 10 >= len(masks):
            shown = j + 1
            progress(f"sensitivity: {j + 1}/{len(masks)} probes with their weight updates")


def _owner(gm: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    parent_path, _, attr = name.rpartition(".")
    return (gm.get_submodule(parent_path) if parent_path else gm), attr


def _current(gm: torch.nn.Module, names: Any) -> dict[str, Any]:
    """The tensor objects (or None: a bias not there yet) that updates of ``names`` replace."""
    out = {}
    for name in names:
        parent, attr = _owner(gm, name)
        old = getattr(parent, attr, None)
        out[name] = old if isinstance(old, torch.Tensor) else None
    return out


def _put_back(gm: torch.nn.Module, saved: dict[str, Any]) -> None:
    for name, old in saved.items():
        parent, attr = _owner(gm, name)
        if old is None:
            if attr in parent._parameters:
                parent._parameters[attr] = None
            elif hasattr(parent, attr):
                delattr(parent, attr)
        elif attr in parent._parameters:
            parent._parameters[attr] = old
        elif attr in parent._buffers:
            parent._buffers[attr] = old
        else:
            setattr(parent, attr, old)


def _run_tiled(runner: GatedRunner, rows: torch.Tensor, b: Batch, n: int, ref: Any, acc: _Damage, start: int) -> bool:
    """``len(rows)`` plans in one forward on the batch repeated; False where the outputs do not split by rows."""
    k = len(rows)
    runner.gates = rows.repeat_interleave(n, dim=0)
    try:
        out = runner.run(*_tiled(b.inputs, k))
    except RuntimeError as exc:  # a reshape that folds the batch into another dim: gates per sample cannot follow
        log.debug("tiled probe run failed: %s", exc)
        return False
    outs = all_outputs(out)
    if not outs or any(o.dim() == 0 or o.shape[0] != k * n for o in outs):
        return False
    for j in range(k):
        part = [o[j * n : (j + 1) * n] for o in outs]
        acc.add(start + j, part if len(part) > 1 else part[0], ref, b)
    return True
