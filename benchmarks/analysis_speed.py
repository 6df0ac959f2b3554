"""Analysis speed: prunec against Torch-Pruning on the same models, in the same run.

For each model (torchvision, random weights, 1x3x224x224) both tools prune to a 0.5
channel ratio with L2 magnitude scores, alternately (Torch-Pruning first on even
repeats, prunec first on odd ones), and the median of the repeats is reported.

- Torch-Pruning (``tp.pruner.MagnitudePruner``): the constructor (dependency graph:
  a traced forward pass and the dependency edges) plus ``step()`` (groups,
  importance, physical pruning), following its torchvision example: the 1000-way
  classifier ignored; for ViT channel counts rounded to a multiple of the head
  count and ``model.hidden_dim`` updated after the step.
- prunec (``compiler.compile(..., verify=False)``): trace (symbolic trace + shape
  propagation on meta tensors), channel analysis, L2 saliency, selection, rewrite.
  The ``measure`` step (re-tracing the pruned model for the report) is not counted.
  Verification (float64 masked reference) is work Torch-Pruning does not do: it is
  timed once per model in its own column, outside the ratio.

Both pruned models' MACs are counted with prunec's counter, so the reader sees that
both did comparable work. A second part times prunec on synthetic residual and
densenet-like chains of N = 50 ... 800 blocks, to show time/N stays flat.
Writes benchmarks/results/analysis_speed.md.

    python benchmarks/analysis_speed.py                       # all of it (long: Torch-Pruning takes minutes on densenet201)
    python benchmarks/analysis_speed.py --models resnet50 --repeats 1 --sizes 50,100
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compiler  # noqa: E402
from frontends.torch import VerifyFX, load_torch  # noqa: E402
from passes.cost import graph_macs  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODELS = ("resnet50", "densenet201", "vit_b_16", "convnext_base")
PRUNEC_STAGES = ("trace", "analyze", "saliency", "select", "rewrite")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(name: str, seed: int) -> nn.Module:
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).eval()


def macs_of(model: nn.Module, x: torch.Tensor) -> int:
    return graph_macs(load_torch(model, (x,)).graph)


# ---------------------------------------------------------------------------
# one run of each tool


def run_tp(name: str, x: torch.Tensor, seed: int) -> dict[str, Any]:
    import torch_pruning as tp
    from torchvision.models.vision_transformer import VisionTransformer

    model = build(name, seed)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1000]
    # ViT: channel counts rounded to a multiple of the head count, as in TP's torchvision example (declaring
    # num_heads instead leaves the embedding dim unpruned in TP 1.6: 0.68x MACs, not comparable work)
    round_to = model.encoder.layers[0].num_heads if isinstance(model, VisionTransformer) else None
    gc.collect()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # TP warns about the unwrapped parameters it detects (ConvNeXt layer scales)
        t0 = time.perf_counter()
        pruner = tp.pruner.MagnitudePruner(
            model,
            x,
            importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=0.5,
            ignored_layers=ignored,
            round_to=round_to,
        )
        t1 = time.perf_counter()
        pruner.step()
        if isinstance(model, VisionTransformer):  # torchvision's ViT reads hidden_dim in forward (TP's example)
            model.hidden_dim = model.conv_proj.out_channels
        t2 = time.perf_counter()
    with torch.no_grad():
        out = model(x)  # the pruned model runs
    assert out.shape == (1, 1000), out.shape
    return {"graph": t1 - t0, "step": t2 - t1, "total": t2 - t0, "model": model}


def run_prunec(name: str, x: torch.Tensor, seed: int) -> dict[str, Any]:
    model = build(name, seed)
    gc.collect()
    t0 = time.perf_counter()
    r = compiler.compile(model, (x,), ratio=0.5, importance="l2", verify=False)
    wall = time.perf_counter() - t0
    tm = r.report.timings
    row = {s: tm.get(s, 0.0) for s in PRUNEC_STAGES}
    row["other"] = wall - sum(row.values())  # measure (re-trace), report, copies: part of what the user waits for
    row["total"] = wall  # the whole compile() call, wall clock
    row["result"] = r
    return row


def verify_time(r: Any, x: torch.Tensor) -> tuple[float, float]:
    """Seconds to verify a prunec result, and its max abs error (raises on a mismatch)."""
    t = time.perf_counter()
    res = VerifyFX(rtol=1e-5).call(r.traced, r.plan.analysis, r.plan.selection.pruned, r.model, (x,), {})
    return time.perf_counter() - t, res.max_abs_error


def compare(name: str, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tp_runs: list[dict] = []
    pc_runs: list[dict] = []
    for i in range(repeats):
        order = (run_tp, run_prunec) if i % 2 == 0 else (run_prunec, run_tp)
        for fn in order:
            out = fn(name, x, i)
            (tp_runs if fn is run_tp else pc_runs).append(out)
            log(f"  {name} repeat {i + 1}: {'torch-pruning' if fn is run_tp else 'prunec'} {out['total']:.2f}s")
            if i < repeats - 1:
                out.pop("model", None)
                out.pop("result", None)
            gc.collect()
    med = lambda runs, k: statistics.median(r[k] for r in runs)  # noqa: E731
    last_pc = pc_runs[-1]["result"]
    tp_model = tp_runs[-1]["model"]
    v_seconds, v_err = verify_time(last_pc, x)
    rep = last_pc.report
    row = {
        "model": name,
        "tp_graph": med(tp_runs, "graph"),
        "tp_step": med(tp_runs, "step"),
        "tp_total": med(tp_runs, "total"),
        "pc_trace": med(pc_runs, "trace"),
        "pc_analyze": med(pc_runs, "analyze"),
        "pc_select": statistics.median(r["saliency"] + r["select"] for r in pc_runs),
        "pc_rewrite": med(pc_runs, "rewrite"),
        "pc_other": med(pc_runs, "other"),
        "pc_total": med(pc_runs, "total"),
        "pc_verify": v_seconds,
        "verify_error": v_err,
        "pc_macs": rep.macs_after / rep.macs_before,
        "tp_macs": macs_of(tp_model, x) / rep.macs_before,
        "pc_params": rep.params_ratio,
        "tp_params": sum(p.numel() for p in tp_model.parameters()) / rep.params_before,
        "repeats": repeats,
    }
    row["ratio"] = row["tp_total"] / row["pc_total"]
    return row


# ---------------------------------------------------------------------------
# scaling: synthetic chains


class ResidualChain(nn.Module):
    """Stem, ``n`` residual blocks (conv-bn-relu-conv-bn + identity), pooled linear head."""

    def __init__(self, n: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            )
            for _ in range(n)
        )  # fmt: skip
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for b in self.blocks:
            x = torch.relu(x + b(x))
        return self.head(x.mean((2, 3)))


class DenseChain(nn.Module):
    """DenseNet-like: ``n`` layers in dense blocks of ``block`` layers; every layer reads the
    concatenation of all earlier features of its block; a 1x1 transition ends each block."""

    def __init__(self, n: int, width: int = 16, growth: int = 8, block: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for b in range(0, n, block):
            k = min(block, n - b)
            layers = nn.ModuleList(
                nn.Sequential(
                    nn.BatchNorm2d(width + j * growth), nn.ReLU(), nn.Conv2d(width + j * growth, growth, 3, padding=1)
                )
                for j in range(k)
            )
            self.blocks.append(layers)
            self.transitions.append(nn.Conv2d(width + k * growth, width, 1))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layers, trans in zip(self.blocks, self.transitions, strict=True):
            feats = [x]
            for layer in layers:
                feats.append(layer(torch.cat(feats, 1)))
            x = trans(torch.cat(feats, 1))
        return self.head(x.mean((2, 3)))


SYNTHETIC = {"residual": ResidualChain, "dense": DenseChain}


def scaling(sizes: list[int], log: Callable[[str], None]) -> list[dict[str, Any]]:
    rows = []
    x = torch.randn(1, 3, 8, 8)
    for kind, cls in SYNTHETIC.items():
        for n in sizes:
            torch.manual_seed(0)
            model = cls(n).eval()
            gc.collect()
            r = compiler.compile(model, (x,), ratio=0.5, verify=False)
            tm = r.report.timings
            a = r.plan.analysis
            st = a.stats
            row = {
                "kind": kind,
                "n": n,
                "ops": len(a.graph.ops),
                "atoms": st.atoms,
                "relations": st.union_elements + st.freeze_elements,
                "trace": tm["trace"],
                "analyze": tm["analyze"],
                "plan_rewrite": tm["saliency"] + tm["select"] + tm["rewrite"],
            }
            rows.append(row)
            log(
                f"  {kind} N={n}: {row['ops']} ops, {row['atoms']} atoms; trace {row['trace']:.3f}s, "
                f"analyze {row['analyze']:.3f}s, saliency+select+rewrite {row['plan_rewrite']:.3f}s"
            )
            del r, model
    return rows


# ---------------------------------------------------------------------------
# report


def write(rows: list[dict], scale: list[dict], args: argparse.Namespace) -> str:
    import torch_pruning as tp

    lines = [
        "# Analysis speed: prunec against Torch-Pruning",
        "",
        f"CPU: {cpu_name()} ({torch.get_num_threads()} torch threads; a shared machine, so absolute times are noisy: "
        f"both tools run alternately in one process, and the ratio is the meaningful number). "
        f"torch {torch.__version__}, torch-pruning {tp.__version__}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}. Produced by `python benchmarks/analysis_speed.py`.",
        "",
        "Both tools prune each model (random weights, 1x3x224x224) to a 0.5 channel ratio with L2 magnitude. "
        "**Torch-Pruning**: `MagnitudePruner(...)` (dependency graph) + `step()` (groups, importance, physical pruning), "
        "the 1000-way classifier ignored as in its torchvision example (ViT: `round_to` = the head "
        "count, `hidden_dim` updated after the step). "
        "**prunec**: `compile(..., verify=False)`, the stages trace (symbolic trace, shape propagation), analysis "
        "(coupling groups), saliency + selection, rewrite, and *other* (re-tracing the pruned model to count its "
        "MACs, the report); **prunec total** is the wall clock of the whole `compile()` call, not a sum of stages. "
        "Torch-Pruning's graph construction runs the model once; "
        "prunec propagates shapes with meta tensors (no arithmetic) and runs the model only where that fails or "
        "where it inlines an `fx.wrap`ped function at the example's sizes (ConvNeXt's `stochastic_depth`). "
        "**Speed-up** = Torch-Pruning total / prunec total, "
        f"medians of {args.repeats} alternating repeats. `verify` (float64 masked-reference check, extra work Torch-Pruning "
        "does not do) is timed once and not in the ratio. MACs and params after/before are counted with prunec's "
        "counter for both models.",
        "",
        "| model | TP graph (s) | TP step (s) | **TP total** | prunec trace | analysis | saliency+select | rewrite | "
        "other | **prunec total** | **speed-up** | prunec verify (s) | MACs prunec / TP | params prunec / TP |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['tp_graph']:.2f} | {r['tp_step']:.2f} | **{r['tp_total']:.2f}** | {r['pc_trace']:.2f} | "
            f"{r['pc_analyze']:.3f} | {r['pc_select']:.3f} | {r['pc_rewrite']:.2f} | {r['pc_other']:.2f} | **{r['pc_total']:.2f}** | "
            f"**{r['ratio']:.1f}x** | {r['pc_verify']:.1f} | {r['pc_macs']:.3f} / {r['tp_macs']:.3f} | "
            f"{r['pc_params']:.3f} / {r['tp_params']:.3f} |"
        )
    if scale:
        lines += [
            "",
            "## Scaling with graph size",
            "",
            "prunec on synthetic chains of N blocks (width 16, input 1x3x8x8, `compile(ratio=0.5, verify=False)`): "
            "`residual` = conv-bn-relu-conv-bn blocks with identity adds; `dense` = DenseNet-like layers, each "
            "reading the concatenation of all earlier features of its dense block (8 layers, growth 8), a 1x1 "
            "transition per block. `atoms` = channel atoms, `relations` = atom ties and freezes recorded by the "
            "op rules. Time per block (ms/N) stays flat when the stage is linear in graph size; "
            "`tests/test_analysis_scaling.py` checks the same by counting operations.",
            "",
            "| chain | N | ops | atoms | relations | trace (s) | analysis (s) | saliency+select+rewrite (s) | "
            "trace ms/N | analysis ms/N | sal+sel+rewrite ms/N |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in scale:
            n = s["n"]
            lines.append(
                f"| {s['kind']} | {n} | {s['ops']} | {s['atoms']} | {s['relations']} | {s['trace']:.3f} | "
                f"{s['analyze']:.3f} | {s['plan_rewrite']:.3f} | {1e3 * s['trace'] / n:.2f} | "
                f"{1e3 * s['analyze'] / n:.3f} | {1e3 * s['plan_rewrite'] / n:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision model names ('' for none)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", default="50,100,200,400,800", help="block counts of the scaling part ('' to skip)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "analysis_speed.md"))
    args = ap.parse_args()
    logging.getLogger("torch_pruning").setLevel(logging.ERROR)
    say = lambda s: print(s, flush=True)  # noqa: E731
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        say(f"{name}:")
        row = compare(name, args.repeats, say)
        rows.append(row)
        say(
            f"{name}: TP {row['tp_total']:.2f}s, prunec {row['pc_total']:.2f}s -> {row['ratio']:.1f}x; "
            f"verify {row['pc_verify']:.1f}s; MACs prunec {row['pc_macs']:.3f} TP {row['tp_macs']:.3f}"
        )
        gc.collect()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    scale = scaling(sizes, say) if sizes else []
    text = write(rows, scale, args)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
