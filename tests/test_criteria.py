"""Saliency criteria against brute force, bias propagation, OBS compensation, dead units."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import spearmanr

import compiler
from compiler.workflows.sparsify import sparsify
from frontends.torch import load_torch
from frontends.torch.calibration import CalibrationData, GatedRunner
from frontends.torch.criteria import DataCriteria
from passes.channel_analysis import ChannelAnalysis
from passes.importance import CRITERIA
from passes.saliency import Saliency


@pytest.fixture(scope="module")
def trained_mlp():
    torch.manual_seed(0)
    X = torch.randn(600, 8)
    y = (X @ torch.randn(8, 4)).argmax(1)
    m = nn.Sequential(nn.Linear(8, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh(), nn.Linear(24, 4))
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(300):
        loss = F.cross_entropy(m(X), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cal = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 600, 100)]
    return m, X, y, cal


def _brute_force(m, X, cal):
    """|Δ loss| of removing each channel alone: zeroed, and replaced by its mean."""
    tm = load_torch(m, (X[:4],))
    a = ChannelAnalysis().call(tm.graph)
    dc = DataCriteria(tm, a, CalibrationData.from_user(cal, (X[:4],)))
    cand = np.concatenate([g.classes[~g.frozen] for g in a.groups])
    run = GatedRunner(tm.gm, dc.cons, a.n_classes)

    def total(g):
        run.gates = g
        with torch.no_grad():
            return sum(float(F.cross_entropy(run.run(b.inputs[0]), b.labels, reduction="sum")) for b in dc.data.batches)

    out = {}
    for mode in ("zero", "mean"):
        run.means = dc.means() if mode == "mean" else {}
        base = total(torch.ones(a.n_classes + 1))
        bf = np.full(a.n_classes, np.nan)
        for k in cand:
            g = torch.ones(a.n_classes + 1)
            g[k] = 0
            bf[k] = abs(total(g) - base)
        out[mode] = bf
    return a, dc, cand, out


@pytest.mark.parametrize(
    "importance,mode,min_rho",
    [
        ("taylor", "zero", 0.8),
        ("taylor2", "zero", 0.4),
        ("obd", "zero", 0.6),
        ("obs", "zero", 0.6),
        ("n2ps", "zero", 0.8),
        ("mrs", "mean", 0.8),
        ("mrp", "mean", 0.95),  # the exact penalty
    ],
)
def test_criterion_tracks_brute_force_loss_change(trained_mlp, importance, mode, min_rho):
    m, X, y, cal = trained_mlp
    a, dc, cand, bf = _brute_force(m, X, cal)
    s = Saliency(importance, normalizer="none").call(a, dc).scores
    rho = spearmanr(s[cand], bf[mode][cand]).correlation
    assert rho > min_rho, f"{importance}: rank correlation {rho:.2f} with brute force"


def _parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


# the trained MLP at ratio 0.5, granularity 1: both hidden layers keep 12 of their 24 units
HALF_MLP_SHAPES = {
    "0.weight": (12, 8), "0.bias": (12,),
    "2.weight": (12, 12), "2.bias": (12,),
    "4.weight": (4, 12), "4.bias": (4,),
}  # fmt: skip


def test_every_criterion_compiles_and_verifies(trained_mlp):
    m, X, y, cal = trained_mlp
    assert _parameter_shapes(m) != HALF_MLP_SHAPES  # the check below can fail
    for importance in CRITERIA:
        for calibration in (cal, [b[0] for b in cal]):  # labelled and unlabelled
            r = compiler.compile(m, (X[:4],), ratio=0.5, importance=importance, calibration=calibration, granularity=1)
            assert r.report.verification["passed"], importance
            assert _parameter_shapes(r.model) == HALF_MLP_SHAPES, importance


def test_synflow_conserves_flow_per_layer():
    """SynFlow on a bias-free ReLU network: each layer's scores sum to R (seed 003's conservation)."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(6, 10, bias=False), nn.ReLU(), nn.Linear(10, 7, bias=False), nn.ReLU(), nn.Linear(7, 3, bias=False))
    x = torch.randn(2, 6)
    tm = load_torch(m, (x,))
    a = ChannelAnalysis().call(tm.graph)
    dc = DataCriteria(tm, a, CalibrationData.from_user(None, (x,)))
    units = dc.synflow()
    with torch.no_grad():
        h = torch.ones(1, 6, dtype=torch.float64)
        for layer in (m[0], m[2], m[4]):
            h = h @ layer.weight.double().abs().T
        R = float(h.sum())
    sums = [float(units[i].sum()) for i in range(len(a.producers))]
    assert np.allclose(sums, R, rtol=1e-9), (sums, R)


