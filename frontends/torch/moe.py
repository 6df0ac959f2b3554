"""Mixture-of-experts layers the compiler can see into.

``transformers`` stores a sparse MoE layer's experts as 3-D parameters
(``gate_up_proj``: experts x 2·intermediate x hidden, ``down_proj``: experts x
hidden x intermediate) and dispatches tokens with data-dependent indexing (a
loop over the experts that were hit, or a grouped matmul custom op): neither
traces into ops whose channels can be followed, so the experts' widths froze.

Before tracing, the frontend swaps each such experts module (on its private
copy of the model) for :class:`DecomposedExperts`: one ``nn.Linear`` FFN per
expert, and the routing as a dense ``tokens x experts`` weight matrix (the
router's top-k weights scattered into it, zeros elsewhere). Every expert runs
on every token and is multiplied by its routing weight, so the output is the
same sum the sparse dispatch computes (up to floating-point summation order),
without data-dependent shapes; each expert's FFN width is a coupling group of
its own. The pruned model therefore contains the dense form: its MACs are those
of every expert on every token (also in the report's "before"), not of the
sparse dispatch. Experts modules in any other layout are left as they are (their
channels stay frozen, named in the report).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

log = logging.getLogger(__name__)

__all__ = ["DecomposedExperts", "decompose_experts", "supported_experts"]


class ExpertFFN(nn.Module):
    """One expert: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, inter: int, act: nn.Module, like: dict) -> None:
        super().__init__()
        self.gate_proj = skip_init(nn.Linear, hidden, inter, bias=False, **like)
        self.up_proj = skip_init(nn.Linear, hidden, inter, bias=False, **like)
        self.down_proj = skip_init(nn.Linear, inter, hidden, bias=False, **like)
        self.act_fn = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class DecomposedExperts(nn.Module):
    """A ``transformers`` experts module (concatenated gate/up, no bias) as per-expert FFNs, densely routed."""

    def __init__(self, experts: Any) -> None:
        super().__init__()
        gate_up: torch.Tensor = experts.gate_up_proj
        down: torch.Tensor = experts.down_proj
        n, two_i, hidden = gate_up.shape
        inter = two_i // 2
        like = {"device": gate_up.device, "dtype": gate_up.dtype}
        self.num_experts = n
        ffns = [ExpertFFN(hidden, inter, experts.act_fn, like) for _ in range(n)]
        with torch.no_grad():
            for e, ffn in enumerate(ffns):
                ffn.gate_proj.weight.copy_(gate_up[e, :inter])
                ffn.up_proj.weight.copy_(gate_up[e, inter:])
                ffn.down_proj.weight.copy_(down[e])
        self.experts = nn.ModuleList(ffns)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        routing = (F.one_hot(top_k_index, self.num_experts).to(top_k_weights.dtype) * top_k_weights.unsqueeze(-1)).sum(1)
        routing = routing.to(hidden_states.dtype)
        out = self.experts[0](hidden_states) * routing[:, :1]  # (not zeros_like: the sum stays on the tracked stream)
        for e in range(1, self.num_experts):
            out = out + self.experts[e](hidden_states) * routing[:, e : e + 1]
        return out


def _supported(mod: nn.Module) -> bool:
    gate_up, down = getattr(mod, "gate_up_proj", None), getattr(mod, "down_proj", None)
    return (
        isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor) and gate_up.dim() == 3 and down.dim() == 3
        and gate_up.shape[1] == 2 * down.shape[2] and gate_up.shape[2] == down.shape[1] and gate_up.shape[0] == down.shape[0]
        and getattr(mod, "is_concatenated", True) and not getattr(mod, "is_transposed", False)
        and not getattr(mod, "has_bias", False) and getattr(mod, "has_gate", True)
        and not getattr(mod, "has_post_expert_norm", False) and isinstance(getattr(mod, "act_fn", None), nn.Module)
    )  # fmt: skip


def supported_experts(mod: nn.Module) -> bool:
    """Whether ``mod`` is an experts module in the layout :class:`DecomposedExperts` (and expert removal) reads."""
    return _supported(mod)


def decompose_experts(model: nn.Module) -> int:
    """Swap every supported experts module in ``model`` (in place). Returns the count."""
    count = 0
    for _name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child).__name__.endswith("Experts") and _supported(child):
                setattr(mod, child_name, DecomposedExperts(child))
                count += 1
    return count
