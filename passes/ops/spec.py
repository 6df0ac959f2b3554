"""One spec per op kind: everything prunec knows about it, registered together.

An :class:`OpSpec` holds, for one neutral op kind of :mod:`frontends.graph` (or a
source-level target name for a user's custom layer):

==================  ==========================================================
``rule``            how channels flow through it (analysis: tie / freeze / producer)
``macs``            its multiply-accumulates from tensor shapes (cost model)
``reads``           the input and dim it contracts over (calibration gates, OBS,
                    bias propagation read channels there)
``latency``         a description of the layer that the latency tables time
``rewrite[a]``      adapter ``a``'s handler that updates the op's attributes and
                    arguments in the pruned model (``"torch"``, ``"onnx"``)
``reference[a]``    adapter ``a``'s masked-reference semantics for verification,
                    where running the original op on zeroed channels is not the
                    reference (LayerNorm statistics over the kept channels)
==================  ==========================================================

The op families in :mod:`passes.ops` (``layers``, ``norms``, ``elementwise``,
``shapes``, ``indexing``) define the specs' framework-neutral parts; each adapter's
rewrite and verification modules attach their handlers to the same objects with
``spec.rewriter("torch")`` / ``spec.reference_semantics("onnx")``. An op with no spec
(or a spec with no rule) is never guessed at: the analysis freezes what it touches
and the report names it. See docs/extending.md for a user's own layer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from frontends.graph import Op

if TYPE_CHECKING:
    from passes.ops.context import RuleContext

log = logging.getLogger(__name__)

__all__ = ["OpSpec", "ChannelRead", "SPECS", "op_spec", "lookup", "register", "Rule", "ShapeFn"]

ShapeFn = Callable[[str], tuple[int, ...]]
Rule = Callable[[Op, "RuleContext"], None]
Macs = Callable[[Op, ShapeFn], int]


@dataclass(frozen=True)
class ChannelRead:
    """An op contracting over channels of one input: ``op.inputs[input]`` along ``dim``.

    ``weight`` is its constant weight where it has one (conv, linear, a matmul with
    a constant operand): what OBS re-fits and bias propagation folds means into.
    """

    input: int
    dim: int
    weight: str | None = None


@dataclass
class OpSpec:
    """Everything about one op kind (see the module docstring)."""

    kind: str
    rule: Rule | None = None
    macs: Macs | None = None
    reads: Callable[[Op, Any], ChannelRead | None] | None = None  # (op, AnalysisResult)
    latency: Callable[[Op, ShapeFn], Any] | None = None
    rewrite: dict[str, Callable[..., Any]] = field(default_factory=dict)
    reference: dict[str, Callable[..., Any]] = field(default_factory=dict)

    # -- decorators: each sets one part of the spec and returns the function ------------
    def channel_rule(self, fn: Rule) -> Rule:
        self.rule = fn
        return fn

    def cost(self, fn: Macs) -> Macs:
        self.macs = fn
        return fn

    def channel_read(self, fn: Callable[[Op, Any], ChannelRead | None]) -> Callable[[Op, Any], ChannelRead | None]:
        self.reads = fn
        return fn

    def latency_layer(self, fn: Callable[[Op, ShapeFn], Any]) -> Callable[[Op, ShapeFn], Any]:
        self.latency = fn
        return fn

    def rewriter(self, adapter: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.rewrite[adapter] = fn
            return fn

        return deco

    def reference_semantics(self, adapter: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.reference[adapter] = fn
            return fn

        return deco


SPECS: dict[str, OpSpec] = {}


def op_spec(kind: str) -> OpSpec:
    """The spec of ``kind`` (a neutral kind or a source-level target name), created empty on first use."""
    spec = SPECS.get(kind)
    if spec is None:
        spec = SPECS[kind] = OpSpec(kind)
    return spec


def lookup(op: Op) -> OpSpec | None:
    """The spec for ``op``: by kind, or by source target (``"MyGate"``, an ONNX op type) for an unknown op."""
    return SPECS.get(op.kind if op.kind != "unknown" else op.target)


def register(*kinds: str) -> Callable[[Rule], Rule]:
    """Register a channel-flow rule for one or more op kinds (or source targets)."""

    def deco(fn: Rule) -> Rule:
        for k in kinds:
            op_spec(k).rule = fn
        return fn

    return deco
