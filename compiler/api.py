"""``compiler.compile``: the public entry point."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.options import Options
from compiler.pipeline import Plan, Steps, build_report, plan, weight_updates
from compiler.report import Report
from frontends.errors import InvalidArgumentError, PrunecError, UnsupportedModelError

log = logging.getLogger(__name__)

__all__ = ["compile", "CompileResult"]


@dataclass
class CompileResult:
    """The pruned model, its report, and a callable that runs it on the backend.

    ``backend`` names the runtime that runs it (what the runtime reports once it
    has been built: ``torch.compile-cuda``, ``torch-eager-cpu``,
    ``onnxruntime-tensorrt``, ...). The runtime is built on the first call, or by
    :meth:`runtime`; ``compile(backend=..., provider=..., fp16=...)`` chooses it.
    """

    model: Any
    report: Report
    backend: str = "torch-eager"
    plan: Plan | None = field(default=None, repr=False)
    traced: Any = field(default=None, repr=False)
    backend_options: dict[str, Any] = field(default_factory=dict, repr=False)
    _runner: Any = field(default=None, repr=False, compare=False)
    source: Any = field(default=None, repr=False, compare=False)  # the input model (not copied)

    def to_hf(self) -> Any:
        """A Hugging Face model: the input model's class built from the pruned config, with the pruned weights."""
        from compiler.hf import to_hf

        return to_hf(self.source, self.model, tuple(self.traced.example_inputs))

    def save_pretrained(self, directory: str, **kwargs: Any) -> Any:
        """Save a pruned Hugging Face model so ``from_pretrained`` reloads it (see :mod:`compiler.hf`)."""
        model = self.to_hf()
        model.save_pretrained(directory, **kwargs)
        return model

    def runtime(self) -> Any:
        """The compiled runner (``compiler.backend.OrtRunner`` or ``TorchRunner``), built once."""
        from compiler.backend import make_runner

        if self._runner is None:
            opts = dict(self.backend_options)
            example = opts.pop("example_inputs", None)
            self._runner = make_runner(self.model, example_inputs=example, **opts)
            self.backend = self._runner.name
        return self._runner

    def __call__(self, *inputs: Any) -> Any:
        out = self.runtime()(*inputs)
        if isinstance(out, list):  # ONNX Runtime: a list of arrays
            return out[0] if len(out) == 1 else out
        return out


def _check_backend(backend: str, provider: str, fp16: Any) -> None:
    from compiler.backend import BACKENDS, PROVIDERS

    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if provider not in ("auto", *PROVIDERS):
        raise InvalidArgumentError(f"provider must be one of auto, {', '.join(PROVIDERS)}; got {provider!r}")
    if not isinstance(fp16, bool):
        raise InvalidArgumentError(f"fp16 must be True or False, got {fp16!r}")


