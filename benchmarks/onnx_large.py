"""Large ONNX models (issue #23 item 6, issue #17): peak memory and wall clock of ``prunec prune`` on a model over 2 GB.

Builds an MLP of wide ``Gemm`` + ``Relu`` layers (random float32 weights; 8192 -> 16384 -> 16384 -> 8192 by default,
2.15 GB) written with its weights as external data beside the ``.onnx`` file, tensor by tensor in 64 MB chunks
(the builder never holds the model in memory). Then prunes it from the CLI (``ratio 0.5``, verification on) in a
fresh process whose resident memory is sampled from ``/proc/PID/status`` every 50 ms; the CLI's progress lines
(``load ...``, ``load done in``, ``writing ...``) split the run into stages, and each stage gets its wall time and
the highest RSS sampled in it. The process's own high-water mark (``VmHWM``: exact; ``ru_maxrss`` would keep the
parent's from before the exec) and its RSS after the imports are printed by the child at exit.

    python benchmarks/onnx_large.py                                # 2.15 GB, writes results/onnx_large.md
    python benchmarks/onnx_large.py --sizes 2048,4096,4096,2048 --label small --append
    python benchmarks/onnx_large.py --repo /tmp/old_large --label "before (HEAD)"   # another checkout's prunec

Run it under ``flock /tmp/prunec_bigmem.lock`` on a shared machine: the 2.15 GB model needs several GB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def write_mlp(folder: str, sizes: list[int], seed: int = 0) -> tuple[str, int]:
    """``folder/mlp.onnx`` with every weight in ``weights.bin`` beside it; returns (path, weight bytes)."""
    import onnx
    from onnx import TensorProto, helper

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    offset, cur = 0, "x"
    last = len(sizes) - 2
    with open(os.path.join(folder, "weights.bin"), "wb") as f:
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            for name, shape in ((f"w{k}", (n_out, n_in)), (f"b{k}", (n_out,))):
                t = onnx.TensorProto()
                t.name, t.data_type = name, TensorProto.FLOAT
                t.dims.extend(shape)
                t.data_location = TensorProto.EXTERNAL
                row = int(np.prod(shape[1:], dtype=np.int64)) or 1
                step = max(1, (64 << 20) // (4 * row))
                for r in range(0, shape[0], step):  # 64 MB at a time
                    block = rng.standard_normal((min(step, shape[0] - r), *shape[1:]), dtype=np.float32) / np.float32(np.sqrt(n_in))
                    f.write(block.tobytes())
                length = 4 * int(np.prod(shape, dtype=np.int64))
                for key, v in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(length))):
                    e = t.external_data.add()
                    e.key, e.value = key, v
                offset += length
                inits.append(t)
            out = "y" if k == last else f"g{k}"
            nodes.append(helper.make_node("Gemm", [cur, f"w{k}", f"b{k}"], [out], name=f"fc{k}", transB=1))
            if k < last:
                nodes.append(helper.make_node("Relu", [out], [f"h{k}"], name=f"relu{k}"))
                cur = f"h{k}"
    g = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, sizes[-1]])], inits,
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = os.path.join(folder, "mlp.onnx")
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return path, offset


def _child(argv: list[str]) -> int:
    """Run ``prunec`` (``cli.main(argv)``) in this process; print the RSS after the imports and the peak at exit."""
    import resource

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401  (prunec imports it on first use)

    import compiler  # noqa: F401
    import frontends.onnx  # noqa: F401
    from compiler import cli

    if os.environ.get("ONNX_LARGE_BYTES"):  # the >2 GB path on a smaller model (--large-bytes)
        from frontends.onnx import large

        large.LARGE_BYTES = int(os.environ["ONNX_LARGE_BYTES"])
    imports = rss()
    print(f"@@imports {imports}", file=sys.stderr, flush=True)
    code = cli.main(argv)
    with open("/proc/self/status") as f:  # VmHWM: this process's own high-water mark (ru_maxrss keeps the parent's from before exec)
        m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    peak = int(m.group(1)) * 1024 if m else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"@@peak {peak}", file=sys.stderr, flush=True)
    return code


def prune_measured(src: str, out: str, repo: Path, extra: list[str]) -> dict:
    """Prune ``src`` from the CLI of ``repo`` in a fresh process; RSS sampled, stages from the progress lines."""
    argv = ["prune", src, "-o", out, "--ratio", "0.5", "--granularity", "1", "--external-data", *extra]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(repo))
    samples: list[tuple[float, int]] = []
    anon = [0]  # the highest anonymous (not file-backed) resident memory sampled
    events: list[tuple[float, str]] = []
    done = threading.Event()

    def sample() -> None:
        path = f"/proc/{p.pid}/status"
        while not done.is_set():
            try:
                with open(path) as f:
                    text = f.read()
                m, a = re.search(r"VmRSS:\s+(\d+) kB", text), re.search(r"RssAnon:\s+(\d+) kB", text)
                if m:
                    samples.append((time.perf_counter() - t0, int(m.group(1)) * 1024))
                if a:
                    anon[0] = max(anon[0], int(a.group(1)) * 1024)
            except OSError:
                break
            time.sleep(0.05)

    def read_err() -> None:
        assert p.stderr is not None
        for line in p.stderr:
            events.append((time.perf_counter() - t0, line.rstrip("\n")))

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=read_err, daemon=True)]
    for th in threads:
        th.start()
    stdout = p.stdout.read() if p.stdout is not None else ""
    rc = p.wait()
    wall = time.perf_counter() - t0
    done.set()
    for th in threads:
        th.join(timeout=5)
    imports = peak = 0
    starts: list[tuple[float, str]] = [(0.0, "imports")]
    for t, line in events:
        if line.startswith("@@imports"):
            imports = int(line.split()[1])
            starts.append((t, "start"))
        elif line.startswith("@@peak"):
            peak = int(line.split()[1])
        else:
            m = re.search(r"\] (\S+(?: \S+)?) \.\.\.$", line)
            if m:
                starts.append((t, m.group(1)))
            elif re.search(r"\] writing ", line):
                starts.append((t, "save"))
    ends = [s[0] for s in starts[1:]] + [wall]
    stages = []
    for (t, name), end in zip(starts, ends, strict=True):
        in_stage = [r for s, r in samples if t <= s <= end]
        stages.append({"stage": name, "s": round(end - t, 1), "peak_rss": max(in_stage, default=0)})
    return {"rc": rc, "wall_s": round(wall, 1), "imports": imports, "peak_rss": peak, "peak_anon": anon[0], "stages": stages,
            "stdout": stdout[-2000:], "stderr": "\n".join(line for _, line in events[-15:])}  # fmt: skip


def _gb(b: float) -> str:
    return f"{b / 1e9:.2f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| run | weights GB | exit | wall s | peak RSS GB | peak / weights | (peak - imports) / weights | peak anonymous GB "
        "| stages: seconds, peak RSS GB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        w = r["weights"]
        st = "; ".join(
            f"{s['stage']} {s['s']:.0f} s {_gb(s['peak_rss']) if s['peak_rss'] else '—'}" for s in r["stages"] if s["stage"] not in ("imports", "start")
        )
        lines.append(
            f"| {r['label']} | {_gb(w)} | {r['rc']} | {r['wall_s']:.0f} | {_gb(r['peak_rss'])} | {r['peak_rss'] / w:.2f}x "
            f"| {(r['peak_rss'] - r['imports']) / w:.2f}x | {_gb(r['peak_anon']) if r.get('peak_anon') else '—'} | {st} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8192,16384,16384,8192", help="layer widths of the MLP")
    ap.add_argument("--repo", default=str(REPO), help="the prunec checkout to run (default: this one)")
    ap.add_argument("--label", default="main")
    ap.add_argument("--scratch", default=None, help="folder for the model and the output (default: a temporary one, removed)")
    ap.add_argument("--out", default=str(RESULTS / "onnx_large.jsonl"), help="rows are appended here; the table goes beside it (.md)")
    ap.add_argument("--extra", default="", help="more prunec prune arguments, space separated")
    ap.add_argument("--large-bytes", type=int, default=None, help="take the >2 GB path over this many bytes (a smaller model)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(json.loads(args.child))
    sizes = [int(s) for s in args.sizes.split(",")]
    scratch = args.scratch or tempfile.mkdtemp(prefix="prunec-onnx-large-")
    try:
        t = time.perf_counter()
        src, weights = write_mlp(os.path.join(scratch, "in"), sizes)
        print(f"[onnx_large] wrote {weights / 1e9:.2f} GB in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        os.makedirs(os.path.join(scratch, "out"), exist_ok=True)
        if args.large_bytes is not None:
            os.environ["ONNX_LARGE_BYTES"] = str(args.large_bytes)
        r = prune_measured(src, os.path.join(scratch, "out", "pruned.onnx"), Path(args.repo), args.extra.split())
        if r["rc"] != 0:
            print(r["stderr"], file=sys.stderr)
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)
    row = {"label": args.label, "sizes": sizes, "weights": weights, **{k: v for k, v in r.items() if k not in ("stdout", "stderr")}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    text = table(rows)
    print(text)
    md = out.with_suffix(".md")
    head = md.read_text().split("\n| run |")[0].rstrip() + "\n\n" if md.exists() else "# ONNX models over 2 GB: peak memory per stage\n\n"
    md.write_text(head + text + "\n")
    return 0 if r["rc"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
