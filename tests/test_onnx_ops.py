"""ONNX frontend, rewrite and verification, one operator rule at a time.

Every model is written in ONNX text with random (unique) weights, pruned at ratio
0.5 with granularity 1, and checked twice: structurally (initializer shapes,
attributes, op list and node names kept, checker with full_check, same I/O) and
numerically (the ONNX Runtime verification against the masked original passed,
and, where the model allows it, an independent reference: the original with the
removed weights zeroed, built from the pruned weights by value matching).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import compiler
from frontends.onnx import load_onnx
from frontends.onnx.rewrite import RewriteONNX
from frontends.onnx.verify import VerifyONNX, masked_reference
from tests._onnx_helpers import build, consts, independent_reference, inputs_for, op_types, prune_onnx, rel_err, run


def _check_independent(m: onnx.ModelProto, result, tol: float = 1e-5) -> None:
    feeds = result.traced.inputs
    ref = independent_reference(m, result.model, feeds)
    got = run(result.model, feeds, optimize=False)
    for r, g in zip(ref, got, strict=True):
        assert rel_err(r, g) < tol, rel_err(r, g)


CONV_RELU_CONV = """
g (float[1,3,8,8] x) => (float[1,5,8,8] y) {
  [c1] a = Conv<pads=[1,1,1,1]>(x, w1, b1)
  [r1] h = Relu(a)
  [c2] y = Conv<pads=[1,1,1,1]>(h, w2, b2)
}
"""


def test_conv_relu_conv_slices_both_sides():
    m = build(CONV_RELU_CONV, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (5, 8, 3, 3), "b2": (5,)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 3, 3) and c["b1"].shape == (4,) and c["w2"].shape == (5, 4, 3, 3)
    assert c["b2"].shape == (5,)  # model output: frozen
    assert op_types(r.model) == op_types(m)
    # the kept filters are the 4 of largest L2 norm
    w1 = consts(m)["w1"]
    top = np.sort(np.argsort(-np.sqrt((w1.reshape(8, -1) ** 2).sum(1)))[:4])
    np.testing.assert_array_equal(c["w1"], w1[top])
    _check_independent(m, r)
    assert r.report.macs_after < r.report.macs_before


def test_batch_norm_inputs_follow_their_channel():
    text = """
    g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
      [c1] a = Conv(x, w1)
      [bn] b = BatchNormalization<epsilon=1e-3>(a, s, bb, mean, var)
      [r] h = Relu(b)
      [c2] y = Conv(h, w2)
    }"""
    var = np.abs(np.random.default_rng(5).standard_normal(8)).astype(np.float32) + 0.5
    m = build(text, {"w1": (8, 3, 1, 1), "s": (8,), "bb": (8,), "mean": (8,), "var": var, "w2": (4, 8, 1, 1)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert all(c[k].shape == (4,) for k in ("s", "bb", "mean", "var"))
    kept = [int(np.flatnonzero(consts(m)["w1"][:, 0, 0, 0] == w)[0]) for w in c["w1"][:, 0, 0, 0]]
    np.testing.assert_array_equal(c["var"], var[kept])
    np.testing.assert_array_equal(c["mean"], consts(m)["mean"][kept])
    _check_independent(m, r)
    # parameters counted: conv weights, BN scale and bias; not the running statistics
    assert r.report.params_before == 8 * 3 + 8 + 8 + 4 * 8


def test_depthwise_conv_updates_group():
    text = """
    g (float[1,3,6,6] x) => (float[1,4,6,6] y) {
      [c1] a = Conv(x, w1, b1)
      [dw] d = Conv<group=8, pads=[1,1,1,1]>(a, wd, bd)
      [r] h = Relu(d)
      [c2] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "wd": (8, 1, 3, 3), "bd": (8,), "w2": (4, 8, 1, 1)})
    r = prune_onnx(m)
    c = consts(r.model)
    dw = next(n for n in r.model.graph.node if n.name == "dw")
    assert helper.get_attribute_value(dw.attribute[0]) == 4 and c["wd"].shape == (4, 1, 3, 3)
    _check_independent(m, r)


def test_grouped_conv_prunes_whole_groups():
    text = """
    g (float[1,4,6,6] x) => (float[1,2,6,6] y) {
      [c1] a = Conv(x, w1)
      [gc] d = Conv<group=4>(a, wg)
      [r] h = Relu(d)
      [c2] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 4, 1, 1), "wg": (8, 2, 1, 1), "w2": (2, 8, 1, 1)})
    r = prune_onnx(m)
    gc = next(n for n in r.model.graph.node if n.name == "gc")
    group = next(helper.get_attribute_value(a) for a in gc.attribute if a.name == "group")
    c = consts(r.model)
    assert group == 2 and c["wg"].shape == (4, 2, 1, 1) and c["w1"].shape == (4, 4, 1, 1)
    _check_independent(m, r)


def test_conv_transpose_with_groups():
    text = """
    g (float[1,3,5,5] x) => (float[1,3,10,10] y) {
      [c1] a = Conv(x, w1, b1)
      [ct] d = ConvTranspose<group=2, strides=[2,2]>(a, wt, bt)
      [r] h = Relu(d)
      [c2] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "wt": (8, 3, 2, 2), "bt": (6,), "w2": (3, 6, 1, 1)})
    r = prune_onnx(m)
    ct = next(n for n in r.model.graph.node if n.name == "ct")
    group = next(helper.get_attribute_value(a) for a in ct.attribute if a.name == "group")
    c = consts(r.model)
    # two groups of (4 in, 3 out) channels: one whole group goes
    assert group == 1 and c["wt"].shape == (4, 3, 2, 2) and c["bt"].shape == (3,) and c["w1"].shape[0] == 4
    _check_independent(m, r)


