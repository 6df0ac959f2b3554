"""The pipeline: one linear function of named steps per source format."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.report import FrozenOp, GroupReport, LayerReport, Report
from frontends.errors import PrunecError
from frontends.graph import ChannelGraph
from passes.channel_analysis import AnalysisResult, ChannelAnalysis
from passes.cost import graph_macs, graph_params, op_macs
from passes.saliency import Saliency, SaliencyResult
from passes.selection import Selection, SelectionResult

log = logging.getLogger(__name__)

__all__ = ["Options", "Plan", "plan", "build_report", "Steps"]


@dataclass
class Options:
    ratio: float | None = None
    threshold: float | None = None
    target_macs: float | None = None
    importance: str = "l2"
    equalization: str = "arithmetic_mean"
    normalizer: str = "max"
    granularity: int = 8
    min_channels: int = 1
    scope: str = "local"
    ignore: Sequence[str] = ()
    verify: bool = True
    rtol: float = 1e-5
    seed: int = 0

    def settings(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ignore"] = list(self.ignore)
        return d


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


def plan(graph: ChannelGraph, opts: Options, steps: Steps) -> Plan:
    """Analysis, saliency and selection: the format-independent middle of the pipeline."""
    analysis = steps("analyze", ChannelAnalysis(opts.ignore).call, graph)
    saliency = steps(
        "saliency", Saliency(opts.importance, opts.equalization, opts.normalizer, opts.seed).call, analysis
    )
    selector = Selection(
        ratio=opts.ratio,
        threshold=opts.threshold,
        target_macs=opts.target_macs,
        scope=opts.scope,
        granularity=opts.granularity,
        min_channels=opts.min_channels,
    )
    selection = steps("select", selector.call, analysis, saliency.scores)
    return Plan(analysis, saliency, selection)


def build_report(
    model_name: str,
    trace_method: str,
    p: Plan,
    after: ChannelGraph | None,
    opts: Options,
    verification: dict[str, Any] | None,
    timings: dict[str, float],
) -> Report:
    a, pruned = p.analysis, p.selection.pruned
    g = a.graph
    shape_after = lambda v: a.pruned_shape(v, pruned)  # noqa: E731
    macs_before = graph_macs(g)
    params_before = graph_params(g)
    if after is not None:
        macs_after, params_after = graph_macs(after), graph_params(after)
        if macs_after != p.selection.planned_macs:
            raise PrunecError(
                f"internal check failed: pruned graph has {macs_after} MACs, the plan said {p.selection.planned_macs}"
            )
    else:
        macs_after, params_after = p.selection.planned_macs, graph_params(g, shape_after)
    layers: list[LayerReport] = []
    for op in g.ops.values():
        if op.kind not in ("conv", "linear", "matmul", "embedding"):
            continue
        x, y = op.inputs[0], op.outputs[0]
        ax_in = 1 if op.kind == "conv" else -1
        ax_out = 1 if op.kind == "conv" else -1
        layers.append(
            LayerReport(
                op.label or op.name,
                op.target,
                (g.shape(x)[ax_in] if g.shape(x) else 0, shape_after(x)[ax_in] if g.shape(x) else 0)
                if op.kind != "embedding"
                else (0, 0),
                (g.shape(y)[ax_out], shape_after(y)[ax_out]),
                (op_macs(op, g.shape), op_macs(op, shape_after)),
            )
        )
    groups: list[GroupReport] = []
    op_label = {op.name: op.label or op.name for op in g.ops.values()}
    for grp in a.groups:
        kept = ~pruned[grp.classes]
        sal = p.saliency.scores[grp.classes]
        sal = sal[~np.isnan(sal)]
        stats = (float(sal.min()), float(np.median(sal)), float(sal.max())) if sal.size else None
        groups.append(
            GroupReport(
                grp.id,
                [op_label.get(m, m) for m in grp.producers],
                int(grp.widths.sum()),
                int(grp.widths[kept].sum()),
                int(grp.widths[grp.frozen].sum()),
                list(grp.reasons),
                stats,
            )
        )
    frozen_ops = [FrozenOp(u.op, u.target, u.label) for u in a.unknown_ops]
    settings = opts.settings()
    if p.selection.ratio is not None:
        settings["ratio_used"] = p.selection.ratio
    return Report(
        model_name,
        g.framework,
        trace_method,
        params_before,
        params_after,
        macs_before,
        macs_after,
        settings,
        layers,
        groups,
        frozen_ops,
        verification,
        timings,
    )


def _finite(x: float) -> bool:
    return math.isfinite(x)
