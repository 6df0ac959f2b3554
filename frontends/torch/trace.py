"""Tracing: an eval-mode copy of an ``nn.Module`` as a ``torch.fx.GraphModule`` with shapes on every node.

Tracing runs on an eval-mode copy (the caller's model is never touched): first
symbolic tracing (``torch.fx``; a module whose class has a channel rule registered
under its name, a user's own layer, stays a leaf); where that fails, ``torch.export``
(its graph module is lowered the same way, with ATen op names); where both fail, a
:class:`TraceError` naming the module and the source line. Wrapped leaf functions are
inlined at the example's sizes (:mod:`frontends.torch.inline`). Shapes come from
running the traced graph on the example inputs (``ShapeProp``, on meta tensors where
they can), recorded on ``node.meta["tensor_meta"]``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from frontends.errors import TraceError, UnsupportedModelError
from frontends.graph import ChannelGraph
from frontends.torch.attention import decompose_attention
from frontends.torch.inline import inline_wrapped
from frontends.torch.lower import lower
from passes.ops import SPECS

log = logging.getLogger(__name__)

__all__ = ["TracedModel", "trace", "load_torch"]


@dataclass
class TracedModel:
    """A traced model, its channel graph, and which graph values each FX node produced."""

    gm: torch.fx.GraphModule
    graph: ChannelGraph
    node_values: dict[str, list[str]]  # FX node name -> value names (several for tuples)
    method: str  # "symbolic_trace" or "torch.export"
    example_inputs: tuple = ()
    notes: list[str] = field(default_factory=list)


def _user_frame(exc: BaseException) -> str | None:
    """The innermost traceback frame outside torch and prunec: where the model's code failed.

    Generated code (``<string>``, ``<eval_with_key>``) is nobody's source line.
    """
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    skip = tuple(os.path.join(d, "") for d in [os.path.dirname(torch.__file__)] + [os.path.join(root, p) for p in ("frontends", "passes", "compiler")])
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not f.filename.startswith(skip) and not f.filename.startswith("<")]
    if not user:
        return None
    f = user[-1]
    line = f" `{f.line.strip()}`" if f.line else ""
    return f"{f.filename}:{f.lineno} in {f.name}{line}"


def _failing_module(model: nn.Module, exc: BaseException) -> str | None:
    """``path (Class)`` of the submodule whose forward raised, from the traceback's frames.

    The module is the frame's first argument (whatever it is called, not only ``self``),
    named by its path in ``model``; where the frame does not hold it, the path comes from
    the forward's code object and the class from the module at that path. The root module
    is named by its class alone.
    """
    paths = {id(mod): name for name, mod in model.named_modules()}
    modules = dict(model.named_modules())
    codes: dict[tuple[str, int], str] = {}
    for name, mod in modules.items():
        fwd = getattr(type(mod), "forward", None)
        code = getattr(fwd, "__code__", None)
        if code is not None:
            codes.setdefault((code.co_filename, code.co_firstlineno), name)
    tb = exc.__traceback__
    found = None
    while tb is not None:
        code = tb.tb_frame.f_code
        key = (code.co_filename, code.co_firstlineno)
        if key in codes and code.co_name == "forward":
            first = tb.tb_frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
            if isinstance(first, nn.Module) and id(first) in paths:
                path, mod = paths[id(first)], first
            else:
                path = codes[key]
                mod = modules[path]
            cls = type(mod).__name__
            found = f"{path} ({cls})" if path else cls
        tb = tb.tb_next
    return found


class _ShapeProp(ShapeProp):
    node: torch.fx.Node | None = None  # the node being run, to name it when it fails

    def run_node(self, n: torch.fx.Node) -> Any:
        self.node = n
        return super().run_node(n)


def _meta_shape_prop(gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> bool:
    """Shapes without arithmetic: propagate meta tensors (shape and dtype only) through ``gm``.

    The module's tensors are swapped for meta tensors for the run and put back after.
    False, with nothing recorded, where an op has no meta kernel, mixes in a real tensor
    it creates, or depends on values, and where the tensors are on several devices
    (meta tensors would hide the mismatch): the caller then runs the model for real.
    """
    swapped: list[tuple[dict[str, Any], str, Any]] = []
    meta: dict[int, torch.Tensor] = {}
    devices = {x.device for x in inputs if isinstance(x, torch.Tensor)}

    def to_meta(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in meta:
            m = t.detach().to("meta")
            meta[id(t)] = nn.Parameter(m, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else m
        return meta[id(t)]

    try:
        for mod in gm.modules():
            stores: tuple[dict[str, Any], ...] = (mod._parameters, mod._buffers, vars(mod))
            for store in stores:
                for k, t in list(store.items()):
                    if isinstance(t, torch.Tensor):
                        if isinstance(t, (UninitializedParameter, UninitializedBuffer)):
                            return False  # a lazy module initializes on its first real run
                        devices.add(t.device)
                        swapped.append((store, k, t))
                        store[k] = to_meta(t)
        if len(devices) > 1:
            return False
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(*[x.to("meta") if isinstance(x, torch.Tensor) else x for x in inputs])
        return True
    except Exception as exc:  # noqa: BLE001 - any failure: the real run decides (and names the error)
        log.debug("meta shape propagation failed (%s); running the model", exc)
        for node in gm.graph.nodes:
            node.meta.pop("tensor_meta", None)
        return False
    finally:
        for store, k, t in reversed(swapped):
            store[k] = t


def _shape_prop(gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> None:
    if _meta_shape_prop(gm, inputs):
        return
    prop = _ShapeProp(gm)
    try:
        # ShapeProp prints a traceback of its own before re-raising: keep it off the user's stderr
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            prop.propagate(*inputs)
    except Exception as exc:  # wrong input shape, dtype, ...
        cause = exc.__cause__ if exc.__cause__ is not None else exc  # ShapeProp wraps the real error
        where = _user_frame(cause)
        node = prop.node
        at = f" in {node.target if node.op == 'call_module' else node.name}" if node is not None else ""
        raise UnsupportedModelError(
            f"the model does not run on the example inputs ({_describe(inputs)}){at}: "
            f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"
            + (f" at {where}" if where else "")
        ) from exc


def _describe(inputs: Sequence[Any]) -> str:
    parts = []
    for x in inputs:
        parts.append(f"tensor{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__)
    return ", ".join(parts) or "no inputs"


def _module_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares parameter and buffer tensors with ``model``.

    The traced module is only read (shape propagation, analysis, criteria); passes
    that change tensors (rewrite, verification, weight updates) copy them first, so
    copying every weight here would only cost time and memory.
    """
    memo: dict[int, Any] = {id(t): t for t in model.parameters()}
    memo.update({id(t): t for t in model.buffers()})
    return copy.deepcopy(model, memo)