def test_bn_scale_follows_gamma():
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    with torch.no_grad():
        m[1].weight.copy_(torch.arange(1, 17, dtype=torch.float32))
    r = compiler.compile(m, (torch.randn(1, 3, 8, 8),), ratio=0.5, importance="bn_scale", granularity=1)
    kept = r.model.get_submodule("1").weight.detach()
    assert torch.equal(kept, torch.arange(9, 17, dtype=torch.float32))


def _constant_unit_mlp():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3))
    with torch.no_grad():
        m[0].weight[[3, 7]] = 0.0  # all-zero fan-in: a constant output relu(b)
        m[0].bias[[3, 7]] = torch.tensor([0.8, 1.5])
    return m


def test_bias_propagation_removes_constant_unit_exactly():
    m = _constant_unit_mlp()
    x = torch.randn(32, 5)
    r = compiler.compile(m, (x,), f_nz=0.0, granularity=1)
    assert r.model.get_submodule("0").out_features == 10
    assert torch.allclose(r.model(x), m(x), atol=1e-6)
    # without propagation the constant is lost
    r0 = compiler.compile(m, (x,), f_nz=0.0, granularity=1, bias_propagation=False)
    assert r0.model.get_submodule("0").out_features == 10
    assert (r0.model(x) - m(x)).abs().max() > 1e-2


def test_dead_fan_out_unit_removed_without_change():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    with torch.no_grad():
        m[2].weight[:, [1, 5]] = 0.0
    x = torch.randn(2, 3, 10, 10)
    r = compiler.compile(m, (x,), f_nz=0.0, granularity=1)
    assert r.model.get_submodule("0").out_channels == 6
    assert torch.allclose(r.model(x), m(x), atol=1e-6)


def test_unstructured_sparsity_to_structured_removal():
    """Seed 000 thresholding / top-k, then units with at most f_nz non-zero weights go (seed 002 fig. 2.11)."""
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        m[0].weight[:6] *= 0.01  # six weak units
    sparse = sparsify(m, amount=0.4)  # top-k: keep the 60% largest weights of each layer
    assert sum(int((p == 0).sum()) for n, p in sparse.named_parameters() if n.endswith("weight")) > 0
    assert not any(int((p == 0).sum()) for p in m.parameters())  # the input model is untouched
    r = compiler.compile(sparse, (torch.randn(4, 10),), f_nz=0.1, granularity=1)
    w0, w2 = sparse[0].weight, sparse[2].weight
    dead = ((w0 != 0).float().mean(1) <= 0.1) | ((w2 != 0).float().mean(0) <= 0.1)
    assert bool(dead[:6].all())  # the weak units
    assert r.model.get_submodule("0").out_features == 16 - int(dead.sum())
    thr = sparsify(m, threshold=0.05)
    assert all(bool(((p.abs() >= 0.05) | (p == 0)).all()) for n, p in thr.named_parameters() if n.endswith("weight"))


def test_obs_compensation_beats_plain_removal():
    torch.manual_seed(5)
    X = torch.randn(512, 12)
    _y = (X[:, :6] @ torch.randn(6, 3)).argmax(1)  # unused: keeps the seeded weights of the test as they were
    m = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))
    cal = [X[i : i + 128] for i in range(0, 512, 128)]
    comp = compiler.compile(m, (X[:4],), ratio=0.5, importance="obs", calibration=cal, granularity=1)
    plain = compiler.compile(m, (X[:4],), ratio=0.5, importance="obs", calibration=cal, granularity=1, compensate=False)
    for name in ("0", "2"):  # the same channels were removed
        assert torch.equal(
            torch.as_tensor(comp.model.get_submodule(name).weight.shape), torch.as_tensor(plain.model.get_submodule(name).weight.shape)
        )
    with torch.no_grad():
        ref = m(X)
        e_comp = float(((comp.model(X) - ref) ** 2).mean())
        e_plain = float(((plain.model(X) - ref) ** 2).mean())
    assert comp.report.settings["compensated_layers"] >= 1
    assert e_comp < 0.7 * e_plain, (e_comp, e_plain)


def test_obs_compensation_in_conv_with_padding_is_verified():
    torch.manual_seed(6)
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(4, 3, 12, 12)
    r = compiler.compile(m, (x,), ratio=0.5, importance="obs", calibration=[x], granularity=1)
    assert r.report.verification["passed"]
    assert r.model.get_submodule("2").bias is not None  # compensation created the bias it needed


