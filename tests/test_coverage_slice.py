"""torchvision families beyond tests/test_torchvision.py, at the coverage sweep's small inputs.

By default one model of each remaining family (Swin, Swin V2, MaxViT, ViT, SqueezeNet, MNASNet,
a segmentation and a video model); ``--runslow`` adds every model of the sweep
(``benchmarks/coverage.py``: classification, segmentation, video), the largest (vit_h_14, 632M
parameters) included; ``--slow-slice`` (what CI runs) adds the eight of them named in tests/_ci_slice.py.
Random weights (``weights=None``), nothing downloaded.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import compiler

torchvision = pytest.importorskip("torchvision")

_spec = importlib.util.spec_from_file_location(
    "coverage_sweep", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "coverage.py")
)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)

SLICE = [
    ("swin_t", "classification"),  # window attention, relative position bias, patch merging (inlined wrapped functions)
    ("swin_v2_t", "classification"),  # cosine attention (F.normalize), log-spaced position bias MLP
    ("maxvit_t", "classification"),  # einsum attention, grid/block partitions (224: its partitions need it)
    ("vit_b_32", "classification"),  # class token, heads
    ("squeezenet1_1", "classification"),
    ("mnasnet0_5", "classification"),
    ("lraspp_mobilenet_v3_large", "segmentation"),
    ("r3d_18", "video"),
]


def _all_models() -> list[tuple[str, str]]:
    m = torchvision.models
    return (
        [(n, "classification") for n in m.list_models(module=m)]
        + [(n, "segmentation") for n in m.list_models(module=m.segmentation)]
        + [(n, "video") for n in m.list_models(module=m.video)]
    )


def _check(name: str, family: str, max_params: float = float("inf"), no_frozen_ops: bool = True) -> None:
    torch.manual_seed(0)
    kwargs, shape = coverage.build_spec(name, family)
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    if sum(p.numel() for p in model.parameters()) > max_params * 1e6:
        pytest.skip(f"{name}: more than {max_params:.0f}M parameters")
    x = torch.randn(*shape)
    result = compiler.compile(model, (x,), ratio=0.5)
    rep = result.report
    assert rep.verification is not None and rep.verification["passed"] is True, rep.verification
    assert rep.verification["nodes_checked"] > 0
    assert rep.macs_after < 0.5 * rep.macs_before, rep.macs_ratio
    assert rep.params_after < rep.params_before
    if no_frozen_ops:
        assert rep.frozen_ops == [], sorted({o.target for o in rep.frozen_ops})
    x2 = torch.randn(*shape)
    with torch.no_grad():
        y, y_pruned = model(x2), result(x2)
    y, y_pruned = (y["out"], y_pruned["out"]) if isinstance(y, dict) else (y, y_pruned)
    assert y_pruned.shape == y.shape
    _batch_generic(result, shape)


def _batch_generic(result, shape) -> None:
    """The pruned model runs at another batch size and gives each sample what it gives alone
    (the bodies of wrapped functions inlined with batch-dependent sizes read at run time)."""
    xb = torch.randn(3, *shape[1:])
    with torch.no_grad():
        yb = result(xb)
        ys = [result(xb[i : i + 1]) for i in range(3)]
    yb, ys = (yb["out"], [y["out"] for y in ys]) if isinstance(yb, dict) else (yb, ys)
    torch.testing.assert_close(yb, torch.cat(ys), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, family", SLICE, ids=[n for n, _ in SLICE])
def test_family_half(name, family):
    _check(name, family)


@pytest.mark.parametrize("v2", [False, True], ids=["mvit_v1", "mvit_v2"])
def test_mvit_pooled_attention(v2):
    """MViT's blocks at a small size: pooled attention (tensor_split of the class token), the in-place
    ``_add_rel_pos`` / ``_add_shortcut`` (inlined as in-place updates) and v1's repeated positional table."""
    from torchvision.models.video.mvit import MSBlockConfig, MViT

    torch.manual_seed(0)
    blocks = [
        MSBlockConfig(1, 32, 32, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 2, 2]),
        MSBlockConfig(2, 32, 64, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 2, 2]),
        MSBlockConfig(2, 64, 64, [3, 3, 3], [3, 3, 3], [1, 1, 1], [1, 1, 1]),
    ]
    model = MViT(spatial_size=(32, 32), temporal_size=4, block_setting=blocks, residual_pool=v2,
                 residual_with_cls_embed=not v2, rel_pos_embed=v2, proj_after_attn=v2, num_classes=10).eval()  # fmt: skip
    x = torch.randn(1, 3, 4, 32, 32)
    result = compiler.compile(model, (x,), ratio=0.5)
    rep = result.report
    assert rep.verification["passed"] is True and rep.verification["nodes_checked"] > 0
    assert rep.frozen_ops == [], sorted({o.target for o in rep.frozen_ops})
    assert rep.macs_after < 0.5 * rep.macs_before, rep.macs_ratio
    x2 = torch.randn_like(x)
    with torch.no_grad():
        assert result(x2).shape == model(x2).shape
    _batch_generic(result, x.shape)


@pytest.mark.slow
@pytest.mark.parametrize("name, family", _all_models())
def test_sweep_half(name, family):
    _check(name, family, no_frozen_ops=False)
