"""The pipeline: one linear function of named steps (``compile_with``) over any framework adapter."""

from __future__ import annotations

import difflib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.graph_view import build_graph_view, unknown_ops_that_froze
from compiler.options import Options
from compiler.report import FrozenOp, GroupReport, LayerReport, Report
from frontends.adapter import Adapter, Rewritten
from frontends.errors import InternalError, InvalidArgumentError, UnsupportedModelError
from frontends.graph import ChannelGraph
from passes.channel_analysis import AnalysisResult, ChannelAnalysis
from passes.cost import graph_macs, graph_params, op_macs
from passes.importance import CRITERIA, require
from passes.saliency import Saliency, SaliencyResult
from passes.selection import CostSelection, Selection, SelectionResult

log = logging.getLogger(__name__)

__all__ = ["Plan", "plan", "select_latency", "build_report", "Steps", "compile_with", "Compiled", "latency_setup"]


class Steps:
    """Runs named steps, times them, and reports progress."""

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.progress:
            self.progress(f"{name} ...")
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        self.timings[name] = round(time.perf_counter() - t, 4)
        if self.progress:
            self.progress(f"{name} done in {self.timings[name]:.2f}s")
        return out


@dataclass
class Plan:
    analysis: AnalysisResult
    saliency: SaliencyResult
    selection: SelectionResult
    data: Any = None  # the DataCriteria used, if any
    latency: Any = None  # the LatencyModel used for target_latency, if any
    hf: dict[str, Any] | None = None  # hf_compatible: what the config constraint cost and froze (compiler.hf_constraints)
    sensitivity: dict[str, Any] | None = None  # allocation="sensitivity": per group the ratio chosen and the damage measured


def _block(opts: Options) -> int:
    """The channel block the selection rounds to: ``compile_with`` has measured ``"auto"`` by then; a plan made
    outside it (``plan`` called directly) rounds to none."""
    return opts.channel_block if isinstance(opts.channel_block, int) else 1


def select_latency(
    analysis: AnalysisResult, scores: np.ndarray, model: Any, target: float, opts: Options, measure: str = "latency"
) -> SelectionResult:
    """Channels ranked by saliency per millisecond saved (``model``, a ``LatencyModel``), removed until
    the estimated latency meets ``target`` ms (``measure="latency"``) or the MACs meet ``target``
    (``measure="macs"``: a fraction of the original's when <= 1, else a count)."""
    selector = CostSelection(granularity=opts.granularity, min_channels=opts.min_channels, block=_block(opts))
    cost = model.channel_cost()
    per_ms = np.where(np.isnan(scores), np.nan, scores / (cost / np.nanmean(cost)))
    if measure == "latency":
        return selector.call(analysis, per_ms, model.estimate, target)
    base = graph_macs(analysis.graph)
    limit = target * base if target <= 1.0 else target
    return selector.call(analysis, per_ms, lambda p: graph_macs(analysis.graph, lambda v: analysis.pruned_shape(v, p)), limit)


def plan(
    graph: ChannelGraph,
    opts: Options,
    steps: Steps,
    make_data: Callable[[AnalysisResult], Any] | None = None,
    latency: Callable[[AnalysisResult], Any] | None = None,
    constraint_for: Callable[[AnalysisResult], Any] | None = None,
) -> Plan:
    """Analysis, saliency and selection: the format-independent middle of the pipeline.

    ``make_data(analysis)`` builds the model-and-data view (``DataCriteria``) that
    data-driven criteria, the dead-unit policy and weight updates need;
    ``latency(analysis)`` the measured cost model (``LatencyModel``) that a
    ``target_latency`` (in milliseconds, here) is met with. The cases:
    the dead-unit policy (``f_nz``), a latency target or latency allocation of a
    MACs target (cost-driven selection on measured tables), and the saliency
    policies (``ratio``, ``threshold``, ``target_macs``).
    """
    if opts.importance == "auto":  # unresolved (no adapter to say what data there is): the data-free default
        from dataclasses import replace

        opts = replace(opts, importance="l2")
    analysis = steps("analyze", ChannelAnalysis(opts.ignore, {"attention": opts.attention}).call, graph)
    needs = CRITERIA[opts.importance].runs_model or opts.f_nz is not None or opts.propagate_bias or opts.compensates
    needs = needs or opts.allocation == "sensitivity"
    data = make_data(analysis) if (needs and make_data is not None) else None
    if needs and data is None:
        raise InternalError(f"importance={opts.importance!r} and weight updates need a model that can run here")
    if opts.f_nz is not None:
        assert data is not None  # f_nz makes `needs` true: without data we raised above
        return _plan_dead_units(analysis, data, opts, steps)
    scorer = Saliency(opts.importance, opts.equalization, opts.normalizer, opts.seed, reduce=opts.statistics_reducer)
    saliency = steps("saliency", scorer.call, analysis, data)
    if opts.allocation == "sensitivity":
        return _plan_by_sensitivity(analysis, saliency, data, opts, steps)
    if opts.target_latency is not None or (opts.target_macs is not None and opts.allocation == "latency"):
        return _plan_on_latency_tables(analysis, saliency, data, opts, steps, latency)
    selector = Selection(
        ratio=opts.ratio,
        threshold=opts.threshold,
        target_macs=opts.target_macs,
        scope=opts.scope,
        granularity=opts.granularity,
        min_channels=opts.min_channels,
        block=_block(opts),
    )
    if constraint_for is not None:  # hf_compatible: every plan the policy considers, repaired (compiler.hf_constraints)
        return _plan_constrained(analysis, saliency, data, selector, constraint_for(analysis), steps)
    return Plan(analysis, saliency, steps("select", selector.call, analysis, saliency.scores), data)