def test_calibration_batches_are_checked():
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(2, 4)
    with pytest.raises(compiler.InvalidArgumentError):
        compiler.compile(m, (x,), importance="taylor", calibration=[])
    with pytest.raises(compiler.InvalidArgumentError):
        compiler.compile(m, (x,), importance="taylor", calibration=["not a tensor"])
    with pytest.raises(compiler.InvalidArgumentError):
        compiler.compile(m, (x,), f_nz=1.5)


def test_data_criteria_leave_the_model_untouched(trained_mlp):
    m, X, y, cal = trained_mlp
    before = copy.deepcopy(m.state_dict())
    compiler.compile(m, (X[:4],), ratio=0.5, importance="obs", calibration=cal)
    compiler.compile(m, (X[:4],), ratio=0.5, importance="mrs", calibration=cal)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def _obs_rows_reproduce(m: nn.Module, x: torch.Tensor) -> tuple[set[str], list[str]]:
    """The layers OBS handles (their labels) and the ones bias propagation skips, with every handled layer's
    input rows times W̃ checked against the layer's own output."""
    tm = load_torch(m, (x,))
    a = ChannelAnalysis().call(tm.graph)
    dc = DataCriteria(tm, a, CalibrationData.from_user([x], (x,)))
    inputs: dict[str, torch.Tensor] = {}
    run = GatedRunner(tm.gm, dc.cons, a.n_classes)
    run.record = lambda c, t: inputs.__setitem__(c.node, t.detach())
    run.run(x)
    handled = set()
    for lay, _ in dc.layers():
        label = a.graph.ops[lay.consumer.op].label
        rows = dc._rows(lay, inputs[lay.consumer.node].double()) @ torch.as_tensor(dc._wtilde(lay)).T
        with torch.no_grad():
            out = m.get_submodule(label)(inputs[lay.consumer.node]).double()
        assert torch.allclose(rows, out.movedim(1, -1).reshape(-1, out.shape[1]), atol=1e-5), label
        handled.add(label)
    _, skipped = dc.bias_propagation(~a.class_frozen)
    return handled, skipped


def test_obs_and_bias_propagation_read_conv_geometry_from_the_graph():
    """OBS re-fits ungrouped Conv1d/Conv2d modules with zero padding mode and numeric padding (stride, dilation
    and padding from the op's attributes, the kernel from the weight's shape); bias propagation takes convs
    without padding, of any rank, and lists the others."""
    torch.manual_seed(7)
    conv1d = nn.Sequential(
        nn.Conv1d(3, 8, 3), nn.ReLU(),
        nn.Conv1d(8, 8, 3, stride=2, padding=2, dilation=2), nn.ReLU(),  # OBS; padded: no bias propagation
        nn.Conv1d(8, 8, 3, padding="same"), nn.ReLU(),  # string padding: neither
        nn.Conv1d(8, 8, 3, padding=1, padding_mode="reflect"), nn.ReLU(),  # neither
        nn.Conv1d(8, 4, 1, bias=False),  # both
    )  # fmt: skip
    handled, skipped = _obs_rows_reproduce(conv1d, torch.randn(2, 3, 40))
    assert handled == {"2", "8"} and sorted(skipped) == ["2", "4", "6"]
    conv2d = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(),
        nn.Conv2d(8, 8, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), nn.ReLU(),  # OBS
        nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular"), nn.ReLU(),  # neither
        nn.Conv2d(8, 8, 1, padding_mode="reflect"), nn.ReLU(),  # no padding: bias propagation only
        nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),  # grouped: neither
        nn.Conv2d(8, 4, 1),  # both
    )  # fmt: skip
    handled, skipped = _obs_rows_reproduce(conv2d, torch.randn(2, 3, 16, 16))
    assert handled == {"2", "10"} and sorted(skipped) == ["2", "4", "8"]
    conv3d = nn.Sequential(nn.Conv3d(2, 6, 3), nn.ReLU(), nn.Conv3d(6, 6, 1), nn.ReLU(), nn.Conv3d(6, 4, 3, padding=1))
    handled, skipped = _obs_rows_reproduce(conv3d, torch.randn(2, 2, 6, 6, 6))
    assert handled == set() and skipped == ["4"]


