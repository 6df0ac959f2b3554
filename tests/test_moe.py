"""Mixtures of experts (transformers Mixtral, Qwen2-MoE): per-expert FFNs that prune on their own, verified,
and saved back into the class's 3-D expert parameters."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import compiler  # noqa: E402
from frontends.torch.moe import DecomposedExperts, decompose_experts  # noqa: E402

T = transformers
LM = dict(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          intermediate_size=128, max_position_embeddings=64)  # fmt: skip


def _mixtral():
    torch.manual_seed(0)
    return T.MixtralForCausalLM(T.MixtralConfig(**LM, num_local_experts=4, num_experts_per_tok=2)).eval()


def _qwen2_moe():
    torch.manual_seed(0)
    cfg = T.Qwen2MoeConfig(**LM, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=96)
    return T.Qwen2MoeForCausalLM(cfg).eval()


def _ids(seed=0, n=2, length=12):
    return {"input_ids": torch.randint(3, 100, (n, length), generator=torch.Generator().manual_seed(seed))}


@pytest.mark.parametrize("make", [_mixtral, _qwen2_moe])
def test_decomposed_experts_compute_what_the_sparse_dispatch_computes(make):
    model = make()
    dense = copy.deepcopy(model)
    assert decompose_experts(dense) == 2
    assert isinstance(dense.model.layers[0].mlp.experts, DecomposedExperts)
    x = _ids(3)
    with torch.no_grad():
        want, got = model(**x).logits, dense(**x).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a check that can fail: one expert's weights changed changes the output
    with torch.no_grad():
        dense.model.layers[0].mlp.experts.experts[1].down_proj.weight.mul_(2.0)
        assert (dense(**x).logits - want).abs().max() > 1e-3


def test_each_expert_is_a_group_of_its_own_and_prunes_verified():
    r = compiler.compile(_mixtral(), _ids(), ratio=0.5, attention="heads")
    rep = r.report
    assert rep.verification["passed"]
    experts = [g for g in rep.groups if g.channels_before == 128 and len(g.members) == 2]
    assert len(experts) == 2 * 4  # 2 layers x 4 experts: gate and up of one expert, no other expert
    assert all(g.channels_after == 64 for g in experts)
    sd = r.model.state_dict()
    for e in range(4):
        assert sd[f"model.layers.1.mlp.experts.experts.{e}.gate_proj.weight"].shape[0] == 64
    assert rep.macs_ratio < 0.5


def test_experts_prune_to_different_widths_without_the_config_constraint():
    r = compiler.compile(_mixtral(), _ids(), ratio=0.5, scope="global", attention="heads", hf_compatible=False, granularity=1)
    assert r.report.verification["passed"]
    sd = r.model.state_dict()
    widths = {sd[f"model.layers.{i}.mlp.experts.experts.{e}.gate_proj.weight"].shape[0] for i in range(2) for e in range(4)}
    assert len(widths) > 1  # separate groups: a global ranking keeps a different width per expert


@pytest.mark.parametrize("make", [_mixtral, _qwen2_moe])
def test_moe_saves_and_reloads_in_its_own_class(tmp_path, make):
    model = make()
    r = compiler.compile(model, _ids(), ratio=0.5, attention="heads")
    assert r.report.verification["passed"]
    r.save_pretrained(str(tmp_path))
    back = type(model).from_pretrained(str(tmp_path)).eval()
    cfg = back.config
    width = cfg.moe_intermediate_size if hasattr(cfg, "moe_intermediate_size") else cfg.intermediate_size
    assert width < (64 if hasattr(cfg, "moe_intermediate_size") else 128)
    assert back.model.layers[0].mlp.experts.gate_up_proj.shape[0] == 4
    x = _ids(5, 3, 7)
    with torch.no_grad():
        want = r.model(**x)
        want = want["logits"] if isinstance(want, dict) else want[0]
        torch.testing.assert_close(back(**x).logits, want, rtol=1e-4, atol=1e-4)
