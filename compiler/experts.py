"""Expert removal in a compile: mixture-of-experts layers found, experts ranked, removed and verified; then width.

``compile(model, inputs, experts=0.5)`` runs, in order:

1. ``find experts``    the mixture-of-experts layers (:func:`frontends.torch.experts.find_moe_layers`);
2. ``rank experts``    the model run on the calibration batches (without calibration: the example
                       inputs, and the report says so): per expert its *routed load* (token slots the
                       router's top-k sends to it) times its *saliency* (the mean norm of its
                       routing-weighted contribution to the layer's output on those tokens);
3. ``remove experts``  in every layer the same number of lowest-scored experts (``experts`` x the
                       layer's count, rounded half up; at least the router's top-k are kept): the
                       router's rows and the experts' slices deleted on a copy of the model, and a
                       transformers config's expert count (``num_local_experts``, ``num_experts``)
                       set to the kept count, so that ``save_pretrained`` -> ``from_pretrained`` reloads;
4. ``verify experts``  the result against the original with the removed experts' router logits at
                       ``-inf`` (tokens go to their next best experts): the same experts chosen for
                       every token, equal routing weights, experts' outputs and model outputs;
5. the one pipeline (``run``) on the smaller model for the width policy given (``ratio=`` prunes the
   kept experts' FFN widths; none: ``ratio=0``, which verifies and measures it).

The report's ``experts`` section lists per layer every expert with its load, saliency and score, and
which were removed; ``macs_before`` / ``params_before`` are the original's (the dense form of
:mod:`frontends.torch.moe`: every expert on every token).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from compiler.options import Options
from compiler.pipeline import Steps
from frontends.adapter import Adapter
from frontends.errors import InvalidArgumentError
from passes.cost import graph_macs, graph_params

log = logging.getLogger(__name__)

__all__ = ["compile_experts", "removed_experts", "COUNT_FIELDS"]

Run = Callable[[Any, Options, Any], Any]  # (model, options, calibration or None) -> CompileResult

COUNT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")  # a config's expert count


def removed_experts(fraction: float, n: int) -> int:
    """How many of a layer's ``n`` experts ``fraction`` removes (rounded half up; at least one for fraction > 0)."""
    if fraction <= 0 or n == 0:
        return 0
    return min(n, max(1, int(fraction * n + 0.5)))


