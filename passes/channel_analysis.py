"""Analysis pass: channel atoms, coupling groups and frozen channels.

Walks the channel graph once in topological order, applying the channel rule of
each op's spec (:mod:`passes.ops`). Then solves the recorded ties into channel classes and groups classes by
the producers (scored layers) they share.

The cases the rules handle are listed in the op families of :mod:`passes.ops`. Channels are
frozen (never pruned) where they touch: the model's inputs and outputs, an op
with no rule (named in ``unknown_ops``), a layer in ``ignore``, and the places a
rule cannot prune exactly.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from frontends.graph import ChannelGraph, Op
from passes.atoms import AtomTable, Labels
from passes.ops import Producer, RuleContext, lookup

log = logging.getLogger(__name__)

__all__ = ["ChannelAnalysis", "AnalysisResult", "AnalysisStats", "Group", "UnknownOp"]


@dataclass
class UnknownOp:
    op: str
    target: str
    label: str


@dataclass
class Group:
    """Channels that are pruned together: one class is one channel of the group."""

    id: int
    producers: list[str]  # op names whose output channels are in the group
    classes: np.ndarray  # class ids, one per channel of the group
    widths: np.ndarray  # units of the widest producer per class (grouped convs: the group width)
    frozen: np.ndarray  # bool per class
    reasons: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.widths.sum())

    @property
    def prunable(self) -> bool:
        return bool((~self.frozen).any())


@dataclass
class AnalysisStats:
    """Operation counts of one analysis: each is linear in graph size when the rules are."""

    ops: int  # ops walked
    rule_calls: int  # registry rules applied (unknown ops have none)
    atoms: int  # channel atoms created
    union_elements: int  # atom pairs tied
    freeze_elements: int  # atoms frozen (with repeats)


@dataclass
class AnalysisResult:
    graph: ChannelGraph
    labels: dict[str, Labels]
    producers: list[Producer]
    atom_class: np.ndarray
    class_frozen: np.ndarray
    class_reasons: dict[int, list[str]]
    groups: list[Group]
    unknown_ops: list[UnknownOp]
    stats: AnalysisStats | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_frozen)

    def keep_mask(self, value: str, dim: int, pruned: np.ndarray) -> np.ndarray | None:
        """Bool mask of the kept indices of a value's dim (None: untracked)."""
        lab = self.labels.get(value)
        if not lab or lab[dim] is None:
            return None
        return ~pruned[self.atom_class[lab[dim]]]

    def pruned_shape(self, value: str, pruned: np.ndarray) -> tuple[int, ...]:
        shape = self.graph.shape(value)
        lab = self.labels.get(value)
        if not lab:
            return shape
        return tuple(
            n if lab[d] is None else int((~pruned[self.atom_class[lab[d]]]).sum()) for d, n in enumerate(shape)
        )


class ChannelAnalysis:
    """Find coupled channels and what is frozen. ``call(graph) -> AnalysisResult``."""

    def __init__(self, ignore: Iterable[str] = (), options: dict | None = None) -> None:
        self.ignore = set(ignore)
        self.options = dict(options or {})

    def call(self, graph: ChannelGraph) -> AnalysisResult:
        atoms = AtomTable()
        ctx = RuleContext(graph, atoms, self.options)
        unknown: list[UnknownOp] = []
        rule_calls = 0
        for op in graph.ops.values():
            ctx.op = op
            spec = lookup(op)
            rule = spec.rule if spec is not None else None
            if rule is None:
                self._freeze_unknown(op, ctx)
                unknown.append(UnknownOp(op.name, op.target, op.label))
                continue
            rule(op, ctx)
            rule_calls += 1
            for out in op.outputs:  # a rule that forgot an output must not leak tracked labels
                ctx.get(out)
            if op.label in self.ignore or op.name in self.ignore:
                for v in op.inputs:
                    if v is not None and graph.values[v].is_const:
                        ctx.freeze_all(v, "layer is in ignore=")
        ctx.op = None
        for v in graph.outputs:
            ctx.op = Op(name="<output>", kind="output", inputs=[], outputs=[])
            ctx.freeze_all(v, "model output")
        ctx.op = None

        atom_class = atoms.solve()
        n_classes = int(atom_class.max()) + 1 if atom_class.size else 0
        class_frozen = np.zeros(n_classes, dtype=bool)
        class_reasons: dict[int, list[str]] = defaultdict(list)
        for rec in atoms.freezes:
            cls = np.unique(atom_class[rec.atoms])
            class_frozen[cls] = True
            msg = f"{rec.op}: {rec.reason}" if rec.op else rec.reason
            for c in cls[:1]:  # one reason per record is enough to explain the group
                if msg not in class_reasons[int(c)]:
                    class_reasons[int(c)].append(msg)
            for c in cls[1:]:
                if not class_reasons[int(c)]:
                    class_reasons[int(c)].append(msg)
        groups = self._groups(ctx.producers, atom_class, class_frozen, class_reasons)
        log.info("analysis: %d ops, %d atoms, %d groups, %d unknown ops", len(graph.ops), atoms.count, len(groups), len(unknown))
        stats = AnalysisStats(len(graph.ops), rule_calls, atoms.count, atoms.union_elements, atoms.freeze_elements)
        return AnalysisResult(
            graph, ctx.labels, ctx.producers, atom_class, class_frozen, dict(class_reasons), groups, unknown, stats
        )

    @staticmethod
    def _freeze_unknown(op: Op, ctx: RuleContext) -> None:
        reason = f"op {op.target or op.kind} ({op.label or op.name}) is not in the op registry"
        for v in op.inputs:
            if v is not None:
                ctx.freeze_all(v, reason)
        for v in op.outputs:
            ctx.get(v)  # untracked: nothing downstream can prune through it

    @staticmethod
    def _groups(
        producers: list[Producer], atom_class: np.ndarray, class_frozen: np.ndarray, class_reasons: dict[int, list[str]]
    ) -> list[Group]:
        if not producers:
            return []
        n_p, n_c = len(producers), len(class_frozen)
        rows, cols = [], []
        for i, p in enumerate(producers):
            cls = np.unique(atom_class[p.atoms])
            rows.append(np.full(cls.size, i))
            cols.append(n_p + cls)
        r, c = np.concatenate(rows), np.concatenate(cols)
        m = coo_matrix((np.ones(r.size, dtype=np.int8), (r, c)), shape=(n_p + n_c, n_p + n_c))
        _, comp = connected_components(m, directed=False)
        by_comp: dict[int, list[int]] = defaultdict(list)
        for i in range(n_p):
            by_comp[int(comp[i])].append(i)
        groups: list[Group] = []
        for members in by_comp.values():
            width: dict[int, int] = {}
            names: list[str] = []
            for i in members:
                p = producers[i]
                if p.op not in names:
                    names.append(p.op)
                cls, counts = np.unique(atom_class[p.atoms], return_counts=True)
                for k, n in zip(cls.tolist(), counts.tolist(), strict=True):
                    width[k] = max(width.get(k, 0), n)
            classes = np.array(sorted(width), dtype=np.int64)
            widths = np.array([width[k] for k in classes.tolist()], dtype=np.int64)
            frozen = class_frozen[classes]
            reasons: list[str] = []
            for k in classes[frozen].tolist():
                for msg in class_reasons.get(k, []):
                    if msg not in reasons:
                        reasons.append(msg)
            groups.append(Group(len(groups), names, classes, widths, frozen, reasons))
        return groups
