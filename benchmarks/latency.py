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

    python benchmarks/latency.py                         # CPU, batch 1 and 16
    python benchmarks/latency.py --provider cuda --batches 1,64 --out benchmarks/results/latency_gpu.md
    python benchmarks/latency.py --runtime torch --provider cuda --batches 1,64 --out benchmarks/results/latency_gpu_torch.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
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


def make_runners(models: dict[str, Any], runtime: str, provider: str) -> dict[str, Any]:
    """ONNX Runtime sessions of the exported models, or the PyTorch modules on torch.compile (CUDA) / eager."""
    if runtime == "onnxruntime":
        return {k: OrtRunner(m, provider=provider) for k, m in models.items()}
    return {k: TorchRunner(m, mode="auto", device="cuda" if provider == "cuda" else "cpu") for k, m in models.items()}


def one(name: str, batches: list[int], provider: str, seed: int, runs: int, runtime: str = "onnxruntime") -> list[dict[str, Any]]:
    x = torch.randn(1, 3, 224, 224)
    model = build(name, seed)
    base = macs_of(model, x)
    log(f"{name}: prunec: target_macs=0.5")
    t0 = time.perf_counter()
    r = compiler.compile(model, (x,), target_macs=0.5, importance="l2")
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
        log(f"{name}: prunec-latency {lat[1]:.3f}x MACs in {time.perf_counter() - t0:.1f}s (verified: {rl.report.verification['passed']})")
        cell_models = {**protos, "prunec-latency": export_onnx(lat[0], (x,)) if runtime == "onnxruntime" else lat[0]}
        opsets = {}
        if runtime == "onnxruntime":
            opsets = {k: next(o.version for o in v.opset_import if o.domain in ("", "ai.onnx")) for k, v in cell_models.items()}
            log(f"{name}: ONNX opsets (17: TorchScript exporter, 18: dynamo) {opsets}")
        runners = make_runners(cell_models, runtime, provider)
        device = runners["original"].name
        xb = xb_t.numpy()
        fns = {k: rn.timed_fn(xb) for k, rn in runners.items()}
        n = max(5, runs if b == 1 else runs // 3)
        log(f"{name}: batch {b}, {n}+ interleaved rounds on {device}")
        t = time_interleaved(fns, b, warmup=3, runs=n, min_seconds=3.0)
        row: dict[str, Any] = {"model": name, "batch": b, "device": device, "original_ms": t["original"].median_ms,
                               "opsets": opsets}
        for tool, (_, frac) in {**pruned, "prunec-latency": lat}.items():
            speed = t["original"].median_ms / t[tool].median_ms
            row[tool] = {"ms": t[tool].median_ms, "p90_ms": t[tool].p90_ms, "macs": frac, "speedup": speed,
                         "speedup_per_macs": speed * frac}
        rows.append(row)
        log(f"{name} b{b}: original {row['original_ms']:.1f} ms; " + "; ".join(
            f"{k} {row[k]['ms']:.1f} ms ({row[k]['speedup']:.2f}x, {row[k]['speedup_per_macs']:.2f} of MACs)"
            for k in ("prunec", "prunec-latency", "torch-pruning")))
    return rows


TOOLS = ("prunec", "prunec-latency", "torch-pruning")


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
        "`pruning_ratio` bisected to the same MACs. MACs of all models counted by one counter. Each cell: median of "
        "interleaved runs (original, prunec, Torch-Pruning in one process, order alternating by round).",
        "",
        "**speedup / MACs reduction** (s/M): 1.00 means every removed multiply-accumulate became saved time. "
        "prunec: uniform ratio per group (the default). prunec-latency: `allocation=\"latency\"`, per-layer latency "
        "tables measured on this runtime at the row's batch size (example inputs of that batch; one pruned model per "
        "batch size), channels ranked by saliency per millisecond saved, same MACs budget.",
        "",
        "| model | batch | original ms | " + " | ".join(f"{t} MACs | {t} ms | {t} speedup | **{t} s/M**" for t in TOOLS) + " |",
        "|---|---|---|" + "---|---|---|---|" * len(TOOLS),
    ]
    for r in rows:
        cells = [r["model"], str(r["batch"]), f"{r['original_ms']:.1f}"]
        for t in TOOLS:
            c = r[t]
            cells += [f"{c['macs']:.3f}", f"{c['ms']:.1f}", f"{c['speedup']:.2f}x", f"**{c['speedup_per_macs']:.2f}**"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for tool in ("prunec", "prunec-latency"):
        ahead = sum(r[tool]["ms"] < r["torch-pruning"]["ms"] for r in rows)
        slower = sum(r[tool]["ms"] >= r["original_ms"] for r in rows)
        worst = min((r[tool]["speedup_per_macs"] for r in rows), default=float("nan"))
        lines.append(f"- {tool}: faster than Torch-Pruning's model in {ahead} of {len(rows)} cells; slower than the "
                     f"original in {slower}; lowest speedup/MACs {worst:.2f}.")
    lines += [
        "",
        f"Command: `python benchmarks/latency.py {' '.join(sys.argv[1:])}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "torch"],
                    help="torch: the modules themselves, torch.compile on CUDA, eager on the CPU")
    ap.add_argument("--runs", type=int, default=30, help="interleaved rounds at batch 1 (a third of it at larger batches)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(RESULTS, "latency.md"))
    args = ap.parse_args()
    logging_quiet()
    rows: list[dict[str, Any]] = []
    for name in args.models.split(","):
        rows += one(name, [int(b) for b in args.batches.split(",")], args.provider, args.seed, args.runs, args.runtime)
    text = write(rows, args)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(rows, f, indent=2)
    log(f"wrote {args.out}")


def logging_quiet() -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore")


if __name__ == "__main__":
    main()
