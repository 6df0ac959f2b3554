"""The criterion ``importance="auto"`` (the default) resolves to, from the calibration data and the adapter.

=========================================  ===============================================================
no calibration data                        ``l2``: the data-free default (the example inputs are not data);
                                           also for ``f_nz`` and depth alone, which rank no channels
calibration of >= ``OBS_MIN_SAMPLES``      ``obs``, with OBS compensation guarded on a held-out split of the
samples, an adapter with weight updates    batches (:meth:`passes.data_criteria.ChannelStatistics.obs_compensation`)
fewer samples                              ``taylor`` where the adapter has gradients, else ``activation``
=========================================  ===============================================================

Measured on all-MiniLM-L6-v2 and the digits models (``benchmarks/quality.py``): with enough samples ``obs`` with
compensation keeps the most held-out quality; on a handful of samples its Hessians are rank-deficient and
first-order criteria rank channels better. A named criterion is never replaced.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from compiler.options import Options

__all__ = ["OBS_MIN_SAMPLES", "resolve_importance", "calibration_samples"]

OBS_MIN_SAMPLES = 32


def calibration_samples(adapter: Any) -> int | None:
    """Samples in the caller's calibration batches; None where none were given (the example inputs stand in)."""
    if getattr(adapter, "calibration", None) is None:
        return None
    n = 0
    for b in adapter.data.batches:
        size = getattr(b, "size", None)
        n += int(size) if size is not None else int(b.inputs[0].shape[0])
    return n


def resolve_importance(opts: Options, samples: int | None, capabilities: frozenset[str]) -> tuple[Options, dict[str, Any] | None]:
    """``opts`` with ``importance="auto"`` replaced by the criterion chosen, and the report's record of the choice
    (None where a criterion was named)."""
    if opts.importance != "auto":
        return opts, None
    if opts.f_nz is not None or all(x is None for x in (opts.ratio, opts.threshold, opts.target_macs, opts.target_latency)):
        name, why = "l2", "no policy ranks channels by saliency here (f_nz, or depth alone): the data-free default"
    elif samples is None:
        name, why = "l2", "no calibration data: the data-free default"
    elif samples >= OBS_MIN_SAMPLES and {"activations", "weight_updates"} <= capabilities:
        name, why = "obs", (
            f"{samples} calibration samples (>= {OBS_MIN_SAMPLES}): layer-wise OBS with compensation, "
            "kept per layer only where it lowers the held-out reconstruction loss"
        )
    elif "gradients" in capabilities:
        name, why = "taylor", f"{samples} calibration samples (< {OBS_MIN_SAMPLES}): too few for OBS, first-order Taylor"
    elif "activations" in capabilities:
        name, why = "activation", f"{samples} calibration samples, no gradients in this adapter: mean activation"
    else:
        name, why = "l2", "this adapter cannot run the model: the data-free default"
    return replace(opts, importance=name), {"requested": "auto", "criterion": name, "reason": why, "calibration_samples": samples}
