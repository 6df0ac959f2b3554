"""Saliency criteria compared: prunec's criteria and Torch-Pruning's importances at the same MACs.

A CNN and an MLP are trained in-process on scikit-learn's bundled digits (8x8,
10 classes). Each is pruned to 2x fewer MACs (granularity 1 for both tools), by
every prunec criterion and by Torch-Pruning's Magnitude (L2), Taylor and Hessian
importances (Torch-Pruning's ratio is bisected until its MACs meet the same
budget). Reported: test accuracy right after pruning, and after the same short
fine-tune. MACs of both tools' pruned models are counted by the same counter.

    pip install -e '.[bench]'
    python benchmarks/criteria.py [--seeds 3] [--finetune-epochs 3]

Writes benchmarks/results/criteria.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compiler  # noqa: E402
from benchmarks._common import DigitsCNN  # noqa: E402
from frontends.torch import load_torch  # noqa: E402
from passes.cost import graph_macs, graph_params  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PRUNEC = ["l1", "l2", "random", "bn_scale", "synflow", "activation", "n2ps", "taylor", "taylor2", "obd", "obs", "mrs", "mrp"]
TP = ["Magnitude", "Taylor", "Hessian"]


CNN = DigitsCNN  # the digits CNN of benchmarks/_common.py (one definition for every benchmark)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def digits(seed: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    tr, te = perm[:1300], perm[1300:]
    return x[tr], y[tr], x[te], y[te]


def train(model: nn.Module, x, y, epochs: int, seed: int, lr: float = 2e-3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def macs_params(model: nn.Module, x) -> tuple[int, int]:
    g = load_torch(model, (x[:1],)).graph
    return graph_macs(g), graph_params(g)


def tp_prune(model: nn.Module, kind: str, x, y, budget: float, base_macs: int) -> nn.Module:
    import torch_pruning as tp

    def attempt(ratio: float) -> nn.Module:
        m = copy.deepcopy(model).eval()
        if kind == "Magnitude":
            imp = tp.importance.GroupMagnitudeImportance(p=2)
        elif kind == "Taylor":
            imp = tp.importance.GroupTaylorImportance()
        else:
            imp = tp.importance.GroupHessianImportance()
        last = [mod for mod in m.modules() if isinstance(mod, nn.Linear)][-1]
        pruner = tp.pruner.MetaPruner(m, x[:1], importance=imp, pruning_ratio=ratio, ignored_layers=[last])
        if kind == "Taylor":
            m.zero_grad()
            for i in range(0, 512, 128):
                F.cross_entropy(m(x[i : i + 128]), y[i : i + 128]).backward()
        elif kind == "Hessian":
            imp.zero_grad()
            for i in range(256):
                m.zero_grad()
                F.cross_entropy(m(x[i : i + 1]), y[i : i + 1]).backward()
                imp.accumulate_grad(m)
        pruner.step()
        m.zero_grad()
        return m

    lo, hi = 0.0, 0.95
    best = attempt(hi)
    for _ in range(12):
        mid = (lo + hi) / 2
        m = attempt(mid)
        if macs_params(m, x)[0] <= budget * base_macs:
            hi, best = mid, m
        else:
            lo = mid
    return best


def run(seeds: int, ft_epochs: int) -> list[dict]:
    rows = []
    for arch_name, factory, epochs in (("CNN", CNN, 12), ("MLP", mlp, 30)):
        for seed in range(seeds):
            torch.manual_seed(seed)
            xtr, ytr, xte, yte = digits(seed)
            base = train(factory(), xtr, ytr, epochs, seed)
            acc0 = accuracy(base, xte, yte)
            macs0, params0 = macs_params(base, xtr)
            cal = [(xtr[i : i + 128], ytr[i : i + 128]) for i in range(0, 512, 128)]
            methods = [("prunec", c) for c in PRUNEC] + [("Torch-Pruning", k) for k in TP]
            for tool, crit in methods:
                t = time.perf_counter()
                if tool == "prunec":
                    r = compiler.compile(
                        base, (xtr[:2],), target_macs=0.5, importance=crit, calibration=cal, granularity=1, seed=seed
                    )
                    pruned = r.model
                else:
                    pruned = tp_prune(base, crit, xtr, ytr, 0.5, macs0)
                secs = time.perf_counter() - t
                macs, params = macs_params(pruned, xtr)
                acc_p = accuracy(pruned, xte, yte)
                tuned = train(copy.deepcopy(pruned), xtr, ytr, ft_epochs, seed, lr=1e-3)
                acc_f = accuracy(tuned, xte, yte)
                rows.append(
                    dict(arch=arch_name, seed=seed, tool=tool, criterion=crit, base_acc=acc0, macs=macs / macs0,
                         params=params / params0, acc_pruned=acc_p, acc_finetuned=acc_f, seconds=secs)
                )  # fmt: skip
                print(f"{arch_name} seed {seed} {tool:13s} {crit:10s} MACs {macs / macs0:.3f} "
                      f"acc {acc0:.3f} -> {acc_p:.3f} (fine-tuned {acc_f:.3f}) {secs:.1f}s", flush=True)  # fmt: skip
    return rows


def table(rows: list[dict], seeds: int, ft_epochs: int) -> str:
    out = [
        "# Saliency criteria at 2x fewer MACs: prunec vs Torch-Pruning",
        "",
        f"Generated by `python benchmarks/criteria.py --seeds {seeds} --finetune-epochs {ft_epochs}` on "
        f"{time.strftime('%Y-%m-%d')}, CPU. Data: scikit-learn digits (1300 train / 497 test), trained in-process; "
        "both tools prune to <= 0.5x the MACs (same counter), granularity 1, the final layer kept. "
        "Calibration for data-driven criteria: 512 labelled training images. Accuracy is the mean over seeds "
        "(min-max in brackets).",
        "",
    ]
    for arch in ("CNN", "MLP"):
        sub = [r for r in rows if r["arch"] == arch]
        base = np.mean([r["base_acc"] for r in sub])
        out += [f"## {arch} (unpruned test accuracy {base:.3f})", "",
                "| tool | criterion | MACs | params | accuracy after pruning | after fine-tune | time (s) |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        keys = []
        for r in sub:
            k = (r["tool"], r["criterion"])
            if k not in keys:
                keys.append(k)
        stats = []
        for k in keys:
            rs = [r for r in sub if (r["tool"], r["criterion"]) == k]
            ap = [r["acc_pruned"] for r in rs]
            af = [r["acc_finetuned"] for r in rs]
            stats.append((k, rs, ap, af))
        for (tool, crit), rs, ap, af in stats:
            out.append(
                f"| {tool} | {crit} | {np.mean([r['macs'] for r in rs]):.3f} | {np.mean([r['params'] for r in rs]):.3f} | "
                f"{np.mean(ap):.3f} [{min(ap):.3f}-{max(ap):.3f}] | {np.mean(af):.3f} [{min(af):.3f}-{max(af):.3f}] | "
                f"{np.mean([r['seconds'] for r in rs]):.2f} |"
            )
        best_p = max((s for s in stats if s[0][0] == "prunec"), key=lambda s: np.mean(s[2]))
        best_t = max((s for s in stats if s[0][0] != "prunec"), key=lambda s: np.mean(s[2]))
        out += ["", f"Best before fine-tuning: prunec `{best_p[0][1]}` {np.mean(best_p[2]):.3f} vs "
                f"Torch-Pruning `{best_t[0][1]}` {np.mean(best_t[2]):.3f} "
                f"({np.mean(best_p[2]) - np.mean(best_t[2]):+.3f}).", ""]  # fmt: skip
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    rows = run(args.seeds, args.finetune_epochs)
    text = table(rows, args.seeds, args.finetune_epochs)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "criteria.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    print()
    print(text)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
