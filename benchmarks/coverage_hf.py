"""Coverage: Hugging Face transformers architectures through ``compiler.compile(ratio=0.5)``.

Every model is built from a small config (random weights, nothing downloaded: 2 layers, hidden 64), pruned at
ratio 0.5 with ``attention="head_dim"`` and with ``attention="heads"`` (``hf_compatible`` on, the default for
a ``PreTrainedModel``), verified against its masked original, then saved with ``save_pretrained`` and
reloaded with ``from_pretrained`` in its own class; the reloaded model's outputs are compared with the pruned
model's on other inputs of the example's shape. Each row gives the trace method, MACs and parameter ratios,
the verification, the round trip, and what froze (the top reasons, by channels).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/coverage_hf.py            # -> benchmarks/results/coverage_hf.md
    python benchmarks/coverage_hf.py --models bert,llama                      # a few (prints; writes nothing)
    python benchmarks/coverage_hf.py --models mixtral --update                # re-run a few, replace their rows
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import transformers as T  # noqa: E402

import compiler  # noqa: E402

V = 100  # vocabulary (not 128: a width equal to intermediate_size would read as an FFN)
TXT = dict(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=64)
LM = dict(TXT, num_key_value_heads=2)


def _ids(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(3, V, (2, 12), generator=g)}


def _pix(size: int) -> Callable[[torch.Generator], dict[str, torch.Tensor]]:
    return lambda g: {"pixel_values": torch.randn(2, 3, size, size, generator=g)}


def _seq2seq(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(3, V, (2, 12), generator=g), "decoder_input_ids": torch.randint(3, V, (2, 6), generator=g)}


def _clip(g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(3, V, (2, 12), generator=g), "pixel_values": torch.randn(2, 3, 32, 32, generator=g)}


VIS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=32, patch_size=8)

# name -> (family, builder, inputs)
MODELS: dict[str, tuple[str, Callable[[], Any], Callable[[torch.Generator], dict[str, torch.Tensor]]]] = {
    "bert": ("encoder", lambda: T.BertForSequenceClassification(T.BertConfig(**TXT)), _ids),
    "roberta": ("encoder", lambda: T.RobertaForSequenceClassification(T.RobertaConfig(**TXT, pad_token_id=1)), _ids),
    "distilbert": ("encoder", lambda: T.DistilBertForSequenceClassification(
        T.DistilBertConfig(vocab_size=V, dim=64, hidden_dim=128, n_layers=2, n_heads=4, max_position_embeddings=64)), _ids),
    "albert": ("encoder", lambda: T.AlbertForSequenceClassification(T.AlbertConfig(**TXT, embedding_size=32)), _ids),
    "electra": ("encoder", lambda: T.ElectraForSequenceClassification(T.ElectraConfig(**TXT, embedding_size=64)), _ids),
    "deberta_v2": ("encoder", lambda: T.DebertaV2ForSequenceClassification(T.DebertaV2Config(**TXT)), _ids),
    "gpt2": ("decoder", lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=64)), _ids),
    "gpt_neox": ("decoder", lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**TXT)), _ids),
    "opt": ("decoder", lambda: T.OPTForCausalLM(T.OPTConfig(vocab_size=V, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                           num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64)), _ids),
    "bloom": ("decoder", lambda: T.BloomForCausalLM(T.BloomConfig(vocab_size=V, hidden_size=64, n_layer=2, n_head=4)), _ids),
    "falcon": ("decoder", lambda: T.FalconForCausalLM(T.FalconConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4)), _ids),
    "llama": ("decoder", lambda: T.LlamaForCausalLM(T.LlamaConfig(**LM)), _ids),
    "mistral": ("decoder", lambda: T.MistralForCausalLM(T.MistralConfig(**LM)), _ids),
    "qwen2": ("decoder", lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**LM)), _ids),
    "qwen3": ("decoder", lambda: T.Qwen3ForCausalLM(T.Qwen3Config(**LM, head_dim=16)), _ids),
    "phi": ("decoder", lambda: T.PhiForCausalLM(T.PhiConfig(**TXT)), _ids),
    "phi3": ("decoder", lambda: T.Phi3ForCausalLM(T.Phi3Config(**LM, pad_token_id=0)), _ids),
    "gemma": ("decoder", lambda: T.GemmaForCausalLM(T.GemmaConfig(**LM, head_dim=16)), _ids),
    "gemma2": ("decoder", lambda: T.Gemma2ForCausalLM(T.Gemma2Config(**LM, head_dim=16)), _ids),
    "gemma3": ("decoder", lambda: T.Gemma3ForCausalLM(T.Gemma3TextConfig(**LM, head_dim=16)), _ids),
    "t5": ("encoder-decoder", lambda: T.T5ForConditionalGeneration(
        T.T5Config(vocab_size=V, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2, num_decoder_layers=2)), _seq2seq),
    "bart": ("encoder-decoder", lambda: T.BartForConditionalGeneration(T.BartConfig(
        vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, max_position_embeddings=64)), _seq2seq),
    "whisper": ("encoder-decoder", lambda: T.WhisperForConditionalGeneration(T.WhisperConfig(
        vocab_size=V, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=16, max_target_positions=32,
        decoder_start_token_id=1, pad_token_id=0)),
        lambda g: {"input_features": torch.randn(2, 16, 32, generator=g), "decoder_input_ids": torch.randint(3, V, (2, 6), generator=g)}),
    "vit": ("vision", lambda: T.ViTForImageClassification(T.ViTConfig(**VIS)), _pix(32)),
    "deit": ("vision", lambda: T.DeiTForImageClassification(T.DeiTConfig(**VIS)), _pix(32)),
    "swin": ("vision", lambda: T.SwinForImageClassification(T.SwinConfig(
        image_size=32, patch_size=4, embed_dim=32, depths=[1, 1], num_heads=[2, 4], window_size=4)), _pix(32)),
    "convnext": ("vision", lambda: T.ConvNextForImageClassification(T.ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)), _pix(32)),
    "clip": ("vision", lambda: T.CLIPModel(T.CLIPConfig(
        text_config=dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8),
        projection_dim=32)), _clip),
    "siglip": ("vision", lambda: T.SiglipModel(T.SiglipConfig(
        text_config=dict(vocab_size=V, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8))), _clip),
    "segformer": ("vision", lambda: T.SegformerForSemanticSegmentation(T.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
        num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=3)), _pix(32)),
    "dinov2": ("vision", lambda: T.Dinov2ForImageClassification(T.Dinov2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2, image_size=28, patch_size=14)), _pix(28)),
    "wav2vec2": ("audio", lambda: T.Wav2Vec2ForSequenceClassification(T.Wav2Vec2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, conv_dim=(32, 32), conv_stride=(5, 2),
        conv_kernel=(10, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=V)),
        lambda g: {"input_values": torch.randn(2, 800, generator=g)}),
    "mixtral": ("moe", lambda: T.MixtralForCausalLM(T.MixtralConfig(**LM, num_local_experts=4, num_experts_per_tok=2)), _ids),
    "qwen2_moe": ("moe", lambda: T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(
        **LM, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=96)), _ids),
}


class _Timeout(Exception):
    pass


def _leaves(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict) or hasattr(out, "to_tuple"):
        out = list(out.values()) if isinstance(out, dict) else list(out.to_tuple())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _leaves(o)]
    return []


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:150] if str(exc) else ''}".replace("|", "/")


def _froze(rep: Any) -> str:
    """The top reasons channels froze, by channels (the model output's residual stream left out: it is the output)."""
    count: collections.Counter[str] = collections.Counter()
    for g in rep.groups:
        if g.frozen_channels:
            for reason in g.reasons[:1] or ["(no reason)"]:
                count[reason.split(";")[0][:110]] += g.frozen_channels
    return "; ".join(f"{r} ({n})" for r, n in count.most_common(3)).replace("|", "/") or "-"


def _roundtrip(result: Any, model: Any, inputs: dict[str, torch.Tensor], held_out: dict[str, torch.Tensor]) -> str:
    with tempfile.TemporaryDirectory() as d:
        result.save_pretrained(d)
        back = type(model).from_pretrained(d).eval()
    with torch.no_grad():
        want, got = _leaves(result.model(**held_out)), _leaves(back(**held_out))
    if not want or not got or want[0].shape != got[0].shape:
        return "reloads, outputs differ in shape"
    err = (want[0].double() - got[0].double()).abs().max().item()
    return "yes" if err <= 1e-4 * max(1.0, want[0].abs().max().item()) else f"reloads, differs by {err:.2g}"


def run_one(name: str, attention: str, limit: int = 240) -> dict[str, Any]:
    family, build, make = MODELS[name]
    row: dict[str, Any] = {"model": name, "family": family, "attention": attention}
    torch.manual_seed(0)
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Timeout(f"over {limit} s")))
    signal.alarm(limit)
    t0 = time.perf_counter()
    try:
        model = build().eval()
        inputs, held_out = make(torch.Generator().manual_seed(0)), make(torch.Generator().manual_seed(1))
        row["class"] = type(model).__name__
        r = compiler.compile(model, inputs, ratio=0.5, attention=attention)
        rep = r.report
        row.update(trace=rep.trace_method, macs=rep.macs_ratio, params=rep.params_after / rep.params_before,
                   verified=bool(rep.verification and rep.verification["passed"]), froze=_froze(rep))  # fmt: skip
        hf = rep.settings.get("hf_constraint") or {}
        if hf:
            row["cost"] = hf["macs_constrained"] / max(1, hf["macs_unconstrained"])
        try:
            row["reload"] = _roundtrip(r, model, inputs, held_out)
        except _Timeout:
            raise
        except Exception as exc:  # noqa: BLE001 - a row, not the end of the sweep
            row["reload"] = "no: " + _short(exc)
    except _Timeout as exc:
        row["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001
        row["error"] = _short(exc)
    finally:
        signal.alarm(0)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


# What holds a model above 0.5x MACs that its froze column does not say (read from the class and its config)
NOTES = {
    "bloom": "BloomConfig has no FFN width field (BloomMLP builds 4 x hidden_size)",
    "swin": "per-stage config: FFN width is mlp_ratio x the stage width (a float), stage widths from embed_dim; hf_compatible maps neither",
    "convnext": "ConvNextConfig: the block's expansion is 4 x the stage width (no field), stage widths a list hf_compatible does not map",
    "segformer": "per-stage lists (hidden_sizes, mlp_ratios) hf_compatible does not map",
    "clip": "composite config: widths live in text_config / vision_config, which hf_compatible does not map (top-level fields only)",
    "siglip": "composite config: widths live in text_config / vision_config, which hf_compatible does not map (top-level fields only)",
    "falcon": "attention: multi-query key/value heads are picked with a list index (fused_qkv[..., [-2], :]), a tensor index over the head dim, so q/k/v stay whole",
    "t5": "heads: relative_attention_bias has one column per head and does not prune with them",
    "dinov2": "FFN width is mlp_ratio x hidden_size (a float hf_compatible does not map); mask_token (1, hidden) holds the residual width",
}
_BUILDS = re.compile(r"builds ([\w.]+)")


def why(r: dict[str, Any]) -> str:
    """Why a row stays at or above 0.5x MACs: the MACs without the config constraint, the parameters the config
    could not shrink (from the froze reasons), the other top freeze reason, and a note on the class."""
    if "error" in r or r["macs"] < 0.5:
        return ""
    parts = []
    if r.get("cost", 1.0) > 1.05:
        held = []
        for reason in r["froze"].split("; "):
            m = _BUILDS.search(reason) if reason.startswith("hf_compatible") else None
            if m:
                leaf = ".".join(p for p in m.group(1).split(".")[-3:] if not p.isdigit() and p != "weight")
                if leaf not in held:
                    held.append(leaf)
        parts.append(f"hf_compatible: {r['macs'] / r['cost']:.2f}x without it; the config cannot shrink {', '.join(held) or 'them'}")
    other = [x for x in r["froze"].split("; ") if not x.startswith(("hf_compatible", "<output>", "-"))]
    if other:
        parts.append("frozen: " + other[0])
    if r["model"] in NOTES:
        parts.append(NOTES[r["model"]])
    return "; ".join(parts) or "-"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | class | trace | attention | MACs | params | constraint cost | verified | save→reload matches | froze (top reasons, channels) | why not below 0.5x |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r.get('class', '-')} | - | {r['attention']} | - | - | - | no | - | fails: {r['error']} | |")
            continue
        cost = "-" if "cost" not in r else f"{r['cost']:.2f}x"
        lines.append(
            f"| {r['model']} | {r['class']} | {r['trace']} | {r['attention']} | {_fmt(r['macs'])} | {_fmt(r['params'])} | {cost} | "
            f"{'yes' if r['verified'] else 'NO'} | {r['reload']} | {r['froze']} | {why(r).replace('|', '/')} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    models = sorted({r["model"] for r in rows})
    ok = [r for r in rows if "error" not in r]
    by_mode = {}
    for mode in ("head_dim", "heads"):
        rs = [r for r in ok if r["attention"] == mode]
        by_mode[mode] = (
            f"`attention=\"{mode}\"`: {len(rs)} of {len(models)} compile and verify "
            f"({sum(r['verified'] for r in rs)} verified), {sum(r['macs'] < 0.5 for r in rs)} below 0.5x MACs, "
            f"{sum(r['macs'] < 0.75 for r in rs)} below 0.75x; {sum(r['reload'] == 'yes' for r in rs)} save→reload and match"
        )
    return f"{len(models)} architectures. " + "; ".join(by_mode.values()) + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="", help="comma-separated names (default: all); prints, writes nothing")
    ap.add_argument("--update", action="store_true", help="with --models: replace those rows in coverage_hf.jsonl and rewrite the table")
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n] or list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        sys.exit(f"coverage_hf: unknown models {unknown}; choose from {', '.join(MODELS)}")
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    T.logging.set_verbosity_error()
    rows = []
    for name in names:
        for attention in ("head_dim", "heads"):
            row = run_one(name, attention)
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    jsonl = os.path.join(RESULTS, "coverage_hf.jsonl")
    if args.update:
        with open(jsonl) as f:
            old = [json.loads(line) for line in f if line.strip()]
        new = {(r["model"], r["attention"]): r for r in rows}
        rows = [new.pop((r["model"], r["attention"]), r) for r in old] + list(new.values())
    if not args.models or args.update:
        with open(jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    text = (
        "# Hugging Face transformers coverage (ratio 0.5, hf_compatible)\n\n"
        "Built from small configs (random weights, no downloads; 2 layers, hidden 64), pruned with "
        "`compiler.compile(model, inputs, ratio=0.5, attention=...)` (`hf_compatible` on: the default for a "
        "`PreTrainedModel`), verified against the masked original, saved with `save_pretrained`, reloaded with "
        "`from_pretrained` in its own class and compared with the pruned model on other inputs. *constraint cost*: "
        "the planned MACs with `hf_compatible` over those without it. *froze*: why channels were kept, by channels "
        "(the model output's width is the output). *why not below 0.5x*: for rows at or above 0.5x, the MACs without "
        "the constraint (MACs / constraint cost), the parameters the config could not shrink, the other top freeze "
        "reason, and what in the class or config holds the rest. `python benchmarks/coverage_hf.py`\n\n"
        f"**Summary**: {summary(rows)}\n\n{table(rows)}\n"
    )
    print(text)
    if not args.models or args.update:
        with open(os.path.join(RESULTS, "coverage_hf.md"), "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
