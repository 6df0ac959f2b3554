"""What the ONNX frontend gives: a loaded model, its channel graph, and what the rewrite needs to go back."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import onnx

from frontends.graph import ChannelGraph
from frontends.onnx.opsets import OpsetOrigin

log = logging.getLogger(__name__)

__all__ = ["ArgSlot", "OnnxModel"]


@dataclass
class ArgSlot:
    """A static, non-tensor argument of a lowered node (a shape, bounds, sizes, axes).

    ``role`` says what the rewrite must make of it: ``shape`` (Reshape), ``starts``/
    ``ends``/``axes``/``steps`` (Slice), ``split`` (Split), ``sizes``/``scales``/``roi``
    (Resize), ``indices`` (Gather of a tensor), or ``arg`` (must keep its value).
    """

    node: int
    index: int
    value: str
    role: str


@dataclass
class OnnxModel:
    """A loaded ONNX model, its channel graph, and what the rewrite needs to go back."""

    model: onnx.ModelProto  # the model prunec works on (the original, or its private working copy), data in memory
    graph: ChannelGraph
    path: str | None
    inputs: dict[str, np.ndarray]  # example inputs by graph input name
    shapes: dict[str, tuple[int, ...]]  # static shapes of tensor values (ONNX names)
    elem_types: dict[str, int]
    static: dict[str, np.ndarray]  # values known at lowering
    static_nodes: list[int]  # nodes evaluated at lowering, in graph order
    shape_derived: set[str]  # static values computed from a tensor's shape
    args: list[ArgSlot]
    node_ops: dict[int, list[str]]  # node index -> neutral op names
    opset: int  # the model's (13 or later)
    notes: list[str] = field(default_factory=list)
    method: str = "onnx"
    origin: OpsetOrigin | None = None  # the opset and IR version it was upgraded from (None: not upgraded)

    @property
    def name(self) -> str:
        if self.path:
            return os.path.basename(self.path)
        return self.model.graph.name or "onnx model"

    def input_tuple(self) -> tuple[np.ndarray, ...]:
        return tuple(self.inputs.values())
