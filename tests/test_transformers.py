"""Hugging Face transformers models built from small configs (random weights, no downloads).

Each is pruned and verified against its masked original, rebuilt in its own class
from the updated config, saved with ``save_pretrained``, reloaded with
``from_pretrained`` and compared with the pruned graph module.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import compiler
from frontends.errors import InvalidArgumentError, UnsupportedModelError

transformers = pytest.importorskip("transformers")

SMALL = dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=128, initializer_range=0.3)


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    values = list(out.values()) if isinstance(out, dict) else list(out)
    return next(v for v in values if isinstance(v, torch.Tensor))


def _bert():
    cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=32, **SMALL)
    return transformers.BertForSequenceClassification(cfg).eval(), (torch.randint(0, 100, (2, 8)),)


def _vit():
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_labels=10, **SMALL)
    return transformers.ViTForImageClassification(cfg).eval(), (torch.randn(2, 3, 32, 32),)


def _llama():
    cfg = transformers.LlamaConfig(vocab_size=100, max_position_embeddings=64, num_key_value_heads=2, **SMALL)
    return transformers.LlamaForCausalLM(cfg).eval(), (torch.randint(0, 100, (2, 8)),)


def _round_trip(result, model, inputs, tmp_path):
    result.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    with torch.no_grad():
        want, got = _first(result.model(*inputs)), _first(reloaded(*inputs))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    return reloaded.config


def _verified(result):
    v = result.report.verification
    assert v is not None and v["passed"], v


def test_bert_heads_and_ffn_save_reload(tmp_path):
    model, x = _bert()
    r = compiler.compile(model, x, ratio=0.5, attention="heads", granularity=1)
    _verified(r)
    cfg = _round_trip(r, model, x, tmp_path)
    assert (cfg.num_attention_heads, cfg.intermediate_size, cfg.hidden_size) == (2, 64, 32)
    assert model.config.num_attention_heads == 4  # the input model is untouched


def test_vit_head_dim_save_reload_keeps_the_softmax_scale(tmp_path):
    model, x = _vit()
    r = compiler.compile(model, x, ratio=0.5, attention="head_dim", granularity=1)
    _verified(r)
    cfg = _round_trip(r, model, x, tmp_path)  # the rebuilt class scales by head_dim**-0.5: the query is rescaled
    assert (cfg.num_attention_heads, cfg.head_dim, cfg.intermediate_size) == (4, 8, 64)


def test_llama_gqa_prunes_a_kv_head_with_its_query_heads(tmp_path):
    model, x = _llama()
    r = compiler.compile(model, x, ratio=0.5, attention="heads", granularity=1)
    _verified(r)
    attn = [g for g in r.report.groups if len(g.members) == 3 and len(g.saliency_values) == 2]
    assert len(attn) == 1  # q, k and v of the layer: one channel per KV head (with its 2 query heads)
    assert (attn[0].channels_before, attn[0].channels_after) == (64, 32)
    sd = r.model.state_dict()
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape[0] == 32
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape[0] == 16
    cfg = _round_trip(r, model, x, tmp_path)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size) == (2, 1, 16, 64)
    # the hidden size prunes through RMSNorm (its mean of squares keeps the original divisor); the saved config
    # expresses that with rescaled norm weights and eps
    assert cfg.hidden_size == 32 and cfg.rms_norm_eps == model.config.rms_norm_eps * 2


def test_llama_head_dim_is_verified_but_not_expressible_in_the_config():
    model, x = _llama()
    r = compiler.compile(model, x, ratio=0.5, attention="head_dim", granularity=1, hf_compatible=False)  # (on, they stay)
    _verified(r)  # q/k head dims prune in rotate_half's pairs (i, i + d/2), with the rotary frequencies; v's through repeat_kv
    sd = r.model.state_dict()
    assert sd["model.layers.0.self_attn.v_proj.weight"].shape[0] < 32
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape[0] < 64
    assert r.model.model.rotary_emb.inv_freq.shape[0] < model.model.rotary_emb.inv_freq.shape[0]
    with pytest.raises(UnsupportedModelError, match="rotary|head sizes"):  # LlamaConfig recomputes the frequencies from head_dim
        r.to_hf()


class _MHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mha, self.out = nn.Linear(16, 64), nn.MultiheadAttention(64, 4, batch_first=True), nn.Linear(64, 8)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.mha(h, h, h, need_weights=False)  # averaged weights would read across heads
        return self.out(a + h)


def _both(model, x):
    r = compiler.compile(model, x, ratio=0.5, attention="both", granularity=1)
    stages = r.report.settings["stages"]
    assert [s["attention"] for s in stages] == ["heads", "head_dim"]
    assert all(s["verification"]["passed"] for s in stages)
    assert r.report.params_after < stages[0]["params"] < r.report.params_before
    return r


def test_both_on_multihead_attention():
    torch.manual_seed(0)
    model, x = _MHA().eval(), (torch.randn(2, 5, 16),)
    r = _both(model, x)
    q = r.model.get_submodule("mha.q_proj").weight.shape[0]
    assert q == 3 * 11  # 3 of 4 heads, 11 of 16 dims in each
    with torch.no_grad():
        assert r.model(*x).shape == model(*x).shape


def test_both_on_vit_saves_and_reloads(tmp_path):
    model, x = _vit()
    r = _both(model, x)
    cfg = _round_trip(r, model, x, tmp_path)
    assert (cfg.num_attention_heads, cfg.head_dim) == (3, 11)


def test_both_on_bert_is_verified_and_unexpressible_config_is_a_typed_error():
    model, x = _bert()
    r = _both(model, x)
    with pytest.raises(UnsupportedModelError):
        r.to_hf()  # BERT derives the head size from hidden_size / num_attention_heads


class _InterleavedRope(nn.Module):
    """Rotary attention whose angle table is computed at run time (arange): an untracked [N, d/2] table over
    the head dim, so the head dims cannot prune (a table held in a buffer would be sliced with them)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.proj, self.out = nn.Linear(16, 3 * 32), nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        ang = torch.arange(N, dtype=x.dtype)[:, None] * torch.arange(1, 5, dtype=x.dtype)
        sin, cos = ang.sin(), ang.cos()

        def rope(t):
            a, b = t[..., ::2], t[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

        a = F.scaled_dot_product_attention(rope(q), rope(k), v)
        return self.out(self.proj(a.transpose(1, 2).reshape(B, N, 32)))


def test_both_falls_back_to_whole_heads_where_head_dims_cannot_prune():
    torch.manual_seed(0)
    model, x = _InterleavedRope().eval(), (torch.randn(2, 6, 16),)
    r = compiler.compile(model, x, ratio=0.5, attention="both", granularity=1)
    stages = r.report.settings["stages"]
    assert [s["attention"] for s in stages] == ["heads", "head_dim", "heads"] and stages[-1]["chosen"]
    assert r.report.verification["passed"]
    assert r.model.qkv.out_features == 3 * 2 * 8  # 2 of 4 heads, every dim of each
    heads = compiler.compile(model, x, ratio=0.5, attention="heads", granularity=1)
    assert r.report.macs_after == heads.report.macs_after


def test_both_needs_a_ratio():
    with pytest.raises(InvalidArgumentError, match="both"):
        compiler.compile(_MHA().eval(), (torch.randn(2, 5, 16),), threshold=0.3, attention="both")