def test_conv_geometry_is_recorded_as_the_torch_lowering_records_it():
    """stride / padding / dilation per spatial dim (padding the same on both sides, or "same" / "valid"),
    padding_mode "zeros"; a padding torch cannot state (asymmetric pads) is left out."""
    text = """
    g (float[1,3,8,8] x) => (float[1,2,3,3] y) {
      [c1] a = Conv<strides=[2,2], pads=[1,1,1,1]>(x, w1)
      [c2] b = Conv<auto_pad="SAME_UPPER", dilations=[2,2], group=2>(a, w2)
      [c3] c = Conv<pads=[0,0,1,1]>(b, w3)
      [c4] d = Conv<auto_pad="VALID">(c, w4)
      [c5] e = Conv<auto_pad="SAME_LOWER", strides=[2,2]>(d, w5)
      [ct] y = ConvTranspose<strides=[2,2], pads=[1,1,1,1]>(e, wt)
    }"""
    shapes = {"w1": (8, 3, 3, 3), "w2": (8, 4, 3, 3), "w3": (8, 8, 2, 2), "w4": (8, 8, 1, 1), "w5": (8, 8, 4, 4), "wt": (8, 2, 3, 3)}
    graph = load_onnx(build(text, shapes)).graph
    keys = ("stride", "padding", "dilation", "padding_mode", "groups", "transposed")
    got = {op.label: {k: op.attrs.get(k) for k in keys} for op in graph.ops.values() if op.kind == "conv"}
    assert got == {
        "c1": {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "padding_mode": "zeros", "groups": 1, "transposed": False},
        "c2": {"stride": (1, 1), "padding": "same", "dilation": (2, 2), "padding_mode": "zeros", "groups": 2, "transposed": False},
        "c3": {"stride": (1, 1), "padding": None, "dilation": (1, 1), "padding_mode": "zeros", "groups": 1, "transposed": False},
        "c4": {"stride": (1, 1), "padding": "valid", "dilation": (1, 1), "padding_mode": "zeros", "groups": 1, "transposed": False},
        # SAME with a stride: 4 -> 2 with a 4-wide kernel pads 2 in all, 1 on each side
        "c5": {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "padding_mode": "zeros", "groups": 1, "transposed": False},
        "ct": {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "padding_mode": "zeros", "groups": 1, "transposed": True},
    }  # fmt: skip


def test_onnx_handlers_are_on_the_op_specs():
    """Each kind whose ONNX node carries sizes in attributes or static arguments has its ONNX rewrite handler on its
    spec; LayerNorm (and one-instance InstanceNorm, lowered as layer norm) and LSTM/GRU/RNN their ONNX reference
    semantics."""
    from passes.ops import SPECS

    kinds = ["conv", "group_norm", "reshape", "expand", "slice", "identity", "split", "spatial", "reduce", "recurrent"]
    assert sorted(k for k, s in SPECS.items() if "onnx" in s.rewrite) == sorted(kinds)
    assert sorted(k for k, s in SPECS.items() if "onnx" in s.reference) == ["layer_norm", "recurrent"]


