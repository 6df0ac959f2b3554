"""The criteria registry (passes.importance): every criterion once, honest needs, what an adapter can
serve, the one-line refusal, and the statistics reducer the Saliency pass applies to raw scores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import compiler
from frontends.adapter import CAPABILITIES
from frontends.errors import UnsupportedModelError
from frontends.onnx.adapter import OnnxAdapter
from frontends.torch.adapter import TorchAdapter
from passes.channel_analysis import AnalysisResult
from passes.importance import CRITERIA, LEVELS, Criterion, register_criterion, require, servable
from passes.saliency import Saliency

# DESIGN.md, "Saliency (importance) criteria": the names ``importance=`` accepts, in this order
DESIGN_CRITERIA = [
    "l1", "l2", "obd", "obs", "taylor", "taylor2", "mrs", "mrp", "activation", "n2ps", "synflow", "bn_scale", "random",
]  # fmt: skip
WEIGHT_CRITERIA = ["l1", "l2", "bn_scale", "random"]


def test_every_design_criterion_is_registered_once_in_order():
    assert list(CRITERIA) == DESIGN_CRITERIA
    for name, c in CRITERIA.items():
        assert c.name == name
        assert c.level in LEVELS
        assert c.needs and c.needs <= CAPABILITIES.keys(), name
        assert c.doc.strip() and "\n" not in c.doc, name
    with pytest.raises(ValueError, match="already registered"):
        register_criterion(CRITERIA["l2"])
    assert list(CRITERIA) == DESIGN_CRITERIA


def test_needs_are_what_the_computations_use():
    weights_only = [n for n, c in CRITERIA.items() if c.needs == {"weights"}]
    assert weights_only == WEIGHT_CRITERIA
    assert [n for n, c in CRITERIA.items() if c.runs_model] == [n for n in DESIGN_CRITERIA if n not in WEIGHT_CRITERIA]
    assert [n for n, c in CRITERIA.items() if "hvp" in c.needs] == ["obd", "taylor2"]
    assert [n for n, c in CRITERIA.items() if "activations" in c.needs] == ["obs", "mrs", "mrp", "activation", "n2ps"]
    assert [n for n, c in CRITERIA.items() if "gradients" in c.needs] == ["obd", "taylor", "taylor2", "mrs", "synflow"]
    assert not any("labels" in c.needs for c in CRITERIA.values())  # without labels: the output change
    assert [n for n, c in CRITERIA.items() if c.level == "unit"] == ["l1", "l2", "obd", "synflow", "random"]
    assert CRITERIA["bn_scale"].fallback == "l2"


def test_servable():
    assert servable(frozenset({"weights"})) == WEIGHT_CRITERIA
    assert servable(OnnxAdapter.capabilities) == ["l1", "l2", "obs", "mrp", "activation", "n2ps", "bn_scale", "random"]
    assert servable(TorchAdapter.capabilities) == DESIGN_CRITERIA
    assert servable(frozenset()) == []
    assert servable(frozenset({"weights", "activations"})) == ["l1", "l2", "obs", "mrp", "activation", "n2ps", "bn_scale", "random"]


def test_require_refuses_in_one_line_naming_what_is_missing_and_what_can_run():
    with pytest.raises(UnsupportedModelError) as info:
        require("obs", frozenset({"weights"}), "onnx")
    assert str(info.value) == (
        "importance='obs' needs activations, which the onnx adapter cannot supply; "
        "criteria for onnx models: l1, l2, bn_scale, random"
    )
    with pytest.raises(UnsupportedModelError) as info:
        require("taylor", OnnxAdapter.capabilities, "onnx")
    assert str(info.value) == (
        "importance='taylor' needs gradients, which the onnx adapter cannot supply; "
        "criteria for onnx models: l1, l2, obs, mrp, activation, n2ps, bn_scale, random"
    )
    with pytest.raises(UnsupportedModelError) as info:
        require("taylor2", frozenset({"weights", "activations"}), "tflite")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("importance='taylor2' needs gradients and hvp, which the tflite adapter")
    assert require("bn_scale", OnnxAdapter.capabilities, "onnx") is CRITERIA["bn_scale"]
    assert require("taylor2", TorchAdapter.capabilities, "torch") is CRITERIA["taylor2"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"needs": frozenset()}, "needs"),
        ({"needs": frozenset({"weights", "telepathy"})}, "needs"),
        ({"level": "layer"}, "level"),
        ({"doc": "two\nlines"}, "one line"),
        ({"doc": ""}, "one line"),
        ({"fallback": "taylor"}, "fallback"),
        ({"fallback": "nonexistent"}, "fallback"),
    ],
    ids=str,
)
def test_register_criterion_refuses_a_bad_record(change, match):
    bad = dataclasses.replace(CRITERIA["l2"], name="l2_variant", **change)
    with pytest.raises(ValueError, match=match):
        register_criterion(bad)
    assert "l2_variant" not in CRITERIA


def test_a_registered_criterion_is_selectable():
    c = Criterion("ones", "class", frozenset({"weights"}), "every channel scores 1", lambda x: np.ones(x.analysis.n_classes))
    register_criterion(c)
    try:
        assert servable(frozenset({"weights"}))[-1] == "ones"
        a = _analysis()
        s = Saliency("ones").call(a).scores
        grouped = np.concatenate([g.classes for g in a.groups])
        assert np.all(s[grouped] == 1.0)
    finally:
        del CRITERIA["ones"]


# ---------------------------------------------------------------------------
# the Saliency pass: dispatch and the statistics reducer


def _analysis() -> AnalysisResult:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    return compiler.compile(m, (torch.randn(2, 6),), ratio=0.0, verify=False).plan.analysis


class FakeData:
    """An adapter data object with fixed, distinct raw statistics (no model runs)."""

    def __init__(self, a: AnalysisResult) -> None:
        self.a = a

    def activation(self) -> np.ndarray:
        return np.linspace(0.5, 3.0, self.a.n_classes)

    def obd(self) -> dict[int, np.ndarray]:
        return {i: np.linspace(0.1, 1.0, len(p.atoms)) * (i + 1) for i, p in enumerate(self.a.producers)}


class Counting:
    """A reducer that doubles what it is given and records the order of its calls."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(np.array(x, copy=True))
        return 2.0 * x


