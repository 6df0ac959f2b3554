"""The ONNX verification can fail: intermediate tensors, constant references, per-tensor tolerance, NaN.

Each test calls the verifier as the ONNX adapter does (``VerifyONNX().call(loaded, analysis, pruned, model)``)
on a compiled model, then on copies of the pruned model with deliberate defects.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torchvision
from onnx import numpy_helper

import compiler
from frontends.onnx.verify import VerifyONNX
from frontends.torch.verify import VerifyFX
from tests._onnx_helpers import build, inputs_for

CONV_RELU_CONV = """
g (float[1,3,8,8] x) => (float[1,5,8,8] y) {
  [c1] a = Conv<pads=[1,1,1,1]>(x, w1, b1)
  [r1] h = Relu(a)
  [c2] y = Conv<pads=[1,1,1,1]>(h, w2, b2)
}
"""
CONV_INITS = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (5, 8, 3, 3), "b2": (5,)}


def verify(r: compiler.CompileResult, model: onnx.ModelProto, **kw) -> dict:
    """The ONNX adapter's verification of ``model`` against the compile's plan."""
    p = r.plan
    assert p is not None
    return VerifyONNX(rtol=1e-4, **kw).call(r.traced, p.analysis, p.selection.pruned, model).to_dict()


def with_initializers(m: onnx.ModelProto, change) -> onnx.ModelProto:
    """A copy of ``m`` whose initializers are ``change(name, array)`` (None: unchanged)."""
    out = onnx.ModelProto()
    out.CopyFrom(m)
    for t in out.graph.initializer:
        new = change(t.name, numpy_helper.to_array(t))
        if new is not None:
            t.CopyFrom(numpy_helper.from_array(np.asarray(new, dtype=numpy_helper.to_array(t).dtype), t.name))
    return out


# -- intermediate tensors: a zero-initialized classifier hides nothing ----------------------------


@pytest.fixture(scope="module")
def small_vit(tmp_path_factory) -> compiler.CompileResult:
    """torchvision's VisionTransformer, small; its head is zero-initialized, so its output is 0 whatever comes before."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    path = str(tmp_path_factory.mktemp("vit") / "vit.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(1, 3, 32, 32),), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    return compiler.compile(path, None, ratio=0.5, granularity=1)


def _corrupt_inner_weights(name: str, a: np.ndarray) -> np.ndarray | None:
    """Every weight matrix before the head, random (the fixed seed keeps it reproducible)."""
    if a.ndim < 2 or name.startswith("heads."):
        return None
    return np.random.default_rng(zlib.crc32(name.encode())).standard_normal(a.shape)


def test_zero_head_vit_verifies_on_intermediate_tensors(small_vit):
    v = small_vit.report.verification
    assert v["passed"] and v["reference_scale"] == 0.0  # the outputs prove nothing ...
    assert v["nodes_checked"] > 20 and v["worst_node"]  # ... the intermediate tensors do
    assert v["max_node_error"] <= 1e-4


def test_corrupted_vit_fails_verification(small_vit):
    bad = with_initializers(small_vit.model, _corrupt_inner_weights)
    corrupted = [t.name for t, u in zip(bad.graph.initializer, small_vit.model.graph.initializer, strict=True) if t != u]
    assert len(corrupted) >= 8
    with pytest.raises(compiler.VerificationError, match="worst intermediate tensor"):
        verify(small_vit, bad)


def test_intermediate_tensors_in_chunks(small_vit):
    """One run per tensor: the same tensors compared, and the corruption still found."""
    whole = verify(small_vit, small_vit.model)
    chunked = verify(small_vit, small_vit.model, chunk_bytes=1)
    assert chunked == whole
    with pytest.raises(compiler.VerificationError):
        verify(small_vit, with_initializers(small_vit.model, _corrupt_inner_weights), chunk_bytes=1)


def test_constant_outputs_and_nothing_else_to_compare_fail():
    """A single Conv with zero weights: its output is 0 whatever the input, and there is no intermediate tensor."""
    m = build("g (float[1,3,8,8] x) => (float[1,4,8,8] y) {\n  [c] y = Conv<pads=[1,1,1,1]>(x, w)\n}", {"w": np.zeros((4, 3, 3, 3), np.float32)})
    with pytest.raises(compiler.VerificationError, match="constant"):
        compiler.compile(m, None, ratio=0.5, granularity=1)


# -- the tolerance of each tensor follows the magnitudes along its path ---------------------------

SMALL_FROM_LARGE = """
g (float[1,4,6,6] x) => (float[1,2,6,6] y) {
  [c1] a = Conv<pads=[1,1,1,1]>(x, w1)
  [r1] h = Relu(a)
  [ca] za = Conv(h, wa)
  [cb] zb = Conv(h, wb)
  [s] y = Sub(za, zb)
}
"""


