"""Pruning workflows of the seeds, built on :func:`compiler.compile`.

=========================== ==================================================================
``iterative_prune``         a schedule of pruning steps with training in between (seed 002,
                            table 2.2: cumulative fractions 0.2, 0.5, 0.8, 0.9); a per-step
                            history of parameters, MACs and the caller's metric
``lottery_ticket``          the same loop, rewinding the surviving weights to their values at
                            initialization or an early checkpoint after every step (seed 003)
``rewind``                  one pruned architecture with the weights of another state of the
                            original model (the kept slices of every tensor)
``MagnitudePruner``         unstructured magnitude pruning *during* training, the zeros held by
                            gradient and optimizer-step masks (seeds 000, 002)
``sparsify_and_compact``    unstructured threshold / top-k, then the dead units removed into a
                            dense network (``compile(f_nz=...)``, seed 002 fig. 2.11)
``SparsityRegularizer``     group weight decay over each channel's fan-in, per coupling group
                            (seed 004), and BatchNorm-scale L1 (network slimming), as a loss term
``distributed_compile``     ``compile`` under ``torch.distributed``: calibration statistics and
                            weight updates reduced across ranks, so every rank prunes identically
=========================== ==================================================================

Callbacks: ``train_fn(model, step)`` trains ``model`` in place (or returns a new model) after
pruning step ``step`` (1-based); the model it gets is in eval mode, so it should call
``model.train()``. ``eval_fn(model)`` returns any metric (a float for the tables).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compiler.api import CompileResult
from compiler.api import compile as _compile
from frontends.errors import InvalidArgumentError, PrunecError

log = logging.getLogger(__name__)

__all__ = [
    "iterative_prune",
    "lottery_ticket",
    "rewind",
    "PruneStep",
    "WorkflowResult",
    "MagnitudePruner",
    "sparsify_and_compact",
    "CompactResult",
    "SparsityRegularizer",
    "group_weight_decay",
    "bn_l1",
    "distributed_compile",
]

_POLICIES = ("ratio", "threshold", "target_macs", "f_nz")


# ---------------------------------------------------------------------------
# iterative schedules and lottery tickets


@dataclass
class PruneStep:
    """One row of a workflow's history (step 0: the model before any pruning)."""

    step: int
    target: float | None  # the cumulative fraction asked for (None for step 0)
    fraction: float  # the cumulative fraction reached: of prunable channels, or of MACs
    params: int
    macs: int
    metric_pruned: Any = None  # eval_fn right after pruning (and rewinding)
    metric: Any = None  # eval_fn after train_fn (the same as metric_pruned without train_fn)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class WorkflowResult:
    model: nn.Module  # the final (pruned, trained) model
    history: list[PruneStep]  # step 0 (the input model), then one row per pruning step
    results: list[CompileResult] = field(default_factory=list, repr=False)  # one per step

    def table(self) -> str:
        """The history as a markdown table."""
        rows = [
            "| step | target | reached | params | MACs | metric after pruning | after training |",
            "|---|---|---|---|---|---|---|",
        ]
        for h in self.history:
            tgt = "-" if h.target is None else f"{h.target:.3f}"
            rows.append(
                f"| {h.step} | {tgt} | {h.fraction:.3f} | {h.params} | {h.macs} | {_fmt(h.metric_pruned)} | {_fmt(h.metric)} |"
            )
        return "\n".join(rows)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def _prunable_channels(result: CompileResult) -> tuple[int, int]:
    """(before, after) prunable channels summed over the coupling groups of one compile."""
    before = sum(g.channels_before - g.frozen_channels for g in result.report.groups)
    after = sum(g.channels_after - g.frozen_channels for g in result.report.groups)
    return before, after


def _check_schedule(schedule: Sequence[float], cumulative: bool) -> list[float]:
    sched = [float(s) for s in schedule]
    if not sched:
        raise InvalidArgumentError("schedule is empty")
    if any(not 0.0 <= s < 1.0 for s in sched):
        raise InvalidArgumentError(f"schedule fractions must be in [0, 1), got {sched}")
    if cumulative and any(b < a for a, b in zip(sched, sched[1:], strict=False)):
        raise InvalidArgumentError(f"a cumulative schedule must not decrease, got {sched}")
    return sched


