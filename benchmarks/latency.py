"""Latency that follows the MACs: prunec vs Torch-Pruning at the same MACs, on ONNX Runtime.

For each model (random weights, 1x3x224x224): prunec prunes it to half the MACs
(``target_macs=0.5``, l2, verified), Torch-Pruning's ``MagnitudePruner`` (its
defaults, L2 magnitude, classifier ignored, ViT heads declared) is bisected over
its ``pruning_ratio`` to the same MACs (counted by one counter for all). All
three models are exported to ONNX (dynamic batch) and timed in ONNX Runtime on
one provider, interleaved round by round in one process, at each batch size.

The number that matters is speedup / MACs reduction: 1.0 means every removed
multiply-accumulate became time saved. Prints a table and writes
``benchmarks/results/latency.md`` (and ``.json``), naming the device.

The interleaved timing is repeated (``--repeats``, each repeat a fresh set of rounds); a cell
gives the median over repeats of each repeat's median, with the min-max range over repeats. Two
models are ranked only where their ranges do not overlap; overlapping ranges are a tie.

    python benchmarks/latency.py                         # CPU, batch 1 and 16, 5 repeats
    python benchmarks/latency.py --quick                 # a check of the script: mobilenet_v2, batch 1, prints only
    python benchmarks/latency.py --provider cuda --batches 1,64 --out benchmarks/results/latency_gpu.md
    python benchmarks/latency.py --runtime torch --provider cuda --batches 1,64 --out benchmarks/results/latency_gpu_torch.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis_speed import cpu_name  # noqa: E402  (same folder: the CPU named the same way in both tables)

import compiler  # noqa: E402
from compiler.backend import OrtRunner, TorchRunner, export_onnx, time_interleaved  # noqa: E402
from frontends.torch import load_torch  # noqa: E402
from passes.cost import graph_macs  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODELS = ("resnet50", "mobilenet_v2", "vit_b_16")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(name: str, seed: int = 0) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).eval()


def macs_of(model: nn.Module, x: torch.Tensor) -> int:
    return graph_macs(load_torch(model, (x,)).graph)


def tp_prune(name: str, x: torch.Tensor, ratio: float, seed: int) -> nn.Module:
    import torch_pruning as tp
    from torchvision.models.vision_transformer import VisionTransformer

    model = build(name, seed)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    num_heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MagnitudePruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
            ignored_layers=ignored, num_heads=num_heads,
        )
        pruner.step()
    if isinstance(model, VisionTransformer):  # torchvision's ViT reads hidden_dim in forward (TP's example)
        model.hidden_dim = model.conv_proj.out_channels
    return model.eval()


def tp_to_macs(name: str, x: torch.Tensor, target: float, base: int, seed: int) -> tuple[nn.Module, float]:
    """Bisect Torch-Pruning's ratio until its MACs are within 1% of ``target`` x the original."""
    lo, hi = 0.0, 0.9
    best: tuple[nn.Module, float] | None = None
    for _ in range(10):
        mid = (lo + hi) / 2
        m = tp_prune(name, x, mid, seed)
        frac = macs_of(m, x) / base
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (m, frac)
        if abs(frac - target) < 0.01:
            break
        lo, hi = (mid, hi) if frac > target else (lo, mid)
    assert best is not None
    return best


def spread(values: list[float]) -> dict[str, float]:
    """Min, median and max of one quantity over the repeats."""
    v = sorted(values)
    return {"min": v[0], "median": float(statistics.median(v)), "max": v[-1]}


def verdict(a: list[float], b: list[float]) -> str:
    """``"faster"`` where every repeat of ``a`` (latencies, ms) beats every repeat of ``b``, ``"slower"`` the
    other way round, ``"tie"`` where their min-max ranges overlap."""
    if max(a) < min(b):
        return "faster"
    if min(a) > max(b):
        return "slower"
    return "tie"


def make_runners(models: dict[str, Any], runtime: str, provider: str, threads: int | None = None) -> dict[str, Any]:
    """ONNX Runtime sessions of the exported models, or the PyTorch modules on torch.compile (CUDA) / eager."""
    if runtime == "onnxruntime":
        return {k: OrtRunner(m, provider=provider, threads=threads) for k, m in models.items()}
    return {k: TorchRunner(m, mode="auto", device="cuda" if provider == "cuda" else "cpu") for k, m in models.items()}


