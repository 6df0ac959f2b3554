"""The ops of real exported models: Resize in every mode (tf_crop_and_resize included), ConvTranspose groups
and depthwise, the activations exporters write, weights held by Constant nodes, If/Loop subgraphs. Each prunes
(or freezes exactly what it must, named in the report) and verifies at node level in ONNX Runtime."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
from tests._onnx_helpers import build, consts, independent_reference, prune_onnx, rel_err, run


def _check(m: onnx.ModelProto, r: compiler.CompileResult, tol: float = 1e-5) -> None:
    """Node-level verification ran, and the pruned model equals an independently built masked original."""
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] > 0, v
    feeds = r.traced.inputs
    for a, b in zip(independent_reference(m, r.model, feeds), run(r.model, feeds, optimize=False), strict=True):
        assert rel_err(a, b) < tol


CONV_RESIZE_CONV = """
g (float[1,3,5,5] x) => (float[1,4,10,10] y) {{
  [c1] a = Conv(x, w1, b1)
  [rz] d = Resize<{attrs}>{args}
  [c2] y = Conv(d, w2)
}}"""


def _resize_model(mode: str, ctm: str, sizes: bool, roi: list[float] | None = None) -> onnx.ModelProto:
    attrs = f'mode="{mode}", coordinate_transformation_mode="{ctm}"'
    args = "(a, roi, , sz)" if sizes else "(a, roi, sc)"
    inits = {
        "w1": (8, 3, 1, 1), "b1": (8,), "w2": (4, 8, 1, 1), "roi": np.array(roi or [], np.float32),
        "sc": np.array([1, 1, 2, 2], np.float32), "sz": np.array([1, 8, 10, 10], np.int64),
    }  # fmt: skip
    return build(CONV_RESIZE_CONV.format(attrs=attrs, args=args), inits, opset=19 if ctm == "half_pixel_symmetric" else 17)


@pytest.mark.parametrize("sizes", [False, True], ids=["scales", "sizes"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_tf_crop_and_resize_over_whole_channels_prunes(mode, sizes):
    """A roi of [0, 1] on the batch and channel dims keeps channels apart (crop on space only)."""
    m = _resize_model(mode, "tf_crop_and_resize", sizes, [0, 0, 0.1, 0.2, 1, 1, 0.9, 1.0])
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 4 and c["w2"].shape[1] == 4
    assert c["roi"].tolist() == pytest.approx([0, 0, 0.1, 0.2, 1, 1, 0.9, 1.0])  # normalized: kept as it is
    if sizes:
        assert c["sz"].tolist() == [1, 4, 10, 10]
    _check(m, r)


def test_tf_crop_and_resize_cropping_channels_freezes_them():
    m = build(
        CONV_RESIZE_CONV.replace("float[1,4,10,10] y", "float[1,4,10,10] y").format(
            attrs='mode="linear", coordinate_transformation_mode="tf_crop_and_resize"', args="(a, roi, , sz)"
        ),
        {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (4, 8, 1, 1), "roi": np.array([0, 0, 0, 0, 1, 0.5, 1, 1], np.float32),
         "sz": np.array([1, 8, 10, 10], np.int64)},
    )  # fmt: skip
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape[0] == 8  # the roi samples across channels: no channel is removed
    assert r.report.verification["passed"]


@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_modes_pass_channels_through(mode, ctm):
    m = _resize_model(mode, ctm, sizes=True)
    r = prune_onnx(m)
    assert consts(r.model)["sz"].tolist() == [1, 4, 10, 10]
    _check(m, r)


@pytest.mark.parametrize("mult", [1, 2], ids=["depthwise", "multiplier2"])
def test_depthwise_conv_transpose(mult):
    text = """
    g (float[1,3,5,5] x) => (float[1,3,10,10] y) {
      [c1] a = Conv(x, w1, b1)
      [ct] d = ConvTranspose<group=8, strides=[2,2]>(a, wt, bt)
      [r] h = Relu(d)
      [c2] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "wt": (8, mult, 2, 2), "bt": (8 * mult,), "w2": (3, 8 * mult, 1, 1)})
    r = prune_onnx(m)
    ct = next(n for n in r.model.graph.node if n.name == "ct")
    assert helper.get_attribute_value(next(a for a in ct.attribute if a.name == "group")) == 4
    assert consts(r.model)["wt"].shape == (4, mult, 2, 2) and consts(r.model)["bt"].shape == (4 * mult,)
    _check(m, r)


ACTIVATIONS = [
    ("HardSigmoid", "<alpha=0.2, beta=0.5>", 17, ""), ("HardSwish", "", 17, ""), ("Elu", "", 17, ""),
    ("Selu", "", 17, ""), ("Softplus", "", 17, ""), ("Softsign", "", 17, ""), ("Mish", "", 18, ""),
    ("Gelu", "", 20, ""), ("Gelu", '<approximate="tanh">', 20, ""), ("Celu", "", 17, ""), ("PRelu", "", 17, ", slope"),
    ("Clip", "", 17, ", lo, hi"),
]  # fmt: skip


