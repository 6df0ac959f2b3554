"""Depth analysis: the residual blocks a model can lose whole, their ranking, and which go.

A *residual branch* is the sub-graph between a value ``x`` (the stream) and the add
``x + f(x)`` that joins its result back into the stream. Removing it is ``out = x``:
shapes are kept, and the model equals the original with ``f(x)`` zeroed at the add,
which is what the adapters verify. :class:`FindBlocks` finds them on the channel
graph; the cases, one by one:

1. ``add(x, f(x))`` with ``x`` an ancestor of ``f(x)``, both of the add's shape, and no
   value inside ``f`` read outside it: a candidate branch (a ResNet bottleneck without
   downsampling, a ConvNeXt / Swin block, a transformer's attention or MLP branch);
2. an add whose two inputs are both computed by layers (a projection or downsampling
   shortcut): not removable, reported, and it anchors its stage;
3. an add that broadcasts, or whose branch feeds something else: reported;
4. branches whose add sits in the same indexed container element (``model.layers.3``,
   ``layer1.2``) form one block, so a transformers decoder layer goes as a whole and
   ``num_hidden_layers`` can follow;
5. a branch containing another candidate's add: the inner one is the block;
6. consecutive residual joins over one stream shape form a *stage*; a stage keeps at
   least one block, so the only block of a stage is not a candidate.

Ranking (:func:`score_blocks`) reads values through a :class:`DepthRunner` that the
adapter provides (``frontends/<format>/depth.py``); :data:`DEPTH_CRITERIA` names the
criteria. Selection (:func:`select_blocks`) removes the lowest-scored blocks.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from frontends.errors import InvalidArgumentError, UnsupportedModelError
from frontends.graph import ChannelGraph, Op
from passes.cost import op_macs

log = logging.getLogger(__name__)

__all__ = [
    "Branch",
    "Block",
    "Rejected",
    "DepthAnalysis",
    "FindBlocks",
    "DepthRunner",
    "DEPTH_CRITERIA",
    "resolve_criterion",
    "score_blocks",
    "select_blocks",
    "removed_count",
]

#: block criteria for ``depth_importance=``: name -> what it measures
DEPTH_CRITERIA: dict[str, str] = {
    "cosine": "ShortGPT's block influence: mean 1 - cos(stream before, stream after) over calibration data",
    "loss": "the change of the loss (or of the outputs, without labels) with the block removed, one run per block",
    "norm": "data-free: |branch output| / |stream before| on the example inputs",
}

_LAYER_KINDS = ("conv", "linear", "matmul", "einsum", "attention")
_SHORTCUT_KINDS = ("conv", "linear", "batch_norm", "layer_norm", "group_norm", "instance_norm", "normalize")


@dataclass(frozen=True)
class Branch:
    """One residual branch: ``out = stream + branch``, computed by ``ops`` (graph order)."""

    add: str  # the add op
    stream: str  # the value the branch reads and the add adds to (the stream before)
    branch: str  # the branch's result, the add's other input
    out: str  # the add's output (the stream after)
    ops: tuple[str, ...]


@dataclass
class Block:
    """What is removed as one: a branch, or the branches of one container element (a transformer layer)."""

    name: str  # module path of the layer, or the add's label
    branches: list[Branch]
    stage: int = 0
    macs: int = 0
    params: int = 0
    position: int = 0  # index of its first add in graph order

    @property
    def stream_in(self) -> str:
        return self.branches[0].stream

    @property
    def stream_out(self) -> str:
        return self.branches[-1].out

    @property
    def ops(self) -> set[str]:
        return {o for b in self.branches for o in b.ops} | {b.add for b in self.branches}


@dataclass
class Rejected:
    """A residual add that is not a removable block, and why."""

    name: str
    reason: str


@dataclass
class DepthAnalysis:
    """Candidate blocks (in graph order), the residual adds that are not, and the stages."""

    graph: ChannelGraph
    blocks: list[Block] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    stage_anchored: dict[int, bool] = field(default_factory=dict)  # stage -> it has a non-removable residual block

    def stage_members(self, stage: int) -> list[Block]:
        return [b for b in self.blocks if b.stage == stage]

    def max_removable(self) -> int:
        """Every stage keeps one block, unless a non-removable block of it stays anyway."""
        stages = {b.stage for b in self.blocks}
        return sum(len(self.stage_members(s)) - (0 if self.stage_anchored.get(s) else 1) for s in stages)


class DepthRunner(Protocol):
    """What an adapter gives the ranking: values of the graph, and a loss with blocks removed."""

    has_calibration: bool

    def values(self, names: Sequence[str], data: str) -> Iterator[dict[str, np.ndarray]]:
        """Per batch of ``data`` (``"calibration"`` or ``"example"``), the values named (graph value names)."""
        ...

    def loss(self, removed: Sequence[Block]) -> float:
        """The mean loss over the calibration batches with ``removed`` zeroed at their adds (none: the original)."""
        ...


def _is_add(op: Op) -> bool:
    return op.kind == "binary" and str(op.attrs.get("fn", "")).lower() == "add" and len(op.tensor_inputs()) == 2


def container_key(op: Op) -> str | None:
    """The innermost indexed container element enclosing ``op`` (``model.layers.3``), from its scope or its
    name (``/model/layers.3/Add`` of an exported ONNX graph); None where there is none."""
    if op.scope:
        for path, _ in reversed(op.scope):
            if path.rsplit(".", 1)[-1].isdigit():
                return path
        return None
    parts = [p for p in (op.label or "").split("/")[:-1] if p]
    for i in range(len(parts) - 1, -1, -1):
        if re.search(r"[._]\d+$", parts[i]):  # the legacy exporter's "/layer1/layer1.0/": the dotted path itself
            return parts[i] if "." in parts[i] else "/".join(parts[: i + 1])
    return None


class FindBlocks:
    """``call(graph) -> DepthAnalysis``: the cases of the module docstring."""

    def call(self, graph: ChannelGraph) -> DepthAnalysis:
        order = {name: i for i, name in enumerate(graph.ops)}
        self.graph, self.order = graph, order
        result = DepthAnalysis(graph)
        branches: list[Branch] = []
        joins: list[tuple[int, tuple[int, ...], bool]] = []  # (position, shape, removable) of every residual join
        for op in graph.ops.values():
            if not _is_add(op):
                continue
            found = self._branch(op)
            if isinstance(found, Branch):
                branches.append(found)
            elif found is not None:
                result.rejected.append(Rejected(self._add_name(op), found))
                joins.append((order[op.name], graph.shape(op.outputs[0]), False))
        branches = self._innermost(branches, result)
        blocks = self._group(branches, result)
        for b in blocks:
            joins.append((b.position, graph.shape(b.stream_out), True))
        self._stages(blocks, joins, result)
        for b in blocks:
            ops = [graph.ops[o] for o in sorted(b.ops, key=order.__getitem__)]
            b.macs = sum(op_macs(o, graph.shape) for o in ops)
            b.params = sum(
                math.prod(graph.shape(v)) for o in ops for v in o.tensor_inputs() if graph.values[v].is_const and graph.values[v].trainable
            )
        result.blocks = [b for b in blocks if not self._lone(b, blocks, result)]
        log.info("depth: %d candidate blocks, %d residual adds rejected", len(result.blocks), len(result.rejected))
        return result

    # -- one add ------------------------------------------------------------------------------------------

    def _branch(self, add: Op) -> Branch | str | None:
        """The branch of a residual add, or why it is none (None: not a residual join at all)."""
        g = self.graph
        a, b = add.input(0), add.input(1)
        if g.values[a].is_const or g.values[b].is_const or not (g.values[a].is_tensor and g.values[b].is_tensor):
            return None
        for stream, branch in ((a, b), (b, a)):
            ops = self._between(stream, branch)
            if ops is None:
                continue
            if not any(g.ops[o].kind in _LAYER_KINDS for o in ops):
                return None  # no layer on the branch (x + x * s, rotary halves): not a block
            out = add.outputs[0]
            if not (g.shape(stream) == g.shape(branch) == g.shape(out)):
                return f"broadcasting add: stream {g.shape(stream)}, branch {g.shape(branch)}"
            inside = set(ops) | {add.name}
            for o in ops:
                for v in g.ops[o].outputs:
                    outside = [u for u in g.values[v].users if u not in inside]
                    if outside or v in g.outputs:
                        return f"a value of the branch ({v}) is also read outside it"
            return Branch(add.name, stream, branch, out, tuple(sorted(ops, key=self.order.__getitem__)))
        if self._layer_fed(a) and self._layer_fed(b):
            return "projection shortcut: both inputs are computed by layers (downsampling or a change of channels)"
        return None

    def _layer_fed(self, v: str) -> bool:
        p = self.graph.values[v].producer
        return p is not None and self.graph.ops[p].kind in _SHORTCUT_KINDS

    def _between(self, stream: str, branch: str) -> list[str] | None:
        """Ops on paths from ``stream`` to ``branch`` (None when ``stream`` is not an ancestor of it)."""
        g = self.graph
        start = g.values[branch].producer
        if start is None:
            return None
        back: set[str] = set()
        stack, hit = [start], False
        while stack:
            name = stack.pop()
            if name in back:
                continue
            back.add(name)
            for v in g.ops[name].tensor_inputs():
                if v == stream:
                    hit = True
                    continue
                p = g.values[v].producer
                if p is not None and p not in back and self.order[p] > self._position(stream):
                    stack.append(p)
        if not hit:
            return None
        fwd: set[str] = set()  # reachable from the stream inside ``back``
        stack = [u for u in g.values[stream].users if u in back]
        while stack:
            name = stack.pop()
            if name in fwd:
                continue
            fwd.add(name)
            stack.extend(u for v in g.ops[name].outputs for u in g.values[v].users if u in back and u not in fwd)
        return sorted(fwd, key=self.order.__getitem__)

    def _position(self, value: str) -> int:
        p = self.graph.values[value].producer
        return -1 if p is None else self.order[p]

    # -- blocks and stages --------------------------------------------------------------------------------

    def _innermost(self, branches: list[Branch], result: DepthAnalysis) -> list[Branch]:
        adds = {b.add: b for b in branches}
        keep = []
        for b in branches:
            inner = [adds[o] for o in b.ops if o in adds]
            if inner:
                label = self.graph.ops[inner[0].add].label or inner[0].add
                result.rejected.append(Rejected(self._label(b), f"contains the residual block at {label}"))
            else:
                keep.append(b)
        return keep

    def _label(self, b: Branch) -> str:
        """The common module path of the branch's ops, with its add (``encoder.layer_0 [add_1]``), else the add."""
        g = self.graph
        paths = [g.ops[o].label.split(".") for o in b.ops if g.ops[o].label and "." in g.ops[o].label]
        add = g.ops[b.add].label or b.add
        if not paths:
            return add
        common: list[str] = []
        for parts in zip(*paths, strict=False):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        return f"{'.'.join(common)} [{add}]" if common else add

    def _add_name(self, op: Op) -> str:
        key = container_key(op)
        label = op.label or op.name
        return f"{key} [{label}]" if key else label

    def _group(self, branches: list[Branch], result: DepthAnalysis) -> list[Block]:
        """Branches of one container element form one block where they follow each other on the stream."""
        rejected_keys = {container_key(self.graph.ops[n]) for n in self._rejected_adds(result)}
        blocks: list[Block] = []
        by_key: dict[str, Block] = {}
        for b in branches:
            key = container_key(self.graph.ops[b.add])
            if key is not None and key in by_key and self._follows(by_key[key].stream_out, b.stream):
                by_key[key].branches.append(b)
                continue
            blk = Block(key if key is not None and key not in by_key else self._label(b), [b], position=self.order[b.add])
            if key is not None and key not in by_key:
                by_key[key] = blk
            blocks.append(blk)
        out = []
        for blk in blocks:
            if len(blk.branches) > 1 and blk.name in rejected_keys:
                result.rejected.append(Rejected(blk.name, "its layer also has a residual join that cannot be removed"))
            else:
                out.append(blk)
        return out

    def _rejected_adds(self, result: DepthAnalysis) -> list[str]:
        labels = {r.name for r in result.rejected}
        return [op.name for op in self.graph.ops.values() if _is_add(op) and self._add_name(op) in labels]

    def _follows(self, out: str, stream: str) -> bool:
        """``stream`` is ``out``, or computed from it by single-input ops of the same shape (relu, a cast)."""
        g = self.graph
        v = stream
        for _ in range(8):
            if v == out:
                return True
            p = g.values[v].producer
            if p is None:
                return False
            ins = [x for x in g.ops[p].tensor_inputs() if not g.values[x].is_const]
            if len(ins) != 1 or g.values[ins[0]].shape != g.values[v].shape:
                return False
            v = ins[0]
        return False

    def _stages(self, blocks: list[Block], joins: list[tuple[int, tuple[int, ...], bool]], result: DepthAnalysis) -> None:
        """Consecutive residual joins over one stream shape form a stage."""
        stage, last_shape, pos_stage = -1, None, {}
        anchored: dict[int, bool] = {}
        for pos, shape, removable in sorted(joins):
            if shape != last_shape:
                stage, last_shape = stage + 1, shape
            pos_stage[pos] = stage
            anchored[stage] = anchored.get(stage, False) or not removable
        for b in blocks:
            b.stage = pos_stage[b.position]
        result.stage_anchored = anchored

    @staticmethod
    def _lone(b: Block, blocks: list[Block], result: DepthAnalysis) -> bool:
        """The only block of a stage without a non-removable one: rejected (case 6)."""
        if result.stage_anchored.get(b.stage) or sum(1 for x in blocks if x.stage == b.stage) > 1:
            return False
        result.rejected.append(Rejected(b.name, "the only block of its stage"))
        return True


