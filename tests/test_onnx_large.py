"""Models over protobuf's 2 GB limit prune from the CLI: checked on the path, shape-inferred and run on light
copies, written with their external data beside the output atomically.

The mechanism is tested on a small external-data model under a fake limit (``frontends.onnx.large.LARGE_BYTES``
lowered, and the checker, shape inference and ONNX Runtime made to refuse any model proto over it, as protobuf
refuses one over 2 GB); the real >2 GB case is ``slow`` (about 2.2 GB on disk, several GB of memory)."""

from __future__ import annotations

import os
import resource
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks.onnx_large import write_mlp
from compiler import cli
from frontends.onnx import large
from tests._onnx_helpers import consts

FAKE_LIMIT = 40_000  # bytes: the small model is "over 2 GB" under this limit


def _write_mlp(folder: str, sizes: list[int], seed: int = 0) -> str:
    """``folder/mlp.onnx``: Gemm(transB) + Relu layers of ``sizes``, every weight in ``weights.bin`` beside it, written
    tensor by tensor (benchmarks/onnx_large.py's writer: the model is never a proto in memory with its data)."""
    return write_mlp(folder, sizes, seed)[0]


@pytest.fixture
def fake_2gb_limit(monkeypatch):
    """protobuf's 2 GB limit at FAKE_LIMIT bytes: the checker, shape inference and ONNX Runtime refuse a model proto
    (or its bytes) over it; a path is read as before."""
    monkeypatch.setattr(large, "LARGE_BYTES", FAKE_LIMIT)
    monkeypatch.setattr(large, "MIN_EXTERNAL", 1024)
    import onnxruntime as ort

    def refusing(fn):
        def wrapped(model, *args, **kwargs):
            size = model.ByteSize() if isinstance(model, onnx.ModelProto) else len(model) if isinstance(model, bytes) else 0
            if size > FAKE_LIMIT:
                raise ValueError(f"Failed to serialize proto: {size} bytes over the (fake) 2 GB limit")
            return fn(model, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(onnx.checker, "check_model", refusing(onnx.checker.check_model))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refusing(onnx.shape_inference.infer_shapes))
    monkeypatch.setattr(ort, "InferenceSession", refusing(ort.InferenceSession))


def _prune(src: str, out: str, capsys, *extra: str) -> tuple[int, str]:
    code = cli.main(["prune", src, "-o", out, "--ratio", "0.5", "--granularity", "1", *extra])
    return code, capsys.readouterr().err


def test_external_data_model_over_the_limit_prunes_from_the_cli(tmp_path, capsys, fake_2gb_limit):
    src = _write_mlp(str(tmp_path / "in"), [256, 64, 64, 8])
    assert onnx.load(src).ByteSize() > FAKE_LIMIT
    before = {p: os.path.getmtime(os.path.join(tmp_path, "in", p)) for p in os.listdir(tmp_path / "in")}
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    code, err = _prune(str(src), str(out), capsys, "--external-data")
    assert code == 0, err
    assert {p: os.path.getmtime(os.path.join(tmp_path, "in", p)) for p in os.listdir(tmp_path / "in")} == before
    files = sorted(os.listdir(out.parent))
    assert len(files) == 2 and files[0] == "pruned.onnx" and files[1].startswith("pruned.onnx.") and files[1].endswith(".data")
    onnx.checker.check_model(str(out), full_check=True)  # on the path (the model is "over the limit" in memory)
    m = onnx.load(str(out))
    c = consts(m)
    assert c["w0"].shape == (32, 256) and c["w1"].shape == (32, 32) and c["w2"].shape == (8, 32)
    assert any(t.data_location == TensorProto.EXTERNAL for t in onnx.load(str(out), load_external_data=False).graph.initializer)


def test_without_the_large_model_paths_it_fails(tmp_path, capsys, monkeypatch, fake_2gb_limit):
    """The fake limit bites: with is_large() saying no, the in-memory checker refuses the model (exit 2, nothing
    written) — what a real 2.48 GB model got before."""
    monkeypatch.setattr(large, "is_large", lambda model: False)
    src = _write_mlp(str(tmp_path / "in"), [256, 64, 64, 8])
    out = tmp_path / "pruned.onnx"
    code, err = _prune(str(src), str(out), capsys, "--external-data")
    assert code == 2 and "invalid ONNX model" in err  # the in-memory checker: "Failed to serialize proto", or no data file
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_light_copy_keeps_types_and_dims_and_session_parts_run(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(large, "MIN_EXTERNAL", 1024)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 40)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 300])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 40])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(np.zeros(3, np.float32), "small")],
    )  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    light, moved = large.light_copy(m)
    assert [t.name for t in moved] == ["w"] and light.ByteSize() < 1000
    assert [(t.name, list(t.dims), t.data_type) for t in light.graph.initializer] == [("w", [300, 40], 1), ("small", [3], 1)]
    assert m.graph.initializer[0].HasField("raw_data")  # the model itself is untouched
    assert large.session_parts(m)[1] == {}  # under the limit: serialized whole
    monkeypatch.setattr(large, "LARGE_BYTES", 1000)
    large.check_model(m, full_check=True)  # through a sparse data file
    bad = onnx.ModelProto()
    bad.CopyFrom(m)
    bad.graph.node[0].input[1] = "small"  # [2, 300] @ [3]: the checker must still see the dims
    with pytest.raises(Exception, match="Incompatible dimensions"):
        large.check_model(bad, full_check=True)
    blob, fed = large.session_parts(m)
    x = rng.standard_normal((2, 300)).astype(np.float32)
    sess = large.FedSession(ort.InferenceSession(blob, providers=["CPUExecutionProvider"]), fed)
    y = sess.run(None, {"x": x})[0]
    assert list(fed) == ["w"] and len(blob) < 1000 and np.allclose(y, x @ w, atol=1e-4)
    assert [i.name for i in sess.get_inputs()] == ["x"]


@pytest.mark.slow
def test_real_model_over_2gb_prunes_from_the_cli(tmp_path, capsys):
    """2.15 GB of float32 weights (8192 -> 16384 -> 16384 -> 8192) with external data: pruned from the CLI at ratio
    0.5, verified, written with its data file beside it, at a peak RSS (this process's, pytest's included) of at
    most 2.5x the weights. Prints the time and the peak RSS."""
    t0 = time.perf_counter()
    src = _write_mlp(str(tmp_path / "in"), [8192, 16384, 16384, 8192])
    data = os.path.getsize(tmp_path / "in" / "weights.bin")
    assert data > 2**31
    t1 = time.perf_counter()
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    code, err = _prune(str(src), str(out), capsys, "--external-data")  # the 0.8 GB result: its data beside it too
    t2 = time.perf_counter()
    assert code == 0, err
    onnx.checker.check_model(str(out), full_check=True)
    m = onnx.load(str(out), load_external_data=False)
    dims = {t.name: list(t.dims) for t in m.graph.initializer}
    assert dims["w0"] == [8192, 8192] and dims["w1"] == [8192, 8192] and dims["w2"] == [8192, 8192]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"\nlarge model: {data / 1e9:.2f} GB written in {t1 - t0:.0f} s, pruned in {t2 - t1:.0f} s, peak RSS {peak:.1f} GB")
    assert peak * 1e9 <= 2.5 * data  # memory near the weights (issue #17): 5.9x before the weights were mapped
