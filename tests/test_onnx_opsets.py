"""ONNX files as other toolchains write them: every opset from 7, IR version 3, ``-1`` dims, stale ``value_info``.

A model below opset 13 is upgraded with ``onnx.version_converter`` on a private copy, pruned, and
written at its own opset where that can be done and checked, else at the upgraded one; the report's
``settings["onnx"]["notes"]`` says which (``written at opset N``). Each case is checked structurally
(the full checker on the written model, the opset the note names, the input untouched, I/O names kept)
and numerically (the verification in ONNX Runtime passed; the written model runs with the original's
output shapes).
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from compiler.cli import main
from frontends.onnx.proto import onnx_opset
from tests._onnx_helpers import consts, independent_reference, rel_err, run

RNG_SEED = 0


# -- building models ---------------------------------------------------------------------------------------


def _weights(**shapes: tuple[int, ...]) -> list[onnx.TensorProto]:
    """Random float32 initializers (unique values) by name."""
    rng = np.random.default_rng(RNG_SEED)
    out = []
    for name, s in shapes.items():
        arr = rng.standard_normal(s).astype(np.float32)
        if name.startswith("var"):
            arr = np.abs(arr) + 0.5
        out.append(numpy_helper.from_array(arr, name))
    return out


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    opset: int,
    x: list | None = None,
    y: list | None = None,
    ir: int | None = None,
    inits_as_inputs: bool = False,
    value_info: list[onnx.ValueInfoProto] | None = None,
) -> onnx.ModelProto:
    """A one-input, one-output graph as an exporter of that opset writes it (IR version from the opset by default;
    under IR 3 every initializer is a graph input too)."""
    if ir is None:
        ir = helper.find_min_ir_version_for([helper.make_opsetid("", opset)])
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, x or [1, 3, 8, 8])]
    if inits_as_inputs or ir < 4:
        ins += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)]
    g = helper.make_graph(nodes, "g", ins, outs, inits, value_info=value_info or [])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir)
    onnx.checker.check_model(m, full_check=True)
    return m


class _Net:
    """A small CNN with a residual add and a linear head (torch), exported with the TorchScript exporter."""

    @staticmethod
    def export(opset: int) -> onnx.ModelProto:
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
                self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
                self.c3 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
                self.fc = nn.Linear(32, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                h = torch.relu(self.b1(self.c1(x)))
                h = torch.relu(self.b2(self.c2(h)) + h)
                h = torch.relu(self.c3(h))
                return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))

        torch.manual_seed(0)
        net = Net().eval()
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (torch.randn(1, 3, 16, 16),), f, opset_version=opset, dynamo=False, input_names=["x"])
        m = onnx.load_from_string(f.getvalue())
        assert onnx_opset(m) == opset
        return m


# -- checks ------------------------------------------------------------------------------------------------


def _written_opset(result: compiler.CompileResult) -> int:
    """The output opset the report names; it must be the written model's."""
    notes = result.report.settings["onnx"]["notes"]
    said = [int(k) for note in notes for k in re.findall(r"written at opset (\d+)", note)]
    assert len(said) == 1, notes
    assert onnx_opset(result.model) == said[0], (notes, onnx_opset(result.model))
    return said[0]


def _compile(m: onnx.ModelProto, inputs=None, runs: bool = True, **kw) -> compiler.CompileResult:
    """compile at ratio 0.5, granularity 1, with the structural and numerical checks of every case (``runs``: the
    original runs in ONNX Runtime on the example inputs)."""
    kw.setdefault("ratio", 0.5)
    kw.setdefault("granularity", 1)
    before = m.SerializeToString()
    r = compiler.compile(m, inputs, **kw)
    assert m.SerializeToString() == before, "the input model was modified"
    new = r.model
    assert isinstance(new, onnx.ModelProto)
    onnx.checker.check_model(new, full_check=True)
    inits, new_inits = {t.name for t in m.graph.initializer}, {t.name for t in new.graph.initializer}
    assert [vi.name for vi in new.graph.input if vi.name not in new_inits] == [vi.name for vi in m.graph.input if vi.name not in inits]
    assert [vi.name for vi in new.graph.output] == [vi.name for vi in m.graph.output]
    v = r.report.verification
    assert v is not None and v["passed"] is True, v
    feeds = r.traced.inputs
    if runs:
        assert [o.shape for o in run(new, feeds)] == [o.shape for o in run(m, feeds)]
    else:
        run(new, feeds)
    assert r.report.params_after < r.report.params_before, "nothing was pruned"
    return r


