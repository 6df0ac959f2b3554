"""The concrete trace: ``torch.fx`` tracing with every proxy carrying its value on the example.

The third way to trace, for models whose Python code branches on sizes and whose
data-dependent parts (NMS, RoI sampling) ``torch.export`` refuses: torchvision's
detection models. It is tried only for models that hold registered run-time parts
(:mod:`frontends.torch.runtime`), after ``symbolic_trace`` and ``torch.export`` failed.

Cases handled, one by one:

1. every op runs on the example's values as it is recorded, so each proxy knows its
   value; sizes (``x.shape``, ``x.size(1)``, ``h * w``) are recorded as run-time nodes
   that carry their values, so the graph reads them at run time (other image sizes and
   other numbers of boxes run);
2. Python control flow reads the value: ``bool``, ``len``, ``iter``, ``int`` and
   indexing of a proxy use the example's value (a branch is taken as on the example;
   list lengths, such as the number of images, are the example's);
3. run-time leaves (:mod:`frontends.torch.runtime`) are single nodes: registered module
   classes and :class:`RuntimeMethod` modules as ``call_module``, registered functions as
   ``call_function``; their bodies run when the graph runs;
4. nodes computed only for control flow are dropped (dead-code elimination, in-place
   updates kept).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import sys
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn
from torch.fx import _symbolic_trace as _st
from torch.fx.node import map_aggregate

from frontends.torch import runtime
from frontends.torch.nodes import module_attr
from frontends.torch.structured import Signature, leaf_root_args

log = logging.getLogger(__name__)

__all__ = ["ConcreteTrace", "concrete_trace"]

_PRIVATE = {"value", "node", "tracer"}
_DICT_METHODS = {"keys", "values", "items"}


class _Proxy(torch.fx.Proxy):
    """A proxy with its value on the example (``value``)."""

    def __init__(self, node: torch.fx.Node, tracer: torch.fx.Tracer, value: Any) -> None:
        super().__init__(node, tracer)
        self.value = value

    def __getattr__(self, k: str) -> Any:
        if k in _PRIVATE or k.startswith("__"):
            raise AttributeError(k)
        v = getattr(self.value, k)
        if isinstance(self.value, Mapping) and k in _DICT_METHODS:
            return lambda: _dict_view(self, k)
        if callable(v) and not isinstance(v, (torch.Tensor, type)):
            return _Method(self, k)
        return self.tracer.create_proxy("call_function", getattr, (self, k), {})

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # noqa: D105 - isinstance(x, torch.Tensor) holds for a tensor's proxy (type() is unchanged)
        return torch.Tensor if isinstance(self.__dict__.get("value"), torch.Tensor) else type(self)

    def __len__(self) -> int:
        return len(self.value)

    def __iter__(self) -> Any:
        if isinstance(self.value, Mapping):
            return iter(list(self.value))
        return iter([_item(self, i) for i in range(len(self.value))])

    def __bool__(self) -> bool:
        return bool(self.value)

    def __index__(self) -> int:
        return operator.index(self.value)

    def __int__(self) -> int:
        return int(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def __contains__(self, k: Any) -> bool:
        return k in self.value

    def __setitem__(self, index: Any, v: Any) -> None:
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, v), {})


class _Method:
    """A bound method of a proxy's value: calling it records a ``call_method`` node."""

    def __init__(self, obj: _Proxy, name: str) -> None:
        self.obj, self.name = obj, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.obj.tracer.create_proxy("call_method", self.name, (self.obj, *args), kwargs)


def _item(p: _Proxy, k: Any) -> Any:
    """``p[k]`` recorded as a ``getitem`` node."""
    return p.tracer.create_proxy("call_function", operator.getitem, (p, k), {})


def _dict_view(p: _Proxy, k: str) -> list[Any]:
    keys = list(p.value)
    if k == "keys":
        return keys
    if k == "values":
        return [_item(p, key) for key in keys]
    return [(key, _item(p, key)) for key in keys]


def _containers(proxy: _Proxy, value: Any) -> Any:
    """A list, tuple or dict value as that container of item proxies (``isinstance`` tests see a list);
    sizes (``torch.Size``) and named tuples stay one proxy."""
    if type(value) in (list, tuple):
        return type(value)(_item(proxy, i) for i in range(len(value)))
    if type(value) in (dict, OrderedDict):
        return type(value)((k, _item(proxy, k)) for k in value)
    return proxy


def _val(a: Any) -> Any:
    return a.value if isinstance(a, _Proxy) else a


_INPLACE = {operator.setitem}


def _impure(n: torch.fx.Node) -> bool:
    if n.op in ("placeholder", "output") or (n.op == "call_function" and n.target in _INPLACE):
        return True
    if n.op == "call_module" or (n.op == "call_function" and n.target in runtime.leaf_functions()):
        return False
    if n.kwargs.get("inplace") is True:
        return True
    name = str(n.target) if n.op == "call_method" else getattr(n.target, "__name__", "")
    return name.endswith("_") and not name.endswith("__")


@contextlib.contextmanager
def _unpatched() -> Iterator[None]:
    """``nn.Module.__call__`` and ``__getattr__`` as they are outside tracing, to run a leaf module for its value."""
    call, get = nn.Module.__call__, nn.Module.__getattr__
    nn.Module.__call__ = _st._orig_module_call  # type: ignore[method-assign]
    nn.Module.__getattr__ = _st._orig_module_getattr  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.__call__ = call  # type: ignore[method-assign]
        nn.Module.__getattr__ = get  # type: ignore[method-assign]


