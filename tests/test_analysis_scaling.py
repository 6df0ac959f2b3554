"""The analysis (and the rewrite) do work linear in graph size: counted, not timed.

Each chain is built at three depths; for every doubling the work added per added op
must not grow (a quadratic pass would double it). Work is counted as Python
function calls (every call, C functions included, seen by ``sys.setprofile``) and
as the atoms the rules create, tie and freeze. A rule that rescans the whole graph
for every op is caught by the same check (the last test).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn

from frontends.torch import RewriteFX, load_torch
from passes.channel_analysis import ChannelAnalysis
from passes.ops import SPECS, OpSpec

DEPTHS = (4, 8, 16)
GROWTH_LIMIT = 1.2  # work per added op at 2N over that at N; 2.0 for a quadratic pass


class Residual(nn.Module):
    def __init__(self, n: int, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 1)
            )
            for _ in range(n)
        )
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(x + b(x))
        return self.head(x.mean((2, 3)))


class Dense(nn.Module):
    """Dense blocks of 4 layers: every layer reads the concat of its block's earlier features."""

    def __init__(self, n: int, width: int = 8, growth: int = 4, block: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                nn.Sequential(
                    nn.BatchNorm2d(width + j * growth), nn.ReLU(), nn.Conv2d(width + j * growth, growth, 3, padding=1)
                )
                for j in range(block)
            )
            for _ in range(n // block)
        )
        self.transitions = nn.ModuleList(nn.Conv2d(width + block * growth, width, 1) for _ in range(n // block))
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layers, trans in zip(self.blocks, self.transitions, strict=True):
            feats = [x]
            for layer in layers:
                feats.append(layer(torch.cat(feats, 1)))
            x = trans(torch.cat(feats, 1))
        return self.head(x.mean((2, 3)))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids waiting on a busy machine's thread pool (counts do not depend on it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def count_calls(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Python and C function calls made by ``fn()``."""
    n = 0

    def prof(frame, event, arg):  # noqa: ANN001
        nonlocal n
        if event in ("call", "c_call"):
            n += 1

    sys.setprofile(prof)
    try:
        out = fn()
    finally:
        sys.setprofile(None)
    return n, out


def measure(cls: type[nn.Module], n: int) -> dict[str, int]:
    torch.manual_seed(0)
    traced = load_torch(cls(n).eval(), (torch.randn(1, 3, 4, 4),))
    calls, a = count_calls(lambda: ChannelAnalysis().call(traced.graph))
    pruned = np.zeros(a.n_classes, dtype=bool)
    for grp in a.groups:  # prune every other free channel: the rewrite slices everywhere
        free = grp.classes[~grp.frozen]
        pruned[free[::2]] = True
    rw_calls, _ = count_calls(lambda: RewriteFX().call(traced, a, pruned))
    st = a.stats
    return {
        "ops": st.ops,
        "analysis_calls": calls,
        "atom_work": st.atoms + st.union_elements + st.freeze_elements,
        "rule_calls": st.rule_calls,
        "rewrite_calls": rw_calls,
    }


def marginal_growth(rows: list[dict[str, int]], key: str) -> float:
    """Work per added op from the 2nd to the 3rd depth over that from the 1st to the 2nd."""
    (a, b, c) = rows
    first = (b[key] - a[key]) / (b["ops"] - a["ops"])
    second = (c[key] - b[key]) / (c["ops"] - b["ops"])
    return second / first


@pytest.mark.parametrize("cls", [Residual, Dense], ids=["residual", "dense"])
def test_analysis_and_rewrite_work_is_linear(cls):
    measure(cls, DEPTHS[0])  # warm caches (first-call imports, lru caches)
    rows = [measure(cls, n) for n in DEPTHS]
    assert rows[2]["ops"] >= 3 * rows[0]["ops"]  # the graph really grows
    for r in rows:
        assert r["rule_calls"] <= r["ops"]
    for key in ("analysis_calls", "atom_work", "rewrite_calls"):
        g = marginal_growth(rows, key)
        assert g <= GROWTH_LIMIT, f"{key}: work per added op grew {g:.2f}x from N={DEPTHS[1]} to N={DEPTHS[2]} ({rows})"


def test_a_quadratic_rule_is_caught(monkeypatch):
    """The check has teeth: an activation rule that looks at every value of the graph makes the analysis quadratic."""
    inner = SPECS["unary"].rule

    def scanning(op, ctx):  # noqa: ANN001
        for v in ctx.graph.values:
            ctx.graph.shape(v)
        return inner(op, ctx)

    monkeypatch.setitem(SPECS, "unary", OpSpec("unary", rule=scanning))
    measure(Residual, DEPTHS[0])
    rows = [measure(Residual, n) for n in DEPTHS]
    assert marginal_growth(rows, "analysis_calls") > GROWTH_LIMIT