@pytest.mark.parametrize(("op", "attrs", "opset", "extra"), ACTIVATIONS, ids=[f"{a[0]}{a[1][:10]}" for a in ACTIVATIONS])
def test_exporter_activations(op, attrs, opset, extra):
    text = f"""
    g (float[1,3,6,6] x) => (float[1,4,6,6] y) {{
      [c1] a = Conv(x, w1, b1)
      [act] h = {op}{attrs}(a{extra})
      [c2] y = Conv(h, w2)
    }}"""
    rng = np.random.default_rng(5)
    inits = {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (4, 8, 1, 1)}
    if op == "PRelu":  # a per-channel slope, as torch's nn.PReLU(C) exports it
        inits["slope"] = (np.abs(rng.standard_normal((8, 1, 1))) + 0.1).astype(np.float32)
    if op == "Clip":  # min and max as inputs (opset 11+)
        inits["lo"], inits["hi"] = np.array(-0.5, np.float32), np.array(0.7, np.float32)
    m = build(text, inits, opset=opset)
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 4 and (op != "PRelu" or c["slope"].shape == (4, 1, 1))
    if op == "Clip":
        assert float(c["lo"]) == -0.5 and float(c["hi"]) == pytest.approx(0.7)
    _check(m, r)


def test_torch_export_with_the_ops_of_mobile_networks():
    """hardswish, PReLU(C), an SE gate with hardsigmoid, erf GELU, a depthwise ConvTranspose, bilinear and bicubic
    Resize, mish, elu, selu, softplus, softsign, silu, leaky relu, clamp: exported by torch (TorchScript at opsets 11
    and 17, dynamo at 18), nothing frozen."""
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional

    class Mobile(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.pr = torch.nn.PReLU(16)
            self.se1, self.se2 = torch.nn.Conv2d(16, 8, 1), torch.nn.Conv2d(8, 16, 1)
            self.pw = torch.nn.Conv2d(16, 8, 1)
            self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8)
            self.out = torch.nn.Conv2d(8, 4, 1)

        def forward(self, x):
            x = self.pr(self.dw(fn.hardswish(self.c1(x))))
            x = x * fn.hardsigmoid(self.se2(fn.relu(self.se1(x.mean((2, 3), keepdim=True)))))
            x = self.up(fn.gelu(self.pw(x)))
            x = fn.elu(fn.mish(fn.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)))
            x = fn.selu(fn.softplus(x)) + fn.softsign(x) + fn.silu(x) + fn.leaky_relu(x)
            return self.out(torch.clamp(fn.interpolate(x, size=(40, 40), mode="bicubic"), -1, 1))

    torch.manual_seed(0)
    net = Mobile().eval()
    for opset, dynamo in ((11, False), (17, False), (18, True)):
        if dynamo:
            m = torch.onnx.export(net, (torch.randn(1, 3, 10, 10),), opset_version=opset, dynamo=True).model_proto
        else:
            f = io.BytesIO()
            torch.onnx.export(net, (torch.randn(1, 3, 10, 10),), f, opset_version=opset, dynamo=False)
            m = onnx.load_from_string(f.getvalue())
        r = compiler.compile(m, ratio=0.5, granularity=1)  # opset 11 is upgraded on a private copy
        onnx.checker.check_model(r.model, full_check=True)
        assert r.report.frozen_ops == [] and r.report.verification["passed"]
        assert consts(r.model)["c1.weight"].shape[0] < 16 or consts(r.model)["pw.weight"].shape[0] < 8
        assert r.report.verification["nodes_checked"] > 10


# -- weights held by Constant nodes ---------------------------------------------------------------------------------


def _to_constant_nodes(m: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    for name in names:
        t = next(t for t in m.graph.initializer if t.name == name)
        m.graph.initializer.remove(t)
        m.graph.node.insert(0, helper.make_node("Constant", [], [name], name=f"{name}_const", value=t))
    return m


def test_constant_node_weight_read_through_identity_is_sliced_in_place():
    """An exporter's Constant -> Identity -> Conv: the Constant node keeps its name and holds the sliced weight
    (was: dropped, and its value moved to a new initializer)."""
    text = """
    g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
      [id] wi = Identity(w1)
      [c1] a = Conv(x, wi, b1)
      [r] h = Relu(a)
      [c2] y = Conv(h, w2)
    }"""
    m = _to_constant_nodes(build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (4, 8, 1, 1)}), ["w1", "b1", "w2"])
    r = prune_onnx(m)
    assert [n.name for n in r.model.graph.node] == [n.name for n in m.graph.node]
    assert not r.model.graph.initializer
    assert consts(r.model)["w1"].shape == (4, 3, 1, 1)
    _check(m, r)


