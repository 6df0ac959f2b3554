"""Random architectures (hypothesis): residual adds, concat, split/chunk, grouped and depthwise
convs, SE gates, channel shuffle, flatten into linear, attention blocks; compiled with random
policies and checked against the masked reference and an independent one (the original with
removed weights zeroed). The generator is ``tests/archgen.py``, shared with ``benchmarks/fuzz.py``;
the differential test runs the benchmark's own checks on both paths (torch and ONNX export)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from _checks import assert_close, independent_reference, masked_reference, prune
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz import check_onnx, check_torch
from tests.archgen import CRITERIA, EQUALIZATIONS, ArchSpec, RandomNet, blocks, build, policies

__all__ = ["RandomNet", "blocks", "policies"]  # imported by test_onnx_models

@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=blocks, head=st.sampled_from(["flatten", "mean"]), policy=policies, seed=st.integers(0, 2**16))
def test_random_architecture(blocks, head, policy, seed):
    torch.manual_seed(seed)
    m = RandomNet(blocks, head)
    with torch.no_grad():  # non-trivial norm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
            if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                mod.weight.normal_()
                mod.bias.normal_()
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    r = prune(m, x, **policy)  # verification passed, output shape, MACs/params non-increasing, attributes
    rep = r.report
    assert rep.macs_after <= rep.macs_before
    assert r.model.fc.out_features == 5
    # fresh inputs of another batch size: the masked reference and an independent one
    x2 = torch.randn(3, 3, 8, 8)
    got = copy.deepcopy(r.model).double()(x2.double())
    with torch.no_grad():
        assert_close(masked_reference(r, (x2,)), got, rtol=1e-9)
        assert_close(independent_reference(m, r.model)(x2.double()), got, rtol=1e-9)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(blocks=blocks, target=st.floats(0.2, 0.9))
def test_random_architecture_target_macs(blocks, target):
    torch.manual_seed(0)
    m = RandomNet(blocks, "mean").eval()
    r = prune(m, torch.randn(1, 3, 8, 8), target_macs=target)
    rep = r.report
    if rep.macs_after > target * rep.macs_before:  # unreachable: then it is the most that can be pruned
        assert rep.settings["ratio_used"] == 0.999
        assert prune(m, torch.randn(1, 3, 8, 8), ratio=0.999, scope="local").report.macs_after == rep.macs_after


fuzz_policies = st.fixed_dictionaries(
    {
        "ratio": st.floats(0.05, 0.95),
        "equalization": st.sampled_from(EQUALIZATIONS),
        "scope": st.sampled_from(["local", "global"]),
        "granularity": st.sampled_from([1, 2, 4, 8]),
        "importance": st.sampled_from(CRITERIA),
        "normalizer": st.sampled_from(["max", "mean", "none"]),
        # scores only: weight updates would change the kept weights the independent check compares
        "bias_propagation": st.just(False),
        "compensate": st.just(False),
    }
)
fuzz_specs = st.builds(ArchSpec, blocks, st.sampled_from(["flatten", "mean"]), st.integers(0, 2**16), fuzz_policies)


def _differential(spec: ArchSpec, tmp_path) -> None:
    for out in (check_torch(spec), check_onnx(spec, str(tmp_path))):
        assert out.status in ("ok", "export_failed"), f"{out.path}: {out.status}: {out.message}\n{out.trace}"


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=fuzz_specs)
def test_differential_torch_and_onnx(spec, tmp_path):
    """benchmarks/fuzz.py's checks, both paths: any criterion; verified, then re-checked independently."""
    _differential(spec, tmp_path)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(spec=fuzz_specs)
def test_differential_torch_and_onnx_many(spec, tmp_path):
    _differential(spec, tmp_path)


@pytest.mark.parametrize("importance", ["obd", "taylor2"])
def test_second_order_criteria_through_fused_attention(importance):
    """Regression (found by benchmarks/fuzz.py): double backward through scaled_dot_product_attention
    picked a fused CPU kernel without a second derivative and crashed; the math kernel is used."""
    m = build(ArchSpec([("attention", 12, 6)], "flatten", 40984))
    r = prune(m, torch.randn(2, 3, 8, 8), ratio=0.8, importance=importance)
    assert any(g.channels_after < g.channels_before for g in r.report.groups)


def test_archgen_is_deterministic_and_covers_every_block():
    spec = ArchSpec([(k, 16, 5) for k in ("conv", "attention", "se", "shuffle", "split")], "flatten", 3)
    a, b = build(spec), build(spec)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    x = torch.randn(2, 3, 8, 8)
    assert a(x).shape == (2, 5)
    assert {step[0] for step in a.plan} >= {"attention", "se", "shuffle", "split"}


@pytest.mark.parametrize("importance", ["taylor", "taylor2", "mrs"])
def test_gradient_criteria_without_any_prunable_group(importance):
    """Regression (found by benchmarks/fuzz.py): a network with nothing to prune (pool -> mean -> the
    output layer) crashed the gate-gradient criteria (the output does not depend on any gate)."""
    m = build(ArchSpec([("pool", 32, 3)], "mean", 15896))
    r = prune(m, torch.randn(2, 3, 8, 8), ratio=0.3, importance=importance)
    assert all(g.channels_after == g.channels_before for g in r.report.groups)
