"""The ``prunec`` command line.

Exit codes: 0 success; 2 bad input or unsupported model (:class:`PrunecError`: one line on
stderr, no traceback, no output written); 1 an internal error (:class:`InternalError` or any
other exception: one line starting ``prunec: internal error:``; with ``--debug`` or
``PRUNEC_DEBUG=1`` in the environment, the traceback first).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any

from compiler.atomic import check_writable, write_atomic
from frontends.errors import InternalError, InvalidArgumentError, PrunecError, UnsupportedModelError

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
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path  # the current folder is importable, as with `python -m`
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise InvalidArgumentError(f"{spec}: cannot import {mod_name!r} ({exc})") from None
    except Exception as exc:  # the user's module fails while it is imported
        raise UnsupportedModelError(f"{spec}: importing {mod_name!r} failed: {_describe(exc)}") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise InvalidArgumentError(f"{spec}: {mod_name} has no callable {attr!r}")
    try:
        return fn()
    except Exception as exc:  # the user's factory fails: their code, not prunec's
        raise UnsupportedModelError(f"{spec}: the model factory failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message``: one line, whatever the exception."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _default_shape(spec: str) -> tuple[int, ...]:
    return (1, 3, 299, 299) if spec.endswith(":inception_v3") else (1, 3, 224, 224)


def _write_atomic(path: str, data: str | bytes) -> None:
    """One output file, atomically; an OSError while writing stays one (exit code 1), nothing is left behind."""
    write_atomic({path: data}, wrap_oserror=False)


def cmd_demo(args: argparse.Namespace) -> int:
    """Train a small CNN, prune it with each criterion at one ratio, verify, compare accuracy on held-out images."""
    from compiler.options import Options

    criteria = [c.strip() for c in args.importance.split(",") if c.strip()]
    if not criteria:
        raise InvalidArgumentError("--importance: name at least one criterion, e.g. l2,obs")
    if args.steps < 1:
        raise InvalidArgumentError(f"--steps must be at least 1, got {args.steps}")
    for c in criteria:  # bad input fails before the training, not after it
        Options(ratio=args.ratio, importance=c).validate()
    from compiler.demo import run_demo  # imports torch: after the checks, so bad input fails at once

    run_demo(steps=args.steps, ratio=args.ratio, criteria=criteria, progress=_progress)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Groups, saliencies, channels, params and MACs; ``--json``/``--html`` files written atomically, all or none."""
    from compiler.html_report import compare_reports, render_html

    outputs = [p for p in (args.json, args.html) if p]
    if len({os.path.abspath(p) for p in outputs}) < len(outputs):
        raise InvalidArgumentError(f"{outputs[0]}: --json and --html name the same file")
    for path in outputs:  # fail before any work
        check_writable(path)
        for spec in (args.model, args.pruned):
            if spec and os.path.exists(path) and os.path.exists(spec) and os.path.samefile(spec, path):
                raise InvalidArgumentError(f"{path}: is an input model; the input is never overwritten")
    report = _inspect_report(args.model, args, args.ratio, args.importance, args.verify)
    compare = None
    if args.pruned:
        _progress(f"reading the pruned model {args.pruned} (nothing is pruned in it)")
        other = _inspect_report(args.pruned, args, 0.0, "l2", False)
        compare = compare_reports(report, other, args.pruned)
    _print_report(report)
    if compare is not None:
        print()
        print(_compare_table(report, compare))
    files: dict[str, str] = {}
    if args.json:
        data = report.to_dict()
        if compare is not None:
            data["compare"] = compare
        files[args.json] = json.dumps(data, indent=2, default=str)
    if args.html:
        files[args.html] = render_html(report, compare)
    write_atomic(files)
    for path in files:
        print(f"wrote {path}")
    return 0


