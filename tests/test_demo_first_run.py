"""The first run a user makes: ``prunec demo`` (run once per module) and the parts it is built from."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from compiler import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(r"^  \[\d\d:\d\d:\d\d\] ")  # the CLI's status lines


def prunec(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return subprocess.run([sys.executable, "-m", "compiler.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def run() -> subprocess.CompletedProcess:
    proc = prunec("demo")
    assert proc.returncode == 0, proc.stderr
    return proc


def comparison(stdout: str) -> dict[str, tuple[str, float]]:
    """criterion -> (verification, held-out accuracy), from the demo's final table."""
    rows = {}
    for line in stdout.split("the same ratio", 1)[1].splitlines():
        m = re.match(r"^(\(unpruned\)|\w+)\s+.*\s(passed|FAILED|-)\s+(\d\.\d{3})(?: \([+-]\d\.\d{3}\))?$", line)
        if m:
            rows[m.group(1)] = (m.group(2), float(m.group(3)))
    return rows


def test_demo_stderr_is_progress_only(run):
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines and all(PROGRESS.match(ln) for ln in lines), run.stderr
    assert "Warning" not in run.stderr and "warn" not in run.stderr.lower()
    # progress while it trains, not only at the end: several training lines with the loss
    steps = [ln for ln in lines if re.search(r"training step \d+/\d+: loss \d", ln)]
    assert len(steps) >= 5, run.stderr


def test_demo_compares_criteria_on_held_out_data(run):
    rows = comparison(run.stdout)
    assert {"(unpruned)", "l2", "obs", "random"} <= set(rows), run.stdout
    base = rows["(unpruned)"][1]
    assert 0.85 <= base < 0.99, base  # good, not perfect: the before/after numbers mean something
    assert all(rows[c][0] == "passed" for c in ("l2", "obs", "random"))
    acc = {c: rows[c][1] for c in ("l2", "obs", "random")}
    assert len(set(acc.values())) == 3  # the criteria differ
    assert acc["obs"] > acc["l2"] > acc["random"]  # calibration data pays off; magnitude beats chance
    assert acc["obs"] >= base - 0.1, (acc, base)  # one criterion keeps most of the accuracy ...
    assert acc["l2"] <= base - 0.1, (acc, base)  # ... next to one that loses it
    assert "128 calibration images" in run.stdout and "weights only" in run.stdout
    m = re.search(r"MACs\s+\S+ -> \S+ \((\d\.\d+)x\)", run.stdout)
    assert m and float(m.group(1)) < 0.2
    assert "held-out" in run.stdout and "disjoint" in run.stdout


