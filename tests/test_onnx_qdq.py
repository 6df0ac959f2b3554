"""Quantized ONNX (QDQ format): int8 weights behind DequantizeLinear and activations behind
QuantizeLinear -> DequantizeLinear prune with their codes and per-channel scales / zero points sliced
together, and verify in ONNX Runtime; schemes prunec does not know are refused in one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from compiler import cli
from frontends.onnx import load_onnx
from frontends.onnx.quantized import MAX_FLIP_SHARE, compare_codes
from frontends.onnx.rewrite import RewriteONNX
from frontends.onnx.verify import VerifyONNX, masked_reference
from tests._onnx_helpers import consts, op_types, run

torch = pytest.importorskip("torch")
quantization = pytest.importorskip("onnxruntime.quantization")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = torch.nn.Conv2d(16, 8, 3)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(self.c3(x).mean((2, 3)))


class _Reader(quantization.CalibrationDataReader):
    """Eight calibration batches (seeds 100..107; the example inputs of the tests use other seeds)."""

    def __init__(self) -> None:
        self.it = iter([{"x": np.random.default_rng(100 + i).standard_normal((1, 3, 12, 12)).astype(np.float32)} for i in range(8)])

    def get_next(self):
        return next(self.it, None)


def _qdq_model(tmp_path, per_channel: bool, fmt: str = "QDQ") -> str:
    torch.manual_seed(0)
    net = _Net().eval()
    src, out = tmp_path / "float.onnx", tmp_path / f"q_{fmt}_{int(per_channel)}.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 12, 12),), str(src), opset_version=17, dynamo=False, input_names=["x"], output_names=["y"])
    quantization.quantize_static(
        str(src), str(out), _Reader(), quant_format=getattr(quantization.QuantFormat, fmt), per_channel=per_channel,
        weight_type=quantization.QuantType.QInt8, activation_type=quantization.QuantType.QUInt8,
    )  # fmt: skip
    return str(out)


def _feeds(seed: int = 7) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 3, 12, 12)).astype(np.float32)}


def _assert_one_line_error(code: int, err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if not ln.startswith("  [")]  # progress lines start with "  ["
    assert code == 2 and len(lines) == 1 and lines[0].startswith("prunec: error: ") and needle in lines[0], err


def _kept_rows(orig: np.ndarray, new: np.ndarray) -> list[int]:
    """The original row of each pruned row (int8 rows of 27+ codes: a chance match is not a concern)."""
    rows = []
    for r in new:
        hits = [k for k in range(len(orig)) if np.array_equal(orig[k], r)]
        assert len(hits) == 1, hits
        rows.append(hits[0])
    return rows


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qdq_model_prunes_with_codes_and_scales_sliced_together(tmp_path, per_channel):
    path = _qdq_model(tmp_path, per_channel)
    m = onnx.load(path)
    before = m.SerializeToString()
    r = compiler.compile(path, _feeds(), ratio=0.5, granularity=1)
    assert onnx.load(path).SerializeToString() == before
    new = r.model
    onnx.checker.check_model(new, full_check=True)
    assert op_types(new) == op_types(m)  # still quantized: every QuantizeLinear / DequantizeLinear kept
    c0, c1 = consts(m), consts(new)
    cols = None  # the kept input channels of each layer: the kept output rows of the one before
    for layer in ("c1", "c2", "c3"):
        codes, orig = c1[f"{layer}.weight_quantized"], c0[f"{layer}.weight_quantized"]
        assert codes.dtype == np.int8
        rows = _kept_rows(orig if cols is None else orig[:, cols], codes)
        if per_channel:  # the scales and zero points of the kept rows, in their order
            assert np.array_equal(c1[f"{layer}.weight_scale"], c0[f"{layer}.weight_scale"][rows])
            assert np.array_equal(c1[f"{layer}.weight_zero_point"], c0[f"{layer}.weight_zero_point"][rows])
        else:
            assert c1[f"{layer}.weight_scale"].shape == ()
        assert np.array_equal(c1[f"{layer}.bias_quantized"], c0[f"{layer}.bias_quantized"][rows])
        bias_scale = c0[f"{layer}.bias_quantized_scale"]
        assert np.array_equal(c1[f"{layer}.bias_quantized_scale"], bias_scale[rows] if bias_scale.size > 1 else bias_scale)
        cols = rows
    assert c1["c1.weight_quantized"].shape[0] == 8 and c1["c2.weight_quantized"].shape[1] == 8
    assert r.report.frozen_ops == []
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] > 0
    notes = r.report.settings["onnx"]["notes"]
    assert any(n.startswith("quantized activations:") for n in notes), notes
    assert r.report.macs_after < 0.5 * r.report.macs_before
    out = run(new, _feeds(3))[0]
    assert out.shape == (1, 4) and np.isfinite(out).all()


def test_removed_codes_hold_the_zero_point_in_the_reference(tmp_path):
    """Zeroing a removed channel of quantized codes means its zero point (which dequantizes to 0), not code 0:
    the conv before the head has uint8 codes with zero point != 0."""
    path = _qdq_model(tmp_path, per_channel=True)
    (zp,) = [int(numpy_helper.to_array(t)) for t in onnx.load(path).graph.initializer if t.name == "/c3/Conv_output_0_zero_point"]
    assert zp != 0
    r = compiler.compile(path, _feeds(), ratio=0.5, granularity=1)
    codes = "/c3/Conv_output_0_QuantizeLinear_Output"
    keep = r.plan.analysis.keep_mask(codes, 1, r.plan.selection.pruned)
    assert keep is not None and not keep.all()
    ref = masked_reference(r.traced, r.plan.analysis, r.plan.selection.pruned)
    ref.graph.output.append(helper.make_tensor_value_info(codes, TensorProto.UINT8, None))
    q = run(ref, _feeds())[-1]
    assert (q[:, ~keep] == zp).all() and not (q[:, keep] == zp).all()


@pytest.mark.parametrize("corrupt", ["weight_scale", "activation_zero_point"])
def test_verification_of_a_qdq_model_can_fail(tmp_path, corrupt):
    """A kept channel's weight scale swapped with another's (caught by the exact check), or an activation's zero
    point moved by 3 (caught only by the codes: the exact check bypasses activation quantizers)."""
    path = _qdq_model(tmp_path, per_channel=True)
    om = load_onnx(path, _feeds())
    r = compiler.compile(path, _feeds(), ratio=0.5, granularity=1)
    p = r.plan
    bad = onnx.ModelProto()
    bad.CopyFrom(RewriteONNX().call(om, p.analysis, p.selection.pruned).model)
    if corrupt == "weight_scale":
        t = next(t for t in bad.graph.initializer if t.name == "c2.weight_scale")
        s = numpy_helper.to_array(t).copy()
        s[[0, 1]] = s[[1, 0]] * np.float32(1.5)
    else:
        t = next(t for t in bad.graph.initializer if t.name == "/Relu_1_output_0_zero_point")
        s = (numpy_helper.to_array(t).astype(np.int32) + 3).astype(np.uint8)
    t.CopyFrom(numpy_helper.from_array(s, t.name))
    with pytest.raises(compiler.VerificationError, match="differs"):
        VerifyONNX().call(om, p.analysis, p.selection.pruned, bad)


def test_code_comparison_allows_one_step_at_a_few_positions_only():
    ref = {"q": np.full((1, 4, 50, 50), 100, np.uint8)}
    kept = {"q": [None, np.array([0, 2]), None, None]}
    got = ref["q"][:, [0, 2]].copy()
    assert compare_codes(ref, {"q": got}, kept).passed
    got.reshape(-1)[:10] += 1  # 10 of 5000 codes one step off: values on a rounding boundary
    c = compare_codes(ref, {"q": got}, kept)
    assert c.passed and c.flips == 10 and c.max_step == 1
    got.reshape(-1)[0] += 1  # two steps: no rounding difference does that
    assert not compare_codes(ref, {"q": got}, kept).passed
    many = ref["q"][:, [0, 2]].copy()
    many.reshape(-1)[: int(MAX_FLIP_SHARE * many.size) + 5] += 1
    assert not compare_codes(ref, {"q": many}, kept).passed


def test_qoperator_format_is_refused_naming_the_op(tmp_path, capsys):
    path = _qdq_model(tmp_path, per_channel=False, fmt="QOperator")
    with pytest.raises(compiler.UnsupportedModelError, match=r"QLinearConv.*QDQ"):
        compiler.compile(path, _feeds(), ratio=0.5)
    out = tmp_path / "out.onnx"
    code = cli.main(["prune", path, "-o", str(out)])
    _assert_one_line_error(code, capsys.readouterr().err, "QLinearConv")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(["float.onnx", "q_QOperator_0.onnx"])


def _blockwise_model() -> onnx.ModelProto:
    """A conv whose int8 weight is dequantized block-wise (opset 21, block_size 2 along the input channels)."""
    rng = np.random.default_rng(0)
    codes = numpy_helper.from_array(rng.integers(-100, 100, (8, 4, 1, 1)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.full((8, 2, 1, 1), 0.01, np.float32), "ws")
    w2 = numpy_helper.from_array(rng.standard_normal((2, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], name="dq", axis=1, block_size=2),
        helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
        helper.make_node("Relu", ["a"], ["h"], name="r"),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="c2"),
    ]
    g = helper.make_graph(
        nodes, "blockwise", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])], [codes, scale, w2],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(m, full_check=True)
    return m


def test_blockwise_quantization_is_refused_naming_the_node(tmp_path, capsys):
    m = _blockwise_model()
    with pytest.raises(compiler.UnsupportedModelError, match=r"'dq' \(DequantizeLinear\): block-wise"):
        compiler.compile(m, ratio=0.5)
    src, out = tmp_path / "bw.onnx", tmp_path / "out.onnx"
    onnx.save(m, str(src))
    code = cli.main(["prune", str(src), "-o", str(out)])
    _assert_one_line_error(code, capsys.readouterr().err, "block-wise")
    assert not out.exists()


class _Mixer(torch.nn.Module):
    """Linear layers (Gemm / MatMul), a residual add, a depthwise Conv1d and a mean: a token-mixer-like block."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)
        self.dw = torch.nn.Conv1d(32, 32, 3, padding=1, groups=32)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        y = x + self.b(torch.nn.functional.gelu(self.a(x)))
        y = self.dw(y.transpose(1, 2)).transpose(1, 2)
        return self.head(y.mean(1))


