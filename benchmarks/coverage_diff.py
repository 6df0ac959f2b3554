"""Compare two coverage sweeps (``coverage*.jsonl``): status and MACs ratio per model.

    python benchmarks/coverage_diff.py OLD.jsonl NEW.jsonl [--tolerance 0.005]

Prints every model whose status changed, whose MACs ratio moved by more than the
tolerance, or that is in only one of the two runs, then a one-line summary; exits 1
when there is any such model (a refactor that should not change results).
"""

from __future__ import annotations

import argparse
import json
import sys


def rows(path: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                out[r["model"]] = r  # a later row of a model (a re-run) wins
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--tolerance", type=float, default=0.005, help="largest allowed change of a MACs ratio")
    args = ap.parse_args()
    old, new = rows(args.old), rows(args.new)
    bad = 0
    worst = 0.0
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            print(f"{name}: only in {'new' if a is None else 'old'}")
            bad += 1
            continue
        if a["status"] != b["status"]:
            print(f"{name}: status {a['status']} -> {b['status']}")
            bad += 1
            continue
        if a.get("macs") is not None and b.get("macs") is not None:
            d = abs(a["macs"] - b["macs"])
            worst = max(worst, d)
            if d > args.tolerance:
                print(f"{name}: MACs ratio {a['macs']:.4f} -> {b['macs']:.4f}")
                bad += 1
    ok = sum(1 for r in new.values() if r["status"] == "ok")
    print(f"{len(new)} models in the new run, {ok} ok; {bad} differ beyond {args.tolerance}; "
          f"largest MACs-ratio change {worst:.4f}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
