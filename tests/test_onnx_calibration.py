"""Data-driven criteria on ONNX models (ONNX Runtime) against the PyTorch path, ``prunec prune --calibration``.

One digits CNN (scikit-learn's 8x8 digits; train, calibration and evaluation samples disjoint) is trained
in-process, exported to ONNX, and scored by each criterion the ONNX adapter serves through both adapters on
the same calibration batches: the scores, the weight updates and the pruned models must agree.
"""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import compiler
from benchmarks.onnx_calibration import batches, digits_splits, export, onnx_accuracy, torch_accuracy, train
from compiler import cli
from compiler.options import Options
from compiler.pipeline import Steps, compile_with, weight_updates
from frontends.errors import InvalidArgumentError, UnsupportedModelError, VerificationError
from frontends.onnx import load_onnx
from frontends.onnx.adapter import OnnxAdapter
from frontends.onnx.calibration import OnnxCalibration
from frontends.onnx.criteria import OnnxDataCriteria
from frontends.torch import load_torch
from frontends.torch.calibration import CalibrationData
from frontends.torch.criteria import DataCriteria
from passes.channel_analysis import ChannelAnalysis
from passes.importance import servable
from tests.test_onnx_large import FAKE_LIMIT, _write_mlp, fake_2gb_limit  # noqa: F401 - the fixture


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    torch.set_num_threads(1)
    data = digits_splits(0)
    model = train(*data["train"], seed=0)
    folder = tmp_path_factory.mktemp("digits")
    src = export(model, str(folder / "digits.onnx"))
    xc = data["cal"][0]
    return SimpleNamespace(model=model, src=src, data=data, folder=folder, cal=batches(xc), xe=data["eval"][0], ye=data["eval"][1])


def _criteria(d, cal_onnx=None, cal_torch=None, labelled=False):
    """The torch and the ONNX data objects of the same model on the same batches."""
    yc = d.data["cal"][1]
    if cal_torch is None:
        cal_torch = [torch.from_numpy(b) for b in d.cal]
        if labelled:
            cal_torch = [(x, torch.from_numpy(yc[i * 64 : i * 64 + len(x)])) for i, x in enumerate(cal_torch)]
    if cal_onnx is None:
        cal_onnx = [{"x": b} for b in d.cal] if not labelled else [(b, yc[i * 64 : i * 64 + len(b)]) for i, b in enumerate(d.cal)]
    example = d.xe[:4]
    tm = load_torch(d.model, (torch.from_numpy(example),))
    at = ChannelAnalysis().call(tm.graph)
    dt = DataCriteria(tm, at, CalibrationData.from_user(cal_torch, (torch.from_numpy(example),)))
    om = load_onnx(d.src, (example,))
    ao = ChannelAnalysis().call(om.graph)
    do = OnnxDataCriteria(om, ao, OnnxCalibration.from_user(cal_onnx, om))
    return at, dt, ao, do


def _by_unit(analysis, scores):
    """Class scores keyed by (producer weight, unit): the same key in both adapters' analyses."""
    return {(p.weight, j): scores[c] for p in analysis.producers for j, c in enumerate(analysis.atom_class[p.atoms])}


def _assert_same_scores(at, st, ao, so, rtol):
    t, o = _by_unit(at, st), _by_unit(ao, so)
    assert t.keys() == o.keys()
    keys = sorted(t)
    a, b = np.array([t[k] for k in keys]), np.array([o[k] for k in keys])
    assert np.array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(a)
    assert ok.sum() >= 100  # c1..fc1's 144 channels are scored
    np.testing.assert_allclose(b[ok], a[ok], rtol=rtol, atol=rtol * np.abs(a[ok]).max())
    assert np.std(a[ok]) > 0.05 * np.abs(a[ok]).mean()  # scores that differ between channels: the check can fail


@pytest.mark.parametrize("criterion", ["activation", "n2ps", "obs"])
def test_statistics_criteria_agree_with_torch(digits, criterion):
    at, dt, ao, do = _criteria(digits)
    _assert_same_scores(at, getattr(dt, criterion)(), ao, getattr(do, criterion)(), 1e-4)


