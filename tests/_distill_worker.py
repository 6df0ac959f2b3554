"""Worker of the two-process distillation test (tests/test_distill.py); not collected."""

from __future__ import annotations

import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if p not in sys.path:
        sys.path.insert(0, p)


def worker(rank: int, world: int, outdir: str) -> None:
    import torch.distributed as dist

    from compiler.workflows import distill

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{outdir}/rendezvous", rank=rank, world_size=world)
    try:
        teacher, student, X = (torch.load(os.path.join(outdir, f), weights_only=False) for f in ("teacher.pt", "student.pt", "x.pt"))
        train = [X[i : i + 32] for i in range(0, 512, 32)][rank::world]  # every rank its own shard
        held = [X[i : i + 64] for i in range(1200, 1792, 64)][rank::world]
        r = distill(teacher, student, train, steps=40, eval_data=held, lr=3e-3)
        torch.save({"state": r.model.state_dict(), "before": r.before, "after": r.after}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