def compile_experts(
    model: Any,
    opts: Options,
    adapter_for: Callable[[Any], Adapter],
    run: Run,
    progress: Callable[[str], None] | None,
    example_inputs: Any,
    calibration: Iterable[Any] | None,
) -> Any:
    """The steps of the module docstring; returns the width run's ``CompileResult`` with the report completed."""
    import torch.nn as nn

    from frontends.torch.experts import calls_from, expert_statistics, find_moe_layers, remove_experts, verify_experts

    assert opts.experts is not None
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"experts= removes experts of PyTorch mixture-of-experts models; got {type(model).__name__}")
    steps = Steps(progress)
    layers = steps("find experts", find_moe_layers, model)
    if not layers:
        raise InvalidArgumentError(
            f"experts={opts.experts!r}: {type(model).__name__} has no mixture-of-experts layer (a router and an experts "
            "module of 3-D gate_up_proj / down_proj parameters, as transformers' Mixtral or Qwen2-MoE)"
        )
    counts = {L.name: removed_experts(float(opts.experts), L.n) for L in layers}
    for L in layers:
        keep = L.n - counts[L.name]
        if L.top_k is not None and keep < L.top_k:
            raise InvalidArgumentError(
                f"experts={opts.experts!r} keeps {keep} of {L.n} experts in {L.name}, fewer than the {L.top_k} each token "
                "is routed to (num_experts_per_tok)"
            )
    adapter = adapter_for(model)
    adapter.load(steps)
    macs0, params0 = graph_macs(adapter.graph), graph_params(adapter.graph)
    calibration = list(calibration) if calibration is not None else None
    calls = calls_from(example_inputs, calibration)
    data = f"calibration ({len(calls)} batches)" if calibration is not None else "example inputs (no calibration given)"
    small = copy.deepcopy(model).eval()  # ranked in eval mode (no dropout, no router jitter), then cut down
    stats = steps("rank experts", expert_statistics, small, layers, calls)
    kept: dict[str, list[int]] = {}
    rows: list[dict[str, Any]] = []
    for L in layers:
        load, contrib = stats[L.name]
        saliency = np.divide(contrib, load, out=np.zeros_like(contrib), where=load > 0)
        order = np.argsort(contrib, kind="stable")  # score = load x saliency = the summed contribution
        gone = sorted(order[: counts[L.name]].tolist())
        kept[L.name] = [e for e in range(L.n) if e not in gone]
        rows.append(_layer_row(L.name, L.n, load, saliency, contrib, gone))
    steps("remove experts", remove_experts, small, layers, kept)
    config_note = _update_config(small, layers, kept)
    verification = None
    if opts.verify:
        rtol = max(opts.rtol, adapter.tolerance_floor)
        check_calls = calls[:1] if calibration is None else [*calls_from(example_inputs, None), calls[0]]
        verification = steps("verify experts", verify_experts, model, small, layers, kept, check_calls, rtol).to_dict()
    width_opts, note = _width_options(opts)
    result = run(small, width_opts, calibration)
    r = result.report
    macs_e, params_e = r.macs_before, r.params_before
    r.params_before, r.macs_before = params0, macs0
    r.model, r.trace_method = adapter.model_name, adapter.trace_method
    r.settings.update(experts=opts.experts)
    r.experts = {
        "experts": opts.experts,
        "criterion": "routed load x saliency (mean norm of the expert's routing-weighted output on its tokens)",
        "data": data,
        "removed": sum(counts.values()),
        "candidates": sum(L.n for L in layers),
        "macs_before": macs0,
        "macs_after_experts": macs_e,
        "params_after_experts": params_e,
        "config": config_note,
        "layers": rows,
        "verification": verification,
    }
    if note:
        r.experts["note"] = note
    r.timings = {**steps.timings, **r.timings}
    return result


def _layer_row(name: str, n: int, load: np.ndarray, saliency: np.ndarray, score: np.ndarray, gone: list[int]) -> dict[str, Any]:
    experts = [
        {"expert": e, "load": int(load[e]), "saliency": float(f"{saliency[e]:.4g}"), "score": float(f"{score[e]:.4g}"), "removed": e in gone}
        for e in range(n)
    ]
    return {"name": name, "experts": n, "kept": n - len(gone), "removed": [x for x in experts if x["removed"]], "all": experts}


def _update_config(model: Any, layers: Sequence[Any], kept: dict[str, list[int]]) -> str:
    """Set a transformers config's expert count to the kept count; what was done, in words."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "no config"
    n_before = {L.n for L in layers}
    n_after = {len(kept[L.name]) for L in layers}
    field = next((f for f in COUNT_FIELDS if getattr(cfg, f, None) in n_before), None)
    if field is None:
        return f"{type(cfg).__name__} holds no expert count: save_pretrained raises UnsupportedModelError"
    if len(n_before) != 1 or len(n_after) != 1:
        return f"the layers keep different expert counts ({sorted(n_after)}): {type(cfg).__name__}.{field} cannot hold them"
    before, after = n_before.pop(), n_after.pop()
    setattr(cfg, field, after)
    return f"{type(cfg).__name__}.{field}: {before} -> {after}"


def _width_options(opts: Options) -> tuple[Options, str]:
    """The width policy for the model without the removed experts (``target_macs`` stays a budget of the original's)."""
    base = replace(opts, experts=None)
    if all(x is None for x in (opts.ratio, opts.threshold, opts.target_macs, opts.f_nz, opts.target_latency)):
        return replace(base, ratio=0.0), "no width policy given"
    return base, ""