def _plan_constrained(
    analysis: AnalysisResult, saliency: SaliencyResult, data: Any, selector: Selection, constraint: Any, steps: Steps
) -> Plan:
    """The selection under ``constraint`` (``repair``, ``freeze``), and what it cost against the plan without it."""
    from dataclasses import replace

    free = selector.call(analysis, saliency.scores)
    selection = steps("select", replace(selector, constraint=constraint.repair).call, analysis, saliency.scores)
    frozen = constraint.freeze(analysis, selection.pruned)
    hf = {
        "config": constraint.cfg_name,
        "macs_unconstrained": int(free.planned_macs),
        "macs_constrained": int(selection.planned_macs),
        "frozen": frozen,
    }
    return Plan(analysis, saliency, selection, data, hf=hf)


def _plan_dead_units(analysis: AnalysisResult, data: Any, opts: Options, steps: Steps) -> Plan:
    """``f_nz``: remove channels whose fan-in or fan-out has at most that fraction of non-zero weights."""
    assert opts.f_nz is not None
    raw = steps("saliency", data.nz_fraction)
    scores = np.full(analysis.n_classes, np.nan)
    for grp in analysis.groups:
        scores[grp.classes] = raw[grp.classes]
    saliency = SaliencyResult(scores, {}, "nz_fraction", opts.equalization)
    selector = Selection(threshold=opts.f_nz + 1e-9, granularity=opts.granularity, min_channels=opts.min_channels,
                         block=_block(opts))
    return Plan(analysis, saliency, steps("select", selector.call, analysis, saliency.scores), data)


def _plan_on_latency_tables(
    analysis: AnalysisResult,
    saliency: SaliencyResult,
    data: Any,
    opts: Options,
    steps: Steps,
    latency: Callable[[AnalysisResult], Any] | None,
) -> Plan:
    """``target_latency`` (ms), or ``target_macs`` with ``allocation="latency"``: saliency per measured ms saved."""
    if latency is None:
        what = "target_latency" if opts.target_latency is not None else "allocation='latency'"
        raise InternalError(f"{what} needs a runtime to measure the model on")
    model = steps("latency tables", latency, analysis)
    if opts.target_latency is not None:
        selection = steps("select", select_latency, analysis, saliency.scores, model, opts.target_latency, opts)
    else:
        assert opts.target_macs is not None
        selection = steps("select", select_latency, analysis, saliency.scores, model, opts.target_macs, opts, "macs")
    return Plan(analysis, saliency, selection, data, model)


