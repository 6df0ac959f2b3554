"""One wording and one flow for a failed verification (frontends.adapter): the channel check
(frontends/torch/verify.py), the depth checks (frontends/torch/depth.py, frontends/onnx/depth.py)
all raise ``VerifyResult.failure``; the torch checks run through ``verify_wide_then_narrow``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from frontends.adapter import VerifyResult, verify_wide_then_narrow
from frontends.errors import VerificationError
from frontends.torch.adapter import TorchAdapter
from passes.depth import FindBlocks, score_blocks, select_blocks


def _failed(worst: str = "conv_3") -> VerifyResult:
    return VerifyResult(False, 0.5, 2.0, 1e-6, "float64", 7, 0.25, worst)


def test_failure_names_subject_reference_error_and_worst_tensor():
    exc = _failed().failure("pruned model", "the original with removed channels zeroed")
    assert isinstance(exc, VerificationError) and exc.max_abs_error == 0.5
    assert str(exc) == (
        "pruned model differs from the original with removed channels zeroed: max abs error 0.5 at the outputs "
        "(tolerance 1e-06, float64); worst intermediate tensor conv_3: relative error 0.25"
    )
    assert "worst intermediate" not in str(_failed("").failure("a", "b"))


def test_wide_then_narrow_falls_back_and_raises_what_fails():
    passed = VerifyResult(True, 0.0, 1.0, 1e-6, "float32")
    calls = []

    def no_float64(wide):
        calls.append(wide)
        if wide:
            raise RuntimeError("no float64 kernel")
        return passed

    assert verify_wide_then_narrow(no_float64, "m", "r") is passed and calls == [True, False]
    with pytest.raises(VerificationError, match="^m differs from r: max abs error 0.5"):
        verify_wide_then_narrow(lambda wide: _failed(), "m", "r")

    def never(wide):
        raise ValueError("shapes do not line up\nmore")

    with pytest.raises(VerificationError, match="^the m cannot be compared with r: ValueError: shapes do not line up$"):
        verify_wide_then_narrow(never, "m", "r")

    def mismatch(wide):  # a VerificationError from the comparison itself is not retried in float32
        calls.append(wide)
        raise VerificationError("node x: shape")

    calls.clear()
    with pytest.raises(VerificationError, match="node x"):
        verify_wide_then_narrow(mismatch, "m", "r")
    assert calls == [True]


class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


def test_a_corrupted_depth_removal_and_a_corrupted_width_rewrite_fail_with_the_one_message():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), _Res(), _Res(), _Res()).eval()
    x = torch.randn(1, 3, 8, 8)
    adapter = TorchAdapter(net, (x,))
    adapter.load(lambda name, fn, *a, **k: fn(*a, **k))
    handler = adapter.depth()
    analysis = FindBlocks().call(adapter.graph)
    removed = select_blocks(analysis, score_blocks(analysis, handler, "norm"), 1)
    bad = copy.deepcopy(handler.remove(removed))
    with torch.no_grad():
        next(p for n, p in bad.named_parameters() if n.endswith("weight")).mul_(1.01)
    with pytest.raises(VerificationError, match=r"^depth-pruned model differs from the original with the removed branches zeroed: "
                                                r"max abs error \S+ at the outputs \(tolerance \S+, float64\)"):  # fmt: skip
        handler.verify(removed, bad, 1e-6)

    import compiler
    from frontends.torch.verify import VerifyFX

    r = compiler.compile(net, (x,), ratio=0.5)
    traced, plan = r.traced, r.plan
    VerifyFX().call(traced, plan.analysis, plan.selection.pruned, r.model, (x,))
    bad = copy.deepcopy(r.model)
    with torch.no_grad():
        next(p for n, p in bad.named_parameters() if n.endswith("weight")).mul_(1.01)
    with pytest.raises(VerificationError, match=r"^pruned model differs from the original with removed channels zeroed: "
                                                r"max abs error \S+ at the outputs \(tolerance \S+, float64\)"):  # fmt: skip
        VerifyFX().call(traced, plan.analysis, plan.selection.pruned, bad, (x,))
