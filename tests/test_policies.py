"""Selection policies and their knobs: threshold, equalization, normalizer, scope, target_macs,
granularity, min_channels, ignore; the caller's model and the model outputs are left alone."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _checks import assert_close, independent_reference, kept_indices, prune

import compiler


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def set_row_norms(conv: nn.Conv2d, norms: list[float]) -> None:
    """Give output unit i of ``conv`` a fan-in weight of L2 norm ``norms[i]`` (random direction)."""
    with torch.no_grad():
        w = torch.randn_like(conv.weight)
        w /= w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))
        conv.weight.copy_(w * torch.tensor(norms).view(-1, *([1] * (w.dim() - 1))))


def kept_out(orig: nn.Module, result: compiler.CompileResult, name: str) -> list[int]:
    return kept_indices(orig.get_submodule(name).weight, result.model.get_submodule(name).weight, 0)


class Residual(nn.Module):
    """Two convs feeding a residual add: one coupled group {a, b}, plus a consumer."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, c, 3, padding=1)
        self.b = nn.Conv2d(c, c, 3, padding=1)
        self.out = nn.Conv2d(c, 4, 1)

    def forward(self, x):
        h = self.a(x)
        return self.out(F.relu(h + self.b(F.relu(h))))


# ---------------------------------------------------------------------------
# threshold


def test_threshold_removes_exactly_the_dead_channels_of_a_coupled_group():
    m = Residual().eval()
    dead = [1, 4, 5, 11, 14]
    with torch.no_grad():
        for conv in (m.a, m.b):  # every member of the group: both convs feeding the add
            conv.weight[dead] = 0
            conv.bias[dead] = 0
    x = torch.randn(2, 3, 8, 8)
    r = prune(m, x, threshold=1e-6, granularity=1)
    alive = [i for i in range(16) if i not in dead]
    assert kept_out(m, r, "a") == alive and kept_out(m, r, "b") == alive
    assert r.model.out.in_channels == 11
    # the removed channels were exactly zero: the output does not change at all
    with torch.no_grad():
        assert (m(x) - r(x)).abs().max() <= 1e-6
        x64 = x.double()
        assert torch.equal(copy.deepcopy(m).double()(x64), copy.deepcopy(r.model).double()(x64)) or (
            (copy.deepcopy(m).double()(x64) - copy.deepcopy(r.model).double()(x64)).abs().max() < 1e-12
        )
    assert r.report.verification["max_abs_error"] < 1e-12


def test_threshold_keeps_channels_dead_in_only_one_member():
    """A channel zero in `a` but alive in `b` carries information: it stays."""
    m = Residual().eval()
    with torch.no_grad():
        m.a.weight[[2, 3]] = 0
        m.a.bias[[2, 3]] = 0
        m.b.weight[[3, 7]] = 0
        m.b.bias[[3, 7]] = 0
    r = prune(m, torch.randn(2, 3, 8, 8), threshold=1e-6, granularity=1, equalization="intersection")
    # (a's and b's zero rows are not unique: read the kept channels off the consumer's input columns)
    assert kept_indices(m.out.weight, r.model.out.weight, 1) == [i for i in range(16) if i != 3]


def test_threshold_on_a_plain_chain_output_unchanged():
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    with torch.no_grad():
        m[0].weight[[0, 7, 8]] = 0
        m[0].bias[[0, 7, 8]] = 0
        m[2].weight[[3]] = 0
        m[2].bias[[3]] = 0
    x = torch.randn(2, 3, 9, 9)
    r = prune(m, x, threshold=1e-6, granularity=1)
    assert (r.model.get_submodule("0").out_channels, r.model.get_submodule("2").out_channels) == (13, 7)
    with torch.no_grad():
        assert torch.allclose(m(x), r(x), rtol=0, atol=1e-6)


