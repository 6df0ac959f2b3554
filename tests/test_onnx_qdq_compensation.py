"""Weight updates on quantized (QDQ) ONNX models: OBS compensation of a layer whose weight is int8 codes behind a
``DequantizeLinear`` re-fits the weight and quantizes it again on the layer's own scales and zero points (was: such
layers were never compensated, and an update of their weight was an internal error in ``with_updates``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import compiler
from frontends.onnx import load_onnx
from frontends.onnx.updates import with_updates
from tests._onnx_helpers import consts, op_types

pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")
from tests.test_onnx_qdq import _feeds, _qdq_model  # noqa: E402


def _calibration() -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(200 + i).standard_normal((1, 3, 12, 12)).astype(np.float32)} for i in range(16)]


def test_update_of_a_quantized_weight_gives_new_codes_on_the_same_scales(tmp_path):
    path = _qdq_model(tmp_path, per_channel=True)
    om = load_onnx(path, _feeds())
    before = om.model.SerializeToString()
    name = "c2.weight_DequantizeLinear_Output"
    new = om.static[name] * np.float32(0.8) + np.float32(0.01)
    up = with_updates(om, {name: new})
    assert om.model.SerializeToString() == before  # the loaded model is not changed
    c0, c1 = consts(om.model), consts(up.model)
    codes, scale, zp = c1["c2.weight_quantized"], c1["c2.weight_scale"], c1["c2.weight_zero_point"]
    assert codes.dtype == np.int8 and codes.shape == c0["c2.weight_quantized"].shape
    assert not np.array_equal(codes, c0["c2.weight_quantized"])
    assert np.array_equal(scale, c0["c2.weight_scale"]) and np.array_equal(zp, c0["c2.weight_zero_point"])
    value = (codes.astype(np.float32) - zp.reshape(-1, 1, 1, 1)) * scale.reshape(-1, 1, 1, 1)
    assert np.array_equal(up.static[name], value)  # the static value is what the model computes
    assert np.all(np.abs(value - new) <= scale.reshape(-1, 1, 1, 1) / 2 + 1e-7)
    assert any("quantized again" in n and name in n for n in up.notes)


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_obs_compensation_on_a_qdq_model_requantizes_and_verifies(tmp_path, per_channel):
    path = _qdq_model(tmp_path, per_channel)
    m0 = onnx.load(path)
    kw = dict(ratio=0.5, granularity=1, importance="obs", calibration=_calibration())
    r = compiler.compile(path, _feeds(), **kw)
    plain = compiler.compile(path, _feeds(), compensate=False, **kw)
    s = r.report.settings
    assert s["compensated_layers"] > 0 and plain.report.settings.get("compensated_layers", 0) == 0
    assert np.array_equal(r.plan.selection.pruned, plain.plan.selection.pruned)
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] > 0
    assert op_types(r.model) == op_types(m0)  # still quantized
    c, p, c0 = consts(r.model), consts(plain.model), consts(m0)
    changed = [k for k in ("c2", "c3", "fc") if f"{k}.weight_quantized" in c and not np.array_equal(c[f"{k}.weight_quantized"], p[f"{k}.weight_quantized"])]
    assert changed, "no quantized weight was compensated"
    for k in changed:
        assert c[f"{k}.weight_quantized"].dtype == c0[f"{k}.weight_quantized"].dtype
        assert c[f"{k}.weight_quantized"].shape == p[f"{k}.weight_quantized"].shape
        assert np.array_equal(c[f"{k}.weight_scale"], p[f"{k}.weight_scale"])  # the existing scales, sliced alike
        assert np.isin(c[f"{k}.weight_scale"], c0[f"{k}.weight_scale"]).all()