def _bn(name: str, x: str, out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, f"s_{name}", f"b_{name}", f"mean_{name}", f"var_{name}"], [out], name=name, **attrs)


def _bn_weights(name: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"s_{name}": (c,), f"b_{name}": (c,), f"mean_{name}": (c,), f"var_{name}": (c,)}


# -- 1. torch exports at old opsets ------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [9, 11, 12])
def test_torch_export_at_old_opset_prunes_and_verifies(opset):
    m = _Net.export(opset)
    r = _compile(m)
    assert _written_opset(r) == opset  # the upgrade changed no node: the pruned model goes back to the user's opset
    assert r.model.ir_version == m.ir_version
    assert r.report.macs_after < r.report.macs_before
    # independently of prunec: the original with the removed weights zeroed computes what the pruned model does
    feeds = r.traced.inputs
    for want, got in zip(independent_reference(m, r.model, feeds), run(r.model, feeds, optimize=False), strict=True):
        assert rel_err(want, got) < 1e-5


# -- 2. graphs in the shapes older exporters write -----------------------------------------------------------


def test_reshape_from_a_shape_gather_unsqueeze_concat_chain():
    """Flatten as opset-9 exporters wrote it: Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["h"], name="relu1"),
        helper.make_node("Shape", ["h"], ["sh"], name="shape"),
        helper.make_node("Gather", ["sh", "zero"], ["n"], name="gather", axis=0),
        helper.make_node("Unsqueeze", ["n"], ["n1"], name="unsqueeze", axes=[0]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["h", "target"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    inits = _weights(w1=(8, 3, 3, 3), b1=(8,), w2=(4, 8 * 64), b2=(4,))
    inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([-1], np.int64), "minus1")]
    m = _model(nodes, inits, 9, y=[1, 4])
    r = _compile(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 3, 3) and c["w2"].shape == (4, 4 * 64)
    assert _written_opset(r) in (9, 13)  # 13 with onnx 1.23: the Unsqueeze upgrade rewrote a node


@pytest.mark.parametrize("form", ["upsample7_attr", "upsample9", "resize10", "resize11_scales", "resize11_sizes", "resize11_roi"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_and_resize_of_older_opsets(form, mode):
    """conv -> Upsample / Resize (x2) -> conv: the channels pass through the resize and prune."""
    f32 = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    extra: list[onnx.TensorProto] = []
    attrs: dict = {"mode": mode}
    if form == "upsample7_attr":
        opset, rs = 7, helper.make_node("Upsample", ["h"], ["u"], name="up", scales=[1.0, 1.0, 2.0, 2.0], **attrs)
    elif form == "upsample9":
        opset, rs = 9, helper.make_node("Upsample", ["h", "sc"], ["u"], name="up", **attrs)
        extra = [f32("sc", [1, 1, 2, 2])]
    elif form == "resize10":
        opset, rs = 10, helper.make_node("Resize", ["h", "sc"], ["u"], name="up", **attrs)
        extra = [f32("sc", [1, 1, 2, 2])]
    elif form == "resize11_scales":
        opset, rs = 11, helper.make_node("Resize", ["h", "roi", "sc"], ["u"], name="up", **attrs)
        extra = [f32("roi", []), f32("sc", [1, 1, 2, 2])]
    elif form == "resize11_sizes":
        opset = 11
        rs = helper.make_node("Resize", ["h", "roi", "sc", "sz"], ["u"], name="up", coordinate_transformation_mode="asymmetric", **attrs)
        extra = [f32("roi", []), f32("sc", []), numpy_helper.from_array(np.array([1, 8, 16, 16], np.int64), "sz")]
    else:  # a roi that crops the channels (tf_crop_and_resize): the resize is frozen, with its reason, the rest prunes
        opset = 11
        rs = helper.make_node("Resize", ["h", "roi", "sc"], ["u"], name="up", coordinate_transformation_mode="tf_crop_and_resize", **attrs)
        extra = [f32("roi", [0, 0, 0, 0, 1, 0.5, 1, 1]), f32("sc", [1, 1, 2, 2])]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a0"], ["h0"], name="relu0"),
        helper.make_node("Conv", ["h0", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["h"], name="relu1"),
        rs,
        helper.make_node("Conv", ["u", "w2"], ["y"], name="conv2"),
    ]
    m = _model(nodes, _weights(w0=(8, 3, 3, 3), w1=(8, 8, 3, 3), w2=(4, 8, 1, 1)) + extra, opset, y=[1, 4, 16, 16])
    r = _compile(m)
    c = consts(r.model)
    assert c["w0"].shape == (4, 3, 3, 3)
    if form == "resize11_roi":
        assert c["w1"].shape == (8, 4, 3, 3)  # frozen at the resize
        assert [f.target for f in r.report.frozen_ops if f.name == "up"] == ["Resize"], r.report.frozen_ops
    else:
        assert c["w1"].shape == (4, 4, 3, 3) and c["w2"].shape == (4, 4, 1, 1)
    if opset == 11:  # opset 11's Resize is opset 13's: the same nodes go back
        assert _written_opset(r) == 11
    else:  # Upsample / opset-10 Resize became an opset-13 Resize, which the converter does not take back
        assert _written_opset(r) == 13


@pytest.mark.parametrize("opset", [7, 9, 10])
def test_pad_with_pads_as_an_attribute(opset):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Relu", ["a"], ["h"], name="relu1"),
        helper.make_node("Pad", ["h"], ["p"], name="pad", pads=[0, 0, 1, 1, 0, 0, 1, 1], mode="constant"),
        helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2"),
    ]
    m = _model(nodes, _weights(w1=(8, 3, 1, 1), w2=(4, 8, 3, 3)), opset, y=[1, 4, 8, 8])
    r = _compile(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 1, 1) and c["w2"].shape == (4, 4, 3, 3)
    assert _written_opset(r) in (opset, 13)  # 13 with onnx 1.23: its converter has no opset-12 Relu


@pytest.mark.parametrize("opset", [7, 8])
def test_batch_norm_with_the_spatial_attribute(opset):
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        _bn("bn1", "a", "b", spatial=1, epsilon=1e-3),
        helper.make_node("Relu", ["b"], ["h"], name="relu1"),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"),
    ]
    m = _model(nodes, _weights(w1=(8, 3, 3, 3), **_bn_weights("bn1", 8), w2=(4, 8, 1, 1)), opset, y=[1, 4, 8, 8], ir=3, inits_as_inputs=True)
    r = _compile(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 3, 3) and c["var_bn1"].shape == (4,) and c["w2"].shape == (4, 4, 1, 1)
    if _written_opset(r) == 13:  # the upgrade dropped `spatial`; IR 3 is IR 7 at opset 13, weights inputs no more
        assert r.model.ir_version == 7 and [vi.name for vi in r.model.graph.input] == ["x"]


def test_batch_norm_per_activation_is_refused_in_one_line():
    """spatial=0 (statistics per activation) has no opset-9 form: the converter's failure names the op."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "s", "b", "mean", "var"], ["y"], name="bn1", spatial=0),
    ]
    shapes = {"s": (8, 8, 8), "b": (8, 8, 8), "mean": (8, 8, 8), "var": (8, 8, 8)}
    m = _model(nodes, _weights(w1=(8, 3, 3, 3), **shapes), 7, y=[1, 8, 8, 8])
    with pytest.raises(compiler.UnsupportedModelError) as info:
        compiler.compile(m, ratio=0.5)
    msg = str(info.value)
    assert "\n" not in msg and "BatchNormalization" in msg, msg