def test_threshold_compares_normalized_scores():
    m = Residual(8).eval()
    set_row_norms(m.a, [1.0, 0.3, 0.5, 0.7, 0.2, 0.9, 0.45, 0.8])
    set_row_norms(m.b, [2.0] * 8)  # normalized: 1.0 everywhere
    r = prune(m, torch.randn(1, 3, 6, 6), threshold=0.7, granularity=1, equalization="arithmetic_mean")
    # arithmetic mean of (a_i, 1): below 0.7 iff a_i < 0.4
    assert kept_out(m, r, "a") == [0, 2, 3, 5, 6, 7]


# ---------------------------------------------------------------------------
# equalization

A_NORMS = [1.0, 0.1, 0.1, 0.6]
B_NORMS = [1.0, 0.1, 0.9, 0.3]
# per-channel combined scores (both layers are already max-normalized):
#   arithmetic_mean [1, .1, .5, .45]   geometric_mean [1, .1, .3, .42]   union (min) [1, .1, .1, .3]
#   intersection / max [1, .1, .9, .6]  sum [2, .2, 1.0, .9]
EXPECTED_KEPT_AT_HALF = {
    "arithmetic_mean": [0, 2],
    "geometric_mean": [0, 3],
    "union": [0, 3],
    "intersection": [0, 2],
    "max": [0, 2],
    "sum": [0, 2],
}


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.out = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.out(F.relu(self.a(x) + self.b(x)))


def pair() -> Pair:
    m = Pair().eval()
    set_row_norms(m.a, A_NORMS)
    set_row_norms(m.b, B_NORMS)
    return m


@pytest.mark.parametrize("equalization", list(EXPECTED_KEPT_AT_HALF))
def test_equalization_ratio(equalization):
    m = pair()
    r = prune(m, torch.randn(1, 3, 4, 4), ratio=0.5, equalization=equalization)
    assert kept_out(m, r, "a") == kept_out(m, r, "b") == EXPECTED_KEPT_AT_HALF[equalization]
    assert r.report.settings["equalization"] == equalization


@pytest.mark.parametrize(
    "equalization, kept",
    [
        ("union", [0, 3]),  # pruned if ANY member is below 0.2: channels 1 (both) and 2 (a only)
        ("intersection", [0, 2, 3]),  # pruned only if ALL members are below 0.2: channel 1
    ],
)
def test_union_and_intersection_threshold(equalization, kept):
    m = pair()
    r = prune(m, torch.randn(1, 3, 4, 4), threshold=0.2, equalization=equalization)
    assert kept_out(m, r, "a") == kept_out(m, r, "b") == kept


def test_group_scores_in_report_follow_equalization():
    for eq, lo_hi in {"union": (0.1, 1.0), "sum": (0.2, 2.0), "geometric_mean": (0.1, 1.0)}.items():
        r = prune(pair(), torch.randn(1, 3, 4, 4), ratio=0.5, equalization=eq)
        (g,) = [g for g in r.report.groups if "a" in g.members]
        assert set(g.members) == {"a", "b"}
        assert g.saliency[0] == pytest.approx(lo_hi[0], rel=1e-5) and g.saliency[2] == pytest.approx(lo_hi[1], rel=1e-5)


# ---------------------------------------------------------------------------
# normalizer, scope


class TwoLayers(nn.Module):
    """Two independent groups (A and B), each consumed by its own conv."""

    def __init__(self) -> None:
        super().__init__()
        self.A, self.B = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.outA, self.outB = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.outA(F.relu(self.A(x))) + self.outB(F.relu(self.B(x)))


def two_layers() -> TwoLayers:
    m = TwoLayers().eval()
    set_row_norms(m.A, [1.0, 3.0, 3.0, 3.0])  # max-normalized [.33, 1, 1, 1]; mean-normalized [.4, 1.2, 1.2, 1.2]
    set_row_norms(m.B, [2.0, 2.0, 2.0, 10.0])  # max-normalized [.2, .2, .2, 1]; mean-normalized [.5, .5, .5, 2.5]
    return m


@pytest.mark.parametrize("normalizer, removed_from", [("max", "B"), ("mean", "A"), ("none", "A")])
def test_normalizer_changes_the_global_ranking(normalizer, removed_from):
    m = two_layers()
    r = prune(m, torch.randn(1, 3, 4, 4), ratio=0.125, scope="global", normalizer=normalizer)
    a, b = r.model.A.out_channels, r.model.B.out_channels
    assert (a, b) == ((4, 3) if removed_from == "B" else (3, 4))
    if removed_from == "A":
        assert kept_out(m, r, "A") == [1, 2, 3]