def _plan_by_sensitivity(analysis: AnalysisResult, saliency: SaliencyResult, data: Any, opts: Options, steps: Steps) -> Plan:
    """``allocation="sensitivity"``: the ``target_macs`` (MACs) or ``ratio`` (channels the uniform ratio removes)
    budget spread over the groups by the damage each does alone on the calibration data (passes.allocation)."""
    from passes.allocation import SensitivityAllocation

    if not hasattr(data, "damage"):
        raise UnsupportedModelError("allocation='sensitivity' needs an adapter that can run candidate plans on the calibration data")
    planned = lambda p: float(graph_macs(analysis.graph, lambda v: analysis.pruned_shape(v, p)))  # noqa: E731
    if opts.target_macs is not None:
        base = graph_macs(analysis.graph)
        target = opts.target_macs * base if opts.target_macs <= 1.0 else float(opts.target_macs)
        cost, budget = planned, f"target_macs={opts.target_macs}: planned MACs at most {int(target)} of {base}"
    else:
        assert opts.ratio is not None, "Options.validate leaves ratio or target_macs"
        groups = [g for g in analysis.groups if g.prunable]
        cost = lambda p: float(sum(g.widths[~g.frozen & ~p[g.classes]].sum() for g in groups))  # noqa: E731
        uniform = Selection(ratio=opts.ratio, granularity=opts.granularity, min_channels=opts.min_channels,
                            block=_block(opts))
        target = cost(uniform.call(analysis, saliency.scores).pruned)
        budget = f"ratio={opts.ratio}: at most the {int(target)} prunable channels the uniform ratio keeps"
    updates = None
    if opts.compensates:  # each probe measured with the weight updates the compile would make for its plan
        updates = lambda p: weight_updates(Plan(analysis, saliency, SelectionResult(p, None, 0), data), opts, Steps())[0]  # noqa: E731
    allocator = SensitivityAllocation(
        opts.granularity, opts.min_channels, mean_replacement=opts.propagate_bias, progress=steps.progress, updates=updates
    )
    result = steps("sensitivity", allocator.call, analysis, saliency.scores, data, cost, target, budget)
    selection = SelectionResult(result.pruned, None, int(planned(result.pruned)))
    return Plan(analysis, saliency, selection, data, sensitivity=result.to_dict())


def weight_updates(p: Plan, opts: Options, steps: Steps) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """OBS compensation and bias propagation, as new values of constants (full, unpruned shapes)."""
    updates: dict[str, np.ndarray] = {}
    info: dict[str, Any] = {}
    done: set[str] = set()
    if opts.compensates and p.data is not None:
        if opts.compensate == "sequential":  # each layer on the inputs of the model pruned and compensated up to it
            if not hasattr(p.data, "sequential_compensation"):
                raise InvalidArgumentError("compensate='sequential' needs the torch adapter (it re-runs the pruned model layer by layer)")
            u, done = steps("compensate", p.data.sequential_compensation, p.selection.pruned, opts.statistics_reducer)
        else:
            u, done = steps("compensate", p.data.obs_compensation, p.selection.pruned, None, opts.statistics_reducer)
        updates.update(u)
        info["compensated_layers"] = len(done)
        if getattr(p.data, "compensation_report", None) is not None:  # the held-out guard's decisions
            info["compensation"] = p.data.compensation_report
    if opts.propagate_bias and p.data is not None:
        u, skipped = steps("propagate bias", p.data.bias_propagation, p.selection.pruned, done)
        updates.update(u)
        info["bias_propagated_constants"] = len(u)
        if skipped:
            info["bias_propagation_skipped"] = sorted(set(skipped))
    updates = {k: opts.reduce(updates[k]) for k in sorted(updates)}  # across processes, where set (workflows)
    return updates, info


def build_report(
    model_name: str,
    trace_method: str,
    p: Plan,
    after: ChannelGraph | None,
    opts: Options,
    verification: dict[str, Any] | None,
    timings: dict[str, float],
    extra_settings: dict[str, Any] | None = None,
) -> Report:
    """The report of one compile; ``after`` (the pruned model lowered again) must have the MACs the plan said."""
    a, pruned = p.analysis, p.selection.pruned
    g = a.graph
    shape_after = lambda v: a.pruned_shape(v, pruned)  # noqa: E731
    macs_before, params_before = graph_macs(g), graph_params(g)
    if after is not None:
        macs_after, params_after = graph_macs(after), graph_params(after)
        if macs_after != p.selection.planned_macs:
            raise InternalError(f"the pruned graph has {macs_after} MACs, the plan said {p.selection.planned_macs}")
    else:
        macs_after, params_after = p.selection.planned_macs, graph_params(g, shape_after)
    layers, layer_of = _layer_reports(a, shape_after)
    groups = _group_reports(p)
    froze = unknown_ops_that_froze(a)  # an unknown op on masks or positions froze nothing: not reported as one
    unknown = {u.op for u in froze}
    graph_view = build_graph_view(a, layer_of, unknown, shape_after)
    frozen_ops = [FrozenOp(u.op, u.target, u.label) for u in froze]
    channel_free = [FrozenOp(u.op, u.target, u.label) for u in a.unknown_ops if u.op not in unknown]
    settings = opts.settings()
    if p.selection.ratio is not None:
        settings["ratio_used"] = p.selection.ratio
    if p.hf is not None:
        settings["hf_constraint"] = p.hf
    if p.sensitivity is not None:
        settings["sensitivity"] = p.sensitivity
    settings.update(extra_settings or {})
    return Report(
        model_name, g.framework, trace_method, params_before, params_after, macs_before, macs_after, settings,
        layers, groups, frozen_ops, verification, timings, graph_view, channel_free,
    )  # fmt: skip