def test_mrp_agrees_with_torch_with_and_without_labels(digits):
    for labelled in (False, True):
        at, dt, ao, do = _criteria(digits, labelled=labelled)
        cand_t = np.concatenate([g.classes[~g.frozen] for g in at.groups])
        cand_o = np.concatenate([g.classes[~g.frozen] for g in ao.groups])
        _assert_same_scores(at, dt.mrp(cand_t), ao, do.mrp(cand_o), 2e-3)


def test_statistics_are_per_consumer_not_kept_activations(digits):
    """Each batch is reduced at once: the data object keeps per-channel statistics and one Hessian per layer."""
    _, _, _, do = _criteria(digits)
    do.obs()
    sizes = [v.size for v in list(do._abs.values()) + list(do._means.values())]
    assert max(sizes) == 128  # fc1 reads 32 channels x 2 x 2 positions; nothing keeps a batch's samples
    assert {H.shape for _, H in do.layers()} == {(16 * 9 + 1,) * 2, (32 * 9 + 1,) * 2, (128 + 1,) * 2, (64 + 1,) * 2}


def test_statistics_fetched_in_chunks_are_the_same(digits):
    _, _, _, whole = _criteria(digits)
    _, _, _, chunked = _criteria(digits)
    chunked.chunk_bytes = 1  # one consumer input per run
    np.testing.assert_allclose(chunked.obs(), whole.obs(), rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(chunked.activation(), whole.activation(), rtol=1e-12, equal_nan=True)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_obs_compensation_and_bias_propagation_match_torch(digits):
    """The pruned ONNX model computes what the pruned PyTorch module computes (same channels removed, same
    compensated weights, a bias created for the conv that has none); verification passes on the updated model."""
    cal_t = [torch.from_numpy(b) for b in digits.cal]
    cal_o = list(digits.cal)
    example = digits.xe[:8]
    for options in ({"importance": "obs"}, {"importance": "activation", "bias_propagation": True}):
        rt = compiler.compile(digits.model, (torch.from_numpy(example),), ratio=0.5, calibration=cal_t, **options)
        ro = compiler.compile(digits.src, (example,), ratio=0.5, calibration=cal_o, **options)
        plain = compiler.compile(digits.src, (example,), ratio=0.5, calibration=cal_o, importance=options["importance"],
                                 compensate=False, bias_propagation=False)  # fmt: skip
        with torch.no_grad():
            want = rt.model(torch.from_numpy(digits.xe)).numpy()
        got = ro(digits.xe)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert np.abs(plain(digits.xe) - want).max() > 1e-2  # without the updates the outputs differ: the check can fail
        v = ro.report.verification
        assert v["passed"] and v["nodes_checked"] > 0
        w = _weights(ro.model)
        c3 = next(n for n in ro.model.graph.node if n.name == "/c3/Conv")  # exported without a bias: given one
        assert len(c3.input) == 3 and w[c3.input[2]].shape == (w["c3.weight"].shape[0],)
    assert ro.report.settings.get("bias_propagated_constants", 0) > 0


def test_updates_never_touch_the_input(digits):
    before = hashlib.sha256(open(digits.src, "rb").read()).hexdigest()
    proto = onnx.load(digits.src)
    copy_before = proto.SerializeToString()
    compiler.compile(proto, (digits.xe[:4],), ratio=0.5, importance="obs", calibration=list(digits.cal))
    assert proto.SerializeToString() == copy_before
    assert hashlib.sha256(open(digits.src, "rb").read()).hexdigest() == before


def _compiled(digits, importance="obs"):
    adapter = OnnxAdapter(digits.src, (digits.xe[:8],), 0, list(digits.cal))
    opts = Options(ratio=0.5, importance=importance)
    done = compile_with(adapter, opts, None, {})
    updates, _ = weight_updates(done.plan, opts, Steps())
    return adapter, done, updates


def test_verification_catches_a_corrupted_weight_update(digits):
    adapter, done, updates = _compiled(digits)
    rewritten = adapter.rewrite(done.plan, updates)
    assert adapter.verify(done.plan, rewritten, updates, 1e-4)["passed"]
    # the reference without the updates, or with one of them changed, is not what the pruned model computes
    with pytest.raises(VerificationError):
        adapter.verify(done.plan, rewritten, {}, 1e-4)
    name = "fc1.weight"
    bad = dict(updates)
    bad[name] = updates[name] * np.float32(1.01)
    with pytest.raises(VerificationError):
        adapter.verify(done.plan, rewritten, bad, 1e-4)
    # a pruned model whose compensated weight was corrupted after the rewrite
    corrupt = adapter.rewrite(done.plan, updates)
    t = next(t for t in corrupt.model.graph.initializer if t.name == name)
    arr = numpy_helper.to_array(t).copy()
    arr[0, 0] += 0.05
    t.CopyFrom(numpy_helper.from_array(arr, name))
    with pytest.raises(VerificationError):
        adapter.verify(done.plan, corrupt, updates, 1e-4)


def test_gradient_criteria_are_refused_naming_those_that_run(digits):
    runs = ", ".join(servable(OnnxAdapter.capabilities))
    assert runs == "l1, l2, obs, mrp, activation, n2ps, bn_scale, random"
    for name in ("taylor", "taylor2", "mrs", "obd", "synflow"):
        with pytest.raises(UnsupportedModelError) as info:
            compiler.compile(digits.src, (digits.xe[:4],), importance=name, calibration=list(digits.cal))
        assert str(info.value).endswith(f"criteria for onnx models: {runs}")


def test_calibration_batches_forms_and_refusals(digits):
    om = load_onnx(digits.src, (digits.xe[:4],))
    x = digits.cal[0]
    forms = [[x], [{"x": x}], [(x,)], [torch.from_numpy(x)], [(x, digits.data["cal"][1][:64])]]
    for cal in forms:
        got = OnnxCalibration.from_user(cal, om)
        np.testing.assert_array_equal(got.batches[0].inputs["x"], x)
    assert OnnxCalibration.from_user(forms[-1], om).labelled
    for cal, needle in [
        ([{"y": x}], "'y' names no input"),
        ([x[:, 0]], "shape [64, 8, 8] does not match"),
        ([x.astype(np.int64)], "dtype int64"),
        ([(x, x, x)], "expected 1 input array(s)"),
        ([(x, np.zeros(3, np.int64))], "one per sample (64)"),
        ([x, (x, digits.data["cal"][1][:64])], "mixes batches"),
        ([], "empty"),
        (x, "give an iterable of batches"),
    ]:
        with pytest.raises(InvalidArgumentError, match=None) as info:
            OnnxCalibration.from_user(cal, om)
        assert needle in str(info.value), str(info.value)
    with pytest.raises(InvalidArgumentError, match="loss_fn"):
        compiler.compile(digits.src, (x,), importance="obs", calibration=[x], loss_fn=lambda o, y: o.sum())


def test_a_fixed_batch_size_splits_the_batches(digits, tmp_path):
    fixed = str(tmp_path / "fixed.onnx")
    with torch.no_grad():
        torch.onnx.export(digits.model, (torch.zeros(4, 1, 8, 8),), fixed, dynamo=False, opset_version=17, input_names=["x"])
    om = load_onnx(fixed)
    cal = OnnxCalibration.from_user([digits.cal[0]], om)
    assert [b.size for b in cal.batches] == [4] * 16
    with pytest.raises(InvalidArgumentError, match="fixed batch size of 4"):
        OnnxCalibration.from_user([digits.cal[0][:6]], om)
    res = compiler.compile(fixed, None, ratio=0.5, importance="obs", calibration=[digits.cal[0]])
    assert res.report.verification["passed"]


# -- the command line ------------------------------------------------------------------------------------


def _main(args, capsys):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("prunec:")]