def test_scope_local_vs_global():
    m = two_layers()
    x = torch.randn(1, 3, 4, 4)
    local = prune(m, x, ratio=0.5, scope="local")
    assert (local.model.A.out_channels, local.model.B.out_channels) == (2, 2)
    glob = prune(m, x, ratio=0.5, scope="global")
    # one ranking over both layers (max-normalized): B's three .2 channels and A's .33 go
    assert (glob.model.A.out_channels, glob.model.B.out_channels) == (3, 1)
    assert kept_out(m, glob, "A") == [1, 2, 3] and kept_out(m, glob, "B") == [3]


# ---------------------------------------------------------------------------
# target_macs


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 48, 3, padding=1)
        self.c3 = nn.Conv2d(48, 32, 3, padding=1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = F.relu(self.c3(x) + x[:, :32])
        return self.fc(x.mean((2, 3)))


def flops(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("scope", ["local", "global"])
@pytest.mark.parametrize("target", [0.5, 0.3])
def test_target_macs_fraction(target, scope):
    m, x = Small().eval(), torch.randn(1, 3, 8, 8)
    r = prune(m, x, target_macs=target, scope=scope, granularity=1)
    rep = r.report
    assert rep.macs_after <= target * rep.macs_before
    # MACs measured independently of prunec's cost model agree
    assert flops(r.model, x) == 2 * rep.macs_after and flops(m, x) == 2 * rep.macs_before
    # the smallest ratio that meets the budget: a slightly smaller one does not
    used = rep.settings["ratio_used"]
    less = prune(m, x, ratio=max(used - 1e-5, 0.0), scope=scope, granularity=1)
    assert less.report.macs_after > target * rep.macs_before


def test_target_macs_absolute():
    m, x = Small().eval(), torch.randn(1, 3, 8, 8)
    base = prune(m, x, ratio=0.0).report.macs_before
    budget = int(0.4 * base)
    r = prune(m, x, target_macs=budget)
    assert r.report.macs_after <= budget < r.report.macs_before


def test_ratio_zero_changes_nothing():
    m, x = Small().eval(), torch.randn(1, 3, 8, 8)
    r = prune(m, x, ratio=0.0)
    assert r.report.macs_after == r.report.macs_before and r.report.params_after == r.report.params_before
    with torch.no_grad():
        assert torch.allclose(m(x), r(x), atol=1e-6)


# ---------------------------------------------------------------------------
# granularity, min_channels


@pytest.mark.parametrize("granularity, kept", [(1, 45), (8, 48), (16, 48), (32, 64)])
def test_granularity_rounds_kept_up(granularity, kept):
    m = nn.Sequential(nn.Conv2d(3, 64, 1), nn.ReLU(), nn.Conv2d(64, 4, 1))
    r = prune(m, torch.randn(1, 3, 4, 4), ratio=0.3, granularity=granularity)  # removes round(19.2) = 19 before rounding
    assert r.model.get_submodule("0").out_channels == kept


def test_granularity_default_is_8_and_rounds_up_everywhere():
    m = Small().eval()
    r = compiler.compile(m, (torch.randn(1, 3, 8, 8),), ratio=0.6)
    # 32 - round(19.2) = 13 -> 16; 48 - round(28.8) = 19 -> 24 (c3's outputs are a slice of c2's group)
    assert r.model.c1.out_channels == 16 and r.model.c2.out_channels == 24


def test_granularity_skips_groups_smaller_than_it():
    m = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1))
    r = prune(m, torch.randn(1, 3, 4, 4), ratio=0.5, granularity=8)
    assert r.model.get_submodule("0").out_channels == 3