@pytest.mark.parametrize("trans_b", [1, 0])
def test_gemm_after_flatten(trans_b):
    wshape = (16, 4 * 2 * 2) if trans_b else (4 * 2 * 2, 16)
    text = f"""
    g (float[2,3,2,2] x) => (float[2,5] y) {{
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [fl] f = Flatten(h)
      [fc1] z = Gemm<transB={trans_b}, alpha=0.5>(f, w2, b2)
      [r2] q = Relu(z)
      [fc2] y = Gemm<transB=1>(q, w3, b3)
    }}"""
    m = build(text, {"w1": (4, 3, 1, 1), "b1": (4,), "w2": wshape, "b2": (16,), "w3": (5, 16), "b3": (5,)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (2, 3, 1, 1)
    assert c["w2"].shape == ((8, 8) if trans_b else (8, 8))  # 2 channels x 4 positions in, 8 units out
    assert c["w3"].shape == (5, 8) and c["b2"].shape == (8,)
    _check_independent(m, r)


def test_gemm_with_row_bias_and_trans_a():
    text = """
    g (float[6,3] x) => (float[3,4] y) {
      [fc1] z = Gemm<transA=1, transB=1>(x, w1, b1)
      [r] h = Relu(z)
      [fc2] y = Gemm(h, w2, b2)
    }"""
    m = build(text, {"w1": (8, 6), "b1": (1, 8), "w2": (8, 4), "b2": (4,)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 6) and c["b1"].shape == (1, 4) and c["w2"].shape == (4, 4)
    _check_independent(m, r)


def test_matmul_mlp_with_bias_add():
    text = """
    g (float[2,5,6] x) => (float[2,5,3] y) {
      [mm1] a = MatMul(x, w1)
      [add1] b = Add(a, b1)
      [gelu] h = Gelu(b)
      [mm2] c = MatMul(h, w2)
      [add2] y = Add(c, b2)
    }"""
    m = build(text, {"w1": (6, 12), "b1": (12,), "w2": (12, 3), "b2": (3,)}, opset=20)
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (6, 6) and c["b1"].shape == (6,) and c["w2"].shape == (6, 3)
    _check_independent(m, r)


def test_residual_add_and_se_gate_are_coupled():
    text = """
    g (float[1,3,6,6] x) => (float[1,4,1,1] y) {
      [stem] a = Conv(x, w0, b0)
      [ra] ar = Relu(a)
      [c1] b = Conv<pads=[1,1,1,1]>(ar, w1, b1)
      [add] s = Add(b, ar)
      [gap] p = GlobalAveragePool(s)
      [fc1] q = Conv(p, wq, bq)
      [rq] qr = Relu(q)
      [fc2] e = Conv(qr, we, be)
      [sig] g1 = Sigmoid(e)
      [gate] t = Mul(s, g1)
      [gap2] u = GlobalAveragePool(t)
      [head] y = Conv(u, wh, bh)
    }"""
    m = build(text, {"w0": (8, 3, 1, 1), "b0": (8,), "w1": (8, 8, 3, 3), "b1": (8,), "wq": (4, 8, 1, 1), "bq": (4,),
                     "we": (8, 4, 1, 1), "be": (8,), "wh": (4, 8, 1, 1), "bh": (4,)})  # fmt: skip
    r = prune_onnx(m)
    c = consts(r.model)
    # stem, c1 and the gate's expansion share one channel set
    assert c["w0"].shape[0] == c["w1"].shape[0] == c["we"].shape[0] == c["wh"].shape[1] == 4
    kept0 = [int(np.flatnonzero(consts(m)["b0"] == v)[0]) for v in c["b0"]]
    kept1 = [int(np.flatnonzero(consts(m)["b1"] == v)[0]) for v in c["b1"]]
    kepte = [int(np.flatnonzero(consts(m)["be"] == v)[0]) for v in c["be"]]
    assert kept0 == kept1 == kepte
    _check_independent(m, r)


@pytest.mark.parametrize("axis", [1, -3])
def test_concat_offsets(axis):
    text = f"""
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {{
      [ca] a = Conv(x, wa, ba)
      [cb] b = Conv(x, wb, bb)
      [cat] c = Concat<axis={axis}>(a, b)
      [r] h = Relu(c)
      [out] y = Conv(h, w2)
    }}"""
    m = build(text, {"wa": (4, 3, 1, 1), "ba": (4,), "wb": (6, 3, 1, 1), "bb": (6,), "w2": (2, 10, 1, 1)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["wa"].shape[0] == 2 and c["wb"].shape[0] == 3 and c["w2"].shape == (2, 5, 1, 1)
    _check_independent(m, r)


@pytest.mark.parametrize("form", ["sizes_input", "equal_opset13", "num_outputs_opset18"])
def test_split(form):
    if form == "sizes_input":
        split, opset, extra = "Split<axis=1>(h, sp)", 17, {"sp": np.array([4, 6], dtype=np.int64)}
        wb_in = 6
    elif form == "equal_opset13":
        split, opset, extra = "Split<axis=1>(h)", 17, {}
        wb_in = 5
    else:
        split, opset, extra = "Split<axis=1, num_outputs=2>(h)", 18, {}
        wb_in = 5
    wa_in = 10 - wb_in
    text = f"""
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {{
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [split] p, q = {split}
      [ca] u = Conv(p, wa)
      [cb] v = Conv(q, wb)
      [add] y = Add(u, v)
    }}"""
    m = build(text, {"w1": (10, 3, 1, 1), "b1": (10,), "wa": (2, wa_in, 1, 1), "wb": (2, wb_in, 1, 1), **extra}, opset=opset)
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == c["wa"].shape[1] + c["wb"].shape[1] < 10
    if form == "sizes_input":
        np.testing.assert_array_equal(c["sp"], [c["wa"].shape[1], c["wb"].shape[1]])
    else:  # an equal split's pieces prune independently (as torch.chunk's Slices from the TorchScript exporter):
        # the rewrite gives the Split explicit sizes where they differ (and drops num_outputs)
        sizes = [c["wa"].shape[1], c["wb"].shape[1]]
        assert sizes[0] != sizes[1]
        (n,) = [n for n in r.model.graph.node if n.op_type == "Split"]
        assert len(n.input) == 2 and c[n.input[1]].tolist() == sizes
        assert all(a.name != "num_outputs" for a in n.attribute)
    _check_independent(m, r)


def test_slice_on_channels_and_on_space():
    text = """
    g (float[1,3,6,6] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [sl] s = Slice(h, st, en, ax)
      [sp] t = Slice(s, st2, en2, ax2, step2)
      [out] y = Conv(t, w2)
    }"""
    inits = {
        "w1": (10, 3, 1, 1), "b1": (10,), "w2": (2, 6, 1, 1),
        "st": np.array([2], np.int64), "en": np.array([-2], np.int64), "ax": np.array([1], np.int64),
        "st2": np.array([2, 1], np.int64), "en2": np.array([9223372036854775807, -1], np.int64),
        "ax2": np.array([2, 3], np.int64), "step2": np.array([1, 1], np.int64),
    }  # fmt: skip
    m = build(text, inits)
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w2"].shape[1] < 6
    # the channel slice keeps exactly the kept channels of 2..7
    orig_b1 = consts(m)["b1"]
    kept = [int(np.flatnonzero(orig_b1 == v)[0]) for v in c["b1"]]
    new_start, new_end = int(c["st"][0]), int(c["en"][0])
    sel = np.arange(len(kept))[new_start : new_end if new_end != 0 else None]
    assert [kept[i] for i in sel] == [k for k in kept if 2 <= k < 8]
    np.testing.assert_array_equal(c["en2"], inits["en2"])  # the spatial slice is untouched
    _check_independent(m, r)


def test_reshape_constants_keep_zero_and_minus_one():
    text = """
    g (float[2,3,2,2] x) => (float[2,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [rs] f = Reshape(h, shp)
      [fc] y = Gemm<transB=1>(f, w2, b2)
    }"""
    m = build(text, {"w1": (6, 3, 1, 1), "b1": (6,), "w2": (4, 24), "b2": (4,), "shp": np.array([0, -1], np.int64)})
    r = prune_onnx(m)
    c = consts(r.model)
    np.testing.assert_array_equal(c["shp"], [0, -1])  # still valid: nothing to change
    assert c["w2"].shape == (4, 12)
    _check_independent(m, r)


def test_reshape_explicit_sizes_are_rewritten():
    text = """
    g (float[1,3,2,2] x) => (float[1,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [rs] f = Reshape(h, shp)
      [fc] y = MatMul(f, w2)
    }"""
    m = build(text, {"w1": (6, 3, 1, 1), "b1": (6,), "w2": (24, 4), "shp": np.array([1, 24], np.int64)})
    r = prune_onnx(m)
    c = consts(r.model)
    np.testing.assert_array_equal(c["shp"], [1, 12])
    _check_independent(m, r)


def test_channel_shuffle_reshape_transpose():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [v1] s = Reshape(h, shp1)
      [tr] t = Transpose<perm=[0,2,1,3,4]>(s)
      [v2] u = Reshape(t, shp2)
      [out] y = Conv(u, w2)
    }"""
    inits = {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1),
             "shp1": np.array([1, 2, 4, 4, 4], np.int64), "shp2": np.array([0, -1, 4, 4], np.int64)}  # fmt: skip
    m = build(text, inits)
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 4 and c["shp1"].tolist() == [1, 2, 2, 4, 4] and c["shp2"].tolist() == [0, -1, 4, 4]
    _check_independent(m, r)


def test_channels_last_layer_norm_is_verified_over_kept_channels():
    text = """
    g (float[1,3,4,4] x) => (float[1,4,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [p1] t = Transpose<perm=[0,2,3,1]>(a)
      [ln] n = LayerNormalization<axis=-1, epsilon=1e-5>(t, s, b)
      [mm] u = MatMul(n, w2)
      [p2] v = Transpose<perm=[0,3,1,2]>(u)
      [r] y = Relu(v)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "s": (8,), "b": (8,), "w2": (8, 4)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["s"].shape == (4,) and c["b"].shape == (4,) and c["w2"].shape == (4, 4)
    # the masked reference replaced the LayerNormalization by a decomposition over the kept channels
    ref = masked_reference(r.traced, r.plan.analysis, r.plan.selection.pruned)
    assert "LayerNormalization" not in op_types(ref) and "ReduceSum" in op_types(ref)
    # independent check: LayerNorm over the kept channels, by hand in numpy
    x = r.traced.inputs["x"]
    o = consts(m)
    kept = [int(np.flatnonzero(o["b1"] == v)[0]) for v in c["b1"]]
    a = np.einsum("oc,nchw->nhwo", o["w1"][:, :, 0, 0], x)[..., kept] + o["b1"][kept]
    nrm = (a - a.mean(-1, keepdims=True)) / np.sqrt(a.var(-1, keepdims=True) + 1e-5) * o["s"][kept] + o["b"][kept]
    want = np.maximum(np.transpose(nrm @ o["w2"][kept], (0, 3, 1, 2)), 0)
    assert rel_err(want, run(r.model, r.traced.inputs)[0]) < 1e-5


def test_group_norm_prunes_whole_groups():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [gn] n = GroupNormalization<num_groups=4>(a, s, b)
      [r] h = Relu(n)
      [out] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "s": (8,), "b": (8,), "w2": (2, 8, 1, 1)}, opset=21)
    r = prune_onnx(m)
    c = consts(r.model)
    gn = next(n for n in r.model.graph.node if n.name == "gn")
    assert c["s"].shape == (4,) and helper.get_attribute_value(gn.attribute[0]) in (2,)
    kept = [int(np.flatnonzero(consts(m)["b1"] == v)[0]) for v in c["b1"]]
    assert sorted({k // 2 for k in kept}) == sorted(k // 2 for k in kept[::2])  # whole groups of 2
    _check_independent(m, r)


def test_instance_norm():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [in] n = InstanceNormalization(a, s, b)
      [r] h = Relu(n)
      [out] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "s": (8,), "b": (8,), "w2": (2, 8, 1, 1)})
    r = prune_onnx(m)
    assert consts(r.model)["s"].shape == (4,)
    _check_independent(m, r)


@pytest.mark.parametrize("slope", [(8, 1, 1), (1, 8, 1, 1), (1,)])
def test_prelu_slope_shapes(slope):
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [pr] h = PRelu(a, sl)
      [out] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "sl": slope, "w2": (2, 8, 1, 1)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 4
    assert c["sl"].shape == (slope if len(slope) == 1 else tuple(4 if s == 8 else s for s in slope))
    _check_independent(m, r)


def test_prelu_per_last_dim_slope_is_not_per_channel():
    """ONNX broadcasts a [C] slope against the LAST dim (W here), not the channels."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [pr] h = PRelu(a, sl)
      [out] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "sl": (4,), "w2": (2, 8, 1, 1)})
    r = prune_onnx(m)
    assert consts(r.model)["sl"].shape == (4,) and consts(r.model)["w1"].shape[0] == 4


def test_unary_zoo():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [clip] a1 = Clip(a, lo, hi)
      [hs] a2 = HardSigmoid<alpha=0.3>(a1)
      [hw] a3 = HardSwish(a2)
      [lr] a4 = LeakyRelu<alpha=0.2>(a3)
      [elu] a5 = Elu(a4)
      [tanh] a6 = Tanh(a5)
      [erf] a7 = Erf(a6)
      [sp] a8 = Softplus(a7)
      [id] a9 = Identity(a8)
      [cast] a10 = Cast<to=1>(a9)
      [drop] a11 = Dropout(a10)
      [out] y = Conv(a11, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1),
                     "lo": np.array(-1.0, np.float32), "hi": np.array(2.0, np.float32)})  # fmt: skip
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape[0] == 4 and consts(r.model)["lo"].shape == ()
    kinds = {op.kind for op in r.traced.graph.ops.values()}
    assert "unknown" not in kinds
    _check_independent(m, r)


def test_binary_zoo_with_per_channel_constants():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [sub] a1 = Sub(a, k1)
      [mul] a2 = Mul(a1, k2)
      [mx] a3 = Max(a2, k3, k4)
      [pw] a4 = Pow(a3, two)
      [gt] m0 = Greater(a, zero)
      [wh] a5 = Where(m0, a4, k5)
      [out] y = Conv(a5, w2)
    }"""
    f = np.float32
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "k1": (8, 1, 1), "k2": (1, 8, 1, 1),
                     "k3": (8, 1, 1), "k4": np.array([0.25], f), "two": np.array(2.0, f), "zero": np.array(0.0, f),
                     "k5": (8, 4, 4)})  # fmt: skip
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["k1"].shape == (4, 1, 1) and c["k2"].shape == (1, 4, 1, 1) and c["k5"].shape == (4, 4, 4)
    assert c["k4"].shape == (1,)


def test_div_by_per_channel_constant_is_masked_safely():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [div] a1 = Div(a, k)
      [out] y = Conv(a1, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "k": (8, 1, 1)})
    r = prune_onnx(m)
    assert consts(r.model)["k"].shape == (4, 1, 1)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_mean_over_space_and_sum_over_channels(opset):
    if opset == 13:
        rm, rs = "ReduceMean<axes=[2,3], keepdims=0>(h)", "ReduceSum<keepdims=1>(h, ax1)"
    else:
        rm, rs = "ReduceMean<keepdims=0>(h, ax23)", "ReduceSum<keepdims=1>(h, ax1)"
    text = f"""
    g (float[1,3,4,4] x) => (float[1,4] y, float[1,1,4,4] z) {{
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [rm] p = {rm}
      [rs] z = {rs}
      [fc] y = Gemm<transB=1>(p, w2)
    }}"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (4, 8), "ax1": np.array([1], np.int64),
                     "ax23": np.array([2, 3], np.int64)}, opset=opset)  # fmt: skip
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape[0] == 4  # a sum over channels is exact with removed channels
    _check_independent(m, r)


def test_reduce_max_over_channels_freezes():
    text = """
    g (float[1,3,4,4] x) => (float[1,1,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [rm] y = ReduceMax<axes=[1], keepdims=1>(h)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,)})
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape[0] == 8
    assert any("max over a channel dimension" in reason for g in r.report.groups for reason in g.reasons)


