"""``allocation="sensitivity"`` (issue 18, point 2): a global budget spread over the groups by measured damage.

Nets where one group is sensitive by construction must keep more of it; the budget (MACs or channels) is met;
the probes' batching gives what one plan per forward gives; bad input is one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import compiler
from frontends.errors import InvalidArgumentError


class TwoPaths(nn.Module):
    """Two equal branches summed: ``a`` reaches the output 30x louder than ``b``, so removing its channels does far
    more damage; layer-normalized weight norms (``l2``) cannot tell them apart."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2 = nn.Linear(16, 64), nn.Linear(64, 8)
        self.b1, self.b2 = nn.Linear(16, 64), nn.Linear(64, 8)
        with torch.no_grad():
            self.b2.weight.copy_(self.a2.weight / 30.0)
            self.b1.weight.copy_(self.a1.weight)
            self.b1.bias.copy_(self.a1.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a2(torch.relu(self.a1(x))) + self.b2(torch.relu(self.b1(x)))


def _groups(result: compiler.CompileResult) -> dict[str, dict]:
    return {g["producers"][0]: g for g in result.report.settings["sensitivity"]["groups"]}


@pytest.fixture(scope="module")
def two_paths():
    torch.manual_seed(0)
    m = TwoPaths().eval()
    cal = [torch.randn(32, 16) for _ in range(2)]
    return m, cal, torch.randn(256, 16)


def _error(model: nn.Module, ref: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        want = ref(x)
        return float(((model(x) - want) ** 2).sum() / (want**2).sum())


def test_the_sensitive_branch_keeps_more_and_the_macs_budget_is_met(two_paths):
    m, cal, held_out = two_paths
    before = {k: v.clone() for k, v in m.state_dict().items()}
    lines: list[str] = []
    r = compiler.compile(m, (cal[0][:2],), target_macs=0.5, allocation="sensitivity", importance="l2", calibration=cal,
                         granularity=1, progress=lines.append)  # fmt: skip
    u = compiler.compile(m, (cal[0][:2],), target_macs=0.5, importance="l2", calibration=cal, granularity=1)
    g = _groups(r)
    assert g["a1"]["ratio"] < g["b1"]["ratio"]
    assert g["a1"]["sensitivity"]["0.5"] > 10 * g["b1"]["sensitivity"]["0.5"]  # measured, per group
    assert r.report.macs_after <= 0.5 * r.report.macs_before
    assert r.report.settings["sensitivity"]["cost"] == r.report.macs_after
    assert r.report.verification["passed"]
    assert _error(r.model, m, held_out) < 0.5 * _error(u.model, m, held_out)  # held out: better than uniform
    assert any(line.startswith("sensitivity:") for line in lines)  # progress on the probes
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())  # the input model is untouched


def test_a_ratio_budget_removes_at_least_the_channels_the_uniform_ratio_removes(two_paths):
    m, cal, _ = two_paths
    r = compiler.compile(m, (cal[0][:2],), ratio=0.5, allocation="sensitivity", importance="l2", calibration=cal, granularity=1)
    u = compiler.compile(m, (cal[0][:2],), ratio=0.5, importance="l2", calibration=cal, granularity=1)
    kept = lambda res: sum(gr.channels_after for gr in res.report.groups if gr.frozen_channels < gr.channels_before)  # noqa: E731
    assert kept(r) <= kept(u)
    g = _groups(r)
    assert g["a1"]["ratio"] < 0.5 < g["b1"]["ratio"]


class ConvBranches(nn.Module):
    """A CNN classifier with two parallel conv branches of equal cost: branch ``a`` drives the logits (its head is
    50x louder than ``b``'s), so its group is the sensitive one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.b = nn.Conv2d(3, 32, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.ha, self.hb = nn.Linear(32, 5), nn.Linear(32, 5)
        with torch.no_grad():
            self.b.weight.copy_(self.a.weight)
            self.b.bias.copy_(self.a.bias)
            self.ha.weight.mul_(20.0)
            self.hb.weight.copy_(self.ha.weight / 50.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ya = self.pool(torch.relu(self.a(x))).flatten(1)
        yb = self.pool(torch.relu(self.b(x))).flatten(1)
        return self.ha(ya) + self.hb(yb)


def test_cnn_with_labels_measures_the_loss_and_meets_the_budget():
    torch.manual_seed(0)
    m = ConvBranches().eval()
    x = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        y = m(x).argmax(1)  # labels the model gets right, confidently: removing what drives them raises the loss
    cal = [(x[:32], y[:32]), (x[32:], y[32:])]
    r = compiler.compile(m, (x[:2],), target_macs=0.6, allocation="sensitivity", importance="l2", calibration=cal, granularity=1)
    s = r.report.settings["sensitivity"]
    assert s["measure"] == "task loss increase per sample"
    assert r.report.macs_after <= 0.6 * r.report.macs_before and r.report.verification["passed"]
    g = _groups(r)
    assert g["a"]["sensitivity"]["0.5"] > 10 * max(g["b"]["sensitivity"]["0.5"], 1e-6)
    assert g["a"]["ratio"] < g["b"]["ratio"]


def test_batched_probes_equal_one_plan_per_forward(two_paths):
    """k plans in one forward on the repeated batch (per-sample gates) measure what k forwards measure."""
    from frontends.torch.criteria import DataCriteria
    from frontends.torch.sensitivity import probe_damage
    from passes.channel_analysis import ChannelAnalysis

    m, cal, _ = two_paths
    adapter_cls = __import__("frontends.torch.adapter", fromlist=["TorchAdapter"]).TorchAdapter
    ad = adapter_cls(m, (cal[0][:2],), calibration=cal)
    ad.load(lambda name, fn, *a, **k: fn(*a, **k))
    analysis = ChannelAnalysis().call(ad.graph)
    data = DataCriteria(ad.traced, analysis, ad.data)
    rng = np.random.default_rng(0)
    masks = [rng.random(analysis.n_classes) < p for p in (0.1, 0.3, 0.5, 0.7, 0.9)]
    batched, _ = probe_damage(data.gm, data.cons, data.C, data.data.batches, None, masks, max_rows=512)
    single, _ = probe_damage(data.gm, data.cons, data.C, data.data.batches, None, masks, max_rows=1)
    np.testing.assert_allclose(batched, single, rtol=1e-5)
    assert len(set(np.round(batched, 6))) == len(masks)  # the plans differ, so do their damages


def test_bert_heads_and_ffn_get_their_own_ratios():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=32, hidden_size=64, num_attention_heads=4,
                                  num_hidden_layers=2, intermediate_size=128)  # fmt: skip
    torch.manual_seed(0)
    m = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (16, 8))
    cal = [(ids[:8], torch.ones(8, 8, dtype=torch.long)), (ids[8:], torch.ones(8, 8, dtype=torch.long))]
    r = compiler.compile(m, (ids[:2], torch.ones(2, 8, dtype=torch.long)), target_macs=0.7, allocation="sensitivity",
                         calibration=cal, importance="taylor", attention="heads")  # fmt: skip
    s = r.report.settings["sensitivity"]
    heads = [g for g in s["groups"] if len(g["producers"]) == 3]  # query, key, value of one layer: its heads
    ffn = [g for g in s["groups"] if g["channels"] == 128]  # one layer's intermediate neurons
    assert len(heads) == 2 and len(ffn) == 2  # both layers' heads and FFN neurons are probed
    assert all(g["sensitivity"] for g in s["groups"])
    assert r.report.macs_after <= 0.7 * r.report.macs_before and r.report.verification["passed"]
    assert len({g["ratio"] for g in s["groups"]}) > 1  # not one ratio everywhere


def test_bad_input_is_one_line(two_paths):
    m, cal, _ = two_paths
    ex = (cal[0][:2],)
    with pytest.raises(InvalidArgumentError, match="calibration"):
        compiler.compile(m, ex, target_macs=0.5, allocation="sensitivity")
    with pytest.raises(InvalidArgumentError, match="ratio= or target_macs="):
        compiler.compile(m, ex, threshold=0.5, allocation="sensitivity", calibration=cal)
    with pytest.raises(InvalidArgumentError, match="scope"):
        compiler.compile(m, ex, ratio=0.5, scope="global", allocation="sensitivity", calibration=cal)
    with pytest.raises(InvalidArgumentError, match="allocation must be"):
        compiler.compile(m, ex, ratio=0.5, allocation="sensitive", calibration=cal)


def test_hf_compatible_true_is_refused():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=32, hidden_size=32, num_attention_heads=2,
                                  num_hidden_layers=1, intermediate_size=64)  # fmt: skip
    m = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 100, (4, 8))
    with pytest.raises(InvalidArgumentError, match="hf_compatible=True"):
        compiler.compile(m, (ids,), ratio=0.5, allocation="sensitivity", calibration=[ids], hf_compatible=True)


def test_onnx_probes_in_onnx_runtime(tmp_path, two_paths):
    onnx = pytest.importorskip("onnx")
    m, cal, held_out = two_paths
    path = tmp_path / "two.onnx"
    torch.onnx.export(m, (cal[0][:2],), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    batches = [{"x": c.numpy()} for c in cal]
    r = compiler.compile(str(path), (cal[0][:2].numpy(),), target_macs=0.5, allocation="sensitivity", calibration=batches,
                         importance="l2", granularity=1)  # fmt: skip
    assert isinstance(r.model, onnx.ModelProto) and r.report.verification["passed"]
    assert r.report.macs_after <= 0.5 * r.report.macs_before
    s = r.report.settings["sensitivity"]
    assert s["measure"] == "relative squared error of the outputs"
    a, b = sorted(s["groups"], key=lambda g: -g["sensitivity"]["0.5"])[:2]  # the loud branch first
    assert a["sensitivity"]["0.5"] > 10 * b["sensitivity"]["0.5"] and a["ratio"] < b["ratio"]
    t = compiler.compile(m, (cal[0][:2],), target_macs=0.5, allocation="sensitivity", importance="l2", calibration=cal, granularity=1)
    torch_groups = sorted(t.report.settings["sensitivity"]["groups"], key=lambda g: -g["sensitivity"]["0.5"])[:2]
    for og, tg in zip((a, b), torch_groups, strict=True):  # ONNX Runtime measures what torch measures
        assert og["ratio"] == tg["ratio"]
        np.testing.assert_allclose(list(og["sensitivity"].values()), list(tg["sensitivity"].values()), rtol=1e-3)


def test_a_group_no_probe_can_measure_is_not_pruned(two_paths):
    """A plan whose channels no gated layer reads has no measured damage (NaN): its group stays whole, and says so."""
    from frontends.torch.adapter import TorchAdapter
    from passes.allocation import SensitivityAllocation
    from passes.channel_analysis import ChannelAnalysis

    m, cal, _ = two_paths
    ad = TorchAdapter(m, (cal[0][:2],), calibration=cal)
    ad.load(lambda name, fn, *a, **k: fn(*a, **k))
    analysis = ChannelAnalysis().call(ad.graph)
    by_name = {g.producers[0]: g for g in analysis.groups if g.prunable}
    a, b = by_name["a1"], by_name["b1"]

    class Probe:
        unseen = np.nan  # what a plan of b measures: NaN (no gated reader), or exactly 0 (gates that do not reach it)

        def damage(self, masks, progress=None, mean_replacement=False):
            return np.array([self.unseen if mask[b.classes].any() else float(mask[a.classes].sum()) for mask in masks]), "fake"

    width = lambda p: float(sum(g.widths[~g.frozen & ~p[g.classes]].sum() for g in (a, b)))  # noqa: E731
    res = SensitivityAllocation(granularity=1).call(analysis, np.ones(analysis.n_classes), Probe(), width, 100.0, "channels")
    ratios = {g.producers[0]: g.ratio for g in res.groups}
    assert ratios["b1"] == 0.0 and ratios["a1"] > 0.0 and res.cost <= 100.0
    assert any("not pruned" in n for n in res.notes)
    assert all(v is None for v in res.to_dict()["groups"][[g.producers[0] for g in res.groups].index("b1")]["sensitivity"].values())
    Probe.unseen = 0.0
    res = SensitivityAllocation(granularity=1).call(analysis, np.ones(analysis.n_classes), Probe(), width, 100.0, "channels")
    assert {g.producers[0]: g.ratio for g in res.groups}["b1"] == 0.0 and any("no change" in n for n in res.notes)


def _bert_one_layer():
    """A one-layer BERT (sdpa attention) whose queries are scaled up so that the softmax is peaked: the query/key
    head-dim channels matter. Its groups by node name: ``linear``/``linear_1`` query and key, ``linear_2`` value,
    ``linear_4`` the FFN neurons."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, max_position_embeddings=32, hidden_size=64, num_attention_heads=4,
                                  num_hidden_layers=1, intermediate_size=128, attn_implementation="sdpa")  # fmt: skip
    torch.manual_seed(0)
    m = transformers.BertModel(cfg).eval()
    with torch.no_grad():
        m.encoder.layer[0].attention.self.query.weight.mul_(4.0)
    ids = torch.randint(0, 100, (16, 8))
    one = torch.ones(8, 8, dtype=torch.long)
    return m, [(ids[:8], one), (ids[8:], one)], (ids[:2], one[:2])


