"""Inline wrapped leaf functions by re-tracing them with concrete sizes.

``torch.fx.wrap`` keeps a module-level function out of symbolic tracing: the
graph gets one opaque ``call_function`` node (torchvision's
``shifted_window_attention``, ``_get_relative_position_bias``,
``_patch_merging_pad``). Their bodies usually branch on sizes
(``if window_size[0] >= pad_H``), which symbolic tracing cannot follow.

:func:`inline_wrapped` re-traces each such call with a *concrete* tracer: every
proxy carries the value it has on the example inputs, so sizes (``x.shape``,
``x.size(1)``, ``len(x)``, ``x.dim()``) are Python ints and size branches are
taken as they are on the example, as ``torch.export`` or ``make_fx`` would do.
Tensors made from sizes alone (``x.new_zeros(...)``: Swin's shift mask) are
computed then and enter the graph as constants. The body's ops replace the call
node. A body that branches on tensor *values*, or fails to trace for any other
reason, leaves the call node as it was (the analysis then freezes it).

Cases handled:

1. a ``call_function`` whose target is a plain Python function defined outside
   torch (``torch.fx.wrap``-ed user or torchvision functions);
2. tensor, int and list arguments; nested wrapped calls inside the body are
   traced through too;
3. a tensor or a tuple/list of tensors returned; a result that is plain data
   computed from sizes (window and pad sizes) replaces the call as a constant;
4. list arguments the body mutates get mutable copies (FX stores them immutable);
5. in-place updates of tensors (``x[:, 1:] += y``, ``x.add_(y)``, Swin V2's
   ``qkv_bias[n:2n].zero_()``) are recorded as the same in-place ops
   (``operator.setitem``, ``operator.iadd``, ``Tensor.zero_``) and kept by dead-code
   elimination, so the inlined graph mutates what the body mutated, views
   included (verification's masked reference keeps views as views too).

Batch sizes: the graph is also run on the example grown by one along dim 0, and
the body is traced on both at once. A size that differs between the two (the
batch, and what is computed from it: Swin's ``B * num_windows``) is read at run
time (a ``size`` node); every other size is a constant of the example. The body
is kept batch-generic only if its graph reproduces the call's results at both
batch sizes; otherwise (a branch on the batch size, a model with a fixed batch)
it is specialized to the example inputs' sizes, batch included.
"""

from __future__ import annotations

import inspect
import logging
import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.fx.node import map_aggregate

log = logging.getLogger(__name__)

__all__ = ["inline_wrapped", "wrapped_calls"]

_META_ONLY_METHODS = {"new_zeros", "new_ones", "new_full", "new_empty"}
_META_ONLY_FNS = {torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like}
_SIZE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout", "is_floating_point", "is_complex"}
_SIZE_METHODS = {"size", "dim", "numel", "ndimension", "nelement", "is_floating_point", "is_complex", "element_size"}
_SKIP_MODULES = ("_operator", "operator", "math", "builtins")