def compile(  # noqa: A001 - the public contract's name
    model: Any,
    example_inputs: Sequence[Any] | Any = None,
    ratio: float | None = None,
    *,
    threshold: float | None = None,
    target_macs: float | None = None,
    importance: str = "l2",
    equalization: str = "arithmetic_mean",
    normalizer: str = "max",
    granularity: int = 8,
    min_channels: int = 1,
    scope: str = "local",
    ignore: Iterable[str] = (),
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    bias_propagation: bool | None = None,
    compensate: bool | None = None,
    f_nz: float | None = None,
    attention: str = "head_dim",
    target_latency: float | None = None,
    allocation: str = "uniform",
    backend: str = "auto",
    provider: str = "auto",
    fp16: bool = False,
    verify: bool = True,
    rtol: float = 1e-5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> CompileResult:
    """Prune ``model`` into a smaller dense model of the same kind.

    Exactly one policy: ``ratio`` (fraction of each group's prunable channels to
    remove; the default is 0.5 when no policy is given), ``threshold`` (remove
    channels whose normalized saliency is below it), or ``target_macs`` (a
    fraction of the original MACs when <= 1, else an absolute count).
    ``verify`` runs the pruned model against the original with the removed
    channels zeroed and raises :class:`VerificationError` on a mismatch.

    Data-driven criteria read ``calibration`` (an iterable of batches: a tensor,
    or a tuple of the inputs optionally followed by labels; without it, the
    example inputs). With labels the loss is cross-entropy or ``loss_fn(output,
    labels)``; without, the change of the original model's outputs.
    ``bias_propagation`` folds removed channels' mean inputs into the consuming
    layers' biases (default on for ``mrs``); ``compensate`` re-fits the consuming
    layers' remaining weights by least squares (default on for ``obs``). ``f_nz``
    is a policy of its own: remove channels whose fan-in or fan-out has at most
    this fraction of non-zero weights (0.0: dead units).

    ``target_latency`` is a policy too: milliseconds (> 1) or a fraction of the
    original's measured latency (<= 1) at the example inputs' batch, on the
    backend the result runs on. Per-layer latency tables are measured there,
    channels are allocated by saliency per millisecond saved, and the pruned
    model is measured and re-planned until it meets the target (three rounds at
    most; the report gives the estimate and the measurements).
    ``allocation="latency"`` with ``target_macs`` measures the same tables and
    spends the MACs budget where removing a channel saves the most time per
    saliency (default ``"uniform"``: the same ratio in every group).

    ``backend`` runs the result: ``auto`` (ONNX models: ONNX Runtime; PyTorch
    models: ``torch.compile`` with CUDA, eager without), ``eager``,
    ``torch.compile`` or ``onnxruntime`` (a PyTorch result is exported).
    ``provider`` picks ONNX Runtime's execution provider (``auto``: TensorRT,
    else CUDA, else CPU) or PyTorch's device (``cpu``/``cuda``); ``fp16`` runs in
    half precision. ``result.backend`` names what actually runs.
    """
    if ratio is None and threshold is None and target_macs is None and f_nz is None and target_latency is None:
        ratio = 0.5
    opts = Options(
        ratio=ratio,
        threshold=threshold,
        target_macs=target_macs,
        importance=importance,
        equalization=equalization,
        normalizer=normalizer,
        granularity=granularity,
        min_channels=min_channels,
        scope=scope,
        ignore=[ignore] if isinstance(ignore, str) else list(ignore),
        verify=verify,
        rtol=rtol,
        seed=seed,
        f_nz=f_nz,
        bias_propagation=bias_propagation,
        compensate=compensate,
        attention=attention,
        target_latency=target_latency,
        allocation=allocation,
    )
    opts.validate()
    _check_backend(backend, provider, fp16)
    backend_options = {"backend": backend, "provider": provider, "fp16": bool(fp16)}
    try:
        import torch.nn as nn
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise UnsupportedModelError("PyTorch is not installed") from exc
    if isinstance(model, nn.Module):
        if opts.attention == "both":  # two verified passes: whole heads, then head dims (compiler.attention_both)
            from compiler.attention_both import compile_both

            run = lambda m, o: _compile_torch(m, example_inputs, o, progress, calibration, loss_fn, backend_options)  # noqa: E731
            result = compile_both(model, opts, run)
        else:
            result = _compile_torch(model, example_inputs, opts, progress, calibration, loss_fn, backend_options)
        result.backend_options = {**backend_options, "example_inputs": result.traced.example_inputs}
        return result
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        if opts.attention == "both":
            raise InvalidArgumentError("attention='both' is available for PyTorch models")
        if backend in ("eager", "torch.compile"):
            raise InvalidArgumentError(f"backend={backend!r} runs PyTorch modules; an ONNX model runs in onnxruntime")
        result = _compile_onnx(model, example_inputs, opts, progress, backend_options)
        result.backend_options = backend_options
        return result
    raise UnsupportedModelError(f"cannot prune a {type(model).__name__}: expected a torch.nn.Module")


def _compile_torch(
    model: Any,
    example_inputs: Any,
    opts: Options,
    progress: Callable[[str], None] | None,
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    backend_options: dict[str, Any] | None = None,
) -> CompileResult:
    import torch

    from frontends.torch_fx import load_torch
    from passes.calibration import CalibrationData
    from passes.criteria import DataCriteria
    from passes.rewrite_fx import RewriteFX
    from passes.verify import VerifyFX

    if example_inputs is None:
        raise InvalidArgumentError("example_inputs are required for a PyTorch model, e.g. (torch.randn(1, 3, 224, 224),)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    steps = Steps(progress)
    traced = steps("trace", load_torch, model, example_inputs)
    data = CalibrationData.from_user(calibration, example_inputs, loss_fn)
    make_data = lambda analysis: DataCriteria(traced, analysis, data, probes=opts.probes, seed=opts.seed)  # noqa: E731
    latency, run_opts = _latency_setup(opts, backend_options, example_inputs, progress, steps, lambda: copy.deepcopy(traced.gm))
    p = plan(traced.graph, run_opts, steps, make_data, latency and latency.cost_model)

    def build(p: Plan) -> Any:
        updates, info = weight_updates(p, opts, steps)
        return updates, info, steps("rewrite", RewriteFX().call, traced, p.analysis, p.selection.pruned, updates)

    if latency is None or opts.target_latency is None:
        updates, update_info, rewritten = build(p)
    else:
        p, (updates, update_info, rewritten), info = latency.meet(p, run_opts.target_latency, run_opts, build, lambda b: b[2].module)
        update_info = {**update_info, "latency": {**info, "original_ms": round(latency.original_ms, 4)}}
    verification = None
    if opts.verify:
        verification = steps(
            "verify",
            VerifyFX(rtol=opts.rtol).call,
            traced,
            p.analysis,
            p.selection.pruned,
            rewritten.module,
            example_inputs,
            updates,
        ).to_dict()
    try:
        after = steps("measure", load_torch, rewritten.module, example_inputs)
    except PrunecError as exc:
        raise PrunecError(f"internal check failed: the pruned model does not trace again: {exc}") from exc
    report = build_report(type(model).__name__, traced.method, p, after.graph, opts, verification, steps.timings, update_info)
    return CompileResult(rewritten.module, report, "torch-eager", p, traced, source=model)


@dataclass
class OnnxCompileResult(CompileResult):
    """``model`` is an ``onnx.ModelProto``; calling the result runs it in ONNX Runtime.

    The session uses the TensorRT execution provider where a GPU is present and
    ONNX Runtime has it, else CUDA, else the CPU (``compile(provider=...)``
    overrides). Inputs are arrays or tensors in graph-input order; the
    output is an array, or a list of arrays for a model with several outputs.
    """

    def session(self) -> Any:
        """The ONNX Runtime ``InferenceSession`` that runs the pruned model."""
        return self.runtime().session


class _Latency:
    """What ``target_latency`` needs in a compile: the measurer, the original's latency, the cost model."""

    def __init__(self, target: Any, original_ms: float, granularity: int, progress: Callable[[str], None] | None) -> None:
        self.target, self.original_ms, self.granularity, self.progress = target, original_ms, granularity, progress

    def cost_model(self, analysis: Any) -> Any:
        from compiler.latency import LatencyModel

        return LatencyModel(analysis, self.target.timer, self.original_ms, self.granularity, self.progress)

    def meet(self, *args: Any) -> Any:
        return self.target.meet(*args)


def _latency_setup(
    opts: Options,
    backend_options: dict[str, Any] | None,
    example_inputs: Any,
    progress: Callable[[str], None] | None,
    steps: Steps,
    original: Callable[[], Any],
) -> tuple[_Latency | None, Options]:
    """For ``target_latency``: measure the original on the backend and turn a fraction into milliseconds."""
    if opts.target_latency is None and opts.allocation != "latency":
        return None, opts
    from dataclasses import replace

    from compiler.latency import LatencyTarget

    measurer = LatencyTarget(backend_options or {}, example_inputs, progress)
    original_ms = steps("measure original", measurer.measure, original())
    if progress:
        progress(f"original {original_ms:.3f} ms on {measurer.runtime} at batch {measurer.batch}")
    if opts.target_latency is None:
        return _Latency(measurer, original_ms, opts.granularity, progress), opts
    target_ms = measurer.target_ms(opts.target_latency, original_ms)
    return _Latency(measurer, original_ms, opts.granularity, progress), replace(opts, target_latency=target_ms)


def _compile_onnx(
    model: Any,
    example_inputs: Any,
    opts: Options,
    progress: Callable[[str], None] | None,
    backend_options: dict[str, Any] | None = None,
) -> CompileResult:
    """Load -> plan -> rewrite -> verify in ONNX Runtime -> re-lower the pruned model and check its MACs."""
    from frontends.onnx_frontend import load_onnx
    from passes.rewrite_onnx import RewriteONNX
    from passes.saliency import Saliency
    from passes.verify_onnx import VerifyONNX

    if opts.importance in Saliency.NEEDS_MODEL or opts.f_nz is not None or opts.propagate_bias or opts.compensates:
        raise UnsupportedModelError(
            f"importance={opts.importance!r}, f_nz, bias propagation and compensation run the model in PyTorch; "
            "for ONNX models use a weight criterion (l1, l2, random)"
        )
    steps = Steps(progress)
    loaded = steps("load", load_onnx, model, example_inputs, opts.seed)
    latency, run_opts = _latency_setup(opts, backend_options, loaded.input_tuple(), progress, steps, lambda: loaded.model)
    p = plan(loaded.graph, run_opts, steps, None, latency and latency.cost_model)
    latency_info = {}
    if latency is None or opts.target_latency is None:
        rewritten = steps("rewrite", RewriteONNX().call, loaded, p.analysis, p.selection.pruned)
    else:
        build = lambda p: steps("rewrite", RewriteONNX().call, loaded, p.analysis, p.selection.pruned)  # noqa: E731
        p, rewritten, info = latency.meet(p, run_opts.target_latency, run_opts, build, lambda b: b.model)
        latency_info = {"latency": {**info, "original_ms": round(latency.original_ms, 4)}}
    verification = None
    if opts.verify:
        verifier = VerifyONNX(rtol=max(opts.rtol, 1e-4))  # ONNX Runtime computes in float32
        verification = steps("verify", verifier.call, loaded, p.analysis, p.selection.pruned, rewritten.model).to_dict()
    try:
        after = steps("measure", load_onnx, rewritten.model, loaded.inputs)
    except PrunecError as exc:
        raise PrunecError(f"internal check failed: the pruned ONNX model does not load again: {exc}") from exc
    extra = {
        "onnx": {
            "sliced_constants": rewritten.sliced,
            "updated_arguments": rewritten.updated_args,
            "materialized_constants": len(rewritten.materialized),
            "removed_nodes": rewritten.removed_nodes,
            "notes": loaded.notes,
        },
        **latency_info,
    }
    report = build_report(loaded.name, loaded.method, p, after.graph, opts, verification, steps.timings, extra)
    return OnnxCompileResult(rewritten.model, report, "onnxruntime", p, loaded)