class _TokenReader(quantization.CalibrationDataReader):
    def __init__(self) -> None:
        self.it = iter([{"x": np.random.default_rng(200 + i).standard_normal((1, 10, 32)).astype(np.float32)} for i in range(8)])

    def get_next(self):
        return next(self.it, None)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_qdq_linear_layers_residual_and_depthwise(tmp_path, per_channel):
    torch.manual_seed(0)
    src, out = tmp_path / "mixer.onnx", tmp_path / "mixer_qdq.onnx"
    torch.onnx.export(_Mixer().eval(), (torch.randn(1, 10, 32),), str(src), opset_version=17, dynamo=False, input_names=["x"])
    quantization.quantize_static(str(src), str(out), _TokenReader(), quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel)
    feeds = {"x": np.random.default_rng(9).standard_normal((1, 10, 32)).astype(np.float32)}
    r = compiler.compile(str(out), feeds, ratio=0.5, granularity=1)
    assert r.report.frozen_ops == [] and r.report.verification["passed"]
    assert r.report.params_after < 0.6 * r.report.params_before
    c = consts(r.model)
    codes = {k: v for k, v in c.items() if k.endswith("_quantized")}
    assert codes and all(v.dtype.kind in "iu" for v in codes.values())
    assert any(v.shape != consts(onnx.load(str(out)))[k].shape for k, v in codes.items())
    assert op_types(r.model) == op_types(onnx.load(str(out)))