def test_granularity_counts_channels_of_wide_classes():
    """Depthwise with channel multiplier 2: one class is 2 channels; kept channels still a multiple of 8."""
    m = nn.Sequential(nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, groups=32), nn.ReLU(), nn.Conv2d(64, 4, 1))
    r = prune(m, torch.randn(1, 3, 5, 5), ratio=0.3, granularity=8)
    dw = r.model.get_submodule("2")
    assert dw.out_channels % 8 == 0 and dw.out_channels >= 0.7 * 64
    assert dw.in_channels == dw.groups == dw.out_channels // 2


@pytest.mark.parametrize("min_channels, kept", [(1, 2), (6, 6), (16, 16)])
def test_min_channels(min_channels, kept):
    m = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 4, 1))
    r = prune(m, torch.randn(1, 3, 4, 4), ratio=0.9, granularity=1, min_channels=min_channels)  # 0.9*16 = 14.4
    assert r.model.get_submodule("0").out_channels == kept


def test_min_channels_with_granularity_rounds_up():
    m = nn.Sequential(nn.Conv2d(3, 32, 1), nn.ReLU(), nn.Conv2d(32, 4, 1))
    r = prune(m, torch.randn(1, 3, 4, 4), ratio=0.95, granularity=8, min_channels=9)
    assert r.model.get_submodule("0").out_channels == 16


# ---------------------------------------------------------------------------
# ignore, the caller's model, outputs


def test_ignore_keeps_a_layer_untouched():
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(1, 3, 9, 9)
    r = prune(m, x, ratio=0.5, ignore=["0"])
    c0, c2 = r.model.get_submodule("0"), r.model.get_submodule("2")
    assert c0.out_channels == 16 and torch.equal(c0.weight, m[0].weight) and torch.equal(c0.bias, m[0].bias)
    assert c2.in_channels == 16 and c2.out_channels == 8  # the others are still pruned
    (g,) = [g for g in r.report.groups if "0" in g.members]
    assert g.frozen and any("ignore" in reason for reason in g.reasons)
    assert r.report.settings["ignore"] == ["0"]


def test_ignore_accepts_one_name_as_a_string():
    m = nn.Sequential()
    m.add_module("conv1", nn.Conv2d(3, 16, 3))
    m.add_module("act", nn.ReLU())
    m.add_module("conv2", nn.Conv2d(16, 16, 3))
    m.add_module("act2", nn.ReLU())
    m.add_module("conv3", nn.Conv2d(16, 16, 1))
    m.add_module("act3", nn.ReLU())
    m.add_module("head", nn.Conv2d(16, 4, 1))
    x = torch.randn(1, 3, 9, 9)
    r = prune(m, x, ratio=0.5, ignore="conv2")
    # conv2 is untouched on both sides: its inputs (conv1's channels) and its outputs stay
    assert (r.model.conv1.out_channels, r.model.conv2.in_channels, r.model.conv2.out_channels) == (16, 16, 16)
    assert r.model.conv3.out_channels == 8
    assert r.report.settings["ignore"] == ["conv2"]


def test_ignore_with_an_unknown_name_is_refused_with_near_matches():
    """ignore=["layer9"] used to be accepted silently (it protected nothing)."""
    m = nn.Sequential()
    m.add_module("conv1", nn.Conv2d(3, 16, 3))
    m.add_module("act", nn.ReLU())
    m.add_module("conv2", nn.Conv2d(16, 4, 1))
    x = torch.randn(1, 3, 9, 9)
    with pytest.raises(compiler.InvalidArgumentError, match=r"ignore='conv3' names no layer.*did you mean 'conv2', 'conv1'"):
        prune(m, x, ratio=0.5, ignore=["conv3"])
    with pytest.raises(compiler.InvalidArgumentError, match=r"ignore='zzz' names no layer of the model[^;]*$"):
        prune(m, x, ratio=0.5, ignore="zzz")


def test_ignore_a_member_freezes_its_whole_group():
    m = Residual().eval()
    r = prune(m, torch.randn(1, 3, 6, 6), ratio=0.5, ignore=["b"])
    assert r.model.a.out_channels == r.model.b.out_channels == 16
    assert r.model.b.in_channels == 16