def _inspect_report(spec: str, args: argparse.Namespace, ratio: float, importance: str, verify: bool) -> Any:
    """Compile (plan, rewrite, optionally verify) the model a spec names and return its report."""
    import torch

    import compiler
    from compiler import model_inputs

    if args.inputs and args.input_shape:
        raise InvalidArgumentError("give --inputs or --input-shape, not both")
    target: Any = spec
    if _is_onnx_file(spec):
        if args.inputs:
            from frontends.onnx import load_proto, real_inputs

            names = [vi.name for vi in real_inputs(load_proto(spec)[0])]
            inputs: Any = model_inputs.onnx_inputs_from_file(args.inputs, names)
        else:
            inputs = _onnx_inputs(spec, [args.input_shape] if args.input_shape else None)
        _progress(f"analysing {spec}")
    else:
        target, given = model_inputs.split_factory_result(load_model_spec(spec), spec)
        if args.inputs:
            inputs = model_inputs.torch_inputs_from_file(args.inputs, target)
        elif given is not None and not args.input_shape:
            inputs = given
        else:
            inputs = (torch.randn(*(_parse_shape(args.input_shape) if args.input_shape else _default_shape(spec))),)
        shapes = ", ".join(f"{getattr(x, 'dtype', type(x).__name__)}{list(getattr(x, 'shape', []))}" for x in inputs)
        _progress(f"analysing {spec} on {shapes}")
    result = compiler.compile(target, inputs, ratio=ratio, importance=importance, verify=verify, progress=_progress)
    return result.report


def _compare_table(report: Any, compare: dict[str, Any]) -> str:
    from compiler.report import text_table

    rows = [("layer", "out before", "out planned", "out in pruned model", "params in pruned model", "")]
    differ = 0
    for lr, other in zip(report.layers, compare["layers"], strict=True):
        before, planned = str(lr.out_channels[0]), str(lr.out_channels[1])
        if other is None:
            rows.append((lr.name, before, planned, "-", "-", "not matched"))
            continue
        same = other["out_channels"] == lr.out_channels[1] and other["in_channels"] == lr.in_channels[1]
        differ += not same
        rows.append((lr.name, before, planned, str(other["out_channels"]), str(other["params"]), "" if same else "differs from plan"))
    head = (
        f"compared with {compare['model']}: {compare['matched']}/{len(report.layers)} layers matched by {compare['matched_by']}, "
        f"{differ} differ from this plan"
    )
    return head + "\n" + text_table(rows)


def _is_onnx_file(spec: str) -> bool:
    return spec.lower().endswith(".onnx") or (":" not in spec and os.path.exists(spec))


def _number(flag: str, text: str | None, kind: type = float) -> Any:
    if text is None:
        return None
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise InvalidArgumentError(f"{flag} {text!r}: expected {what}") from None


def _onnx_inputs(path: str, shapes: Sequence[str] | None) -> dict[str, Any] | None:
    """Random example inputs of the ``--input-shape`` shapes (one per graph input, in order)."""
    if not shapes:
        return None
    import numpy as np

    from frontends.onnx import check_input_size, load_proto, numpy_dtype, real_inputs

    proto, _ = load_proto(path)
    ins = real_inputs(proto)
    if len(shapes) != len(ins):
        raise InvalidArgumentError(f"{path}: the model has {len(ins)} inputs {[i.name for i in ins]}, got {len(shapes)} --input-shape")
    rng = np.random.default_rng(0)
    out = {}
    for vi, text in zip(ins, shapes, strict=True):
        shape, dt = _parse_shape(text), numpy_dtype(vi.type.tensor_type.elem_type)
        check_input_size(vi.name, shape, path)
        out[vi.name] = rng.standard_normal(shape).astype(dt) if dt.kind == "f" else np.zeros(shape, dtype=dt)
    return out


def _check_output(path: str, source: str) -> None:
    """Fail before any work when ``path`` cannot be written or is the input itself."""
    if os.path.isdir(path):
        raise InvalidArgumentError(f"{path}: is a directory; give an output file name")
    if os.path.exists(source) and os.path.exists(path) and os.path.samefile(source, path):
        raise InvalidArgumentError(f"{path}: is the input model; the input is never overwritten, choose another -o")
    check_writable(path)