def test_query_key_groups_are_measured_through_the_attention_product():
    """No layer with weights reads the query/key head dim (only the attention product does): the probes gate q and
    k at the attention op, and the damage they measure is the real pruned model's error."""
    m, cal, ex = _bert_one_layer()
    r = compiler.compile(m, ex, ratio=0.5, importance="activation", calibration=cal, hf_compatible=False,
                         ignore=["linear_2", "linear_4"])  # fmt: skip  only the query/key group is pruned
    assert [g.members for g in r.report.groups if g.channels_after < g.channels_before] == [["linear", "linear_1"]]
    data, pruned = r.plan.data, r.plan.selection.pruned
    (probed,), _ = data.damage([pruned])
    num = den = 0.0
    with torch.no_grad():
        for x, mask in cal:
            want = m(x, mask).last_hidden_state.double()
            got = r.model(x, mask)
            got = (got.last_hidden_state if hasattr(got, "last_hidden_state") else got[0]).double()
            num += float(((got - want) ** 2).sum())
            den += float((want**2).sum())
    assert np.isfinite(probed) and probed > 0
    np.testing.assert_allclose(probed, num / den, rtol=1e-2)
    # the attention gates follow the per-sample rows of batched probes
    from frontends.torch.sensitivity import attention_reads, probe_damage

    reads = attention_reads(data.analysis)
    assert sorted(c.arg for c in reads) == [0, 1]
    rng = np.random.default_rng(0)
    masks = [pruned, *(rng.random(data.C) < p for p in (0.2, 0.5))]
    args = (data.gm, data.cons, data.C, data.data.batches, None, masks)
    np.testing.assert_allclose(probe_damage(*args, attention=reads)[0], probe_damage(*args, max_rows=1, attention=reads)[0], rtol=1e-5)