_LAYER_KINDS = ("conv", "linear", "matmul", "embedding", "addmm", "recurrent")


def _layer_reports(a: AnalysisResult, shape_after: Callable[[str], tuple[int, ...]]) -> tuple[list[LayerReport], dict[str, int]]:
    """One row per layer (conv, linear, matmul, embedding, addmm, recurrent): channels, MACs and own parameters
    before and after."""
    g = a.graph
    layers: list[LayerReport] = []
    layer_of: dict[str, int] = {}
    producer_group = {name: grp.id for grp in a.groups for name in grp.producers}
    for op in g.ops.values():
        if op.kind not in _LAYER_KINDS:
            continue
        x, y = op.inputs[0], op.outputs[0]
        ax = 1 if op.kind == "conv" else -1
        own = [v for v in op.tensor_inputs() if g.values[v].is_const and g.values[v].trainable]
        channels_in = (0, 0)
        if x is not None and g.values[x].is_tensor and g.shape(x) and op.kind != "embedding":
            channels_in = (g.shape(x)[ax], shape_after(x)[ax])
        layer_of[op.name] = len(layers)
        layers.append(
            LayerReport(
                op.label or op.name,
                op.target,
                channels_in,
                (g.shape(y)[ax], shape_after(y)[ax]),
                (op_macs(op, g.shape), op_macs(op, shape_after)),
                (sum(math.prod(g.shape(v)) for v in own), sum(math.prod(shape_after(v)) for v in own)),
                op.kind,
                producer_group.get(op.name),
            )
        )
    return layers, layer_of


def _group_reports(p: Plan) -> list[GroupReport]:
    """One row per coupling group: channels before/after/frozen, why frozen, saliency spread, what was removed."""
    a, pruned = p.analysis, p.selection.pruned
    op_label = {op.name: op.label or op.name for op in a.graph.ops.values()}
    scored_per_unit = criterion_level(p.saliency.importance) == "unit"
    groups: list[GroupReport] = []
    for grp in a.groups:
        kept = ~pruned[grp.classes]
        sal_all = p.saliency.scores[grp.classes]
        sal = sal_all[~np.isnan(sal_all)]
        stats = (float(sal.min()), float(np.median(sal)), float(sal.max())) if sal.size else None
        equalization = p.saliency.equalization if scored_per_unit and len(grp.producers) > 1 else "none"
        groups.append(
            GroupReport(
                grp.id,
                [op_label.get(m, m) for m in grp.producers],
                int(grp.widths.sum()),
                int(grp.widths[kept].sum()),
                int(grp.widths[grp.frozen].sum()),
                list(grp.reasons),
                stats,
                equalization,
                [None if np.isnan(s) else float(f"{s:.4g}") for s in sal_all.tolist()],
                np.flatnonzero(~kept).tolist(),
                np.flatnonzero(grp.frozen).tolist(),
            )
        )
    return groups


def criterion_level(name: str) -> str:
    """``"unit"`` for criteria that score producers' units (equalized across a group), else ``"class"``
    (also for the ``f_nz`` policy's ``nz_fraction``, which is no registered criterion)."""
    c = CRITERIA.get(name)
    return c.level if c is not None else "class"


# ---------------------------------------------------------------------------
# the one pipeline


@dataclass
class Compiled:
    """What one run of the pipeline made: the pruned model, the plan it came from, the report."""

    model: Any
    plan: Plan
    report: Report


def required_capabilities(opts: Options) -> frozenset[str]:
    """What the adapter must supply for these options: the criterion's needs, plus weight updates."""
    needs = set(CRITERIA[opts.importance].needs)
    if opts.f_nz is not None or opts.propagate_bias or opts.compensates:
        needs |= {"activations", "weight_updates"}
    return frozenset(needs)


def check_capabilities(adapter: Adapter, opts: Options) -> None:
    """Refuse, in one line, options the adapter cannot serve, naming the criteria it can."""
    require(opts.importance, adapter.capabilities, adapter.name)
    missing = required_capabilities(opts) - adapter.capabilities
    if missing:
        raise UnsupportedModelError(
            f"f_nz, bias propagation and compensation need {' and '.join(sorted(missing))}, which the {adapter.name} "
            "adapter cannot supply"
        )