def test_compile_does_not_modify_the_callers_model():
    m = Small()
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    for kw in ({"ratio": 0.5}, {"threshold": 0.5}, {"target_macs": 0.3}, {"ratio": 0.7, "scope": "global"}):
        r = compiler.compile(m, (x,), **kw)
        assert r.model is not m and r.model.c1.weight.data_ptr() != m.c1.weight.data_ptr()
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.training and m.c1.out_channels == 32 and m.c1.weight.shape == (32, 3, 3, 3)
    assert sum(p.numel() for p in m.parameters()) == sum(v.numel() for k, v in before.items())


class MultiOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 24, 3, padding=1)
        self.cls = nn.Linear(24, 10)
        self.feat = nn.Conv2d(24, 12, 1)

    def forward(self, x):
        h = F.relu(self.c2(F.relu(self.c1(x))))
        return {"logits": self.cls(h.mean((2, 3))), "features": self.feat(h)}


@pytest.mark.parametrize(
    "kw", [{"ratio": 0.9}, {"threshold": 10.0}, {"target_macs": 0.05}, {"ratio": 0.9, "scope": "global"}], ids=str
)
def test_model_outputs_are_never_pruned(kw):
    m = MultiOut().eval()
    x = torch.randn(2, 3, 6, 6)
    r = prune(m, x, granularity=1, **kw)
    assert r.model.cls.out_features == 10 and r.model.feat.out_channels == 12
    assert r.model.c1.out_channels < 16 and r.model.c2.out_channels < 24  # but everything else was pruned
    out = r(x)
    assert out["logits"].shape == (2, 10) and out["features"].shape == (2, 12, 6, 6)
    with torch.no_grad():
        ref = independent_reference(m, r.model)
        assert_close(ref(x.double()), copy.deepcopy(r.model).double()(x.double()))


def test_everything_prunable_is_pruned_at_high_threshold_but_never_to_zero():
    m = MultiOut().eval()
    r = prune(m, torch.randn(2, 3, 6, 6), threshold=10.0, granularity=1)
    assert r.model.c1.out_channels == 1 and r.model.c2.out_channels == 1


# ---------------------------------------------------------------------------
# the selection passes themselves: settings never change, cost-driven selection


def _small_scored():
    from passes.saliency import Saliency

    a = compiler.compile(Small().eval(), (torch.randn(1, 3, 8, 8),), ratio=0.0, verify=False).plan.analysis
    return a, Saliency("l2").call(a).scores


def test_selection_settings_are_frozen():
    import dataclasses

    from passes.selection import CostSelection, Selection

    a, scores = _small_scored()
    sel = Selection(ratio=0.5, scope="local", granularity=1)
    before = dataclasses.asdict(sel)
    sel.call(a, scores)
    CostSelection(granularity=1).call(a, scores, lambda p: float(p.sum()), 3.0)
    assert dataclasses.asdict(sel) == before
    with pytest.raises(dataclasses.FrozenInstanceError):
        sel.scope = "global"  # type: ignore[misc]


def test_cost_selection_meets_the_target_with_the_global_plan_of_its_ratio():
    from passes.cost import graph_macs
    from passes.selection import CostSelection, Selection

    a, scores = _small_scored()
    macs = lambda p: graph_macs(a.graph, lambda v: a.pruned_shape(v, p))  # noqa: E731
    target = 0.5 * graph_macs(a.graph)
    r = CostSelection(granularity=1).call(a, scores, macs, target)
    assert macs(r.pruned) <= target < graph_macs(a.graph) and r.planned_macs == macs(r.pruned)
    assert r.ratio is not None and 0.0 < r.ratio < 1.0
    same = Selection(ratio=r.ratio, scope="global", granularity=1).call(a, scores)
    assert (same.pruned == r.pruned).all()
    # a target met without pruning prunes nothing; an unreachable one prunes the most it can
    assert not CostSelection(granularity=1).call(a, scores, macs, 2.0 * target).pruned.any()
    most = CostSelection(granularity=1).call(a, scores, macs, 1.0)
    assert most.pruned.any() and macs(most.pruned) > 1.0
