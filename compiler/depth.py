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

With ``target_latency`` the budget is milliseconds measured on the result's backend
(:class:`compiler.latency.LatencyTarget`, as a plain ``target_latency`` compile measures):
the original is measured once, a fraction is of that measurement, and each depth-pruned
model is measured too, so that width gets the rest of the budget as a fraction of the
depth-pruned model's own latency (which the width pass re-measures and meets in its
rounds). ``depth="auto"`` then measures every candidate split after width and picks, among
those whose measurement meets the budget, the best held-out cosine (all spend the same
budget: the best quality per millisecond); where none meets it, the fastest, with a
warning. The final model and the original are measured side by side, and the report's
``depth["latency"]`` states both, the budget in milliseconds and whether it was met.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from compiler.latency import LatencyTarget
from compiler.options import Options
from compiler.pipeline import Steps
from frontends.adapter import Adapter, Rewritten
from frontends.errors import InvalidArgumentError, UnsupportedModelError
from passes.cost import graph_macs, graph_params
from passes.depth import Block, DepthAnalysis, FindBlocks, removed_count, resolve_criterion, score_blocks, select_blocks

log = logging.getLogger(__name__)

__all__ = ["compile_depth"]

Run = Callable[[Any, Options, Any], Any]  # (model, options, calibration or None) -> CompileResult


class LatencyBudget:
    """A ``target_latency`` budget for depth and width together, in milliseconds measured on the backend."""

    def __init__(self, target: float, backend_options: dict[str, Any] | None, adapter: Adapter, steps: Steps,
                 progress: Callable[[str], None] | None) -> None:  # fmt: skip
        self.measurer = LatencyTarget(backend_options or {}, adapter.example_inputs(), progress)
        self.original = adapter.latency_model()
        self.target = target
        self.original_ms = steps("measure original", self.measurer.measure, self.original)
        self.target_ms = self.measurer.target_ms(target, self.original_ms)

    def measure(self, model: Any) -> float:
        """Median milliseconds of ``model`` on the backend at the example inputs."""
        return self.measurer.measure(model)

    def width_options(self, base: Options, depth_ms: float) -> tuple[Options, str]:
        """The width policy for a depth-pruned model measured at ``depth_ms``: the rest of the budget, as a
        fraction of its own latency (the width pass measures it again and meets that fraction)."""
        if depth_ms <= self.target_ms:
            return replace(base, target_latency=None, ratio=0.0), (
                f"depth alone meets target_latency (measured {depth_ms:.4g} ms <= {self.target_ms:.4g} ms): no width pruning"
            )
        frac = self.target_ms / depth_ms
        return replace(base, target_latency=frac), (
            f"width prunes the depth-pruned model (measured {depth_ms:.4g} ms) to {frac:.3f} of its latency ({self.target_ms:.4g} ms)"
        )

    def final(self, model: Any) -> dict[str, Any]:
        """``model`` and the original measured side by side (interleaved rounds): the budget as met or not."""
        m = self.measurer
        original_ms, measured_ms = _side_by_side(m, [self.original, model])
        target_ms = m.target_ms(self.target, original_ms)
        return {
            "target_latency": self.target,
            "runtime": m.runtime,
            "batch": m.batch,
            "original_ms": round(original_ms, 4),
            "measured_ms": round(measured_ms, 4),
            "target_ms": round(target_ms, 4),
            "met": measured_ms <= target_ms,
            "search_original_ms": round(self.original_ms, 4),
            "search_target_ms": round(self.target_ms, 4),
        }


def _side_by_side(measurer: LatencyTarget, models: list[Any]) -> list[float]:
    """Median milliseconds of each model on the measurer's backend, timed in interleaved rounds."""
    from compiler.backend import make_runner, time_interleaved

    fns = {str(i): make_runner(x, example_inputs=measurer.inputs, **measurer.options).timed_fn(*measurer.inputs) for i, x in enumerate(models)}
    t = time_interleaved(fns, batch=measurer.batch, warmup=5, runs=20, min_seconds=0.5)
    return [t[str(i)].median_ms for i in range(len(models))]


