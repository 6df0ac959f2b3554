"""A short recovery: knowledge distillation of a pruned model from its original on unlabelled data.

``distill(teacher, student, data, steps=300, eval_data=...)`` trains a copy of ``student`` (the pruned model)
to reproduce ``teacher`` (the original) on the batches of ``data``: no labels are read. The loss is the KL
divergence of the temperature-softened logits (``logit_weight``) and/or the mean squared error of every output
tensor the two models have in common (``hidden_weight``, each term relative to the teacher's mean square, so
outputs of any scale weigh alike). A batch is anything the model takes: a tensor (one argument), a tuple or list
(positional arguments) or a dict (keyword arguments: transformers' ``input_ids``, ``attention_mask``...).
Outputs are matched leaf by leaf (tensors, tuples, lists, dicts, transformers' ``ModelOutput``); leaves whose
shapes differ are not compared.

The models stay in eval mode (no dropout; BatchNorm statistics frozen): a few hundred steps on calibration
data must not re-estimate them. Under ``torch.distributed`` (an initialized process group) the student is
wrapped in ``DistributedDataParallel``: each rank trains on its own batches with gradients averaged, so every
rank ends with the same weights, and the held-out quality is averaged over the ranks' evaluation batches.
Progress goes to stderr. Quality is measured on ``eval_data``, which must be held out: the same object as
``data``, or a batch object or tensor found in both, is refused.
"""

from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from frontends.errors import InvalidArgumentError

__all__ = ["distill", "DistillResult"]


@dataclass
class DistillResult:
    """The distilled student (a copy; the caller's models are untouched), its held-out quality before and after
    (``agreement``: top-1 agreement of the logits with the teacher, where there are logits; ``cosine``: mean
    cosine of each sample's outputs to the teacher's; ``loss``: the distillation loss), and the loss history."""

    model: nn.Module
    steps: int
    before: dict[str, float]
    after: dict[str, float]
    history: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise InvalidArgumentError(f"a batch must be a tensor, a tuple/list of arguments or a dict of keyword arguments, got {type(batch).__name__}")


