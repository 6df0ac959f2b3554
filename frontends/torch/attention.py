"""Attention the compiler can see into.

``nn.MultiheadAttention`` runs its projections and head split inside one opaque
call, so its channels could only be frozen. Before tracing, the frontend swaps
each instance (on its private copy of the model) for :class:`DecomposedMHA`:
the same computation written with ``nn.Linear`` projections, a reshape into
heads and explicit attention, so heads and head dims can be pruned. The pruned
model therefore contains the decomposed form; its outputs equal the original's.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import skip_init

log = logging.getLogger(__name__)

__all__ = ["DecomposedMHA", "decompose_attention"]


class DecomposedMHA(nn.Module):
    """``nn.MultiheadAttention`` (packed or separate q/k/v weights) in traceable form."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        E, h = mha.embed_dim, mha.num_heads
        self.num_heads, self.head_dim = h, E // h
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.batch_first = mha.batch_first
        self.dropout = mha.dropout
        kdim, vdim = mha.kdim, mha.vdim
        bias = mha.in_proj_bias is not None
        ref = mha.out_proj.weight
        like = {"device": ref.device, "dtype": ref.dtype}  # no random init: the weights are copied in below
        self.q_proj = skip_init(nn.Linear, E, E, bias=bias, **like)
        self.k_proj = skip_init(nn.Linear, kdim, E, bias=bias, **like)
        self.v_proj = skip_init(nn.Linear, vdim, E, bias=bias, **like)
        self.out_proj = skip_init(nn.Linear, E, E, bias=mha.out_proj.bias is not None, **like)
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                wq, wk, wv = mha.in_proj_weight.chunk(3, 0)
            else:
                wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
            self.q_proj.weight.copy_(wq)
            self.k_proj.weight.copy_(wk)
            self.v_proj.weight.copy_(wv)
            if bias:
                bq, bk, bv = mha.in_proj_bias.chunk(3, 0)
                self.q_proj.bias.copy_(bq)
                self.k_proj.bias.copy_(bk)
                self.v_proj.bias.copy_(bv)
            self.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                self.out_proj.bias.copy_(mha.out_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        if not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q = self.q_proj(query)
        k = self.k_proj(key)
        v = self.v_proj(value)
        B, L, S = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.reshape(B, S, self.num_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(B, S, self.num_heads, self.head_dim).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn = attn.masked_fill(attn_mask, float("-inf"))
            else:
                attn = attn + attn_mask
        elif is_causal:
            causal = torch.ones(L, S, dtype=torch.bool, device=attn.device).triu(1)
            attn = attn.masked_fill(causal, float("-inf"))
        if key_padding_mask is not None:
            pad = key_padding_mask.reshape(B, 1, 1, S)
            attn = attn.masked_fill(pad, float("-inf")) if pad.dtype == torch.bool else attn + pad
        attn = attn.softmax(dim=-1)
        if self.dropout > 0.0 and self.training:
            attn = F.dropout(attn, p=self.dropout)
        out = (attn @ v).transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim)
        out = self.out_proj(out)
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn


def decompose_attention(model: nn.Module) -> int:
    """Swap every supported ``nn.MultiheadAttention`` in ``model`` (in place). Returns the count."""
    count = 0
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if not isinstance(child, nn.MultiheadAttention):
                continue
            if child.bias_k is not None or child.add_zero_attn:
                log.info("%s.%s: bias_k/add_zero_attn are not decomposed; it stays frozen", name, child_name)
                continue
            setattr(mod, child_name, DecomposedMHA(child))
            count += 1
    return count