def test_pooling_resize_and_pad():
    text = """
    g (float[1,3,8,8] x) => (float[1,2,8,8] y) {
      [c1] a = Conv(x, w1, b1)
      [mp] b = MaxPool<kernel_shape=[2,2], strides=[2,2]>(a)
      [ap] c = AveragePool<kernel_shape=[3,3], pads=[1,1,1,1]>(b)
      [rz] d = Resize<mode="nearest">(c, roi, sc)
      [pad] e = Pad(d, pads)
      [out] y = Conv<kernel_shape=[3,3]>(e, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 3, 3), "roi": np.zeros(0, np.float32),
                     "sc": np.array([1, 1, 2, 2], np.float32), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})  # fmt: skip
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 4 and c["pads"].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    _check_independent(m, r)


def test_resize_with_sizes_is_rewritten():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,8,8] y) {
      [c1] a = Conv(x, w1, b1)
      [rz] d = Resize<mode="nearest">(a, , , sz)
      [out] y = Conv(d, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "sz": np.array([1, 8, 8, 8], np.int64)})
    r = prune_onnx(m)
    assert consts(r.model)["sz"].tolist() == [1, 4, 8, 8]
    _check_independent(m, r)


def test_pad_on_channels_freezes_them():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [pad] e = Pad(a, pads)
      [out] y = Conv(e, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 10, 1, 1),
                     "pads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)})  # fmt: skip
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape[0] == 8


def test_softmax_over_channels_freezes_over_space_does_not():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y, float[1,2,4,4] z) {
      [c1] a = Conv(x, w1, b1)
      [sm] s = Softmax<axis=1>(a)
      [o1] y = Conv(s, w2)
      [c3] b = Conv(x, w3, b3)
      [sm2] t = Softmax<axis=-1>(b)
      [o2] z = Conv(t, w4)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "w3": (8, 3, 1, 1), "b3": (8,), "w4": (2, 8, 1, 1)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 8 and c["w3"].shape[0] == 4


def test_strided_slice_of_whole_pairs_prunes_the_pairs():
    """Slice(step=2) from 0 and from 1 (interleaved pairs, as a rotary embedding takes them): each pair prunes whole."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [se] e = Slice(h, s0, big, ax, two)
      [so] o = Slice(h, s1, big, ax, two)
      [m] p = Mul(e, o)
      [ad] q = Add(e, p)
      [out] y = Conv(q, w2)
    }"""
    inits = {
        "w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 4, 1, 1), "s0": np.array([0], np.int64), "s1": np.array([1], np.int64),
        "big": np.array([9223372036854775807], np.int64), "ax": np.array([1], np.int64), "two": np.array([2], np.int64),
    }  # fmt: skip
    m = build(text, inits)
    r = prune_onnx(m, granularity=1)
    c = consts(r.model)
    assert c["w1"].shape[0] < 8 and c["w1"].shape[0] % 2 == 0 and c["w2"].shape[1] == c["w1"].shape[0] // 2
    kept = [int(np.flatnonzero(consts(m)["b1"] == v)[0]) for v in c["b1"]]
    assert all(k ^ 1 in kept for k in kept)
    _check_independent(m, r)


def test_reversed_channel_slice_freezes_the_channels():
    """torch.flip over channels exports as Slice(step=-1): the channels are frozen (the exporter's
    end of -INT_MAX is a full reversal, not an empty range)."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [fl] f = Slice(h, st, en, ax, step)
      [c2] b = Conv(f, w2, b2)
      [r2] h2 = Relu(b)
      [out] y = Conv(h2, w3)
    }"""
    inits = {
        "w1": (8, 3, 1, 1), "b1": (8,), "w2": (6, 8, 1, 1), "b2": (6,), "w3": (2, 6, 1, 1),
        "st": np.array([-1], np.int64), "en": np.array([-9223372036854775807], np.int64),
        "ax": np.array([1], np.int64), "step": np.array([-1], np.int64),
    }  # fmt: skip
    m = build(text, inits)
    r = prune_onnx(m, granularity=1)
    c = consts(r.model)
    assert c["w1"].shape[0] == 8 and c["w2"].shape[0] < 6
    _check_independent(m, r)


def test_constant_node_weights_are_sliced_in_place():
    m = build(CONV_RELU_CONV, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (5, 8, 3, 3), "b2": (5,)})
    # turn w1 into a Constant node
    w1 = next(t for t in m.graph.initializer if t.name == "w1")
    node = helper.make_node("Constant", [], ["w1"], name="w1_const", value=w1)
    m.graph.initializer.remove(w1)
    m.graph.node.insert(0, node)
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape == (4, 3, 3, 3)
    assert op_types(r.model) == op_types(m)
    _check_independent(m, r)


def test_shared_initializer_through_identity_is_not_coupled():
    """TorchScript exports de-duplicate equal constants and read them through Identity nodes."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [id1] ba = Identity(bz)
      [id2] bb = Identity(bz)
      [ca] a = Conv(x, wa, ba)
      [ra] h = Relu(a)
      [cb] b = Conv(h, wb, bb)
      [rb] k = Relu(b)
      [out] y = Conv(k, w2)
    }"""
    m = build(text, {"wa": (8, 3, 1, 1), "wb": (8, 8, 1, 1), "w2": (2, 8, 1, 1), "bz": (8,)})
    r = prune_onnx(m)
    c = consts(r.model)
    group_of = {m: g.id for g in r.report.groups for m in g.members}
    assert group_of["ca"] != group_of["cb"]  # two independent groups, not one
    assert op_types(r.model) == op_types(m)
    ida = next(n for n in r.model.graph.node if n.name == "id1")
    assert c[ida.input[0]].shape == (4,)
    _check_independent(m, r)


def test_initializer_shared_directly_couples_its_users():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [ca] a = Conv(x, wa, bz)
      [ra] h = Relu(a)
      [cb] b = Conv(h, wb, bz)
      [rb] k = Relu(b)
      [out] y = Conv(k, w2)
    }"""
    m = build(text, {"wa": (8, 3, 1, 1), "wb": (8, 8, 1, 1), "w2": (2, 8, 1, 1), "bz": (8,)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["bz"].shape == (4,) and c["wa"].shape[0] == c["wb"].shape[0] == 4
    _check_independent(m, r)


def test_embedding_gather_then_matmul():
    text = """
    g (int64[2,5] ids) => (float[2,5,3] y) {
      [emb] e = Gather(table, ids)
      [mm1] h = MatMul(e, w1)
      [r] k = Relu(h)
      [mm2] y = MatMul(k, w2)
    }"""
    m = build(text, {"table": (11, 8), "w1": (8, 6), "w2": (6, 3)})
    feeds = {"ids": np.array([[1, 2, 3, 4, 10], [0, 5, 6, 7, 9]], np.int64)}
    r = prune_onnx(m, feeds)
    c = consts(r.model)
    assert c["table"].shape == (11, 4) and c["w1"].shape == (4, 3) and c["w2"].shape == (3, 3)
    _check_independent(m, r)


def test_gather_of_one_token_keeps_the_feature_dim():
    """ViT-style class-token selection: Gather(index 0) on the token axis."""
    text = """
    g (float[2,5,6] x) => (float[2,3] y) {
      [mm1] h = MatMul(x, w1)
      [r] k = Relu(h)
      [cls] t = Gather<axis=1>(k, zero)
      [fc] y = Gemm<transB=1>(t, w2)
    }"""
    m = build(text, {"w1": (6, 8), "w2": (3, 8), "zero": np.array(0, np.int64)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (6, 4) and c["w2"].shape == (3, 4) and int(c["zero"]) == 0
    _check_independent(m, r)


def test_gather_of_one_channel_freezes_it_and_moves_the_index():
    text = """
    g (float[1,3,4,4] x) => (float[1,4,4] y, float[1,2,4,4] z) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [pick] y = Gather<axis=1>(h, five)
      [out] z = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "five": np.array(5, np.int64)})
    r = prune_onnx(m)
    c = consts(r.model)
    kept = [int(np.flatnonzero(consts(m)["b1"] == v)[0]) for v in c["b1"]]
    assert 5 in kept and kept[int(c["five"])] == 5
    _check_independent(m, r)


SHAPE_RESHAPE = """
g (float[2,3,2,2] x) => (float[2,4] y) {
  [c1] a = Conv(x, w1, b1)
  [r] h = Relu(a)
  [shape] s = Shape(h)
  [g0] n = Gather<axis=0>(s, zero)
  [u0] nu = Unsqueeze(n, ax0)
  [cat] sp = Concat<axis=0>(nu, tail)
  [rs] f = Reshape(h, sp)
  [fc] y = Gemm<transB=1>(f, w2, b2)
}
"""


def test_shape_subgraph_that_stays_valid_is_kept():
    m = build(SHAPE_RESHAPE, {"w1": (6, 3, 1, 1), "b1": (6,), "w2": (4, 24), "b2": (4,), "zero": np.array(0, np.int64),
                              "ax0": np.array([0], np.int64), "tail": np.array([-1], np.int64)})  # fmt: skip
    r = prune_onnx(m)
    assert op_types(r.model) == op_types(m)  # [batch, -1] is right for the pruned tensor too
    assert consts(r.model)["w2"].shape == (4, 12)
    _check_independent(m, r)


def test_shape_subgraph_with_a_stale_size_is_replaced_by_a_constant():
    m = build(SHAPE_RESHAPE, {"w1": (6, 3, 1, 1), "b1": (6,), "w2": (4, 24), "b2": (4,), "zero": np.array(0, np.int64),
                              "ax0": np.array([0], np.int64), "tail": np.array([24], np.int64)})  # fmt: skip
    r = prune_onnx(m, removed_ok=("shape", "g0", "u0", "cat"))
    rs = next(n for n in r.model.graph.node if n.name == "rs")
    c = consts(r.model)
    assert c[rs.input[1]].tolist() == [2, 12]
    assert "tail" not in c  # the stale constant went with its dead subgraph
    _check_independent(m, r)


def test_shape_used_as_data_keeps_its_original_value():
    """A size read off a pruned tensor and used as data (a divisor; the exporters' 1/sqrt(head size) of
    attention) keeps its original value: the channels prune and the model equals the masked original."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [shape] s = Shape(a)
      [g1] c = Gather<axis=0>(s, one)
      [cast] cf = Cast<to=1>(c)
      [div] d = Div(a, cf)
      [out] y = Conv(d, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "one": np.array(1, np.int64)})
    r = prune_onnx(m, removed_ok=("shape", "g1", "cast"))
    assert consts(r.model)["w1"].shape[0] < 8
    div = next(n for n in r.model.graph.node if n.name == "div")
    assert consts(r.model)[div.input[1]].tolist() == 8.0
    _check_independent(m, r)


def test_unknown_standard_op_freezes_and_is_reported():
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [lrn] b = LRN<size=3>(a)
      [c2] c = Conv(b, w2, b2)
      [r] h = Relu(c)
      [out] y = Conv(h, w3)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (6, 8, 1, 1), "b2": (6,), "w3": (2, 6, 1, 1)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 8  # LRN normalizes across channels: never guessed
    assert c["w2"].shape == (3, 8, 1, 1)  # the next layer's own output channels still prune
    assert [(o.target, o.label) for o in r.report.frozen_ops] == [("LRN", "lrn")]
    _check_independent(m, r)


def test_custom_domain_op_is_unknown_and_never_guessed():
    text = """
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [gate] b = com.example.MyGate(a)
      [c2] c = Conv(b, w2, b2)
      [r] h = Relu(c)
      [out] y = Conv(h, w3)
    }"""
    m = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, shape in {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (6, 8, 1, 1), "b2": (6,), "w3": (2, 6, 1, 1)}.items():
        m.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    m.graph.value_info.append(helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, 8, 4, 4]))
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    # ONNX Runtime cannot run MyGate, so nothing can be verified; the plan and the rewrite still work
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1, verify=False)
    c = consts(r.model)
    assert c["w1"].shape[0] == 8 and c["w2"].shape[0] == 3
    assert [o.target for o in r.report.frozen_ops] == ["MyGate"]
    onnx.checker.check_model(r.model, full_check=True)
    with pytest.raises(compiler.UnsupportedModelError, match="ONNX Runtime cannot run the model"):  # the input's fault
        compiler.compile(m, (x,), ratio=0.5, granularity=1)


