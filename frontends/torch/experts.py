"""Whole experts removed from mixture-of-experts layers: found, ranked on data, sliced out, verified.

A mixture-of-experts layer, as ``transformers`` writes it (Mixtral, Qwen2-MoE, ...), is a block with a
router (``gate``: a ``weight`` of one row per expert; the logits are ``linear(hidden, weight)``, a
softmax and top-k choose each token's experts) and an experts module of 3-D parameters
(``gate_up_proj``: experts x 2·intermediate x hidden, ``down_proj``: experts x hidden x intermediate;
:func:`frontends.torch.moe.supported_experts`). Removing expert ``e`` means for top-k routing that its
router logit is ``-inf``: tokens go to their next best experts. The cases, one by one:

1. :func:`find_moe_layers`: every such block of a model (its router and experts modules, its expert
   count, top-k); an experts module without a router of one plain row per expert is refused, naming it;
2. :func:`expert_statistics`: the model run on batches, each experts module's inputs (the tokens, their
   top-k experts and routing weights) read by a hook: per expert its *routed load* (token slots the
   router sent to it) and the summed norm of its weighted contribution to the block's output on those
   tokens (load x mean contribution: the ranking score);
3. :func:`remove_experts`: on the model (a copy the caller owns) the router's rows and the experts'
   slices of the removed experts deleted, the modules' expert counts updated;
4. :func:`verify_experts`: the pruned model against the original whose router logits of the removed
   experts are set to ``-inf`` (a torch function mode on the routers' ``linear``), in float64 where the
   model runs in it: per layer the tokens' chosen experts must be identical (mapped to the original's
   numbering), the routing weights and the experts' outputs equal within tolerance, and every output.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from frontends.adapter import VerifyResult
from frontends.errors import InvalidArgumentError, UnsupportedModelError, VerificationError
from frontends.torch.calibration import all_outputs
from frontends.torch.moe import supported_experts

log = logging.getLogger(__name__)

__all__ = ["MoeLayer", "Call", "find_moe_layers", "calls_from", "expert_statistics", "remove_experts", "verify_experts"]

ROUTER_NAMES = ("gate", "router")


@dataclass(frozen=True)
class MoeLayer:
    """One mixture-of-experts block: its module path, its router's and experts' child names, counts."""

    name: str
    router: str
    experts: str
    n: int
    top_k: int | None

    def router_of(self, model: nn.Module) -> nn.Module:
        return getattr(model.get_submodule(self.name), self.router)

    def experts_of(self, model: nn.Module) -> nn.Module:
        return getattr(model.get_submodule(self.name), self.experts)


@dataclass
class Call:
    """One batch as a call of the model."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def run(self, model: nn.Module) -> Any:
        return model(*self.args, **self.kwargs)

    def to(self, dtype: torch.dtype) -> Call:
        def cast(x: Any) -> Any:
            return x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x

        return Call(tuple(cast(a) for a in self.args), {k: cast(v) for k, v in self.kwargs.items()})


def _router(block: nn.Module, n: int, where: str) -> str:
    """The child of ``block`` whose ``weight`` has one row per expert (and nothing else of its own)."""
    for name in ROUTER_NAMES:
        r = getattr(block, name, None)
        w = getattr(r, "weight", None)
        if isinstance(r, nn.Module) and isinstance(w, torch.Tensor) and w.dim() == 2 and w.shape[0] == n:
            own = {k for k, _ in r.named_parameters(recurse=False)} | {k for k, _ in r.named_buffers(recurse=False)}
            extra = own - {"weight", "bias"}
            if extra or list(r.children()):
                raise UnsupportedModelError(
                    f"{where}.{name}: a router with {', '.join(sorted(extra)) or 'submodules'} besides its weight; "
                    "experts= removes experts from routers of one linear row per expert"
                )
            b = getattr(r, "bias", None)
            if b is not None and not (isinstance(b, torch.Tensor) and tuple(b.shape) == (n,)):
                raise UnsupportedModelError(f"{where}.{name}: a router bias of shape {tuple(b.shape)}")
            return name
    raise UnsupportedModelError(f"{where}: an experts module without a router ({' or '.join(ROUTER_NAMES)}) of one weight row per expert")


