"""The compile report: what was pruned, what was frozen and why, and what it saved."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Report", "LayerReport", "GroupReport", "FrozenOp", "GraphView", "GraphNode", "GraphBlock", "text_table"]


@dataclass
class LayerReport:
    name: str
    target: str
    in_channels: tuple[int, int]  # (before, after)
    out_channels: tuple[int, int]
    macs: tuple[int, int]
    params: tuple[int, int] = (0, 0)  # trainable parameters of the layer's own constants (weight, bias)
    kind: str = ""  # neutral op kind: conv, linear, matmul, embedding
    group: int | None = None  # the coupling group of its output channels (None: not scored)


@dataclass
class GroupReport:
    id: int
    members: list[str]  # layers whose output channels form the group
    channels_before: int
    channels_after: int
    frozen_channels: int
    reasons: list[str]  # why channels are frozen
    saliency: tuple[float, float, float] | None  # min, median, max over the group's channels
    equalization: str = ""  # how members' scores were combined ("none": one layer, or scored per channel)
    saliency_values: list[float | None] = field(default_factory=list)  # per coupled channel, 4 significant digits
    removed: list[int] = field(default_factory=list)  # indices into saliency_values the plan removes
    frozen_indices: list[int] = field(default_factory=list)  # indices into saliency_values never pruned

    @property
    def frozen(self) -> bool:
        return self.frozen_channels == self.channels_before


@dataclass
class FrozenOp:
    name: str
    target: str
    label: str


@dataclass
class GraphBlock:
    """A module scope (``layer1.0``) that groups ops in the graph view."""

    name: str
    parent: int | None  # index into GraphView.blocks
    type: str = ""  # module class name where the frontend knows it


@dataclass
class GraphNode:
    """One op of the graph view."""

    name: str  # label: module path or node name
    kind: str  # neutral op kind
    target: str  # source op type
    block: int | None  # innermost enclosing block (index into GraphView.blocks)
    groups: list[int]  # coupling groups of its output channels
    channels: tuple[int, int] | None  # output channels (before, after); None: no channel structure tracked
    shape: list[int] | None  # shape of its first output before pruning
    frozen: bool  # its output channels are all frozen, or the op itself froze them
    unknown: bool  # an op the registry does not know that froze tracked channels
    layer: int | None  # index into Report.layers
    side: bool = False  # computes from no channel (masks, positions): folded out of the page's default view


@dataclass
class GraphView:
    """A compact op-level graph for pictures: nodes in topological order, edges as index pairs."""

    nodes: list[GraphNode] = field(default_factory=list)
    edges: list[tuple[int, int]] = field(default_factory=list)
    blocks: list[GraphBlock] = field(default_factory=list)


@dataclass
class Report:
    model: str
    framework: str
    trace_method: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    settings: dict[str, Any]
    layers: list[LayerReport] = field(default_factory=list)
    groups: list[GroupReport] = field(default_factory=list)
    frozen_ops: list[FrozenOp] = field(default_factory=list)
    verification: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    graph: GraphView | None = None
    channel_free_ops: list[FrozenOp] = field(default_factory=list)  # not in the registry, but touched no channel
    depth: dict[str, Any] | None = None  # depth pruning (compiler.depth): blocks, scores, what was removed, its check
    experts: dict[str, Any] | None = None  # expert removal (compiler.experts): per layer each expert's load and score, its check

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["macs_ratio"] = self.macs_ratio
        d["params_ratio"] = self.params_ratio
        for g, gd in zip(self.groups, d["groups"], strict=True):
            gd["frozen"] = g.frozen
        return d

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str, **kw)

    def summary(self) -> str:
        n_pruned = sum(1 for g in self.groups if g.channels_after < g.channels_before)
        n_frozen = sum(1 for g in self.groups if g.frozen)
        lines = [
            f"model        {self.model} ({self.framework}, traced by {self.trace_method})",
            f"parameters   {_h(self.params_before)} -> {_h(self.params_after)} ({self.params_ratio:.3f}x)",
            f"MACs         {_h(self.macs_before)} -> {_h(self.macs_after)} ({self.macs_ratio:.3f}x)",
            f"groups       {len(self.groups)} ({n_pruned} pruned, {n_frozen} frozen)",
        ]
        if self.frozen_ops:
            names = ", ".join(f"{o.label or o.name} [{o.target}]" for o in self.frozen_ops[:6])
            more = f" and {len(self.frozen_ops) - 6} more" if len(self.frozen_ops) > 6 else ""
            lines.append(f"unknown ops  {len(self.frozen_ops)} froze their channels: {names}{more}")
        if self.channel_free_ops:
            names = ", ".join(o.label or o.name for o in self.channel_free_ops[:6])
            more = f" and {len(self.channel_free_ops) - 6} more" if len(self.channel_free_ops) > 6 else ""
            lines.append(f"side ops     {len(self.channel_free_ops)} not in the registry touched no channel, froze nothing: {names}{more}")
        if self.depth is not None:
            lines.append(_depth_line(self.depth))
        if self.experts is not None:
            lines.append(_experts_line(self.experts))
        if self.verification is not None:
            v = self.verification
            state = "passed" if v["passed"] else "FAILED"
            lines.append(
                f"verified     {state}: max abs error {v['max_abs_error']:.2e} "
                f"(tolerance {v['tolerance']:.1e}, {v['dtype']}) against the original with removed channels zeroed; "
                f"compared: {v.get('basis', 'outputs')}"
            )
        else:
            lines.append("verified     no (verify=False)")
        return "\n".join(lines)

    def groups_table(self, limit: int | None = None) -> str:
        """One row per coupling group; ``why`` refers to the numbered reasons listed below the table."""
        reasons = list(dict.fromkeys(r for g in self.groups for r in g.reasons))
        ref = {r: i + 1 for i, r in enumerate(reasons)}
        rows = [("group", "channels", "kept", "equalization", "saliency min/med/max", "frozen", "why", "members")]
        shown = self.groups[: limit or len(self.groups)]
        for g in shown:
            members = ", ".join(g.members[:3]) + (f" +{len(g.members) - 3}" if len(g.members) > 3 else "")
            sal = "-" if g.saliency is None else "/".join(f"{s:.2f}" for s in g.saliency)
            frozen = "all" if g.frozen else (str(g.frozen_channels) if g.frozen_channels else "")
            why = ",".join(str(ref[r]) for r in g.reasons[:4]) + ("+" if len(g.reasons) > 4 else "")
            eq = g.equalization or "-"
            rows.append((str(g.id), str(g.channels_before), str(g.channels_after), eq, sal, frozen, why, members))
        text = text_table(rows)
        if limit and len(self.groups) > limit:
            text += f"\n... {len(self.groups) - limit} more groups (all of them: report.groups_table())"
        if reasons:
            text += "\nfrozen because:\n" + "\n".join(f"  {ref[r]:>2}. {r}" for r in reasons[:20])
            if len(reasons) > 20:
                text += f"\n  ... {len(reasons) - 20} more (see --json or --html)"
        return text

    def layers_table(self, limit: int | None = None) -> str:
        rows = [("layer", "op", "group", "in", "out", "params before", "params after", "MACs before", "MACs after")]
        for lr in self.layers[: limit or len(self.layers)]:
            rows.append(
                (
                    lr.name,
                    lr.target,
                    "-" if lr.group is None else str(lr.group),
                    _arrow(lr.in_channels),
                    _arrow(lr.out_channels),
                    _h(lr.params[0]),
                    _h(lr.params[1]),
                    _h(lr.macs[0]),
                    _h(lr.macs[1]),
                )
            )
        text = text_table(rows)
        if limit and len(self.layers) > limit:
            text += f"\n... {len(self.layers) - limit} more layers (all of them: report.layers_table())"
        return text

    def to_html(self, path: str | os.PathLike[str], compare: Report | None = None) -> None:
        """Write the inspection page (one self-contained HTML file) atomically.

        ``compare``: the report of a pruned model of the same architecture; the page
        then compares per-layer channel counts with it.
        """
        from compiler.html_report import write_html

        write_html(self, path, compare=compare)

    def __str__(self) -> str:
        return self.summary() + "\n\n" + self.groups_table(limit=30) + "\n\n" + self.layers_table(limit=40)


def _arrow(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}->{pair[1]}"


def _h(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def text_table(rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: the first row is the header, columns padded to their widest cell."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for k, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _experts_line(d: dict[str, Any]) -> str:
    """The summary line of expert removal: how many experts went, on what data, and its verification."""
    v = d.get("verification")
    check = f"; verified {'passed' if v['passed'] else 'FAILED'} (max abs error {v['max_abs_error']:.2e}) against the original with their router logits at -inf" if v else ""
    return f"experts      removed {d['removed']} of {d['candidates']} by routed load x saliency on the {d['data']}; {d['config']}{check}"


def _depth_line(d: dict[str, Any]) -> str:
    """The summary line of depth pruning: blocks removed, by what criterion, and its verification."""
    gone = ", ".join(d["removed"][:6]) + (f" and {len(d['removed']) - 6} more" if len(d["removed"]) > 6 else "")
    v = d.get("verification")
    check = (
        f"; verified {'passed' if v['passed'] else 'FAILED'} (max abs error {v['max_abs_error']:.2e}) against the original "
        "with those branches zeroed"
        if v
        else ""
    )
    lat = d.get("latency")
    budget = (
        f"; {lat['measured_ms']:.4g} ms next to the original's {lat['original_ms']:.4g} ms on {lat['runtime']}: "
        f"target_latency {lat['target_ms']:.4g} ms {'met' if lat['met'] else 'NOT met'}"
        if lat
        else ""
    )
    return f"depth        removed {len(d['removed'])} of {d['candidates']} blocks by {d['criterion']}: {gone or 'none'}{check}{budget}"
