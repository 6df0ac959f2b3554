"""transformers models that compiled and verified but did not come back in their own class (``to_hf`` /
``save_pretrained`` -> ``from_pretrained``), each on a tiny config (issue 22, item 4)."""

from __future__ import annotations

import pytest
import torch

import compiler

transformers = pytest.importorskip("transformers")
T = transformers


def _roundtrip(model, inputs: dict, other: dict, tmp_path, **kw) -> compiler.CompileResult:
    result = compiler.compile(model, inputs, ratio=0.5, **kw)
    assert result.report.verification["passed"] is True
    result.save_pretrained(str(tmp_path))
    back = type(model).from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        want, got = result.model(**other), back(**other)
    want = want["logits"] if isinstance(want, dict) else want.logits
    torch.testing.assert_close(got.logits, want, rtol=1e-5, atol=1e-5)
    return result


def test_distilbert_rebuilt_keeps_the_softmax_scale(tmp_path):
    """DistilBERT's attention (q_lin/k_lin/v_lin) with a pruned head size: the rebuilt class derives its softmax
    scale from dim / n_heads, so the query projection is rescaled as for q_proj; it was not (the rebuilt model
    was off by the scale, a VerificationError at 768 wide)."""
    torch.manual_seed(0)
    cfg = T.DistilBertConfig(vocab_size=50, dim=32, hidden_dim=64, n_layers=1, n_heads=2, max_position_embeddings=16,
                             initializer_range=0.5)  # fmt: skip  (large weights: a wrong scale shows)
    model = T.DistilBertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(0)
    x, x2 = ({"input_ids": torch.randint(0, 50, (2, 8), generator=g)} for _ in range(2))
    result = _roundtrip(model, x, x2, tmp_path, hf_compatible=False)
    assert result.model.state_dict()["distilbert.transformer.layer.0.attention.q_lin.weight"].shape[0] < 32


def _ids(seed: int, **extra) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(3, 50, (2, 8), generator=g), **{k: f(g) for k, f in extra.items()}}


def test_opt_reshape_into_heads_after_the_query_scale(tmp_path):
    """OPT scales the query before its reshape into heads (``(q_proj(x) * scaling).view(...)``): to_hf found no
    reshape after q_proj and refused (UnsupportedModelError)."""
    torch.manual_seed(0)
    cfg = T.OPTConfig(vocab_size=50, hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=16, word_embed_proj_dim=32)  # fmt: skip
    model = T.OPTForCausalLM(cfg).eval()
    result = _roundtrip(model, _ids(0), _ids(1), tmp_path)
    assert result.model.state_dict()["model.decoder.layers.0.fc1.weight"].shape[0] < 64


def test_seq2seq_keyword_inputs_rebuild(tmp_path):
    """An example given as keyword arguments (``input_ids``, ``decoder_input_ids``) is passed to the rebuilt class
    by name: positionally, BART's second parameter is ``attention_mask`` (the rebuilt model 'differed by inf')."""
    torch.manual_seed(0)
    cfg = T.BartConfig(vocab_size=50, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                       decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=16)  # fmt: skip
    model = T.BartForConditionalGeneration(cfg).eval()
    dec = {"decoder_input_ids": lambda g: torch.randint(3, 50, (2, 5), generator=g)}
    result = _roundtrip(model, _ids(0, **dec), _ids(1, **dec), tmp_path)
    assert result.model.state_dict()["model.encoder.layers.0.fc1.weight"].shape[0] < 64


