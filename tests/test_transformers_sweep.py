"""Hugging Face transformers architectures, one of each family, built from configs (random weights,
nothing downloaded) at 512-768 wide and 4 layers deep, pruned at ratio 0.5 (slow; tests/test_transformers.py
runs the 64-wide, one-layer BERT, ViT and LLaMA with their save/reload round trips by default).

Each must verify against its masked original, remove over half of the MACs (an encoder without a head
outputs its residual stream, kept whole: fewer MACs only), run the pruned graph on other inputs of the
example's shape, and rebuild in its own class from the updated config (``to_hf``) with the same outputs,
or, where the config cannot express the pruned sizes, refuse that with ``UnsupportedModelError``.
The decoder LMs and T5 go through ``torch.export`` and are verified on their outputs only
(``verification["basis"]``); the others on every intermediate tensor too.
"""

from __future__ import annotations

import pytest
import torch

import compiler
from frontends.errors import UnsupportedModelError

transformers = pytest.importorskip("transformers")

T = transformers
LM = dict(vocab_size=1000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
          max_position_embeddings=64)  # fmt: skip
ENCODER = dict(vocab_size=1000, num_hidden_layers=4, max_position_embeddings=64)  # BERT-base widths: 768, 12 heads

MODELS = {
    "bert": lambda: T.BertForSequenceClassification(T.BertConfig(**ENCODER)),
    "roberta": lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**ENCODER)),
    "roberta_mlm": lambda: T.RobertaForMaskedLM(T.RobertaConfig(**ENCODER)),
    "distilbert": lambda: T.DistilBertForSequenceClassification(T.DistilBertConfig(vocab_size=1000, n_layers=4, max_position_embeddings=64)),
    "opt": lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=1000, hidden_size=512, ffn_dim=2048, num_hidden_layers=4, num_attention_heads=8,
                                                max_position_embeddings=64, word_embed_proj_dim=512)),  # fmt: skip
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(num_key_value_heads=4, **LM)),
    "qwen2": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(num_key_value_heads=2, **LM)),
    "mistral": lambda: T.MistralForCausalLM(T.MistralConfig(num_key_value_heads=4, **LM)),
    "t5_encoder": lambda: T.T5EncoderModel(T.T5Config(vocab_size=1000, num_layers=4, d_model=512, d_ff=2048, num_heads=8)),
    "vit": lambda: T.ViTForImageClassification(T.ViTConfig(num_hidden_layers=4, image_size=64, patch_size=16)),
}
NOT_HALF = {"t5_encoder"}  # no head: the output is the 512-wide residual stream
OUTPUTS_ONLY = {"opt", "llama", "qwen2", "mistral", "t5_encoder"}  # verified on their outputs, not intermediates
ROTARY = {"llama", "qwen2", "mistral"}  # whole heads: a pruned head size's rotary frequencies are not in the config
# to_hf refuses, typed: the masked-LM head's hidden transform (768 -> 768, LayerNorm, then the decoder tied to the
# embeddings) prunes, and the config has one hidden_size; OPT's layers prune the residual stream (512 -> 256) but
# not the tied embedding table's width, and OPTConfig has one hidden_size
NO_HF_CONFIG = {"opt", "roberta_mlm"}


def _first(out):
    if isinstance(out, torch.Tensor):
        return out
    values = list(out.values()) if isinstance(out, dict) else list(out)
    return next(v for v in values if isinstance(v, torch.Tensor))


def _inputs(name: str, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    if name == "vit":
        return (torch.randn(2, 3, 64, 64, generator=g),)
    return (torch.randint(0, 1000, (2, 16), generator=g),)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MODELS))
def test_transformers_sweep(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    attention = {"attention": "heads"} if name in ROTARY else {}
    # the plan without the config constraint (hf_compatible=False): what prunes, and where to_hf refuses it typed
    result = compiler.compile(model, _inputs(name, 0), ratio=0.5, hf_compatible=False, **attention)
    rep = result.report
    assert rep.verification["passed"] is True, rep.verification
    if name not in OUTPUTS_ONLY:
        assert rep.verification["nodes_checked"] > 0, rep.verification
    assert rep.params_after < rep.params_before
    if name in NOT_HALF:
        assert rep.macs_after < rep.macs_before, rep.macs_ratio
    else:
        assert rep.macs_after < 0.5 * rep.macs_before, rep.macs_ratio
    x2 = _inputs(name, 1)
    with torch.no_grad():
        want = _first(result.model(*x2))
        assert want.shape == _first(model(*x2)).shape
        if name in NO_HF_CONFIG:
            with pytest.raises(UnsupportedModelError):
                result.to_hf()
            return
        rebuilt = result.to_hf()
        assert type(rebuilt) is type(model)
        torch.testing.assert_close(_first(rebuilt(*x2)), want, rtol=1e-4, atol=1e-4)
