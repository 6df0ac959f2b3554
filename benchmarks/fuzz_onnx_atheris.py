"""Coverage-guided fuzzing (atheris / libFuzzer) of prunec's ONNX loading path.

First the hand-written hostile cases of ``tests/hostile_onnx_cases.py`` are run, then atheris
mutates serialized models (the seeds: those cases' files and valid models) and each mutant goes
through ``compiler.compile(path)`` from a folder that also holds a valid external-data file, with
``secret.bin`` outside it. A typed prunec error or a verified model is fine; any other exception,
or a read of the outside file, is a crash: it is counted, its input saved under
``benchmarks/results/atheris_crashes/`` and the fuzzing goes on. The run stops itself after
``--seconds`` (or ``--runs`` executions), writes ``results/fuzz_onnx_atheris.json`` and
re-renders ``results/reliability.md``.

    pip install -e '.[fuzz]'
    python benchmarks/fuzz_onnx_atheris.py --seconds 300

Without atheris the script says so and exits 0 (the test suite imports it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (ROOT, os.path.dirname(os.path.abspath(__file__))):
    if p not in sys.path:
        sys.path.insert(0, p)

try:
    import atheris
except ImportError:  # an optional extra: pip install -e '.[fuzz]'
    atheris = None

RESULTS = os.path.join(ROOT, "benchmarks", "results")
CRASHES = os.path.join(RESULTS, "atheris_crashes")

STATE: dict[str, Any] = {
    "cases": 0,
    "executions": 0,
    "refused": 0,
    "accepted": 0,
    "crashes": 0,
    "wrong": 0,
    "errors": {},
    "crash_examples": [],
}
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


def check_bytes(data: bytes, workdir: str) -> str:
    """Load ``data`` as ``workdir/model/model.onnx`` and compile it; returns the outcome kind."""
    global _OPENED
    import compiler
    from frontends.errors import PrunecError, VerificationError

    folder = os.path.join(workdir, "model")
    path = os.path.join(folder, "model.onnx")
    with open(path, "wb") as f:
        f.write(data)
    secret = os.path.realpath(os.path.join(workdir, "secret.bin"))
    _OPENED = []
    try:
        r = compiler.compile(path, None, ratio=0.5, granularity=1)
        v = r.report.verification
        kind = "accepted" if v and v.get("passed") is True else "wrong"
    except VerificationError as exc:  # typed: the model could not be verified (e.g. ONNX Runtime cannot run it)
        kind = "refused"
        _count_error(exc)
    except PrunecError as exc:
        kind = "refused"
        _count_error(exc)
    except Exception as exc:  # noqa: BLE001 - anything untyped is what we are looking for
        kind = "crash"
        _record_crash(data, exc)
    finally:
        opened, _OPENED = _OPENED, None
    if any(os.path.realpath(p) == secret for p in opened if os.path.exists(p)):
        kind = "crash"
        _record_crash(data, RuntimeError("read a file outside the model's folder"))
    return kind


def _count_error(exc: BaseException) -> None:
    key = type(exc).__name__
    STATE["errors"][key] = STATE["errors"].get(key, 0) + 1


def _record_crash(data: bytes, exc: BaseException) -> None:
    STATE["crashes"] += 1
    os.makedirs(CRASHES, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:12]
    with open(os.path.join(CRASHES, f"crash-{name}.onnx"), "wb") as f:
        f.write(data)
    with open(os.path.join(CRASHES, f"crash-{name}.txt"), "w") as f:
        f.write(traceback.format_exc())
    msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200] + f" (atheris_crashes/crash-{name}.onnx)"
    if len(STATE["crash_examples"]) < 20:
        STATE["crash_examples"].append(msg)
    print(f"  !! crash {msg}", flush=True)


def _workdir(base: str) -> str:
    """A fresh folder: model/ with a valid external-data file, secret.bin outside it."""
    from tests.hostile_onnx_cases import SECRET, base_model

    d = tempfile.mkdtemp(dir=base)
    os.makedirs(os.path.join(d, "model"))
    with open(os.path.join(d, "secret.bin"), "wb") as f:
        f.write(SECRET)
    w1 = next(t for t in base_model().graph.initializer if t.name == "w1")
    with open(os.path.join(d, "model", "w1.bin"), "wb") as f:
        f.write(w1.raw_data)
    return d


def run_cases(base: str) -> None:
    """The hand-written hostile cases, through the same check."""
    import compiler
    from tests.hostile_onnx_cases import ACCEPTED, CASES, make_case

    for name in CASES:
        d = tempfile.mkdtemp(dir=base)
        STATE["cases"] += 1
        global _OPENED
        try:
            path = make_case(name, d)
            _OPENED = []
            compiler.compile(path, None, ratio=0.5, granularity=1, verify=name not in ACCEPTED)
            STATE["accepted"] += 1
        except compiler.PrunecError as exc:
            STATE["refused"] += 1
            _count_error(exc)
        except Exception as exc:  # noqa: BLE001
            _record_crash(name.encode(), exc)
        finally:
            opened, _OPENED = _OPENED or [], None
        secret = os.path.realpath(os.path.join(d, "secret.bin"))
        if any(os.path.realpath(p) == secret for p in opened if os.path.exists(p)):
            _record_crash(name.encode(), RuntimeError(f"{name}: read a file outside the model's folder"))
        shutil.rmtree(d, ignore_errors=True)


def seeds() -> list[bytes]:
    from tests.hostile_onnx_cases import base_model, with_external

    out = [base_model().SerializeToString(), with_external("w1.bin").SerializeToString()]
    out.append(with_external("../secret.bin").SerializeToString())
    out.append(with_external("sub/../../secret.bin").SerializeToString())
    return out


def write_summary(seconds: float) -> str:
    STATE["seconds"] = round(seconds, 1)
    try:
        from importlib.metadata import version

        STATE["atheris_version"] = version("atheris")
    except Exception:  # noqa: BLE001 - only for the table
        STATE["atheris_version"] = "?"
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "fuzz_onnx_atheris.json"), "w") as f:
        json.dump(STATE, f, indent=1)
    from reliability import write_reliability

    return write_reliability()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300, help="time budget (default 300)")
    ap.add_argument("--runs", type=int, default=0, help="stop after this many executions (0: only the time budget)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not update benchmarks/results")
    args = ap.parse_args(argv)
    if atheris is None:
        print("atheris is not installed (pip install -e '.[fuzz]'); nothing fuzzed")
        return 0
    sys.addaudithook(_audit)
    with atheris.instrument_imports(include=["frontends", "compiler", "passes", "onnx"]):
        import compiler  # noqa: F401
        import frontends.onnx  # noqa: F401
    import torch

    torch.set_num_threads(1)
    base = tempfile.mkdtemp(prefix="prunec-atheris-")
    t0 = time.time()
    run_cases(base)
    print(f"hand-written cases: {STATE['cases']} ({STATE['refused']} refused, {STATE['accepted']} accepted, {STATE['crashes']} crashes)", flush=True)
    corpus = os.path.join(base, "corpus")
    os.makedirs(corpus)
    for i, s in enumerate(seeds()):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(s)
    work = _workdir(base)

    def finish() -> None:
        out = None if args.no_write else write_summary(time.time() - t0)
        print(f"{STATE['executions']} executions in {time.time() - t0:.0f} s: {STATE['refused']} refused, "
              f"{STATE['accepted']} accepted, {STATE['crashes']} crashes, errors {STATE['errors']}", flush=True)
        if out:
            print(f"wrote {out}", flush=True)
        shutil.rmtree(base, ignore_errors=True)
        sys.stdout.flush()
        os._exit(1 if STATE["crashes"] else 0)  # libFuzzer's loop never returns; leave cleanly, no stray files

    def one_input(data: bytes) -> None:
        if time.time() - t0 > args.seconds or (args.runs and STATE["executions"] >= args.runs):
            finish()
        STATE["executions"] += 1
        kind = check_bytes(data, work)
        if kind != "crash":  # crashes are counted where they are recorded
            STATE[kind] += 1
        if STATE["executions"] % 500 == 0:
            print(f"[{time.time() - t0:5.0f}s] {STATE['executions']} executions, {STATE['crashes']} crashes", flush=True)

    atheris.Setup([sys.argv[0], "-rss_limit_mb=8192", "-timeout=120", "-max_len=65536", f"-artifact_prefix={base}/", corpus], one_input)
    atheris.Fuzz()
    finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