def _small_from_large() -> onnx.ModelProto:
    """Two large convolutions (|z| ~ 1e3) of nearly equal weights: their difference, the output, is ~1e-2."""
    rng = np.random.default_rng(0)
    wa = rng.standard_normal((2, 8, 1, 1)).astype(np.float32)
    inits = {"w1": (30 * rng.standard_normal((8, 4, 3, 3))).astype(np.float32), "wa": wa, "wb": (wa * (1 + 1e-5)).astype(np.float32)}
    return build(SMALL_FROM_LARGE, inits)


def test_small_output_of_large_values_verifies():
    """A difference of float32 rounding size in the large tensors (4 eps of their magnitude, as a different
    summation order gives) passes, though it is large next to the small output; a real one fails."""
    r = compiler.compile(_small_from_large(), None, ratio=0.5, granularity=1)
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] >= 4
    assert 0 < v["reference_scale"] < 0.1  # small, from tensors of magnitude ~1e3
    eps = float(np.finfo(np.float32).eps)
    rounding = with_initializers(r.model, lambda n, a: a * (1 + 4 * eps) if n == "wb" else None)
    ok = verify(r, rounding)
    assert ok["max_abs_error"] > 1e-4 * ok["reference_scale"]  # beyond rtol * max |output| alone
    wrong = with_initializers(r.model, lambda n, a: a * (1 + 1e-3) if n == "wb" else None)
    with pytest.raises(compiler.VerificationError, match="differs"):
        verify(r, wrong)


# -- NaN and inf ---------------------------------------------------------------------------------


def test_nan_at_the_same_places_compares_equal():
    """A NaN pixel of the input spreads through both models to the same positions: no difference."""
    m = build(CONV_RELU_CONV, CONV_INITS)
    x = inputs_for(m)["x"]
    x[0, 1, 3, 4] = np.nan
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    v = r.report.verification
    assert v["passed"] and v["max_abs_error"] < 1e-4 and v["nodes_checked"] >= 2


def test_nan_of_the_pruned_model_only_fails():
    m = build(CONV_RELU_CONV, CONV_INITS)
    r = compiler.compile(m, None, ratio=0.5, granularity=1)

    def nan_weight(name: str, a: np.ndarray) -> np.ndarray | None:
        if name != "w2":
            return None
        a = a.copy()
        a[0, 0, 1, 1] = np.nan
        return a

    with pytest.raises(compiler.VerificationError, match="inf"):
        verify(r, with_initializers(r.model, nan_weight))


class _NaNAt(nn.Module):
    """The pruned module, with one output value replaced (not a GraphModule: outputs are all that is compared)."""

    def __init__(self, inner: nn.Module, value: float) -> None:
        super().__init__()
        self.inner, self.value = inner, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x).clone()
        y[0, 0] = self.value
        return y


def _torch_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1)).eval()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_torch_non_finite_where_the_reference_is_finite_fails(value):
    x = torch.randn(1, 3, 8, 8)
    r = compiler.compile(_torch_net(), (x,), ratio=0.5, granularity=1)
    p = r.plan
    assert p is not None
    with pytest.raises(compiler.VerificationError):
        VerifyFX().call(r.traced, p.analysis, p.selection.pruned, _NaNAt(r.model, value), (x,))


def test_torch_nan_at_the_same_places_compares_equal():
    x = torch.randn(1, 3, 8, 8)
    r = compiler.compile(_torch_net(), (x,), ratio=0.5, granularity=1)
    p = r.plan
    assert p is not None
    x_nan = x.clone()
    x_nan[0, 1, 3, 4] = float("nan")
    res = VerifyFX().call(r.traced, p.analysis, p.selection.pruned, r.model, (x_nan,))
    assert res.passed and res.nodes_checked > 0


# -- a value the rewrite replaced: compared where comparable ---------------------------------------

CHANNEL_MEAN = """
g (float[1,3,8,8] x) => (float[1,5,8,8] y) {
  [c1] a = Conv<pads=[1,1,1,1]>(x, w1, b1)
  [r1] h = Relu(a)
  [mean] m = ReduceMean<axes=[1]>(h)
  [c2] z = Conv<pads=[1,1,1,1]>(h, w2, b2)
  [add] y = Add(z, m)
}
"""


def test_rescaled_mean_is_compared_under_its_name():
    """The rewrite renames the ReduceMean's output and rescales it with a Mul that takes the original name: that
    product is the original mean, compared with the masked reference's (a wrong factor shows there first)."""
    r = compiler.compile(build(CHANNEL_MEAN, CONV_INITS), None, ratio=0.5, granularity=1)
    assert r.report.verification["passed"]
    producers = {o: n.op_type for n in r.model.graph.node for o in n.output}
    assert producers["m"] == "Mul" and any(n.op_type == "ReduceMean" for n in r.model.graph.node)
    bad = with_initializers(r.model, lambda n, a: a * 1.01 if n.startswith("m_scale") else None)
    with pytest.raises(compiler.VerificationError, match="worst intermediate tensor m:"):
        verify(r, bad)