def test_changed_quantized_weights_are_quantized_again_on_the_kept_scales(tmp_path):
    """A weight whose value changed before the rewrite (a criterion's compensation) is not the original sliced: its
    codes are quantized again with the kept channels' scales and zero points, within half a step of the new value."""
    path = _qdq_model(tmp_path, per_channel=True)
    om = load_onnx(path, _feeds())
    r = compiler.compile(path, _feeds(), ratio=0.5, granularity=1)
    p = r.plan
    name = "c2.weight_DequantizeLinear_Output"
    changed = om.static[name] * np.float32(0.9)
    om.static[name] = changed
    res = RewriteONNX().call(om, p.analysis, p.selection.pruned)
    assert any("quantized again" in n for n in res.notes)
    c = consts(res.model)
    keep = [p.analysis.keep_mask(name, d, p.selection.pruned) for d in range(4)]
    want = changed[np.ix_(*[np.flatnonzero(k) if k is not None else np.arange(s) for k, s in zip(keep, changed.shape, strict=True)])]
    scale, zp = c["c2.weight_scale"], c["c2.weight_zero_point"]
    got = (c["c2.weight_quantized"].astype(np.float32) - zp.reshape(-1, 1, 1, 1)) * scale.reshape(-1, 1, 1, 1)
    assert got.shape == want.shape and c["c2.weight_quantized"].dtype == np.int8
    assert np.all(np.abs(got - want) <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)
    assert not np.array_equal(c["c2.weight_quantized"], consts(onnx.load(path))["c2.weight_quantized"][np.ix_(
        *[np.flatnonzero(k) if k is not None else np.arange(s) for k, s in zip(keep, changed.shape, strict=True)])])


def test_torchvision_resnet18_qdq_prunes_and_verifies(tmp_path):
    """A real network (residual adds between quantized activations, folded batch norms, per-channel int8 weights)."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    src, out = tmp_path / "resnet18.onnx", tmp_path / "resnet18_qdq.onnx"
    net = torchvision.models.resnet18(weights=None).eval()
    torch.onnx.export(net, (torch.randn(1, 3, 64, 64),), str(src), opset_version=17, dynamo=False, input_names=["x"])

    class Images(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"x": np.random.default_rng(400 + i).standard_normal((1, 3, 64, 64)).astype(np.float32)} for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    quantization.quantize_static(str(src), str(out), Images(), quant_format=quantization.QuantFormat.QDQ, per_channel=True)
    feeds = {"x": np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    r = compiler.compile(str(out), feeds, ratio=0.5)
    assert r.report.frozen_ops == [] and r.report.verification["passed"] and r.report.verification["nodes_checked"] > 50
    assert r.report.macs_after < 0.5 * r.report.macs_before
    assert op_types(r.model) == op_types(onnx.load(str(out)))
    assert any(n.startswith("quantized activations: 33 code tensors") for n in r.report.settings["onnx"]["notes"])