def test_demo_sets_are_disjoint_and_deterministic():
    a, b = demo.demo_data(0, 256, 32, 128), demo.demo_data(0, 256, 32, 128)
    for part in ("train", "calibration", "evaluation"):
        assert torch.equal(getattr(a, part)[0], getattr(b, part)[0])
    flat = [getattr(a, p)[0].flatten(1) for p in ("train", "calibration", "evaluation")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert torch.cdist(flat[i], flat[j]).min() > 1.0  # no image shared between two sets
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = demo.DemoNet()
        losses.append(demo.train(model, a, steps=3))
    assert losses[0] == losses[1]


def test_demo_train_reports_progress_without_warnings(recwarn):
    seen: list[str] = []
    model = demo.DemoNet()
    data = demo.demo_data(1, 128, 16, 64)
    threads = torch.get_num_threads()
    loss = demo.train(model, data, steps=4, batch=16, progress=seen.append, every=2)
    assert torch.get_num_threads() == threads  # one thread inside, the caller's setting restored
    assert [s.split(":")[0] for s in seen[1:]] == ["training step 2/4", "training step 4/4"]
    assert f"loss {loss:.3f}" in seen[-1]
    assert not model.training  # left in eval mode for the pruning that follows
    assert not [w for w in recwarn if "requires_grad" in str(w.message)]


def test_prune_with_leaves_the_model_alone_and_refuses_unknown_criteria():
    from frontends.errors import InvalidArgumentError

    torch.manual_seed(0)
    model = demo.DemoNet().eval()
    data = demo.demo_data(2, 64, 16, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = demo.prune_with(model, data, "taylor", 0.5)
    assert r.data == "16 calibration images" and r.report.verification["passed"]
    assert r.report.macs_after < r.report.macs_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert demo.prune_with(model, data, "l2", 0.5).data == "weights only"
    with pytest.raises(InvalidArgumentError, match="nope"):
        demo.prune_with(model, data, "nope", 0.5)


def test_demo_bad_input_fails_before_training():
    for args, word in ((("--importance", "nope"), "nope"), (("--ratio", "1.5"), "ratio"), (("--steps", "0"), "--steps")):
        proc = prunec("demo", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("prunec: error:") and word in lines[0], proc.stderr
        assert "training" not in proc.stderr


# -- prunec bench: rounds fit a time budget, each reported as it finishes --------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def fn(self, seconds: float, calls: list[str], name: str):
        def run() -> None:
            calls.append(name)
            self.t += seconds

        return run


def test_time_rounds_fills_the_budget_and_reports_each_round():
    from compiler.bench import time_rounds

    clock, calls, lines = FakeClock(), [], []
    fns = {"a": clock.fn(1.0, calls, "a"), "b": clock.fn(0.5, calls, "b")}
    samples = time_rounds(fns, warmup=1, runs=3, budget_s=8.0, progress=lines.append, clock=clock)
    # warm-up 1.5 s, then 1.5 s a round: rounds go on while under 8 s -> 5 rounds (9 s)
    assert samples == {"a": [1.0] * 5, "b": [0.5] * 5}
    assert calls[:2] == ["a", "b"] and calls[2:6] == ["a", "b", "b", "a"]  # order alternates round by round
    rounds = [ln.split(" (")[0] for ln in lines if ln.startswith("round")]
    assert rounds == ["round 1", "round 2", "round 3", "round 4", "round 5"]  # 1.5 s apart: every round shown
    assert "a 1000.0 ms, b 500.0 ms" in lines[0] and lines[-1] == "5 rounds in 9.0s"


def test_time_rounds_minimum_and_throttle():
    from compiler.bench import MAX_RUNS, time_rounds

    clock, lines = FakeClock(), []
    fast = {"a": clock.fn(0.001, [], "a")}
    samples = time_rounds(fast, warmup=0, runs=4, budget_s=0.0, progress=lines.append, clock=clock)
    assert len(samples["a"]) == 4  # no budget: the minimum, every one reported
    assert len([ln for ln in lines if ln.startswith("round")]) == 4
    lines.clear()
    samples = time_rounds(fast, warmup=0, runs=3, budget_s=1e9, progress=lines.append, clock=clock)
    assert len(samples["a"]) == MAX_RUNS  # a huge budget still stops
    assert len([ln for ln in lines if ln.startswith("round")]) == 3  # fast rounds past the minimum: at most one a second
    slow = {"a": clock.fn(100.0, [], "a")}
    assert len(time_rounds(slow, warmup=0, runs=5, budget_s=1.0, clock=clock)["a"]) == 5  # the minimum past the budget


def test_speedup_interval_is_paired_and_honest():
    import numpy as np

    from compiler.bench import _speedup_cell, speedup_interval

    base = [2.0, 2.2, 1.8, 2.1, 1.9]
    assert speedup_interval(base, [b / 2 for b in base]) == pytest.approx((2.0, 2.0))  # paired: drift cancels
    rng = np.random.default_rng(0)
    noisy = 1.0 + 0.3 * rng.random(30)
    lo, hi = speedup_interval(noisy, 1.0 + 0.3 * rng.random(30))
    assert lo < 1.0 < hi
    assert "a tie" in _speedup_cell({"speedup": 1.01, "speedup_interval": [lo, hi]})
    assert "a tie" not in _speedup_cell({"speedup": 2.0, "speedup_interval": [1.9, 2.1]})
    with pytest.raises(ValueError):
        speedup_interval([1.0], [])


def test_bench_default_batches_on_cpu():
    from compiler.bench import default_batches

    assert default_batches("onnxruntime", "cpu") == [1, 8]
    assert default_batches("torch", "cpu") == [1, 8]
