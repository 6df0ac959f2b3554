"""``compiler.compile``: the public entry point."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.options import Options
from compiler.pipeline import Plan, compile_with
from compiler.report import Report
from frontends.adapter import Adapter
from frontends.errors import InvalidArgumentError, UnsupportedModelError

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
            if opts.get("backend") == "onnxruntime" and getattr(self.traced, "signature", None) is not None:
                raise InvalidArgumentError(
                    "backend='onnxruntime' exports models whose example_inputs are a tuple of tensors; this model takes "
                    "structured arguments (lists, dicts or keywords): use backend='eager' or 'torch.compile'"
                )
            self._runner = make_runner(self.model, example_inputs=example, **opts)
            self.backend = self._runner.name
        return self._runner

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        out = self.runtime()(*inputs, **kwargs)
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
    importance: str = "auto",
    equalization: str = "arithmetic_mean",
    normalizer: str = "max",
    granularity: int = 8,
    min_channels: int = 1,
    channel_block: int | str = "auto",
    scope: str = "local",
    ignore: Iterable[str] = (),
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    bias_propagation: bool | None = None,
    compensate: bool | str | None = None,
    f_nz: float | None = None,
    attention: str = "head_dim",
    target_latency: float | None = None,
    allocation: str = "uniform",
    depth: float | str | None = None,
    depth_importance: str = "auto",
    hf_compatible: bool | None = None,
    experts: float | None = None,
    backend: str = "auto",
    provider: str = "auto",
    fp16: bool = False,
    verify: bool = True,
    rtol: float = 1e-5,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    statistics_reducer: Callable[[Any], Any] | None = None,
) -> CompileResult:
    """Prune ``model`` into a smaller dense model of the same kind.

    Exactly one policy: ``ratio`` (fraction of each group's prunable channels to
    remove; the default is 0.5 when no policy is given), ``threshold`` (remove
    channels whose normalized saliency is below it), or ``target_macs`` (a
    fraction of the original MACs when <= 1, else an absolute count).
    ``verify`` runs the pruned model against the original with the removed
    channels zeroed and raises :class:`VerificationError` on a mismatch.

    ``channel_block="auto"`` rounds kept channel counts up to the channel block
    of the runtime the model will run on (``backend``/``provider``; measured
    once per runtime and cached, :mod:`compiler.channel_block`): ONNX Runtime's
    CPU convolutions compute 16 channels at a time with AVX-512, so 24 kept
    channels cost what 32 cost. An integer fixes the block; 1 turns it off.

    ``importance`` names the saliency criterion (:data:`passes.importance.CRITERIA`); the default ``"auto"``
    chooses one from the data (:mod:`compiler.defaults`): ``l2`` without calibration data, ``obs`` with
    held-out-guarded compensation where the calibration can be split for the guard, else ``taylor``
    (``activation`` for ONNX);
    ``report.settings["importance_choice"]`` says which and why.

    Data-driven criteria read ``calibration`` (an iterable of batches: a tensor,
    or a tuple of the inputs optionally followed by labels; without it, the
    example inputs). With labels the loss is cross-entropy or ``loss_fn(output,
    labels)``; without, the change of the original model's outputs.
    ``bias_propagation`` folds removed channels' mean inputs into the consuming
    layers' biases (default on for ``mrs``); ``compensate`` re-fits the consuming
    layers' remaining weights by least squares (default on for ``obs``;
    ``"sequential"``: each layer on the inputs of the model pruned and compensated
    up to it, torch only). ``f_nz``
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
    saliency (default ``"uniform"``: the same ratio in every group). Layer
    timings are kept on disk per runtime (``$PRUNEC_CACHE``, default
    ``~/.cache/prunec``): a second compile on the same runtime times no layer again.
    ``allocation="sensitivity"`` (``ratio`` or ``target_macs``, with calibration
    data) probes each group alone at a few ratios on the calibration data and
    spends the budget where it does the least measured damage
    (``passes.allocation``; the report's ``settings.sensitivity``).

    ``backend`` runs the result: ``auto`` (ONNX models: ONNX Runtime; PyTorch
    models: ``torch.compile`` with CUDA, eager without), ``eager``,
    ``torch.compile`` or ``onnxruntime`` (a PyTorch result is exported).
    ``provider`` picks ONNX Runtime's execution provider (``auto``: TensorRT,
    else CUDA, else CPU) or PyTorch's device (``cpu``/``cuda``); ``fp16`` runs in
    half precision. ``result.backend`` names what actually runs.

    ``depth`` removes whole residual blocks first (a fraction of the removable
    ones: ResNet blocks without downsampling, transformer layers), ranked by
    ``depth_importance`` (``cosine``, ``loss``, ``norm``; ``auto``: cosine with
    calibration, else norm), verified against the original with those branches
    zeroed; any width policy then runs on what is left (``target_macs`` stays a
    budget of the original's MACs, ``target_latency`` of the original's measured
    latency). ``depth="auto"`` with ``target_macs`` or ``target_latency`` chooses
    how many blocks to remove by held-out quality under that budget, measured on
    the backend for a latency budget (:mod:`compiler.depth`).

    ``hf_compatible`` (default: on for a transformers ``PreTrainedModel``) restricts
    the plan to what the model's config can express, so that
    ``result.save_pretrained`` -> ``from_pretrained`` works: the same width per
    role in every layer, and only sizes the class builds from its config; a
    width the config cannot express keeps its channels (frozen, with the
    reason). ``report.settings["hf_constraint"]`` gives the MACs with and
    without the constraint (:mod:`compiler.hf_constraints`).

    ``experts`` removes whole experts of mixture-of-experts layers (transformers
    Mixtral, Qwen2-MoE): this fraction of each layer's experts, the lowest by
    routed load x saliency on the calibration data (else the example inputs),
    the router's rows sliced and the config's expert count updated; verified
    against the original with the removed experts' router logits at ``-inf``.
    ``ratio=`` or ``threshold=`` then prunes the kept experts' widths (none
    given: no width pruning). ``report.experts`` lists every expert's load and
    score (:mod:`compiler.experts`).

    ``statistics_reducer(array) -> array`` is applied to raw criterion statistics
    and weight updates (``compiler.workflows.distributed_compile`` passes an
    all-reduce so that every rank prunes identically).
    """
    if ratio is None and threshold is None and target_macs is None and f_nz is None and target_latency is None and depth is None:
        ratio = 0.5 if experts is None else None
    opts = Options(
        ratio=ratio,
        threshold=threshold,
        target_macs=target_macs,
        importance=importance,
        equalization=equalization,
        normalizer=normalizer,
        granularity=granularity,
        min_channels=min_channels,
        channel_block=channel_block,
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
        depth=depth,
        depth_importance=depth_importance,
        hf_compatible=hf_compatible,
        experts=experts,
        statistics_reducer=statistics_reducer,
    )
    opts.validate()
    _check_backend(backend, provider, fp16)
    backend_options = {"backend": backend, "provider": provider, "fp16": bool(fp16)}
    if (opts.depth is not None or opts.experts is not None) and calibration is not None:
        calibration = list(calibration)  # read by the depth ranking and again by the width pass
    adapter_for = _adapter_factory(model, example_inputs, calibration, loss_fn, opts, backend, seed)
    if opts.experts is not None:  # whole experts of mixture-of-experts layers removed and verified, then width (compiler.experts)
        from compiler.experts import compile_experts

        def run_small(m: Any, o: Options, cal: Any = None) -> CompileResult:
            return _run(_adapter_factory(model, example_inputs, cal, loss_fn, o, backend, seed)(m), o, progress, backend_options)

        result = compile_experts(model, opts, adapter_for, run_small, progress, example_inputs, calibration)
    elif opts.depth is not None:  # residual blocks removed and verified, then width (compiler.depth)
        from compiler.depth import compile_depth

        def run(m: Any, o: Options, cal: Any = None) -> CompileResult:
            factory = adapter_for if cal is None else _adapter_factory(model, example_inputs, cal, loss_fn, o, backend, seed)
            return _run(factory(m), o, progress, backend_options)

        result = compile_depth(model, opts, adapter_for, run, progress, backend_options)
    elif opts.attention == "both":  # two verified passes: whole heads, then head dims (compiler.attention_both)
        from compiler.attention_both import compile_both

        result = compile_both(model, opts, lambda m, o: _run(adapter_for(m), o, progress, backend_options))
    else:
        result = _run(adapter_for(model), opts, progress, backend_options)
    return result


def _adapter_factory(
    model: Any,
    example_inputs: Any,
    calibration: Iterable[Any] | None,
    loss_fn: Callable[[Any, Any], Any] | None,
    opts: Options,
    backend: str,
    seed: int,
) -> Callable[[Any], Adapter]:
    """The adapter for ``model``'s format (called again on a pruned model by ``attention="both"``)."""
    try:
        import torch.nn as nn
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise UnsupportedModelError("PyTorch is not installed") from exc
    if isinstance(model, nn.Module):
        from frontends.torch.adapter import TorchAdapter

        return lambda m: TorchAdapter(m, example_inputs, calibration, loss_fn)
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        from frontends.onnx.adapter import OnnxAdapter

        if opts.attention == "both":
            raise InvalidArgumentError("attention='both' is available for PyTorch models")
        if backend in ("eager", "torch.compile"):
            raise InvalidArgumentError(f"backend={backend!r} runs PyTorch modules; an ONNX model runs in onnxruntime")
        return lambda m: OnnxAdapter(m, example_inputs, seed, calibration, loss_fn)
    raise UnsupportedModelError(f"cannot prune a {type(model).__name__}: expected a torch.nn.Module")


def _run(adapter: Adapter, opts: Options, progress: Callable[[str], None] | None, backend_options: dict[str, Any]) -> CompileResult:
    """One compile through the pipeline, wrapped as the result kind of the adapter's format."""
    done = compile_with(adapter, opts, progress, backend_options)
    if adapter.name == "onnx":
        return OnnxCompileResult(done.model, done.report, "onnxruntime", done.plan, adapter.handle, backend_options)
    options = {**backend_options, "example_inputs": adapter.example_inputs()}
    return CompileResult(done.model, done.report, "torch-eager", done.plan, adapter.handle, options, source=adapter.model)


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