def _file_bytes(path: str) -> int:
    """Size of an ONNX file with its external data files."""
    import onnx

    from frontends.onnx import all_tensors

    total = os.path.getsize(path)
    folder = os.path.dirname(os.path.abspath(path))
    seen = set()
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception:
        return total
    for t in all_tensors(proto):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            full = os.path.join(folder, loc)
            if loc and full not in seen and os.path.isfile(full):
                seen.add(full)
                total += os.path.getsize(full)
    return total


def _print_report(report: Any) -> None:
    print(report.summary())
    print()
    print(report.groups_table())
    print()
    print(report.layers_table())


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune an ONNX file into a smaller ONNX file (written atomically; the input is never touched)."""
    import compiler

    src, out = args.model, args.output
    if os.path.isdir(src) and os.path.isfile(os.path.join(src, "config.json")):
        return _prune_checkpoint(args)  # a transformers checkpoint folder, disk to disk (compiler.pretrained)
    if not out:
        raise InvalidArgumentError("prune needs an output file: -o OUT.onnx")
    if not os.path.exists(src):
        raise UnsupportedModelError(f"{src}: no such file")
    ratio = _number("--ratio", args.ratio)
    threshold = _number("--threshold", args.threshold)
    target_macs = _number("--target-macs", args.target_macs)
    granularity = _number("--granularity", args.granularity, int)
    channel_block = args.channel_block if args.channel_block == "auto" else _number("--channel-block", args.channel_block, int)
    if sum(x is not None for x in (ratio, threshold, target_macs)) > 1:
        raise InvalidArgumentError("give only one of --ratio, --threshold and --target-macs")
    depth = None if args.depth is None else args.depth if args.depth == "auto" else _number("--depth", args.depth)
    if depth == "auto" and target_macs is None:
        raise InvalidArgumentError("--depth auto splits a --target-macs budget between depth and width: give --target-macs")
    if ratio is None and threshold is None and target_macs is None and depth is None:
        ratio = 0.5
    _check_onnx_importance(args.importance)
    allocation, compensate = _allocation_flags(args, threshold, target_macs, depth)
    _check_output(out, src)
    inputs = _onnx_inputs(src, args.input_shape)
    calibration = None
    if args.calibration:
        calibration, example = _calibration_batches(args.calibration, src, inputs)
        inputs = example if inputs is None else inputs  # no --input-shape: verified and measured on calibration samples
    if calibration is None and _runs_model(args.importance):
        _progress(f"note: --importance {args.importance} without --calibration reads the example inputs only")
    _progress(f"pruning {src}")
    result = compiler.compile(
        src,
        inputs,
        ratio=ratio,
        threshold=threshold,
        target_macs=target_macs,
        importance=args.importance,
        equalization=args.equalization,
        granularity=granularity,
        channel_block=channel_block,
        scope=args.scope,
        calibration=calibration,
        verify=args.verify,
        progress=_progress,
        depth=depth,
        depth_importance=args.depth_importance,
        allocation=allocation,
        compensate=compensate,
    )
    external, data = bool(args.external_data), b""
    if not external:
        try:
            data = result.model.SerializeToString()
        except Exception:  # protobuf's 2 GB limit (EncodeError; ValueError in older protobuf): a data file prunec names
            external = True
    _progress(f"writing {out}")
    before = _file_bytes(src)
    if external:
        from compiler.onnx_io import save_with_external_data

        after = save_with_external_data(result.model, out)
    else:
        _write_atomic(out, data)
        after = len(data)
    report = result.report
    print(report.summary())
    print(f"file size    {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB ({after / max(before, 1):.3f}x)")
    if args.json:
        _write_atomic(args.json, report.to_json())
    print(f"wrote {out}")
    return 0


ALLOCATIONS = ("uniform", "sensitivity", "latency")  # the API's allocation=
COMPENSATE = {"auto": None, "on": True, "off": False, "sequential": "sequential"}  # --compensate -> the API's compensate=


def _allocation_flags(args: argparse.Namespace, threshold: Any, target_macs: Any, depth: Any) -> tuple[str, bool | str | None]:
    """``--allocation`` and ``--compensate`` as the API's ``allocation=`` and ``compensate=``; a combination the
    API would refuse is refused here in the flags' own words, before any file is read or written."""
    allocation, comp = args.allocation, args.compensate
    if allocation not in ALLOCATIONS:
        raise InvalidArgumentError(f"--allocation {allocation!r}: choose from {', '.join(ALLOCATIONS)}")
    if comp not in COMPENSATE:
        raise InvalidArgumentError(f"--compensate {comp!r}: choose from {', '.join(COMPENSATE)}")
    if comp == "sequential":
        raise InvalidArgumentError(
            "--compensate sequential needs the torch adapter (it re-runs the pruned model layer by layer); "
            "ONNX models take --compensate on"
        )
    if comp == "on" and not args.calibration:
        raise InvalidArgumentError("--compensate on re-fits the layers that read pruned channels on calibration data: give --calibration FILE.npz")
    if allocation == "sensitivity":
        if not args.calibration:
            raise InvalidArgumentError("--allocation sensitivity measures each group's damage on calibration data: give --calibration FILE.npz")
        if threshold is not None:
            raise InvalidArgumentError("--allocation sensitivity spreads a --ratio or --target-macs budget over the groups, not --threshold")
        if args.scope != "local":
            raise InvalidArgumentError("--allocation sensitivity chooses each group's ratio itself: leave --scope local")
        if depth is not None:
            raise InvalidArgumentError("--allocation sensitivity does not combine with --depth")
    if allocation == "latency" and target_macs is None:
        raise InvalidArgumentError("--allocation latency spends a --target-macs budget where it saves the most measured time: give --target-macs")
    return allocation, COMPENSATE[comp]