def test_multihead_attention_packed_back_or_kept(tmp_path):
    """SigLIP's pooling head is an nn.MultiheadAttention, decomposed into q/k/v linears for tracing: its pruned
    projections go back into in_proj_weight (the rebuilt model kept the original weights, off by 2e-3), and
    a plan nn.MultiheadAttention cannot hold (fewer q/k rows than embed_dim) is not made."""
    torch.manual_seed(0)
    sub = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    cfg = T.SiglipVisionConfig(**sub, image_size=16, patch_size=8)
    model = T.SiglipVisionModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    x, x2 = ({"pixel_values": torch.randn(2, 3, 16, 16, generator=g)} for _ in range(2))
    result = compiler.compile(model, x, ratio=0.5)
    sd = result.model.state_dict()
    q = sd["head.attention.q_proj.weight"]
    assert q.shape == sd["head.attention.k_proj.weight"].shape == sd["head.attention.v_proj.weight"].shape == (32, 32)
    result.save_pretrained(str(tmp_path))
    back = type(model).from_pretrained(str(tmp_path)).eval()
    torch.testing.assert_close(back.state_dict()["head.attention.in_proj_weight"][:32], q)
    with torch.no_grad():
        torch.testing.assert_close(back(**x2).pooler_output, result.model(**x2)["pooler_output"], rtol=1e-5, atol=1e-5)


def test_t5_for_conditional_generation_traces(tmp_path):
    """T5's decoder stack holds its own copy of the config (use_cache on): its KV cache object in the outputs
    stopped torch.export (a TraceError). Every config in the model has use_cache off on the traced copy."""
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=50, d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1)
    model = T.T5ForConditionalGeneration(cfg).eval()
    dec = {"decoder_input_ids": lambda g: torch.randint(3, 50, (2, 5), generator=g)}
    result = _roundtrip(model, _ids(0, **dec), _ids(1, **dec), tmp_path)
    assert result.report.trace_method == "torch.export"
    assert result.report.macs_ratio < 0.8
    assert model.decoder.config.use_cache is True  # the input model is not changed


def test_falcon_linear_as_matmul_with_a_transposed_weight(tmp_path):
    """Falcon's FalconLinear is ``x @ self.weight.T + bias`` (torch.export: aten.numpy_T, then matmul): the transposed
    weight was an unknown op, freezing the whole residual stream and every layer (1.00x MACs). Now a permutation of
    a constant, scored as a linear layer's weight; with hf_compatible the FFN width goes to ffn_hidden_size."""
    torch.manual_seed(0)
    cfg = T.FalconConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = T.FalconForCausalLM(cfg).eval()
    free = compiler.compile(model, _ids(0), ratio=0.5, hf_compatible=False)
    assert free.report.verification["passed"] is True
    assert free.report.macs_ratio < 0.5, free.report.macs_ratio
    result = _roundtrip(model, _ids(0), _ids(1), tmp_path)
    assert result.model.state_dict()["transformer.h.0.mlp.dense_h_to_4h.weight"].shape[0] == 64
    assert result.to_hf().config.ffn_hidden_size == 64


def test_roles_one_config_field_holds_move_together():
    """T5's encoder and decoder FFNs are two roles and one config field (d_ff): neither could shrink alone, so
    hf_compatible froze both (T5 at 1.00x MACs with attention='heads'). They are now tried together."""
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=50, d_model=32, d_ff=64, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1)
    model = T.T5ForConditionalGeneration(cfg).eval()
    dec = {"decoder_input_ids": lambda g: torch.randint(3, 50, (2, 5), generator=g)}
    result = compiler.compile(model, _ids(0, **dec), ratio=0.5, attention="heads")
    sd = result.model.state_dict()
    widths = {sd[f"{s}.block.0.layer.{i}.DenseReluDense.wi.weight"].shape[0] for s, i in (("encoder", 1), ("decoder", 2))}
    assert widths == {32}, widths
    assert result.to_hf().config.d_ff == 32


def test_phi3_fused_gate_up_width(tmp_path):
    """Phi-3's FFN is one gate_up_proj of 2 x intermediate_size rows (and its fused qkv_proj here as wide as
    intermediate_size): hf_compatible found no layer of intermediate_size outputs and froze the FFN (1.00x MACs)."""
    torch.manual_seed(0)
    cfg = T.Phi3Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, max_position_embeddings=16, pad_token_id=0)  # fmt: skip
    model = T.Phi3ForCausalLM(cfg).eval()
    result = _roundtrip(model, _ids(0), _ids(1), tmp_path)
    rows = result.model.state_dict()["model.layers.0.mlp.gate_up_proj.weight"].shape[0]
    assert rows == 64, rows
    assert result.to_hf().config.intermediate_size == 32