def test_every_weight_a_constant_node_batch_norm_and_gemm():
    text = """
    g (float[1,3,6,6] x) => (float[1,3] y) {
      [c1] a = Conv(x, w1, b1)
      [bn] b = BatchNormalization(a, s, bb, mu, var)
      [r] h = Relu(b)
      [gp] p = GlobalAveragePool(h)
      [fl] f = Flatten(p)
      [g1] y = Gemm<transB=1>(f, wg, bg)
    }"""
    var = (np.abs(np.random.default_rng(1).standard_normal(8)) + 0.5).astype(np.float32)
    inits = {"w1": (8, 3, 1, 1), "b1": (8,), "s": (8,), "bb": (8,), "mu": (8,), "var": var, "wg": (3, 8), "bg": (3,)}
    m = _to_constant_nodes(build(text, inits), list(inits))
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 4 and c["var"].shape == (4,) and c["wg"].shape == (3, 4)
    assert not r.model.graph.initializer
    _check(m, r)


# -- If / Loop -------------------------------------------------------------------------------------------------------


def _vi(name: str, shape: list[int], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _subgraph_model(kind: str) -> onnx.ModelProto:
    """c1 -> (If or Loop, whose body runs a conv with an outer weight w2 that a top-level conv also reads) -> c3."""
    rng = np.random.default_rng(0)
    if kind == "If":
        then_g = helper.make_graph([helper.make_node("Relu", ["a"], ["t"], name="t_relu")], "then", [], [_vi("t", [1, 8, 5, 5])])
        else_g = helper.make_graph([helper.make_node("Conv", ["a", "w2"], ["e"], name="e_conv")], "else", [], [_vi("e", [1, 8, 5, 5])])
        sub = helper.make_node("If", ["cond"], ["o"], name="sub", then_branch=then_g, else_branch=else_g)
        extra_in = [_vi("cond", [], TensorProto.BOOL)]
    else:
        body = helper.make_graph(
            [helper.make_node("Identity", ["c_in"], ["c_out"], name="b_id"), helper.make_node("Conv", ["h_in", "w2"], ["h_c"], name="b_conv"),
             helper.make_node("Relu", ["h_c"], ["h_out"], name="b_relu")],
            "body", [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL), _vi("h_in", [1, 8, 5, 5])],
            [_vi("c_out", [], TensorProto.BOOL), _vi("h_out", [1, 8, 5, 5])],
        )  # fmt: skip
        sub = helper.make_node("Loop", ["trip", "", "a"], ["o"], name="sub", body=body)
        extra_in = []
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="c1"),
        sub,
        helper.make_node("Conv", ["o", "w3", "b3"], ["z"], name="c3"),
        helper.make_node("Relu", ["z"], ["zr"], name="r3"),
        helper.make_node("Conv", ["x", "w2x"], ["side"], name="side"),
        helper.make_node("Conv", ["zr", "w4"], ["y"], name="c4"),
    ]
    f = lambda *s: (rng.standard_normal(s) * 0.3).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w1", f(8, 3, 1, 1)), ("b1", f(8)), ("w2", f(8, 8, 1, 1)), ("w3", f(8, 8, 1, 1)), ("b3", f(8)),
        ("w2x", f(8, 3, 1, 1)), ("w4", f(4, 8, 1, 1)), ("trip", np.array(2, np.int64)),
    ]]  # fmt: skip
    g = helper.make_graph(nodes, kind, [_vi("x", [1, 3, 5, 5]), *extra_in], [_vi("y", [1, 4, 5, 5]), _vi("side", [1, 8, 5, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(m, full_check=True)
    return m


@pytest.mark.parametrize("kind", ["If", "Loop"])
def test_subgraph_freezes_exactly_what_crosses_it(kind):
    """What enters the subgraph (c1's channels, the outer weight w2) and what leaves it (c3's input channels) is
    frozen and the report names the op; c3's own output channels, past it, still prune."""
    m = _subgraph_model(kind)
    feeds = {"x": np.random.default_rng(1).standard_normal((1, 3, 5, 5)).astype(np.float32)}
    if kind == "If":
        feeds["cond"] = np.array(False)
    r = prune_onnx(m, feeds)
    c = consts(r.model)
    assert [(f.name, f.target) for f in r.report.frozen_ops] == [("sub", kind)]
    assert c["w1"].shape == (8, 3, 1, 1) and c["w2"].shape == (8, 8, 1, 1) and c["w3"].shape[1] == 8
    assert c["w3"].shape[0] == 4 and c["w4"].shape[1] == 4
    _check(m, r)