def _prune_checkpoint(args: argparse.Namespace) -> int:
    """``prunec prune IN_DIR -o OUT_DIR``: a transformers safetensors checkpoint folder, streamed shard by shard."""
    from compiler.pretrained import compile_pretrained

    if not args.output:
        raise InvalidArgumentError("prune needs an output folder for a checkpoint folder: -o OUT_DIR")
    given = [f for f, v in (("--threshold", args.threshold), ("--calibration", args.calibration), ("--depth", args.depth),
                            ("--input-shape", args.input_shape), ("--external-data", args.external_data),
                            ("--allocation", args.allocation != "uniform"), ("--compensate", args.compensate != "auto")) if v]  # fmt: skip
    if given:
        raise InvalidArgumentError(f"{given[0]} does not apply to a checkpoint folder (it is pruned by --ratio or --target-macs, l2/l1)")
    ratio, target_macs = _number("--ratio", args.ratio), _number("--target-macs", args.target_macs)
    if ratio is not None and target_macs is not None:
        raise InvalidArgumentError("give only one of --ratio and --target-macs")
    report = compile_pretrained(
        args.model, args.output, ratio=ratio, target_macs=target_macs,
        importance="l2" if args.importance == "auto" else args.importance, equalization=args.equalization,
        granularity=_number("--granularity", args.granularity, int), scope=args.scope, verify=args.verify, progress=_progress,
    )  # fmt: skip
    print(report.summary())
    s = report.settings
    print(f"checkpoint   {s['bytes_before'] / 1e9:.2f} GB -> {s['bytes_after'] / 1e9:.2f} GB; config: {s['config_changes']}")
    if args.json:
        _write_atomic(args.json, report.to_json())
    print(f"wrote {args.output}")
    return 0


