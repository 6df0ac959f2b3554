"""compiler.compile_pretrained: a transformers checkpoint folder pruned disk to disk, shard by shard."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

import compiler  # noqa: E402
from compiler import pretrained  # noqa: E402
from compiler.safetensors_io import ShardReader, ShardWriter  # noqa: E402
from frontends.errors import InvalidArgumentError, UnsupportedModelError, VerificationError  # noqa: E402


def _llama() -> LlamaForCausalLM:
    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=4,
                      vocab_size=300, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _qwen2() -> Qwen2ForCausalLM:
    cfg = Qwen2Config(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      vocab_size=96, max_position_embeddings=64, tie_word_embeddings=True)  # fmt: skip
    return Qwen2ForCausalLM(cfg).eval()


def _hashes(folder: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def _save(model: torch.nn.Module, folder: str, dtype: torch.dtype, shard: str | None) -> None:
    model.to(dtype).save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    """A sharded fp32 LLaMA (GQA) checkpoint, pruned once: (model, in_dir, out_dir, report, hashes before)."""
    torch.manual_seed(0)
    model = _llama()
    root = tmp_path_factory.mktemp("llama")
    in_dir, out_dir = str(root / "in"), str(root / "out")
    _save(model, in_dir, torch.float32, "60KB")
    before = _hashes(in_dir)
    lines: list[str] = []
    report = compiler.compile_pretrained(in_dir, out_dir, ratio=0.25, progress=lines.append)
    return model, in_dir, out_dir, report, before, lines


def _in_memory(model: torch.nn.Module, folder: str, dtype: torch.dtype) -> torch.nn.Module:
    """The same prune in memory (compiler.compile + save_pretrained), reloaded in ``dtype``."""
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    r = compiler.compile(model.float(), (ids,), ratio=0.25, attention="heads", importance="l2")
    r.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()


def test_sharded_round_trip_equals_the_in_memory_compile(llama_run, tmp_path):
    model, in_dir, out_dir, report, before, lines = llama_run
    assert len([f for f in os.listdir(in_dir) if f.endswith(".safetensors")]) > 2  # really sharded
    assert sorted(f for f in os.listdir(out_dir) if f.endswith(".safetensors")) == sorted(
        f for f in os.listdir(in_dir) if f.endswith(".safetensors")
    )
    assert _hashes(in_dir) == before  # the input folder is only read
    pruned = AutoModelForCausalLM.from_pretrained(out_dir).eval()
    cfg = pruned.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (48, 6, 3, 136)
    ref = _in_memory(model, str(tmp_path / "mem"), torch.float32)
    got, want = pruned.state_dict(), ref.state_dict()
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, ref(ids).logits, atol=1e-6)
    v = report.verification
    assert v["passed"] and [r["layer"] for r in v["layers"]] == [0, 1, 2]
    assert all(r["max_abs_error"] <= r["tolerance"] for r in v["layers"])
    assert set(report.timings) == {"analysis", "scoring", "selection", "writing", "verification"}
    assert any(line.startswith("scored shard") for line in lines) and any(line.startswith("verified layer 3/3") for line in lines)
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    with open(os.path.join(out_dir, pretrained.INDEX_FILE)) as f:
        index = json.load(f)
    assert set(index["weight_map"]) == set(got) and index["metadata"]["total_size"] == report.settings["bytes_after"]


def test_streamed_verification_catches_a_corrupted_block(llama_run, tmp_path):
    _, in_dir, out_dir, _, _, _ = llama_run
    assert len(pretrained.verify_pretrained(in_dir, out_dir)["layers"]) == 3  # the untouched folder passes
    bad = str(tmp_path / "bad")
    shutil.copytree(out_dir, bad)
    with open(os.path.join(bad, pretrained.INDEX_FILE)) as f:
        name = "model.layers.1.mlp.down_proj.weight"
        shard = os.path.join(bad, json.load(f)["weight_map"][name])
    reader = ShardReader(shard)
    tensors = {i.name: reader.read(i.name) for i in reader.infos}
    tensors[name] = tensors[name].clone()
    tensors[name][5, 7] += 0.05  # one weight of layer 1, slightly off
    with open(shard, "wb") as f:
        w = ShardWriter(f, [(i.name, i.torch_dtype, i.shape) for i in reader.infos])
        for i in reader.infos:
            w.write(i.name, tensors[i.name])
        w.close()
    with pytest.raises(VerificationError, match=r"layer 1 \(model\.layers\.1\)"):
        pretrained.verify_pretrained(in_dir, bad)


@pytest.mark.parametrize("family, dtype", [("qwen2", torch.bfloat16), ("qwen2", torch.float32), ("llama", torch.bfloat16)])
def test_round_trip_per_family_and_dtype(family, dtype, tmp_path):
    """Qwen2 (biases on q/k/v, tied embeddings: the checkpoint has no lm_head.weight) in bf16 and fp32, LLaMA in bf16
    (the hidden size shrinks: RMS-norm weights rescaled and rounded to bf16), one model.safetensors each."""
    torch.manual_seed(1)
    model = _qwen2() if family == "qwen2" else _llama()
    in_dir, out_dir = str(tmp_path / "in"), str(tmp_path / "out")
    _save(model, in_dir, dtype, None)
    report = compiler.compile_pretrained(in_dir, out_dir, ratio=0.25)
    with safe_open(os.path.join(out_dir, "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {dtype}  # the checkpoint's precision is kept
        assert ("lm_head.weight" in f.keys()) == (family == "llama")
    pruned = AutoModelForCausalLM.from_pretrained(out_dir, dtype=dtype).eval()
    ref = _in_memory(model, str(tmp_path / "mem"), dtype)
    for k, t in ref.state_dict().items():
        assert torch.equal(pruned.state_dict()[k], t), k
    v = report.verification  # float64, rescaled norm weights as written: bf16 checks as tightly as fp32
    assert v["rtol"] == pretrained.RTOL and v["max_abs_error"] <= v["tolerance"] < 1e-4
    assert report.settings["config_changes"]["intermediate_size"] < model.config.intermediate_size
    if family == "llama":
        assert report.settings["rescaled"] > 0 and report.settings["rescale_rounding"] > 1e-4  # bf16 rounding, reported


def test_target_macs(tmp_path):
    torch.manual_seed(2)
    in_dir = str(tmp_path / "in")
    _save(_llama(), in_dir, torch.float32, None)
    report = compiler.compile_pretrained(in_dir, str(tmp_path / "out"), target_macs=0.6, verify=False)
    assert report.macs_after <= 0.6 * report.macs_before < report.macs_after * 1.25


def test_failure_leaves_no_output(llama_run, tmp_path, monkeypatch):
    _, in_dir, _, _, before, _ = llama_run

    def broken(*args, **kwargs):
        raise VerificationError("injected")

    monkeypatch.setattr(pretrained, "_verify", broken)
    with pytest.raises(VerificationError, match="injected"):
        compiler.compile_pretrained(in_dir, str(tmp_path / "out"), ratio=0.25)
    assert os.listdir(tmp_path) == []  # neither the folder nor its temporary twin
    assert _hashes(in_dir) == before


def test_bad_inputs(llama_run, tmp_path):
    _, in_dir, out_dir, _, before, _ = llama_run
    out = str(tmp_path / "out")
    os.mkdir(tmp_path / "empty")
    with pytest.raises(InvalidArgumentError, match="no config.json"):
        compiler.compile_pretrained(str(tmp_path / "empty"), out)
    with pytest.raises(InvalidArgumentError, match="not empty"):
        compiler.compile_pretrained(in_dir, out_dir)
    with pytest.raises(InvalidArgumentError, match="inside the input folder"):
        compiler.compile_pretrained(in_dir, os.path.join(in_dir, "sub"))
    with pytest.raises(InvalidArgumentError, match="calibration data"):
        compiler.compile_pretrained(in_dir, out, importance="taylor")
    with pytest.raises(InvalidArgumentError, match="ratio"):
        compiler.compile_pretrained(in_dir, out, ratio=1.5)
    with pytest.raises(InvalidArgumentError, match="attention='heads'"):
        compiler.compile_pretrained(in_dir, out, attention="head_dim")
    missing = str(tmp_path / "missing")
    shutil.copytree(in_dir, missing)
    shard = sorted(f for f in os.listdir(missing) if f.endswith(".safetensors"))[1]
    os.remove(os.path.join(missing, shard))
    with pytest.raises(InvalidArgumentError, match=f"{shard}: shard missing"):
        compiler.compile_pretrained(missing, out)
    unknown = str(tmp_path / "unknown")
    shutil.copytree(in_dir, unknown)
    with open(os.path.join(unknown, "config.json")) as f:
        cfg = json.load(f)
    cfg["architectures"] = ["NoSuchForCausalLM"]
    with open(os.path.join(unknown, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(UnsupportedModelError, match="NoSuchForCausalLM"):
        compiler.compile_pretrained(unknown, out)
    assert not os.path.exists(out) and _hashes(in_dir) == before


def test_cli_prunes_a_checkpoint_folder(llama_run, tmp_path, capsys):
    from compiler.cli import main

    _, in_dir, _, _, before, _ = llama_run
    out = str(tmp_path / "out")
    assert main(["prune", in_dir, "-o", out, "--ratio", "0.25", "--no-verify"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained(out).config.hidden_size == 48
    capsys.readouterr()
    assert main(["prune", in_dir, "-o", out]) == 2  # not empty now
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert main(["prune", in_dir, "-o", str(tmp_path / "o2"), "--threshold", "0.1"]) == 2
    assert _hashes(in_dir) == before


def test_shard_writer_reads_back_with_safetensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(7, dtype=torch.int64), "c": torch.tensor(2.5),
        "d": torch.tensor([True, False]), "e": torch.randn(2, 3, 4, dtype=torch.float16),
    }  # fmt: skip
    path = str(tmp_path / "x.safetensors")
    with open(path, "wb") as f:
        w = ShardWriter(f, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()])
        for k, v in tensors.items():
            w.write(k, v)
        w.close()
    with safe_open(path, "pt") as f:
        for k, v in tensors.items():
            assert torch.equal(f.get_tensor(k), v), k
    r = ShardReader(path)
    assert torch.equal(r.read_rows("e", 1, 2), tensors["e"][1:2])
    with open(path, "r+b") as f:  # a truncated file is refused, naming it
        f.truncate(os.path.getsize(path) - 4)
    with pytest.raises(InvalidArgumentError, match="x.safetensors"):
        ShardReader(path)
