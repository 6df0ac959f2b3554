"""Reading FX nodes: a call's op name, its source label, its arguments, attributes by dotted path.

Shared by the torch lowering, rewrite and verification (and the torch criteria).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.fx
import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = ["call_name", "target_label", "module_attr", "call_arg", "flat_args", "flatten"]


def call_name(node: torch.fx.Node) -> str:
    """The op name of a call node: the method, the function's ``__name__``, or the ATen op's name (overload dropped)."""
    t = node.target
    if node.op == "call_method":
        return str(t)
    if isinstance(t, torch._ops.OpOverload):
        return t._schema.name.split("::")[-1]
    if isinstance(t, torch._ops.OpOverloadPacket):
        return t._qualified_op_name.split("::")[-1]
    return getattr(t, "__name__", str(t))


def target_label(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    """What a person recognises as the node's op: ``Conv2d``, ``Tensor.view``, ``F.relu``, ``operator.add``."""
    if node.op == "call_module":
        return type(gm.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(t)
    mod = getattr(t, "__module__", None) or ""
    name = getattr(t, "__name__", str(t))
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional"):
        return f"F.{name}"
    if mod.startswith("torch"):
        return f"torch.{name}"
    return f"{mod}.{name}" if mod else name


def module_attr(root: nn.Module, path: str) -> Any:
    """The attribute at a dotted path under ``root`` (``"layer1.0.conv1.weight"``): a parameter, buffer, module, ..."""
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def call_arg(args: list, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """A call's argument by keyword ``name``, else by position ``i``, else ``default``."""
    if name in kwargs:
        return kwargs[name]
    return args[i] if len(args) > i else default


def flatten(a: Any) -> list[Any]:
    """The leaves of nested lists, tuples and dicts."""
    if isinstance(a, (list, tuple)):
        return [y for x in a for y in flatten(x)]
    if isinstance(a, dict):
        return [y for x in a.values() for y in flatten(x)]
    return [a]


def flat_args(node: torch.fx.Node) -> list[Any]:
    """Every leaf of a node's arguments, positional then keyword."""
    return flatten(list(node.args)) + flatten(dict(node.kwargs))