# -- 3. IR version 3 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [9, 13])
def test_ir3_weights_from_constant_of_shape_and_constant(opset):
    """IR 3 (every initializer a graph input); conv1's weight is computed (ConstantOfShape + Add), its bias a Constant."""
    bias = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "")
    nodes = [
        helper.make_node("Constant", [], ["wshape"], name="wshape", value=numpy_helper.from_array(np.array([8, 3, 3, 3], np.int64), "")),
        helper.make_node("ConstantOfShape", ["wshape"], ["wzero"], name="zeros", value=numpy_helper.from_array(np.array([0.0], np.float32), "")),
        helper.make_node("Add", ["wzero", "w1_raw"], ["conv1_w_0"], name="w1_add"),
        helper.make_node("Constant", [], ["conv1_b_0"], name="b1", value=bias),
        helper.make_node("Conv", ["x", "conv1_w_0", "conv1_b_0"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["h"], name="relu1"),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"),
    ]
    m = _model(nodes, _weights(w1_raw=(8, 3, 3, 3), w2=(4, 8, 1, 1)), opset, y=[1, 4, 8, 8], ir=3, inits_as_inputs=True)
    r = _compile(m)
    new = r.model
    onnx.checker.check_model(new, full_check=True)
    if new.ir_version < 4:
        inputs = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in new.graph.input}
        for t in new.graph.initializer:
            assert inputs.get(t.name) == list(t.dims), t.name
    assert consts(new)["w2"].shape == (4, 4, 1, 1)
    assert (_written_opset(r) if opset < 13 else onnx_opset(new)) == opset
    assert new.ir_version == 3


