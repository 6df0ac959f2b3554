"""The criterion ``importance="auto"`` (the default) resolves to, from the calibration data and the adapter.

=========================================  ===============================================================
no calibration data                        ``l2``: the data-free default (the example inputs are not data);
                                           also for ``f_nz`` and depth alone, which rank no channels
calibration the compensation guard can     ``obs``, with OBS compensation guarded on a held-out split of the
split (2+ batches; torch: 2+ samples), an  calibration (:meth:`passes.data_criteria.ChannelStatistics.obs_compensation`)
adapter with weight updates
otherwise                                  ``taylor`` where the adapter has gradients, else ``activation``
=========================================  ===============================================================

Measured on all-MiniLM-L6-v2 (``benchmarks/results/quality.md``, ratio 0.5, held-out cosine): with 128
calibration sentences ``obs`` keeps 0.901; with 8, guarded ``obs`` keeps 0.868 against ``taylor``'s 0.826, so
the guard, not a sample count, decides how much to trust the data. A named criterion is never replaced.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from compiler.options import Options

__all__ = ["resolve_importance", "calibration_samples", "splittable"]


def calibration_samples(adapter: Any) -> int | None:
    """Samples in the caller's calibration batches; None where none were given (the example inputs stand in)."""
    if getattr(adapter, "calibration", None) is None:
        return None
    n = 0
    for b in adapter.data.batches:
        size = getattr(b, "size", None)
        n += int(size) if size is not None else int(b.inputs[0].shape[0])
    return n


def splittable(adapter: Any, samples: int | None) -> bool:
    """Whether the compensation guard can hold out part of the calibration (:func:`passes.data_criteria.holdout_plan`):
    two batches or more; for the torch adapter also one batch of two samples or more."""
    if samples is None:
        return False
    return len(adapter.data.batches) >= 2 or (adapter.name == "torch" and samples >= 2)


def resolve_importance(
    opts: Options, samples: int | None, capabilities: frozenset[str], can_split: bool = True
) -> tuple[Options, dict[str, Any] | None]:
    """``opts`` with ``importance="auto"`` replaced by the criterion chosen, and the report's record of the choice
    (None where a criterion was named)."""
    if opts.importance != "auto":
        return opts, None
    if opts.f_nz is not None or all(x is None for x in (opts.ratio, opts.threshold, opts.target_macs, opts.target_latency)):
        name, why = "l2", "no policy ranks channels by saliency here (f_nz, or depth alone): the data-free default"
    elif samples is None:
        name, why = "l2", "no calibration data: the data-free default"
    elif can_split and {"activations", "weight_updates"} <= capabilities:
        name, why = "obs", (
            f"{samples} calibration samples: layer-wise OBS with compensation, "
            "kept per layer only where it lowers the reconstruction loss on a held-out split"
        )
    elif "gradients" in capabilities:
        name, why = "taylor", f"{samples} calibration samples cannot be split for a held-out check of OBS compensation: first-order Taylor"
    elif "activations" in capabilities:
        name, why = "activation", f"{samples} calibration samples in one batch (no held-out split) and no gradients here: mean activation"
    else:
        name, why = "l2", "this adapter cannot run the model: the data-free default"
    return replace(opts, importance=name), {"requested": "auto", "criterion": name, "reason": why, "calibration_samples": samples}

