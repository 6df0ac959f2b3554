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
import torch.fx._pytree as fx_pytree
import torch.nn as nn
import torch.utils._pytree as pytree
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

from frontends.errors import TraceError, UnsupportedModelError
from frontends.graph import ChannelGraph
from frontends.torch import runtime
from frontends.torch.attention import decompose_attention
from frontends.torch.concrete import concrete_trace
from frontends.torch.inline import inline_wrapped
from frontends.torch.lower import lower
from frontends.torch.moe import decompose_experts
from frontends.torch.structured import (
    Signature,
    describe_leaf,
    flat_module,
    is_plain,
    leaf_root_args,
    positional_names,
    split_inputs,
)
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
    example_inputs: tuple = ()  # what ``gm`` takes: the example's tensors, or the leaves of structured arguments
    notes: list[str] = field(default_factory=list)
    signature: Signature | None = None  # structured arguments and outputs (the graph takes and returns their leaves)


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


def _has_runtime_leaves(gm: torch.fx.GraphModule) -> bool:
    """Run-time leaves run their own code, which may update their state from what it reads (an anchor
    generator moves its cell anchors to the input's device): never on meta tensors."""
    return any(n.op == "call_module" and runtime.is_leaf_module(gm.get_submodule(str(n.target))) for n in gm.graph.nodes)


def _shape_prop(gm: torch.fx.GraphModule, inputs: Sequence[Any]) -> None:
    if not _has_runtime_leaves(gm) and _meta_shape_prop(gm, inputs):
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

    def __init__(self) -> None:
        super().__init__(autowrap_functions=tuple(runtime.leaf_functions()))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        spec = SPECS.get(type(m).__name__)
        if runtime.is_leaf_module(m):  # run-time parts (detection's transform, anchors, RoI align) stay one node
            return True
        return super().is_leaf_module(m, module_qualified_name) or (spec is not None and spec.rule is not None)


class _StructuredTracer(_Tracer):
    """:class:`_Tracer` over the leaves of structured arguments (:class:`Signature`): one placeholder per leaf,
    the model called with the arguments rebuilt from them, a flat tuple of output leaves (their structure goes
    to ``sig.out_spec``)."""

    def __init__(self, sig: Signature) -> None:
        super().__init__()
        self.sig = sig

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list[Any]]:
        return leaf_root_args(self, self.sig, root_fn)


def _symbolic_trace(model: nn.Module, sig: Signature | None = None) -> torch.fx.GraphModule:
    tracer = _Tracer() if sig is None else _StructuredTracer(sig)
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