def test_cli_bad_calibration_files(digits, tmp_path, capsys):
    x = digits.cal[0]
    cases = {
        "missing.npz": None,
        "wrong_name.npz": {"y": x},
        "two.npz": {"x": x, "labels": np.zeros(64, np.int64)},
        "misshapen.npz": {"x": x[:, 0]},
        "wrong_size.npz": {"x": np.zeros((10, 1, 9, 9), np.float32)},
        "ints.npz": {"x": x.astype(np.int64)},
        "empty.npz": {"x": x[:0]},
    }
    needles = {
        "missing.npz": "no such file",
        "wrong_name.npz": "array 'y' names no input of the model; name one array per input: x",
        "two.npz": "array 'labels' names no input",
        "misshapen.npz": "array 'x' has shape [64, 8, 8]; the input takes [N, 1, 8, 8]",
        "wrong_size.npz": "array 'x' has shape [10, 1, 9, 9]; the input takes [N, 1, 8, 8]",
        "ints.npz": "array 'x' has dtype int64; the input takes float32",
        "empty.npz": "same number of samples (> 0)",
    }
    (tmp_path / "notnpz.npz").write_text("hello")
    needles["notnpz.npz"] = "is not an .npz file"
    before = hashlib.sha256(open(digits.src, "rb").read()).hexdigest()
    for name, needle in needles.items():
        path = tmp_path / name
        if cases.get(name) is not None:
            np.savez(path, **cases[name])
        out = tmp_path / "out.onnx"
        code, _, err = _main(["prune", digits.src, "-o", out, "--importance", "obs", "--calibration", path], capsys)
        lines = _errors(err)
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"prunec: error: --calibration {path}") and needle in lines[0], lines[0]
        assert not out.exists()
    assert hashlib.sha256(open(digits.src, "rb").read()).hexdigest() == before


