"""Shape propagation on meta tensors gives the shapes a real run gives, and falls back where it cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import compiler
from frontends.torch import trace as torch_trace


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(12)
        self.attn = nn.MultiheadAttention(12, 3, batch_first=True)
        self.fc = nn.Linear(12 * 9, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))  # (B, 12, 3, 3)
        t = h.flatten(2).transpose(1, 2)
        t = t + self.attn(t, t, t, need_weights=False)[0]
        return self.fc(torch.cat([t[:, :, :6], t[:, :, 6:]], 2).flatten(1))


class ValueDependent(nn.Module):
    """The shape of ``keep`` depends on values: meta tensors cannot say it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mask", torch.tensor([True, False, True, True]))
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = x[:, self.mask]
        return self.b(torch.relu(self.a(torch.cat([keep, x[:, :1]], 1))))


def _shapes(traced) -> dict[str, tuple]:
    return {k: (v.shape, v.dtype) for k, v in traced.graph.values.items()}


@pytest.mark.parametrize("cls, x", [(Mixed, torch.randn(2, 3, 6, 6)), (ValueDependent, torch.randn(5, 4))])
def test_meta_and_real_propagation_agree(cls, x, monkeypatch):
    torch.manual_seed(0)
    m = cls().eval()
    used: list[bool] = []
    meta = torch_trace._meta_shape_prop
    monkeypatch.setattr(torch_trace, "_meta_shape_prop", lambda gm, i: used.append(meta(gm, i)) or used[-1])
    fast = torch_trace.load_torch(m, (x,))
    monkeypatch.setattr(torch_trace, "_meta_shape_prop", lambda gm, i: False)
    real = torch_trace.load_torch(m, (x,))
    assert _shapes(fast) == _shapes(real)
    assert used == [cls is Mixed]  # the value-dependent mask falls back to the real run
    assert all(t.device.type == "cpu" for t in list(fast.gm.parameters()) + list(fast.gm.buffers()))


def test_value_dependent_model_still_compiles_and_verifies():
    torch.manual_seed(0)
    r = compiler.compile(ValueDependent().eval(), (torch.randn(5, 4),), ratio=0.5, granularity=1)
    assert r.report.verification["passed"] and r.report.macs_after < r.report.macs_before