def dynamic_shapes(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``torch.export``'s ``dynamic_shapes`` for the arguments: every tensor leaf's dim 0 (the batch), and dim 1 of
    an integer tensor of two dims or more (token ids, masks: the sequence), as ``Dim.AUTO`` (dynamic where the
    model allows it, else static without an error)."""
    auto = torch.export.Dim.AUTO

    def spec(x: Any) -> Any:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            return None
        dims = {0: auto}
        if x.dim() >= 2 and not (x.is_floating_point() or x.is_complex()):
            dims[1] = auto
        return dims

    pos = [pytree.tree_map(spec, a) for a in args]
    if not kwargs:
        return tuple(pos)
    names = positional_names(model, len(args))
    return {**dict(zip(names, pos, strict=True)), **{k: pytree.tree_map(spec, v) for k, v in kwargs.items()}}


def _export(work: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], notes: list[str]) -> torch.fx.GraphModule:
    """``torch.export`` with the batch (and sequence) dims dynamic; where export refuses them, static."""
    try:
        dyn = dynamic_shapes(work, args, kwargs)
        with contextlib.redirect_stderr(io.StringIO()):
            ep = torch.export.export(work, args, kwargs, strict=False, dynamic_shapes=dyn)
    except Exception as exc:  # noqa: BLE001 - a model that rejects dynamic dims: the static export decides
        if "DataDependent" in type(exc).__name__:  # sizes that depend on the data: static shapes do not help
            raise
        log.info("torch.export with dynamic batch/sequence dims failed (%s); exporting static shapes", exc)
        with contextlib.redirect_stderr(io.StringIO()):
            ep = torch.export.export(work, args, kwargs, strict=False)
        notes.append(
            "torch.export refused a dynamic batch/sequence dim "
            f"({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}): the pruned model runs at the example's sizes"
        )
    static = [f"{n}: {shape}" for n, shape in _input_shapes(ep)]
    if static:
        notes.append("torch.export kept these input dims static (the model does not allow others): " + "; ".join(static))
    return ep.module()


def _input_shapes(ep: Any) -> list[tuple[str, tuple[int, ...]]]:
    """The user inputs whose batch dim torch.export made static (a number where a symbol was asked for; a batch of 1
    always is)."""
    out = []
    sigs = ep.graph_signature.user_inputs
    for node in ep.graph.nodes:
        if node.op != "placeholder" or node.name not in sigs:
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() > 0 and _static(val.shape[0]):
            out.append((node.name, tuple(int(s) for s in val.shape)))
    return out


def _static(size: Any) -> bool:
    """An int, or a symbol torch.export specialized to a number."""
    if isinstance(size, int):
        return True
    return bool(getattr(getattr(getattr(size, "node", None), "expr", None), "is_number", False))


@dataclass
class _Trace:
    gm: torch.fx.GraphModule
    method: str
    signature: Signature | None  # structured arguments: the graph takes their leaves
    inputs: tuple[Any, ...]  # what the graph takes: the example's tensors, or the leaves
    notes: list[str]


def trace(model: nn.Module, example_inputs: Any) -> _Trace:
    """Trace an eval-mode copy of ``model`` (weights shared, never written)."""
    if not isinstance(model, nn.Module):
        raise UnsupportedModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = split_inputs(example_inputs)
    sig = None if is_plain(args, kwargs) else Signature.of(model, args, kwargs)
    if sig is not None and not sig.tensor_leaves:
        raise UnsupportedModelError(
            "example_inputs hold no tensor (" + ", ".join(describe_leaf(x) for x in sig.leaves) + ")"
        )
    inputs = tuple(args) if sig is None else tuple(sig.leaves)
    notes: list[str] = []
    work = _module_copy(model).eval()
    for mod in work.modules():  # Hugging Face: a KV cache in the outputs is not a tensor output
        cfg = getattr(mod, "config", None)  # (every config: T5's decoder stack holds a copy of the model's)
        if cfg is not None and getattr(cfg, "use_cache", False):
            cfg.use_cache = False
    n_mha = decompose_attention(work)
    if n_mha:
        log.info("decomposed %d nn.MultiheadAttention module(s) so their heads can be pruned", n_mha)
    n_moe = decompose_experts(work)  # mixture-of-experts layers: one FFN per expert (frontends/torch/moe.py)
    if n_moe:
        log.info("decomposed %d experts module(s) into per-expert FFNs, densely routed", n_moe)
    try:
        gm = _symbolic_trace(work, sig)
        method = "symbolic_trace"
    except Exception as fx_exc:
        log.info("symbolic_trace failed (%s); trying torch.export", fx_exc)
        disabled = logging.root.manager.disable
        logging.disable(logging.ERROR)  # torch.export logs and prints pages before it gives up: the user gets one line
        try:
            gm = _export(work, args, kwargs, notes)
            method = "torch.export"
            if sig is not None:
                sig = _exported_signature(gm, sig, args, kwargs)
                inputs = tuple(sig.leaves)
                flat_module(gm)
        except Exception as ex_exc:
            logging.disable(disabled)
            runtime = concrete_trace(work, sig, inputs) if sig is not None else None
            if runtime is not None:
                gm, method = runtime.gm, runtime.method
                notes.extend(runtime.notes)
            else:
                if sig is not None:
                    _runs_eagerly(work, args, kwargs)
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
            inlined = inline_wrapped(gm, inputs)
        except Exception as exc:  # the model does not run: _shape_prop names the culprit
            log.debug("inlining skipped: %s", exc)
            inlined = []
        if inlined:
            log.info("inlined wrapped functions at the example's sizes: %s", ", ".join(sorted(set(inlined))))
    _shape_prop(gm, inputs)
    return _Trace(gm, method, sig, inputs, notes)


def _runs_eagerly(work: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raises :class:`UnsupportedModelError` where the model does not run on structured example arguments
    (a dict where it takes a tensor): the inputs are at fault, not the tracers."""
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            work(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure of the model on its example is the example's
        leaves = pytree.tree_leaves((args, kwargs))
        where = _user_frame(exc)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UnsupportedModelError(
            f"the model does not run on the example inputs ({', '.join(describe_leaf(x) for x in leaves)}): "
            f"{type(exc).__name__}: {first}" + (f" at {where}" if where else "")
        ) from exc


def _exported_signature(gm: torch.fx.GraphModule, sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Signature:
    """The signature of an exported module: its own input and output specs and argument names (the leaves
    flattened by its input spec, in the order of its placeholders)."""
    info = gm.graph._codegen.pytree_info  # type: ignore[attr-defined]
    leaves = fx_pytree.tree_flatten_spec((args, kwargs), info.in_spec)
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    if len(names) != len(leaves):
        raise UnsupportedModelError(f"torch.export made {len(names)} inputs of {len(leaves)} argument leaves")
    return Signature(args, kwargs, info.in_spec, list(leaves), names, list(info.orig_args), info.out_spec)


def load_torch(model: nn.Module, example_inputs: Any) -> TracedModel:
    """Trace and lower a PyTorch model. ``example_inputs``: the positional arguments (a tuple; a tensor is one),
    or a dict of keyword arguments; structured arguments (:mod:`frontends.torch.structured`) are traced as their leaves."""
    t = trace(model, example_inputs)
    graph, node_values = lower(t.gm)
    return TracedModel(t.gm, graph, node_values, t.method, t.inputs, t.notes, t.signature)
