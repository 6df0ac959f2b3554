"""Acceptance: torchvision models (random weights) at ratio=0.5 with the default settings.

All twelve run by default: with 2 CPU threads the whole module takes well under two minutes
(see the timings in the test report); nothing here is downloaded (weights=None).
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import compiler

torchvision = pytest.importorskip("torchvision")

MODELS = {
    "resnet18": 224,
    "resnet50": 224,
    "mobilenet_v2": 224,
    "mobilenet_v3_small": 224,
    "densenet121": 224,
    "vgg16": 224,
    "convnext_tiny": 224,
    "efficientnet_b0": 224,
    "regnet_y_400mf": 224,
    "googlenet": 224,
    "inception_v3": 299,
    "shufflenet_v2_x1_0": 224,
}


def flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_half(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    size = MODELS[name]
    x = torch.randn(1, 3, size, size)
    result = compiler.compile(model, (x,), ratio=0.5)
    rep = result.report

    assert rep.verification is not None and rep.verification["passed"] is True
    assert rep.macs_after < 0.5 * rep.macs_before, rep.macs_ratio
    assert rep.params_after < rep.params_before
    assert rep.frozen_ops == [], [o.target for o in rep.frozen_ops]

    with torch.no_grad():
        y = model(x)
        y_pruned = result(x)
        assert y_pruned.shape == y.shape == (1, 1000)
        assert result(torch.randn(2, 3, size, size)).shape == (2, 1000)  # another batch size

    # the FLOPs of both models measured by PyTorch, independently of prunec's cost model
    f_before, f_after = flops(model, x), flops(result.model, x)
    assert f_after < 0.5 * f_before
    assert f_before == 2 * rep.macs_before and f_after == 2 * rep.macs_after