def test_cli_lists_exactly_the_onnx_criteria(digits, tmp_path, capsys):
    runs = ", ".join(servable(OnnxAdapter.capabilities))
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["prune"].format_help()
    assert runs.replace(" ", "") in help_text.replace(" ", "").replace("\n", "")
    for name, needle in [("taylor", "needs gradients"), ("nope", "is not a criterion")]:
        code, _, err = _main(["prune", digits.src, "-o", tmp_path / "o.onnx", "--importance", name], capsys)
        assert code == 2 and needle in err and err.strip().endswith(runs)
        assert not (tmp_path / "o.onnx").exists()


def test_cli_target_macs_and_scope(digits, tmp_path, capsys):
    np.savez(tmp_path / "cal.npz", x=digits.data["cal"][0])
    js = tmp_path / "r.json"
    out = tmp_path / "o.onnx"
    code, _, err = _main(
        ["prune", digits.src, "-o", out, "--importance", "n2ps", "--calibration", tmp_path / "cal.npz",
         "--target-macs", "0.5", "--scope", "global", "--json", js], capsys,
    )  # fmt: skip
    assert code == 0, err
    import json

    rep = json.loads(js.read_text())
    assert rep["settings"]["target_macs"] == 0.5 and rep["settings"]["scope"] == "global"
    assert 0.2 < rep["macs_ratio"] <= 0.5
    for args, needle in [(["--target-macs", "x"], "--target-macs"), (["--scope", "everywhere"], "scope"),
                         (["--ratio", "0.5", "--target-macs", "0.5"], "only one")]:  # fmt: skip
        code, _, err = _main(["prune", digits.src, "-o", tmp_path / "o2.onnx", *args], capsys)
        assert code == 2 and needle in err, err
        assert not (tmp_path / "o2.onnx").exists()


def test_acceptance_cli_obs_keeps_the_torch_accuracy_and_beats_l2(digits, tmp_path, capsys):
    """``prunec prune digits.onnx --importance obs --calibration cal.npz`` at ratio 0.5 keeps the accuracy of the
    PyTorch path with obs on the same batches (within 0.01) and beats l2, on held-out digits."""
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=digits.data["cal"][0])
    acc = {}
    for importance in ("obs", "l2"):
        out = tmp_path / f"{importance}.onnx"
        code, _, err = _main(["prune", digits.src, "-o", out, "--ratio", "0.5", "--importance", importance, "--calibration", cal], capsys)
        assert code == 0, err
        acc[importance] = onnx_accuracy(str(out), digits.xe, digits.ye)
    torch_obs = compiler.compile(
        digits.model, (torch.from_numpy(digits.xe[:8]),), ratio=0.5, importance="obs",
        calibration=[torch.from_numpy(b) for b in digits.cal],
    )  # fmt: skip
    acc_torch = torch_accuracy(torch_obs.model, digits.xe, digits.ye)
    assert abs(acc["obs"] - acc_torch) <= 0.01, (acc, acc_torch)
    assert acc["obs"] > acc["l2"] + 0.1, acc
    assert os.path.getsize(tmp_path / "obs.onnx") < 0.6 * os.path.getsize(digits.src)


