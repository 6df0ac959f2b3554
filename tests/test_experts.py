"""Whole experts removed from mixtures of experts (transformers Mixtral, Qwen2-MoE): ranked by routed load x
saliency, the router's rows sliced, verified against the original with their router logits at -inf, reloaded."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import compiler  # noqa: E402
from frontends.errors import InvalidArgumentError, UnsupportedModelError, VerificationError  # noqa: E402
from frontends.torch.experts import calls_from, expert_statistics, find_moe_layers, remove_experts, verify_experts  # noqa: E402

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


def _count(cfg):
    return cfg.num_local_experts if hasattr(cfg, "num_local_experts") else cfg.num_experts


def _logits(out):
    return out["logits"] if isinstance(out, dict) else (out.logits if hasattr(out, "logits") else out[0])


@pytest.mark.parametrize("make", [_mixtral, _qwen2_moe])
def test_half_the_experts_go_in_every_layer_verified_and_reloaded(tmp_path, make):
    model = make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = compiler.compile(model, _ids(), experts=0.5)
    ex = r.report.experts
    assert ex["removed"] == 4 and ex["candidates"] == 8 and "example inputs" in ex["data"]
    assert ex["verification"]["passed"] and ex["verification"]["nodes_checked"] > 0
    assert r.report.verification["passed"]
    for row in ex["layers"]:  # the two lowest-scored experts of each layer, with their load and score
        scores = [e["score"] for e in row["all"]]
        assert sorted(e["expert"] for e in row["removed"]) == sorted(np.argsort(scores, kind="stable")[:2].tolist())
        assert sum(e["load"] for e in row["all"]) == 2 * 12 * 2  # every token's top-2 slots
    assert "experts      removed 4 of 8" in r.report.summary()
    sd = r.model.state_dict()
    gate = [k for k in sd if k.endswith("mlp.gate.weight")]
    assert len(gate) == 2 and all(sd[k].shape[0] == 2 for k in gate)
    assert r.report.macs_ratio < 0.8 and r.report.params_ratio < 0.8
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the input is not modified
    assert _count(model.config) == 4
    r.save_pretrained(str(tmp_path))
    back = type(model).from_pretrained(str(tmp_path)).eval()
    assert _count(back.config) == 2
    assert back.model.layers[1].mlp.experts.gate_up_proj.shape[0] == 2
    x = _ids(5, 3, 7)
    with torch.no_grad():
        torch.testing.assert_close(back(**x).logits, _logits(r.model(**x)), rtol=1e-4, atol=1e-4)


def test_with_ratio_the_kept_experts_prune_their_width_and_reload(tmp_path):
    model = _mixtral()
    cal = [_ids(s, 4, 12) for s in (10, 11)]
    r = compiler.compile(model, _ids(), experts=0.5, ratio=0.5, attention="heads", calibration=cal)
    assert r.report.experts["data"] == "calibration (2 batches)"
    assert r.report.experts["verification"]["passed"] and r.report.verification["passed"]
    r.save_pretrained(str(tmp_path))
    back = T.MixtralForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert back.config.num_local_experts == 2 and back.config.intermediate_size == 64
    x = _ids(6, 2, 9)
    with torch.no_grad():
        torch.testing.assert_close(back(**x).logits, _logits(r.model(**x)), rtol=1e-4, atol=1e-4)
    assert r.report.macs_ratio < 0.25


def test_an_expert_that_adds_nothing_is_removed_first():
    model = _mixtral()
    with torch.no_grad():
        model.model.layers[0].mlp.experts.down_proj[1].zero_()
        model.model.layers[1].mlp.experts.down_proj[2].zero_()
    layers = find_moe_layers(model)
    stats = expert_statistics(model, layers, calls_from(_ids(), None))
    load0, contrib0 = stats["model.layers.0.mlp"]
    assert load0[1] > 0 and contrib0[1] == 0.0 and (contrib0[[0, 2, 3]] > 0).all()
    for layer in model.model.layers:  # in training mode the router's input is jittered: ranked in eval mode
        layer.mlp.jitter_noise = 0.5
    model.train()
    r = compiler.compile(model, _ids(), experts=0.25, verify=False)
    removed = {row["name"]: [e["expert"] for e in row["removed"]] for row in r.report.experts["layers"]}
    assert removed == {"model.layers.0.mlp": [1], "model.layers.1.mlp": [2]}
    assert model.training  # the input model is not touched, its mode included
    assert [row["all"][e]["load"] for row in r.report.experts["layers"] for e in range(4)] == [
        int(x) for name in ("model.layers.0.mlp", "model.layers.1.mlp") for x in stats[name][0]
    ]


@pytest.mark.parametrize("make", [_mixtral, _qwen2_moe])
def test_the_check_fails_on_a_corrupted_kept_expert_or_wrong_routing(make):
    model = make()
    layers = find_moe_layers(model)
    kept = {L.name: [0, 2] for L in layers}
    small = copy.deepcopy(model)
    remove_experts(small, layers, kept)
    calls = calls_from(_ids(), None)
    res = verify_experts(model, small, layers, kept, calls, 1e-5)
    assert res.passed and res.max_abs_error == 0.0 and res.dtype == "float64"
    bad = copy.deepcopy(small)
    with torch.no_grad():
        bad.model.layers[1].mlp.experts.down_proj[1].mul_(1.01)  # a kept expert (the original's 2)
    with pytest.raises(VerificationError, match="router logits at -inf"):
        verify_experts(model, bad, layers, kept, calls, 1e-5)
    with pytest.raises(VerificationError, match="routed to other experts"):  # the slices are not the experts claimed
        verify_experts(model, small, layers, {L.name: [0, 1] for L in layers}, calls, 1e-5)
    # without the -inf logits the reference routes to removed experts: the masking is what makes it pass
    plain = copy.deepcopy(model)
    with pytest.raises(VerificationError):
        verify_experts(plain, small, layers, {L.name: [0, 1, 2, 3] for L in layers}, calls, 1e-5)


@pytest.mark.parametrize("bad", [1.0, -0.1, "half", True, float("nan")])
def test_bad_fractions_are_refused(bad):
    with pytest.raises(InvalidArgumentError, match="experts"):
        compiler.compile(_mixtral(), _ids(), experts=bad)


def test_refused_without_experts_or_when_too_few_stay():
    torch.manual_seed(0)
    llama = T.LlamaForCausalLM(T.LlamaConfig(**LM)).eval()
    with pytest.raises(InvalidArgumentError, match="no mixture-of-experts layer"):
        compiler.compile(llama, _ids(), experts=0.5)
    with pytest.raises(InvalidArgumentError, match="no mixture-of-experts layer"):
        compiler.compile(torch.nn.Sequential(torch.nn.Linear(4, 4)), (torch.randn(2, 4),), experts=0.5)
    with pytest.raises(InvalidArgumentError, match="fewer than the 2 each token"):
        compiler.compile(_mixtral(), _ids(), experts=0.75)
    with pytest.raises(InvalidArgumentError, match="does not combine with depth"):
        compiler.compile(_mixtral(), _ids(), experts=0.5, depth=0.5)
    with pytest.raises(InvalidArgumentError, match="goes with ratio"):
        compiler.compile(_mixtral(), _ids(), experts=0.5, target_macs=0.5)
    with pytest.raises(InvalidArgumentError, match="PyTorch mixture-of-experts"):
        compiler.compile("model.onnx", None, experts=0.5)


def test_save_says_so_when_the_config_does_not_follow(tmp_path):
    r = compiler.compile(_qwen2_moe(), _ids(), experts=0.5, verify=False)
    r.source.config.num_experts = 4  # as if the config had no field for the expert count
    with pytest.raises(UnsupportedModelError, match="cannot express"):
        r.save_pretrained(str(tmp_path))


def test_experts_in_other_layouts_are_named_not_guessed():
    torch.manual_seed(0)
    oss = T.GptOssForCausalLM(T.GptOssConfig(**LM, num_local_experts=4, num_experts_per_tok=2, head_dim=16, layer_types=["full_attention"] * 2))
    with pytest.raises(UnsupportedModelError, match=r"model.layers.0.mlp.experts: GptOssExperts is not in the layout"):
        compiler.compile(oss.eval(), _ids(), experts=0.5)  # biases on the experts
    ds = T.DeepseekV3ForCausalLM(T.DeepseekV3Config(
        **LM, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, first_k_dense_replace=0, n_group=1, topk_group=1,
        q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16))  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="router with e_score_correction_bias"):
        compiler.compile(ds.eval(), _ids(), experts=0.5)  # a routing bias of its own


def test_other_transformers_moe_classes_remove_experts_and_reload(tmp_path):
    torch.manual_seed(0)
    model = T.Qwen3MoeForCausalLM(T.Qwen3MoeConfig(**LM, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, head_dim=16)).eval()
    r = compiler.compile(model, _ids(), experts=0.5)
    assert r.report.experts["verification"]["passed"]
    r.save_pretrained(str(tmp_path))
    back = T.Qwen3MoeForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert back.config.num_experts == 2
    x = _ids(4, 2, 9)
    with torch.no_grad():
        torch.testing.assert_close(back(**x).logits, _logits(r.model(**x)), rtol=1e-4, atol=1e-4)