def one(name: str, batches: list[int], provider: str, seed: int, runs: int, runtime: str = "onnxruntime",
        repeats: int = 5, clock: str = "wall", threads: int | None = None) -> list[dict[str, Any]]:
    x = torch.randn(1, 3, 224, 224)
    model = build(name, seed)
    base = macs_of(model, x)
    log(f"{name}: prunec: target_macs=0.5")
    t0 = time.perf_counter()
    # the default allocation, compiled for the runtime it is timed on: the runtime's channel block (channel_block="auto")
    r = compiler.compile(model, (x,), target_macs=0.5, importance="l2",
                         backend="onnxruntime" if runtime == "onnxruntime" else "auto", provider=provider)
    log(f"{name}: prunec channel block {r.report.settings.get('channel_block')} "
        f"({(r.report.settings.get('channel_block_choice') or {}).get('source', 'given')})")
    pruned: dict[str, tuple[nn.Module, float]] = {"prunec": (r.model, r.report.macs_after / base)}
    log(f"{name}: prunec {pruned['prunec'][1]:.3f}x MACs in {time.perf_counter() - t0:.1f}s (verified: {r.report.verification['passed']})")
    log(f"{name}: Torch-Pruning, bisecting its ratio to the same MACs")
    pruned["torch-pruning"] = tp_to_macs(name, x, pruned["prunec"][1], base, seed)
    log(f"{name}: Torch-Pruning {pruned['torch-pruning'][1]:.3f}x MACs")
    if runtime == "onnxruntime":  # exported once, timed at every batch (dynamic batch)
        protos: dict[str, Any] = {"original": export_onnx(model, (x,))}
        protos.update({k: export_onnx(m, (x,)) for k, (m, _) in pruned.items()})
    else:
        protos = {"original": model, **{k: m for k, (m, _) in pruned.items()}}
    backend = "onnxruntime" if runtime == "onnxruntime" else "auto"
    rows = []
    for b in batches:
        # latency-aware allocation is specific to the batch it is measured at: one model per batch size
        xb_t = torch.randn(b, 3, 224, 224)
        log(f"{name}: prunec-latency: target_macs=0.5, allocation='latency', tables at batch {b}")
        t0 = time.perf_counter()
        rl = compiler.compile(model, (xb_t,), target_macs=0.5, importance="l2", allocation="latency",
                              backend=backend, provider=provider)
        lat = (rl.model, rl.report.macs_after / rl.report.macs_before)
        log(f"{name}: prunec-latency {lat[1]:.3f}x MACs in {time.perf_counter() - t0:.1f}s (verified: {rl.report.verification['passed']}; "
            f"layer timings: {getattr(getattr(rl.plan, 'latency', None), 'cache', None)})")
        cell_models = {**protos, "prunec-latency": export_onnx(lat[0], (x,)) if runtime == "onnxruntime" else lat[0]}
        opsets = {}
        if runtime == "onnxruntime":
            opsets = {k: next(o.version for o in v.opset_import if o.domain in ("", "ai.onnx")) for k, v in cell_models.items()}
            log(f"{name}: ONNX opsets (17: TorchScript exporter, 18: dynamo) {opsets}")
        runners = make_runners(cell_models, runtime, provider, threads)
        device = runners["original"].name
        xb = xb_t.numpy()
        fns = {k: rn.timed_fn(xb) for k, rn in runners.items()}
        n = max(5, runs if b == 1 else runs // 3)
        log(f"{name}: batch {b}, {repeats} repeats of {n}+ interleaved rounds on {device}")
        reps = []
        for i in range(repeats):
            reps.append(time_interleaved(fns, b, warmup=3 if i == 0 else 1, runs=n, min_seconds=3.0, clock=clock))
            log(f"{name}: batch {b}, repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {v.median_ms:.1f} ms" for k, v in reps[-1].items()))
        row = cell(name, b, device, opsets, reps, {**pruned, "prunec-latency": lat})
        rows.append(row)
        log(f"{name} b{b}: original {row['original_ms']:.1f} ms; " + "; ".join(
            f"{k} {row[k]['ms']:.1f} ms ({row[k]['speedup']:.2f}x, {row[k]['speedup_per_macs']:.2f} of MACs)"
            for k in ("prunec", "prunec-latency", "torch-pruning")))
    return rows


