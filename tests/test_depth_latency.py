"""Depth and width under one ``target_latency`` budget (``compiler.depth``).

Timings are never asserted against a number. Most tests replace the measurement with a
deterministic one (milliseconds proportional to the parameter count, the layer tables
still timed for real) so that the mechanism can be checked exactly: the budget is of the
original's latency, the width pass gets the rest of it, the chosen split is reported and
is the model returned, and the report's measurement of it is the one the budget is judged
by. One test runs with real timings and checks only that the report is consistent.
"""

from __future__ import annotations

import copy
import math

import onnx
import pytest
import torch
import torch.nn as nn

import compiler
import compiler.depth as depth_mod
from compiler.latency import LatencyTarget, OrtLayerTimer, TorchLayerTimer
from frontends.errors import InvalidArgumentError


class Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(torch.relu(self.conv1(x)))


class Net(nn.Module):
    """A stem, four residual blocks of one stage (all removable but one), a head."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.blocks = nn.Sequential(*[Res(c) for _ in range(4)])
        self.head = nn.Linear(c, 4)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def _net(dead: int | None = None) -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    if dead is not None:  # this block's branch is exactly zero: removing it loses nothing
        with torch.no_grad():
            net.blocks[dead].conv2.weight.zero_()
            net.blocks[dead].conv2.bias.zero_()
    return net


def _data(n: int = 4, size: int = 16):
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, size, size, generator=g), [(torch.randn(2, 3, size, size, generator=g),) for _ in range(n)]


def _fake_ms(model) -> float:
    """The deterministic 'latency' of a model: its parameter count (ONNX: initializer elements), in thousands."""
    if isinstance(model, onnx.ModelProto):
        return sum(math.prod(t.dims) for t in model.graph.initializer if len(t.dims) > 1) / 1000.0
    return sum(p.numel() for p in model.parameters() if p.dim() > 1) / 1000.0


@pytest.fixture
def fake_latency(monkeypatch):
    """Every whole-model measurement (the compile's rounds, the depth search, the final side-by-side) is
    ``_fake_ms``; the per-layer tables are still timed (they only steer the width plan)."""

    def measure(self, model):
        if self.timer is None:
            self.timer = OrtLayerTimer("cpu") if isinstance(model, onnx.ModelProto) else TorchLayerTimer("cpu")
            self.runtime = "fake"
        return _fake_ms(model)

    monkeypatch.setattr(LatencyTarget, "measure", measure)
    monkeypatch.setattr(depth_mod, "_side_by_side", lambda measurer, models: [_fake_ms(m) for m in models])


def test_depth_auto_under_target_latency_reports_and_returns_the_split_it_measured(fake_latency):
    net = _net(dead=2)
    before = copy.deepcopy(net.state_dict())
    x, cal = _data()
    original = _fake_ms(net)
    r = compiler.compile(net, (x,), depth="auto", target_latency=0.8, calibration=cal, provider="cpu")
    d = r.report.depth
    search = d["search"]
    # k=0 is width only; one block (a quarter of the blocks' parameters) alone meets 0.8: the search stops there
    assert [t["blocks_removed"] for t in search] == [0, 1]
    assert search[0]["depth_ms"] == pytest.approx(original, abs=1e-3)
    assert search[1]["depth_ms"] <= 0.8 * original and search[1]["met"]
    assert all(t["met"] == (t["measured_ms"] <= 0.8 * original + 1e-3) for t in search)
    # the dead block costs nothing to remove: depth only keeps the outputs exactly, so it is the best split that met
    assert search[1]["held_out_cosine"] == pytest.approx(1.0)
    assert [t["chosen"] for t in search] == [False, True]
    assert d["removed"] == ["blocks.2"] and d["verification"]["passed"]
    assert "depth alone meets target_latency" in d["note"]
    # the model returned is the one measured: the report's final measurement is of it, next to the original
    lat = d["latency"]
    assert lat["original_ms"] == pytest.approx(original, abs=1e-3)
    assert lat["target_ms"] == pytest.approx(0.8 * original, abs=1e-3)
    assert lat["measured_ms"] == pytest.approx(_fake_ms(r.model), abs=1e-3) == pytest.approx(search[1]["measured_ms"], abs=1e-3)
    assert lat["met"] is True and lat["runtime"] == "fake" and lat["batch"] == 2
    assert "target_latency" in r.report.summary() and "met" in r.report.summary()
    with torch.no_grad():  # the dead block's removal changes nothing
        torch.testing.assert_close(r.model(x), net(x), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the input is not modified


def test_depth_auto_keeps_the_fastest_split_and_says_so_when_none_meets_the_budget(fake_latency, monkeypatch, caplog):
    net = _net()
    x, cal = _data()
    # no width plan can meet the budget (the width rounds measure a constant), and depth alone never does either
    monkeypatch.setattr(LatencyTarget, "measure", lambda self, m: (setattr(self, "timer", self.timer or TorchLayerTimer("cpu")),
                                                                   setattr(self, "runtime", "fake"), 1e6 + _fake_ms(m))[-1])  # fmt: skip
    r = compiler.compile(net, (x,), depth="auto", target_latency=0.5, calibration=cal, provider="cpu")
    search = r.report.depth["search"]
    assert [t["blocks_removed"] for t in search] == [0, 1, 2, 3] and not any(t["met"] for t in search)
    fastest = min(search, key=lambda t: t["measured_ms"])
    assert fastest["chosen"] and sum(t["chosen"] for t in search) == 1
    assert len(r.report.depth["removed"]) == fastest["blocks_removed"]
    assert "no split measured under target_latency" in caplog.text


def test_a_depth_fraction_with_target_latency_gives_width_the_rest_of_the_original_budget(fake_latency):
    net = _net()
    x, _ = _data()
    original = _fake_ms(net)
    r = compiler.compile(net, (x,), depth=0.25, target_latency=0.5, provider="cpu")
    d = r.report.depth
    assert len(d["removed"]) == 1 and d["verification"]["passed"]
    depth_ms = original - _fake_ms(net.blocks[0])  # the blocks are alike: one block's weights less
    # the width pass aims at half the ORIGINAL's latency, as a fraction of the depth-pruned model's own
    inner = r.report.settings["latency"]
    assert inner["original_ms"] == pytest.approx(depth_ms, abs=1e-3)
    assert inner["target_ms"] == pytest.approx(0.5 * original, abs=1e-3)
    assert f"to {0.5 * original / depth_ms:.3f} of its latency" in d["note"]
    assert d["latency"]["target_ms"] == pytest.approx(0.5 * original, abs=1e-3)
    assert d["latency"]["met"] == (d["latency"]["measured_ms"] <= d["latency"]["target_ms"])
    assert r.report.verification["passed"]
    # a budget that depth alone meets: no width pruning at all
    r2 = compiler.compile(net, (x,), depth=0.25, target_latency=0.9, provider="cpu")
    assert "depth alone meets target_latency" in r2.report.depth["note"]
    assert r2.report.macs_after == r2.report.depth["macs_after_depth"] and r2.report.depth["latency"]["met"]


def test_depth_auto_with_target_latency_real_timings_report_is_consistent():
    net = _net()
    x, cal = _data(size=32)
    r = compiler.compile(net, (x,), depth="auto", target_latency=0.8, calibration=cal, provider="cpu")
    d = r.report.depth
    assert d["search"] and sum(t["chosen"] for t in d["search"]) == 1
    chosen = next(t for t in d["search"] if t["chosen"])
    assert len(d["removed"]) == chosen["blocks_removed"]
    if any(t["met"] for t in d["search"]):  # the best held-out cosine among the splits whose measurement met it
        assert chosen["held_out_cosine"] == max(t["held_out_cosine"] for t in d["search"] if t["met"])
    lat = d["latency"]
    assert lat["runtime"] == "torch-eager-cpu" and lat["measured_ms"] > 0 and lat["original_ms"] > 0
    assert lat["target_ms"] == pytest.approx(0.8 * lat["original_ms"], rel=1e-3)
    assert lat["met"] == (lat["measured_ms"] <= lat["target_ms"])
    assert d["verification"]["passed"] and r.report.verification["passed"]


def test_bad_latency_depth_combinations_are_refused():
    net = _net()
    x, cal = _data()
    with pytest.raises(InvalidArgumentError, match="give target_macs= or target_latency="):
        compiler.compile(net, (x,), depth="auto", calibration=cal)
    with pytest.raises(InvalidArgumentError, match="give only one of"):
        compiler.compile(net, (x,), depth="auto", target_latency=0.8, target_macs=0.8, calibration=cal)
    with pytest.raises(InvalidArgumentError, match="give target_macs= or target_latency="):
        compiler.compile(net, (x,), depth="auto", ratio=0.5, calibration=cal)
    with pytest.raises(InvalidArgumentError, match="target_latency must be positive"):
        compiler.compile(net, (x,), depth="auto", target_latency=-1.0, calibration=cal)
    with pytest.raises(InvalidArgumentError, match="at least 2 batches"):
        compiler.compile(net, (x,), depth="auto", target_latency=0.8, calibration=cal[:1], provider="cpu")


def test_onnx_depth_auto_under_target_latency(fake_latency):
    from compiler.backend import export_onnx

    net = _net(dead=1)
    x, cal = _data()
    proto = export_onnx(net, (x,), dynamic_batch=False)
    original = _fake_ms(proto)
    r = compiler.compile(proto, (x.numpy(),), depth="auto", target_latency=0.8, calibration=[(c.numpy(),) for (c,) in cal],
                         importance="activation", provider="cpu")  # fmt: skip
    d = r.report.depth
    assert [t["blocks_removed"] for t in d["search"]] == [0, 1] and d["search"][1]["chosen"]
    assert d["removed"] == ["blocks.1"] and d["verification"]["passed"]
    lat = d["latency"]
    assert lat["target_ms"] == pytest.approx(0.8 * original, abs=1e-3) and lat["met"]
    assert lat["measured_ms"] == pytest.approx(_fake_ms(r.model), abs=1e-3)


def test_cli_depth_auto_without_target_macs_is_one_line_naming_the_cli_flag(tmp_path, capsys):
    import onnx

    from compiler import cli
    from compiler.backend import export_onnx

    net = _net()
    x, _ = _data()
    src, out = tmp_path / "n.onnx", tmp_path / "p.onnx"
    onnx.save(export_onnx(net, (x,), dynamic_batch=False), str(src))
    code = cli.main(["prune", str(src), "-o", str(out), "--depth", "auto"])
    _, err = capsys.readouterr()
    assert code == 2 and not out.exists()
    assert err.strip().count("\n") == 0 and "--depth auto" in err and "--target-macs" in err