class _Tracer(torch.fx.Tracer):
    """``torch.fx.symbolic_trace``'s tracer; a module whose class has a channel rule registered under its
    name (a user's own layer, docs/extending.md) is kept a leaf, lowered as that target."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        spec = SPECS.get(type(m).__name__)
        return super().is_leaf_module(m, module_qualified_name) or (spec is not None and spec.rule is not None)


def _symbolic_trace(model: nn.Module) -> torch.fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def trace(model: nn.Module, example_inputs: Sequence[Any]) -> tuple[torch.fx.GraphModule, str]:
    """Trace an eval-mode copy of ``model`` (weights shared, never written). Returns (graph module, method)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for x in example_inputs:
        if not isinstance(x, torch.Tensor):
            raise UnsupportedModelError(
                f"example_inputs must be tensors; got {type(x).__name__} (pass a tuple of tensors, e.g. (x,))"
            )
    work = _module_copy(model).eval()
    cfg = getattr(work, "config", None)
    if cfg is not None and getattr(cfg, "use_cache", False):  # Hugging Face: a KV cache in the outputs is not a tensor output
        cfg.use_cache = False
    n_mha = decompose_attention(work)
    if n_mha:
        log.info("decomposed %d nn.MultiheadAttention module(s) so their heads can be pruned", n_mha)
    try:
        gm = _symbolic_trace(work)
        method = "symbolic_trace"
    except Exception as fx_exc:
        log.info("symbolic_trace failed (%s); trying torch.export", fx_exc)
        disabled = logging.root.manager.disable
        logging.disable(logging.ERROR)  # torch.export logs and prints pages before it gives up: the user gets one line
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                ep = torch.export.export(work, tuple(example_inputs), strict=False)
            gm = ep.module()
            method = "torch.export"
        except Exception as ex_exc:
            where = _user_frame(fx_exc) or _user_frame(ex_exc)
            module = _failing_module(work, fx_exc) or _failing_module(work, ex_exc)
            first = str(fx_exc).strip().splitlines()[0] if str(fx_exc).strip() else type(fx_exc).__name__
            msg = f"cannot trace {type(model).__name__}"
            if module:
                msg += f": module {module}"
            if where:
                msg += f" at {where}"
            msg += f": {first} (torch.export also failed: {type(ex_exc).__name__})"
            raise TraceError(msg, module=module, location=where) from fx_exc
        finally:
            logging.disable(disabled)
    if method == "symbolic_trace":
        try:
            inlined = inline_wrapped(gm, example_inputs)
        except Exception as exc:  # the model does not run: _shape_prop names the culprit
            log.debug("inlining skipped: %s", exc)
            inlined = []
        if inlined:
            log.info("inlined wrapped functions at the example's sizes: %s", ", ".join(sorted(set(inlined))))
    _shape_prop(gm, example_inputs)
    return gm, method


def load_torch(model: nn.Module, example_inputs: Sequence[Any]) -> TracedModel:
    """Trace and lower a PyTorch model."""
    gm, method = trace(model, example_inputs)
    graph, node_values = lower(gm)
    return TracedModel(gm, graph, node_values, method, tuple(example_inputs))