def wrapped_calls(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """Call nodes of plain Python functions defined outside torch: leaves kept by ``torch.fx.wrap``."""
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or not inspect.isfunction(n.target):
            continue
        mod = getattr(n.target, "__module__", "") or ""
        if mod == "torch" or mod.startswith("torch.") or mod in _SKIP_MODULES:
            continue
        if n.target in (len, math.sqrt):
            continue
        if _lowered_by_frontend(n):
            continue
        out.append(n)
    return out


def _lowered_by_frontend(n: torch.fx.Node) -> bool:
    """torchvision's ``stochastic_depth`` in eval mode (or with p = 0) is the identity, which the frontend
    emits directly: inlining it would only cost a run of the whole model (ConvNeXt, EfficientNet)."""
    if getattr(n.target, "__name__", "") != "stochastic_depth" or not str(getattr(n.target, "__module__", "")).startswith("torchvision."):
        return False
    training = n.kwargs.get("training", n.args[3] if len(n.args) > 3 else True)
    p = n.kwargs.get("p", n.args[1] if len(n.args) > 1 else None)
    return training is False or (isinstance(p, (int, float)) and float(p) == 0.0)


class _ConcreteProxy(torch.fx.Proxy):
    """A proxy that knows its value on the example inputs: sizes read from it are ints.

    In batch-generic tracing it also knows ``value2``, its value on the example
    grown by one along the batch: a size that differs between the two is read
    at run time (a ``size`` node), the others are ints.
    """

    def __init__(self, node: torch.fx.Node, tracer: torch.fx.Tracer, value: Any, value2: Any = None) -> None:
        super().__init__(node, tracer)
        self.value = value
        self.value2 = value2

    def __getattr__(self, k: str) -> Any:
        if k in ("value", "value2", "node", "tracer"):
            raise AttributeError(k)
        if isinstance(self.value, torch.Tensor) and (k in _SIZE_ATTRS or k in _SIZE_METHODS):
            if not getattr(self.tracer, "dual", False):
                return getattr(self.value, k)
            return self._dual_size(k)
        return super().__getattr__(k)

    def _dual_size(self, k: str) -> Any:
        """A size read in batch-generic tracing: an int where both examples agree, else a run-time size."""
        a, b = getattr(self.value, k), getattr(self.value2, k)
        if k == "shape":
            if a == b:
                return a
            return tuple(n if n == b[d] else self.tracer.create_proxy("call_method", "size", (self, d), {}) for d, n in enumerate(a))
        if not callable(a):
            if a != b:
                raise torch.fx.proxy.TraceError(f"{k} differs with the batch size")
            return a

        def method(*args: Any) -> Any:
            ra, rb = a(*args), b(*args)
            if k == "size" and not args and ra != rb:
                return self._dual_size("shape")
            if ra == rb:
                return ra
            return self.tracer.create_proxy("call_method", k, (self, *args), {})

        return method

    def __len__(self) -> int:
        if getattr(self.tracer, "dual", False) and len(self.value) != len(self.value2):
            raise torch.fx.proxy.TraceError("len() of a batch-sized dimension")
        return len(self.value)

    def __iter__(self):
        return iter([self[i] for i in range(len(self))])

    # In-place updates are recorded as the in-place ops they are, so the inlined
    # graph mutates exactly what the body mutated (views included).
    def __setitem__(self, index: Any, value: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    def __iadd__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.iadd, (self, other), {})

    def __isub__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.isub, (self, other), {})

    def __imul__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.imul, (self, other), {})

    def __itruediv__(self, other: Any) -> Any:
        return self.tracer.create_proxy("call_function", operator.itruediv, (self, other), {})


def _mutable(a: Any) -> Any:
    """FX stores list and dict arguments immutable; a wrapped body may mutate its arguments (swin3d)."""
    if isinstance(a, (list, tuple)) and not hasattr(a, "_fields"):
        items = [_mutable(x) for x in a]
        return items if isinstance(a, list) else tuple(items)
    if isinstance(a, dict):
        return {k: _mutable(v) for k, v in a.items()}
    return a


def _has_proxy_or_tensor(a: Any) -> bool:
    found = []
    map_aggregate(a, lambda x: found.append(x) if isinstance(x, (torch.fx.Proxy, torch.Tensor)) else None)
    return bool(found)


def _value(a: Any) -> Any:
    if isinstance(a, _ConcreteProxy):
        return a.value
    if isinstance(a, torch.fx.proxy.Attribute):
        return getattr(_value(a.root), a.attr)
    return a


def _value2(a: Any) -> Any:
    if isinstance(a, _ConcreteProxy):
        return a.value2
    if isinstance(a, torch.fx.proxy.Attribute):
        return getattr(_value2(a.root), a.attr)
    return a


def _same_shape(a: Any, b: Any) -> bool:
    return not isinstance(a, torch.Tensor) or (isinstance(b, torch.Tensor) and a.shape == b.shape)


