"""Inputs and outputs of any pytree shape: lists, dicts, keyword arguments, nested outputs.

``example_inputs`` is the model's positional arguments (a tuple or list; a bare tensor
is one argument) or, as a mapping (a ``dict``, a Hugging Face ``BatchEncoding``), its
keyword arguments (``model(**batch)``). Where they are a plain tuple of tensors the
traced graph takes them as they are. Otherwise the arguments are flattened with
``torch.utils._pytree`` into their leaves, and prunec works on a *flat* graph: one
placeholder per leaf, a flat tuple of output leaves. The :class:`Signature` records the
structure on both sides so that:

1. the traced graph's placeholders are the leaves (a leaf that is not a tensor, e.g.
   ``return_dict=False``, has a placeholder too, but the trace uses its example value:
   the graph is specialized to it);
2. calibration batches of the same structure flatten to the same leaves
   (:meth:`Signature.leaves_of` refuses another structure with the path that differs);
3. the pruned model handed back takes the arguments in the original structure and
   returns the original output structure (a ``torch.fx`` pytree code generator on the
   pruned graph: :func:`structured_module`).
"""

from __future__ import annotations

import inspect
import keyword
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.fx._pytree as fx_pytree
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.fx.graph import CodeGen, _PyTreeCodeGen, _PyTreeInfo

from frontends.errors import InvalidArgumentError

log = logging.getLogger(__name__)

__all__ = ["Signature", "split_inputs", "is_plain", "structured_module", "flat_module", "flatten_output", "describe_leaf", "positional_names"]


