"""The ``prunec`` command line.

Exit codes: 0 success; 2 bad input or unsupported model (one line on stderr, no
traceback, no output written); 1 an internal error.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from frontends.errors import InvalidArgumentError, PrunecError, UnsupportedModelError

log = logging.getLogger(__name__)

__all__ = ["main"]


def _progress(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise InvalidArgumentError(f"--input-shape {text!r}: expected integers like 1,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise InvalidArgumentError(f"--input-shape {text!r}: expected positive integers like 1,3,224,224")
    return shape


def load_model_spec(spec: str) -> Any:
    """``torchvision:NAME`` (random weights) or ``package.module:function`` (a factory)."""
    if ":" not in spec:
        if os.path.exists(spec):
            raise UnsupportedModelError(f"{spec}: model files are not supported by this build yet; use torchvision:NAME or package.module:function")
        raise InvalidArgumentError(f"{spec!r}: expected torchvision:NAME or package.module:function")
    mod_name, _, attr = spec.partition(":")
    if mod_name == "torchvision":
        try:
            import torchvision
        except ImportError:
            raise UnsupportedModelError("torchvision is not installed (pip install torchvision)") from None
        if attr not in torchvision.models.list_models():
            raise InvalidArgumentError(f"{spec}: torchvision has no model {attr!r}")
        return torchvision.models.get_model(attr, weights=None)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InvalidArgumentError(f"{spec}: cannot import {mod_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise InvalidArgumentError(f"{spec}: {mod_name} has no callable {attr!r}")
    return fn()


def _default_shape(spec: str) -> tuple[int, ...]:
    return (1, 3, 299, 299) if spec.endswith(":inception_v3") else (1, 3, 224, 224)


def _write_atomic(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise InvalidArgumentError(f"{path}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".prunec-", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise InvalidArgumentError(f"{path}: cannot write ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    import compiler
    from compiler.demo import DemoNet, accuracy, train

    torch.manual_seed(0)
    print("prunec demo: a small CNN with a residual add, concat, depthwise conv, SE gate and flatten->linear")
    model = DemoNet()
    _progress("training 150 steps on synthetic 16x16 images (10 classes)")
    train(model, steps=args.steps)
    acc0 = accuracy(model)
    x = torch.randn(1, 1, 16, 16)
    result = compiler.compile(model, (x,), ratio=args.ratio, importance=args.importance, progress=_progress)
    acc1 = accuracy(result.model)
    print()
    print(result.report)
    print()
    print(f"accuracy     {acc0:.3f} -> {acc1:.3f} right after pruning (no fine-tuning)")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import torch

    import compiler

    model = load_model_spec(args.model)
    shape = _parse_shape(args.input_shape) if args.input_shape else _default_shape(args.model)
    x = torch.randn(*shape)
    _progress(f"analysing {args.model} on input {shape}")
    result = compiler.compile(model, (x,), ratio=args.ratio, importance=args.importance, verify=args.verify, progress=_progress)
    report = result.report
    print(report.summary())
    print()
    print(report.groups_table())
    print()
    print(report.layers_table())
    if args.json:
        _write_atomic(args.json, report.to_json())
        print(f"\nwrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunec", description="Structured pruning compiler: smaller dense models, verified.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="self-contained first run: build, train briefly, prune, verify, report")
    d.add_argument("--ratio", type=float, default=0.5)
    d.add_argument("--importance", default="l2")
    d.add_argument("--steps", type=int, default=150)
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("inspect", help="coupled groups, channels, params and MACs of a model")
    i.add_argument("model", help="torchvision:NAME or package.module:function")
    i.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224")
    i.add_argument("--ratio", type=float, default=0.5, help="plan this ratio to show what would be kept (default 0.5)")
    i.add_argument("--importance", default="l2")
    i.add_argument("--no-verify", dest="verify", action="store_false")
    i.add_argument("--json", help="write the report as JSON to this file")
    i.set_defaults(func=cmd_inspect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except PrunecError as exc:
        print(f"prunec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: say so, keep it short unless --debug
        if args.debug:
            raise
        print(f"prunec: internal error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