def _bench_load(spec: str, args: argparse.Namespace) -> Any:
    """(model, example inputs) for a bench spec: an .onnx file or a PyTorch factory."""
    if _is_onnx_file(spec):
        from frontends.onnx import load_proto

        return load_proto(spec)[0], None
    import torch

    from compiler import model_inputs

    model, given = model_inputs.split_factory_result(load_model_spec(spec), spec)  # a model, or (model, inputs)
    if not callable(getattr(model, "eval", None)):
        raise InvalidArgumentError(f"{spec}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    model = model.eval()
    if given is not None and not args.input_shape:
        return model, given
    shape = _parse_shape(args.input_shape[0]) if args.input_shape else _default_shape(spec)
    return model, (torch.randn(*shape),)


def _bench_prune(args: argparse.Namespace, base: Any, example: Any) -> Any:
    """Prune the bench's model here (``--ratio`` or ``--target-macs``); returns the pruned model."""
    import compiler

    ratio = _number("--ratio", args.ratio)
    target = _number("--target-macs", args.target_macs)
    if ratio is not None and target is not None:
        raise InvalidArgumentError("give only one of --ratio and --target-macs")
    if ratio is None and target is None:
        ratio = 0.5
    _progress(f"pruning {args.model} ({'ratio ' + str(ratio) if ratio is not None else 'target MACs ' + str(target)})")
    inputs = example if example is not None else _onnx_inputs(args.model, args.input_shape)
    compiled = compiler.compile(base if example is not None else args.model, inputs, ratio=ratio, target_macs=target,
                                importance=args.importance, granularity=_number("--granularity", args.granularity, int),
                                progress=_progress)
    return compiled.model


def cmd_bench(args: argparse.Namespace) -> int:
    """Latency and throughput of a model and its pruned version, side by side on one runtime."""
    from compiler.backend import export_onnx
    from compiler.bench import bench as run_bench
    from compiler.bench import (
        check_finite,
        default_batches,
        format_table,
        onnx_bench_model,
        parse_batches,
        torch_bench_model,
    )

    batches = parse_batches(args.batch) if args.batch is not None else None
    runs = _number("--runs", args.runs, int)
    if runs < 3:
        raise InvalidArgumentError("--runs must be at least 3")
    budget = _number("--budget", args.budget)
    if not budget >= 0:
        raise InvalidArgumentError(f"--budget must be a number of seconds >= 0, got {args.budget}")
    if args.json:
        _check_output(args.json, args.model)
    shapes = [_parse_shape(s) for s in args.input_shape] if args.input_shape else None
    base, example = _bench_load(args.model, args)
    if args.pruned:
        pruned, pex = _bench_load(args.pruned, args)
        example_pruned = pex if pex is not None else example
    else:
        pruned, example_pruned = _bench_prune(args, base, example), example
    models = []
    for label, m, ex in (("original", base, example), ("pruned", pruned, example_pruned)):
        if ex is None:  # ONNX
            models.append(onnx_bench_model(label, m, shapes))
        elif args.runtime == "onnxruntime":
            _progress(f"exporting the {label} model to ONNX (dynamic batch)")
            models.append(onnx_bench_model(label, export_onnx(m, ex), [tuple(x.shape) for x in ex]))
        else:
            models.append(torch_bench_model(label, m, ex))
    threads = _number("--threads", args.threads, int) if args.threads else None
    runtime = "onnxruntime" if args.runtime == "onnxruntime" or example is None else "torch"
    if batches is None:
        batches = default_batches(runtime, args.provider)
    timings = run_bench(models, batches, runtime=runtime, provider=args.provider, fp16=args.fp16, warmup=args.warmup,
                        runs=runs, budget_s=budget, memory=args.memory, threads=threads, progress=_progress)
    check_finite(timings)
    print(format_table(timings))
    if args.json:
        _write_atomic(args.json, json.dumps(timings, indent=2))
        print(f"wrote {args.json}")
    return 0


def _add_bench_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="latency and throughput of a model and its pruned version on the runtime")
    b.add_argument("model", help="an .onnx file, torchvision:NAME, or package.module:function")
    b.add_argument("pruned", nargs="?", help="its pruned version (same kinds of spec); default: prune MODEL with prunec now")
    b.add_argument("--provider", default="auto", choices=["auto", "cpu", "cuda", "tensorrt"],
                   help="ONNX Runtime execution provider (auto: TensorRT, else CUDA, else CPU)")
    b.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "torch"],
                   help="PyTorch models: export to ONNX Runtime (default) or run in PyTorch (torch.compile on CUDA)")
    b.add_argument("--batch", help="comma-separated batch sizes (default 1,64 on a GPU, 1,8 on the CPU)")
    b.add_argument("--runs", default="5",
                   help="timed rounds per batch size at least (default 5; --runs 30 --budget 120 for a longer, tighter measurement)")
    b.add_argument("--budget", default="12",
                   help="seconds of timing shared by the batch sizes: more rounds while it lasts (default 12)")
    b.add_argument("--warmup", type=int, default=2, help="warm-up runs per model and batch size (default 2)")
    b.add_argument("--threads", help="ONNX Runtime intra-op threads (default: its own choice)")
    b.add_argument("--fp16", action="store_true", help="run in half precision (GPU)")
    b.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    b.add_argument("--ratio", help="when pruning here: fraction of channels to remove (default 0.5)")
    b.add_argument("--target-macs", help="when pruning here: MACs of the pruned model as a fraction of the original")
    b.add_argument("--importance", default="l2", help="when pruning here: saliency criterion (default l2)")
    b.add_argument("--granularity", default="8", help="when pruning here: kept channel counts are multiples of this")
    b.add_argument("--input-shape", action="append", help="input shape at batch 1, e.g. 1,3,224,224 (once per input)")
    b.add_argument("--json", help="also write the results as JSON to this file")
    b.set_defaults(func=cmd_bench)