def _leaves(out: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """The floating-point tensors of a model's output, with a path each (``logits``, ``0``, ``hidden_states.2``)."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "output", out)] if out.is_floating_point() else []
    if isinstance(out, Mapping) or hasattr(out, "keys") and hasattr(out, "__getitem__"):
        return [leaf for k in out.keys() for leaf in _leaves(out[k], f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(out, (tuple, list)):
        return [leaf for i, v in enumerate(out) for leaf in _leaves(v, f"{prefix}.{i}" if prefix else str(i))]
    return []


def _logits(leaves: list[tuple[str, torch.Tensor]]) -> torch.Tensor | None:
    """The ``logits`` output where there is one, else a single 2-d output (a classifier's), else None."""
    for name, t in leaves:
        if name.split(".")[-1] == "logits":
            return t
    if len(leaves) == 1 and leaves[0][1].dim() == 2:
        return leaves[0][1]
    return None


def _tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors(v)]
    return []


def _check_disjoint(data: list[Any], eval_data: list[Any], data_obj: Any, eval_obj: Any) -> None:
    """Refuse evaluation data that is (cheaply detectably) the training data: the same object, a shared batch
    object, or a tensor of the same storage, shape and strides."""
    if eval_obj is data_obj:
        raise InvalidArgumentError("eval_data is the training data: give held-out batches the student is not trained on")
    ids = {id(b) for b in data}
    if any(id(b) in ids for b in eval_data):
        raise InvalidArgumentError("eval_data shares a batch with the training data: give held-out batches")
    views = {(t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()) for b in data for t in _tensors(b) if t.numel()}
    for b in eval_data:
        for t in _tensors(b):
            if t.numel() and (t.data_ptr(), t.storage_offset(), tuple(t.shape), t.stride()) in views:
                raise InvalidArgumentError("eval_data holds a tensor of the training data: give held-out batches")


class _Loss:
    def __init__(self, logit_weight: float, hidden_weight: float, temperature: float) -> None:
        self.lw, self.hw, self.T = logit_weight, hidden_weight, temperature

    def __call__(self, t_out: Any, s_out: Any) -> torch.Tensor:
        tl, sl = _leaves(t_out), _leaves(s_out)
        total = torch.zeros(())
        if self.lw:
            zt, zs = _logits(tl), _logits(sl)
            if zt is None or zs is None or zt.shape != zs.shape:
                raise InvalidArgumentError("logit_weight > 0 needs a 'logits' output (or one 2-d output) of the same shape in both models")
            T = self.T
            kl = F.kl_div(F.log_softmax(zs.float() / T, -1), F.log_softmax(zt.float() / T, -1), log_target=True, reduction="none")
            total = total + self.lw * kl.sum(-1).mean() * T * T
        if self.hw:
            sd = dict(sl)
            pairs = [(t, sd[n]) for n, t in tl if n in sd and sd[n].shape == t.shape]
            if not pairs:
                raise InvalidArgumentError("hidden_weight > 0: the two models have no output of the same name and shape")
            mse = sum(F.mse_loss(s.float(), t.float()) / t.float().pow(2).mean().clamp(min=1e-12) for t, s in pairs)
            total = total + self.hw * mse / len(pairs)
        return total


def _quality(teacher: nn.Module, student: nn.Module, batches: list[Any], loss: _Loss, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """Held-out agreement with the teacher: sums over the samples, then (across ranks) reduced and divided."""
    acc = torch.zeros(5, dtype=torch.float64)  # samples, agreeing top-1, cosine sum, loss sum, samples with logits
    with torch.no_grad():
        for b in batches:
            t_out, s_out = _call(teacher, b), _call(student, b)
            tl, sl = _leaves(t_out), _leaves(s_out)
            n = tl[0][1].shape[0] if tl else 1
            acc[0] += n
            acc[3] += float(loss(t_out, s_out)) * n
            zt, zs = _logits(tl), _logits(sl)
            if zt is not None and zs is not None and zt.shape == zs.shape:
                acc[1] += float((zt.argmax(-1) == zs.argmax(-1)).double().reshape(n, -1).mean(1).sum())
                acc[4] += n
            t0, s0 = tl[0][1], dict(sl).get(tl[0][0])
            if s0 is not None and s0.shape == t0.shape:
                acc[2] += float(F.cosine_similarity(s0.reshape(n, -1).double(), t0.reshape(n, -1).double(), dim=1).sum())
    acc = reduce(acc)
    out = {"samples": int(acc[0]), "cosine": float(acc[2] / acc[0]), "loss": float(acc[3] / acc[0])}
    if acc[4] > 0:
        out["agreement"] = float(acc[1] / acc[4])
    return out


def distill(
    teacher: nn.Module,
    student: nn.Module,
    data: Iterable[Any],
    steps: int = 300,
    *,
    eval_data: Iterable[Any],
    lr: float = 1e-4,
    temperature: float = 2.0,
    logit_weight: float | None = None,
    hidden_weight: float | None = None,
    weight_decay: float = 0.0,
    group: Any = None,
    progress: bool = True,
) -> DistillResult:
    """Distil ``teacher`` into a copy of ``student`` for ``steps`` optimizer steps (AdamW, ``lr``) on ``data``,
    cycling through its batches; return the copy and its held-out quality on ``eval_data`` before and after.

    ``logit_weight`` / ``hidden_weight`` (None: logits KL where the models output logits, else the MSE of the
    matched outputs). Under ``torch.distributed`` each rank passes its own shard of ``data`` and ``eval_data``.
    """
    import torch.distributed as dist

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise InvalidArgumentError(f"steps must be an integer >= 0, got {steps!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InvalidArgumentError(f"temperature must be positive, got {temperature!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidArgumentError(f"lr must be positive, got {lr!r}")
    train, held = list(data), list(eval_data)
    if not train or not held:
        raise InvalidArgumentError("distill needs at least one training batch (data) and one held-out batch (eval_data)")
    _check_disjoint(train, held, data, eval_data)
    teacher = teacher.eval()
    work = copy.deepcopy(student).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        first = _leaves(_call(teacher, train[0]))
    has_logits = _logits(first) is not None
    lw = float(logit_weight) if logit_weight is not None else (1.0 if has_logits else 0.0)
    hw = float(hidden_weight) if hidden_weight is not None else (0.0 if has_logits else 1.0)
    if lw < 0 or hw < 0 or lw + hw == 0:
        raise InvalidArgumentError("logit_weight and hidden_weight must be >= 0, and not both 0")
    loss = _Loss(lw, hw, float(temperature))

    ddp = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank(group) if ddp else 0

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if ddp:
            t = t.clone()
            dist.all_reduce(t, group=group)
        return t

    def say(msg: str) -> None:
        if progress and rank == 0:
            print(f"distill: {msg}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    before = _quality(teacher, work, held, loss, reduce)
    say(f"held-out before: {before}")
    model: nn.Module = nn.parallel.DistributedDataParallel(work, process_group=group) if ddp else work
    opt = torch.optim.AdamW([p for p in work.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    history: list[tuple[int, float]] = []
    every = max(1, steps // 10)
    running = 0.0
    for step, batch in zip(range(1, steps + 1), itertools.cycle(train)):
        with torch.no_grad():
            t_out = _call(teacher, batch)
        value = loss(t_out, _call(model, batch))
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        running += float(value.detach())
        if step % every == 0 or step == steps:
            n = every if step % every == 0 else step % every
            history.append((step, running / n))
            say(f"step {step}/{steps} loss {running / n:.5f} ({time.perf_counter() - start:.0f}s)")
            running = 0.0
    work.eval()
    after = _quality(teacher, work, held, loss, reduce)
    say(f"held-out after: {after}")
    return DistillResult(work, steps, before, after, history, time.perf_counter() - start)
