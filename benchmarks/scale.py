"""Scale (issue #17): peak memory and wall clock per compile stage, as the model grows.

Each model is compiled in a fresh subprocess (``--one NAME``) so that ``ru_maxrss``, a high-water mark,
measures that compile alone. For each: the weight bytes, the process's resident memory after the imports
(the interpreter, torch, transformers: a fixed cost that does not grow with the model), the peak during the
compile, and the time of every stage of the pipeline (trace, analyze, saliency, select, rewrite, verify,
measure). Memory is given two ways: the whole process's peak over the weights, and the peak above the
imports over the weights (what the model and the compile add).

Models (random weights; nothing is downloaded):

* LLaMA shapes with grouped-query attention, ``ratio=0.25, attention="heads"``, 64 tokens, verification on:
  4 layers at hidden 2048 (0.31B), 22 layers at hidden 2048 (1.1B, TinyLlama's shape) in float32 and
  bfloat16, and 26 layers at hidden 3200 (3.4B, OpenLLaMA-3B's shape) in bfloat16.
* ResNet-style CNNs 1x, 2x and 4x as deep (BasicBlock stages [2,2,2,2] times k), ``ratio=0.5``, batch 1 at 224.

The CPU time of each stage (``time.process_time``: this process, all threads) is compared across sizes of one
family: the exponent ``log(t2/t1) / log(s2/s1)`` from the smallest to the largest model (1.0: linear; above ~1.3
the stage is called superlinear). The table also gives each stage's wall clock.

    python benchmarks/scale.py                     # every model (the 1.1B float32 needs ~9 GB free)
    python benchmarks/scale.py --models llama-0.3b,cnn-1x,cnn-2x,cnn-4x
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

MODELS: dict[str, dict] = {
    "llama-0.3b": {"family": "llama", "layers": 4, "hidden": 2048, "dtype": "float32"},
    "llama-1.1b-bf16": {"family": "llama", "layers": 22, "hidden": 2048, "dtype": "bfloat16"},
    "llama-1.1b": {"family": "llama", "layers": 22, "hidden": 2048, "dtype": "float32"},
    "llama-3b-bf16": {"family": "llama", "layers": 26, "hidden": 3200, "dtype": "bfloat16", "inter": 8640, "heads": 32, "kv": 32},
    "cnn-1x": {"family": "cnn", "k": 1},
    "cnn-2x": {"family": "cnn", "k": 2},
    "cnn-4x": {"family": "cnn", "k": 4},
}
STAGES = ["trace", "analyze", "saliency", "select", "rewrite", "verify", "measure"]


def _rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_one(name: str) -> dict:
    """Build ``name``, compile it, and return what was measured (in this process)."""
    import torch
    import torchvision  # noqa: F401  (every import before the baseline)
    import transformers

    import compiler

    spec = MODELS[name]
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    compiler.compile(tiny, (torch.randn(2, 8),), ratio=0.5)  # what prunec imports on first use is not the model's
    after_imports = _current_rss()
    if spec["family"] == "llama":
        h = spec["hidden"]
        cfg = transformers.LlamaConfig(
            hidden_size=h,
            intermediate_size=spec.get("inter", int(h * 2.75)),
            num_hidden_layers=spec["layers"],
            num_attention_heads=spec.get("heads", h // 64),
            num_key_value_heads=spec.get("kv", h // 256),
            vocab_size=32000,
        )
        dtype = getattr(torch, spec["dtype"])
        with torch.device("cpu"):
            model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
        inputs: tuple = (torch.randint(0, 32000, (1, 64)),)
        kwargs = {"ratio": 0.25, "attention": "heads"}
        size = sum(p.numel() for p in model.parameters())
    else:
        from torchvision.models.resnet import BasicBlock, ResNet

        model = ResNet(BasicBlock, [2 * spec["k"]] * 4).eval()
        inputs = (torch.randn(1, 3, 224, 224),)
        kwargs = {"ratio": 0.5}
        size = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        model(*inputs)  # a first forward: lazily built state (rotary caches) is not charged to the compile
    before = _current_rss()
    cpu: dict[str, float] = {}

    def progress(line: str) -> None:  # CPU seconds per stage (this process, all its threads): robust to other load
        stage = line.split(" ")[0] if line.endswith(" ...") or " done in " in line else None
        if stage in STAGES:
            cpu[stage] = time.process_time() - cpu.get(stage, 0.0) if " done in " in line else time.process_time()

    t = time.perf_counter()
    r = compiler.compile(model, inputs, progress=progress, **kwargs)
    wall = time.perf_counter() - t
    peak = _rss()
    v = r.report.verification or {}
    return {
        "model": name,
        "params": size,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "weights_bytes": weights,
        "rss_after_imports": after_imports,
        "rss_before_compile": before,
        "peak_rss": peak,
        "wall_s": round(wall, 2),
        "stages": {k: v_ for k, v_ in r.report.timings.items()},
        "cpu_stages": {k: round(v_, 3) for k, v_ in cpu.items()},
        "macs_ratio": round(r.report.macs_ratio, 3),
        "verified": bool(v.get("passed")),
        "verify_dtype": v.get("dtype"),
        "nodes_checked": v.get("nodes_checked"),
    }


def _fmt_gb(b: float) -> str:
    return f"{b / 1e9:.2f}"


def table(rows: list[dict]) -> str:
    head = (
        "| model | params | dtype | weights GB | compile s | peak RSS GB | peak / weights | (peak - imports) / weights "
        "| MACs | verified | " + " | ".join(STAGES) + " |"
    )
    lines = [head, "|" + "---|" * (10 + len(STAGES))]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | | | | | | | | | {r['error']} |" + " |" * len(STAGES))
            continue
        w = r["weights_bytes"]
        stages = " | ".join(f"{r['stages'].get(s, 0):.1f}" for s in STAGES)
        lines.append(
            f"| {r['model']} | {r['params'] / 1e9:.2f}B | {r['dtype']} | {_fmt_gb(w)} | {r['wall_s']:.1f} | {_fmt_gb(r['peak_rss'])} "
            f"| {r['peak_rss'] / w:.2f}x | {(r['peak_rss'] - r['rss_after_imports']) / w:.2f}x | {r['macs_ratio']:.3f} "
            f"| {'yes' if r['verified'] else 'NO'} ({r['verify_dtype']}, {r['nodes_checked']} nodes) | {stages} |"
        )
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """Per family and stage, the exponent of time in model size from the smallest to the largest model."""
    out = ["| family | from -> to | size x | " + " | ".join(STAGES) + " | all stages |", "|" + "---|" * (4 + len(STAGES))]
    fams: dict[str, list[dict]] = {}
    for r in rows:
        if "error" not in r:
            fams.setdefault(MODELS[r["model"]]["family"] + ("" if MODELS[r["model"]].get("dtype") != "bfloat16" else "-bf16"), []).append(r)
    for fam, rs in sorted(fams.items()):
        rs = sorted(rs, key=lambda r: r["params"])
        if len(rs) < 2:
            continue
        a, b = rs[0], rs[-1]
        sx = b["params"] / a["params"]
        cells = []
        for s in [*STAGES, None]:
            ta = sum(a["cpu_stages"].values()) if s is None else a["cpu_stages"].get(s, 0)
            tb = sum(b["cpu_stages"].values()) if s is None else b["cpu_stages"].get(s, 0)
            if ta < 0.05 or tb < 0.05:
                cells.append("—")
                continue
            e = math.log(tb / ta) / math.log(sx)
            cells.append(f"{e:.2f}" + (" **superlinear**" if e > 1.3 else ""))
        out.append(f"| {fam} | {a['model']} -> {b['model']} | {sx:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS / "scale.md"))
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)))
        return 0
    rows = []
    for name in args.models.split(","):
        print(f"[scale] {name} ...", file=sys.stderr, flush=True)
        p = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True)
        if p.returncode != 0:
            tail = (p.stderr.strip().splitlines() or ["killed"])[-1][:160]
            rows.append({"model": name, "error": f"failed (exit {p.returncode}): {tail}"})
        else:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"[scale] {name}: {rows[-1].get('wall_s', rows[-1].get('error'))}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    md = [
        "# Scale: memory and time per compile stage",
        "",
        f"`python benchmarks/scale.py --models {args.models}` on {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, load average at the end "
        f"{load[0]:.1f} (the machine was shared: times are wall clock under that load). Random weights; LLaMA shapes "
        "`ratio=0.25, attention=\"heads\"` on 64 tokens; CNNs `ratio=0.5` at 1x3x224x224. Verification on (float64, "
        "every intermediate tensor). Peak RSS is `ru_maxrss` of a fresh process per model; \"imports\" is its RSS "
        "after importing torch, transformers and prunec, before the model is built.",
        "",
        table(rows),
        "",
        "Growth of each stage's CPU time (this process's, all threads: other jobs on the machine do not inflate it as they "
        "do wall clock) with model size, as the exponent log(t2/t1) / log(size2/size1) from the smallest to the largest "
        "model of a family (1.0 is linear; '—' where a stage takes under 0.05 s):",
        "",
        growth(rows),
        "",
    ]
    text = "\n".join(md)
    print(text)
    Path(args.out).write_text(text)
    with open(Path(args.out).with_suffix(".jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