def _onnx_criteria() -> list[str]:
    """The criteria the ONNX adapter can serve (the registry's answer, not a list kept here)."""
    from frontends.onnx.adapter import OnnxAdapter
    from passes.importance import servable

    return servable(OnnxAdapter.capabilities)


def _check_onnx_importance(name: str) -> None:
    """``--importance`` must name a criterion the ONNX adapter serves; the error lists exactly those."""
    from frontends.onnx.adapter import OnnxAdapter
    from passes.importance import CRITERIA, require

    if name == "auto":  # chosen from the data as the API does (compiler.defaults): l2 without --calibration
        return
    if name not in CRITERIA:
        raise InvalidArgumentError(
            f"--importance {name!r} is not a criterion; criteria for ONNX models: auto, {', '.join(_onnx_criteria())}"
        )
    require(name, OnnxAdapter.capabilities, OnnxAdapter.name)


def _runs_model(name: str) -> bool:
    from passes.importance import CRITERIA

    return name in CRITERIA and CRITERIA[name].runs_model


CALIBRATION_BATCH = 64  # samples per calibration batch where the model's batch size is dynamic
EXAMPLE_SAMPLES = 8  # example inputs taken from --calibration where --input-shape is not given


def _declared_dims(vi: Any) -> list[int | None] | None:
    """An input's declared dims (None for a dynamic one), or None where it declares no shape."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


def _calibration_batches(path: str, model: str, inputs: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``--calibration FILE.npz``: one array per model input, named by it, samples on axis 0 (the same number in
    each), every other axis as the input declares it (or as ``--input-shape`` gives it); in batches of
    :data:`CALIBRATION_BATCH` samples (the model's own batch size where it is fixed). Also the example inputs
    made of its first samples (:data:`EXAMPLE_SAMPLES`; one batch where the batch size is fixed)."""


    from compiler.model_inputs import load_npz
    from frontends.onnx import load_proto, numpy_dtype, real_inputs

    where = f"--calibration {path}"
    data = load_npz(path, where, "write it with numpy.savez(FILE, input_name=array)")
    ins = real_inputs(load_proto(model)[0])
    names = [vi.name for vi in ins]
    unknown = [k for k in data if k not in names]
    missing = [n for n in names if n not in data]
    if unknown or missing:
        what = f"array {unknown[0]!r} names no input of the model" if unknown else f"no array named {missing[0]!r}"
        raise InvalidArgumentError(f"{where}: {what}; name one array per input: {', '.join(names)}")
    counts = {n: int(data[n].shape[0]) if data[n].ndim else 0 for n in names}
    for vi in ins:
        arr = data[vi.name]
        want = list(inputs[vi.name].shape) if inputs is not None else _declared_dims(vi)
        if want is None:  # no declared shape: the model's own example input decides
            continue
        fixed = [d if k > 0 and d is not None and d > 0 else None for k, d in enumerate(want)]
        if arr.ndim != len(want) or any(f is not None and f != n for f, n in zip(fixed, arr.shape, strict=True)):
            shown = ["N", *("?" if f is None else str(f) for f in fixed[1:])] if want else []
            raise InvalidArgumentError(
                f"{where}: array {vi.name!r} has shape {list(arr.shape)}; the input takes [{', '.join(shown)}] "
                "(samples on axis 0)"
            )
        dt = numpy_dtype(vi.type.tensor_type.elem_type)
        if arr.dtype.kind not in "biuf" or (arr.dtype.kind == "f") != (dt.kind == "f"):
            raise InvalidArgumentError(f"{where}: array {vi.name!r} has dtype {arr.dtype}; the input takes {dt}")
    if len(set(counts.values())) != 1 or min(counts.values()) == 0:
        raise InvalidArgumentError(f"{where}: the arrays need the same number of samples (> 0) on axis 0, got {counts}")
    n = counts[names[0]]
    first = _declared_dims(ins[0])
    step = first[0] if first and first[0] is not None and first[0] > 0 else CALIBRATION_BATCH
    if step != CALIBRATION_BATCH and n % step:
        raise InvalidArgumentError(f"{where}: {n} samples; the model's batch size is fixed at {step}: give a multiple of {step}")
    batches = [{k: data[k][s : s + step] for k in names} for s in range(0, n, step)]
    example = batches[0] if step != CALIBRATION_BATCH else {k: v[:EXAMPLE_SAMPLES] for k, v in batches[0].items()}
    return batches, example


