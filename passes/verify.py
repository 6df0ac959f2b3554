"""Verification pass (torch): the pruned model against the masked original.

The reference runs the *original* traced graph with every removed channel zeroed
after every node (``torch.where``, so inf/nan of a removed channel never leak).
Ops whose statistics span a channel dim get the semantics of the pruned model:
LayerNorm (and GroupNorm with one group) normalizes over the kept channels only. Both models run in float64
where they can (float32 otherwise), so a rewrite error stands out from rounding.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from frontends.errors import VerificationError
from frontends.torch_fx import TracedModel
from passes.channel_analysis import AnalysisResult
from passes.rewrite_fx import apply_updates

log = logging.getLogger(__name__)

__all__ = ["VerifyFX", "VerifyResult", "flat_tensors"]


@dataclass
class VerifyResult:
    passed: bool
    max_abs_error: float  # at the model outputs
    reference_scale: float  # max |output| of the reference
    tolerance: float
    dtype: str
    nodes_checked: int = 0  # intermediate tensors compared at their kept positions
    max_node_error: float = 0.0  # worst |difference| / max |reference| over those tensors
    worst_node: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def flat_tensors(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in flat_tensors(v)]
    if isinstance(x, (list, tuple)):
        return [t for v in x for t in flat_tensors(v)]
    return []


class _Capture(torch.fx.Interpreter):
    """Runs a graph module and keeps every floating-point tensor a node produces."""

    def __init__(self, gm) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        if n.op not in ("placeholder", "output", "get_attr") and not n.meta.get("prunec_partial"):
            # clone: a later in-place op (ReLU(inplace=True)) must not change what was captured
            if isinstance(out, torch.Tensor) and out.is_floating_point():
                self.values[n.name] = out.clone()
            elif isinstance(out, (tuple, list)) and any(isinstance(o, torch.Tensor) for o in out):
                self.values[n.name] = [o.clone() if isinstance(o, torch.Tensor) else o for o in out]
        return out


_SINGLE_GROUP = -1  # marks a GroupNorm(1, C) among the layer norms: statistics over the kept channels too


class _Masked(torch.fx.Interpreter):
    def __init__(self, gm, masks: dict[str, list[torch.Tensor | None]], ln_nodes: dict[str, int], on_node=None) -> None:
        super().__init__(gm)
        self.masks = masks
        self.ln_nodes = ln_nodes
        self.on_node = on_node

    def run_node(self, n: torch.fx.Node) -> Any:
        out = self._run(n)
        if self.on_node is not None:
            self.on_node(n, out)
        return out

    def _run(self, n: torch.fx.Node) -> Any:
        if n.name in self.ln_nodes:
            out = self._masked_layer_norm(n)
        else:
            out = super().run_node(n)
        masks = self.masks.get(n.name)
        if not masks:
            return out
        # A view of an input (x[:, 1:], x.transpose) or an in-place update (x.add_, x += y) is masked in
        # place, so every alias of the storage sees the same values, as in the model. Elsewhere a copy.
        shared = {a.untyped_storage().data_ptr() for a in flat_tensors(self.fetch_args_kwargs_from_env(n))}
        if isinstance(out, torch.Tensor):
            return _apply(out, masks[0], shared)
        if isinstance(out, (tuple, list)):
            return type(out)(_apply(o, m, shared) if isinstance(o, torch.Tensor) else o for o, m in zip(out, masks))
        return out

    def _masked_layer_norm(self, n: torch.fx.Node) -> torch.Tensor:
        k = self.ln_nodes[n.name]
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if k == _SINGLE_GROUP:  # GroupNorm(1, C): over C and every spatial dim, a per-channel affine
            if n.op == "call_module":
                m = self.module.get_submodule(str(n.target))
                x, w, b, eps = args[0], m.weight, m.bias, m.eps
            else:
                x = args[0]
                w = kwargs.get("weight", args[2] if len(args) > 2 else None)
                b = kwargs.get("bias", args[3] if len(args) > 3 else None)
                eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
            affine = (-1,) + (1,) * (x.dim() - 2)
            w = None if w is None else w.reshape(affine)
            b = None if b is None else b.reshape(affine)
            k = x.dim() - 1
        elif n.op == "call_module":
            m = self.module.get_submodule(str(n.target))
            x, w, b, eps = args[0], m.weight, m.bias, m.eps
        else:
            x = args[0]
            w = kwargs.get("weight", args[2] if len(args) > 2 else None)
            b = kwargs.get("bias", args[3] if len(args) > 3 else None)
            eps = kwargs.get("eps", args[4] if len(args) > 4 else 1e-5)
        x_node = n.args[0]
        mask = self.masks.get(x_node.name, [None])[0] if isinstance(x_node, torch.fx.Node) else None
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


def _apply(t: torch.Tensor, mask: torch.Tensor | None, shared: set[int] = frozenset()) -> torch.Tensor:
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
        self, traced: TracedModel, analysis: AnalysisResult, pruned: np.ndarray, inputs: Sequence[Any], gm=None, on_node=None
    ) -> Any:
        ln = {op.name: int(op.attrs["ndim"]) for op in analysis.graph.ops.values() if op.kind == "layer_norm"}
        ln.update({op.name: _SINGLE_GROUP for op in analysis.graph.ops.values()
                   if op.kind == "group_norm" and op.attrs["num_groups"] == 1 and op.attrs.get("stats_over_kept")})  # fmt: skip
        with torch.no_grad():
            return _Masked(gm if gm is not None else traced.gm, self.masks(traced, analysis, pruned), ln, on_node).run(*inputs)

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
        try:
            res = self._compare(traced, analysis, pruned, module, inputs, torch.float64, updates)
        except VerificationError:
            raise
        except Exception as exc:  # an op without float64 support: compare in float32
            log.info("float64 verification failed (%s); comparing in float32", exc)
            res = self._compare(traced, analysis, pruned, module, inputs, torch.float32, updates)
        if not res.passed:
            where = f"; worst intermediate tensor {res.worst_node}: relative error {res.max_node_error:.3g}" if res.worst_node else ""
            raise VerificationError(
                f"pruned model differs from the original with removed channels zeroed: max abs error "
                f"{res.max_abs_error:.3g} at the outputs (tolerance {res.tolerance:.3g}, {res.dtype}){where}",
                res.max_abs_error,
            )
        return res

    def _compare(self, traced, analysis, pruned, module, inputs, dtype, updates=None) -> VerifyResult:
        conv = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
        ins = [conv(x) for x in inputs]
        ref_gm = copy.deepcopy(traced.gm)
        apply_updates(ref_gm, updates)
        ref_gm = ref_gm.to(dtype)
        new = copy.deepcopy(module).to(dtype).eval()
        check_nodes = dtype == torch.float64 and isinstance(new, torch.fx.GraphModule)
        captured: dict[str, Any] = {}
        with torch.no_grad():
            if check_nodes:
                cap = _Capture(new)
                got_out = cap.run(*ins)
                captured = cap.values
            else:
                got_out = new(*ins)
        got = flat_tensors(got_out)
        kept = self._kept_index(traced, analysis, pruned) if check_nodes else {}
        node_stats = {"n": 0, "err": 0.0, "worst": ""}

        def on_node(n: torch.fx.Node, ref_out: Any) -> None:
            mine = captured.get(n.name)
            if mine is None:
                return
            refs = [ref_out] if isinstance(ref_out, torch.Tensor) else list(ref_out) if isinstance(ref_out, (tuple, list)) else []
            mines = [mine] if isinstance(mine, torch.Tensor) else list(mine)
            for i, (r, m) in enumerate(zip(refs, mines)):
                if not (isinstance(r, torch.Tensor) and isinstance(m, torch.Tensor)) or not r.is_floating_point():
                    continue
                idx = kept.get(n.name, [])
                dims = idx[i] if i < len(idx) else []
                for d, ix in enumerate(dims):
                    if ix is not None and d < r.dim():
                        r = r.index_select(d, ix)
                if r.shape != m.shape:
                    raise VerificationError(
                        f"node {n.name}: pruned model gives shape {tuple(m.shape)}, the masked original's kept channels {tuple(r.shape)}"
                    )
                if r.numel() == 0:
                    continue
                scale, diff = float(r.abs().max()), float((r - m).abs().max())
                if not (math.isfinite(scale) and math.isfinite(diff)):  # inf/nan somewhere: same places, then the rest
                    fr, fm = torch.isfinite(r), torch.isfinite(m)
                    fin = fr & fm
                    if not bool(fin.any()):
                        continue
                    scale = float(r[fin].abs().max())
                    diff = float((r[fin] - m[fin]).abs().max()) if torch.equal(fr, fm) else math.inf
                rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
                node_stats["n"] += 1
                if rel > node_stats["err"]:
                    node_stats["err"], node_stats["worst"] = rel, n.name

        ref = flat_tensors(self.reference(traced, analysis, pruned, ins, gm=ref_gm, on_node=on_node if check_nodes else None))
        if len(ref) != len(got) or any(a.shape != b.shape for a, b in zip(ref, got)):
            raise VerificationError(
                f"pruned model outputs {[tuple(t.shape) for t in got]} but the original gives {[tuple(t.shape) for t in ref]}"
            )
        err, scale = 0.0, 0.0
        for a, b in zip(ref, got):
            if a.numel() == 0:
                continue
            if not a.is_floating_point():
                err = max(err, float((a != b).any()))
                continue
            if not torch.isfinite(a).all():
                same = torch.equal(torch.isfinite(a), torch.isfinite(b))
                fin = torch.isfinite(a) & torch.isfinite(b)
                if not same:
                    err = math.inf
                a, b = a[fin], b[fin]
                if a.numel() == 0:
                    continue
            err = max(err, float((a.double() - b.double()).abs().max()))
            scale = max(scale, float(a.double().abs().max()))
        rtol = self.rtol if dtype == torch.float64 else max(self.rtol, 1e-3)
        tol = self.atol + rtol * scale
        nodes_ok = node_stats["err"] <= rtol
        return VerifyResult(
            bool(err <= tol and nodes_ok),
            err,
            scale,
            tol,
            str(dtype).replace("torch.", ""),
            int(node_stats["n"]),
            float(node_stats["err"]),
            str(node_stats["worst"]),
        )
