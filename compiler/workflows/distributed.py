"""``compile`` under ``torch.distributed``: every rank prunes identically."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compiler.api import CompileResult
from compiler.api import compile as _compile
from compiler.workflows.common import as_inputs
from frontends.errors import InternalError, PrunecError

__all__ = ["distributed_compile"]


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
    is all-reduced as a mean over ranks weighted by their calibration sample counts (compile's
    ``statistics_reducer``). The result equals the single-process compile on the union of the
    shards exactly where the statistic is a per-sample or per-batch mean (``activation``,
    ``n2ps``, labelled ``taylor``/``mrs``, ``taylor2``, ``mrp`` up to scale, and bias
    propagation, with equal batch sizes) and approximately otherwise (``obs`` and its
    compensation average per-rank solutions; ``obd`` averages per-rank |unit sums|). Weight
    criteria need no data. Afterwards the ranks' pruned channels are compared and a mismatch
    raises :class:`PrunecError`. Without an initialized process group this is ``compile``.
    """
    import torch.distributed as dist

    inputs = as_inputs(example_inputs)
    if not (dist.is_available() and dist.is_initialized()):
        return _compile(model, inputs, calibration=calibration, **compile_kwargs)
    batches = list(calibration) if calibration is not None else None
    device = _comm_device(group)
    n_local = _sample_count(batches or [inputs])
    weight = n_local / _all_sum(n_local, device, group)  # this rank's share of all samples

    def reduce(a: np.ndarray) -> np.ndarray:
        arr = np.asarray(a)
        t = torch.as_tensor(arr.astype(np.float64) * weight, device=device)
        dist.all_reduce(t, group=group)
        return t.cpu().numpy().astype(arr.dtype, copy=False).reshape(arr.shape)

    work = _rank0_copy(model, device, group) if sync_weights else model
    result = _compile(work, inputs, calibration=batches, statistics_reducer=reduce, **compile_kwargs)
    if result.plan is None:
        raise InternalError("compile returned no plan for a PyTorch model")
    mine = torch.as_tensor(result.plan.selection.pruned.astype(np.float64), device=device)
    lo, hi = mine.clone(), mine.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    if not torch.equal(lo, hi):
        raise PrunecError("ranks chose different channels to prune (their models or inputs differ in structure)")
    return result


def _sample_count(batches: Iterable[Any]) -> int:
    """Samples in calibration batches (a batch is a tensor or a tuple whose first item is the input)."""
    n = 0
    for b in batches:
        x = b if isinstance(b, torch.Tensor) else b[0]
        n += int(x.shape[0])
    return n


def _all_sum(n: int, device: torch.device, group: Any) -> float:
    import torch.distributed as dist

    t = torch.tensor([float(n)], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return float(t.item())


def _rank0_copy(model: nn.Module, device: torch.device, group: Any) -> nn.Module:
    """A copy of ``model`` with rank 0's parameters and buffers."""
    import torch.distributed as dist

    src = _global_rank0(group)
    work = copy.deepcopy(model)
    for t in work.state_dict().values():
        if t.device.type != device.type:
            buf = t.detach().to(device)
            dist.broadcast(buf, src=src, group=group)
            t.data.copy_(buf.to(t.device))
        else:
            dist.broadcast(t.data, src=src, group=group)
    return work


def _comm_device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_rank0(group: Any) -> int:
    import torch.distributed as dist

    if group is None:
        return 0
    return dist.get_global_rank(group, 0)
