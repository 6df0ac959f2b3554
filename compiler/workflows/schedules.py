"""Pruning schedules: iterative pruning with training in between, lottery tickets, rewinding.

Callbacks: ``train_fn(model, step)`` trains ``model`` in place (or returns a new model) after
pruning step ``step`` (1-based); the model it gets is in eval mode, so it should call
``model.train()``. ``eval_fn(model)`` returns any metric (a float for the tables).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from compiler.api import CompileResult
from compiler.api import compile as _compile
from compiler.workflows.common import as_inputs, clone_state, reject_policies
from frontends.errors import InvalidArgumentError

log = logging.getLogger(__name__)

__all__ = ["iterative_prune", "lottery_ticket", "rewind", "PruneStep", "WorkflowResult"]

TrainFn = Callable[[nn.Module, int], Any]
EvalFn = Callable[[nn.Module], Any]


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
    """The final model of a schedule, its per-step history, and every step's compile result."""

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


def _train(train_fn: TrainFn | None, model: nn.Module, step: int) -> nn.Module:
    if train_fn is None:
        return model
    out = train_fn(model, step)
    model = out if isinstance(out, nn.Module) else model
    return model.eval()


def _measure(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    from frontends.torch import load_torch
    from passes.cost import graph_macs, graph_params

    g = load_torch(model, example_inputs).graph
    return graph_params(g), graph_macs(g)


def iterative_prune(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    schedule: Sequence[float] = (0.2, 0.5, 0.8, 0.9),
    train_fn: TrainFn | None = None,
    eval_fn: EvalFn | None = None,
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
    :func:`compiler.workflows.distributed_compile`); ``compile_kwargs`` go to it unchanged at
    every step (``importance``, ``calibration``, ``granularity``, ...), except the policy,
    which the schedule sets.
    """
    inputs = as_inputs(example_inputs)
    reject_policies(compile_kwargs, "the schedule sets the policy")
    if measure not in ("channels", "macs"):
        raise InvalidArgumentError(f"measure must be 'channels' or 'macs', got {measure!r}")
    sched = _check_schedule(schedule, cumulative)
    if compile_kwargs.get("calibration") is not None:  # re-iterated at every step
        compile_kwargs["calibration"] = list(compile_kwargs["calibration"])
    run = compile_fn or _compile
    init_state = clone_state(rewind_to) if rewind_to is not None else None

    params0, macs0 = _measure(model, inputs)
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
            result = run(current, inputs, ratio=ratio, **compile_kwargs)
        else:
            budget = (1.0 - target) * macs0 if cumulative else (1.0 - s) * macs_cur
            result = run(current, inputs, target_macs=max(budget, 1.0 + 1e-9), **compile_kwargs)
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
            init_state = clone_state(pruned)
        pruned.eval()
        mp = eval_fn(pruned) if eval_fn is not None else None
        current = _train(train_fn, pruned, step)
        mt = eval_fn(current) if (eval_fn is not None and train_fn is not None) else mp
        history.append(PruneStep(step, target, done, result.report.params_after, macs_cur, mp, mt))
        log.info(
            "step %d: target %.3f reached %.3f, params %d, MACs %d", step, target, done, history[-1].params, macs_cur
        )
    return WorkflowResult(current, history, results)


def rewind(result: CompileResult, state: Mapping[str, torch.Tensor] | nn.Module) -> nn.Module:
    """The pruned architecture of ``result`` with the weights of ``state`` (seed 003).

    ``state`` is a state dict (or a model) of the model that was compiled, at another point of
    its training: its initialization, or an early checkpoint. Every tensor is sliced exactly as
    the compile sliced the trained one (the kept channels of the plan), so the result's weights
    are the corresponding slices of ``state``. Weight updates of the compile (bias propagation,
    compensation) are not applied: rewinding replaces them.
    """
    from frontends.torch import RewriteFX

    if result.plan is None or result.traced is None or not hasattr(result.traced, "gm"):
        raise InvalidArgumentError("rewind needs the CompileResult of a PyTorch model")
    sd = clone_state(state)
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
    out: nn.Module = RewriteFX().call(traced, p.analysis, p.selection.pruned).module
    return out.eval()


def lottery_ticket(
    model: nn.Module,
    example_inputs: Sequence[torch.Tensor] | torch.Tensor,
    init_state: Mapping[str, torch.Tensor] | nn.Module,
    schedule: Sequence[float] = (0.5,),
    train_fn: TrainFn | None = None,
    eval_fn: EvalFn | None = None,
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
