"""GPT-2 (transformers ``GPT2LMHeadModel``, built from a small config): its ``Conv1D`` layers
(``view -> addmm -> view``, weight stored ``[in, out]``) prune, attention heads included, and verify."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import compiler

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402


def _gpt2(n_layer: int = 2):
    cfg = transformers.GPT2Config(
        n_layer=n_layer, n_embd=64, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("attention", ["head_dim", "heads"])
def test_gpt2_conv1d_layers_prune_and_verify(attention):
    model = _gpt2()
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    # the plan without the config's constraint (hf_compatible=False): GPT2Config derives the head size from
    # n_embd / n_head, so the default plan keeps attention whole (tested below)
    r = compiler.compile(model, (ids,), ratio=0.5, attention=attention, hf_compatible=False)
    rep = r.report
    v = rep.verification  # torch.export graph, checked node by node in float64 (its float32 dtype asserts dropped)
    assert v["passed"] and v["dtype"] == "float64" and v["nodes_checked"] > 40
    assert rep.macs_after < 0.75 * rep.macs_before
    frozen = {f.target for f in rep.frozen_ops}
    assert "aten.addmm.default" not in frozen and "addmm" not in " ".join(frozen)
    sd = r.model.state_dict()
    c_attn = next(v for k, v in sd.items() if k.endswith("h.0.attn.c_attn.weight"))
    c_fc = next(v for k, v in sd.items() if k.endswith("h.0.mlp.c_fc.weight"))
    assert c_attn.shape[1] < 192 and c_attn.shape[1] % 3 == 0  # q, k and v pruned alike
    assert c_fc.shape[1] < 256
    with torch.no_grad():
        after = r.model(ids)
        out = after["logits"] if isinstance(after, dict) else after[0] if isinstance(after, (tuple, list)) else after
    assert out.shape == before.shape
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)  # the input model is untouched


def test_gpt2_default_plan_is_one_gpt2config_holds(tmp_path):
    """hf_compatible (the default for a PreTrainedModel): the MLP's Conv1D layers prune, attention stays whole
    with the config's reason in the report, and save_pretrained -> from_pretrained gives the pruned model."""
    model = _gpt2()
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))
    r = compiler.compile(model, (ids,), ratio=0.5)
    rep = r.report
    assert rep.verification["passed"] and rep.macs_after < 0.75 * rep.macs_before
    sd = r.model.state_dict()
    assert next(v for k, v in sd.items() if k.endswith("h.0.attn.c_attn.weight")).shape[1] == 192
    assert next(v for k, v in sd.items() if k.endswith("h.0.mlp.c_fc.weight")).shape[1] < 256
    reasons = " ".join(f["reason"] for f in rep.settings["hf_constraint"]["frozen"])
    assert "GPT2Config" in reasons and "c_attn" in reasons
    r.save_pretrained(tmp_path)
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = r.model(ids)
        out = out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, (tuple, list)) else out
        torch.testing.assert_close(again(ids).logits, out)


class Conv1DMLP(nn.Module):
    """Two GPT-2 ``Conv1D`` layers around a GELU: traced by torch.fx, so every node is verified in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = Conv1D(32, 12)  # Conv1D(nf=out, nx=in)
        self.proj = Conv1D(6, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.fc(x)))


def test_conv1d_mlp_prunes_with_node_level_verification():
    torch.manual_seed(0)
    model = Conv1DMLP().eval()
    x = torch.randn(2, 5, 12)
    r = compiler.compile(model, (x,), ratio=0.5, granularity=1)
    v = r.report.verification
    assert v["passed"] and v["dtype"] == "float64" and v["nodes_checked"] >= 3
    sd = r.model.state_dict()
    assert tuple(sd["fc.weight"].shape) == (12, 16) and tuple(sd["fc.bias"].shape) == (16,)
    assert tuple(sd["proj.weight"].shape) == (16, 6)
    rows = [(lay.kind, lay.in_channels, lay.out_channels) for lay in r.report.layers]
    assert rows == [("addmm", (12, 12), (32, 16)), ("addmm", (32, 16), (6, 6))]
    assert r.report.macs_before == 2 * 5 * (12 * 32 + 32 * 6)
    assert r.report.macs_after == 2 * 5 * (12 * 16 + 16 * 6)
    # the kept units are the 16 with the largest L2 norm of their fan-in (columns of the [in, out] weight)
    w = model.fc.weight.detach()
    top = torch.sort(torch.argsort(-w.norm(dim=0))[:16]).values
    torch.testing.assert_close(sd["fc.weight"], w[:, top])