def _add_prune_parser(sub: Any) -> None:
    r = sub.add_parser("prune", help="prune an ONNX model (or a transformers checkpoint folder) into a smaller, verified one")
    r.add_argument("model", help="input .onnx file, or a transformers safetensors checkpoint folder (never modified)")
    r.add_argument("-o", "--output", help="output .onnx file (written atomically), or a new folder for a checkpoint folder")
    r.add_argument("--ratio", help="fraction of each group's prunable channels to remove (default 0.5)")
    r.add_argument("--threshold", help="remove channels whose normalized saliency is below this instead")
    r.add_argument("--target-macs", help="prune until the MACs are this fraction of the original's (<= 1) or this count")
    r.add_argument("--importance", default="auto",
                   help=f"saliency criterion for ONNX models: {', '.join(_onnx_criteria())}; default auto: l2 without "
                        "--calibration, with it the best data criterion for its size (the report says which)")
    r.add_argument(
        "--calibration", metavar="FILE.npz",
        help="calibration data for data-driven criteria: numpy.savez(FILE, INPUT_NAME=array, ...), one array per "
        f"model input, samples on axis 0 (batched by {CALIBRATION_BATCH})",
    )  # fmt: skip
    r.add_argument(
        "--depth", metavar="FRACTION",
        help="first remove this fraction of the removable residual blocks (whole ResNet blocks, transformer layers), "
        "verified; 'auto' with --target-macs chooses the depth/width split",
    )  # fmt: skip
    r.add_argument("--depth-importance", default="auto", help="block criterion: cosine, loss, norm (default auto)")
    r.add_argument(
        "--allocation", default="uniform", metavar="{" + ",".join(ALLOCATIONS) + "}",
        help="how the budget is spread over the groups: uniform (the same ratio in each; default); sensitivity (by the "
        "damage each group does alone on the --calibration data; with --ratio or --target-macs, --scope local); "
        "latency (with --target-macs: where it saves the most measured time)",
    )  # fmt: skip
    r.add_argument(
        "--compensate", default="auto", metavar="{" + ",".join(COMPENSATE) + "}",
        help="re-fit the layers that read pruned channels on the --calibration data (guarded on a held-out split): "
        "on, off, or auto (default: as the criterion chooses, on for obs); sequential is for torch models only "
        "(refused here)",
    )  # fmt: skip
    r.add_argument("--scope", default="local", help="local: the ratio in every group; global: one ranking across groups")
    r.add_argument("--equalization", default="arithmetic_mean", help="how coupled layers' scores combine")
    r.add_argument("--granularity", default="8", help="kept channel counts are multiples of this (default 8)")
    r.add_argument("--channel-block", default="auto",
                   help="kept channel counts are also multiples of the runtime's channel block (auto: measured once on "
                   "ONNX Runtime and cached; 16 on AVX-512 CPUs, where 24 channels cost what 32 cost; 1: off)")
    r.add_argument("--input-shape", action="append", help="example input shape, e.g. 1,3,224,224, for dynamic inputs (once per input)")
    r.add_argument("--no-verify", dest="verify", action="store_false", help="skip the check in ONNX Runtime")
    r.add_argument("--json", help="also write the report as JSON to this file")
    r.add_argument("--external-data", action="store_true", help="write the weights to OUT.<hash>.data beside OUT (automatic over 2 GB)")
    r.set_defaults(func=cmd_prune)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prunec", description="Structured pruning compiler: smaller dense models, verified.")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs (also: PRUNEC_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="self-contained first run: build, train briefly, prune, verify, report")
    d.add_argument("--ratio", type=float, default=0.75, help="fraction of each group's prunable channels to remove (default 0.75)")
    d.add_argument("--importance", default="l2,obs,random",
                   help="comma-separated criteria to compare at that ratio (default l2,obs,random)")
    d.add_argument("--steps", type=int, default=150, help="training steps (default 150)")
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("inspect", help="coupled groups, saliencies, channels, params and MACs of a model; a picture of its graph")
    i.add_argument("model", help="torchvision:NAME, package.module:function, or an .onnx file")
    i.add_argument("pruned", nargs="?", help="optional: a pruned version of the model (same kinds of spec) to compare channels with")
    i.add_argument("--input-shape", help="example input shape, e.g. 1,3,224,224")
    i.add_argument(
        "--inputs", metavar="FILE.npz",
        help="example inputs from numpy.savez: arrays in forward's argument order, or named by argument "
        "(ONNX: by input name); dtypes kept (int64 token ids). A factory may also return (model, example_inputs)",
    )  # fmt: skip
    i.add_argument("--ratio", type=float, default=0.5, help="plan this ratio to show what would be kept (default 0.5)")
    i.add_argument("--importance", default="l2")
    i.add_argument("--no-verify", dest="verify", action="store_false")
    i.add_argument("--json", help="write the report as JSON to this file (keys: docs/report-schema.md)")
    i.add_argument("--html", help="write one self-contained HTML page: graph by coupling group, channels, saliency histograms")
    i.set_defaults(func=cmd_inspect)
    _add_prune_parser(sub)
    _add_bench_parser(sub)
    return p


def _debug_env() -> bool:
    return os.environ.get("PRUNEC_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (0 success, 2 the input's fault, 1 prunec's own)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(args.debug) or _debug_env()
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except PrunecError as exc:  # the input's fault: InvalidArgumentError, TraceError, UnsupportedModelError
        print(f"prunec: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # InternalError (VerificationError, failed checks) or any other bug of prunec
        if debug:
            traceback.print_exc(file=sys.stderr)
        hint = "" if debug else " (set PRUNEC_DEBUG=1 for a traceback)"
        what = "" if type(exc) is InternalError else f"{type(exc).__name__}: "  # a subclass or a bug: name it
        print(f"prunec: internal error: {what}{_one_line(str(exc))}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
