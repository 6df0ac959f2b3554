"""Depth pruning in a compile: residual blocks found, ranked, removed and verified; then width on the rest.

``compile(model, inputs, depth=0.25)`` runs, in order:

1. ``find blocks``    :class:`passes.depth.FindBlocks` on the adapter's channel graph;
2. ``rank blocks``    :func:`passes.depth.score_blocks` with ``depth_importance`` through the
                      adapter's depth handler (``frontends/<format>/depth.py``);
3. ``remove blocks``  the lowest-scored blocks, every stage keeping one;
4. ``verify blocks``  the result against the original with those branches zeroed at their adds;
5. the one pipeline (``run``) on the depth-pruned model for the width policy given
   (``ratio=``, ``target_macs=``, ...; none: ``ratio=0``, which verifies and measures it).

``depth="auto"`` with ``target_macs`` searches the split: for k = 0, 1, ... blocks removed
(while depth alone stays above the budget) width fills the rest of the budget, and the
split whose outputs are closest (mean cosine) to the original's on held-out calibration
batches (the last quarter, which the ranking and the width criteria do not see) is
compiled again, verified. The report's ``depth`` section lists every block with its score,
the residual adds that are not blocks and why, the verification and the search.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from compiler.options import Options
from compiler.pipeline import Steps
from frontends.adapter import Adapter, Rewritten
from frontends.errors import InvalidArgumentError, UnsupportedModelError
from passes.cost import graph_macs, graph_params
from passes.depth import Block, DepthAnalysis, FindBlocks, removed_count, resolve_criterion, score_blocks, select_blocks

log = logging.getLogger(__name__)

__all__ = ["compile_depth"]

Run = Callable[[Any, Options, Any], Any]  # (model, options, calibration or None) -> CompileResult


def compile_depth(model: Any, opts: Options, adapter_for: Callable[[Any], Adapter], run: Run, progress: Callable[[str], None] | None) -> Any:
    """The steps of the module docstring; returns the width run's ``CompileResult`` with the report completed."""
    steps = Steps(progress)
    adapter = adapter_for(model)
    adapter.load(steps)
    handler = adapter.depth()
    if handler is None:
        raise UnsupportedModelError(f"depth pruning is not available for {adapter.name} models")
    analysis: DepthAnalysis = steps("find blocks", FindBlocks().call, adapter.graph)
    macs0, params0 = graph_macs(adapter.graph), graph_params(adapter.graph)
    held = handler.hold_out() if opts.depth == "auto" else []
    criterion = resolve_criterion(opts.depth_importance, handler.has_calibration)
    scores = steps("rank blocks", score_blocks, analysis, handler, criterion) if analysis.blocks else np.zeros(0)
    search: list[dict[str, Any]] = []
    if opts.depth == "auto":
        count = _search(analysis, scores, handler, adapter, opts, run, held, macs0, search, steps)
    else:
        fraction = float(opts.depth or 0.0)  # a number here: validate() allows only numbers and "auto"
        count = removed_count(fraction, len(analysis.blocks))
        if fraction > 0 and not analysis.blocks:
            count = 1  # select_blocks says why there is nothing to remove
    removed = select_blocks(analysis, scores, count, f"depth={opts.depth!r}")
    depth_model = steps("remove blocks", handler.remove, removed)
    verification = None
    if opts.verify:
        rtol = max(opts.rtol, adapter.tolerance_floor)
        verification = steps("verify blocks", handler.verify, removed, depth_model, rtol).to_dict()
    macs_d = graph_macs(steps("measure blocks", adapter.measure, Rewritten(depth_model)))
    width_opts, note = _width_options(opts, macs0, macs_d)
    width_input, hf_note = _as_hf(adapter, depth_model, removed, opts, steps)
    result = run(width_input, width_opts, None)
    r = result.report
    r.params_before, r.macs_before = params0, macs0
    r.model, r.trace_method = adapter.model_name, adapter.trace_method
    r.settings.update(depth=opts.depth, depth_importance=opts.depth_importance)
    r.depth = _report(analysis, scores, criterion, removed, opts, macs0, macs_d, verification, search, "; ".join(x for x in (note, hf_note) if x))
    r.timings = {**steps.timings, **r.timings}
    if width_input is depth_model:
        result.source = adapter.model  # the model as given: to_hf / save_pretrained rebuild its class (compiler.hf.fewer_layers)
    return result


