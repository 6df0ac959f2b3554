"""``prunec bench``: a model and its pruned version, side by side on one runtime.

Both models run on the same runtime and provider, interleaved round by round, at
each batch size: median and p90 latency, throughput, peak memory (measured in a
fresh process per model and batch), and the ratios: measured speedup (with a
bootstrap interval over the paired rounds), MACs reduction, and speedup divided
by MACs reduction (1.0: the runtime turns every removed MAC into time saved).

The number of rounds adapts to a time budget: at least ``runs`` rounds per batch
size, then more while the batch size's share of ``budget_s`` lasts. A progress
line reports each of the first ``runs`` rounds as it finishes, then at most one
line a second while the budget lasts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frontends.errors import InvalidArgumentError, UnsupportedModelError

__all__ = ["BenchModel", "bench", "format_table", "time_rounds", "speedup_interval", "default_batches",
           "parse_batches", "check_finite", "onnx_bench_model", "torch_bench_model"]

MIN_RUNS = 5  # rounds per batch size at least, whatever the budget
MAX_RUNS = 200  # rounds per batch size at most, whatever the budget


@dataclass
class BenchModel:
    """A model ready to time: an ONNX model (runs in ONNX Runtime) or a PyTorch module."""

    label: str
    model: Any  # onnx.ModelProto or nn.Module
    input_shapes: list[tuple[int, ...]]  # at batch 1 (or the model's static batch)
    input_dtypes: list[Any]
    macs: int
    static_batch: int | None = None  # a batch size baked into the model, if any
    notes: list[str] = field(default_factory=list)

    @property
    def is_onnx(self) -> bool:
        return type(self.model).__name__ == "ModelProto"

    def inputs(self, batch: int, seed: int = 0) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        out = []
        for shape, dtype in zip(self.input_shapes, self.input_dtypes, strict=True):
            shape = (batch, *shape[1:])
            if np.issubdtype(dtype, np.floating):
                out.append(rng.standard_normal(shape).astype(dtype))
            else:
                out.append(rng.integers(0, 2, size=shape).astype(dtype))
        return out


def onnx_bench_model(label: str, proto: Any, shapes: Sequence[tuple[int, ...]] | None = None) -> BenchModel:
    """Shapes and MACs of an ONNX model (its first dim is the batch)."""
    from frontends.onnx import load_onnx, numpy_dtype, real_inputs, tensor_dims
    from passes.cost import graph_macs

    given = None
    ins = real_inputs(proto)
    if shapes:
        if len(shapes) != len(ins):
            raise InvalidArgumentError(f"{label}: the model has {len(ins)} inputs, got {len(shapes)} --input-shape")
        given = {i.name: np.zeros(s, dtype=numpy_dtype(i.type.tensor_type.elem_type)) for i, s in zip(ins, shapes, strict=True)}
    loaded = load_onnx(proto, given)
    static = None
    for i in ins:
        dims = tensor_dims(i.type)
        if dims is not None and dims:
            static = dims[0]
    arrays = list(loaded.inputs.values())
    return BenchModel(label, loaded.model, [a.shape for a in arrays], [a.dtype for a in arrays],
                      graph_macs(loaded.graph), static)


def torch_bench_model(label: str, module: Any, example_inputs: Sequence[Any]) -> BenchModel:
    from frontends.torch import load_torch
    from passes.cost import graph_macs

    traced = load_torch(module, tuple(example_inputs))
    return BenchModel(label, module, [tuple(x.shape) for x in example_inputs],
                      [x.detach().numpy().dtype for x in example_inputs], graph_macs(traced.graph))


@dataclass
class Cell:
    batch: int
    timings: dict[str, Any]  # label -> Timing
    memory: dict[str, dict[str, float]]
    skipped: str = ""
    samples: dict[str, list[float]] = field(default_factory=dict)  # label -> seconds per round, paired by round


def default_batches(runtime: str = "onnxruntime", provider: str = "auto") -> list[int]:
    """Batch sizes when none are given: 1 and 64 on a GPU, 1 and 8 on the CPU (where 64 takes minutes)."""
    from compiler.backend import gpu_present, resolve_providers

    if runtime == "torch":
        gpu = provider != "cpu" and gpu_present()
    else:
        gpu = resolve_providers(provider)[0] != "CPUExecutionProvider"
    return [1, 64] if gpu else [1, 8]


def time_rounds(
    fns: dict[str, Callable[[], None]],
    warmup: int = 2,
    runs: int = MIN_RUNS,
    budget_s: float = 10.0,
    progress: Callable[[str], None] | None = None,
    prefix: str = "",
    interval_s: float = 1.0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per run of each function, paired by round.

    Every round runs each function once, in an order that alternates between
    rounds, so slow drifts of the machine hit all of them alike. ``runs`` rounds
    at least, then more while ``budget_s`` seconds (warm-up included) have not
    passed, :data:`MAX_RUNS` (or ``runs``, if more) at most. A progress line for
    each of the first ``runs`` rounds, then at most one every ``interval_s`` seconds.
    """
    names = list(fns)
    start = clock()
    for _ in range(max(warmup, 0)):
        for n in names:
            fns[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    cap = max(runs, MAX_RUNS)
    last_line = -math.inf
    r = 0
    while r < runs or (clock() - start < budget_s and r < cap):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = clock()
            fns[n]()
            samples[n].append(clock() - t0)
        r += 1
        now = clock()
        if progress and (r <= runs or now - last_line >= interval_s):
            last_line = now
            times = ", ".join(f"{n} {samples[n][-1] * 1e3:.1f} ms" for n in names)
            progress(f"{prefix}round {r} ({runs} at least, {now - start:.1f}s of {budget_s:.0f}s): {times}")
    if progress:
        progress(f"{prefix}{r} rounds in {clock() - start:.1f}s")
    return samples


def speedup_interval(base: Sequence[float], other: Sequence[float], level: float = 0.9, resamples: int = 2000,
                     seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of median(base) / median(other), resampling the paired rounds together."""
    b, o = np.asarray(base, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if len(b) != len(o) or not len(b):
        raise ValueError("speedup_interval needs paired, non-empty samples")
    idx = np.random.default_rng(seed).integers(0, len(b), size=(resamples, len(b)))
    ratios = np.median(b[idx], axis=1) / np.median(o[idx], axis=1)
    lo, hi = np.quantile(ratios, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bench(
    models: Sequence[BenchModel],
    batches: Sequence[int] = (1, 64),
    runtime: str = "onnxruntime",
    provider: str = "auto",
    fp16: bool = False,
    warmup: int = 2,
    runs: int = MIN_RUNS,
    budget_s: float = 12.0,
    memory: bool = True,
    threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time every model at every batch size, interleaved, on one runtime. Returns a JSON-able dict.

    Each batch size gets an equal share of ``budget_s`` for its rounds (see :func:`time_rounds`).
    """
    from compiler.backend import OrtRunner, Timing, export_onnx, make_runner, peak_memory_onnx

    if runtime not in ("onnxruntime", "torch"):
        raise InvalidArgumentError(f"runtime must be onnxruntime or torch, got {runtime!r}")
    if any(b < 1 for b in batches):
        raise InvalidArgumentError(f"batch sizes must be positive, got {list(batches)}")
    if runs < 3:
        raise InvalidArgumentError(f"runs must be at least 3, got {runs}")
    if not budget_s >= 0:
        raise InvalidArgumentError(f"the time budget must be a number of seconds >= 0, got {budget_s}")
    runners: dict[str, Any] = {}
    onnx_models: dict[str, Any] = {}
    for m in models:
        if progress:
            progress(f"building {m.label} on {runtime}")
        if m.is_onnx or runtime == "onnxruntime":
            import torch

            proto = m.model if m.is_onnx else export_onnx(m.model, [torch.from_numpy(x) for x in m.inputs(1)])
            onnx_models[m.label] = proto
            runners[m.label] = OrtRunner(proto, provider=provider, fp16=fp16, threads=threads)
        else:
            runners[m.label] = make_runner(m.model, backend="auto", provider=provider, fp16=fp16)
    names = {r.name for r in runners.values()}
    cells = []
    timed = [b for b in batches if not any(m.static_batch is not None and m.static_batch != b for m in models)]
    share = budget_s / max(len(timed), 1)
    for b in batches:
        static = [m for m in models if m.static_batch is not None and m.static_batch != b]
        if static:
            cells.append(Cell(b, {}, {}, f"{static[0].label} has a static batch of {static[0].static_batch}"))
            if progress:
                progress(f"batch {b}: skipped ({cells[-1].skipped})")
            continue
        if progress:
            progress(f"batch {b}: timing {len(models)} models interleaved ({warmup} warm-up, then {runs} rounds "
                     f"at least and more while {share:.0f}s last)")
        fns = {m.label: runners[m.label].timed_fn(*m.inputs(b)) for m in models}
        samples = time_rounds(fns, warmup=warmup, runs=runs, budget_s=share, progress=progress, prefix=f"batch {b}: ")
        timings = {n: Timing(float(np.median(s) * 1e3), float(np.percentile(s, 90) * 1e3), len(s), b)
                   for n, s in samples.items()}
        mem: dict[str, dict[str, float]] = {}
        if memory and onnx_models:
            for m in models:
                if m.label in onnx_models:
                    if progress:
                        progress(f"batch {b}: peak memory of {m.label} (fresh process)")
                    mem[m.label] = peak_memory_onnx(onnx_models[m.label], provider=provider, batch=b, fp16=fp16)
        for m in models:  # PyTorch on CUDA: the allocator's peak over one run
            rn = runners[m.label]
            if memory and m.label not in onnx_models and getattr(rn, "device", "cpu") == "cuda":
                import torch

                torch.cuda.reset_peak_memory_stats()
                fns[m.label]()
                mem[m.label] = {"device_mb": torch.cuda.max_memory_allocated() / 2**20}
        cells.append(Cell(b, timings, mem, samples=samples))
    return _summarize(models, cells, ", ".join(sorted(names)))


def _summarize(models: Sequence[BenchModel], cells: list[Cell], runtime: str) -> dict[str, Any]:
    base = models[0]
    rows = []
    for c in cells:
        for m in models:
            t = c.timings.get(m.label)
            row: dict[str, Any] = {"model": m.label, "batch": c.batch, "macs": m.macs}
            if t is None:
                row["skipped"] = c.skipped
            else:
                row.update(t.to_dict())
                row.update(c.memory.get(m.label, {}))
                b = c.timings[base.label]
                if m is not base:
                    row["speedup"] = b.median_ms / t.median_ms
                    row["speedup_interval"] = list(speedup_interval(c.samples[base.label], c.samples[m.label]))
                    row["macs_reduction"] = base.macs / max(m.macs, 1)
                    row["speedup_per_macs"] = row["speedup"] / row["macs_reduction"]
            rows.append(row)
    return {"runtime": runtime, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    head = ["model", "batch", "rounds", "median ms", "p90 ms", "samples/s", "peak MB", "MACs (G)", "speedup (90% interval)",
            "MACs fewer", "speedup/MACs"]
    lines = [f"runtime: {result['runtime']}", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['batch']} | skipped: {r['skipped']} |" + " |" * (len(head) - 3))
            continue
        mem = r.get("device_mb", r.get("host_mb"))
        cells = [
            r["model"], str(r["batch"]), str(r["runs"]), f"{r['median_ms']:.3f}", f"{r['p90_ms']:.3f}",
            f"{r['throughput']:.1f}", "-" if mem is None else f"{mem:.0f}", f"{r['macs'] / 1e9:.3f}",
            _speedup_cell(r) if "speedup" in r else "-",
            f"{r['macs_reduction']:.2f}x" if "macs_reduction" in r else "-",
            f"{r['speedup_per_macs']:.2f}" if "speedup_per_macs" in r else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _speedup_cell(row: dict[str, Any]) -> str:
    """``1.85x (1.62-2.01)``; an interval that holds 1.0 is a tie, and says so."""
    lo, hi = row.get("speedup_interval", (row["speedup"], row["speedup"]))
    tie = ", a tie" if lo <= 1.0 <= hi else ""
    return f"{row['speedup']:.2f}x ({lo:.2f}-{hi:.2f}{tie})"


def parse_batches(text: str) -> list[int]:
    try:
        out = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--batch {text!r}: expected integers like 1,64") from None
    if not out or any(b < 1 or b > 1 << 16 for b in out):
        raise InvalidArgumentError(f"--batch {text!r}: expected positive batch sizes like 1,64")
    return out


def check_finite(result: dict[str, Any]) -> None:
    for r in result["rows"]:
        if "median_ms" in r and not math.isfinite(r["median_ms"]):
            raise UnsupportedModelError(f"{r['model']}: timing failed at batch {r['batch']}")
