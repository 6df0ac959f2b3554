"""Differential fuzzing: random architectures through the torch path and their ONNX export.

Each model comes from ``tests/archgen.py`` (the generator the hypothesis tests use), with a
random ratio, criterion, equalization, scope, normalizer and granularity. It is compiled
through ``compiler.compile`` on the ``nn.Module`` and on its ONNX export (TorchScript
exporter, opset 17), verification on. Every result is then re-checked independently of
prunec's verifier: on fresh inputs of another batch size, the pruned model against a copy of
the original whose removed weights are zeroed (kept indices recovered by value matching), and
the torch result against prunec's masked reference too.

Outcomes per (model, path): ``ok``; ``unchecked`` (verified by prunec, but the independent check
cannot recover kept indices: equal values in several slices, e.g. constants the exporter folded);
``refused`` (a typed prunec error other than a failed
verification); ``caught`` (prunec's verification raised ``VerificationError``: a planning bug
caught before a wrong model got out); ``wrong`` (compile returned a model that does not match
the masked original); ``crash`` (any other exception). Every caught/wrong/crash case is saved
as a JSON reproducer under ``benchmarks/results/fuzz_failures/`` (only when there are any);
``--replay FILE`` re-runs one.

    python benchmarks/fuzz.py --seconds 600          # writes results/fuzz.json and reliability.md
    python benchmarks/fuzz.py --replay benchmarks/results/fuzz_failures/onnx-0003.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import compiler  # noqa: E402
from frontends.errors import PrunecError, VerificationError  # noqa: E402
from tests.archgen import ONNX_CRITERIA, ArchSpec, build, random_spec  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
FAILURES = os.path.join(RESULTS, "fuzz_failures")
TORCH_RTOL = 1e-9  # float64 pruned model vs float64 references
ONNX_RTOL = 1e-4  # float32 in ONNX Runtime


@dataclass
class Outcome:
    path: str  # "torch" or "onnx"
    status: str  # ok | unchecked | refused | caught | wrong | crash | export_failed
    groups: int = 0
    groups_pruned: int = 0
    macs_ratio: float | None = None
    message: str = ""
    trace: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _groups(report: Any) -> tuple[int, int]:
    gs = report.groups
    return len(gs), sum(1 for g in gs if g.channels_after < g.channels_before)


def _rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a64, b64 = np.asarray(torch.as_tensor(a).detach().double()), np.asarray(torch.as_tensor(b).detach().double())
    if a64.shape != b64.shape:
        return float("inf")
    return float(np.abs(a64 - b64).max() / max(np.abs(a64).max(), 1e-12))


def _checker_failure(exc: AssertionError, what: str) -> tuple[str, str]:
    """Value matching failed: ambiguous (equal values in several slices: the independent check does not
    apply, prunec's verification stands) or a real mismatch (a pruned slice not in the original, reordered)."""
    msg = str(exc).splitlines()[0] if str(exc) else "assertion"
    if "ambiguous" in msg or re.search(r"matches [2-9]\d* slices", msg):
        return "unchecked", f"independent check not applicable: {msg}"
    return "wrong", f"pruned {what} are not slices of the original: {msg}"


def _guard(path: str, fn: Any) -> Outcome:
    """Run one compile-and-check, sorting what goes wrong into the outcome kinds."""
    try:
        return fn()
    except VerificationError as exc:
        return Outcome(path, "caught", message=str(exc).splitlines()[0], trace=traceback.format_exc())
    except PrunecError as exc:
        return Outcome(path, "refused", message=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    except Exception as exc:  # anything else is a crash of prunec on a valid model
        return Outcome(path, "crash", message=f"{type(exc).__name__}: {exc}"[:300], trace=traceback.format_exc())


def check_torch(spec: ArchSpec) -> Outcome:
    """Compile the nn.Module and check the result independently."""
    from _checks import independent_reference, masked_reference

    m = build(spec)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(spec.seed))

    def go() -> Outcome:
        r = compiler.compile(m, (x,), **spec.policy)
        n, k = _groups(r.report)
        out = Outcome("torch", "ok", n, k, r.report.macs_after / max(r.report.macs_before, 1))
        v = r.report.verification
        if not v or v.get("passed") is not True:
            out.status, out.message = "wrong", f"verification did not pass and nothing was raised: {v}"
            return out
        x2 = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(spec.seed + 1), dtype=torch.float64)
        with torch.no_grad():
            got = copy.deepcopy(r.model).double()(x2)
            try:
                indep = independent_reference(m, r.model)(x2)
            except AssertionError as exc:  # kept slices not found in the original, or out of order
                out.status, out.message = _checker_failure(exc, "weights")
                return out
            masked = masked_reference(r, (x2,))[0]
        e1, e2 = _rel(indep, got), _rel(masked, got)
        out.extra = {"independent_rel_err": e1, "masked_rel_err": e2}
        if not (e1 <= TORCH_RTOL and e2 <= TORCH_RTOL):
            out.status, out.message = "wrong", f"pruned vs independent reference {e1:.3g}, vs masked reference {e2:.3g}"
        return out

    return _guard("torch", go)


