"""Verification pass (torch): the pruned model against the masked original.

The reference (:class:`MaskedInterpreter`) runs the *original* traced graph with every
removed channel zeroed after every node (``torch.where``, so inf/nan of a removed channel
never leak). An op whose spec has reference semantics for torch
(``op_spec(kind).reference_semantics("torch")``) runs those instead of itself: where
statistics span a channel dim, the semantics of the pruned model. Cases registered here:

1. ``layer_norm``: statistics over the kept channels of the normalized dims;
2. ``group_norm`` with one group whose channels may be pruned one by one
   (``stats_over_kept``): statistics over the kept channels and every spatial dim.

Both models run in float64 where they can (float32 otherwise), so a rewrite error
stands out from rounding; every intermediate tensor is compared at its kept positions.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.utils._pytree as pytree

from frontends.adapter import VerifyResult, verify_wide_then_narrow
from frontends.errors import VerificationError
from frontends.graph import Op
from frontends.torch.nodes import call_name
from frontends.torch.trace import TracedModel
from passes.channel_analysis import AnalysisResult
from passes.ops import lookup, op_spec

log = logging.getLogger(__name__)

__all__ = ["VerifyFX", "VerifyResult", "MaskedInterpreter", "flat_tensors"]


@dataclass
class _NodeStats:
    n: int = 0  # intermediate tensors compared
    err: float = 0.0  # the worst relative error among them
    worst: str = ""  # at this node


def flat_tensors(x: Any) -> list[torch.Tensor]:
    """Every tensor leaf of ``x`` in order: nested tuples, lists, dicts, named tuples, ``ModelOutput``."""
    return [t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


class CastingInterpreter(torch.fx.Interpreter):
    """Runs a graph module with its floating-point parameters and buffers in ``dtype`` and ``overrides``
    (full name -> tensor) in place of some, without copying or changing the module.

    A parameter is cast where a node uses it and dropped after that node (a ``call_module`` runs on a copy
    of that one submodule), so the float64 comparison of a large model holds one layer's float64 weights
    at a time instead of a float64 copy of the whole model.
    """

    def __init__(self, gm: torch.fx.GraphModule, dtype: torch.dtype | None = None, overrides: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__(gm)
        self.dtype = dtype
        self.overrides = overrides or {}
        self._owned = {id(t) for t in gm.parameters()} | {id(t) for t in gm.buffers()}

    def cast(self, x: Any) -> Any:
        """``x`` with the module's own floating-point tensors in it cast to ``dtype``."""
        if self.dtype is None:
            return x
        dtype = self.dtype
        owned = self._owned

        def one(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and id(t) in owned and t.is_floating_point() and t.dtype != dtype:
                return t.detach().to(dtype)
            return t

        return pytree.tree_map(one, x)

    def fetch_attr(self, target: str) -> Any:
        if target in self.overrides:
            return self.overrides[target]
        return super().fetch_attr(target)  # the module's own tensor: cast where it is used

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        if self.dtype is not None and target in _EMBEDDINGS and len(args) > 1 and self._is_owned(args[1 if target is _F_EMBEDDING else 0]):
            return super().call_function(target, args, kwargs).to(self.dtype)  # a gather: exact in any dtype
        if self.dtype is not None and target in _LINEARS and len(args) > 1 and self._is_owned(args[1]):
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return _chunked_linear(args[0], args[1], bias, self.dtype)
        return super().call_function(target, self.cast(args), self.cast(kwargs))

    def _is_owned(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self._owned and t.is_floating_point() and t.dtype != self.dtype

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        return super().call_method(target, self.cast(args), self.cast(kwargs))

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        m = super().fetch_attr(str(target))
        if self.dtype is not None and type(m) is nn.Linear and len(args) == 1 and not kwargs and self._is_owned(m.weight):
            if not any(k.startswith(f"{target}.") for k in self.overrides):
                return _chunked_linear(args[0], m.weight, m.bias, self.dtype)
        if self.dtype is not None and type(m) is nn.Embedding and m.max_norm is None and self._is_owned(m.weight):
            if not any(k.startswith(f"{target}.") for k in self.overrides):
                return m(*args, **kwargs).to(self.dtype)  # a gather: exact in any dtype
        return self.submodule(str(target))(*args, **kwargs)

    def submodule(self, target: str) -> nn.Module:
        """The submodule at ``target`` with its tensors in ``dtype`` and the overrides under it: a copy of that
        submodule only, or the submodule itself where nothing changes."""
        m = super().fetch_attr(target)
        prefix = f"{target}."
        mine = {k[len(prefix) :]: v for k, v in self.overrides.items() if k.startswith(prefix)}
        tensors = [*m.named_parameters(remove_duplicate=False), *m.named_buffers(remove_duplicate=False)]
        if not mine and (self.dtype is None or all(not t.is_floating_point() or t.dtype == self.dtype for _, t in tensors)):
            return m
        memo: dict[int, Any] = {}
        params = {id(p) for _, p in m.named_parameters(remove_duplicate=False)}
        for name, t in tensors:
            new = mine.pop(name, None)
            if new is None:
                new = self.cast(t) if id(t) in self._owned else t
            memo[id(t)] = nn.Parameter(new.detach(), requires_grad=False) if id(t) in params else new.detach()
        copied = copy.deepcopy(m, memo)
        for name, value in mine.items():  # a tensor the module does not have yet (a bias bias propagation created)
            parent, _, attr = name.rpartition(".")
            setattr(copied.get_submodule(parent) if parent else copied, attr, nn.Parameter(value, requires_grad=False))
        return copied


_F_EMBEDDING = torch.nn.functional.embedding
_EMBEDDINGS = {_F_EMBEDDING, torch.ops.aten.embedding.default}  # (weight, ids) for aten, (ids, weight) for F
_LINEARS = {torch.nn.functional.linear, torch.ops.aten.linear.default}
_CHUNK_BYTES = 64 << 20


def _chunked_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """``F.linear(x, w, b)`` in ``dtype`` with ``w`` cast a block of output features at a time: a large
    layer (an LLM's vocabulary head) is never held whole in ``dtype``. Each output is computed as in one call."""
    x = x.to(dtype) if x.is_floating_point() else x
    rows = max(1, _CHUNK_BYTES // max(1, w.shape[1] * torch.finfo(dtype).bits // 8))
    if rows >= w.shape[0]:
        return torch.nn.functional.linear(x, w.to(dtype), None if b is None else b.to(dtype))
    parts = [
        torch.nn.functional.linear(x, w[i : i + rows].to(dtype), None if b is None else b[i : i + rows].to(dtype))
        for i in range(0, w.shape[0], rows)
    ]
    return torch.cat(parts, dim=-1)


class _PrunedRun(CastingInterpreter):
    """The pruned graph module run node by node alongside the masked original, so that intermediate tensors
    are compared as they are made instead of all being kept to the end: ``take(name)`` runs the graph up to
    the node ``name`` and hands over a copy of its floating-point tensors (None: none, or no such node);
    ``finish()`` runs the rest and returns the outputs. Only nodes whose names the reference also has
    (``wanted``) are copied; in the usual case (the rewrite keeps the order) nothing waits."""

    def __init__(self, gm: torch.fx.GraphModule, dtype: torch.dtype | None, wanted: AbstractSet[str], args: Sequence[Any]) -> None:
        super().__init__(gm, dtype)
        self.names = {n.name for n in gm.graph.nodes}
        self.wanted = wanted
        self.pending: dict[str, Any] = {}
        self.env = {}
        self.args_iter = iter(self.graph.process_inputs(*args))
        self._nodes = iter(self.graph.nodes)
        self.done, self.result = False, None  # (not self.output: that is the interpreter's op for the output node)

    def _step(self) -> None:
        node = next(self._nodes)
        out = self.env[node] = self.run_node(node)
        if node.name in self.wanted and node.op not in ("placeholder", "output", "get_attr") and not node.meta.get("prunec_partial"):
            # a copy: a later in-place op (ReLU(inplace=True)) must not change what is compared
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                self.pending[node.name] = out.clone()
            elif isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
                self.pending[node.name] = [o.clone() if isinstance(o, torch.Tensor) else o for o in out]
        if self.garbage_collect_values:
            for gone in self.user_to_last_uses.get(node, []):
                del self.env[gone]
        if node.op == "output":
            self.done, self.result = True, self.graph.process_outputs(out)

    def take(self, name: str) -> Any:
        if name not in self.names:
            return None
        while name not in self.pending and not self.done:
            self._step()
        return self.pending.pop(name, None)

    def finish(self) -> Any:
        while not self.done:
            self._step()
        self.pending.clear()
        return self.result


class MaskedInterpreter(CastingInterpreter):
    """Runs the original graph with the removed channels zeroed after every node (``masks``: per node, per output).

    A node whose op has torch reference semantics (``spec.reference["torch"]``) runs those:
    ``handler(run: MaskedInterpreter, op: Op, node: torch.fx.Node) -> result``.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        masks: dict[str, list[torch.Tensor | None]],
        ops: dict[str, Op],
        on_node: Callable[[torch.fx.Node, Any], None] | None = None,
        dtype: torch.dtype | None = None,
        overrides: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(gm, dtype, overrides)
        self.masks = masks
        self.ops = ops  # the channel graph's ops, by the name of the node they came from
        self.on_node = on_node

    def run_node(self, n: torch.fx.Node) -> Any:
        out = self._run(n)
        if self.on_node is not None:
            self.on_node(n, out)
        return out

    def run_op(self, n: torch.fx.Node) -> Any:
        """The node's own op on its (masked) inputs."""
        return super().run_node(n)

    def input_mask(self, n: torch.fx.Node) -> torch.Tensor | None:
        """The keep mask of the node's first input (None: nothing removed there)."""
        x = n.args[0]
        return self.masks.get(x.name, [None])[0] if isinstance(x, torch.fx.Node) else None

    def norm_args(self, n: torch.fx.Node) -> tuple[Any, Any, Any, Any]:
        """(input, weight, bias, eps) of a norm module or of F.layer_norm / F.group_norm (input, size, weight, bias, eps)."""
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if n.op == "call_module":
            m = self.submodule(str(n.target))
            return args[0], m.weight, m.bias, m.eps
        args, kwargs = self.cast(args), self.cast(kwargs)
        w = kwargs.get("weight", args[2] if len(args) > 2 else None)
        b = kwargs.get("bias", args[3] if len(args) > 3 else None)
        return args[0], w, b, kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)

    def _run(self, n: torch.fx.Node) -> Any:
        op = self.ops.get(n.name)
        spec = lookup(op) if op is not None else None
        reference = spec.reference.get("torch") if spec is not None else None
        out = reference(self, op, n) if reference is not None else super().run_node(n)
        masks = self.masks.get(n.name)
        if not masks:
            return out
        # A view of an input (x[:, 1:], x.transpose) or an in-place update (x.add_, x += y) is masked in
        # place, so every alias of the storage sees the same values, as in the model. Elsewhere a copy.
        shared = {a.untyped_storage().data_ptr() for a in flat_tensors(self.fetch_args_kwargs_from_env(n))}
        if isinstance(out, torch.Tensor):
            return _apply(out, masks[0], shared)
        if isinstance(out, (tuple, list)):
            return type(out)(_apply(o, m, shared) if isinstance(o, torch.Tensor) else o for o, m in zip(out, masks, strict=False))
        return out


def _normalize_over_kept(x: torch.Tensor, mask: torch.Tensor | None, k: int, w: Any, b: Any, eps: float) -> torch.Tensor:
    """``x`` normalized over its last ``k`` dims with statistics of the kept positions only, then the affine."""
    dims = tuple(range(x.dim() - k, x.dim()))
    m = torch.ones_like(x, dtype=torch.bool) if mask is None else mask.expand_as(x)
    mf = m.to(x.dtype)
    cnt = mf.sum(dims, keepdim=True).clamp_min(1)
    mean = (x * mf).sum(dims, keepdim=True) / cnt
    var = (((x - mean) * mf) ** 2).sum(dims, keepdim=True) / cnt
    y = (x - mean) / torch.sqrt(var + eps)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y


@op_spec("layer_norm").reference_semantics("torch")
def _layer_norm_over_kept(run: MaskedInterpreter, op: Op, n: torch.fx.Node) -> torch.Tensor:
    """LayerNorm: statistics over the kept channels of its last ``ndim`` dims, as the pruned model computes them."""
    x, w, b, eps = run.norm_args(n)
    return _normalize_over_kept(x, run.input_mask(n), int(op.attrs["ndim"]), w, b, eps)


@op_spec("group_norm").reference_semantics("torch")
def _group_norm_over_kept(run: MaskedInterpreter, op: Op, n: torch.fx.Node) -> Any:
    """GroupNorm(1, C) pruned channel by channel (``stats_over_kept``): over the kept channels and every spatial
    dim, with a per-channel affine. Other group norms lose whole groups: the op itself is the reference."""
    if not (op.attrs["num_groups"] == 1 and op.attrs.get("stats_over_kept")):
        return run.run_op(n)
    x, w, b, eps = run.norm_args(n)
    affine = (-1,) + (1,) * (x.dim() - 2)
    w = None if w is None else w.reshape(affine)
    b = None if b is None else b.reshape(affine)
    return _normalize_over_kept(x, run.input_mask(n), x.dim() - 1, w, b, eps)


def _apply(t: torch.Tensor, mask: torch.Tensor | None, shared: AbstractSet[int] = frozenset()) -> torch.Tensor:
    """Zero the removed positions (``torch.where``: inf/nan there never leak); in place when ``t`` aliases an input.

    In place is safe for an alias: a position removed in a view is removed in the tensor it views (the op
    rules derive a view's channels from its input's), so the input is only zeroed where it is zero already,
    or where an in-place update through the view must be zeroed for every alias.
    """
    if mask is None:
        return t
    if t.untyped_storage().data_ptr() in shared and 0 not in t.stride():  # (an expanded view cannot be updated)
        return t.masked_fill_(~mask, 0)
    return torch.where(mask, t, torch.zeros((), dtype=t.dtype, device=t.device))


class VerifyFX:
    """``call(traced, analysis, pruned, module, inputs) -> VerifyResult``; raises on mismatch."""

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-7) -> None:
        self.rtol, self.atol = rtol, atol

    def masks(self, traced: TracedModel, analysis: AnalysisResult, pruned: np.ndarray) -> dict[str, list[torch.Tensor | None]]:
        out: dict[str, list[torch.Tensor | None]] = {}
        for node_name, values in traced.node_values.items():
            ms: list[torch.Tensor | None] = []
            any_mask = False
            for v in values:
                val = analysis.graph.values.get(v)
                lab = analysis.labels.get(v)
                if val is None or not val.is_tensor or not lab or val.is_const:
                    ms.append(None)
                    continue
                mask = None
                for d, dl in enumerate(lab):
                    if dl is None:
                        continue
                    keep = ~pruned[analysis.atom_class[dl]]
                    if keep.all():
                        continue
                    shape = [1] * len(lab)
                    shape[d] = len(keep)
                    km = torch.as_tensor(keep).reshape(shape)
                    mask = km if mask is None else (mask & km)
                ms.append(mask)
                any_mask = any_mask or mask is not None
            if any_mask:
                out[node_name] = ms
        return out

    def reference(
        self,
        traced: TracedModel,
        analysis: AnalysisResult,
        pruned: np.ndarray,
        inputs: Sequence[Any],
        gm=None,
        on_node=None,
        dtype: torch.dtype | None = None,
        overrides: dict[str, torch.Tensor] | None = None,
    ) -> Any:
        """The masked original on ``inputs``: ``gm`` (default: the traced graph module) with its parameters in
        ``dtype`` and ``overrides`` (full name -> tensor) in place of some, neither copied nor changed."""
        masks = self.masks(traced, analysis, pruned)
        gm = gm if gm is not None else traced.gm
        with torch.no_grad(), _eval_mode(gm):
            return MaskedInterpreter(gm, masks, analysis.graph.ops, on_node, dtype, overrides).run(*inputs)

    @staticmethod
    def _kept_index(traced: TracedModel, analysis: AnalysisResult, pruned: np.ndarray) -> dict[str, list[list[torch.Tensor | None]]]:
        """Per node and output: the kept indices of every pruned dim (None: nothing removed there)."""
        out: dict[str, list[list[torch.Tensor | None]]] = {}
        for node_name, values in traced.node_values.items():
            per_value = []
            for v in values:
                lab = analysis.labels.get(v) or []
                dims: list[torch.Tensor | None] = []
                for dl in lab:
                    if dl is None:
                        dims.append(None)
                        continue
                    keep = ~pruned[analysis.atom_class[dl]]
                    dims.append(None if keep.all() else torch.as_tensor(np.flatnonzero(keep)))
                per_value.append(dims)
            out[node_name] = per_value
        return out

    def call(
        self,
        traced: TracedModel,
        analysis: AnalysisResult,
        pruned: np.ndarray,
        module: nn.Module,
        inputs: Sequence[Any],
        updates: dict[str, np.ndarray] | None = None,
    ) -> VerifyResult:
        """``updates``: new constant values (bias propagation, compensation) the reference uses too."""
        # float64 where every op has it; else float32; else the model's own precision (a half-precision-only op)
        levels = [torch.float64, torch.float32]
        own = _own_dtype(module)
        if own is not None and own not in levels:
            levels.append(own)
        return verify_wide_then_narrow(
            lambda dtype: self._compare(traced, analysis, pruned, module, inputs, dtype, updates),
            "pruned model",
            "the original with removed channels zeroed",
            levels,
        )

    def _compare(self, traced, analysis, pruned, module, inputs, dtype, updates=None) -> VerifyResult:
        """Both models in ``dtype``: the outputs, and in float64 a GraphModule's intermediate tensors too."""
        ins = [_to_dtype(x, dtype) for x in inputs]
        # Neither model is copied: their parameters are cast node by node (CastingInterpreter); only a graph that
        # fixes a narrower precision (_follow_dtype) gets a copy of its graph, never of its weights.
        ref_gm = _follow_dtype(traced.gm, dtype)
        new = _follow_dtype(module, dtype)
        check_nodes = dtype == torch.float64 and isinstance(new, torch.fx.GraphModule)
        overrides = _overrides(traced.gm, updates, dtype)
        if not check_nodes:  # the outputs only: the pruned model first, then the reference
            got = flat_tensors(_run_pruned(new, ins, dtype))
            nodes = _NodeCheck(lambda name: None, {})
            ref = flat_tensors(self.reference(traced, analysis, pruned, ins, gm=ref_gm, dtype=dtype, overrides=overrides))
        else:  # both graphs stepped together: each intermediate tensor compared as soon as both have made it
            with torch.no_grad(), _eval_mode(new):
                run = _PrunedRun(new, dtype, {n.name for n in ref_gm.graph.nodes}, ins)
                nodes = _NodeCheck(run.take, self._kept_index(traced, analysis, pruned))
                ref = flat_tensors(
                    self.reference(traced, analysis, pruned, ins, gm=ref_gm, on_node=nodes, dtype=dtype, overrides=overrides)
                )
                got = flat_tensors(run.finish())
        _check_output_shapes(ref, got)
        err, scale = _output_error(ref, got)
        return self._result(err, scale, dtype, nodes.stats)

    def _result(self, err: float, scale: float, dtype: torch.dtype, node_stats: _NodeStats) -> VerifyResult:
        """Passed when the outputs are within ``atol + rtol * scale`` and every intermediate tensor within ``rtol``
        (at least ``DTYPE_RTOL`` of the precision compared in: 1e-3 in float32, 1e-2 in float16, 5e-2 in bfloat16)."""
        rtol = max(self.rtol, DTYPE_RTOL.get(dtype, 1e-3))
        tol = self.atol + rtol * scale
        nodes_ok = node_stats.err <= rtol
        return VerifyResult(
            bool(err <= tol and nodes_ok),
            err,
            scale,
            tol,
            str(dtype).replace("torch.", ""),
            node_stats.n,
            node_stats.err,
            node_stats.worst,
        )


def _to_dtype(x: Any, dtype: torch.dtype) -> Any:
    """A floating-point tensor in ``dtype``; anything else as it is."""
    return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x


# the least relative tolerance a comparison in each precision can hold (float64: the caller's rtol)
DTYPE_RTOL = {torch.float64: 0.0, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def _own_dtype(module: nn.Module) -> torch.dtype | None:
    """The floating-point dtype of the module's first floating parameter (None: none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def _overrides(gm: nn.Module, updates: dict[str, np.ndarray] | None, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The ``updates`` (new full-size constant values) as tensors in ``dtype``, shaped as the constants they replace."""
    out: dict[str, torch.Tensor] = {}
    for name, arr in (updates or {}).items():
        parent, _, attr = name.rpartition(".")
        old = getattr(gm.get_submodule(parent) if parent else gm, attr, None)
        t = torch.as_tensor(np.asarray(arr))
        out[name] = (t.reshape(old.shape) if isinstance(old, torch.Tensor) else t).to(dtype)
    return out


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode for the duration; every submodule's own mode restored afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    for m, _ in modes:  # not module.eval(): torch.export's unlifted modules refuse it
        m.training = False
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


_NARROWING_METHODS = {"float": torch.float32, "half": torch.float16, "bfloat16": torch.bfloat16}


def _narrower(x: Any, dtype: torch.dtype) -> bool:
    """``x`` is a floating-point dtype with fewer bits than ``dtype``."""
    return isinstance(x, torch.dtype) and x.is_floating_point and torch.finfo(x).bits < torch.finfo(dtype).bits


def _widen(n: torch.fx.Node, dtype: torch.dtype) -> bool:
    """Make a node that fixes a narrower floating-point precision work in ``dtype`` instead (in place); whether it
    changed. Cases: a ``dtype=`` keyword (factories, ``_to_copy``, ``softmax(..., dtype=)``), a dtype argument
    (``x.to(torch.float32)``, ``aten.to.dtype``; not ``view``, a reinterpretation of bits), and ``.float()``,
    ``.half()``, ``.bfloat16()``."""
    changed = False
    if n.op not in ("call_function", "call_method") or call_name(n) == "view":
        return False
    if _narrower(n.kwargs.get("dtype"), dtype):
        n.kwargs = {**n.kwargs, "dtype": dtype}
        changed = True
    if any(_narrower(a, dtype) for a in n.args):
        n.args = tuple(dtype if _narrower(a, dtype) else a for a in n.args)
        changed = True
    if n.op == "call_method" and n.target in _NARROWING_METHODS and _narrower(_NARROWING_METHODS[str(n.target)], dtype):
        n.target, n.args = "to", (n.args[0], dtype)
        changed = True
    return changed


def _follow_dtype(gm: Any, dtype: torch.dtype) -> Any:
    """A graph run in ``dtype`` for verification: every precision the trace fixed narrower than ``dtype`` — a
    torch.export graph's ``dtype=`` arguments baked from the model's own (``hidden.to(input_dtype)`` of a
    bfloat16 model), ``.to(torch.float32)`` in an RMS norm, ``zeros(..., dtype=float32)`` — is ``dtype`` instead,
    so that both models compute every value in ``dtype`` (a bfloat16 rounding inside would turn float64 noise
    into differences of 1e-2), and torch.export's ``_assert_tensor_metadata`` checks (no users) are removed.
    Returns ``gm`` itself where nothing changes, else a graph module with a changed copy of its graph that shares
    every submodule and tensor with ``gm``."""
    if not isinstance(gm, torch.fx.GraphModule):
        return gm
    graph = copy.deepcopy(gm.graph)
    changed = False
    for n in list(graph.nodes):
        if n.op == "call_function" and "_assert_tensor_metadata" in str(n.target) and not n.users:
            graph.erase_node(n)
            changed = True
        elif _widen(n, dtype):
            changed = True
    return torch.fx.GraphModule(gm, graph, class_name=type(gm).__name__) if changed else gm


def _run_pruned(new: nn.Module, ins: list[Any], dtype: torch.dtype) -> Any:
    """The pruned model's outputs in ``dtype``: a graph module with its parameters cast node by node, any other
    module on a copy in ``dtype``."""
    with torch.no_grad():
        if isinstance(new, torch.fx.GraphModule):
            with _eval_mode(new):
                return CastingInterpreter(new, dtype).run(*ins)
        return copy.deepcopy(new).to(dtype).eval()(*ins)


class _NodeCheck:
    """``on_node`` of the masked original: each node's tensors against the pruned model's (``take(name)``: its
    tensors of the node of that name, or None) at the kept positions (``kept``: per node and output, the kept
    indices of every pruned dim); the worst in ``stats``."""

    def __init__(self, take: Callable[[str], Any], kept: dict[str, list[list[torch.Tensor | None]]]) -> None:
        self.take, self.kept = take, kept
        self.stats = _NodeStats()

    def __call__(self, n: torch.fx.Node, ref_out: Any) -> None:
        mine = self.take(n.name)
        if mine is None:
            return
        refs = [ref_out] if isinstance(ref_out, torch.Tensor) else list(ref_out) if isinstance(ref_out, (tuple, list)) else []
        mines = [mine] if isinstance(mine, torch.Tensor) else list(mine)
        idx = self.kept.get(n.name, [])
        for i, (r, m) in enumerate(zip(refs, mines, strict=False)):
            if not (isinstance(r, torch.Tensor) and isinstance(m, torch.Tensor)) or not r.is_floating_point():
                continue
            rel = _node_error(n.name, _select_kept(r, idx[i] if i < len(idx) else []), m)
            if rel is None:
                continue
            self.stats.n += 1
            if rel > self.stats.err:
                self.stats.err, self.stats.worst = rel, n.name


def _select_kept(r: torch.Tensor, dims: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``r`` at the kept indices of each of its pruned dims."""
    for d, ix in enumerate(dims):
        if ix is not None and d < r.dim():
            r = r.index_select(d, ix)
    return r


def _node_error(name: str, r: torch.Tensor, m: torch.Tensor) -> float | None:
    """max |r - m| / max |r| of one intermediate tensor (None: nothing to compare); raises where the shapes differ.

    Where inf/nan occur, they must be at the same places with the same values; the finite rest is compared.
    """
    if r.shape != m.shape:
        raise VerificationError(
            f"node {name}: pruned model gives shape {tuple(m.shape)}, the masked original's kept channels {tuple(r.shape)}"
        )
    if r.numel() == 0:
        return None
    scale, diff = float(r.abs().max()), float((r - m).abs().max())
    if not (math.isfinite(scale) and math.isfinite(diff)):  # inf/nan somewhere: same places, then the rest
        fr, fm = torch.isfinite(r), torch.isfinite(m)
        fin = fr & fm
        if not bool(fin.any()):
            return None
        scale = float(r[fin].abs().max())
        diff = float((r[fin] - m[fin]).abs().max()) if _same_non_finite(r, m) else math.inf
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _check_output_shapes(ref: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    """Raises where the pruned model's outputs differ from the original's in number or shape."""
    if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got, strict=True)):
        raise VerificationError(
            f"pruned model outputs {[tuple(t.shape) for t in got]} but the original gives {[tuple(t.shape) for t in ref]}"
        )


def _output_error(ref: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    """(max |ref - got|, max |ref|) over the outputs, in float64; a differing non-float output counts 1, and
    inf/nan where the other model's values differ (in place or value; NaN at the same places compare equal)
    count inf: a NaN of the pruned model where the reference is finite is an infinite error, never 0."""
    err, scale = 0.0, 0.0
    for a, b in zip(ref, got, strict=True):
        if a.numel() == 0:
            continue
        if not a.is_floating_point():
            err = max(err, float((a != b).any()))
            continue
        fa, fb = torch.isfinite(a), torch.isfinite(b)
        if not (bool(fa.all()) and bool(fb.all())):
            if not _same_non_finite(a, b):
                err = math.inf
            a, b = a[fa & fb], b[fa & fb]
            if a.numel() == 0:
                continue
        err = max(err, float((a.double() - b.double()).abs().max()))
        scale = max(scale, float(a.double().abs().max()))
    return err, scale


def _same_non_finite(a: torch.Tensor, b: torch.Tensor) -> bool:
    """inf and NaN at the same positions of both, with the same values (NaN equal to NaN, an inf of the same sign)."""
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return False
    x, y = a[~fa], b[~fb]
    return torch.equal(torch.isnan(x), torch.isnan(y)) and torch.equal(_signs(x), _signs(y))


def _signs(x: torch.Tensor) -> torch.Tensor:
    """Non-finite values as comparable numbers: NaN 0, +inf 1, -inf -1."""
    return x.nan_to_num(nan=0.0, posinf=1.0, neginf=-1.0)
