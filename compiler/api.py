"""``compiler.compile``: the public entry point."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.pipeline import Options, Plan, Steps, build_report, plan, weight_updates
from compiler.report import Report
from frontends.errors import InvalidArgumentError, PrunecError, UnsupportedModelError

log = logging.getLogger(__name__)

__all__ = ["compile", "CompileResult"]


@dataclass
class CompileResult:
    """The pruned model, its report, and a callable that runs it on the backend."""

    model: Any
    report: Report
    backend: str = "torch-eager"
    plan: Plan | None = field(default=None, repr=False)
    traced: Any = field(default=None, repr=False)
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

    def __call__(self, *inputs: Any) -> Any:
        import torch

        with torch.no_grad():
            return self.model(*inputs)


def _check_options(opts: Options) -> None:
    from passes.saliency import EQUALIZATIONS, NORMALIZERS, Saliency

    if opts.importance not in Saliency.CRITERIA:
        raise InvalidArgumentError(
            f"importance={opts.importance!r} is not available; choose from {', '.join(Saliency.CRITERIA)}"
        )
    if opts.equalization not in EQUALIZATIONS:
        raise InvalidArgumentError(f"equalization={opts.equalization!r}; choose from {', '.join(EQUALIZATIONS)}")
    if opts.normalizer not in NORMALIZERS:
        raise InvalidArgumentError(f"normalizer={opts.normalizer!r}; choose from {', '.join(NORMALIZERS)}")
    given = [x is not None for x in (opts.ratio, opts.threshold, opts.target_macs, opts.f_nz)]
    if sum(given) > 1:
        raise InvalidArgumentError("give only one of ratio=, threshold=, target_macs=, f_nz=")
    if opts.f_nz is not None and not (isinstance(opts.f_nz, (int, float)) and 0.0 <= opts.f_nz < 1.0):
        raise InvalidArgumentError(f"f_nz must be a fraction in [0, 1), got {opts.f_nz!r}")
    if opts.ratio is not None and not (isinstance(opts.ratio, (int, float)) and 0.0 <= opts.ratio < 1.0):
        raise InvalidArgumentError(f"ratio must be a number in [0, 1), got {opts.ratio!r}")
    if opts.target_macs is not None and not opts.target_macs > 0:
        raise InvalidArgumentError(f"target_macs must be positive, got {opts.target_macs!r}")
    if not isinstance(opts.granularity, int) or opts.granularity < 1:
        raise InvalidArgumentError(f"granularity must be an integer >= 1, got {opts.granularity!r}")
    if not isinstance(opts.min_channels, int) or opts.min_channels < 1:
        raise InvalidArgumentError(f"min_channels must be an integer >= 1, got {opts.min_channels!r}")
    if opts.attention not in ("head_dim", "heads"):
        raise InvalidArgumentError(f"attention must be 'head_dim' or 'heads', got {opts.attention!r}")
    if opts.scope not in ("local", "global"):
        raise InvalidArgumentError(f"scope must be 'local' or 'global', got {opts.scope!r}")
    if isinstance(opts.ignore, str):
        opts.ignore = [opts.ignore]


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
    """
    if ratio is None and threshold is None and target_macs is None and f_nz is None:
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
    )
    _check_options(opts)
    try:
        import torch.nn as nn
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise UnsupportedModelError("PyTorch is not installed") from exc
    if isinstance(model, nn.Module):
        return _compile_torch(model, example_inputs, opts, progress, calibration, loss_fn)
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        return _compile_onnx(model, example_inputs, opts, progress)
    raise UnsupportedModelError(f"cannot prune a {type(model).__name__}: expected a torch.nn.Module")


def _compile_torch(
    model: Any,
    example_inputs: Any,
    opts: Options,
    progress: Callable[[str], None] | None,
    calibration: Iterable[Any] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
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
    p = plan(traced.graph, opts, steps, make_data)
    updates, update_info = weight_updates(p, opts, steps)
    rewritten = steps("rewrite", RewriteFX().call, traced, p.analysis, p.selection.pruned, updates)
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

    The session uses the CUDA execution provider where a GPU is present, the CPU
    provider otherwise. Inputs are arrays or tensors in graph-input order; the
    output is an array, or a list of arrays for a model with several outputs.
    """

    _session: Any = field(default=None, repr=False, compare=False)

    def session(self) -> Any:
        from frontends.onnx_frontend import ort_session

        if self._session is None:
            self._session = ort_session(self.model, optimize=True, device="auto")
            self.backend = "onnxruntime-" + self._session.get_providers()[0].replace("ExecutionProvider", "").lower()
        return self._session

    def __call__(self, *inputs: Any) -> Any:
        from frontends.onnx_frontend import _to_numpy

        sess = self.session()
        names = [i.name for i in sess.get_inputs()]
        if len(inputs) != len(names):
            raise InvalidArgumentError(f"the model takes {len(names)} inputs {names}, got {len(inputs)}")
        outs = sess.run(None, {n: _to_numpy(x) for n, x in zip(names, inputs)})
        return outs[0] if len(outs) == 1 else outs


def _compile_onnx(model: Any, example_inputs: Any, opts: Options, progress: Callable[[str], None] | None) -> CompileResult:
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
    p = plan(loaded.graph, opts, steps)
    rewritten = steps("rewrite", RewriteONNX().call, loaded, p.analysis, p.selection.pruned)
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
        }
    }
    report = build_report(loaded.name, loaded.method, p, after.graph, opts, verification, steps.timings, extra)
    return OnnxCompileResult(rewritten.model, report, "onnxruntime", p, loaded)