class _ComputedWeights(nn.Module):
    """A functional conv with a computed weight and bias, a functional linear with a computed bias."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3)
        self.w, self.b = nn.Parameter(torch.randn(6, 8, 3, 3)), nn.Parameter(torch.randn(6))
        self.l1 = nn.Linear(6, 4)
        self.lw, self.lb = nn.Parameter(torch.randn(5, 4)), nn.Parameter(torch.randn(5))
        self.l2 = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(F.conv2d(F.relu(self.c1(x)), self.w * 2, self.b * 2))
        h = F.relu(self.l1(h.mean((2, 3))))
        return self.l2(torch.tanh(F.linear(h, self.lw, self.lb * 2)))


@pytest.mark.parametrize(
    "kw",
    [dict(importance="n2ps", ratio=0.5), dict(importance="obs", ratio=0.5), dict(importance="mrs", ratio=0.5), dict(f_nz=0.5)],
    ids=["n2ps", "obs", "mrs", "f_nz"],
)
def test_computed_weights_are_not_refit(kw):
    """Consumers whose weight or bias is computed have no constant to score or update: they are left out
    (n2ps fan-out, OBS, f_nz fan-out) or listed as skipped by bias propagation, not a crash."""
    torch.manual_seed(8)
    m, x = _ComputedWeights().eval(), torch.randn(8, 3, 10, 10)
    r = compiler.compile(m, (x,), calibration=[x], granularity=1, **kw)
    assert r.report.verification["passed"]
    if kw.get("importance") == "mrs":  # removal propagates the means
        assert r.report.settings["bias_propagation_skipped"] == ["conv2d", "linear"]


def test_calibration_batch_shapes_are_checked_against_the_example_inputs():
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    bad = {
        "channels": ([x, torch.randn(2, 5, 8, 8)], r"batch 1, input 0: shape \[2, 5, 8, 8\].*\[2, 3, 8, 8\].*\[N, 3, 8, 8\]"),
        "rank": ([torch.randn(2, 3, 8)], r"batch 0, input 0: shape \[2, 3, 8\].*\[N, 3, 8, 8\]"),
        "dtype": ([torch.zeros(2, 3, 8, 8, dtype=torch.long)], r"batch 0, input 0: dtype torch.int64"),
    }
    for cal, msg in bad.values():
        with pytest.raises(compiler.InvalidArgumentError, match=msg):
            compiler.compile(m, (x,), importance="taylor", calibration=cal)
    r = compiler.compile(m, (x,), ratio=0.5, importance="taylor", calibration=[torch.randn(5, 3, 8, 8), (torch.randn(7, 3, 8, 8),)])
    assert r.report.verification["passed"]


def test_calibration_batches_need_as_many_inputs_as_the_example():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x, y):
            return self.b(torch.relu(self.a(x) + y))

    x, y = torch.randn(2, 4), torch.randn(2, 8)
    m = Two()
    with pytest.raises(compiler.InvalidArgumentError, match=r"batch 1: .*2 input tensor"):
        compiler.compile(m, (x, y), importance="taylor", calibration=[(x, y), (x, y, x, y)])
    with pytest.raises(compiler.InvalidArgumentError, match=r"batch 0, input 1: shape \[3, 9\]"):
        compiler.compile(m, (x, y), importance="taylor", calibration=[(torch.randn(3, 4), torch.randn(3, 9))])
    compiler.compile(m, (x, y), importance="taylor", calibration=[(torch.randn(6, 4), torch.randn(6, 8))])


# ---------------------------------------------------------------------------
# the criteria the brute-force test does not cover, each on a case whose ranking is known by construction:
# ratio 0.5 at granularity 1 keeps the hidden layer's better half, read off the pruned layer's fan-in rows


def _kept_units(original: torch.Tensor, pruned: torch.Tensor) -> set[int]:
    """Which rows of ``original`` (a layer's fan-in weights) ``pruned`` kept, by their values."""
    o = original.detach().reshape(original.shape[0], -1)
    p = pruned.detach().reshape(pruned.shape[0], -1)
    kept = set()
    for row in p:
        match = [i for i in range(len(o)) if torch.equal(o[i][: len(row)], row)]
        assert len(match) == 1, "rows are distinct by construction"
        kept.add(match[0])
    return kept


def _hidden_kept(m: nn.Sequential, x: torch.Tensor, importance: str, **kw) -> set[int]:
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1, importance=importance, **kw)
    assert r.report.verification["passed"], importance
    return _kept_units(m[0].weight, r.model.get_submodule("0").weight)


