"""Prune a LLaMA checkpoint folder disk to disk (``compiler.compile_pretrained``) and measure memory and time per stage.

A random-weight checkpoint (N(0, 0.02) values: each tensor a slice of one pool of normal draws at a random
offset; norms 1 + N(0, 0.1)) in the LLaMA-2-7B shape (hidden 4096, intermediate 11008, 32 layers, 32 heads, vocab
32000, bf16: 13.5 GB) is written shard by shard under /tmp, one tensor in memory at a time (the model is never
built), then pruned with ``ratio=0.25, attention="heads"`` into a second folder in a fresh process whose peak RSS
(``resource.getrusage().ru_maxrss``) is reported with the RSS after imports as the baseline, and the wall time of
each stage (analysis, scoring pass, writing pass, verification). Both folders are deleted at the end.

    flock /tmp/prunec_bigmem.lock nice -n 10 python benchmarks/scale_checkpoint.py
    python benchmarks/scale_checkpoint.py --layers 4 --hidden 1024      # a small run

Writes ``benchmarks/results/scale_checkpoint.md`` (``--out``) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    return 0.0


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def shape_of(layers: int, hidden: int) -> dict[str, int]:
    inter = int(round(hidden * 11008 / 4096 / 8)) * 8
    return {"hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": max(1, hidden // 128), "num_key_value_heads": max(1, hidden // 128), "vocab_size": 32000}  # fmt: skip


def write_checkpoint(folder: str, layers: int, hidden: int, shard_gb: float = 2.0) -> dict[str, float]:
    """A random-weight bf16 LLaMA checkpoint, shard by shard, one tensor in memory at a time."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from compiler.safetensors_io import ShardWriter

    cfg = LlamaConfig(**shape_of(layers, hidden), max_position_embeddings=4096, tie_word_embeddings=False)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = "bfloat16"
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(cfg).state_dict().items()}
    os.makedirs(folder)
    cfg.save_pretrained(folder)
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in shapes.items():
        n = 2 * int(torch.Size(shape).numel())
        if shards[-1] and size + n > shard_gb * 1e9:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    # one pool of N(0, 1) values (a little more than the largest tensor); each tensor is a slice of it from a random
    # offset, scaled: as random for pruning as fresh draws, and the checkpoint is written in seconds, not minutes
    largest = max(int(torch.Size(s).numel()) for s in shapes.values())
    pool = torch.randn(largest + (1 << 20), generator=gen).to(torch.bfloat16)
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(os.path.join(folder, fname), "wb") as f:
            w = ShardWriter(f, [(n, torch.bfloat16, shapes[n]) for n in names])
            for n in names:
                numel = int(torch.Size(shapes[n]).numel())
                start = int(torch.randint(0, pool.numel() - numel + 1, (1,), generator=gen))
                values = pool[start : start + numel].reshape(shapes[n])
                t = 1.0 + 0.1 * values if n.endswith("norm.weight") else 0.02 * values
                w.write(n, t)
                weight_map[n] = fname
                del t
            w.close()
        total += w.total
        print(f"  wrote {fname} ({w.total / 1e9:.2f} GB)", file=sys.stderr, flush=True)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return {"bytes": total, "shards": len(shards), "write_s": time.perf_counter() - t0}