def _as_hf(adapter: Adapter, depth_model: Any, removed: list[Block], opts: Options, steps: Steps) -> tuple[Any, str]:
    """For a transformers model whose removed blocks are whole layers: its own class with the kept layers
    (``compiler.hf.to_hf``, outputs checked against the depth-pruned graph), so that the width pass keeps
    the config's constraints (``hf_compatible``); else the depth-pruned graph module as it is."""
    from compiler.hf import is_hf_model

    if not removed or adapter.name != "torch" or not is_hf_model(adapter.model) or getattr(opts, "hf_compatible", None) is False:
        return depth_model, ""
    from compiler.hf import to_hf

    try:
        small = steps("rebuild layers", to_hf, adapter.model, depth_model, tuple(adapter.example_inputs()))
    except UnsupportedModelError as exc:
        return depth_model, f"the width pass runs on the graph module: {exc}"
    return small, f"the width pass runs on {type(small).__name__} with {small.config.num_hidden_layers} layers"


def _width_options(opts: Options, macs0: int, macs_d: int) -> tuple[Options, str]:
    """The width policy for the depth-pruned model: ``target_macs`` stays a budget of the original's MACs."""
    base = replace(opts, depth=None)
    if opts.target_macs is not None:
        target = opts.target_macs * macs0 if opts.target_macs <= 1.0 else opts.target_macs
        if macs_d <= target:
            return replace(base, target_macs=None, ratio=0.0), "depth alone meets target_macs: no width pruning"
        return replace(base, target_macs=float(target)), f"width prunes to {int(target)} MACs"
    if all(x is None for x in (opts.ratio, opts.threshold, opts.f_nz, opts.target_latency)):
        return replace(base, ratio=0.0), "no width policy given"
    return base, ""


def _search(
    analysis: DepthAnalysis,
    scores: np.ndarray,
    handler: Any,
    adapter: Adapter,
    opts: Options,
    run: Run,
    held: list[Any],
    macs0: int,
    trials: list[dict[str, Any]],
    steps: Steps,
) -> int:
    """How many blocks to remove: the split with the best held-out cosine under the ``target_macs`` budget."""
    assert opts.target_macs is not None
    target = opts.target_macs * macs0 if opts.target_macs <= 1.0 else opts.target_macs
    calibration = handler.calibration()  # the ranking's batches: the held-out ones stay unseen
    best_k, best_q = 0, -np.inf
    for k in range(analysis.max_removable() + 1):
        removed: list[Block] = select_blocks(analysis, scores, k) if k else []
        model = handler.remove(removed) if k else None
        macs_d = graph_macs(adapter.measure(Rewritten(model))) if model is not None else macs0
        if macs_d < target:  # depth alone is past the budget: more blocks only overshoot it
            break
        wopts, _ = _width_options(replace(opts, verify=False), macs0, macs_d)
        res = steps(f"search k={k}", run, model if model is not None else adapter.model, wopts, calibration)
        q = handler.quality(res.model, held)
        trials.append({"blocks_removed": k, "macs_after_depth": macs_d, "macs": res.report.macs_after, "held_out_cosine": round(q, 6)})
        if q > best_q:
            best_k, best_q = k, q
    if not trials:
        raise InvalidArgumentError("depth='auto': no split meets target_macs")
    return best_k


def _report(
    analysis: DepthAnalysis,
    scores: np.ndarray,
    criterion: str,
    removed: list[Block],
    opts: Options,
    macs0: int,
    macs_d: int,
    verification: dict[str, Any] | None,
    search: list[dict[str, Any]],
    note: str,
) -> dict[str, Any]:
    gone = {b.name for b in removed}
    blocks = [
        {
            "name": b.name,
            "stage": b.stage,
            "branches": len(b.branches),
            "macs": b.macs,
            "params": b.params,
            "score": float(f"{s:.4g}"),
            "removed": b.name in gone,
        }
        for b, s in zip(analysis.blocks, scores.tolist(), strict=True)
    ]
    out: dict[str, Any] = {
        "depth": opts.depth,
        "criterion": criterion,
        "candidates": len(analysis.blocks),
        "removed": [b.name for b in removed],
        "macs_before": macs0,
        "macs_after_depth": macs_d,
        "blocks": blocks,
        "not_removable": [{"name": r.name, "reason": r.reason} for r in analysis.rejected],
        "verification": verification,
    }
    if search:
        out["search"] = search
    if note:
        out["note"] = note
    return out
