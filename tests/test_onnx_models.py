"""torchvision models exported to ONNX (TorchScript and dynamo exporters), pruned at ratio 0.5.

Each pruned model must pass ``onnx.checker`` with full_check, run in ONNX Runtime
with the same output shape, keep under 0.6x of the input's weight bytes, pass the
verification against the masked original, and cost exactly the MACs its plan
predicted (``compile`` re-lowers the pruned model and checks). Where the export
keeps the network's structure (resnet, mobilenet), the MACs after pruning equal
those of the PyTorch path on the same model. The random architectures of
test_random_arch, exported, are checked against an independent reference too.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import compiler
from tests._onnx_helpers import independent_reference, prune_onnx, rel_err, run
from tests.test_random_arch import RandomNet, policies
from tests.test_random_arch import blocks as random_blocks

SIZE = 64
# dead shape computations (Shape -> Gather -> ... -> Slice bounds) the rewrite may replace by constants
# (and attention's 1/sqrt(head size) read off a shape: Shape -> Slice -> Cast -> Sqrt -> Div, kept as its original value)
SHAPE_OPS = ("Shape", "Gather", "Unsqueeze", "Concat", "Add", "Div", "Mul", "Constant", "Cast", "Slice", "Squeeze", "Sqrt")


def export(name: str, exporter: str, path: str, size: int = SIZE, dynamic_batch: bool = False) -> str:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2 if dynamic_batch else 1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            kw = {"dynamic_axes": {"x": {0: "N"}, "y": {0: "N"}}} if dynamic_batch else {}
            torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"], **kw)
        else:
            kw = {"dynamic_shapes": ({0: torch.export.Dim("N", min=1, max=64)},)} if dynamic_batch else {}
            try:
                torch.onnx.export(model, (x,), path, dynamo=True, opset_version=18, input_names=["x"], output_names=["y"], **kw)
            except Exception as exc:  # pragma: no cover - depends on the torch build
                pytest.skip(f"the dynamo ONNX exporter fails in this environment: {type(exc).__name__}: {exc}")
    return path


def weight_bytes(m: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in m.graph.initializer) + sum(
        n.attribute[0].t.ByteSize() for n in m.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"
    )


def check_exported(name: str, exporter: str, tmp_path, size: int = SIZE) -> compiler.CompileResult:
    path = export(name, exporter, str(tmp_path / f"{name}.onnx"), size)
    orig = onnx.load(path)
    r = prune_onnx(path, ratio=0.5, granularity=8, removed_ok=SHAPE_OPS)
    assert r.report.verification["passed"] and r.report.verification["max_abs_error"] <= r.report.verification["tolerance"]
    assert weight_bytes(r.model) < 0.6 * weight_bytes(orig)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    assert run(r.model, {orig.graph.input[0].name: x})[0].shape == run(orig, {orig.graph.input[0].name: x})[0].shape
    assert r.report.macs_ratio < 0.6
    return r


EXPORTERS = ["torchscript", "dynamo"]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_exported_model_matches_the_torch_path(name, exporter, tmp_path):
    r = check_exported(name, exporter, tmp_path)
    model = torchvision.models.get_model(name, weights=None).eval()
    t = compiler.compile(model, (torch.randn(1, 3, SIZE, SIZE),), ratio=0.5, granularity=8, verify=False)
    assert r.report.macs_after == t.report.macs_after and r.report.macs_before == t.report.macs_before
    assert len([g for g in r.report.groups if g.channels_after < g.channels_before]) == len(
        [g for g in t.report.groups if g.channels_after < g.channels_before]
    )


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_exported_shufflenet(exporter, tmp_path):
    """Channel shuffle (Reshape/Transpose/Reshape) and chunk (Slice from Shape arithmetic, or Split)."""
    r = check_exported("shufflenet_v2_x1_0", exporter, tmp_path)
    assert not r.report.frozen_ops


@pytest.mark.parametrize(
    "name,exporter",
    [
        ("resnet18", "torchscript"),
        ("shufflenet_v2_x1_0", "torchscript"),  # chunk bounds computed from Shape at run time
        pytest.param("shufflenet_v2_x1_0", "dynamo", marks=pytest.mark.slow),
        pytest.param("convnext_tiny", "dynamo", marks=pytest.mark.slow),
    ],
)
def test_dynamic_batch_export(name, exporter, tmp_path):
    path = export(name, exporter, str(tmp_path / "r.onnx"), dynamic_batch=True)
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    r = prune_onnx(path, (x,), ratio=0.5, granularity=8, removed_ok=SHAPE_OPS)
    assert r.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    x3 = np.random.default_rng(1).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    assert r(x3).shape == (3, 1000)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize(
    "name",
    ["densenet121", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small", "regnet_y_400mf", "googlenet", "resnet50"],
)
def test_exported_model_sweep(name, exporter, tmp_path):
    check_exported(name, exporter, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_exported_vit_prunes_the_mlps(exporter, tmp_path):
    """The MLP hidden dims prune; so do the head dims, where the exporter reads the head size off a Shape for
    attention's scale (kept at its original value) and for reshapes (replaced by constants once stale)."""
    path = export("vit_b_16", exporter, str(tmp_path / "vit.onnx"), size=224)
    # the class token's Expand is computed from constants only: it becomes one sliced initializer; the shape
    # computations of stale reshape targets (Mod, Reshape of shape vectors) go with them
    r = prune_onnx(path, ratio=0.5, granularity=8, removed_ok=SHAPE_OPS + ("ConstantOfShape", "Equal", "Where", "Expand", "Mod", "Reshape"))
    mlp = [g for g in r.report.groups if g.channels_before == 3072]
    assert len(mlp) == 12 and all(g.channels_after == 1536 for g in mlp)
    assert not any(g.frozen for g in r.report.groups if g.channels_before != 1000)  # only the classifier's outputs
    assert r.report.macs_ratio < 0.6, r.report.macs_ratio


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=random_blocks, head=st.sampled_from(["flatten", "mean"]), policy=policies, seed=st.integers(0, 2**16))
def test_random_architectures_exported(blocks, head, policy, seed, tmp_path_factory):
    """The random networks of test_random_arch, exported (TorchScript) and pruned in ONNX."""
    torch.manual_seed(seed)
    m = RandomNet(blocks, head)
    with torch.no_grad():  # non-trivial norm statistics (folded into the convs by the exporter)
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.normal_()
        for prm in m.parameters():  # constant initializations (PReLU's 0.25, norm scales) would be ambiguous
            if prm.numel() > 1 and bool((prm == prm.reshape(-1)[0]).all()):
                prm.normal_()
    m.eval()
    path = str(tmp_path_factory.mktemp("rand") / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(2, 3, 8, 8),), path, dynamo=False, opset_version=17)
    r = prune_onnx(path, removed_ok=SHAPE_OPS, **policy)
    feeds = {k: np.random.default_rng(seed).standard_normal(v.shape).astype(np.float32) for k, v in r.traced.inputs.items()}
    got = run(r.model, feeds, optimize=False)[0]
    assert rel_err(independent_reference(onnx.load(path), r.model, feeds)[0], got) < 1e-4
