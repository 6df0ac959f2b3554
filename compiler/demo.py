"""``prunec demo``: a self-contained first run.

Build a small CNN whose channels are coupled in every common way, train it for
a few seconds on a synthetic ten-class task that it learns well but not
perfectly, then prune it with several saliency criteria at the same ratio and
compare: parameters, MACs, the verification of each rewrite, and accuracy on
held-out images. No downloads; seeded and single-threaded, so a run prints the
same numbers every time on a given machine and PyTorch build.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = ["DemoNet", "DemoData", "CriterionResult", "demo_data", "bar_images", "train", "accuracy", "prune_with",
           "format_comparison", "run_demo",
           "one_thread"]

Progress = Callable[[str], None]


@contextmanager
def one_thread() -> Iterator[None]:
    """PyTorch on one CPU thread inside: the same numbers on any machine, no thread contention on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class DemoNet(nn.Module):
    """Residual add, concat, depthwise conv, squeeze-excitation gate, flatten into a linear layer."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
        self.left = nn.Conv2d(32, 24, 1)
        self.right = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 24, 1))
        self.se_fc1 = nn.Conv2d(48, 16, 1)
        self.se_fc2 = nn.Conv2d(16, 48, 1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(48 * 16, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.res(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        gate = torch.sigmoid(self.se_fc2(F.relu(self.se_fc1(x.mean((2, 3), keepdim=True)))))
        x = F.max_pool2d(F.relu(x * gate), 2)
        return self.head(self.pool(x))


def bar_images(n: int, generator: torch.Generator, size: int = 16, noise: float = 0.8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy images of a bar, ten classes: the bar's angle (18 degrees apart) and offset (three places).

    Angle and offset jitter around the class's values and the pixel noise is
    strong, so neighbouring classes overlap a little: a good model is right
    about 95% of the time, not always.
    """
    y = torch.randint(0, 10, (n,), generator=generator)
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    c = (size - 1) / 2
    angle = (y.float() * math.pi / 10 + 0.12 * torch.randn(n, generator=generator))[:, None, None]
    offset = ((y.float() % 3 - 1) * 3 + 0.8 * torch.randn(n, generator=generator))[:, None, None]
    d = (xx - c) * torch.cos(angle) + (yy - c) * torch.sin(angle) - offset
    x = torch.exp(-(d**2) / 2.0) + noise * torch.randn(n, size, size, generator=generator)
    return x[:, None], y


@dataclass(frozen=True)
class DemoData:
    """Three disjoint sets drawn one after another from one seeded generator."""

    train: tuple[torch.Tensor, torch.Tensor]
    calibration: tuple[torch.Tensor, torch.Tensor]
    evaluation: tuple[torch.Tensor, torch.Tensor]

    def calibration_batches(self, batch: int = 64) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.calibration
        return [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]


def demo_data(seed: int = 0, n_train: int = 4096, n_calibration: int = 128, n_evaluation: int = 2048) -> DemoData:
    """Training, calibration and evaluation images: separate draws, never the same image twice."""
    g = torch.Generator().manual_seed(seed)
    return DemoData(bar_images(n_train, g), bar_images(n_calibration, g), bar_images(n_evaluation, g))


def train(model: nn.Module, data: DemoData, steps: int = 150, batch: int = 64, seed: int = 0,
          progress: Progress | None = None, every: int = 25) -> float:
    """Adam on random minibatches of the training set; a progress line every ``every`` steps. Returns the last loss."""
    x, y = data.train
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    model.train()
    last = math.nan
    if progress:
        progress(f"training {type(model).__name__}: {steps} steps of {batch} images, a line every {every} steps")
    with one_thread():
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            last = loss.item()
            if progress and (step % every == 0 or step == steps):
                progress(f"training step {step}/{steps}: loss {last:.3f}")
    model.eval()
    return last


