"""The runtime's channel block (compiler.channel_block): measured as a staircase, cached per runtime, and kept
channel counts rounded up to it (passes.selection.GroupPlanner)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import compiler
from compiler import channel_block as cb
from frontends.errors import InvalidArgumentError
from passes.selection import GroupPlanner


def _staircase(step):
    """Milliseconds of a convolution whose cost grows in steps of ``step`` output channels."""
    return lambda counts: [0.1 * math.ceil(c / step) * step / 16 for c in counts]


def _linear(counts):
    return [0.1 * c / 16 for c in counts]


def test_a_staircase_of_16_is_found():
    assert cb.staircase_block(_staircase(16)) == 16


def test_a_staircase_of_8_is_found():
    assert cb.staircase_block(_staircase(8)) == 8


def test_a_linear_cost_has_no_block():
    assert cb.staircase_block(_linear) == 1


def test_a_flat_cost_has_no_block():
    """No measurable step (a runtime that pads everything, or noise only): no block."""
    assert cb.staircase_block(lambda counts: [1.0 + 0.001 * (i % 2) for i, _ in enumerate(counts)]) == 1


def test_noise_in_one_repeat_does_not_decide():
    """The median over repeats decides: one repeat that looks linear does not remove a real block."""
    calls = {"n": 0}

    def noisy(counts):
        calls["n"] += 1
        return _linear(counts) if calls["n"] == 3 else _staircase(16)(counts)

    assert cb.staircase_block(noisy) == 16


class _Group:
    def __init__(self, n, w=1):
        self.classes = np.arange(n)
        self.widths = np.full(n, w)
        self.frozen = np.zeros(n, dtype=bool)


def _kept(planner, n, n_remove, w=1):
    g = _Group(n, w)
    pruned = np.zeros(n, dtype=bool)
    planner._remove(g, np.arange(n, dtype=float), n_remove, pruned)
    return int((~pruned).sum())


def test_kept_counts_round_up_to_the_block():
    assert _kept(GroupPlanner(8, 1, 1), 64, 26) == 40  # granularity 8 alone: 38 -> 40
    assert _kept(GroupPlanner(8, 1, 16), 64, 26) == 48  # and to the block of 16: 48
    assert _kept(GroupPlanner(8, 1, 16), 64, 32) == 32  # already a multiple
    assert _kept(GroupPlanner(8, 1, 16), 40, 20) == 32


def test_a_group_no_wider_than_the_block_is_kept_whole():
    """16 channels cut to 8 fall off the runtime's blocked kernels (measured 2x slower at 112x112 on mobilenet_v2)."""
    assert _kept(GroupPlanner(8, 1, 1), 16, 8) == 8
    assert _kept(GroupPlanner(8, 1, 16), 16, 8) == 16
    assert _kept(GroupPlanner(8, 1, 16), 24, 12) == 16  # wider than a block: a whole block kept


def test_the_block_counts_channels_not_classes():
    """A class of 64 channels (an attention head) is already a multiple of 16: the block changes nothing."""
    assert _kept(GroupPlanner(8, 1, 16), 12, 6, w=64) == _kept(GroupPlanner(8, 1, 1), 12, 6, w=64) == 6


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 40, 3, padding=1)
        self.c3 = nn.Conv2d(40, 16, 3, padding=1)
        self.c4 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c4(torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))))


def test_compile_rounds_to_the_block_and_verifies():
    torch.manual_seed(0)
    m, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    r1 = compiler.compile(m, (x,), ratio=0.4, importance="l2", channel_block=1)
    r16 = compiler.compile(m, (x,), ratio=0.4, importance="l2", channel_block=16)
    w1 = [r1.model.get_submodule(n).out_channels for n in ("c1", "c2", "c3")]
    w16 = [r16.model.get_submodule(n).out_channels for n in ("c1", "c2", "c3")]
    assert w1 == [40, 24, 16]  # 38.4 -> 40, 24, 9.6 -> 16 at granularity 8
    assert w16 == [48, 32, 16]
    assert r16.report.verification["passed"]
    assert r16.report.settings["channel_block"] == 16 and "channel_block_choice" not in r16.report.settings


def test_auto_measures_once_and_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNEC_CHANNEL_BLOCK", raising=False)
    monkeypatch.setenv("PRUNEC_CACHE", str(tmp_path))
    calls = {"n": 0}

    class Probe:
        name = "onnxruntime-cpu"

        def __call__(self, counts):
            calls["n"] += 1
            return _staircase(16)(counts)

    monkeypatch.setattr(cb, "_probe", lambda runtime, device: Probe())
    torch.manual_seed(0)
    m, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    r = compiler.compile(m, (x,), ratio=0.4, importance="l2", backend="onnxruntime", provider="cpu")
    choice = r.report.settings["channel_block_choice"]
    assert choice["block"] == 16 and choice["source"] == "measured" and r.report.settings["channel_block"] == 16
    measured = calls["n"]
    assert measured > 0
    with open(tmp_path / "channel_block.json") as f:
        assert list(json.load(f).values()) == [16]
    r2 = compiler.compile(m, (x,), ratio=0.4, importance="l2", backend="onnxruntime", provider="cpu")
    assert r2.report.settings["channel_block_choice"]["source"] == "cache" and calls["n"] == measured
    assert r2.model.c1.out_channels == 48


def test_the_environment_fixes_the_block(monkeypatch):
    monkeypatch.setenv("PRUNEC_CHANNEL_BLOCK", "16")
    m, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    r = compiler.compile(m, (x,), ratio=0.4, importance="l2")
    assert r.report.settings["channel_block_choice"] == {"block": 16, "source": "$PRUNEC_CHANNEL_BLOCK"}
    monkeypatch.setenv("PRUNEC_CHANNEL_BLOCK", "sixteen")
    with pytest.raises(InvalidArgumentError, match="PRUNEC_CHANNEL_BLOCK"):
        compiler.compile(m, (x,), ratio=0.4, importance="l2")


@pytest.mark.parametrize("bad", [0, -16, 2.5, "16", True])
def test_a_bad_channel_block_is_refused(bad):
    m, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    with pytest.raises(InvalidArgumentError, match="channel_block"):
        compiler.compile(m, (x,), ratio=0.4, channel_block=bad)


def test_cli_channel_block(tmp_path):
    m, x = _Net().eval(), torch.randn(1, 3, 16, 16)
    src = tmp_path / "net.onnx"
    torch.onnx.export(m, (x,), str(src), dynamo=False, opset_version=17)
    run = lambda *a: subprocess.run([sys.executable, "-m", "compiler.cli", "prune", str(src), *a],  # noqa: E731
                                    capture_output=True, text=True, env={**os.environ})
    bad = run("-o", str(tmp_path / "bad.onnx"), "--channel-block", "x")
    assert bad.returncode == 2 and "--channel-block" in bad.stderr and not (tmp_path / "bad.onnx").exists()
    ok = run("-o", str(tmp_path / "out.onnx"), "--ratio", "0.4", "--importance", "l2", "--channel-block", "16")
    assert ok.returncode == 0, ok.stderr
    import onnx

    convs = [i for i in onnx.load(str(tmp_path / "out.onnx")).graph.initializer if len(i.dims) == 4]
    assert [c.dims[0] for c in convs][:3] == [48, 32, 16]