def export_onnx(spec: ArchSpec, path: str) -> None:
    m = build(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, 8, 8),), path, dynamo=False, opset_version=17)


def check_onnx(spec: ArchSpec, folder: str) -> Outcome:
    """Compile the model's ONNX export and check the result independently (ONNX Runtime)."""
    import onnx
    from _onnx_helpers import independent_reference, run

    path = os.path.join(folder, "model.onnx")
    try:
        export_onnx(spec, path)
    except Exception as exc:  # the exporter's failure, not prunec's
        return Outcome("onnx", "export_failed", message=f"{type(exc).__name__}: {exc}"[:200])
    policy = dict(spec.policy)
    if policy.get("importance") not in ONNX_CRITERIA:  # data-driven criteria need the torch model
        policy["importance"] = ONNX_CRITERIA[spec.seed % len(ONNX_CRITERIA)]
    policy.pop("bias_propagation", None)
    policy.pop("compensate", None)
    before = open(path, "rb").read()

    def go() -> Outcome:
        r = compiler.compile(path, None, **policy)
        n, k = _groups(r.report)
        out = Outcome("onnx", "ok", n, k, r.report.macs_after / max(r.report.macs_before, 1))
        v = r.report.verification
        if open(path, "rb").read() != before:
            out.status, out.message = "wrong", "the input file was modified"
            return out
        if not v or v.get("passed") is not True:
            out.status, out.message = "wrong", f"verification did not pass and nothing was raised: {v}"
            return out
        onnx.checker.check_model(r.model, full_check=True)
        orig = onnx.load(path)
        rng = np.random.default_rng(spec.seed + 1)
        feeds = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in r.traced.inputs.items()}
        got = run(r.model, feeds, optimize=False)
        try:
            ref = independent_reference(orig, r.model, feeds)
        except AssertionError as exc:
            out.status, out.message = _checker_failure(exc, "constants")
            return out
        e = max(_rel(a, b) for a, b in zip(ref, got, strict=True)) if len(ref) == len(got) else float("inf")
        out.extra = {"independent_rel_err": e}
        if len(ref) != len(got) or not e <= ONNX_RTOL:
            out.status, out.message = "wrong", f"pruned vs independent reference {e:.3g}"
        return out

    return _guard("onnx", go)


def save_reproducer(spec: ArchSpec, out: Outcome, index: int) -> str:
    os.makedirs(FAILURES, exist_ok=True)
    name = os.path.join(FAILURES, f"{out.path}-{index:04d}.json")
    rec = {"spec": spec.to_dict(), "path": out.path, "status": out.status, "message": out.message, "traceback": out.trace}
    rec["replay"] = f"python benchmarks/fuzz.py --replay {os.path.relpath(name, ROOT)}"
    with open(name, "w") as f:
        json.dump(rec, f, indent=1)
    return name