def test_custom_domain_op_with_a_registered_spec_gets_its_onnx_handler():
    """docs/extending.md: a spec under the op type gives a custom op a channel rule and an ONNX rewrite handler."""
    from frontends.graph import Op
    from frontends.onnx.rewrite import OnnxRewrite
    from passes.ops import SPECS, op_spec

    text = """
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [gate] b = com.example.MyScaleGate<channels=8>(a)
      [out] y = Conv(b, w2)
    }"""
    m = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    for name, shape in {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1)}.items():
        m.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    m.graph.value_info.append(helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [1, 8, 4, 4]))
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    calls: list[tuple[str, int]] = []
    before = dict(SPECS)
    try:
        spec = op_spec("MyScaleGate")
        spec.channel_rule(SPECS["unary"].rule)  # element-wise: its output's channels are its input's

        @spec.rewriter("onnx")
        def _channels(rw: OnnxRewrite, op: Op, node: int) -> set[int]:
            calls.append((op.label, node))
            rw.set_int_attr(node, "channels", rw.pruned_shape(op.input(0))[1])
            return set()

        r = compiler.compile(m, (x,), ratio=0.5, granularity=1, verify=False)  # ONNX Runtime cannot run MyScaleGate
    finally:
        SPECS.clear()
        SPECS.update(before)
    assert calls == [("gate", 1)]
    gate = next(n for n in r.model.graph.node if n.name == "gate")
    assert consts(r.model)["w1"].shape[0] == 4 and helper.get_attribute_value(gate.attribute[0]) == 4
    assert r.report.frozen_ops == []