class _ConcreteTracer(torch.fx.Tracer):
    """Records the ops of a function called on concrete proxies, running each as it goes."""

    def __init__(self, dual: bool = False) -> None:
        super().__init__()
        self.root = nn.Module()  # holds the constants the body creates
        self.graph = torch.fx.Graph()
        self.tensor_attrs: dict = {}
        self.dual = dual  # batch-generic: every proxy also runs on the grown example

    def placeholder(self, name: str, value: Any, value2: Any = None) -> _ConcreteProxy:
        node = self.graph.placeholder(name)
        return _ConcreteProxy(node, self, value, value2)

    @staticmethod
    def _run(kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        with torch.no_grad():
            if kind == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
            if kind == "call_function":
                return target(*args, **kwargs)
        raise torch.fx.proxy.TraceError(f"unexpected {kind} node while inlining")

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        value = self._run(kind, target, map_aggregate(args, _value), map_aggregate(kwargs, _value))
        value2 = self._run(kind, target, map_aggregate(args, _value2), map_aggregate(kwargs, _value2)) if self.dual else None
        if (kind == "call_method" and target in _META_ONLY_METHODS) or (kind == "call_function" and target in _META_ONLY_FNS):
            if not self.dual or _same_shape(value, value2):
                return value  # made from sizes alone: a constant of the example's sizes
        return super().create_proxy(kind, target, args, kwargs, name, type_expr, lambda node: _ConcreteProxy(node, self, value, value2))


class _Values(torch.fx.Interpreter):
    """Runs the graph once and keeps the values the wrapped calls read."""

    def __init__(self, gm: torch.fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted = wanted
        self.values: dict[str, Any] = {}

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        return super().call_function(target, _mutable(args), _mutable(kwargs))

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.name in self.wanted:
            self.values[n.name] = map_aggregate(out, lambda v: v.detach().clone() if isinstance(v, torch.Tensor) else v)
        return out


class _Constant(Exception):
    """The call's result is plain Python data computed from sizes."""

    def __init__(self, value: Any) -> None:
        super().__init__("constant")
        self.value = value


def _fold(node: torch.fx.Node, value: Any) -> None:
    """Replace a call whose result is plain data by that data in its users' arguments."""
    for user in list(node.users):
        user.args = map_aggregate(user.args, lambda a: value if a is node else a)
        user.kwargs = map_aggregate(user.kwargs, lambda a: value if a is node else a)
    node.graph.erase_node(node)


_INPLACE_FNS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _mutates(node: torch.fx.Node) -> bool:
    """Nodes dead-code elimination must keep: in-place updates (``x.add_``, ``x[i] = v``, ``x += v``)."""
    if node.op in ("placeholder", "output") or (node.op == "call_function" and node.target in _INPLACE_FNS):
        return True
    if node.kwargs.get("inplace") is True:  # F.relu(x, inplace=True)
        return True
    name = str(node.target) if node.op == "call_method" else getattr(node.target, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


_NOTHING = object()


def _trace_call(
    node: torch.fx.Node, values: dict[str, Any], values2: dict[str, Any] | None = None
) -> tuple[torch.fx.Graph, nn.Module, list[torch.fx.Node], Any]:
    """The body of one wrapped call as a graph whose placeholders are the call's node arguments (in order).

    The last item is the call's result when it is plain data returned by a body
    that updates its arguments in place (the graph then returns nothing), else ``_NOTHING``.
    """
    tracer = _ConcreteTracer(dual=values2 is not None)
    arg_nodes: list[torch.fx.Node] = []
    proxies: dict[str, Any] = {}

    def to_proxy(a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            v = values[a.name]
            v2 = values2[a.name] if values2 is not None else None
            if not isinstance(v, torch.Tensor) and (values2 is None or v == v2):
                return v  # a size computed in the outer graph: specialized like the body's
            if values2 is not None and not isinstance(v, (torch.Tensor, int)):
                raise torch.fx.proxy.TraceError(f"argument {a.name} differs with the batch size")
            if a.name not in proxies:
                arg_nodes.append(a)
                c = (lambda t: t.clone() if isinstance(t, torch.Tensor) else t)  # noqa: E731
                proxies[a.name] = tracer.placeholder(f"arg_{len(arg_nodes)}", c(v), c(v2))
            return proxies[a.name]
        return a

    args = _mutable(map_aggregate(node.args, to_proxy))
    kwargs = _mutable(map_aggregate(node.kwargs, to_proxy))
    fn = node.target
    assert callable(fn)  # wrapped_calls: call_function nodes of Python functions
    result = fn(*args, **kwargs)
    if not _has_proxy_or_tensor(result):  # sizes only (window and pad sizes): a constant of the example
        if not any(_mutates(n) and n.op != "placeholder" for n in tracer.graph.nodes):
            raise _Constant(result)
        # called for its in-place updates (it may also return sizes): the updates are spliced, the result folded
        tracer.graph.output(None)
        tracer.graph.eliminate_dead_code(is_impure_node=_mutates)
        return tracer.graph, tracer.root, arg_nodes, result
    out: Any
    if isinstance(result, (tuple, list)):
        out = type(result)(tracer.create_arg(r) for r in result)
    else:
        out = tracer.create_arg(result)
    tracer.graph.output(out)
    tracer.graph.eliminate_dead_code(is_impure_node=_mutates)
    return tracer.graph, tracer.root, arg_nodes, _NOTHING


def _splice(
    gm: torch.fx.GraphModule, node: torch.fx.Node, sub: torch.fx.Graph, consts: nn.Module, arg_nodes: Sequence[torch.fx.Node], constant: Any
) -> None:
    graph = gm.graph
    placeholders = [n for n in sub.nodes if n.op == "placeholder"]
    env: dict[torch.fx.Node, Any] = {}
    by_name = {f"arg_{i + 1}": a for i, a in enumerate(arg_nodes)}
    for p in placeholders:
        env[p] = by_name[str(p.target)]
    out_node = next(n for n in sub.nodes if n.op == "output")
    if isinstance(out_node.args[0], (tuple, list)):
        if any(u.op != "call_function" or u.target is not operator.getitem or not isinstance(u.args[1], int) for u in node.users):
            raise RuntimeError(f"{node.name}: its tuple result is used as a whole")
    elif constant is _NOTHING and not isinstance(out_node.args[0], torch.fx.Node):  # (a folded constant returns nothing)
        raise RuntimeError(f"{node.name}: returns {type(out_node.args[0]).__name__}")
    prefix = f"_inlined_{node.name}_"
    out_arg: Any = None
    with graph.inserting_before(node):
        for n in sub.nodes:
            if n.op == "placeholder":
                continue
            if n.op == "output":
                out_arg = map_aggregate(n.args[0], lambda a: env[a] if isinstance(a, torch.fx.Node) else a)
                continue
            if n.op == "get_attr":
                name = prefix + str(n.target).replace(".", "_")
                t = getattr(consts, str(n.target))
                if isinstance(t, torch.Tensor):
                    gm.register_buffer(name, t.detach().clone(), persistent=False)
                else:
                    setattr(gm, name, t)
                env[n] = graph.get_attr(name)
                continue
            env[n] = graph.node_copy(n, lambda a: env[a])
    if constant is not _NOTHING:
        _fold(node, constant)
        return
    if isinstance(out_arg, torch.fx.Node):
        node.replace_all_uses_with(out_arg)
    elif isinstance(out_arg, (tuple, list)):
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int):
                user.replace_all_uses_with(out_arg[user.args[1]])
                graph.erase_node(user)
    graph.erase_node(node)


def _grown_run(gm: torch.fx.GraphModule, wanted: set[str], example_inputs: Sequence[Any]) -> _Values | None:
    """The graph run on the example grown by one along dim 0 (the batch), or None where it does not run."""
    grown = [torch.cat([x, x[:1]]) if isinstance(x, torch.Tensor) and x.dim() > 0 else x for x in example_inputs]
    if not any(isinstance(x, torch.Tensor) and x.dim() > 0 for x in example_inputs):
        return None
    run2 = _Values(gm, wanted)
    try:
        with torch.no_grad():
            run2.run(*grown)
    except Exception as exc:  # a model with a fixed batch size
        log.info("the model does not run at batch + 1 (%s): wrapped functions are specialized to the example", exc)
        return None
    return run2


def _generic_trace(node: torch.fx.Node, run: _Values, run2: _Values) -> tuple | None:
    """The body traced with batch-dependent sizes read at run time, if its graph reproduces the call's
    results at both batch sizes; else None (the caller specializes it to the example)."""
    try:
        sub, consts, arg_nodes, constant = _trace_call(node, run.values, run2.values)
    except _Constant:
        raise
    except Exception as exc:
        log.info("%s: not batch-generic (%s); specialized to the example", node.name, exc)
        return None
    if constant is not _NOTHING:
        return sub, consts, arg_nodes, constant
    body = torch.fx.GraphModule(consts, sub)
    for values in (run.values, run2.values):
        args = [_clone(values[a.name]) for a in arg_nodes]
        try:
            with torch.no_grad():
                got = body(*args)
        except Exception as exc:
            log.info("%s: the batch-generic body fails (%s); specialized to the example", node.name, exc)
            return None
        if not _equal(got, values[node.name]):
            log.info("%s: the batch-generic body differs from the call; specialized to the example", node.name)
            return None
    return sub, consts, arg_nodes, constant


def _clone(v: Any) -> Any:
    return map_aggregate(v, lambda t: t.clone() if isinstance(t, torch.Tensor) else t)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def inline_wrapped(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> list[str]:
    """Replace wrapped leaf calls by their bodies traced at the example's sizes (batch-generic where they can be).
    Returns the inlined functions' names."""
    calls = wrapped_calls(gm)
    if not calls:
        return []
    wanted = {a.name for n in calls for a in n.all_input_nodes} | {n.name for n in calls}
    run = _Values(gm, wanted)
    with torch.no_grad():
        run.run(*example_inputs)
    run2 = _grown_run(gm, wanted, example_inputs)
    done: list[str] = []
    for node in reversed(calls):  # last first: a call's arguments are still the nodes whose values were recorded
        name = getattr(node.target, "__qualname__", str(node.target))
        try:
            traced = _generic_trace(node, run, run2) if run2 is not None else None
            sub, consts, arg_nodes, constant = traced or _trace_call(node, run.values)
        except _Constant as c:
            _fold(node, c.value)
            done.append(name)
            continue
        except Exception as exc:  # a value-dependent branch, an unsupported construct: stays a leaf
            log.info("cannot inline %s (%s): %s", node.name, name, exc)
            continue
        try:
            _splice(gm, node, sub, consts, arg_nodes, constant)
        except RuntimeError as exc:
            log.info("cannot inline %s (%s): %s", node.name, name, exc)
            continue
        done.append(name)
    if done:
        gm.graph.lint()
        gm.recompile()
    return done
