"""The backend (compiled runtimes), latency-targeted pruning, and ``prunec bench``.

Timings are measured but never asserted against a number: the tests check what
is deterministic (which runtime runs, outputs, the latency model's arithmetic and
allocation with a deterministic fake timer) and the structure of what is
measured. GPU tests run only where CUDA is present.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from test_cli import assert_one_line_error, prunec

import compiler
from compiler.backend import (
    OrtRunner,
    Timing,
    TorchRunner,
    export_onnx,
    gpu_present,
    make_runner,
    peak_memory_onnx,
    resolve_providers,
    time_interleaved,
)
from compiler.latency import ConvSpec, LatencyModel, LinearSpec, _Table
from compiler.options import Options
from compiler.pipeline import select_latency
from frontends.errors import InternalError, InvalidArgumentError
from frontends.torch import load_torch
from passes.channel_analysis import ChannelAnalysis
from passes.saliency import Saliency

GPU = pytest.mark.skipif(not gpu_present(), reason="needs a CUDA GPU")
NO_GPU = pytest.mark.skipif(gpu_present(), reason="checks the behaviour without a GPU")


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 64, 3, padding=1, stride=2)
        self.c3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = x + torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def small() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return SmallNet().eval(), (torch.randn(1, 3, 16, 16),)


# -- providers and runners -----------------------------------------------------


def test_cpu_provider_and_errors():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(InvalidArgumentError, match="provider must be one of"):
        resolve_providers("metal")


@NO_GPU
def test_gpu_provider_without_gpu_is_an_error_not_a_fallback():
    with pytest.raises(InvalidArgumentError, match="needs a CUDA GPU"):
        resolve_providers("cuda")
    assert resolve_providers("auto") == ["CPUExecutionProvider"]


def test_ort_runner_matches_torch_and_names_its_provider():
    model, (x,) = small()
    proto = export_onnx(model, (x,))
    runner = OrtRunner(proto, provider="cpu")
    assert runner.name == "onnxruntime-cpu" and runner.providers == ["CPUExecutionProvider"]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(runner(x.numpy())[0], ref, rtol=1e-4, atol=1e-5)
    # the batch dim is dynamic: other batch sizes run
    x5 = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(runner(x5)[0], model(x5).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="takes 1 inputs"):
        runner(x, x)


def test_torch_runner_eager_on_cpu_and_make_runner_choices():
    model, (x,) = small()
    runner = make_runner(model, backend="auto", provider="cpu")
    assert isinstance(runner, TorchRunner) and runner.name == "torch-eager-cpu"
    with torch.no_grad():
        assert torch.equal(runner(x), model(x))
    proto = export_onnx(model, (x,))
    with pytest.raises(InvalidArgumentError, match="ONNX model runs in onnxruntime"):
        make_runner(proto, backend="eager")
    with pytest.raises(InvalidArgumentError, match="needs example_inputs"):
        make_runner(model, backend="onnxruntime")
    with pytest.raises(InvalidArgumentError, match="backend must be one of"):
        make_runner(model, backend="tvm")


def test_compile_result_runs_on_the_chosen_backend():
    model, (x,) = small()
    r = compiler.compile(model, (x,), ratio=0.5, backend="onnxruntime", provider="cpu")
    out = r(x)
    assert r.backend == "onnxruntime-cpu"
    with torch.no_grad():
        np.testing.assert_allclose(out, r.model(x).numpy(), rtol=1e-4, atol=1e-5)
    r2 = compiler.compile(model, (x,), ratio=0.5)
    out2 = r2(x)
    assert r2.backend == ("torch.compile-cuda" if gpu_present() else "torch-eager-cpu")
    assert isinstance(out2, torch.Tensor)
    proto = export_onnx(model, (x,), dynamic_batch=False)
    r3 = compiler.compile(proto, (x.numpy(),), ratio=0.5, provider="cpu")
    assert r3(x.numpy()).shape == (1, 10) and r3.backend == "onnxruntime-cpu"
    with pytest.raises(InvalidArgumentError, match="runs PyTorch modules"):
        compiler.compile(proto, (x.numpy(),), backend="torch.compile")
    with pytest.raises(InvalidArgumentError, match="provider must be one of"):
        compiler.compile(model, (x,), provider="npu")


def test_time_interleaved_counts_and_orders():
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = time_interleaved(fns, batch=4, warmup=1, runs=4)
    assert set(t) == {"a", "b"} and all(isinstance(v, Timing) for v in t.values())
    assert t["a"].runs == 4 and t["a"].p90_ms >= t["a"].median_ms >= 0
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # after warm-up, alternating order
    assert Timing(median_ms=2.0, p90_ms=3.0, runs=5, batch=4).throughput == pytest.approx(2000.0)


def test_peak_memory_counts_the_weights():
    model = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 1024)).eval()  # 16 MB of weights
    proto = export_onnx(model, (torch.randn(1, 1024),))
    mem = peak_memory_onnx(proto, provider="cpu", batch=1)
    assert mem["host_mb"] > 8, mem


@GPU
def test_gpu_runners():
    model, (x,) = small()
    runner = OrtRunner(export_onnx(model, (x,)), provider="cuda")
    assert runner.name == "onnxruntime-cuda"
    fn = runner.timed_fn(x.numpy())
    fn()
    with torch.no_grad():
        np.testing.assert_allclose(runner(x.numpy())[0], model(x).numpy(), rtol=1e-3, atol=1e-4)
    tr = TorchRunner(model, mode="auto", device="cuda")
    assert tr.name == "torch.compile-cuda"
    with torch.no_grad():
        torch.testing.assert_close(tr(x).cpu(), model(x), rtol=1e-3, atol=1e-4)
    half = OrtRunner(export_onnx(model, (x,)), provider="cuda", fp16=True)
    assert half.name.endswith("-fp16")
    np.testing.assert_allclose(half(x.numpy())[0], model(x).detach().numpy(), rtol=5e-2, atol=5e-2)


# -- the latency model ------------------------------------------------------------


def test_table_interpolates_bilinearly():
    t = _Table([8, 16], [8, 32], np.array([[1.0, 4.0], [2.0, 8.0]]))
    assert t(8, 8) == 1.0 and t(16, 32) == 8.0
    assert t(12, 8) == pytest.approx(1.5)
    assert t(12, 20) == pytest.approx(0.5 * (2.5 + 5.0))


class CountingTimer:
    """A deterministic 'device': a layer costs ``scale`` x its MACs, per layer kind."""

    name = "fake"

    def __init__(self, conv_scale: float = 1e-6, linear_scale: float = 1e-6) -> None:
        self.conv_scale, self.linear_scale, self.calls = conv_scale, linear_scale, 0

    def conv(self, s: ConvSpec, cin: int, cout: int) -> float:
        self.calls += 1
        ho, wo = math.ceil(s.h / s.stride[0]), math.ceil(s.w / s.stride[1])
        groups = cin if s.depthwise else max(1, cin // s.group_width)
        return self.conv_scale * s.n * ho * wo * cout * (cin // groups) * s.kh * s.kw

    def linear(self, s: LinearSpec, cin: int, cout: int) -> float:
        self.calls += 1
        return self.linear_scale * s.m * cin * cout


def _analysis(model: nn.Module, x: torch.Tensor):
    traced = load_torch(model, (x,))
    analysis = ChannelAnalysis().call(traced.graph)
    return analysis, Saliency("l2").call(analysis, None).scores


def test_latency_model_estimates_and_allocates_by_saliency_per_millisecond():
    model, (x,) = small()
    analysis, scores = _analysis(model, x)
    timer = CountingTimer()
    layers_ms = LatencyModel(analysis, timer, whole_ms=0.0, granularity=8).layer_full_ms
    assert timer.calls > 0 and layers_ms > 0
    lat = LatencyModel(analysis, timer, whole_ms=layers_ms + 1.0, granularity=8)
    assert lat.n_tables == 4 and lat.rest_ms == pytest.approx(1.0)
    full = np.zeros(analysis.n_classes, dtype=bool)
    assert lat.estimate(full) == pytest.approx(layers_ms + 1.0)  # whole = layers + rest
    # equal saliency everywhere: the allocation follows the cost per channel
    flat = np.where(np.isnan(scores), np.nan, 1.0)
    sel = select_latency(analysis, flat, lat, 0.6 * lat.estimate(full), Options(granularity=1))
    assert lat.estimate(sel.pruned) <= 0.6 * lat.estimate(full) + 1e-12
    kept = {g.producers[0]: int((~sel.pruned[g.classes]).sum()) for g in analysis.groups if g.prunable}
    sizes = {g.producers[0]: len(g.classes) for g in analysis.groups if g.prunable}
    # c2/c3's group (64 channels at 8x8, feeding two 3x3 convs and fc) costs more per channel than c1's
    # (32 at 16x16, feeding one conv): relative to its size it loses at least as much
    big = next(k for k in kept if sizes[k] == 64)
    little = next(k for k in kept if sizes[k] == 32)
    assert kept[big] / sizes[big] <= kept[little] / sizes[little] + 1e-9


def test_latency_model_unreachable_target_keeps_the_fastest_plan():
    model, (x,) = small()
    analysis, scores = _analysis(model, x)
    lat = LatencyModel(analysis, CountingTimer(), whole_ms=5.0, granularity=8)
    sel = select_latency(analysis, scores, lat, 1e-9, Options())
    assert sel.pruned.any()


def test_target_latency_compiles_measures_and_reports():
    model, (x,) = small()
    r = compiler.compile(model, (x,), target_latency=0.7, provider="cpu")
    info = r.report.to_dict()["settings"]["latency"]
    assert info["runtime"] == "torch-eager-cpu" and info["batch"] == 1 and info["tables"] >= 1
    assert info["rounds"] and all(k in info["rounds"][0] for k in ("estimated_ms", "measured_ms", "estimate_target_ms"))
    assert info["target_ms"] == pytest.approx(0.7 * info["original_ms"], rel=1e-3)
    assert info["met"] == (info["measured_ms"] <= info["target_ms"])
    assert r.report.macs_after < r.report.macs_before
    assert r.report.verification["passed"] is True
    with pytest.raises(InvalidArgumentError, match="give only one of"):
        compiler.compile(model, (x,), ratio=0.5, target_latency=0.5)
    with pytest.raises(InvalidArgumentError, match="target_latency must be positive"):
        compiler.compile(model, (x,), target_latency=-1)


def test_latency_allocation_meets_the_macs_target():
    model, (x,) = small()
    r = compiler.compile(model, (x,), target_macs=0.6, allocation="latency", provider="cpu", granularity=1)
    assert r.report.macs_after <= 0.6 * r.report.macs_before
    assert r.report.verification["passed"] is True
    with pytest.raises(InvalidArgumentError, match="goes with target_macs"):
        compiler.compile(model, (x,), ratio=0.5, allocation="latency")
    with pytest.raises(InvalidArgumentError, match="allocation must be"):
        compiler.compile(model, (x,), target_macs=0.5, allocation="greedy")


def test_target_latency_on_onnx_runtime():
    model, (x,) = small()
    proto = export_onnx(model, (x,), dynamic_batch=False)
    r = compiler.compile(proto, (x.numpy(),), target_latency=0.8, provider="cpu")
    info = r.report.to_dict()["settings"]["latency"]
    assert info["runtime"] == "onnxruntime-cpu" and info["rounds"]
    assert r.report.macs_after < r.report.macs_before


def test_pipeline_without_runtime_refuses_target_latency():
    from compiler.pipeline import Steps, plan

    model, (x,) = small()
    traced = load_torch(model, (x,))
    with pytest.raises(InternalError, match="needs a runtime"):  # a caller's bug, not the user's input
        plan(traced.graph, Options(target_latency=1.0), Steps())


# -- prunec bench ----------------------------------------------------------------------


def test_bench_cli_prunes_and_times_side_by_side(tmp_path):
    out = tmp_path / "bench.json"
    proc = prunec("bench", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--batch", "1,2", "--runs", "3",
                  "--budget", "0", "--provider", "cpu", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "runtime: onnxruntime-cpu" in proc.stdout and "speedup/MACs" in proc.stdout
    assert "batch 2: timing 2 models interleaved" in proc.stderr  # progress while it runs
    for b in (1, 2):  # a line per round as it finishes, with both models' times
        rounds = re.findall(rf"batch {b}: round (\d+) \(.*\): original [\d.]+ ms, pruned [\d.]+ ms", proc.stderr)
        assert rounds == ["1", "2", "3"], proc.stderr
        assert f"batch {b}: 3 rounds in" in proc.stderr
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [("original", 1), ("pruned", 1), ("original", 2), ("pruned", 2)]
    pruned = [r for r in rows if r["model"] == "pruned"]
    assert all(r["macs_reduction"] > 1.5 and r["speedup"] > 0 and r["host_mb"] > 0 for r in pruned)
    assert all(r["speedup_interval"][0] <= r["speedup"] <= r["speedup_interval"][1] for r in pruned)
    assert all(r["p90_ms"] >= r["median_ms"] > 0 and r["runs"] == 3 for r in rows)  # budget 0: the minimum, no more
    assert "| pruned | 1 | 3 |" in proc.stdout  # the table says how many rounds each number rests on


def test_bench_cli_two_onnx_files_and_static_batch(tmp_path):
    model, (x,) = small()
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(export_onnx(model, (x,), dynamic_batch=False).SerializeToString())
    pruned = compiler.compile(model, (x,), ratio=0.5).model
    b.write_bytes(export_onnx(pruned, (x,), dynamic_batch=False).SerializeToString())
    proc = prunec("bench", str(a), str(b), "--batch", "1,4", "--runs", "3", "--no-memory")
    assert proc.returncode == 0, proc.stderr
    assert "skipped: original has a static batch of 1" in proc.stdout
    assert proc.stdout.count("| pruned | 1 |") == 1


def test_bench_cli_bad_input(tmp_path):
    assert_one_line_error(prunec("bench", "torchvision:resnet18", "--batch", "0"), "--batch")
    assert_one_line_error(prunec("bench", "torchvision:resnet18", "--budget", "-1"), "--budget")
    assert_one_line_error(prunec("bench", "torchvision:resnet18", "--budget", "soon"), "--budget")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    assert_one_line_error(prunec("bench", str(bad)), "bad.onnx")
    if not gpu_present():
        assert_one_line_error(prunec("bench", "torchvision:resnet18", "--input-shape", "1,3,32,32", "--provider", "cuda",
                                     "--batch", "1", "--runs", "3"), "cuda")


def test_bench_cli_takes_a_factory_returning_model_and_inputs(tmp_path, monkeypatch, capsys):
    """A factory may return (model, example_inputs), as `prunec inspect` accepts; the inputs given are used."""
    from compiler import cli

    (tmp_path / "benchmods.py").write_text(
        "import torch\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3))\n"
        "    return m, (torch.randn(1, 3, 20, 20),)\n"
        "def nothing():\n"
        "    return 3, (torch.randn(1, 3, 20, 20),)\n"
    )
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "b.json"
    assert cli.main(["bench", "benchmods:build", "--batch", "1", "--runs", "3", "--budget", "0", "--no-memory",
                     "--provider", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["original", "pruned"] and rows[1]["macs_reduction"] > 1.5
    assert cli.main(["bench", "benchmods:nothing", "--batch", "1"]) == 2
    assert "not a torch.nn.Module" in capsys.readouterr().err
