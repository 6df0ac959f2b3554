"""Defaults that keep quality (issue 18, point 1): ``importance="auto"`` and the held-out compensation guard.

A digits MLP and CNN are trained in-process (scikit-learn's bundled 8x8 digits); quality is always measured on
samples the pruner did not see.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import compiler


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    return X[perm], y[perm]


def _train(m: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int = 300) -> nn.Module:
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        i = torch.randint(0, len(X), (128,), generator=g)
        loss = F.cross_entropy(m(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def digits_mlp():
    torch.manual_seed(0)
    X, y = _digits()
    m = _train(nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10)), X[:1200], y[:1200])
    return m, X, y


def _out_error(model: nn.Module, ref: nn.Module, X: torch.Tensor) -> float:
    with torch.no_grad():
        want = ref(X)
        return float(((model(X) - want) ** 2).mean() / (want**2).mean())


def test_auto_is_l2_without_data_and_says_so(digits_mlp):
    m, X, _ = digits_mlp
    auto = compiler.compile(m, (X[:4],), ratio=0.5)
    l2 = compiler.compile(m, (X[:4],), ratio=0.5, importance="l2")
    choice = auto.report.settings["importance_choice"]
    assert choice["criterion"] == "l2" and "data-free" in choice["reason"] and choice["calibration_samples"] is None
    assert auto.report.settings["importance"] == "l2"
    assert "importance_choice" not in l2.report.settings  # a named criterion is not a choice
    for a, b in zip(auto.model.state_dict().values(), l2.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # explicit l2 behaves as the data-free default does


def test_auto_picks_a_data_criterion_with_data(digits_mlp):
    m, X, _ = digits_mlp
    many = [X[i : i + 64] for i in range(0, 512, 64)]
    r = compiler.compile(m, (X[:4],), ratio=0.5, calibration=many)
    choice = r.report.settings["importance_choice"]
    assert choice == {**choice, "criterion": "obs", "calibration_samples": 512}
    assert r.report.settings["importance"] == "obs" and "compensation" in r.report.settings
    few = compiler.compile(m, (X[:4],), ratio=0.5, calibration=[X[:1]])  # one sample: no held-out split
    assert few.report.settings["importance_choice"]["criterion"] == "taylor"
    # the choice keeps more held-out quality than the data-free default at the same ratio
    held = X[1200:]
    plain = compiler.compile(m, (X[:4],), ratio=0.5, importance="l2")
    assert _out_error(r.model, m, held) < 0.5 * _out_error(plain.model, m, held)


def test_guard_refuses_compensation_fitted_on_too_little_data(digits_mlp, monkeypatch):
    """Two calibration samples (one fits, one is held out) for layers reading 96 features: the classical re-fit
    (what compensation was before the guard) overfits them and makes held-out outputs worse than not
    compensating at all; the guard never picks it there, and leaves a layer alone where no re-fit helps."""
    from passes.data_criteria import ChannelStatistics

    m, X, _ = digits_mlp
    tiny = [X[0:1], X[1:2]]
    held = X[1200:]
    kw = dict(ratio=0.5, importance="obs", calibration=tiny, granularity=1)
    guarded = compiler.compile(m, (X[:4],), **kw)
    plain = compiler.compile(m, (X[:4],), compensate=False, **kw)
    unguarded_fit = ChannelStatistics.obs_compensation
    monkeypatch.setattr(ChannelStatistics, "obs_compensation", lambda self, pruned, damp=None, reduce=None: unguarded_fit(self, pruned, 0.01))
    unguarded = compiler.compile(m, (X[:4],), **kw)
    assert np.array_equal(unguarded.plan.selection.pruned, guarded.plan.selection.pruned)
    e_guarded, e_plain, e_unguarded = (_out_error(r.model, m, held) for r in (guarded, plain, unguarded))
    assert e_unguarded > 1.3 * e_plain  # too little data: the classical re-fit is worse than nothing
    assert e_guarded < e_plain, (e_guarded, e_plain, e_unguarded)
    rep = guarded.report.settings["compensation"]
    assert rep["candidates"] == 2 and rep["refused"] >= 1 and rep["applied"] == 2 - rep["refused"], rep
    assert not any(row["damping"] is not None and row["anchored"] is False for row in rep["layers"])
    assert all(row["held_out_loss_after"] <= row["held_out_loss_before"] for row in rep["layers"])
    assert unguarded.report.settings["compensation"]["guard"].startswith("unguarded")


def test_guard_keeps_compensation_with_enough_data(digits_mlp):
    m, X, _ = digits_mlp
    cal = [X[i : i + 128] for i in range(0, 1024, 128)]
    held = X[1200:]
    kw = dict(ratio=0.5, importance="obs", calibration=cal, granularity=1)
    guarded = compiler.compile(m, (X[:4],), **kw)
    plain = compiler.compile(m, (X[:4],), compensate=False, **kw)
    rep = guarded.report.settings["compensation"]
    assert rep["applied"] == rep["candidates"] >= 2 and rep["refused"] == 0, rep
    assert rep["held_out_loss_after"] < 0.7 * rep["held_out_loss_before"]
    assert _out_error(guarded.model, m, held) < 0.7 * _out_error(plain.model, m, held)


def test_guard_splits_a_single_batch(digits_mlp):
    m, X, _ = digits_mlp
    r = compiler.compile(m, (X[:4],), ratio=0.5, importance="obs", calibration=[X[:256]], granularity=1)
    rep = r.report.settings["compensation"]
    assert rep["guard"].startswith("held-out") and len(rep["layers"]) == rep["candidates"] >= 2


def test_guard_on_onnx(digits_mlp, tmp_path):
    m, X, _ = digits_mlp
    path = tmp_path / "mlp.onnx"
    torch.onnx.export(m, (X[:4],), str(path), input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    tiny = [X[0:1].numpy(), X[1:2].numpy()]
    r = compiler.compile(str(path), (X[:4].numpy(),), ratio=0.5, importance="obs", calibration=tiny, granularity=1)
    rep = r.report.settings["compensation"]
    assert rep["refused"] >= 1 and all(row["held_out_loss_after"] <= row["held_out_loss_before"] for row in rep["layers"])
    one = compiler.compile(str(path), (X[:4].numpy(),), ratio=0.5, importance="obs", calibration=[X[:8].numpy()], granularity=1)
    assert one.report.settings["compensation"]["guard"].startswith("no held-out split")  # one batch: not split, not applied
    assert one.report.settings["compensated_layers"] == 0
    auto = compiler.compile(str(path), (X[:4].numpy(),), ratio=0.5, calibration=tiny)
    assert auto.report.settings["importance_choice"]["criterion"] == "obs"
    auto1 = compiler.compile(str(path), (X[:4].numpy(),), ratio=0.5, calibration=[X[:8].numpy()])
    assert auto1.report.settings["importance_choice"]["criterion"] == "activation"  # one batch, no gradients in ONNX Runtime