def test_initializer_listed_as_graph_input():
    m = build(CONV_RELU_CONV, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (5, 8, 3, 3), "b2": (5,)})
    for t in list(m.graph.initializer):
        m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    r = compiler.compile(m, None, ratio=0.5, granularity=1)
    onnx.checker.check_model(r.model, full_check=True)
    w1_in = next(vi for vi in r.model.graph.input if vi.name == "w1")
    assert [d.dim_value for d in w1_in.type.tensor_type.shape.dim] == [4, 3, 3, 3]
    assert r.report.verification["passed"]


# -- the verification itself ---------------------------------------------------------------------


def test_verification_catches_a_wrong_rewrite():
    m = build(CONV_RELU_CONV, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (5, 8, 3, 3), "b2": (5,)})
    om = load_onnx(m)
    r = compiler.compile(m, ratio=0.5, granularity=1)
    p = r.plan
    good = RewriteONNX().call(om, p.analysis, p.selection.pruned).model
    VerifyONNX().call(om, p.analysis, p.selection.pruned, good)
    # a kept channel's weights swapped with another kept channel's: same shapes, different function
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    t = next(t for t in bad.graph.initializer if t.name == "w2")
    w2 = numpy_helper.to_array(t).copy()
    w2[:, [0, 1]] = w2[:, [1, 0]]
    t.CopyFrom(numpy_helper.from_array(w2, "w2"))
    with pytest.raises(compiler.VerificationError, match="differs"):
        VerifyONNX().call(om, p.analysis, p.selection.pruned, bad)
    # and a plan that keeps other channels than the rewrite did
    other = p.selection.pruned.copy()
    g = next(g for g in p.analysis.groups if other[g.classes].any())
    other[g.classes] = ~other[g.classes]
    with pytest.raises(compiler.VerificationError):
        VerifyONNX().call(om, p.analysis, other, good)