def _train(train_fn: Callable[[nn.Module, int], Any] | None, model: nn.Module, step: int) -> nn.Module:
    if train_fn is None:
        return model
    out = train_fn(model, step)
    model = out if isinstance(out, nn.Module) else model
    return model.eval()


def _measure(model: nn.Module, example_inputs: tuple) -> tuple[int, int]:
    from frontends.torch_fx import load_torch
    from passes.cost import graph_macs, graph_params

    g = load_torch(model, example_inputs).graph
    return graph_params(g), graph_macs(g)


def iterative_prune(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    schedule: Sequence[float] = (0.2, 0.5, 0.8, 0.9),
    train_fn: Callable[[nn.Module, int], Any] | None = None,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    *,
    cumulative: bool = True,
    measure: str = "channels",
    rewind_to: Mapping[str, torch.Tensor] | nn.Module | None = None,
    compile_fn: Callable[..., CompileResult] | None = None,
    **compile_kwargs: Any,
) -> WorkflowResult:
    """Prune ``model`` in steps, training between them; each step prunes the previous step's model.

    ``schedule``: cumulative fractions of the *original* model (``cumulative=True``, as seed 002's
    table 2.2: 0.2, 0.5, 0.8, 0.9), or per-step fractions of the current model
    (``cumulative=False``). ``measure``: what the fractions count, ``"channels"`` (the prunable
    channels of every coupling group, the ``ratio`` policy; each step's ratio is corrected for
    what earlier steps actually removed) or ``"macs"`` (the ``target_macs`` policy). Kept
    channel counts are rounded up to ``granularity`` (``compile``'s default 8), so a coarse
    granularity stays below the targets; the history says what was reached.

    After each step ``train_fn(model, step)`` (if given) trains the pruned model and
    ``eval_fn(model)`` (if given) is recorded right after pruning and after training.
    ``rewind_to``: a state (state dict or model of the original architecture) the surviving
    weights are reset to after each step, before training (lottery tickets; see
    :func:`lottery_ticket`). ``compile_fn`` replaces :func:`compiler.compile` (e.g.
    :func:`distributed_compile`); ``compile_kwargs`` go to it unchanged at every step
    (``importance``, ``calibration``, ``granularity``, ...), except the policy, which the
    schedule sets.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    given = [k for k in _POLICIES if compile_kwargs.get(k) is not None]
    if given:
        raise InvalidArgumentError(f"the schedule sets the policy; do not pass {', '.join(given)}")
    if measure not in ("channels", "macs"):
        raise InvalidArgumentError(f"measure must be 'channels' or 'macs', got {measure!r}")
    sched = _check_schedule(schedule, cumulative)
    if compile_kwargs.get("calibration") is not None:  # re-iterated at every step
        compile_kwargs["calibration"] = list(compile_kwargs["calibration"])
    compile_fn = compile_fn or _compile
    init_state = None
    if rewind_to is not None:
        init_state = _state_dict(rewind_to)

    params0, macs0 = _measure(model, example_inputs)
    m0 = eval_fn(model) if eval_fn is not None else None
    history = [PruneStep(0, None, 0.0, params0, macs0, m0, m0)]
    results: list[CompileResult] = []
    current = model
    n0: int | None = None  # prunable channels of the original
    n_cur: int | None = None
    macs_cur = macs0
    done = 0.0  # cumulative fraction reached
    for step, s in enumerate(sched, start=1):
        target = s if cumulative else 1.0 - (1.0 - done) * (1.0 - s)
        if measure == "channels":
            if cumulative and n0 and n_cur:  # correct for what the earlier steps really removed
                ratio = 1.0 - (1.0 - target) * n0 / n_cur
            else:  # the first step, or per-step fractions
                ratio = s
            ratio = min(max(ratio, 0.0), 0.999)
            result = compile_fn(current, example_inputs, ratio=ratio, **compile_kwargs)
        else:
            budget = (1.0 - target) * macs0 if cumulative else (1.0 - s) * macs_cur
            result = compile_fn(current, example_inputs, target_macs=max(budget, 1.0 + 1e-9), **compile_kwargs)
        results.append(result)
        before, after = _prunable_channels(result)
        if n0 is None:
            n0 = before
        n_cur = after
        macs_cur = result.report.macs_after
        if measure == "channels":
            done = 1.0 - n_cur / n0 if n0 else 0.0
        else:
            done = 1.0 - macs_cur / macs0 if macs0 else 0.0
        pruned = result.model
        if init_state is not None:
            pruned = rewind(result, init_state)
            init_state = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
        pruned.eval()
        mp = eval_fn(pruned) if eval_fn is not None else None
        current = _train(train_fn, pruned, step)
        mt = eval_fn(current) if (eval_fn is not None and train_fn is not None) else mp
        history.append(PruneStep(step, target, done, result.report.params_after, macs_cur, mp, mt))
        log.info(
            "step %d: target %.3f reached %.3f, params %d, MACs %d", step, target, done, history[-1].params, macs_cur
        )
    return WorkflowResult(current, history, results)


def _state_dict(state: Mapping[str, torch.Tensor] | nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(state, nn.Module):
        state = state.state_dict()
    if not isinstance(state, Mapping):
        raise InvalidArgumentError(f"expected a state dict or a model, got {type(state).__name__}")
    return {k: v.detach().clone() for k, v in state.items()}


def rewind(result: CompileResult, state: Mapping[str, torch.Tensor] | nn.Module) -> nn.Module:
    """The pruned architecture of ``result`` with the weights of ``state`` (seed 003).

    ``state`` is a state dict (or a model) of the model that was compiled, at another point of
    its training: its initialization, or an early checkpoint. Every tensor is sliced exactly as
    the compile sliced the trained one (the kept channels of the plan), so the result's weights
    are the corresponding slices of ``state``. Weight updates of the compile (bias propagation,
    compensation) are not applied: rewinding replaces them.
    """
    from passes.rewrite_fx import RewriteFX

    if result.plan is None or result.traced is None or not hasattr(result.traced, "gm"):
        raise InvalidArgumentError("rewind needs the CompileResult of a PyTorch model")
    sd = _state_dict(state)
    gm = copy.deepcopy(result.traced.gm)
    own = gm.state_dict()
    missing = [k for k in own if k not in sd]
    if missing:
        raise InvalidArgumentError(
            f"the state lacks {len(missing)} tensor(s) of the compiled model, e.g. {missing[0]!r}; "
            "pass the state dict of the same architecture"
        )
    bad = [k for k in own if tuple(sd[k].shape) != tuple(own[k].shape)]
    if bad:
        raise InvalidArgumentError(
            f"{bad[0]!r} has shape {tuple(sd[bad[0]].shape)} in the state, {tuple(own[bad[0]].shape)} in the compiled model"
        )
    gm.load_state_dict({k: sd[k] for k in own})
    traced = dataclasses.replace(result.traced, gm=gm)
    p = result.plan
    out = RewriteFX().call(traced, p.analysis, p.selection.pruned).module
    return out.eval()


def lottery_ticket(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    init_state: Mapping[str, torch.Tensor] | nn.Module,
    schedule: Sequence[float] = (0.5,),
    train_fn: Callable[[nn.Module, int], Any] | None = None,
    eval_fn: Callable[[nn.Module], Any] | None = None,
    **kwargs: Any,
) -> WorkflowResult:
    """Structured lottery-ticket pruning with rewinding (seed 003, iterated when ``schedule`` has several steps).

    ``model`` is trained; ``init_state`` is its state at initialization (or an early
    checkpoint). Each step: prune the current model by magnitude (``importance`` defaults to
    ``"l1"``), reset the surviving weights to their ``init_state`` values, and retrain with
    ``train_fn``. Other arguments as :func:`iterative_prune`.
    """
    kwargs.setdefault("importance", "l1")
    return iterative_prune(model, example_inputs, schedule, train_fn, eval_fn, rewind_to=init_state, **kwargs)


# ---------------------------------------------------------------------------
# unstructured sparsity and dead units

_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)


class MagnitudePruner:
    """Unstructured magnitude pruning during training (seed 002 section 2.2, seed 000).

    ``prune(fraction)`` zeroes the ``fraction`` of conv/linear weights with the smallest
    magnitude (over all layers with ``scope="global"``, as seed 002; per layer with
    ``"layer"``); fractions are cumulative and masks only grow. The zeros are held during
    training: gradients of removed weights are masked, and ``attach(optimizer)`` re-applies the
    masks after every optimizer step (momentum or weight decay would otherwise move them).
    ``remove()`` drops the hooks. Then :func:`sparsify_and_compact`'s second half
    (``compile(model, x, f_nz=0.0)``) turns dead units into a smaller dense network.
    """

    def __init__(self, model: nn.Module, scope: str = "global") -> None:
        if scope not in ("global", "layer"):
            raise InvalidArgumentError(f"scope must be 'global' or 'layer', got {scope!r}")
        self.model, self.scope = model, scope
        self.layers = {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS)}
        self.masks: dict[str, torch.Tensor] = {
            n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.layers.items()
        }
        self._handles: list[Any] = []
        for n, m in self.layers.items():
            self._handles.append(m.weight.register_hook(lambda g, n=n: g * self.masks[n].to(g.dtype)))

    def prune(self, fraction: float) -> float:
        """Zero the smallest weights until ``fraction`` of them are zero; returns the sparsity reached."""
        from passes.sparsify import sparsify

        if not 0.0 <= fraction < 1.0:
            raise InvalidArgumentError(f"fraction must be in [0, 1), got {fraction}")
        probe = nn.ModuleDict({n.replace(".", "/"): m for n, m in self.layers.items()})
        sparse = sparsify(probe, amount=fraction, scope=self.scope) if fraction > 0 else probe
        with torch.no_grad():
            for n in self.layers:
                self.masks[n] &= sparse[n.replace(".", "/")].weight != 0
        self.apply()
        return self.sparsity

    def apply(self) -> None:
        with torch.no_grad():
            for n, m in self.layers.items():
                m.weight.mul_(self.masks[n].to(m.weight.dtype))

    def attach(self, optimizer: torch.optim.Optimizer) -> MagnitudePruner:
        self._handles.append(optimizer.register_step_post_hook(lambda *_: self.apply()))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / total if total else 0.0


@dataclass
class CompactResult:
    sparse: nn.Module  # the unstructured-sparse copy (same architecture)
    sparsity: float  # fraction of conv/linear weights that are zero in it
    result: CompileResult  # the dense network without its dead units

    @property
    def model(self) -> nn.Module:
        return self.result.model


def weight_sparsity(model: nn.Module) -> float:
    ws = [m.weight for m in model.modules() if isinstance(m, _LAYERS)]
    total = sum(w.numel() for w in ws)
    return float(sum(int((w == 0).sum()) for w in ws)) / total if total else 0.0


def sparsify_and_compact(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    amount: float | None = None,
    threshold: float | None = None,
    *,
    scope: str = "layer",
    f_nz: float = 0.0,
    **compile_kwargs: Any,
) -> CompactResult:
    """Unstructured magnitude pruning (top-k ``amount`` or ``threshold``, seed 000), then the units
    with at most ``f_nz`` non-zero fan-in or fan-out weights removed into a dense network (seed 002).

    ``compile_kwargs`` go to ``compile`` (``bias_propagation`` is on by default with ``f_nz``;
    give ``calibration`` for the means it propagates; ``granularity`` defaults to 1 here, since
    dead units come one at a time). Without ``amount`` and ``threshold`` the model is compacted as it is.
    """
    from passes.sparsify import sparsify

    given = [k for k in _POLICIES if compile_kwargs.get(k) is not None]
    if given:
        raise InvalidArgumentError(f"the policy is f_nz; do not pass {', '.join(given)}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if amount is None and threshold is None:
        sparse = copy.deepcopy(model)
    else:
        sparse = sparsify(model, amount=amount, threshold=threshold, scope=scope)
    compile_kwargs.setdefault("granularity", 1)
    result = _compile(sparse, tuple(example_inputs), f_nz=f_nz, **compile_kwargs)
    return CompactResult(sparse, weight_sparsity(sparse), result)


# ---------------------------------------------------------------------------
# sparsity-inducing regularizers


def group_weight_decay(
    model: nn.Module, example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None
) -> torch.Tensor:
    """Σ over output channels of the L2 norm of the channel's fan-in weights (group lasso, seed 004).

    Without ``example_inputs``: every conv/linear output channel on its own. With them the model
    is traced and coupled channels share one norm (see :class:`SparsityRegularizer`, which
    traces once; use it inside a training loop).
    """
    return SparsityRegularizer(model, example_inputs, group_decay=1.0)()


def bn_l1(model: nn.Module) -> torch.Tensor:
    """Σ |γ| over the BatchNorm layers' scales (network slimming)."""
    terms = [
        m.weight.abs().sum()
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]
    if not terms:
        return _zero(model)
    return torch.stack(terms).sum()