SHARED_BIAS = """
g (float[N,3,8,8] x) => (float[N,4] y) {
  [c1] a = Conv<pads=[1,1,1,1]>(x, w1, b)
  [r1] h = Relu(a)
  [c2] c = Conv(h, w2, b)
  [r2] k = Relu(c)
  [gap] p = GlobalAveragePool(k)
  [fl] f = Flatten(p)
  [fc] y = Gemm<transB=1>(f, w3, b3)
}
"""


@pytest.mark.parametrize("options", [{"importance": "obs"}, {"importance": "activation", "bias_propagation": True}])
def test_a_bias_shared_between_layers_is_not_updated_in_place(options):
    """Exporters share equal constants (zero biases of an untrained net): an update of c2's bias gives c2 a bias of
    its own, c1 keeps reading the shared one; verification passes (it failed when the shared bias was updated)."""
    from tests._onnx_helpers import build

    m = build(SHARED_BIAS, {"w1": (16, 3, 3, 3), "b": np.zeros(16, np.float32), "w2": (16, 16, 3, 3), "w3": (4, 16), "b3": (4,)})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    cal = [rng.standard_normal((16, 3, 8, 8)).astype(np.float32) for _ in range(2)]
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1, calibration=cal, **options)
    assert r.report.verification["passed"]
    nodes = {n.name: n for n in r.model.graph.node}
    assert nodes["c1"].input[2] == "b" and nodes["c2"].input[2] not in ("", "b")
    w = _weights(r.model)
    assert not np.array_equal(w[nodes["c2"].input[2]], np.zeros_like(w[nodes["c2"].input[2]]))  # it was updated
    assert w["b"].shape == (8,) and not w["b"].any()  # the shared one is only sliced


@pytest.mark.parametrize("export_kw", [{"opset_version": 11, "dynamo": False}, {"opset_version": 18, "dynamo": True}])
def test_obs_on_other_exports_matches_the_torch_path(digits, tmp_path, export_kw):
    """An opset-11 TorchScript export (upgraded on a private copy, written back at 11) and a dynamo export prune
    with obs to the PyTorch path's accuracy."""
    path = str(tmp_path / "d.onnx")
    with torch.no_grad():
        if export_kw["dynamo"]:
            dims = ({0: torch.export.Dim("N")},)
            torch.onnx.export(digits.model, (torch.zeros(2, 1, 8, 8),), path, input_names=["x"], dynamic_shapes=dims, verbose=False, **export_kw)
        else:
            torch.onnx.export(digits.model, (torch.zeros(2, 1, 8, 8),), path, input_names=["x"], dynamic_axes={"x": {0: "N"}}, **export_kw)
    r = compiler.compile(path, (digits.xe[:8],), ratio=0.5, importance="obs", calibration=list(digits.cal))
    assert r.report.verification["passed"] and r.report.settings["compensated_layers"] == 4
    out = tmp_path / "p.onnx"
    out.write_bytes(r.model.SerializeToString())
    rt = compiler.compile(digits.model, (torch.from_numpy(digits.xe[:8]),), ratio=0.5, importance="obs",
                          calibration=[torch.from_numpy(b) for b in digits.cal])  # fmt: skip
    assert abs(onnx_accuracy(str(out), digits.xe, digits.ye) - torch_accuracy(rt.model, digits.xe, digits.ye)) <= 0.01


TWO_INPUTS = """
g (float[N,3,8,8] a, float[N,3,8,8] b) => (float[N,4] y) {
  [add] s = Add(a, b)
  [c1] h = Conv<pads=[1,1,1,1]>(s, w1, b1)
  [r1] k = Relu(h)
  [c2] c = Conv(k, w2, b2)
  [r2] q = Relu(c)
  [gap] p = GlobalAveragePool(q)
  [fl] f = Flatten(p)
  [fc] y = Gemm<transB=1>(f, w3, b3)
}
"""