def test_masked_reference_equals_the_pruned_model_exactly_enough():
    m = build(CONV_RELU_CONV, {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (5, 8, 3, 3), "b2": (5,)})
    r = compiler.compile(m, ratio=0.5, granularity=1)
    ref = masked_reference(r.traced, r.plan.analysis, r.plan.selection.pruned)
    onnx.checker.check_model(ref, full_check=True)
    feeds = inputs_for(m, seed=7)
    assert rel_err(run(ref, feeds)[0], run(r.model, feeds)[0]) < 1e-5
    assert rel_err(run(m, feeds)[0], run(r.model, feeds)[0]) > 1e-3  # pruning did change the function


def test_float16_model_keeps_its_dtype():
    text = """
    g (float16[1,3,8,8] x) => (float16[1,4,8,8] y) {
      [c1] a = Conv<pads=[1,1,1,1]>(x, w1, b1)
      [r1] h = Relu(a)
      [p1] t = Transpose<perm=[0,2,3,1]>(h)
      [ln] n = LayerNormalization(t, s, b)
      [p2] u = Transpose<perm=[0,3,1,2]>(n)
      [c2] y = Conv<pads=[1,1,1,1]>(u, w2, b2)
    }"""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float16)  # noqa: E731
    m = build(text, {"w1": f(8, 3, 3, 3), "b1": f(8), "s": f(8), "b": f(8), "w2": f(4, 8, 3, 3), "b2": f(4)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].dtype == np.float16 and c["w1"].shape == (4, 3, 3, 3) and c["s"].shape == (4,)
    assert r.report.verification["dtype"].startswith("float16")


def test_group_norm_exported_as_instance_norm_freezes_its_channels():
    """TorchScript exports GroupNorm as Reshape [N, G, -1] -> InstanceNormalization -> Reshape -> Mul -> Add."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r1] g3 = Reshape(a, grp)
      [in] n = InstanceNormalization(g3, ones, zeros)
      [r2] b = Reshape(n, back)
      [mul] c = Mul(b, s)
      [add] d = Add(c, bb)
      [r] h = Relu(d)
      [out] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "s": (8, 1, 1), "bb": (8, 1, 1),
                     "grp": np.array([1, 2, -1], np.int64), "back": np.array([1, 8, 4, 4], np.int64),
                     "ones": np.ones(2, np.float32), "zeros": np.zeros(2, np.float32)})  # fmt: skip
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape[0] == 8  # the group statistics span the channels
    assert any("statistics over a channel dimension" in reason for g in r.report.groups for reason in g.reasons)


def test_single_group_norm_exported_as_instance_norm_prunes_like_layer_norm():
    """GroupNorm(1, C) (PoolFormer) exports as Reshape [N, 1, -1] -> InstanceNormalization: a LayerNorm over C*H*W.
    Channels prune; the pruned model normalizes over the kept channels, which the verification reproduces."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r1] g3 = Reshape(a, grp)
      [in] n = InstanceNormalization<epsilon=1e-5>(g3, one, zero)
      [r2] b = Reshape(n, back)
      [mul] c = Mul(b, s)
      [add] d = Add(c, bb)
      [r] h = Relu(d)
      [out] y = Conv(h, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "s": (8, 1, 1), "bb": (8, 1, 1),
                     "grp": np.array([1, 1, -1], np.int64), "back": np.array([1, 8, 4, 4], np.int64),
                     "one": np.ones(1, np.float32), "zero": np.zeros(1, np.float32)})  # fmt: skip
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape[0] == 4 and c["s"].shape == (4, 1, 1) and c["w2"].shape == (2, 4, 1, 1)
    assert c["back"].tolist() == [1, 4, 4, 4]
    # by hand: the kept channels of the first conv, normalized over themselves, then the pruned tail
    feeds = r.traced.inputs
    x = feeds["x"].astype(np.float64)
    o = consts(m)
    kept = [int(np.flatnonzero(o["b1"] == v)[0]) for v in c["b1"]]
    a = np.einsum("oc,nchw->nohw", o["w1"][kept, :, 0, 0], x) + o["b1"][kept, None, None]
    nrm = (a - a.mean()) / np.sqrt(a.var() + 1e-5)
    h = np.maximum(nrm * o["s"][kept] + o["bb"][kept], 0)
    want = np.einsum("oc,nchw->nohw", o["w2"][:, kept, 0, 0], h)
    assert rel_err(want, run(r.model, feeds)[0]) < 1e-5


