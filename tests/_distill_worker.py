"""Worker of the two-process distillation test (tests/test_distill.py); not collected."""

from __future__ import annotations

import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if p not in sys.path:
        sys.path.insert(0, p)


def digits_net() -> torch.nn.Module:
    """The digits CNN of tests/test_distill.py (one definition, so the worker rebuilds it from a state dict)."""
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip


def worker(rank: int, world: int, outdir: str) -> None:
    import torch.distributed as dist

    import compiler
    from compiler.workflows import distill

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{outdir}/rendezvous", rank=rank, world_size=world)
    try:
        # tensors only (weights_only=True): the teacher is rebuilt from its state dict and pruned here as the test did
        state, X = (torch.load(os.path.join(outdir, f), weights_only=True) for f in ("teacher.pt", "x.pt"))
        teacher = digits_net()
        teacher.load_state_dict(state)
        teacher.eval()
        student = compiler.compile(teacher, (X[:2],), ratio=0.75, importance="l2", granularity=1).model
        train = [X[i : i + 32] for i in range(0, 512, 32)][rank::world]  # every rank its own shard
        held = [X[i : i + 64] for i in range(1200, 1792, 64)][rank::world]
        r = distill(teacher, student, train, steps=40, eval_data=held, lr=3e-3)
        torch.save({"state": r.model.state_dict(), "before": r.before, "after": r.after}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