def _grouped(a: AnalysisResult) -> np.ndarray:
    return np.concatenate([g.classes for g in a.groups])


def test_reducer_doubles_raw_class_statistics_before_normalization():
    a = _analysis()
    data, reducer = FakeData(a), Counting()
    plain = Saliency("activation", normalizer="none").call(a, data).scores
    reduced = Saliency("activation", normalizer="none", reduce=reducer).call(a, data).scores
    assert len(reducer.calls) == 1 and np.array_equal(reducer.calls[0], data.activation())
    cls = _grouped(a)
    assert cls.size and np.all(plain[cls] > 0)
    assert np.array_equal(reduced[cls], 2.0 * plain[cls])
    # normalized per group, the doubling cancels: the reducer acts on raw statistics, before normalization
    normalized = Saliency("activation", normalizer="max", reduce=Counting()).call(a, data).scores
    assert np.allclose(normalized[cls], Saliency("activation", normalizer="max").call(a, data).scores[cls])


def test_reducer_doubles_raw_unit_statistics_in_producer_order():
    a = _analysis()
    data, reducer = FakeData(a), Counting()
    plain = Saliency("obd", normalizer="none").call(a, data)
    reduced = Saliency("obd", normalizer="none", reduce=reducer).call(a, data)
    raw = data.obd()
    assert len(reducer.calls) == len(raw) == len(a.producers)
    assert all(np.array_equal(got, raw[i]) for got, i in zip(reducer.calls, sorted(raw), strict=True))
    assert reduced.unit_scores.keys() == plain.unit_scores.keys()
    for op, s in plain.unit_scores.items():
        assert np.array_equal(reduced.unit_scores[op], 2.0 * s)
    cls = _grouped(a)
    assert np.allclose(reduced.scores[cls], 2.0 * plain.scores[cls], rtol=1e-15)


@pytest.mark.parametrize("importance", WEIGHT_CRITERIA)
def test_weight_criteria_need_no_data_and_are_not_reduced(importance):
    a = _analysis()
    reducer = Counting()
    s = Saliency(importance, reduce=reducer).call(a, None).scores
    assert not reducer.calls  # the same on every rank: nothing to reduce
    assert not np.isnan(s[_grouped(a)]).any()


def test_a_data_criterion_without_data_is_refused():
    with pytest.raises(ValueError, match="needs the model"):
        Saliency("activation").call(_analysis(), None)


def test_bn_scale_runs_on_an_onnx_model():
    """bn_scale reads the norm layers' scales from the channel graph: ONNX models can use it."""
    from _onnx_helpers import build, consts, prune_onnx

    gamma = np.array([5, 1, 7, 2, 8, 3, 6, 4], dtype=np.float32)
    m = build(
        """
        agraph (float[1, 3, 6, 6] x) => (float[1, 2, 4, 4] y) {
          a = Conv(x, w1, b1)
          r = Relu(a)
          n = BatchNormalization<epsilon=1e-3>(r, s, bb, mean, var)
          y = Conv(n, w2)
        }
        """,
        {"w1": (8, 3, 3, 3), "b1": (8,), "s": gamma, "bb": (8,), "mean": (8,), "var": np.full(8, 2.0, np.float32),
         "w2": (2, 8, 1, 1)},
    )  # fmt: skip
    r = prune_onnx(m, importance="bn_scale", ratio=0.5)
    assert sorted(consts(r.model)["s"].tolist()) == [5.0, 6.0, 7.0, 8.0]
