"""Coverage: every torchvision model through ``compiler.compile(ratio=0.5)``.

For each model (random weights, ``weights=None``): whether it traced and how,
groups found, groups frozen and why, MACs and parameter ratios, the verification
error, and the compile time. Writes benchmarks/results/coverage.md.

    python benchmarks/coverage.py                  # classification models up to --max-params
    python benchmarks/coverage.py --all            # also segmentation, detection-free video models
    python benchmarks/coverage.py --models resnet18,vit_b_16
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compiler  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def input_for(name: str, family: str) -> torch.Tensor:
    if family == "video":
        return torch.randn(1, 3, 8, 112, 112)
    if name.startswith("inception"):
        return torch.randn(1, 3, 299, 299)
    if family == "segmentation":
        return torch.randn(1, 3, 224, 224)
    return torch.randn(1, 3, 224, 224)


def models(args) -> list[tuple[str, str]]:
    import torchvision.models as tvm

    out = [(n, "classification") for n in tvm.list_models(module=tvm)]
    if args.all:
        out += [(n, "segmentation") for n in tvm.list_models(module=tvm.segmentation)]
        out += [(n, "video") for n in tvm.list_models(module=tvm.video)]
    if args.models:
        wanted = args.models.split(",")
        out = [(n, f) for n, f in out if n in wanted]
    return out


def one(name: str, family: str, max_params: float) -> dict:
    import torchvision.models as tvm

    row: dict = dict(model=name, family=family)
    try:
        kwargs = {"aux_loss": False} if family == "segmentation" else {}
        m = tvm.get_model(name, weights=None, **kwargs).eval()
    except Exception as exc:
        row.update(status="build failed", error=f"{type(exc).__name__}: {exc}")
        return row
    n_params = sum(p.numel() for p in m.parameters())
    row["params_m"] = n_params / 1e6
    if n_params > max_params * 1e6:
        row.update(status="skipped", error=f"{n_params / 1e6:.0f}M parameters > --max-params {max_params:.0f}M")
        return row
    x = input_for(name, family)
    t = time.perf_counter()
    try:
        r = compiler.compile(m, (x,), ratio=0.5)
    except compiler.PrunecError as exc:
        row.update(status="refused", error=f"{type(exc).__name__}: {str(exc)[:300]}", seconds=time.perf_counter() - t)
        return row
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="crashed", error=f"{type(exc).__name__}: {str(exc)[:200]} ({os.path.basename(tb.filename)}:{tb.lineno})",
                   seconds=time.perf_counter() - t)  # fmt: skip
        return row
    rep = r.report
    frozen = [g for g in rep.groups if g.frozen]
    reasons = sorted({reason.split(": ", 1)[-1] for g in frozen for reason in g.reasons})
    row.update(
        status="ok" if rep.verification["passed"] else "verification failed",
        traced=rep.trace_method,
        groups=len(rep.groups),
        frozen=len(frozen),
        reasons="; ".join(reasons)[:160],
        unknown=", ".join(sorted({o.target for o in rep.frozen_ops}))[:120],
        macs=rep.macs_ratio,
        params=rep.params_ratio,
        error_v=rep.verification["max_abs_error"],
        scale=rep.verification["reference_scale"],
        seconds=time.perf_counter() - t,
    )
    return row


def write(rows: list[dict], args) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    half = [r for r in ok if r["macs"] < 0.5]
    lines = [
        "# Coverage: torchvision models through prunec",
        "",
        f"`compiler.compile(model, (x,), ratio=0.5)` with defaults (l2, arithmetic_mean, granularity 8), random weights, "
        f"CPU, {time.strftime('%Y-%m-%d')}. Inputs: 1x3x224x224 (inception 299, video 1x3x8x112x112). "
        "Verification: the pruned model against the original with removed channels zeroed, float64; "
        "`error` is the max abs difference, `scale` the max |output|.",
        "",
        f"**{len(ok)} of {len(rows)} models compiled and verified; {len(half)} of them below half the MACs.**",
        "",
        "| model | status | traced | groups | frozen | MACs | params | error / scale | time (s) | frozen because / unknown ops / error |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("status") == "ok" or r.get("status") == "verification failed":
            why = r["reasons"] + (f" — unknown: {r['unknown']}" if r["unknown"] else "")
            lines.append(
                f"| {r['model']} | {r['status']} | {r['traced']} | {r['groups']} | {r['frozen']} | {r['macs']:.3f} | "
                f"{r['params']:.3f} | {r['error_v']:.1e} / {r['scale']:.1e} | {r['seconds']:.1f} | {why} |"
            )
        else:
            lines.append(f"| {r['model']} | {r['status']} | | | | | | | {r.get('seconds', 0):.1f} | {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true", help="segmentation and video models too")
    ap.add_argument("--models", help="comma-separated model names")
    ap.add_argument("--max-params", type=float, default=200.0, help="skip models with more parameters (millions)")
    ap.add_argument("--out", default=os.path.join(RESULTS, "coverage.md"))
    args = ap.parse_args()
    rows = []
    todo = models(args)
    for i, (name, family) in enumerate(todo):
        row = one(name, family, args.max_params)
        rows.append(row)
        extra = f"MACs {row['macs']:.3f} verify {row['error_v']:.1e}" if "macs" in row else row.get("error", "")
        print(f"[{i + 1}/{len(todo)}] {name}: {row['status']} {extra} ({row.get('seconds', 0):.1f}s)", flush=True)
        gc.collect()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(write(rows, args))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