def accuracy(model: Any, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x`` classified as ``y`` (the model in eval mode, no gradients)."""
    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@dataclass(frozen=True)
class CriterionResult:
    """One criterion's pruned model, scored on the held-out images."""

    importance: str
    data: str  # what the criterion read: "weights only" or "N calibration images"
    report: Any  # compiler.report.Report
    accuracy: float
    seconds: float


def prune_with(model: nn.Module, data: DemoData, importance: str, ratio: float, granularity: int = 4,
               progress: Progress | None = None) -> CriterionResult:
    """Prune a copy of ``model`` (the input is untouched) with one criterion; calibration only for criteria that read data."""
    import compiler
    from passes.importance import CRITERIA

    reads_data = importance in CRITERIA and CRITERIA[importance].runs_model  # an unknown name: compile says so
    n_cal = len(data.calibration[0])
    what = f"{n_cal} calibration images" if reads_data else "weights only"
    if progress:
        progress(f"pruning with {importance} ({what}) at ratio {ratio}, verifying")
    start = time.perf_counter()
    x_eval, y_eval = data.evaluation
    with one_thread():
        result = compiler.compile(model, (x_eval[:1],), ratio=ratio, importance=importance, granularity=granularity,
                                  calibration=data.calibration_batches() if reads_data else None)
        acc = accuracy(result.model, x_eval, y_eval)
    seconds = time.perf_counter() - start
    if progress:
        progress(f"{importance}: done in {seconds:.1f}s, held-out accuracy {acc:.3f}")
    return CriterionResult(importance, what, result.report, acc, seconds)


def _count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def format_comparison(results: Sequence[CriterionResult], unpruned_accuracy: float, n_evaluation: int) -> str:
    """The before/after table: one row for the unpruned model, one per criterion."""
    from compiler.report import text_table

    r0 = results[0].report
    rows = [("criterion", "reads", "params", "MACs", "verified", f"accuracy ({n_evaluation} held-out)"),
            ("(unpruned)", "-", _count(r0.params_before), _count(r0.macs_before), "-", f"{unpruned_accuracy:.3f}")]
    for r in results:
        v = r.report.verification
        state = "-" if v is None else ("passed" if v["passed"] else "FAILED")
        rows.append((r.importance, r.data, f"{_count(r.report.params_after)} ({r.report.params_ratio:.3f}x)",
                     f"{_count(r.report.macs_after)} ({r.report.macs_ratio:.3f}x)", state,
                     f"{r.accuracy:.3f} ({r.accuracy - unpruned_accuracy:+.3f})"))
    return text_table(rows)


def run_demo(steps: int = 150, ratio: float = 0.75, criteria: Sequence[str] = ("l2", "obs", "random"),
             progress: Progress | None = None, out: Callable[[str], None] = print, seed: int = 0) -> list[CriterionResult]:
    """Train, prune with each criterion, print the first one's report and the comparison; one CPU thread, seeded."""
    with one_thread():
        data = demo_data(seed)
        n_train, n_cal, n_eval = (len(s[0]) for s in (data.train, data.calibration, data.evaluation))
        out("prunec demo: a small CNN with a residual add, concat, depthwise conv, SE gate and flatten->linear")
        out(f"task         10 classes of noisy 16x16 bar images: {n_train} to train on, {n_cal} to calibrate the "
            f"data-driven criteria, {n_eval} held out to evaluate (three disjoint draws)")
        torch.manual_seed(seed)
        model = DemoNet()
        start = time.perf_counter()
        loss = train(model, data, steps=steps, seed=seed, progress=progress)
        acc0 = accuracy(model, *data.evaluation)
        out(f"trained      {steps} steps in {time.perf_counter() - start:.1f}s: final loss {loss:.3f}, "
            f"held-out accuracy {acc0:.3f}")
        results = [prune_with(model, data, c, ratio, progress=progress) for c in criteria]
        out("")
        out(f"pruned with {results[0].importance}:")
        out(str(results[0].report))
        out("")
        out(f"the same ratio ({ratio} of each group's prunable channels removed) with each criterion; "
            "accuracy right after pruning, no fine-tuning:")
        out(format_comparison(results, acc0, n_eval))
        return results