class _Tracer(torch.fx.Tracer):
    """Records ops while running them on the example (see the module docstring)."""

    def __init__(self, sig: Signature, leaves: list[Any]) -> None:
        super().__init__()  # run-time functions are patched by :func:`_patch_functions` (their results are containers)
        self.sig, self.example = sig, leaves

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return runtime.is_leaf_module(m) or super().is_leaf_module(m, qualified_name)

    def _run(self, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        a, k = runtime.mutable(map_aggregate(args, _val)), runtime.mutable(map_aggregate(kwargs, _val))
        if kind == "get_attr":
            return module_attr(self.root, target)
        if kind == "call_module":
            with torch.no_grad(), _unpatched():
                return self.root.get_submodule(target)(*a, **k)
        if kind == "call_method":
            with torch.no_grad():
                return getattr(a[0], target)(*a[1:], **k)
        if kind == "call_function":
            with torch.no_grad():
                return target(*a, **k)
        raise torch.fx.proxy.TraceError(f"unexpected {kind} node")

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):  # noqa: ANN001
        if kind == "placeholder":
            value = self.example[[n for n in self.sig.leaf_names].index(target)]
        else:
            value = self._run(kind, target, args, kwargs)
            if value is None:  # nothing to read at run time (``targets`` in eval mode): a constant for `is None` tests
                return None
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, lambda node: _Proxy(node, self, value))
        return _containers(proxy, value)

    def create_arg(self, a: Any) -> Any:
        if type(a) is _Proxy:  # before the tensor cases: a tensor's proxy passes isinstance(a, torch.Tensor)
            return a.node
        return super().create_arg(a)

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        return bool(_val(obj))

    def iter(self, obj: torch.fx.Proxy) -> Any:
        return iter(obj)

    def keys(self, obj: torch.fx.Proxy) -> Any:
        return list(_val(obj))

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> tuple[Any, list[Any]]:
        return leaf_root_args(self, self.sig, root_fn)


@dataclass
class ConcreteTrace:
    gm: torch.fx.GraphModule
    method: str = "concrete_trace"
    notes: list[str] = field(default_factory=list)


def _patch_methods(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """Each registered method of a module becomes a :class:`RuntimeMethod` child ``runtime_<method>`` and, for the
    trace, an instance attribute that calls it. Returns (owner, method, child name) to undo the attributes."""
    patched = []
    for m in list(model.modules()):
        for cls in type(m).__mro__:
            for meth in runtime.LEAF_METHODS.get(cls.__name__, ()):
                child = f"runtime_{meth}"
                if child in m._modules:
                    continue
                m.add_module(child, runtime.RuntimeMethod(m, meth))
                leaf = m.get_submodule(child)
                # the instance attribute shadows the class's method for the trace; ``leaf(...)`` goes through the
                # tracer's ``nn.Module.__call__``, so the call is one ``call_module`` node
                m.__dict__[meth] = functools.partial(_call, leaf)
                patched.append((m, meth, child))
    return patched


def _patch_functions(tracer: _Tracer) -> list[tuple[dict[str, Any], str, Any]]:
    """Each run-time function, in the globals of its module, records one ``call_function`` node when a proxy is among
    its arguments. Returns (globals, name, original) to undo."""
    patched = []
    for fn in runtime.leaf_functions():
        scope = sys.modules[fn.__module__].__dict__

        def wrapped(*args: Any, _fn: Any = fn, **kwargs: Any) -> Any:
            found: list[Any] = []
            map_aggregate((args, kwargs), lambda a: found.append(a) if isinstance(a, torch.fx.Proxy) else None)
            return tracer.create_proxy("call_function", _fn, args, kwargs) if found else _fn(*args, **kwargs)

        patched.append((scope, fn.__name__, fn))
        scope[fn.__name__] = wrapped
    return patched


def _call(leaf: nn.Module, *args: Any, **kwargs: Any) -> Any:
    return leaf(*args, **kwargs)


def concrete_trace(model: nn.Module, sig: Signature | None, inputs: tuple[Any, ...]) -> ConcreteTrace | None:
    """The concrete trace of ``model`` (an eval copy the caller owns) on the leaves ``inputs``; None where the model
    holds no registered run-time part or the trace fails (the caller reports its own errors)."""
    if sig is None or not runtime.has_runtime_parts(model):
        return None
    patched = _patch_methods(model)
    tracer = _Tracer(sig, list(inputs))
    functions = _patch_functions(tracer)
    try:
        graph = tracer.trace(model)
        graph.eliminate_dead_code(is_impure_node=_impure)
        gm = torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # noqa: BLE001 - the caller raises the trace error of the other methods
        log.info("concrete trace failed: %s", exc)
        return None
    finally:
        for m, meth, _child in patched:
            m.__dict__.pop(meth, None)
        for scope, name, fn in functions:
            scope[name] = fn
    leaves = sorted({str(n.target) for n in gm.graph.nodes if n.op == "call_module" and runtime.is_leaf_module(gm.get_submodule(str(n.target)))})
    leaves += sorted({getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes if n.op == "call_function" and n.target in runtime.leaf_functions()})
    note = "traced with its run-time parts as leaves (kept as they are, their input channels frozen): " + ", ".join(leaves)
    return ConcreteTrace(gm, notes=[note, "Python control flow is specialized to the example (list lengths, such as the number of images, and branches)"])