def check_ignored_names(graph: ChannelGraph, ignore: Sequence[str]) -> None:
    """Every name in ``ignore=`` must name a layer of the model (its module path or node name); a name that
    matches nothing would silently protect nothing, so it is refused with the closest names there are."""
    known = {op.label for op in graph.ops.values() if op.label} | set(graph.ops)
    for name in ignore:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise InvalidArgumentError(f"ignore={name!r} names no layer of the model (module paths or node names){hint}")


def compile_with(
    adapter: Adapter, opts: Options, progress: Callable[[str], None] | None, backend_options: dict[str, Any]
) -> Compiled:
    """load -> plan (analyze, saliency, select) -> weight updates -> rewrite -> verify -> measure -> report."""
    from compiler.memory import release_large_allocations

    release_large_allocations()  # layer-sized temporaries back to the OS when freed: peak memory near the weights
    steps = Steps(progress)
    adapter.load(steps)
    from compiler.channel_block import resolve_channel_block
    from compiler.defaults import calibration_samples, resolve_importance, splittable

    n_cal = calibration_samples(adapter)
    if opts.allocation == "sensitivity" and n_cal is None:
        raise InvalidArgumentError("allocation='sensitivity' measures each group's damage on calibration data: pass calibration=")
    opts, choice = resolve_importance(opts, n_cal, adapter.capabilities, splittable(adapter, n_cal))  # importance="auto"
    opts, block_info = resolve_channel_block(opts, backend_options, adapter.name == "onnx", progress)
    check_capabilities(adapter, opts)
    check_ignored_names(adapter.graph, opts.ignore)
    latency, run_opts = latency_setup(opts, backend_options, adapter.example_inputs(), progress, steps, adapter.latency_model)
    make_data = lambda analysis: adapter.criteria_data(analysis, opts)  # noqa: E731
    constraint_for = _hf_constraint(adapter, opts)
    p = plan(adapter.graph, run_opts, steps, make_data, latency.cost_model if latency is not None else None, constraint_for)

    def build(p: Plan) -> tuple[dict[str, np.ndarray], dict[str, Any], Rewritten]:
        updates, info = weight_updates(p, opts, steps)
        return updates, info, steps("rewrite", adapter.rewrite, p, updates)

    if latency is None or opts.target_latency is None:
        updates, info, rewritten = build(p)
    else:
        p, (updates, info, rewritten), met = latency.meet(p, run_opts.target_latency, run_opts, build, lambda b: b[2].model)
        info = {**info, "latency": {**met, "original_ms": round(latency.original_ms, 4)}}
    verification = None
    if opts.verify:
        rtol = max(opts.rtol, adapter.tolerance_floor)
        verification = steps("verify", adapter.verify, p, rewritten, updates, rtol)
    after = steps("measure", adapter.measure, rewritten)
    settings = {**rewritten.info, **info}
    if choice is not None:
        settings["importance_choice"] = choice
    if block_info is not None:
        settings["channel_block_choice"] = block_info
    report = build_report(adapter.model_name, adapter.trace_method, p, after, opts, verification, steps.timings, settings)
    return Compiled(rewritten.model, p, report)


def _hf_constraint(adapter: Adapter, opts: Options) -> Callable[[AnalysisResult], Any] | None:
    """``hf_compatible`` (None: on for a transformers ``PreTrainedModel``): the constraint on the plan, or None."""
    if opts.hf_compatible is False:
        return None
    if opts.f_nz is not None or opts.target_latency is not None or opts.allocation in ("latency", "sensitivity"):
        if opts.hf_compatible:
            raise InvalidArgumentError("hf_compatible=True goes with ratio=, threshold= or target_macs= (uniform allocation)")
        return None
    model = getattr(adapter, "model", None)
    from compiler.hf import is_hf_model

    if not is_hf_model(model):
        if opts.hf_compatible:
            raise InvalidArgumentError(f"hf_compatible=True needs a transformers PreTrainedModel, got {type(model).__name__}")
        return None
    from compiler.hf_constraints import HfConstraint

    return lambda analysis: HfConstraint(model, analysis, opts.attention)


class _Latency:
    """What ``target_latency`` needs in a compile: the measurer, the original's latency, the cost model."""

    def __init__(self, target: Any, original_ms: float, granularity: int, progress: Callable[[str], None] | None) -> None:
        self.target, self.original_ms, self.granularity, self.progress = target, original_ms, granularity, progress

    def cost_model(self, analysis: Any) -> Any:
        from compiler.latency import LatencyModel

        return LatencyModel(analysis, self.target.timer, self.original_ms, self.granularity, self.progress)

    def meet(self, *args: Any) -> Any:
        return self.target.meet(*args)


def latency_setup(
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