def test_two_inputs_from_dicts_tuples_and_the_cli(tmp_path, capsys):
    from tests._onnx_helpers import build

    m = build(TWO_INPUTS, {"w1": (16, 3, 3, 3), "b1": (16,), "w2": (16, 16, 3, 3), "b2": (16,), "w3": (4, 16), "b3": (4,)})
    src = str(tmp_path / "two.onnx")
    onnx.save(m, src)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((70, 3, 8, 8)).astype(np.float32) for _ in range(2))
    dicts = [{"a": a[i : i + 64], "b": b[i : i + 64]} for i in range(0, 70, 64)]
    tuples = [(a[i : i + 64], b[i : i + 64]) for i in range(0, 70, 64)]
    r1 = compiler.compile(src, (a[:8], b[:8]), ratio=0.5, importance="obs", granularity=1, calibration=dicts)
    r2 = compiler.compile(src, (a[:8], b[:8]), ratio=0.5, importance="obs", granularity=1, calibration=tuples)
    assert r1.report.verification["passed"] and r1.model.SerializeToString() == r2.model.SerializeToString()
    np.savez(tmp_path / "cal.npz", a=a, b=b)
    out = tmp_path / "out.onnx"
    code, _, err = _main(["prune", src, "-o", out, "--importance", "obs", "--granularity", "1", "--calibration", tmp_path / "cal.npz"], capsys)
    assert code == 0, err
    # the CLI batches the file as above and takes its first 8 samples as the example inputs: the same model
    assert onnx.load(str(out)).SerializeToString() == r1.model.SerializeToString()
    np.savez(tmp_path / "short.npz", a=a, b=b[:60])
    code, _, err = _main(["prune", src, "-o", out.with_name("o2.onnx"), "--importance", "obs", "--calibration", tmp_path / "short.npz"], capsys)
    assert code == 2 and "same number of samples" in err and not out.with_name("o2.onnx").exists()


@pytest.mark.usefixtures("fake_2gb_limit")
def test_obs_on_a_model_over_the_2gb_limit(tmp_path, capsys):
    """Under a fake 2 GB limit (tests/test_onnx_large.py): the calibration runs and the compensated rewrite of an
    external-data model go through the light copies ONNX Runtime takes its weights apart from."""
    src = _write_mlp(str(tmp_path / "in"), [256, 64, 64, 8])
    assert onnx.load(src).ByteSize() > FAKE_LIMIT
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(0).standard_normal((20, 256)).astype(np.float32))
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    code, _, err = _main(["prune", src, "-o", out, "--ratio", "0.5", "--granularity", "1", "--importance", "obs",
                       "--calibration", tmp_path / "cal.npz", "--external-data", "--json", tmp_path / "r.json"], capsys)  # fmt: skip
    assert code == 0, err
    import json

    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["settings"]["compensated_layers"] == 2 and rep["verification"]["passed"]


def test_cli_default_importance_is_auto_and_uses_the_calibration(tmp_path):
    """`prunec prune` without --importance picks the criterion from the data as the API does: l2 without
    --calibration, a data criterion with it (the report says which)."""
    import json

    import numpy as np
    import onnx
    import torch

    from compiler import cli
    from compiler.backend import export_onnx

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3)).eval()
    src = tmp_path / "m.onnx"
    src.write_bytes(export_onnx(m, (torch.randn(1, 1, 10, 10),)).SerializeToString())
    name = onnx.load(str(src)).graph.input[0].name
    images = np.random.default_rng(0).standard_normal((64, 1, 10, 10)).astype(np.float32)
    np.savez(tmp_path / "cal.npz", **{name: images})
    chosen = {}
    for tag, extra in (("none", []), ("cal", ["--calibration", str(tmp_path / "cal.npz")])):
        out, rep = tmp_path / f"{tag}.onnx", tmp_path / f"{tag}.json"
        argv = ["prune", str(src), "-o", str(out), "--ratio", "0.5", "--input-shape", "1,1,10,10", "--json", str(rep)]
        assert cli.main([*argv, *extra]) == 0
        chosen[tag] = json.loads(rep.read_text())["settings"]["importance_choice"]["criterion"]
    assert chosen["none"] == "l2", chosen
    assert chosen["cal"] in ("obs", "activation", "n2ps", "mrp"), chosen
