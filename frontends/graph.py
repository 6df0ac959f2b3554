"""The framework-neutral channel graph every frontend lowers into.

A :class:`ChannelGraph` is a list of :class:`Op` in topological order over named
:class:`Value` s. Constants (weights, buffers, ONNX initializers) are values with
``data``; every op keeps a handle (``source``) to the node it came from so that a
rewrite can go back to the source format. Op ``kind`` s are the neutral vocabulary
the op specs (:mod:`passes.ops`) understand; an op a frontend cannot map
is lowered with ``kind="unknown"`` and its source-level ``target`` name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frontends.errors import InternalError

log = logging.getLogger(__name__)

__all__ = ["Value", "Op", "ChannelGraph"]


@dataclass
class Value:
    """A tensor (or non-tensor) value of the graph."""

    name: str
    shape: tuple[int, ...] | None  # None: not a tensor (a size, a tuple, ...)
    dtype: str | None = None
    data: np.ndarray | None = None  # set for constants
    trainable: bool = False  # a parameter (counted in the report), not a buffer
    producer: str | None = None
    users: list[str] = field(default_factory=list)

    @property
    def is_const(self) -> bool:
        return self.data is not None

    @property
    def is_tensor(self) -> bool:
        return self.shape is not None


@dataclass
class Op:
    """One operation in neutral form.

    ``inputs`` are value names in the canonical order of the kind (``None`` for an
    absent optional input); ``attrs`` hold the non-tensor arguments.
    """

    name: str
    kind: str
    inputs: list[str | None]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # what a person recognises: module path, node name
    target: str = ""  # source-level op type: "Conv2d", "torch.flatten", "Conv"
    source: Any = None
    # enclosing blocks, outermost first, as (path, type name): where the op sits in the model's
    # own structure (module hierarchy, exporter scopes); None when the frontend does not know
    scope: list[tuple[str, str]] | None = None

    def tensor_inputs(self) -> list[str]:
        return [v for v in self.inputs if v is not None]

    def input(self, i: int) -> str:
        """The name of input ``i``, one the op's kind requires (absent only through a frontend's bug)."""
        v = self.inputs[i]
        if v is None:
            raise InternalError(f"op {self.name} ({self.kind}): required input {i} is absent")
        return v


class ChannelGraph:
    """Values and ops of one model, framework neutral."""

    def __init__(self, framework: str) -> None:
        self.framework = framework
        self.values: dict[str, Value] = {}
        self.ops: dict[str, Op] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []

    def add_value(self, value: Value) -> Value:
        if value.name in self.values:
            raise ValueError(f"duplicate value {value.name!r}")
        self.values[value.name] = value
        return value

    def add_op(self, op: Op) -> Op:
        if op.name in self.ops:
            raise ValueError(f"duplicate op {op.name!r}")
        for v in op.inputs:
            if v is not None:
                self.values[v].users.append(op.name)
        for v in op.outputs:
            self.values[v].producer = op.name
        self.ops[op.name] = op
        return op

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self.values[name].shape
        if shape is None:
            raise TypeError(f"value {name!r} is not a tensor")
        return shape

    def constants(self) -> list[Value]:
        return [v for v in self.values.values() if v.is_const]

    def __repr__(self) -> str:
        return f"ChannelGraph({self.framework}, {len(self.ops)} ops, {len(self.values)} values)"
