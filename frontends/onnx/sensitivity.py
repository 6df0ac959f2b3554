"""The damage of candidate plans on the calibration data (ONNX adapter), for ``allocation="sensitivity"``.

A private gated copy of the model (:func:`frontends.onnx.calibration.gated_model`: every collected consumer reads
``m + g (x - m)``, with ``m`` the channel's mean under bias propagation, else 0) runs once per plan and batch in
ONNX Runtime with the plan's gates (0 on its removed classes), against the ungated run of the same batch: the
increase of the per-sample cross-entropy with labels, else the relative squared error of the outputs
``Σ‖f(g) - f‖² / Σ‖f‖²`` — what the torch adapter measures (:mod:`frontends.torch.sensitivity`); NaN for a plan
none of whose classes a gated read carries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from frontends.onnx.calibration import GatedRead, gated_model
from frontends.onnx.runtime import ort_session
from passes.data_criteria import per_sample_cross_entropy

log = logging.getLogger(__name__)

__all__ = ["onnx_damage"]


def _reads(crit: Any, means: dict[str, np.ndarray], mean_replacement: bool) -> list[GatedRead]:
    """One gated read per (node, input) a consumer was collected at."""
    reads: dict[tuple[int, int], GatedRead] = {}
    for c in crit.cons:
        if c.node not in means or c.value in crit.om.static:
            continue
        i = crit.analysis.graph.ops[c.op].source
        node = crit.nodes[i]
        k = c.arg if c.arg < len(node.input) and node.input[c.arg] == c.value else list(node.input).index(c.value)
        rank = len(crit.analysis.graph.shape(c.value))
        elem = crit.om.elem_types.get(c.value, onnx.TensorProto.FLOAT)
        mean = means[c.node] if mean_replacement else np.zeros_like(means[c.node])
        reads.setdefault((i, k), GatedRead(i, k, c.value, c.dim, rank, c.classes, mean, elem))
    return list(reads.values())


def onnx_damage(
    crit: Any, masks: list[np.ndarray], progress: Callable[[str], None] | None = None, mean_replacement: bool = False,
    updates: Any = None,
) -> tuple[np.ndarray, str]:
    """The damage of each plan in ``masks`` (bool per class) on ``crit``'s calibration batches, and its name.
    ``updates`` (the weight updates a plan would get) is not applied here: the probes measure the plans without
    them, as the name returned says."""
    reads = _reads(crit, crit._position_means(), mean_replacement)
    model, gates = gated_model(crit._base(), reads, crit.C)
    gated = np.zeros(crit.C, dtype=bool)
    for r in reads:
        gated[r.classes[r.classes >= 0]] = True
    unmeasured = np.array([not (m & gated).any() for m in masks], dtype=bool)
    sess = ort_session(model, arrays=crit.om.static)
    outputs = [o.name for o in crit.om.model.graph.output]
    ones = np.ones(crit.C + 1, dtype=np.float32)
    labelled = crit.data.labelled
    num = np.zeros(len(masks))
    den, samples = 0.0, 0
    total, done, shown = len(masks) * len(crit.data.batches), 0, 0
    for b in crit.data.batches:
        ref = [np.asarray(o, dtype=np.float64) for o in sess.run(outputs, {**b.inputs, gates: ones})]
        ref_loss = per_sample_cross_entropy(ref[0], b.labels).sum() if labelled else 0.0
        den += float(sum((r**2).sum() for r in ref))
        samples += b.size
        for j, mask in enumerate(masks):
            g = ones.copy()
            g[: crit.C][mask] = 0.0
            out = sess.run(outputs, {**b.inputs, gates: g})
            if labelled:
                num[j] += float(per_sample_cross_entropy(out[0], b.labels).sum() - ref_loss)
            else:
                num[j] += float(sum(((np.asarray(o, dtype=np.float64) - r) ** 2).sum() for o, r in zip(out, ref, strict=True)))
            done += 1
            if progress and (done - shown) * 10 >= total:
                shown = done
                progress(f"sensitivity: {done}/{total} probe runs")
    without = ", without the compile's weight updates" if updates is not None else ""
    if labelled:
        return np.where(unmeasured, np.nan, num / max(samples, 1)), "task loss increase per sample" + without
    return np.where(unmeasured, np.nan, num / den if den > 0 else num), "relative squared error of the outputs" + without