def _zero(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else None, dtype=p.dtype if p is not None else None)


class SparsityRegularizer:
    """A loss term that drives whole channels to zero: ``loss = task_loss + reg()``.

    ``group_decay * Σ_c sqrt(Σ_{units u of channel c} ||w_u||²)`` over channel classes: the
    fan-in weights of every unit of a channel, where ``u`` runs over all layers of the
    channel's coupling group when ``example_inputs`` are given (a residual stream's channel is
    one group of weights across all its producers; the model's output channels and other frozen
    channels are left out), or over one layer's output channel without them. Plus
    ``bn_l1 * Σ|γ|`` over BatchNorm scales. Seed 004 picks ``group_decay`` so that the penalty is
    about the size of the task loss.
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Sequence[torch.Tensor] | torch.Tensor | None = None,
        group_decay: float = 1e-4,
        bn_l1: float = 0.0,
        eps: float = 1e-12,
    ) -> None:
        self.model, self.group_decay, self.bn_l1, self.eps = model, float(group_decay), float(bn_l1), eps
        self.terms: list[tuple[nn.Parameter, int, torch.Tensor]] = []  # (weight, unit axis, class per unit)
        self.n_classes = 0
        self.keep: torch.Tensor | None = None  # classes that are penalized
        if example_inputs is None:
            for m in model.modules():
                if isinstance(m, _LAYERS):
                    axis = 1 if isinstance(m, nn.modules.conv._ConvNd) and m.transposed else 0
                    n = m.weight.shape[axis]
                    self.terms.append((m.weight, axis, torch.arange(self.n_classes, self.n_classes + n)))
                    self.n_classes += n
            return
        from frontends.torch_fx import load_torch
        from passes.channel_analysis import ChannelAnalysis

        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        traced = load_torch(model, tuple(example_inputs))
        analysis = ChannelAnalysis().call(traced.graph)
        params = dict(model.named_parameters())
        skipped = []
        for p in analysis.producers:
            w = params.get(p.weight)
            if w is None:
                skipped.append(p.weight)
                continue
            self.terms.append((w, p.axis, torch.as_tensor(analysis.atom_class[p.atoms], dtype=torch.long)))
        if skipped:
            log.warning("SparsityRegularizer: no parameter of the model for %s; not penalized", ", ".join(skipped))
        self.n_classes = analysis.n_classes
        keep = np.zeros(self.n_classes, dtype=bool)
        for g in analysis.groups:
            keep[g.classes[~g.frozen]] = True
        self.keep = torch.as_tensor(keep)

    def group_term(self) -> torch.Tensor:
        if not self.terms:
            return _zero(self.model)
        w0 = self.terms[0][0]
        sq = torch.zeros(self.n_classes, dtype=w0.dtype, device=w0.device)
        for w, axis, cls in self.terms:
            u = w.movedim(axis, 0).reshape(w.shape[axis], -1).pow(2).sum(1)
            sq = sq.index_add(0, cls.to(w.device), u)
        if self.keep is not None:
            sq = sq[self.keep.to(sq.device)]
        return torch.sqrt(sq + self.eps).sum()

    def __call__(self) -> torch.Tensor:
        total = _zero(self.model)
        if self.group_decay:
            total = total + self.group_decay * self.group_term()
        if self.bn_l1:
            total = total + self.bn_l1 * bn_l1(self.model)
        return total


# ---------------------------------------------------------------------------
# torch.distributed


def distributed_compile(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    calibration: Iterable[Any] | None = None,
    *,
    group: Any = None,
    sync_weights: bool = True,
    **compile_kwargs: Any,
) -> CompileResult:
    """:func:`compiler.compile` on every rank of a ``torch.distributed`` job, each with its own
    calibration shard; every rank gets the same pruned model.

    When ``torch.distributed`` is initialized: the model's parameters and buffers are taken from
    rank 0 (``sync_weights``; the caller's model is untouched), and every raw criterion statistic
    (before per-layer normalization) and every weight update (bias propagation, OBS compensation)
    is all-reduced as a mean over ranks weighted by their calibration sample counts. The result
    equals the single-process compile on the union of the shards exactly where the statistic is
    a per-sample or per-batch mean (``activation``, ``n2ps``, labelled ``taylor``/``mrs``,
    ``taylor2``, ``mrp`` up to scale, and bias propagation, with equal batch sizes) and
    approximately otherwise (``obs`` and its compensation average per-rank solutions; ``obd``
    averages per-rank |unit sums|). Weight criteria need no data. Afterwards the ranks' pruned
    channels are compared and a mismatch raises :class:`PrunecError`. Without an initialized
    process group this is ``compile``.
    """
    import torch.distributed as dist

    from passes.saliency import reduce_statistics

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    if not (dist.is_available() and dist.is_initialized()):
        return _compile(model, example_inputs, calibration=calibration, **compile_kwargs)
    batches = list(calibration) if calibration is not None else None
    n_local = 0
    for b in batches or [example_inputs]:
        x = b if isinstance(b, torch.Tensor) else b[0]
        n_local += int(x.shape[0])
    backend_device = _comm_device(group)
    n = torch.tensor([float(n_local)], dtype=torch.float64, device=backend_device)
    dist.all_reduce(n, group=group)
    weight = n_local / float(n.item())

    def reduce(a: np.ndarray) -> np.ndarray:
        arr = np.asarray(a)
        t = torch.as_tensor(arr.astype(np.float64) * weight, device=backend_device)
        dist.all_reduce(t, group=group)
        return t.cpu().numpy().astype(arr.dtype, copy=False).reshape(arr.shape)

    work = model
    if sync_weights:
        work = copy.deepcopy(model)
        for t in work.state_dict().values():
            if t.device.type != backend_device.type:
                buf = t.detach().to(backend_device)
                dist.broadcast(buf, src=_global_rank0(group), group=group)
                t.data.copy_(buf.to(t.device))
            else:
                dist.broadcast(t.data, src=_global_rank0(group), group=group)
    with reduce_statistics(reduce):
        result = _compile(work, example_inputs, calibration=batches, **compile_kwargs)
    assert result.plan is not None
    mine = torch.as_tensor(result.plan.selection.pruned.astype(np.float64), device=backend_device)
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(lo, hi):
        raise PrunecError("ranks chose different channels to prune (their models or inputs differ in structure)")
    return result


def _comm_device(group: Any) -> torch.device:
    import torch.distributed as dist

    backend = dist.get_backend(group)
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_rank0(group: Any) -> int:
    import torch.distributed as dist

    if group is None:
        return 0
    return dist.get_global_rank(group, 0)
