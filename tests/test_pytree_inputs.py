"""Inputs and outputs of any pytree shape on the torch path: lists, dicts, keyword arguments, nested outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import compiler
from frontends.errors import InvalidArgumentError, UnsupportedModelError, VerificationError
from frontends.torch.rewrite import RewriteFX
from frontends.torch.verify import VerifyFX, flat_tensors


class ListNet(nn.Module):
    """A list of images in; a dict with a nested list out (a detection model's shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)
        self.c = nn.Linear(8, 4)

    def forward(self, images):
        outs = [self.b(torch.relu(self.a(im))).mean((2, 3)) for im in images]
        z = torch.cat(outs)
        return {"logits": self.c(z), "feats": [z, outs[0]]}


class KwNet(nn.Module):
    """Keyword arguments (``model(**batch)``), a tuple with a list out."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 32)
        self.l2 = nn.Linear(32, 5)

    def forward(self, input_ids, attention_mask=None):
        y = self.l2(torch.relu(self.l1(input_ids * attention_mask)))
        return y, [y.sum(-1)]


def _images(n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 8, 8, generator=g) for _ in range(n)]


def _batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randn(n, 6, generator=g), "attention_mask": torch.ones(n, 6)}


def test_a_list_of_images_in_and_a_nested_dict_out():
    torch.manual_seed(0)
    m = ListNet().eval()
    x = _images()
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] > 0
    assert r.report.macs_after < r.report.macs_before
    out = r.model(x)  # the structure the model was called with
    assert set(out) == {"logits", "feats"} and isinstance(out["feats"], list)
    assert out["logits"].shape == (4, 4) and out["feats"][1].shape[0] == 2
    assert len(flat_tensors(out)) == 3
    # the backend runner takes the same structure
    assert torch.allclose(r(x)["logits"], out["logits"])
    with pytest.raises(InvalidArgumentError, match="3 leaves"):  # never an image silently dropped
        r.model(_images(3))


def test_keyword_arguments_as_a_dict():
    torch.manual_seed(0)
    m = KwNet().eval()
    b = _batch()
    r = compiler.compile(m, b, ratio=0.5, granularity=1)
    assert r.report.verification["passed"]
    assert r.report.macs_after < r.report.macs_before
    logits, [s] = r.model(**b)
    assert logits.shape == (4, 5) and s.shape == (4,)
    # another batch size runs too (symbolic_trace keeps the batch dim generic)
    assert r.model(**_batch(7, 1))[0].shape == (7, 5)


def test_calibration_batches_of_the_same_structure_with_labels():
    torch.manual_seed(0)
    m = KwNet().eval()
    cal = [{**_batch(8, s), "labels": torch.randint(0, 5, (8,))} for s in range(2)]
    r = compiler.compile(m, _batch(), ratio=0.5, granularity=1, importance="taylor", calibration=cal)
    assert r.report.verification["passed"]
    with pytest.raises(InvalidArgumentError, match="structure differs"):
        compiler.compile(m, _batch(), ratio=0.5, importance="taylor", calibration=[{"input_ids": torch.randn(8, 6)}])
    with pytest.raises(InvalidArgumentError, match="attention_mask"):
        bad = {"input_ids": torch.randn(8, 6), "attention_mask": torch.ones(8, 7)}
        compiler.compile(m, _batch(), ratio=0.5, importance="taylor", calibration=[bad])


def test_calibration_batches_of_a_list_argument():
    torch.manual_seed(0)
    m = ListNet().eval()
    cal = [(_images(2, s),) for s in range(3)]
    r = compiler.compile(m, (_images(),), ratio=0.5, granularity=1, importance="activation", calibration=cal)
    assert r.report.verification["passed"]
    with pytest.raises(InvalidArgumentError, match="structure differs"):
        compiler.compile(m, (_images(),), ratio=0.5, importance="activation", calibration=[(_images(3),)])


def test_model_output_of_transformers_and_keyword_inputs():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    m = transformers.BertModel(cfg).eval()
    b = {"input_ids": torch.randint(0, 50, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    r = compiler.compile(m, b, ratio=0.5)
    assert r.report.verification["passed"]
    out = r.model(**b)
    assert type(out).__name__ == type(m(**b)).__name__  # a ModelOutput again
    assert out.last_hidden_state.shape == (2, 8, 32) and out.pooler_output.shape == (2, 32)


def test_verification_compares_every_output_leaf():
    """A pruned model wrong only in a nested output leaf (``feats[1]``) fails verification."""
    torch.manual_seed(0)
    m = ListNet().eval()
    x = _images()
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    traced, plan = r.traced, r.plan
    flat = RewriteFX().call(traced, plan.analysis, plan.selection.pruned).module
    VerifyFX().call(traced, plan.analysis, plan.selection.pruned, flat, traced.example_inputs)  # passes as built
    out = next(n for n in flat.graph.nodes if n.op == "output")
    leaves = list(out.args[0])
    with flat.graph.inserting_before(out):
        leaves[-1] = flat.graph.call_function(torch.mul, (leaves[-1], 1.001))
    out.args = (tuple(leaves),)
    flat.recompile()
    with pytest.raises(VerificationError):
        VerifyFX().call(traced, plan.analysis, plan.selection.pruned, flat, traced.example_inputs)


def test_a_tuple_of_tensors_keeps_its_graph():
    """The public contract: a tuple of tensors is traced as before (placeholders named by the arguments)."""
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    r = compiler.compile(m, (torch.randn(1, 3, 8, 8),), ratio=0.5, granularity=1)
    assert r.traced.signature is None
    assert r.model(torch.randn(2, 3, 8, 8)).shape == (2, 4, 6, 6)


def test_structured_inputs_without_tensors_or_that_do_not_run():
    with pytest.raises(UnsupportedModelError, match="no tensor"):
        compiler.compile(ListNet(), ([1.0, 2.0],), ratio=0.5)
    with pytest.raises(UnsupportedModelError, match="does not run"):
        compiler.compile(nn.Conv2d(3, 4, 1), ({"x": torch.randn(1, 3, 4, 4)},), ratio=0.5)
    with pytest.raises(InvalidArgumentError):
        compiler.compile(ListNet(), 42, ratio=0.5)