_ORDER = [5, 0, 3, 6, 1, 7, 2, 4]  # units in this order get the two kinds alternately: neither half is a prefix
_FIRST, _SECOND = set(_ORDER[0::2]), set(_ORDER[1::2])


def test_l1_and_l2_keep_the_units_their_norm_ranks_first():
    """Spiky fan-in rows (one weight 3: L1 3, L2 3) and flat ones (four weights 1: L1 4, L2 2):
    l1 keeps the flat units, l2 the spiky ones; each unit's scale (1.00 to 1.07) orders units of a kind."""
    m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for k, unit in enumerate(_ORDER):
            row = torch.tensor([3.0, 0, 0, 0]).roll(k % 4) if unit in _FIRST else torch.ones(4)
            m[0].weight[unit] = row * (1 + 0.01 * k)
    x = torch.randn(16, 4)
    assert _hidden_kept(m, x, "l1") == _SECOND
    assert _hidden_kept(m, x, "l2") == _FIRST


def _dead_and_faint():
    """Units of _FIRST are dead (big fan-in weights behind a bias of -100: ReLU gives 0 on every input);
    those of _SECOND are alive with small fan-in weights (ReLU of about 1 + 0.01 x)."""
    torch.manual_seed(9)
    m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for k, unit in enumerate(_ORDER):
            dead = unit in _FIRST
            m[0].weight[unit] = (5.0 if dead else 0.01) * torch.randn(5)
            m[0].bias[unit] = -100.0 if dead else 1.0 + 0.01 * k
    return m, torch.randn(64, 5)


def test_activation_keeps_the_live_units_over_the_heavy_dead_ones():
    m, x = _dead_and_faint()
    with torch.no_grad():
        assert bool((torch.relu(m[0](x))[:, sorted(_FIRST)] == 0).all())  # the dead units are dead
    assert _hidden_kept(m, x, "l2") == _FIRST  # the weights alone rank the dead units first
    assert _hidden_kept(m, x, "activation", calibration=[x]) == _SECOND


def test_n2ps_weighs_activation_by_fan_out():
    """All units alive; _FIRST's activations are 10x larger but their fan-out weights 1000x smaller:
    activation keeps _FIRST, n2ps (mean |x| times total |fan-out weight|) keeps _SECOND."""
    torch.manual_seed(10)
    m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        for k, unit in enumerate(_ORDER):
            loud = unit in _FIRST
            m[0].weight[unit] = 0.01 * torch.randn(5)
            m[0].bias[unit] = (10.0 if loud else 1.0) * (1 + 0.01 * k)
            m[2].weight[:, unit] = (0.001 if loud else 1.0) * (1 + 0.01 * k)
    x = torch.randn(64, 5)
    assert _hidden_kept(m, x, "activation", calibration=[x]) == _FIRST
    assert _hidden_kept(m, x, "n2ps", calibration=[x]) == _SECOND


def test_synflow_drops_the_units_whose_path_to_the_output_is_cut():
    """_FIRST's units have big fan-in weights and an all-zero fan-out: no flow from input to output passes
    them, so their synflow is 0 and they go, where l2 would keep them."""
    torch.manual_seed(11)
    m = nn.Sequential(nn.Linear(4, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False))
    with torch.no_grad():
        for k, unit in enumerate(_ORDER):
            cut = unit in _FIRST
            m[0].weight[unit] = (5.0 if cut else 0.1) * (1 + 0.01 * k) * torch.randn(4).abs()
            m[2].weight[:, unit] = 0.0 if cut else 1.0 + 0.01 * k
    x = torch.randn(8, 4)
    assert _hidden_kept(m, x, "l2") == _FIRST
    assert _hidden_kept(m, x, "synflow") == _SECOND


def test_random_is_seeded_and_reads_no_weight_value():
    """The same seed keeps the same units of two models with other weights of the same shapes; another seed
    keeps other units; over seeds the choice is not the l2 one (nor any other fixed one)."""
    torch.manual_seed(12)
    a = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    b = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    x = torch.randn(8, 6)
    l2 = _hidden_kept(a, x, "l2")
    by_seed = [_hidden_kept(a, x, "random", seed=s) for s in range(4)]
    assert all(len(k) == 16 for k in by_seed)
    assert by_seed[0] == _hidden_kept(a, x, "random", seed=0)  # reproducible
    for s in range(4):
        kept_b = _hidden_kept(b, x, "random", seed=s)
        assert kept_b == by_seed[s], s  # the weights' values play no part
    assert len({frozenset(k) for k in by_seed}) == 4  # each seed its own choice
    assert l2 not in by_seed