def test_reduce_mean_over_channels_keeps_the_original_divisor():
    """RMSNorm as ONNX ops: ReduceMean of squares over the hidden dim gets a Mul(kept / original) after it."""
    text = """
    g (float[2,5,8] x) => (float[2,5,4] y) {
      [a] h = MatMul(x, wa)
      [sq] s = Mul(h, h)
      [rm] v = ReduceMean<axes=[-1], keepdims=1>(s)
      [e] ve = Add(v, eps)
      [rt] r = Sqrt(ve)
      [dv] n = Div(h, r)
      [sc] hn = Mul(n, g1)
      [o] y = MatMul(hn, wo)
    }
    """
    m = build(text, {"wa": (8, 16), "eps": np.array(1e-6, np.float32), "g1": (16,), "wo": (16, 4)})
    r = compiler.compile(m, ratio=0.5, granularity=1)  # (prune_onnx's structural check allows no new node)
    assert r.report.verification["passed"] and not r.report.frozen_ops
    onnx.checker.check_model(r.model, full_check=True)
    c = consts(r.model)
    assert c["wa"].shape == (8, 8) and c["g1"].shape == (8,) and c["wo"].shape == (8, 4)
    assert [o for o in op_types(r.model) if o in ("ReduceMean", "Mul")].count("Mul") == 3  # h*h, the scale, n*g1
    scale = [t for n, t in c.items() if n.endswith("_scale")]
    assert len(scale) == 1 and float(scale[0]) == 0.5
    _check_independent(m, r)


def test_expand_with_a_constant_shape_naming_the_channels_is_rewritten():
    """x[..., 1] broadcast along the last dim with Expand(shape=[1, C, H, W]): the C in the shape follows the pruning,
    a 1 in the shape stays 1 (ONNX's Expand broadcasts both ways)."""
    text = """
    g (float[1,3,4,4] x) => (float[1,2,4,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [mean] m = ReduceMean<axes=[3], keepdims=1>(h)
      [ex] e = Expand(m, shp)
      [ex1] e1 = Expand(m, one)
      [add] s = Add(h, e)
      [add1] s1 = Add(s, e1)
      [c2] y = Conv(s1, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "w2": (2, 8, 1, 1), "shp": np.array([1, 8, 4, 4], np.int64),
                     "one": np.array([1, 1, 1, 4], np.int64)})  # fmt: skip
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 1, 1) and c["w2"].shape == (2, 4, 1, 1)
    ex = next(n for n in r.model.graph.node if n.name == "ex")
    ex1 = next(n for n in r.model.graph.node if n.name == "ex1")
    assert c[ex.input[1]].tolist() == [1, 4, 4, 4] and c[ex1.input[1]].tolist() == [1, 1, 1, 4]
    assert not r.report.frozen_ops
    _check_independent(m, r)


def test_gather_with_a_scattered_constant_index_freezes_only_its_axis():
    """An im2col written as Gather over the spatial axis (TNT exported to ONNX): channels still prune."""
    text = """
    g (float[1,3,6] x) => (float[1,2,2,3] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [gat] t = Gather<axis=2>(h, idx)
      [c2] y = Conv(t, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1), "b1": (8,), "w2": (2, 8, 1, 1), "idx": np.array([[0, 2, 4], [1, 3, 5]], np.int64)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 1) and c["w2"].shape == (2, 4, 1, 1)
    assert c["idx"].tolist() == [[0, 2, 4], [1, 3, 5]]
    assert not r.report.frozen_ops
    _check_independent(m, r)


def test_gather_of_channels_by_a_scattered_constant_index_freezes_them():
    text = """
    g (float[1,3,4] x) => (float[1,3,4] y) {
      [c1] a = Conv(x, w1, b1)
      [r] h = Relu(a)
      [gat] y = Gather<axis=1>(h, idx)
    }"""
    m = build(text, {"w1": (8, 3, 1), "b1": (8,), "idx": np.array([6, 1, 3], np.int64)})
    r = prune_onnx(m)
    assert consts(r.model)["w1"].shape == (8, 3, 1)  # nothing to prune: every channel is frozen
    assert any("indexing a channel dimension" in why for g in r.report.groups for why in g.reasons)


def test_constant_computed_from_pruned_weights_is_taken_from_the_sliced_original():
    """EdgeNeXt's position encoding: a conv over a grid computed from the input's shape, added to the features;
    the exporter gave it the same (all-zero) bias initializer as a pruned conv. Re-run on the sliced bias it
    fails; its value is the original's, sliced."""
    text = """
    g (float[1,3,2,2] x) => (float[1,2,2,2] y) {
      [c1] a = Conv(x, w1, b1)
      [sh] xs = Shape(x)
      [gr] ones = ConstantOfShape<value=float[1] {1.5}>(xs)
      [gm] grid = Mul(ones, g0)
      [pc] p = Conv(grid, wp, b1)
      [pr] q = Reshape(p, shp)
      [pt] pe = Transpose<perm=[0,2,1]>(q)
      [ar] a3 = Reshape(a, shp2)
      [at] a4 = Transpose<perm=[0,2,1]>(a3)
      [add] s = Add(a4, pe)
      [back] s2 = Transpose<perm=[0,2,1]>(s)
      [br] s3 = Reshape(s2, shp3)
      [c2] y = Conv(s3, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "g0": (1, 3, 2, 2), "wp": (8, 3, 1, 1),
                     "shp": np.array([1, 8, 4], np.int64), "shp2": np.array([1, 8, 4], np.int64),
                     "shp3": np.array([1, 8, 2, 2], np.int64), "w2": (2, 8, 1, 1)})  # fmt: skip
    r = prune_onnx(m, removed_ok=("sh", "gr", "gm", "pc", "pr", "pt"))
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 1, 1) and c["w2"].shape == (2, 4, 1, 1)
    add = next(n for n in r.model.graph.node if n.name == "add")
    assert c[add.input[1]].shape == (1, 4, 4)
    _check_independent(m, r)


def test_l2_normalize_as_exported_prunes_with_its_input():
    """F.normalize exported by TorchScript: x / Expand(Clip(ReduceL2(x)), Shape(x)) over the channel dim (SwinV2's
    cosine attention). A removed channel adds nothing to the norm, so the channels prune; the expanded divisor
    follows x."""
    text = """
    g (float[1,3,4] x) => (float[1,2,4] y) {
      [c1] a = Conv(x, w1, b1)
      [n2] nrm = ReduceL2<axes=[1], keepdims=1>(a)
      [clip] c = Clip(nrm, eps)
      [sh] s = Shape(a)
      [ex] e = Expand(c, s)
      [div] d = Div(a, e)
      [c2] y = Conv(d, w2)
    }"""
    m = build(text, {"w1": (8, 3, 1), "b1": (8,), "w2": (2, 8, 1), "eps": np.array(1e-12, np.float32)})
    r = prune_onnx(m)
    c = consts(r.model)
    assert c["w1"].shape == (4, 3, 1) and c["w2"].shape == (2, 4, 1)
    assert not any(g.frozen and g.channels_before == 8 for g in r.report.groups)
    _check_independent(m, r)