def test_sensitivity_on_bert_probes_every_group_and_the_guard_keeps_unmeasured_ones(monkeypatch):
    """With the attention gates every group of the BERT layer is measured (no note); without them (the gates
    removed here) the query/key group is unmeasurable and the guard keeps it whole instead of pruning it blind."""
    import frontends.torch.sensitivity as sensitivity

    m, cal, ex = _bert_one_layer()
    kw = dict(target_macs=0.7, allocation="sensitivity", importance="l2", calibration=cal, hf_compatible=False)
    s = compiler.compile(m, ex, **kw).report.settings["sensitivity"]
    qk = next(g for g in s["groups"] if g["producers"] == ["linear", "linear_1"])
    assert all(d is not None and d > 0 for d in qk["sensitivity"].values()) and "notes" not in s
    monkeypatch.setattr(sensitivity, "attention_reads", lambda analysis: [])
    r = compiler.compile(m, ex, **kw)
    s = r.report.settings["sensitivity"]
    qk = next(g for g in s["groups"] if g["producers"] == ["linear", "linear_1"])
    assert qk["ratio"] == 0.0 and all(d is None for d in qk["sensitivity"].values())
    assert any("not pruned" in n for n in s["notes"]) and r.report.macs_after <= 0.7 * r.report.macs_before