# -- 4. declarations other exporters write ------------------------------------------------------------------


FCN = [
    helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
    helper.make_node("Relu", ["a"], ["h"], name="relu1"),
    helper.make_node("GlobalAveragePool", ["h"], ["p"], name="gap"),
    helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
    helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1),
]


@pytest.mark.parametrize("example", [(1, 3, 48, 192), (2, 3, 8, 8)])
def test_minus_one_dims_are_dynamic(example):
    m = _model(FCN, _weights(w1=(8, 3, 3, 3), w2=(4, 8)), 13, x=[-1, 3, "?", "?"], y=[-1, 4])
    x = np.random.default_rng(1).standard_normal(example).astype(np.float32)
    r = _compile(m, (x,))
    assert consts(r.model)["w2"].shape == (4, 4)
    assert [d.dim_value or d.dim_param for d in r.model.graph.input[0].type.tensor_type.shape.dim][1:] == [3, "?", "?"]


def test_zero_dims_are_dynamic():
    m = _model(FCN, _weights(w1=(8, 3, 3, 3), w2=(4, 8)), 13, x=[0, 3, 8, 8], y=[0, 4])
    r = _compile(m, (np.ones((2, 3, 8, 8), np.float32),), runs=False)  # ONNX Runtime reads the 0 as fixed
    assert consts(r.model)["w2"].shape == (4, 4)
    assert not r.model.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")


def test_minus_one_dims_without_an_example_ask_for_one():
    m = _model(FCN, _weights(w1=(8, 3, 3, 3), w2=(4, 8)), 13, x=[-1, 3, 8, 8], y=[-1, 4])
    with pytest.raises(compiler.InvalidArgumentError, match="dynamic"):
        compiler.compile(m, ratio=0.5)


