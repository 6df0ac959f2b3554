"""``compiler.compile``: the public entry point."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.pipeline import Options, Plan, Steps, build_report, plan
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
    given = [x is not None for x in (opts.ratio, opts.threshold, opts.target_macs)]
    if sum(given) > 1:
        raise InvalidArgumentError("give only one of ratio=, threshold=, target_macs=")
    if opts.ratio is not None and not (isinstance(opts.ratio, (int, float)) and 0.0 <= opts.ratio < 1.0):
        raise InvalidArgumentError(f"ratio must be a number in [0, 1), got {opts.ratio!r}")
    if opts.target_macs is not None and not opts.target_macs > 0:
        raise InvalidArgumentError(f"target_macs must be positive, got {opts.target_macs!r}")
    if not isinstance(opts.granularity, int) or opts.granularity < 1:
        raise InvalidArgumentError(f"granularity must be an integer >= 1, got {opts.granularity!r}")
    if not isinstance(opts.min_channels, int) or opts.min_channels < 1:
        raise InvalidArgumentError(f"min_channels must be an integer >= 1, got {opts.min_channels!r}")
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
    """
    if ratio is None and threshold is None and target_macs is None:
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
        ignore=list(ignore),
        verify=verify,
        rtol=rtol,
        seed=seed,
    )
    _check_options(opts)
    if calibration is not None and importance in ("l1", "l2", "random"):
        log.info("calibration data is not used by importance=%r", importance)
    try:
        import torch.nn as nn
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        raise UnsupportedModelError("PyTorch is not installed") from exc
    if isinstance(model, nn.Module):
        return _compile_torch(model, example_inputs, opts, progress)
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        raise UnsupportedModelError(
            "ONNX models are not supported by this build of prunec yet; pass a torch.nn.Module"
        )
    raise UnsupportedModelError(f"cannot prune a {type(model).__name__}: expected a torch.nn.Module")


def _compile_torch(model: Any, example_inputs: Any, opts: Options, progress: Callable[[str], None] | None) -> CompileResult:
    import torch

    from frontends.torch_fx import load_torch
    from passes.rewrite_fx import RewriteFX
    from passes.verify import VerifyFX

    if example_inputs is None:
        raise InvalidArgumentError("example_inputs are required for a PyTorch model, e.g. (torch.randn(1, 3, 224, 224),)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    example_inputs = tuple(example_inputs)
    steps = Steps(progress)
    traced = steps("trace", load_torch, model, example_inputs)
    p = plan(traced.graph, opts, steps)
    rewritten = steps("rewrite", RewriteFX().call, traced, p.analysis, p.selection.pruned)
    verification = None
    if opts.verify:
        verification = steps(
            "verify", VerifyFX(rtol=opts.rtol).call, traced, p.analysis, p.selection.pruned, rewritten.module, example_inputs
        ).to_dict()
    try:
        after = steps("measure", load_torch, rewritten.module, example_inputs)
    except PrunecError as exc:
        raise PrunecError(f"internal check failed: the pruned model does not trace again: {exc}") from exc
    report = build_report(type(model).__name__, traced.method, p, after.graph, opts, verification, steps.timings)
    return CompileResult(rewritten.module, report, "torch-eager", p, traced)