def compile_depth(
    model: Any,
    opts: Options,
    adapter_for: Callable[[Any], Adapter],
    run: Run,
    progress: Callable[[str], None] | None,
    backend_options: dict[str, Any] | None = None,
) -> Any:
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
    budget = LatencyBudget(opts.target_latency, backend_options, adapter, steps, progress) if opts.target_latency is not None else None
    chosen = None  # under a latency budget, the search's measured result for the split it picks
    if opts.depth == "auto" and budget is not None:
        count, chosen = _search_latency(analysis, scores, handler, adapter, opts, run, held, budget, search, steps)
    elif opts.depth == "auto":
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
    if chosen is not None:  # the model the search measured under the budget (verified there), not a re-planned one
        result, note = chosen
        width_input, hf_note = depth_model, ""
    else:
        if budget is not None:
            depth_ms = steps("measure depth-pruned", budget.measure, depth_model) if removed else budget.original_ms
            width_opts, note = budget.width_options(replace(opts, depth=None), depth_ms)
        else:
            width_opts, note = _width_options(opts, macs0, macs_d)
        width_input, hf_note = _as_hf(adapter, depth_model, removed, opts, steps)
        result = run(width_input, width_opts, None)
    r = result.report
    r.params_before, r.macs_before = params0, macs0
    r.model, r.trace_method = adapter.model_name, adapter.trace_method
    r.settings.update(depth=opts.depth, depth_importance=opts.depth_importance)
    r.depth = _report(analysis, scores, criterion, removed, opts, macs0, macs_d, verification, search, "; ".join(x for x in (note, hf_note) if x))
    if budget is not None:
        r.depth["latency"] = lat = steps("measure result", budget.final, result.model)
        if not lat["met"]:
            log.warning("target_latency %.4g ms not met: the result measured %.4g ms next to the original's %.4g ms",
                        lat["target_ms"], lat["measured_ms"], lat["original_ms"])  # fmt: skip
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


def _search_latency(
    analysis: DepthAnalysis,
    scores: np.ndarray,
    handler: Any,
    adapter: Adapter,
    opts: Options,
    run: Run,
    held: list[Any],
    budget: LatencyBudget,
    trials: list[dict[str, Any]],
    steps: Steps,
) -> tuple[int, tuple[Any, str]]:
    """How many blocks to remove under a ``target_latency`` budget, and the result to keep: every split is
    compiled (verified as the options say) and measured after width; among those that meet the budget, the
    best held-out cosine; where none does, the fastest. The chosen split's result is the compile's result
    (re-planning it would measure, and land, differently)."""
    calibration = handler.calibration()  # the ranking's batches: the held-out ones stay unseen
    best: tuple[float, int, Any, str] | None = None  # (cosine, k, result, note) among the splits that met the budget
    fastest: tuple[float, int, Any, str] | None = None  # (measured ms, k, result, note)
    for k in range(analysis.max_removable() + 1):
        removed: list[Block] = select_blocks(analysis, scores, k) if k else []
        model = handler.remove(removed) if k else None
        depth_ms = steps(f"measure k={k}", budget.measure, model) if model is not None else budget.original_ms
        wopts, note = budget.width_options(replace(opts, depth=None), depth_ms)
        res = steps(f"search k={k}", run, model if model is not None else adapter.model, wopts, calibration)
        ms = steps(f"measure k={k} pruned", budget.measure, res.model)
        q = handler.quality(res.model, held)
        met = ms <= budget.target_ms
        trials.append({
            "blocks_removed": k, "depth_ms": round(depth_ms, 4), "measured_ms": round(ms, 4), "met": met,
            "macs": res.report.macs_after, "held_out_cosine": round(q, 6), "chosen": False,
        })  # fmt: skip
        if met and (best is None or q > best[0]):
            best = (q, k, res, note)
        if fastest is None or ms < fastest[0]:
            fastest = (ms, k, res, note)
        if depth_ms <= budget.target_ms:  # depth alone meets the budget: more blocks only overshoot it
            break
    assert fastest is not None  # k = 0 always runs
    if best is None:
        log.warning("depth='auto': no split measured under target_latency %.4g ms; keeping the fastest (%d blocks removed, %.4g ms)",
                    budget.target_ms, fastest[1], fastest[0])  # fmt: skip
    _, k, res, note = best or fastest
    trials[k]["chosen"] = True
    return k, (res, note)


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