def test_probes_with_the_compiles_weight_updates_measure_the_compensated_model(two_paths):
    """Where the compile compensates, a probe is measured with the weight updates the compile makes for its plan:
    its damage is the compiled (pruned and re-fitted) model's error, below the damage without the updates."""
    from compiler.options import Options
    from compiler.pipeline import Plan, Steps, weight_updates
    from passes.selection import SelectionResult

    m, cal, _ = two_paths
    r = compiler.compile(m, (cal[0][:2],), ratio=0.5, importance="obs", calibration=cal, granularity=1, ignore=["b1"])
    assert r.report.settings["compensation"]["applied"] > 0  # the re-fit was taken
    p, opts = r.plan, Options(ratio=0.5, importance="obs", granularity=1)
    updates = lambda mask: weight_updates(Plan(p.analysis, p.saliency, SelectionResult(mask, None, 0), p.data), opts, Steps())[0]  # noqa: E731
    report = p.data.compensation_report
    (with_updates,), measure = p.data.damage([p.selection.pruned], updates=updates)
    (plain,), _ = p.data.damage([p.selection.pruned])
    assert measure.endswith("with the compile's weight updates") and p.data.compensation_report is report
    with torch.no_grad():
        x = torch.cat(cal)
        real = float(((r.model(x) - m(x)) ** 2).sum() / (m(x) ** 2).sum())
    np.testing.assert_allclose(with_updates, real, rtol=1e-4)
    assert with_updates < 0.9 * plain
    # the model the probes ran on is put back: a probe without updates measures what it measured before
    np.testing.assert_allclose(p.data.damage([p.selection.pruned])[0][0], plain, rtol=1e-12)


