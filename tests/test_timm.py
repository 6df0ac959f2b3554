"""timm models (``pretrained=False``, nothing downloaded), at their default input sizes.

By default a slice, one model for each construct met only in timm: Swin's crop back
from padded windows with bounds read at run time, CoaT's position-encoding conv shared
by every block of a stage, PoolFormer's single-group GroupNorm, XCiT's Fourier position
encoding built from numbers, and timm's own attention (fused SDPA, heads from reshape).
``--runslow`` adds every model of ``benchmarks/coverage.py --timm``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import compiler

timm = pytest.importorskip("timm")

_spec = importlib.util.spec_from_file_location(
    "coverage_sweep", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "coverage.py")
)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

SLICE = ["swin_tiny_patch4_window7_224", "coat_lite_tiny", "poolformer_s12", "xcit_tiny_12_p16_224", "vit_tiny_patch16_224"]

# Verified, but not below half the MACs at ratio=0.5: eva02_tiny_patch14_224 has no classifier, so its output is
# the residual stream itself (192 wide, kept whole); its head dims prune in rotary pairs, its MLPs by half.
NOT_HALF = {"eva02_tiny_patch14_224"}


def _check(name: str, no_frozen_ops: bool) -> None:
    torch.manual_seed(0)
    model, shape = coverage.build_timm(name)
    model.eval()
    x = torch.randn(*shape)
    result = compiler.compile(model, (x,), ratio=0.5)
    rep = result.report
    assert rep.verification["passed"] is True and rep.verification["nodes_checked"] > 0, rep.verification
    assert rep.params_after < rep.params_before
    if name in NOT_HALF:
        assert rep.macs_after < rep.macs_before
    else:
        assert rep.macs_after < 0.5 * rep.macs_before, rep.macs_ratio
    if no_frozen_ops:
        assert rep.frozen_ops == [], sorted({o.target for o in rep.frozen_ops})
    xb = torch.randn(3, *shape[1:])  # another batch size: each sample gets what it gets alone
    with torch.no_grad():
        yb = result(xb)
        ys = torch.cat([result(xb[i : i + 1]) for i in range(3)])
        assert yb.shape == model(xb).shape
    torch.testing.assert_close(yb, ys, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", SLICE)
def test_timm_slice(name):
    _check(name, no_frozen_ops=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", coverage.TIMM_MODELS)
def test_timm_sweep(name):
    _check(name, no_frozen_ops=False)