@pytest.mark.parametrize("opset", [9, 13])
@pytest.mark.parametrize("stale", [("f", [1, 999]), ("a", [1, 8, 7, 7])], ids=["reshape", "conv"])
def test_stale_value_info_is_a_hint(opset, stale):
    """Stored shapes that contradict shape inference (a Reshape's output, a conv's) are dropped, not believed."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["h"], name="relu1"),
        helper.make_node("Reshape", ["h", "target"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], name="fc", transB=1),
    ]
    inits = _weights(w1=(8, 3, 3, 3), w2=(4, 8 * 64), b2=(4,)) + [numpy_helper.from_array(np.array([1, -1], np.int64), "target")]
    m = _model(nodes, inits, opset, y=[1, 4])
    m.graph.value_info.append(helper.make_tensor_value_info(stale[0], TensorProto.FLOAT, stale[1]))
    with pytest.raises(onnx.shape_inference.InferenceError):
        onnx.shape_inference.infer_shapes(m, strict_mode=True)
    run(m, {"x": np.zeros((1, 3, 8, 8), np.float32)})
    r = _compile(m)
    assert consts(r.model)["w2"].shape == (4, 4 * 64)


# -- bad input ---------------------------------------------------------------------------------------------


def _opset6() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"), helper.make_node("Relu", ["a"], ["y"], name="relu")]
    return _model(nodes, _weights(w1=(8, 3, 1, 1)), 6, y=[1, 8, 8, 8], ir=3)


def test_opset_6_is_refused_in_one_line():
    with pytest.raises(compiler.UnsupportedModelError) as info:
        compiler.compile(_opset6(), ratio=0.5)
    msg = str(info.value)
    assert "\n" not in msg and "opset 6" in msg, msg


@pytest.mark.parametrize("case", ["opset6", "bn_per_activation"])
def test_cli_refuses_with_exit_2_and_writes_nothing(case, tmp_path, capsys):
    if case == "opset6":
        m, needle = _opset6(), "opset 6"
    else:
        nodes = [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["a", "s", "b", "mean", "var"], ["y"], name="bn1", spatial=0),
        ]
        shapes = {"s": (8, 8, 8), "b": (8, 8, 8), "mean": (8, 8, 8), "var": (8, 8, 8)}
        m, needle = _model(nodes, _weights(w1=(8, 3, 3, 3), **shapes), 7, y=[1, 8, 8, 8]), "BatchNormalization"
    src = tmp_path / "in.onnx"
    onnx.save(m, str(src))
    before = src.read_bytes()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = main(["prune", str(src), "-o", str(out_dir / "pruned.onnx")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("  [")]  # progress lines start with "  ["
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("prunec: error: ") and needle in lines[0], err
    assert "Traceback" not in err
    assert list(out_dir.iterdir()) == []
    assert src.read_bytes() == before


def test_cli_writes_an_old_opset_model(tmp_path, capsys):
    src = tmp_path / "in.onnx"
    onnx.save(_Net.export(11), str(src))
    out = tmp_path / "out.onnx"
    code = main(["prune", str(src), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    written = onnx.load(str(out))
    onnx.checker.check_model(written, full_check=True)
    assert onnx_opset(written) == 11


def test_a_contradicted_output_shape_that_onnx_runtime_runs_is_declared_as_computed():
    """The declared output [1, 4, 8, 10] contradicts the ops ([1, 4, 8, 8]); ONNX Runtime runs the model all the same."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["h"], name="relu1"),
        helper.make_node("Conv", ["h", "w2"], ["y"], name="conv2"),
    ]
    m = _model(nodes, _weights(w1=(8, 3, 3, 3), w2=(4, 8, 1, 1)), 13, y=[1, 4, 8, 8])
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 10
    r = _compile(m)
    assert [d.dim_value for d in r.model.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 8, 8]
    assert any("output 'y' is declared [1, 4, 8, 10]" in n for n in r.report.settings["onnx"]["notes"])


def test_a_contradicted_output_shape_that_onnx_runtime_cannot_run_is_refused():
    """conv2 reads 8 channels with a weight for 3: ONNX Runtime makes a session but cannot run it."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Conv", ["a", "w1"], ["y"], name="conv2"),
    ]
    m = _model(nodes, _weights(w1=(8, 3, 1, 1)), 13, y=[1, 8, 8, 8])
    m.graph.output[0].type.tensor_type.shape.dim[3].dim_value = 10
    with pytest.raises(compiler.UnsupportedModelError, match="inconsistent") as info:
        compiler.compile(m, ratio=0.5)
    assert "\n" not in str(info.value)


def test_the_converter_takes_the_pruned_model_back_down():
    """Conv and MaxPool have the same definition at opsets 12 and 13: onnx.version_converter goes back by itself."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p", "w2"], ["y"], name="conv2"),
    ]
    m = _model(nodes, _weights(w1=(8, 3, 3, 3), w2=(4, 8, 1, 1)), 12, y=[1, 4, 4, 4])
    r = _compile(m)
    assert _written_opset(r) == 12
    assert any("onnx.version_converter took the pruned model back" in n for n in r.report.settings["onnx"]["notes"])
    assert consts(r.model)["w2"].shape == (4, 4, 1, 1)