def split_inputs(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``(args, kwargs)`` of a call from ``example_inputs``: a tensor is one argument, a mapping keyword
    arguments, a tuple or list the positional arguments."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, Mapping):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise InvalidArgumentError(f"example_inputs as keyword arguments need string keys; got {bad[0]!r}")
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise InvalidArgumentError(
        f"example_inputs must be a tuple of the model's arguments or a dict of keyword arguments; got {type(example_inputs).__name__}"
    )


def is_plain(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """Positional tensor arguments only: the traced graph takes them as they are."""
    return not kwargs and all(isinstance(a, torch.Tensor) for a in args)


def describe_leaf(x: Any) -> str:
    return f"tensor{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _key_name(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _identifier(parts: Sequence[str]) -> str:
    name = re.sub(r"\W", "_", "_".join(p for p in parts if p != "")) or "input"
    if name[0].isdigit() or keyword.iskeyword(name):
        name = "input_" + name
    return name


def positional_names(model: nn.Module, n: int) -> list[str]:
    """The names of the first ``n`` positional parameters of ``model.forward`` (``args_i`` past a ``*args``)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names: list[str] = []
    for p in params:
        if len(names) >= n:
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names += [f"{p.name}_{i}" for i in range(n - len(names))]
    names += [f"arg{i}" for i in range(len(names), n)]
    return names


@dataclass
class Signature:
    """The structure of a model's arguments and outputs, around a flat graph of their leaves."""

    args: tuple[Any, ...]  # the example's positional arguments, as given
    kwargs: dict[str, Any]  # its keyword arguments
    in_spec: pytree.TreeSpec  # of (args, kwargs)
    leaves: list[Any]  # the example's leaves, in the order of the graph's placeholders
    leaf_names: list[str]  # the placeholders' names (from the argument names and key paths)
    arg_names: list[str]  # the pruned module's forward parameters: positional names, then the keyword names
    out_spec: pytree.TreeSpec | None = None  # set by the trace

    @classmethod
    def of(cls, model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
        pos = positional_names(model, len(args))
        taken = set(pos)
        for k in kwargs:
            if k in taken:
                raise InvalidArgumentError(f"example_inputs: argument {k!r} given both by position and by keyword")
        with_path, in_spec = pytree.tree_flatten_with_path((args, kwargs))
        leaves, names, seen = [], [], set()
        for path, leaf in with_path:
            # path[0] is args (0) or kwargs (1); path[1] the position or the keyword
            head = pos[int(_key_name(path[1]))] if _key_name(path[0]) == "0" else _key_name(path[1])
            name = _identifier([head, *(_key_name(k) for k in path[2:])])
            while name in seen:
                name += "_"
            seen.add(name)
            leaves.append(leaf)
            names.append(name)
        return cls(args, kwargs, in_spec, leaves, names, pos + list(kwargs))

    @property
    def tensor_leaves(self) -> list[torch.Tensor]:
        return [x for x in self.leaves if isinstance(x, torch.Tensor)]

    def unflatten(self, flat: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` from the leaves; a non-tensor leaf keeps its example value (the graph is specialized)."""
        vals = [f if isinstance(x, torch.Tensor) else x for f, x in zip(flat, self.leaves, strict=True)]
        args, kwargs = pytree.tree_unflatten(vals, self.in_spec)
        return tuple(args), dict(kwargs)

    def leaves_of(self, batch: Any, where: str) -> list[Any]:
        """The leaves of ``batch`` (a call's arguments, structured like the example), in placeholder order."""
        args, kwargs = split_inputs(batch)
        flat, spec = pytree.tree_flatten((args, kwargs))
        if spec != self.in_spec:
            raise InvalidArgumentError(
                f"{where}: its structure differs from the example inputs' ({_short(spec)} where the example is {_short(self.in_spec)})"
            )
        return flat

    def restructure(self, flat_out: Any) -> Any:
        """The model's output structure from the flat graph's output leaves."""
        if self.out_spec is None:
            return flat_out
        return pytree.tree_unflatten(list(flat_out), self.out_spec)


def _short(spec: pytree.TreeSpec, limit: int = 160) -> str:
    s = str(spec).replace("\n", " ")
    return s if len(s) <= limit else s[:limit] + "..."


def flatten_output(out: Any) -> tuple[list[Any], pytree.TreeSpec]:
    """A model output's leaves and structure (dicts, lists, tuples, named tuples, ``ModelOutput``)."""
    return pytree.tree_flatten(out)


def structured_module(flat: torch.fx.GraphModule, sig: Signature) -> torch.fx.GraphModule:
    """A module over the same submodules and tensors as ``flat`` (a graph of leaves) that takes the arguments
    in ``sig``'s structure and returns its output structure."""
    graph = torch.fx.Graph()
    out = graph.graph_copy(flat.graph, {})
    graph.output(out)
    graph._codegen = _StrictPyTreeCodeGen(_PyTreeInfo(list(sig.arg_names), sig.in_spec, sig.out_spec))
    gm = torch.fx.GraphModule(flat, graph, type(flat).__name__)
    gm.__dict__["_prunec_flatten"] = strict_flatten  # read by the generated forward
    return gm


class _StrictPyTreeCodeGen(_PyTreeCodeGen):
    """torch.fx's pytree code generator, flattening the arguments with :func:`strict_flatten`."""

    def gen_var_bindings(self, fn_args: list[str], free_vars: list[str], expanded_def: bool) -> str:
        code = super().gen_var_bindings(fn_args, free_vars, expanded_def)
        return code.replace("fx_pytree.tree_flatten_spec(", "self._prunec_flatten(")


def strict_flatten(tree: Any, spec: pytree.TreeSpec) -> list[Any]:
    """The leaves of ``tree`` in ``spec``'s order; raises where ``tree`` has another number of leaves (a list of
    two images where the model was traced with one: ``tree_flatten_spec`` alone would drop the second)."""
    given = len(pytree.tree_leaves(tree))
    try:
        leaves = fx_pytree.tree_flatten_spec(tree, spec)
    except (IndexError, KeyError, TypeError, AttributeError):  # fewer items, a missing key, another kind
        leaves = None
    if leaves is None or given != len(leaves):
        raise InvalidArgumentError(
            f"the pruned model takes arguments structured as its example_inputs were ({spec.num_leaves} leaves: "
            f"{_short(spec)}); got {given} leaves (list lengths, such as the number of images, are the example's)"
        )
    return list(leaves)


def flat_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``gm``'s graph as a module of flat leaves (its pytree code generator dropped): placeholders in, a tuple out."""
    gm.graph._codegen = CodeGen()
    gm.recompile()
    return gm


def leaf_root_args(tracer: torch.fx.Tracer, sig: Signature, root_fn: Any) -> tuple[Any, list[Any]]:
    """``Tracer.create_args_for_root`` over the leaves of structured arguments: one placeholder per leaf, the
    model called with the arguments rebuilt from them, a flat tuple of output leaves (their structure goes to
    ``sig.out_spec``). Shared by the symbolic and the concrete tracer."""
    flat = [tracer.create_proxy("placeholder", name, (), {}) for name in sig.leaf_names]

    def flat_fn(root: nn.Module, *leaves: Any) -> tuple[Any, ...]:
        args, kwargs = sig.unflatten(leaves)
        out_leaves, sig.out_spec = flatten_output(root_fn(root, *args, **kwargs))
        return tuple(out_leaves)

    return flat_fn, [tracer.root, *flat]