def prune_child(in_dir: str, out_dir: str, ratio: float, result: str) -> None:
    """Runs in its own process: peak RSS counts the pruning only."""
    import torch  # noqa: F401 - the imports are the baseline

    import compiler
    from compiler import pretrained  # noqa: F401

    base = _rss_gb()
    marks: list[tuple[str, float, float]] = []
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"  [{time.perf_counter() - t0:7.1f}s rss {_rss_gb():5.2f} GB peak {_peak_gb():5.2f} GB] {msg}", file=sys.stderr, flush=True)
        if msg.endswith("s") and " done in " in msg:
            marks.append((msg.split(" done in ")[0], _peak_gb(), _rss_gb()))

    report = compiler.compile_pretrained(in_dir, out_dir, ratio=ratio, attention="heads", progress=progress)
    wall = time.perf_counter() - t0
    v = report.verification or {}
    out = {
        "baseline_gb": base, "peak_gb": _peak_gb(), "wall_s": wall, "timings": report.timings,
        "marks": marks, "params": [report.params_before, report.params_after], "macs": [report.macs_before, report.macs_after],
        "bytes_after": report.settings["bytes_after"], "config_changes": report.settings["config_changes"],
        "rescale_rounding": report.settings["rescale_rounding"],
        "verification": {"max_abs_error": v.get("max_abs_error"), "tolerance": v.get("tolerance"), "rtol": v.get("rtol"),
                         "layers": len(v.get("layers", []))},
    }  # fmt: skip
    with open(result, "w") as f:
        json.dump(out, f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--ratio", type=float, default=0.25)
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--tmp", default="/tmp", help="where the checkpoint folders go")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "scale_checkpoint.md"))
    ap.add_argument("--keep", action="store_true", help="do not delete the folders")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        prune_child(args.child[0], args.child[1], float(args.child[2]), args.child[3])
        return
    work = tempfile.mkdtemp(prefix="prunec-scale-", dir=args.tmp)
    in_dir, out_dir, result = os.path.join(work, "in"), os.path.join(work, "out"), os.path.join(work, "result.json")
    try:
        print(f"writing a random bf16 LLaMA checkpoint ({args.layers} layers, hidden {args.hidden}) to {in_dir}", file=sys.stderr)
        ck = write_checkpoint(in_dir, args.layers, args.hidden, args.shard_gb)
        print(f"pruning with ratio={args.ratio}, attention='heads' into {out_dir}", file=sys.stderr)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
        subprocess.run([sys.executable, os.path.abspath(__file__), "--child", in_dir, out_dir, str(args.ratio), result], check=True, env=env)
        with open(result) as f:
            r = json.load(f)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = _table(args, ck, r)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)


def _table(args: argparse.Namespace, ck: dict[str, float], r: dict) -> str:
    shape = shape_of(args.layers, args.hidden)
    gb = ck["bytes"] / 1e9
    rows = ["| stage | wall s | peak RSS at its end (GB) |", "|---|---|---|"]
    for name, peak, _ in r["marks"]:
        rows.append(f"| {name} | {r['timings'].get(name, 0):.1f} | {peak:.2f} |")
    rows.append(f"| **total** | **{r['wall_s']:.1f}** | **{r['peak_gb']:.2f}** |")
    v = r["verification"]
    lines = [
        "# Pruning a checkpoint folder disk to disk (`compiler.compile_pretrained`)",
        "",
        f"Random-weight LLaMA checkpoint written shard by shard by `benchmarks/scale_checkpoint.py`: "
        f"{shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, intermediate {shape['intermediate_size']}, "
        f"{shape['num_attention_heads']} heads, vocab {shape['vocab_size']}, bf16, {int(ck['shards'])} shards, **{gb:.2f} GB**. "
        f"Pruned with `ratio={args.ratio}, attention=\"heads\"` (l2, hf_compatible, verification on) in a fresh process "
        f"on this machine ({os.cpu_count()} CPUs, `nice -n 10`, shared with other jobs).",
        "",
        *rows,
        "",
        f"- RSS after imports (baseline): {r['baseline_gb']:.2f} GB; peak RSS {r['peak_gb']:.2f} GB = "
        f"**{r['peak_gb'] / gb:.2f}x** the checkpoint's bytes ({(r['peak_gb'] - r['baseline_gb']) / gb:.2f}x above the baseline)",
        f"- output: {r['bytes_after'] / 1e9:.2f} GB; parameters {r['params'][0] / 1e9:.2f}B -> {r['params'][1] / 1e9:.2f}B; "
        f"per-token MACs of the linear layers {r['macs'][0] / 1e9:.2f}G -> {r['macs'][1] / 1e9:.2f}G",
        f"- config changes: {json.dumps(r['config_changes'], sort_keys=True)}",
        f"- verification: {v['layers']} layers, each against the original with removed channels zeroed (float64); worst max "
        f"abs error {v['max_abs_error']:.2e} (tolerance {v['tolerance']:.1e}, rtol {v['rtol']:g}); the rescaled RMS-norm weights "
        f"(x sqrt(old/new hidden)) changed by at most {r['rescale_rounding']:.1e} relative when rounded to bf16",
        f"- writing the input checkpoint took {ck['write_s']:.0f} s (not counted)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
