"""Worker of the two-process torch.distributed test (tests/test_workflows.py); not collected."""

from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 4 * 4, 24), nn.ReLU(), nn.Linear(24, 3),
    )  # fmt: skip


def make_data(n_batches: int = 4, batch: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 3, (batch,), generator=g)) for _ in range(n_batches)
    ]


CASES = {
    "activation": dict(importance="activation", ratio=0.5, granularity=1, bias_propagation=True),
    "taylor": dict(importance="taylor", ratio=0.5, granularity=1),
}


def worker(rank: int, world: int, outdir: str) -> None:
    import torch.distributed as dist

    import compiler

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{outdir}/rendezvous", rank=rank, world_size=world)
    try:
        data = make_data()
        shard = data[rank::world]  # every rank sees different calibration batches
        model = make_model()
        if rank == 1:  # a rank whose weights drifted: distributed_compile takes rank 0's
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01)
        x = data[0][0][:2]
        out = {}
        for name, kw in CASES.items():
            r = compiler.distributed_compile(model, (x,), shard, **kw)
            out[name] = dict(pruned=torch.as_tensor(r.plan.selection.pruned), state=r.model.state_dict())
        # fine-tune the pruned model under DDP, each rank on its own shard
        m = compiler.distributed_compile(model, (x,), shard, **CASES["activation"]).model.train()
        ddp = nn.parallel.DistributedDataParallel(m)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
        for xb, yb in shard:
            loss = F.cross_entropy(ddp(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out["finetuned"] = {k: v.detach().clone() for k, v in m.state_dict().items()}
        torch.save(out, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
