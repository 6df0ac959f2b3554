"""The traced copy shares the input's weights (it is only read); the pruned model shares nothing.

Covers sliced and unsliced tensors, a weight tied between two layers, buffers, and a
decomposed ``nn.MultiheadAttention`` (its projections are new tensors).
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

import compiler


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.b.weight = self.a.weight  # tied: the same Parameter in two layers
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x))).flatten(2).transpose(1, 2)  # (B, L, 16)
        h = self.b(torch.relu(self.a(h)))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


def _storages(m: nn.Module) -> set[int]:
    ts = list(m.parameters()) + list(m.buffers())
    ts += [t for mod in m.modules() for t in vars(mod).values() if isinstance(t, torch.Tensor)]
    return {t.untyped_storage().data_ptr() for t in ts if t.numel()}


def test_pruned_model_shares_no_tensor_with_the_input():
    torch.manual_seed(0)
    m = Tied().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 4, 4)
    before = copy.deepcopy(m.state_dict())
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    assert r.report.verification["passed"]
    assert r.report.macs_after < r.report.macs_before
    assert not _storages(m) & _storages(r.model)
    with torch.no_grad():  # writing into the pruned model leaves the input alone
        for t in list(r.model.parameters()) + list(r.model.buffers()):
            if t.is_floating_point():
                t.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert m.b.weight is m.a.weight  # the input's tying is untouched