def replay(file: str) -> int:
    rec = json.load(open(file))
    spec = ArchSpec.from_dict(rec["spec"])
    with tempfile.TemporaryDirectory() as d:
        out = check_torch(spec) if rec["path"] == "torch" else check_onnx(spec, d)
    print(f"{rec['path']}: {out.status} {out.message}")
    if out.trace:
        print(out.trace)
    return 0 if out.status in ("ok", "refused") else 1


def fuzz(seconds: float, seed: int, paths: tuple[str, ...], max_models: int | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {p: {} for p in paths}
    groups = {p: [0, 0] for p in paths}
    failures: list[dict[str, Any]] = []
    models = 0
    t0 = time.time()
    while time.time() - t0 < seconds and (max_models is None or models < max_models):
        spec = random_spec(rng, max_blocks=8)
        models += 1
        with tempfile.TemporaryDirectory(prefix="prunec-fuzz-") as d:
            for p in paths:
                out = check_torch(spec) if p == "torch" else check_onnx(spec, d)
                counts[p][out.status] = counts[p].get(out.status, 0) + 1
                groups[p][0] += out.groups
                groups[p][1] += out.groups_pruned
                if out.status in ("caught", "wrong", "crash"):
                    file = save_reproducer(spec, out, len(failures))
                    failures.append({"path": p, "status": out.status, "message": out.message, "file": os.path.relpath(file, ROOT)})
                    print(f"  !! {p} {out.status}: {out.message} -> {os.path.relpath(file, ROOT)}", flush=True)
        if models % 10 == 0:
            el = time.time() - t0
            print(f"[{el:6.0f}s] models {models}  " + "  ".join(f"{p}: {counts[p]}" for p in paths), flush=True)
    return {
        "seconds": round(time.time() - t0, 1),
        "seed": seed,
        "models": models,
        "paths": {p: {"outcomes": counts[p], "groups": groups[p][0], "groups_pruned": groups[p][1]} for p in paths},
        "failures": failures,
    }


def table(summary: dict[str, Any]) -> str:
    kinds = ["ok", "unchecked", "refused", "caught", "wrong", "crash", "export_failed"]
    lines = ["| path | models | groups | groups pruned | " + " | ".join(kinds) + " |", "|---" * (4 + len(kinds)) + "|"]
    for p, s in summary["paths"].items():
        n = sum(s["outcomes"].values())
        lines.append(f"| {p} | {n} | {s['groups']} | {s['groups_pruned']} | " + " | ".join(str(s["outcomes"].get(k, 0)) for k in kinds) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=600, help="time budget (default 600)")
    ap.add_argument("--max-models", type=int, default=None, help="stop after this many models")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--paths", default="torch,onnx", help="torch,onnx (default both)")
    ap.add_argument("--replay", help="re-run one saved reproducer")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/results")
    args = ap.parse_args(argv)
    if args.replay:
        return replay(args.replay)
    torch.set_num_threads(1)
    paths = tuple(p for p in args.paths.split(",") if p)
    if not args.no_write and os.path.isdir(FAILURES):  # reproducers describe the latest run only
        for name in os.listdir(FAILURES):
            if name.endswith(".json"):
                os.unlink(os.path.join(FAILURES, name))
    summary = fuzz(args.seconds, args.seed, paths, args.max_models)
    print()
    print(f"{summary['models']} models in {summary['seconds']} s (seed {args.seed})")
    print(table(summary))
    for f in summary["failures"]:
        print(f"- {f['path']} {f['status']}: {f['message']} ({f['file']})")
    if not args.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "fuzz.json"), "w") as f:
            json.dump(summary, f, indent=1)
        from reliability import write_reliability

        print(f"wrote {write_reliability()}")
    bad = sum(s["outcomes"].get(k, 0) for s in summary["paths"].values() for k in ("wrong", "crash"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