# -- ranking ---------------------------------------------------------------------------------------------


def resolve_criterion(name: str, has_calibration: bool) -> str:
    """``"auto"``: ``cosine`` on calibration data where there is some, else the data-free ``norm``."""
    if name == "auto":
        return "cosine" if has_calibration else "norm"
    return name


def _channels_last(a: np.ndarray) -> np.ndarray:
    """Rows of channel vectors: NCHW-like (rank >= 4) has channels at dim 1, else the last dim."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim >= 4:
        a = np.moveaxis(a, 1, -1)
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 1 and a.size else a.reshape(1, -1)


def _one_minus_cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = _channels_last(x), _channels_last(y)
    num = (x * y).sum(-1)
    den = np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return 1.0 - cos


def score_blocks(analysis: DepthAnalysis, runner: DepthRunner, criterion: str) -> np.ndarray:
    """One score per candidate block (higher: more important)."""
    blocks = analysis.blocks
    if criterion == "cosine":
        names = sorted({v for b in blocks for v in (b.stream_in, b.stream_out)})
        sums, count = np.zeros(len(blocks)), np.zeros(len(blocks))
        for vals in runner.values(names, "calibration"):
            for i, b in enumerate(blocks):
                d = _one_minus_cos(vals[b.stream_in], vals[b.stream_out])
                sums[i] += d.sum()
                count[i] += d.size
        return sums / np.maximum(count, 1)
    if criterion == "norm":
        names = sorted({v for b in blocks for v in [b.stream_in, *(br.branch for br in b.branches)]})
        scores = np.zeros(len(blocks))
        for vals in runner.values(names, "example"):
            for i, b in enumerate(blocks):
                base = float(np.linalg.norm(np.asarray(vals[b.stream_in], np.float64))) or 1.0
                scores[i] += sum(float(np.linalg.norm(np.asarray(vals[br.branch], np.float64))) for br in b.branches) / base
        return scores
    if criterion == "loss":
        base = runner.loss([])
        return np.array([runner.loss([b]) - base for b in blocks])
    raise InvalidArgumentError(f"depth_importance={criterion!r}; choose from auto, {', '.join(DEPTH_CRITERIA)}")


# -- selection -------------------------------------------------------------------------------------------


def removed_count(depth: float, n: int) -> int:
    """How many of ``n`` candidate blocks ``depth`` removes (rounded half up; at least one for depth > 0)."""
    if depth <= 0 or n == 0:
        return 0
    return max(1, int(depth * n + 0.5))


def select_blocks(analysis: DepthAnalysis, scores: np.ndarray, count: int, what: str = "") -> list[Block]:
    """The ``count`` lowest-scored blocks, every stage keeping one (its non-removable block counts)."""
    blocks = analysis.blocks
    asked = what or f"{count} blocks"
    if count > 0 and not blocks:
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in analysis.rejected[:4]) or "no residual add with a layer on its branch"
        raise UnsupportedModelError(f"{asked}: the model has no removable residual block ({reasons})")
    most = analysis.max_removable()
    if count > most:
        full = [s for s in sorted({b.stage for b in blocks}) if not analysis.stage_anchored.get(s)]
        names = ", ".join(f"stage {s} ({', '.join(b.name for b in analysis.stage_members(s))})" for s in full[:3])
        raise InvalidArgumentError(
            f"{asked} would remove {count} of {len(blocks)} blocks, but a stage must keep a block: at most {most} can go "
            f"({names} must keep one)"
        )
    left = {s: len(analysis.stage_members(s)) for s in {b.stage for b in blocks}}
    chosen: list[Block] = []
    for i in np.argsort(scores, kind="stable"):
        if len(chosen) == count:
            break
        b = blocks[int(i)]
        if left[b.stage] == 1 and not analysis.stage_anchored.get(b.stage):
            continue
        left[b.stage] -= 1
        chosen.append(b)
    return sorted(chosen, key=lambda b: b.position)