TOOLS = ("prunec", "prunec-latency", "torch-pruning")


def cell(name: str, batch: int, device: str, opsets: dict, reps: list[dict[str, Any]],
         macs: dict[str, tuple[Any, float]]) -> dict[str, Any]:
    """One table row from the repeats' timings (``reps[i][model].median_ms``): medians over repeats, their
    min-max ranges, speedups paired by repeat, and each prunec model's verdict against Torch-Pruning and the
    original."""
    ms = {k: [r[k].median_ms for r in reps] for k in reps[0]}
    orig = spread(ms["original"])
    row: dict[str, Any] = {"model": name, "batch": batch, "device": device, "repeats": len(reps),
                           "original_ms": orig["median"], "original_spread": orig, "opsets": opsets}
    for tool, (_, frac) in macs.items():
        t = spread(ms[tool])
        speed = [o / v for o, v in zip(ms["original"], ms[tool], strict=True)]  # paired: one repeat's rounds
        row[tool] = {"ms": t["median"], "ms_spread": t, "ms_repeats": ms[tool], "macs": frac,
                     "speedup": orig["median"] / t["median"], "speedup_per_macs": orig["median"] / t["median"] * frac,
                     "speedup_per_macs_spread": spread([x * frac for x in speed])}
        if tool != "torch-pruning":
            row[tool]["vs_torch_pruning"] = verdict(ms[tool], ms["torch-pruning"]) if "torch-pruning" in ms else "?"
            row[tool]["vs_original"] = verdict(ms[tool], ms["original"])
    return row


