"""``attention="both"``: prune whole attention heads and, within the heads kept, head dims.

A channel of a head split ``[h*d] -> [h, d]`` is kept only if its head and its
position within the head are both kept. That is a product of two partitions,
not one coupling class, so it is done as two verified passes over the model:

1. ``attention="heads"``: whole heads (every other group too) at ratio
   ``r' = 1 - sqrt(1 - ratio)``;
2. ``attention="head_dim"`` on the result: the same dims of every kept head,
   each head-dim position its own coupled channel (every other group again), at
   ``r'``.

Each group therefore keeps about ``1 - ratio`` of its channels (the heads of a
split ``(1 - r')**2`` of their ``h*d`` channels). Both passes are verified against
their input with the removed channels zeroed, so the final model equals the
original with the union of removed channels zeroed.

Where the head dims cannot be pruned (the second pass freezes groups the first
pruned: a rotary embedding whose angle table is computed at run time), the split would leave those groups at ``1 - r'``; then whole heads at
the full ratio are compiled too and the smaller model (MACs) is returned, and
the report's ``settings["stages"]`` says which.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from typing import Any

from frontends.errors import InvalidArgumentError

log = logging.getLogger(__name__)

__all__ = ["compile_both"]


def compile_both(model: Any, opts: Any, run: Callable[[Any, Any], Any]) -> Any:
    """Two passes of ``run(model, options)``; returns the second result with the whole run's report."""
    if opts.ratio is None or opts.scope != "local":
        raise InvalidArgumentError("attention='both' prunes with ratio= and scope='local' (two passes of the same ratio)")
    step = 1.0 - math.sqrt(1.0 - opts.ratio)
    first = run(model, dataclasses.replace(opts, attention="heads", ratio=step))
    second = run(first.model, dataclasses.replace(opts, attention="head_dim", ratio=step))
    a, b = first.report, second.report
    stages = [
        {"attention": "heads", "ratio": step, "params": a.params_after, "macs": a.macs_after, "verification": a.verification},
        {"attention": "head_dim", "ratio": step, "params": b.params_after, "macs": b.macs_after, "verification": b.verification},
    ]
    if sum(g.frozen for g in b.groups) > sum(g.frozen for g in a.groups):  # head dims that cannot prune
        log.info("attention='both': the head-dim pass froze groups the heads pass pruned; trying whole heads at %.3f",
                 opts.ratio)
        whole = run(model, dataclasses.replace(opts, attention="heads"))
        w = whole.report
        stages.append({"attention": "heads", "ratio": opts.ratio, "params": w.params_after, "macs": w.macs_after,
                       "verification": w.verification, "chosen": w.macs_after < b.macs_after})
        if w.macs_after < b.macs_after:
            w.settings.update(attention="both", ratio=opts.ratio, stages=stages)
            log.info("attention='both': whole heads alone give fewer MACs (%d vs %d); keeping them", w.macs_after, b.macs_after)
            return whole
    b.params_before, b.macs_before = a.params_before, a.macs_before
    b.settings.update(attention="both", ratio=opts.ratio, stages=stages)
    for k, v in a.timings.items():
        b.timings[f"heads pass: {k}"] = v
    second.source = model
    log.info("attention='both': %d -> %d -> %d parameters", a.params_before, a.params_after, b.params_after)
    return second
