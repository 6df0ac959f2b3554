"""Depth pruning: whole residual blocks found from the graph, ranked, removed and verified.

Each removal is checked against an *independent* reference too: the original model with
the removed branches' last layer zeroed by hand (its weights and bias), which makes the
branch output exactly zero at the add; the pruned model must equal it.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torchvision

import compiler
from compiler import cli
from frontends.errors import InvalidArgumentError, UnsupportedModelError, VerificationError
from frontends.torch.adapter import TorchAdapter
from passes.depth import FindBlocks, score_blocks, select_blocks

torch.manual_seed(0)


def _run(model, x):
    with torch.no_grad():
        return model(x)


def _zero_modules(model: nn.Module, names: list[str]) -> nn.Module:
    """A copy with these modules' weights and biases zeroed (their outputs are exactly zero)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in names:
            mod = ref.get_submodule(name)
            mod.weight.zero_()
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
    return ref


# ---------------------------------------------------------------------------------------------- ResNet


def _resnet50():
    return torchvision.models.resnet50(weights=None).eval(), torch.randn(1, 3, 64, 64)


def test_resnet50_candidates_are_blocks_without_downsampling():
    model, x = _resnet50()
    r = compiler.compile(model, (x,), depth=0.25)
    d = r.report.depth
    names = [b["name"] for b in d["blocks"]]
    assert names == [f"layer{s}.{i}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(1, n)]
    rejected = {x["name"].split(" ")[0]: x["reason"] for x in d["not_removable"]}
    assert set(rejected) == {"layer1.0", "layer2.0", "layer3.0", "layer4.0"}
    assert all("projection shortcut" in why for why in rejected.values())
    assert len(d["removed"]) == 3 and d["criterion"] == "norm"  # no calibration: the data-free fallback
    assert d["verification"]["passed"] and d["verification"]["nodes_checked"] > 50
    # the modules are gone, not zeroed
    keys = set(r.model.state_dict())
    for name in d["removed"]:
        assert not any(k.startswith(name + ".") for k in keys), name
    assert r.report.params_after < r.report.params_before
    assert r.report.macs_after == d["macs_after_depth"] < r.report.macs_before
    # independent reference: the removed bottlenecks' last BN zeroed by hand
    ref = _zero_modules(model, [f"{n}.bn3" for n in d["removed"]])
    torch.testing.assert_close(_run(r.model, x), _run(ref, x), rtol=1e-5, atol=1e-5)
    # the original is untouched
    assert "depth" in r.report.summary()


def test_resnet_every_criterion_removes_a_dead_block_first():
    """A block whose branch is zero (its last BN zeroed) changes nothing: every criterion ranks it last."""
    model = torchvision.models.resnet18(weights=None).eval()
    with torch.no_grad():
        model.layer3[1].bn2.weight.zero_()
        model.layer3[1].bn2.bias.zero_()
    x = torch.randn(2, 3, 64, 64)
    cal = [(torch.randn(2, 3, 64, 64),) for _ in range(2)]
    for crit in ("norm", "cosine", "loss"):
        r = compiler.compile(model, (x,), depth=0.2, depth_importance=crit, calibration=cal)
        d = r.report.depth
        assert d["criterion"] == crit
        assert d["removed"] == ["layer3.1"], (crit, d["blocks"])
        scores = {b["name"]: b["score"] for b in d["blocks"]}
        assert scores["layer3.1"] == pytest.approx(0.0, abs=1e-9)
        assert all(s > 1e-6 for n, s in scores.items() if n != "layer3.1"), (crit, scores)


def test_only_block_of_a_stage_is_not_a_candidate_and_a_stage_keeps_one():
    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return x + self.conv2(torch.relu(self.conv1(x)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a = nn.Sequential(Res(8))
            self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.b = nn.Sequential(Res(16), Res(16), Res(16))
            self.head = nn.Linear(16, 4)

        def forward(self, x):
            x = self.b(self.down(self.a(self.stem(x))))
            return self.head(x.mean((2, 3)))

    net, x = Net().eval(), torch.randn(1, 3, 16, 16)
    r = compiler.compile(net, (x,), depth=0.5)
    d = r.report.depth
    assert [b["name"] for b in d["blocks"]] == ["b.0", "b.1", "b.2"]
    assert {"name": "a.0", "reason": "the only block of its stage"} in d["not_removable"]
    assert len(d["removed"]) == 2  # round(0.5 * 3)
    with pytest.raises(InvalidArgumentError, match="a stage must keep a block: at most 2"):
        compiler.compile(net, (x,), depth=0.9)


def test_corrupted_rewrite_fails_verification():
    model, x = torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 64, 64)
    adapter = TorchAdapter(model, (x,))
    adapter.load(lambda name, fn, *a, **k: fn(*a, **k))
    handler = adapter.depth()
    analysis = FindBlocks().call(adapter.graph)
    scores = score_blocks(analysis, handler, "norm")
    removed = select_blocks(analysis, scores, 2)
    good = handler.remove(removed)
    assert handler.verify(removed, good, 1e-6).passed
    other = [b for b in analysis.blocks if b not in removed][:2]
    with pytest.raises(VerificationError, match="removed branches zeroed"):  # the wrong blocks removed
        handler.verify(removed, handler.remove(other), 1e-6)
    bad = copy.deepcopy(good)
    with torch.no_grad():
        next(p for n, p in bad.named_parameters() if "conv" in n).mul_(1.01)  # one weight changed slightly
    with pytest.raises(VerificationError):
        handler.verify(removed, bad, 1e-6)


def test_convnext_blocks_with_layer_scale_and_permutes():
    model, x = torchvision.models.convnext_tiny(weights=None).eval(), torch.randn(1, 3, 32, 32)
    adapter = TorchAdapter(model, (x,))
    adapter.load(lambda name, fn, *a, **k: fn(*a, **k))
    analysis = FindBlocks().call(adapter.graph)
    depths = (3, 3, 9, 3)
    assert [b.name for b in analysis.blocks] == [f"features.{2 * s + 1}.{i}" for s, n in enumerate(depths) for i in range(n)]
    assert sorted({b.stage for b in analysis.blocks}) == [0, 1, 2, 3] and not analysis.rejected
    handler = adapter.depth()
    removed = select_blocks(analysis, score_blocks(analysis, handler, "norm"), 4)
    assert handler.verify(removed, handler.remove(removed), 1e-6).passed


# ---------------------------------------------------------------------------------------------- ViT


def test_vit_attention_and_mlp_branches():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64)
    vit, x = vit.eval(), torch.randn(2, 3, 32, 32)
    r = compiler.compile(vit, (x,), depth=0.5, calibration=[(torch.randn(2, 3, 32, 32),)])
    d = r.report.depth
    assert d["candidates"] == 6 and d["criterion"] == "cosine"  # attention and MLP of each of 3 layers
    assert len(d["removed"]) == 3 and d["verification"]["passed"]
    # independent reference: the removed branches' last linear zeroed
    layer_of = {b["name"]: i for i, b in enumerate(d["blocks"])}
    last = []
    for name in d["removed"]:
        i = layer_of[name]
        layer = f"encoder.layers.encoder_layer_{i // 2}"
        last.append(f"{layer}.self_attention.out_proj" if i % 2 == 0 else f"{layer}.mlp.3")
    ref = _zero_modules(vit, last)
    torch.testing.assert_close(_run(r.model, x), _run(ref, x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- LLaMA


transformers = pytest.importorskip("transformers")


def _llama(layers=8):
    cfg = transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=layers,
        intermediate_size=128, max_position_embeddings=64, initializer_range=0.2,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval(), torch.randint(0, 100, (2, 8))


def _logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else (out["logits"] if isinstance(out, dict) else out[0] if isinstance(out, tuple) else out)


def test_llama_two_of_eight_layers_verify_and_reload(tmp_path):
    model, ids = _llama(8)
    cal = [(torch.randint(0, 100, (2, 8)),) for _ in range(3)]
    r = compiler.compile(model, (ids,), depth=0.25, calibration=cal)
    d = r.report.depth
    assert [b["name"] for b in d["blocks"]] == [f"model.layers.{i}" for i in range(8)]
    assert all(b["branches"] == 2 for b in d["blocks"])  # a decoder layer is its attention and MLP together
    assert len(d["removed"]) == 2 and d["verification"]["passed"]
    scores = sorted(d["blocks"], key=lambda b: b["score"])
    assert sorted(d["removed"]) == sorted(b["name"] for b in scores[:2])  # the two lowest ShortGPT scores
    gone = [int(n.rsplit(".", 1)[1]) for n in d["removed"]]
    # independent reference: the removed layers' o_proj and down_proj zeroed
    ref = _zero_modules(model, [f"model.layers.{i}.{p}" for i in gone for p in ("self_attn.o_proj", "mlp.down_proj")])
    torch.testing.assert_close(_logits(r.model, ids), _logits(ref, ids), rtol=1e-5, atol=1e-5)
    r.save_pretrained(tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 6 and len(reloaded.model.layers) == 6
    torch.testing.assert_close(_logits(reloaded, ids), _logits(ref, ids), rtol=1e-4, atol=1e-4)
    kept = [i for i in range(8) if i not in gone]
    w = reloaded.model.layers[2].self_attn.q_proj.weight
    torch.testing.assert_close(w, model.model.layers[kept[2]].self_attn.q_proj.weight)  # re-indexed, not shuffled


def test_llama_depth_and_width_under_one_macs_budget(tmp_path):
    model, ids = _llama(4)
    r = compiler.compile(model, (ids,), depth=0.25, target_macs=0.6, attention="heads")
    d = r.report.depth
    assert len(d["removed"]) == 1 and d["macs_after_depth"] > 0.6 * r.report.macs_before
    assert r.report.macs_after <= 0.6 * r.report.macs_before * 1.02
    assert r.report.verification["passed"] and d["verification"]["passed"]
    assert "the width pass runs on LlamaForCausalLM with 3 layers" in d["note"]  # so its config constraints hold
    r.save_pretrained(tmp_path)
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 3
    torch.testing.assert_close(_logits(reloaded, ids), _logits(r.model, ids), rtol=1e-4, atol=1e-4)


def test_depth_auto_picks_the_split_with_the_best_held_out_quality():
    model, ids = _llama(4)
    cal = [(torch.randint(0, 100, (2, 8)),) for _ in range(4)]
    r = compiler.compile(model, (ids,), depth="auto", target_macs=0.7, calibration=cal, attention="heads")
    search = r.report.depth["search"]
    assert [t["blocks_removed"] for t in search][:2] == [0, 1] and len(search) >= 2
    best = max(search, key=lambda t: t["held_out_cosine"])
    assert len(r.report.depth["removed"]) == best["blocks_removed"]
    assert all(t["macs"] <= 0.7 * r.report.macs_before * 1.02 for t in search)
    with pytest.raises(InvalidArgumentError, match="at least 2 batches"):
        compiler.compile(model, (ids,), depth="auto", target_macs=0.7, calibration=cal[:1])


def test_a_config_that_derives_layers_from_the_index_is_a_typed_error():
    model, ids = _llama(4)
    model.config.sliding_window_pattern = 2  # per-layer behaviour from layer_idx % 2 (as Gemma 3's config has)
    with torch.no_grad():  # layer 1 contributes nothing: the data-free criterion removes it
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    r = compiler.compile(model, (ids,), depth=0.25, depth_importance="norm")
    assert r.report.depth["removed"] == ["model.layers.1"] and r.report.depth["verification"]["passed"]
    with pytest.raises(UnsupportedModelError, match="sliding_window_pattern=2 derives per-layer behaviour"):
        r.to_hf()


def test_post_norm_layers_keep_their_norms_and_say_the_config_cannot_express_it():
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_attention_heads=2, num_hidden_layers=3,
                                  intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    model, ids = transformers.BertModel(cfg).eval(), torch.randint(0, 100, (2, 8))
    r = compiler.compile(model, (ids,), depth=0.34, depth_importance="norm")
    d = r.report.depth
    assert len(d["removed"]) == 1 and d["verification"]["passed"]
    gone = d["removed"][0]
    keys = set(r.model.state_dict())
    assert not any(k.startswith(f"{gone}.attention.self.") or k.startswith(f"{gone}.intermediate.") for k in keys)
    assert f"{gone}.output.LayerNorm.weight" in keys  # LN(x + 0) stays on the stream
    assert "runs on the graph module" in d["note"]
    with pytest.raises(UnsupportedModelError, match="post-norm"):
        r.to_hf()


def test_per_layer_types_follow_the_kept_layers(tmp_path):
    cfg = transformers.Gemma2Config(
        vocab_size=100, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_hidden_layers=4,
        intermediate_size=64, max_position_embeddings=64, sliding_window=4,
    )  # fmt: skip
    model, ids = transformers.Gemma2ForCausalLM(cfg).eval(), torch.randint(0, 100, (1, 8))
    r = compiler.compile(model, (ids,), depth=0.25, depth_importance="norm")
    gone = int(r.report.depth["removed"][0].rsplit(".", 1)[1])
    r.save_pretrained(tmp_path)
    reloaded = transformers.Gemma2ForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_types == [t for i, t in enumerate(cfg.layer_types) if i != gone]
    torch.testing.assert_close(_logits(reloaded, ids), _logits(r.model, ids), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("depth", [1.0, -0.1, 1.5, "half", True])
def test_depth_outside_zero_one_is_refused(depth):
    model = torchvision.models.resnet18(weights=None).eval()
    with pytest.raises(InvalidArgumentError, match="depth"):
        compiler.compile(model, (torch.randn(1, 3, 32, 32),), depth=depth)


def test_depth_that_would_empty_a_stage_is_refused():
    model, ids = _llama(2)
    with pytest.raises(InvalidArgumentError, match="stage must keep a block"):
        compiler.compile(model, (ids,), depth=0.75)  # both layers of the one stage


def test_a_model_without_residual_blocks_says_so():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4))
    net(torch.randn(1, 3, 8, 8))
    with pytest.raises(UnsupportedModelError, match="no removable residual block"):
        compiler.compile(net.eval(), (torch.randn(1, 3, 8, 8),), depth=0.5)


# ---------------------------------------------------------------------------------------------- ONNX


def _resnet18_onnx():
    model, x = torchvision.models.resnet18(weights=None).eval(), torch.randn(1, 3, 64, 64)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, opset_version=17, dynamo=False)
    return model, x, onnx.load_from_string(buf.getvalue())


def test_onnx_resnet_blocks_removed_and_verified():
    model, x, proto = _resnet18_onnx()
    r = compiler.compile(proto, depth=0.4)
    d = r.report.depth
    assert [b["name"] for b in d["blocks"]] == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    assert len(d["removed"]) == 2 and d["verification"]["passed"] and d["verification"]["nodes_checked"] > 20
    onnx.checker.check_model(r.model, full_check=True)
    def count(m, op):
        return sum(n.op_type == op for n in m.graph.node)

    assert count(r.model, "Conv") == count(proto, "Conv") - 4 and count(r.model, "Add") == count(proto, "Add") - 2
    left = [n.name for n in r.model.graph.node if any(f"/{b}/" in n.name for b in d["removed"])]
    assert left == [f"/{b.split('.')[0]}/{b}/relu_1/Relu" for b in d["removed"]]  # the block's relu after the add reads the stream
    assert [i.name for i in r.model.graph.input] == [i.name for i in proto.graph.input]
    assert r.model.opset_import == proto.opset_import
    import onnxruntime as ort

    # independent reference: the original with the removed blocks' last conv zeroed (BN is folded into it)
    ref = onnx.ModelProto()
    ref.CopyFrom(proto)
    names = {n.input[1] for n in ref.graph.node if n.op_type == "Conv" and any(f"/{b}/conv2/" in n.name for b in d["removed"])}
    names |= {n.input[2] for n in ref.graph.node if n.op_type == "Conv" and any(f"/{b}/conv2/" in n.name for b in d["removed"])}
    assert len(names) == 4
    for t in ref.graph.initializer:
        if t.name in names:
            t.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(t)), t.name))
    feed = {proto.graph.input[0].name: x.numpy()}
    want = ort.InferenceSession(ref.SerializeToString()).run(None, feed)[0]
    got = ort.InferenceSession(r.model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_onnx_criteria_on_calibration_rank_a_dead_block_last():
    _, _, proto = _resnet18_onnx()
    dead = {n.input[i] for n in proto.graph.node if n.op_type == "Conv" and "/layer3.1/conv2/" in n.name for i in (1, 2)}
    for t in proto.graph.initializer:
        if t.name in dead:
            t.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(t)), t.name))
    name = proto.graph.input[0].name
    cal = [{name: np.random.default_rng(i).standard_normal((1, 3, 64, 64)).astype(np.float32)} for i in range(3)]
    for crit in ("cosine", "loss", "norm"):
        r = compiler.compile(proto, depth=0.2, depth_importance=crit, calibration=cal)
        d = r.report.depth
        assert d["criterion"] == crit and d["removed"] == ["layer3.1"], (crit, d["blocks"])
        assert d["verification"]["passed"]
    r = compiler.compile(proto, depth="auto", target_macs=0.9, calibration=cal, importance="activation")
    assert [t["blocks_removed"] for t in r.report.depth["search"]][0] == 0
    assert r.report.macs_after <= 0.9 * r.report.macs_before * 1.02 and r.report.verification["passed"]


def test_cli_prune_depth(tmp_path, capsys):
    _, _, proto = _resnet18_onnx()
    src, out = tmp_path / "r.onnx", tmp_path / "p.onnx"
    onnx.save(proto, str(src))
    code = cli.main(["prune", str(src), "-o", str(out), "--depth", "0.4"])
    _, err = capsys.readouterr()
    assert code == 0, err
    pruned = onnx.load(str(out))
    assert len(pruned.graph.node) < len(proto.graph.node)
    code = cli.main(["prune", str(src), "-o", str(tmp_path / "q.onnx"), "--depth", "1.2"])
    _, err = capsys.readouterr()
    assert code == 2 and "depth" in err and not (tmp_path / "q.onnx").exists()
