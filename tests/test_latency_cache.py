"""The on-disk cache of layer timings (``compiler.latency_cache``) that latency tables read and write.

Timings are never asserted against a number: a counting fake timer stands in where the test is about what is
measured and what is read back.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

import compiler
from compiler.latency import LatencyModel, layer_timer
from compiler.latency_cache import CachedTimer, cache_dir
from frontends.torch import load_torch
from passes.channel_analysis import ChannelAnalysis
from passes.ops.layers import ConvSpec, LinearSpec


class Counting:
    """A deterministic layer timer that counts what it is asked to time."""

    name = "torch-fakecpu"

    def __init__(self) -> None:
        self.calls = 0

    def conv(self, s: ConvSpec, cin: int, cout: int) -> float:
        self.calls += 1
        return 1e-6 * s.n * s.h * s.w * cin * cout * s.kh * s.kw / (cin if s.depthwise else 1)

    def linear(self, s: LinearSpec, cin: int, cout: int) -> float:
        self.calls += 1
        return 1e-6 * s.m * cin * cout


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x)) + x
        return self.fc(x.mean((2, 3)))


def _net():
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 3, 16, 16)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEC_CACHE", str(tmp_path))
    assert cache_dir() == str(tmp_path)
    for off in ("off", "0", ""):
        monkeypatch.setenv("PRUNEC_CACHE", off)
        assert cache_dir() is None
    monkeypatch.delenv("PRUNEC_CACHE")
    assert cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "prunec")


def test_timings_are_measured_once_then_read_back(cache):
    spec = ConvSpec(2, 8, 8, 3, 3, (1, 1), (1, 1), False, 16)
    inner = Counting()
    first = CachedTimer(inner)
    ms = first.conv(spec, 16, 24)
    assert inner.calls == 1 and first.info()["measured"] == 1 and first.info()["read"] == 0
    first.save()
    path = first.info()["path"]
    assert path.startswith(str(cache)) and os.path.exists(path)
    again = Counting()
    second = CachedTimer(again)  # a new compile: reads the file
    assert second.conv(spec, 16, 24) == ms
    assert again.calls == 0 and second.info() == {"path": path, "read": 1, "measured": 0}
    # another width, another layer shape or another kind is measured
    second.conv(spec, 16, 32)
    second.linear(LinearSpec(4), 16, 24)
    assert again.calls == 2
    # another runtime has its own file
    other = Counting()
    other.name = "onnxruntime-fakecpu"
    assert CachedTimer(other).path != path


def test_save_merges_with_what_another_process_wrote(cache):
    spec = LinearSpec(4)
    a, b = CachedTimer(Counting()), CachedTimer(Counting())
    a.linear(spec, 8, 8)
    b.linear(spec, 8, 16)
    a.save()
    b.save()
    with open(a.path) as f:
        keys = set(json.load(f)["ms"])
    assert keys == {CachedTimer.key("linear", spec, 8, 8), CachedTimer.key("linear", spec, 8, 16)}


def test_unreadable_cache_is_measured_again_and_off_writes_nothing(cache, monkeypatch):
    spec = LinearSpec(4)
    t = CachedTimer(Counting())
    os.makedirs(os.path.dirname(t.path))
    with open(t.path, "w") as f:
        f.write("{not json")
    inner = Counting()
    again = CachedTimer(inner)
    again.linear(spec, 8, 8)
    assert inner.calls == 1
    again.save()
    with open(t.path) as f:
        assert json.load(f)["version"] == 1  # replaced by a good file
    monkeypatch.setenv("PRUNEC_CACHE", "off")
    off = CachedTimer(Counting())
    off.linear(spec, 8, 8)
    off.save()
    assert off.path is None and off.info()["measured"] == 1


def test_latency_model_reads_its_tables_from_the_cache_the_second_time(cache):
    model, x = _net()
    analysis = ChannelAnalysis().call(load_torch(model, (x,)).graph)
    inner = Counting()
    first = LatencyModel(analysis, CachedTimer(inner), whole_ms=1.0)
    assert inner.calls > 0 and first.cache is not None and first.cache["measured"] == inner.calls
    again = Counting()
    second = LatencyModel(analysis, CachedTimer(again), whole_ms=1.0)
    assert again.calls == 0 and second.cache["read"] == inner.calls and second.cache["measured"] == 0
    full = np.zeros(analysis.n_classes, dtype=bool)
    assert second.estimate(full) == first.estimate(full)
    assert np.array_equal(second.channel_cost(), first.channel_cost())


def test_layer_timer_is_cached(cache):
    from compiler.backend import make_runner

    model, x = _net()
    timer = layer_timer(make_runner(model, example_inputs=(x,), backend="eager", provider="cpu"))
    assert isinstance(timer, CachedTimer) and timer.name == "torch-cpu"


def test_second_target_latency_compile_reads_every_layer_timing_from_the_cache(cache):
    model, x = _net()
    r1 = compiler.compile(model, (x,), target_latency=0.9, backend="eager", provider="cpu")
    c1 = r1.report.to_dict()["settings"]["latency"]["tables_cache"]
    assert c1["measured"] > 0 and c1["read"] == 0 and c1["path"].startswith(str(cache))
    r2 = compiler.compile(model, (x,), target_latency=0.9, backend="eager", provider="cpu")
    c2 = r2.report.settings["latency"]["tables_cache"]
    assert c2["measured"] == 0 and c2["read"] == c1["measured"] and c2["path"] == c1["path"]
    assert r2.report.verification["passed"] is True


def test_default_allocation_stays_uniform_and_measures_nothing(cache):
    """allocation="latency" was measured as the default and not made it (benchmarks/results/latency.md): without
    calibration data it emptied groups of a trained CNN. The default plan is the uniform one and times no layer."""
    model, x = _net()
    r = compiler.compile(model, (x,), target_macs=0.5, backend="eager", provider="cpu")
    assert r.report.settings["allocation"] == "uniform" and "latency" not in r.report.settings
    assert not os.path.exists(os.path.join(str(cache), "latency"))