def find_moe_layers(model: nn.Module) -> list[MoeLayer]:
    """Every mixture-of-experts block of ``model`` whose experts :func:`remove_experts` can slice."""
    cfg = getattr(model, "config", None)
    out: list[MoeLayer] = []
    for name, block in model.named_modules():
        for child_name, child in block.named_children():
            if not (type(child).__name__.endswith("Experts") and supported_experts(child)):
                continue
            n = int(child.gate_up_proj.shape[0])
            router = _router(block, n, name or type(model).__name__)
            k = getattr(getattr(block, router), "top_k", getattr(block, "top_k", getattr(cfg, "num_experts_per_tok", None)))
            out.append(MoeLayer(name, router, child_name, n, int(k) if isinstance(k, int) else None))
    if not out:
        other = next(((n, m) for n, m in model.named_modules() if type(m).__name__.endswith("Experts")), None)
        if other is not None:
            raise UnsupportedModelError(
                f"{other[0]}: {type(other[1]).__name__} is not in the layout experts= reads (3-D gate_up_proj / down_proj, "
                "concatenated gate and up, no biases, no post-expert norm)"
            )
    return out


# -- batches ---------------------------------------------------------------------------------------------------


def calls_from(example_inputs: Any, calibration: Sequence[Any] | None) -> list[Call]:
    """The calibration batches (else the example inputs) as calls of the model, labels dropped.

    A batch is structured like the example: a tensor, a tuple of the positional arguments (optionally
    followed by labels), or a dict of keyword arguments (optionally with a ``"labels"`` key the example
    does not have)."""
    from frontends.torch.structured import split_inputs

    args, kwargs = split_inputs(example_inputs)
    if calibration is None:
        return [Call(tuple(args), dict(kwargs))]
    out: list[Call] = []
    for i, b in enumerate(calibration):
        if isinstance(b, Mapping):
            d = dict(b)
            if "labels" not in kwargs:
                d.pop("labels", None)
            out.append(Call((), d))
        elif isinstance(b, torch.Tensor):
            out.append(Call((b,), {}))
        elif isinstance(b, (tuple, list)):
            n = len(args) if args else len(b)
            out.append(Call(tuple(b[:n]), {}))
        else:
            raise InvalidArgumentError(f"calibration batch {i}: expected a tensor, a tuple of tensors or a dict, got {type(b).__name__}")
    if not out:
        raise InvalidArgumentError("calibration is empty")
    return out


@contextmanager
def _no_cache(model: nn.Module) -> Iterator[None]:
    """A transformers model's KV cache off while it runs here (the outputs compared are tensors)."""
    cfg = getattr(model, "config", None)
    before = getattr(cfg, "use_cache", None)
    if before:
        cfg.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if before:
            cfg.use_cache = before  # type: ignore[union-attr]