def test_sensitivity_with_compensation_probes_with_updates(two_paths):
    m, cal, _ = two_paths
    r = compiler.compile(m, (cal[0][:2],), target_macs=0.5, allocation="sensitivity", importance="obs", calibration=cal, granularity=1)
    s = r.report.settings["sensitivity"]
    assert s["measure"] == "relative squared error of the outputs, with the compile's weight updates"
    assert r.report.verification["passed"] and r.report.macs_after <= 0.5 * r.report.macs_before
    plain = compiler.compile(m, (cal[0][:2],), target_macs=0.5, allocation="sensitivity", importance="l2", calibration=cal, granularity=1)
    assert plain.report.settings["sensitivity"]["measure"] == "relative squared error of the outputs"


def test_onnx_probes_say_they_do_not_see_the_weight_updates(tmp_path, two_paths):
    pytest.importorskip("onnx")
    m, cal, _ = two_paths
    path = tmp_path / "two.onnx"
    torch.onnx.export(m, (cal[0][:2],), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    r = compiler.compile(str(path), (cal[0][:2].numpy(),), target_macs=0.5, allocation="sensitivity", importance="obs",
                         calibration=[{"x": c.numpy()} for c in cal], granularity=1)  # fmt: skip
    assert r.report.settings["sensitivity"]["measure"] == "relative squared error of the outputs, without the compile's weight updates"
    assert r.report.verification["passed"]