def write(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import onnxruntime

    try:
        import torch_pruning

        tpv = torch_pruning.__version__
    except Exception:
        tpv = "?"
    dev = rows[0]["device"] if rows else "?"
    where = cpu_name() + f", {os.cpu_count()} cores" if dev.endswith("cpu") else (torch.cuda.get_device_name(0) if torch.cuda.is_available() else dev)
    how = (
        f"ONNX Runtime {onnxruntime.__version__}, all graph optimizations"
        if dev.startswith("onnxruntime")
        else "the PyTorch modules themselves, torch.compile with its defaults where CUDA is present"
    )
    lines = [
        "# Latency at the same MACs: prunec vs Torch-Pruning",
        "",
        f"Device: **{where}**, runtime {dev} ({how}). "
        f"torch {torch.__version__}, torch-pruning {tpv}. {time.strftime('%Y-%m-%d')}. "
        "Random weights, input 3x224x224. prunec: `target_macs=0.5`, l2, granularity 8, verified. "
        "Torch-Pruning: `MagnitudePruner` (L2, its defaults, classifier ignored, ViT `num_heads` declared), its "
        "`pruning_ratio` bisected to the same MACs. MACs of all models counted by one counter. Timing: interleaved "
        "rounds (original, prunec, Torch-Pruning in one process, order alternating by round), repeated "
        f"{rows[0]['repeats'] if rows else '?'} times; each cell is the median over repeats of each repeat's median, "
        + ("each run timed by the calling thread's CPU time in a single-threaded session (`--clock cpu`: what one core "
           "computes, robust to other jobs pre-empting it on a shared machine); "
           if getattr(args, "clock", "wall") == "cpu" else
           f"each run timed by the wall clock ({getattr(args, 'threads', None) or 'default'} intra-op threads); ")
        +
        "with the min-max range over repeats in brackets. A model is called faster or slower than another only where "
        "their ranges do not overlap; overlapping ranges are a tie.",
        "",
        "**speedup / MACs reduction** (s/M): 1.00 means every removed multiply-accumulate became saved time. "
        "prunec: uniform ratio per group (the default), compiled with `backend=\"onnxruntime\"` so that kept channel counts "
        "round up to the channel block measured on this runtime (`channel_block=\"auto\"`, the default; 16 here). prunec-latency: `allocation=\"latency\"`, per-layer latency "
        "tables measured on this runtime at the row's batch size (example inputs of that batch; one pruned model per "
        "batch size), channels ranked by saliency per millisecond saved, same MACs budget.",
        "",
        "| model | batch | original ms | " + " | ".join(f"{t} MACs | {t} ms | **{t} s/M**" for t in TOOLS)
        + " | prunec vs TP | prunec-latency vs TP |",
        "|---|---|---|" + "---|---|---|" * len(TOOLS) + "---|---|",
    ]

    def rng(x: dict[str, float], fmt: str) -> str:
        return f"{x['median']:{fmt}} [{x['min']:{fmt}}, {x['max']:{fmt}}]"

    for r in rows:
        cells = [r["model"], str(r["batch"]), rng(r["original_spread"], ".1f")]
        for t in TOOLS:
            c = r[t]
            cells += [f"{c['macs']:.3f}", rng(c["ms_spread"], ".1f"), f"**{rng(c['speedup_per_macs_spread'], '.2f')}**"]
        cells += [r["prunec"]["vs_torch_pruning"], r["prunec-latency"]["vs_torch_pruning"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += summary(rows)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    lines += [
        "",
        f"Command: `python benchmarks/latency.py {' '.join(sys.argv[1:])}`. Load average (1, 5, 15 min) at the start: "
        f"{getattr(args, 'load_start', '?')}; when this table was written: {', '.join(f'{v:.2f}' for v in load) if load else '?'} "
        f"(the machine is shared: a load above its {os.cpu_count()} cores means other jobs ran alongside).",
    ]
    return "\n".join(lines) + "\n"


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """One line per prunec model: its verdicts against Torch-Pruning and the original, counted over the cells."""
    out = []
    for tool in ("prunec", "prunec-latency"):
        vs_tp = [r[tool]["vs_torch_pruning"] for r in rows]
        vs_orig = [r[tool]["vs_original"] for r in rows]
        worst = min((r[tool]["speedup_per_macs"] for r in rows), default=float("nan"))
        out.append(
            f"- {tool} against Torch-Pruning's model: faster in {vs_tp.count('faster')}, tie in {vs_tp.count('tie')}, "
            f"slower in {vs_tp.count('slower')} of {len(rows)} cells; against the original: slower in "
            f"{vs_orig.count('slower')}, tie in {vs_orig.count('tie')}; lowest median speedup/MACs {worst:.2f}."
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "torch"],
                    help="torch: the modules themselves, torch.compile on CUDA, eager on the CPU")
    ap.add_argument("--runs", type=int, default=30, help="interleaved rounds at batch 1 (a third of it at larger batches)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of the interleaved timing (the spread and the ties)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: single-threaded ONNX Runtime sessions timed by the calling thread's CPU time, which "
                         "other jobs on a shared machine do not inflate; wall: the wall clock (default threads)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own choice)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/latency.md; with --quick, nothing written")
    ap.add_argument("--quick", action="store_true",
                    help="check the script end to end in a few minutes: mobilenet_v2, batch 1, 5 rounds x 3 repeats; "
                         "prints the table and writes nothing unless --out is given")
    args = ap.parse_args()
    if args.clock == "cpu" and (args.provider != "cpu" or args.runtime != "onnxruntime"):
        ap.error("--clock cpu times ONNX Runtime's CPU provider only (a GPU's time is not the host thread's)")
    if args.clock == "cpu" and args.threads not in (None, 1):
        ap.error("--clock cpu needs --threads 1: the thread CPU time counts the calling thread alone")
    if args.clock == "cpu":
        args.threads = 1
    if args.repeats < 2:
        ap.error("--repeats must be at least 2 (a spread needs two)")
    if args.quick:
        args.models, args.batches, args.runs, args.repeats = "mobilenet_v2", "1", 5, 3
    logging_quiet()
    args.load_start = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    rows: list[dict[str, Any]] = []
    if not (args.quick and args.out is None):
        args.out = args.out or os.path.join(RESULTS, "latency.md")
    text = ""
    for name in args.models.split(","):
        rows += one(name, [int(b) for b in args.batches.split(",")], args.provider, args.seed, args.runs, args.runtime,
                    args.repeats, args.clock, args.threads)
        text = write(rows, args)
        if args.out:  # after every model: a run stopped half-way keeps the rows it measured
            save(text, rows, args.out)
    print(text)


def save(text: str, rows: list[dict[str, Any]], out: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    log(f"wrote {out} ({len(rows)} rows)")


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")


if __name__ == "__main__":
    main()
