"""Render ``benchmarks/results/reliability.md`` from the fuzzers' summaries.

``fuzz.py`` writes ``results/fuzz.json`` and ``fuzz_onnx_atheris.py`` writes
``results/fuzz_onnx_atheris.json``; each calls :func:`write_reliability` when it finishes, so
the table always shows the latest run of both. ``python benchmarks/reliability.py``
re-renders it.
"""

from __future__ import annotations

import json
import os
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _load(name: str) -> dict[str, Any] | None:
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def render() -> str:
    fz, at = _load("fuzz.json"), _load("fuzz_onnx_atheris.json")
    rows: list[tuple[str, str]] = []
    lines = ["# Reliability", ""]
    wrong = crashes = 0
    if fz:
        tried = {p: sum(s["outcomes"].values()) for p, s in fz["paths"].items()}
        rows.append(("architectures fuzzed (random models)", str(fz["models"])))
        for p, s in fz["paths"].items():
            o = s["outcomes"]
            rows.append((f"  compiled through the {p} path", f"{tried[p]} ({s['groups_pruned']} of {s['groups']} groups pruned)"))
            rows.append((f"  {p}: verified, independent re-check not applicable (ambiguous equal values)", str(o.get("unchecked", 0))))
            rows.append((f"  {p}: refused with a typed error", str(o.get("refused", 0))))
            rows.append((f"  {p}: failed verification caught by prunec (VerificationError)", str(o.get("caught", 0))))
            wrong += o.get("wrong", 0)
            crashes += o.get("crash", 0)
    if at:
        rows.append(("hostile ONNX inputs tried (hand-written cases + atheris executions)", f"{at['cases']} + {at['executions']}"))
        rows.append(("  refused with a typed error", str(at["refused"])))
        rows.append(("  accepted (valid models, pruned and verified)", str(at["accepted"])))
        crashes += at["crashes"]
        wrong += at.get("wrong", 0)
    rows.append(("**wrong models produced** (must be 0)", f"**{wrong}**"))
    rows.append(("**crashes with a traceback** (must be 0)", f"**{crashes}**"))
    lines += ["| what | count |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows] + [""]
    if fz:
        lines.append(
            f"Differential fuzzing (`benchmarks/fuzz.py --seconds {fz['seconds']:.0f} --seed {fz['seed']}`): random "
            "architectures from `tests/archgen.py` (residual adds, concat, split/chunk, grouped and depthwise convs, SE "
            "gates, flatten into linear, attention blocks, channel shuffle, GroupNorm, transposed convs, PReLU) at random "
            "ratios, criteria, equalizations, scopes and granularities, compiled from the `nn.Module` and from its ONNX "
            "export. Each result is verified by prunec and re-checked independently: the pruned model against a copy of "
            "the original with the removed weights zeroed (kept indices recovered by value matching), on fresh inputs of "
            "another batch size."
        )
        lines.append("")
        for f in fz.get("failures", []):
            lines.append(f"- {f['path']} {f['status']}: {f['message']} (`{f['file']}`)")
        if fz.get("failures"):
            lines.append("")
    if at:
        lines.append(
            f"Hostile ONNX input (`benchmarks/fuzz_onnx_atheris.py --seconds {at['seconds']:.0f}`): the hand-written "
            "cases of `tests/hostile_onnx_cases.py` (truncated, empty and non-protobuf files, missing or wrong opset "
            "imports, dangling inputs, cycles, huge declared dimensions, external data at absolute paths, `..`, "
            "`sub/../../x`, symlinked files and folders), then coverage-guided mutations (atheris "
            f"{at.get('atheris_version', '?')}) of valid models with and without external data, through "
            "`compiler.compile(path)`. Anything but a typed prunec error or a verified model counts as a crash."
        )
        lines.append("")
        for c in at.get("crash_examples", []):
            lines.append(f"- crash: {c}")
    return "\n".join(lines).rstrip() + "\n"


def write_reliability() -> str:
    path = os.path.join(RESULTS, "reliability.md")
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as f:
        f.write(render())
    return path


if __name__ == "__main__":
    print(open(write_reliability()).read())