def _routing(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An experts module's call: (hidden_states, top_k_index, top_k_weights)."""
    names = ("hidden_states", "top_k_index", "top_k_weights")
    vals = list(args[:3]) + [kwargs.get(k) for k in names[len(args[:3]) :]]
    if any(not isinstance(v, torch.Tensor) for v in vals):
        raise UnsupportedModelError("an experts module is called without (hidden_states, top_k_index, top_k_weights)")
    return vals[0], vals[1], vals[2]


# -- ranking ---------------------------------------------------------------------------------------------------


def expert_statistics(model: nn.Module, layers: Sequence[MoeLayer], calls: Sequence[Call]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: (routed load, summed norm of the weighted contribution) of each expert over ``calls``."""
    load = {L.name: np.zeros(L.n) for L in layers}
    contrib = {L.name: np.zeros(L.n) for L in layers}

    def hook_for(L: MoeLayer) -> Any:
        def hook(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hs, idx, w = _routing(args, kwargs)
            for e in range(L.n):
                tok, slot = torch.where(idx == e)
                if tok.numel() == 0:
                    continue
                gate, up = F.linear(hs[tok], mod.gate_up_proj[e]).chunk(2, dim=-1)
                y = F.linear(mod.act_fn(gate) * up, mod.down_proj[e]) * w[tok, slot, None].to(hs.dtype)
                load[L.name][e] += tok.numel()
                contrib[L.name][e] += float(y.double().norm(dim=-1).sum())

        return hook

    handles = [L.experts_of(model).register_forward_pre_hook(hook_for(L), with_kwargs=True) for L in layers]
    try:
        with torch.no_grad(), _no_cache(model):
            for c in calls:
                c.run(model)
    finally:
        for h in handles:
            h.remove()
    return {L.name: (load[L.name], contrib[L.name]) for L in layers}


# -- removal ---------------------------------------------------------------------------------------------------


def _slice_param(mod: nn.Module, name: str, idx: torch.Tensor) -> None:
    p = getattr(mod, name)
    setattr(mod, name, nn.Parameter(p.detach()[idx].clone(), requires_grad=p.requires_grad))


def remove_experts(model: nn.Module, layers: Sequence[MoeLayer], kept: Mapping[str, Sequence[int]]) -> None:
    """Keep only the ``kept[layer]`` experts of each layer of ``model`` (in place; the caller's copy)."""
    for L in layers:
        keep = list(kept[L.name])
        idx = torch.tensor(keep, dtype=torch.long)
        block, router, experts = model.get_submodule(L.name), L.router_of(model), L.experts_of(model)
        _slice_param(router, "weight", idx)
        if getattr(router, "bias", None) is not None:
            _slice_param(router, "bias", idx)
        _slice_param(experts, "gate_up_proj", idx)
        _slice_param(experts, "down_proj", idx)
        for mod, attr in ((router, "num_experts"), (router, "out_features"), (experts, "num_experts"), (block, "num_experts")):
            if getattr(mod, attr, None) == L.n:
                setattr(mod, attr, len(keep))


# -- verification ----------------------------------------------------------------------------------------------


class _RemovedLogits(TorchFunctionMode):
    """``linear(x, w)`` of a router weight ``w`` (by identity) with the removed experts' logits set to ``-inf``."""

    def __init__(self, masks: dict[int, torch.Tensor]) -> None:
        super().__init__()
        self.masks = masks
        self.hits: dict[int, int] = dict.fromkeys(masks, 0)

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is F.linear:
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            mask = self.masks.get(id(w))
            if mask is not None:
                self.hits[id(w)] += 1
                out = out.masked_fill(mask.to(out.device), -math.inf)
        return out


class _Capture:
    """Each layer's routing (chosen experts, weights) and experts output, per call."""

    def __init__(self, model: nn.Module, layers: Sequence[MoeLayer]) -> None:
        self.routes: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {L.name: [] for L in layers}
        self.outs: dict[str, list[torch.Tensor]] = {L.name: [] for L in layers}
        self.handles = []
        for L in layers:
            mod = L.experts_of(model)
            self.handles.append(mod.register_forward_pre_hook(self._pre(L.name), with_kwargs=True))
            self.handles.append(mod.register_forward_hook(self._post(L.name)))

    def _pre(self, name: str) -> Any:
        def hook(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            _, idx, w = _routing(args, kwargs)
            self.routes[name].append((idx.detach().clone(), w.detach().clone()))

        return hook

    def _post(self, name: str) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                self.outs[name].append(out.detach().clone())

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _eager_experts(model: nn.Module, layers: Sequence[MoeLayer]) -> None:
    """transformers' own per-expert loop in the experts modules of ``model`` (a copy): its grouped-matmul kernels
    take no float64."""
    for L in layers:
        cfg = getattr(L.experts_of(model), "config", None)
        if getattr(cfg, "_experts_implementation", None) not in (None, "eager"):
            cfg._experts_implementation = "eager"  # type: ignore[union-attr]


def _relative(r: torch.Tensor, m: torch.Tensor) -> float:
    if r.numel() == 0:
        return 0.0
    if not torch.equal(torch.isfinite(r), torch.isfinite(m)):
        return math.inf
    ok = torch.isfinite(r)
    if not bool(ok.any()):
        return 0.0
    scale = float(r[ok].double().abs().max())
    diff = float((r[ok].double() - m[ok].double()).abs().max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def verify_experts(
    original: nn.Module, pruned: nn.Module, layers: Sequence[MoeLayer], kept: Mapping[str, Sequence[int]], calls: Sequence[Call], rtol: float
) -> VerifyResult:
    """Raise :class:`VerificationError` unless ``pruned`` equals ``original`` with the removed experts' router
    logits at ``-inf`` (module docstring, case 4); float64 where the model runs in it, else float32."""
    try:
        return _compare(original, pruned, layers, kept, calls, torch.float64, rtol)
    except (VerificationError, UnsupportedModelError):
        raise
    except Exception as exc:  # an op without float64 support: compare in float32
        log.info("float64 experts verification failed (%s); comparing in float32", exc)
        return _compare(original, pruned, layers, kept, calls, torch.float32, max(rtol, 1e-4))


def _compare(
    original: nn.Module,
    pruned: nn.Module,
    layers: Sequence[MoeLayer],
    kept: Mapping[str, Sequence[int]],
    calls: Sequence[Call],
    dtype: torch.dtype,
    rtol: float,
) -> VerifyResult:
    ref, new = copy.deepcopy(original).to(dtype).eval(), copy.deepcopy(pruned).to(dtype).eval()
    for m in (ref, new):
        _eager_experts(m, layers)
    masks: dict[int, torch.Tensor] = {}
    for L in layers:
        gone = torch.ones(L.n, dtype=torch.bool)
        gone[list(kept[L.name])] = False
        masks[id(L.router_of(ref).weight)] = gone
    mode = _RemovedLogits(masks)
    cap_ref, cap_new = _Capture(ref, layers), _Capture(new, layers)
    ref_out: list[torch.Tensor] = []
    new_out: list[torch.Tensor] = []
    try:
        with torch.no_grad(), _no_cache(ref), _no_cache(new):
            for c in calls:
                c = c.to(dtype)
                with mode:
                    ref_out += all_outputs(c.run(ref))
                new_out += all_outputs(c.run(new))
    finally:
        cap_ref.close()
        cap_new.close()
    missed = [L.name for L in layers if mode.hits[id(L.router_of(ref).weight)] == 0]
    if missed:
        raise UnsupportedModelError(f"{missed[0]}.{layers[0].router}: the router does not compute its logits as linear(hidden, weight)")
    worst_err, worst, n = 0.0, "", 0
    for L in layers:
        to_orig = torch.tensor(list(kept[L.name]), dtype=torch.long)
        for (ri, rw), (ni, nw) in zip(cap_ref.routes[L.name], cap_new.routes[L.name], strict=True):
            mapped = to_orig[ni.long()]
            if mapped.shape != ri.shape or not torch.equal(mapped, ri.long()):
                bad = int((mapped != ri.long()).any(-1).sum()) if mapped.shape == ri.shape else ri.shape[0]
                raise VerificationError(
                    f"{L.name}: {bad} of {ri.shape[0]} tokens are routed to other experts than in the original with the "
                    "removed experts' router logits at -inf"
                )
            e = _relative(rw, nw)
            n += 1
            if e > worst_err:
                worst_err, worst = e, f"{L.name}.{L.router} (routing weights)"
        for r, got in zip(cap_ref.outs[L.name], cap_new.outs[L.name], strict=True):
            e = _relative(r, got) if r.shape == got.shape else math.inf
            n += 1
            if e > worst_err:
                worst_err, worst = e, f"{L.name}.{L.experts}"
    if len(ref_out) != len(new_out) or any(a.shape != b.shape for a, b in zip(ref_out, new_out, strict=True)):
        raise VerificationError(f"the pruned model outputs {[tuple(t.shape) for t in new_out]}, the original {[tuple(t.shape) for t in ref_out]}")
    err = max((float((a.double() - b.double()).abs().max()) for a, b in zip(ref_out, new_out, strict=True) if a.numel()), default=0.0)
    scale = max((float(a.double().abs().max()) for a in ref_out if a.numel() and a.is_floating_point()), default=0.0)
    tol = 1e-7 + rtol * scale
    res = VerifyResult(bool(err <= tol and worst_err <= rtol), err, scale, tol, str(dtype).replace("torch.", ""), n, worst_err, worst)
    if not res.passed:
        where = f"; worst intermediate tensor {worst}: relative error {worst_err:.3g}" if worst else ""
        raise VerificationError(
            f"the model without the removed experts differs from the original with their router logits at -inf: max abs "
            f"error {err:.3g} at the outputs (tolerance {tol:.3g}, {res.dtype}){where}",
            err,
        )
    return res
