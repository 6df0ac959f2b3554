"""The coverage sweep's per-model big-memory lock (``benchmarks/coverage.py``): a large model's child process runs
holding the shared machine's ``flock`` (one such run at a time), a small one does not wait for it, and the lock is
taken per model, released between models, never around a sweep."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import threading

import pytest

pytest.importorskip("torchvision")

_spec = importlib.util.spec_from_file_location(
    "coverage_sweep_bigmem", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "coverage.py")
)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)


def _held(path: str) -> bool:
    """Whether another open file description holds ``path``'s exclusive flock."""
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def test_which_models_take_the_lock():
    assert coverage.needs_bigmem("vgg16", "classification", 138.4)
    assert not coverage.needs_bigmem("resnet18", "classification", 11.7)
    assert coverage.needs_bigmem("unknown_net", "classification", None)  # size unknown: assume big
    assert coverage.needs_bigmem("s3d", "video", 8.3)  # 16 frames at 224x224
    assert coverage.needs_bigmem("mvit_v2_s", "video", 34.5)
    assert not coverage.needs_bigmem("r3d_18", "video", 33.4)  # 8 frames at 64x64


def test_lock_waits_for_another_holder_and_is_released(tmp_path):
    path = str(tmp_path / "bigmem.lock")
    other = open(path, "a")
    fcntl.flock(other, fcntl.LOCK_EX)
    entered, waited = threading.Event(), []

    def take():
        with coverage.bigmem_lock(True, path) as w:
            waited.append(w)
            entered.set()

    th = threading.Thread(target=take)
    th.start()
    assert not entered.wait(0.4)  # blocked while the other holder has it
    fcntl.flock(other, fcntl.LOCK_UN)
    other.close()
    assert entered.wait(5)
    th.join(5)
    assert waited[0] >= 0.35
    assert not _held(path)  # released after the block
    with coverage.bigmem_lock(False, path) as w:  # not taken: no wait, nothing held
        assert w == 0.0 and not _held(path)


def test_run_isolated_holds_the_lock_only_for_a_big_model(tmp_path, monkeypatch):
    path = str(tmp_path / "bigmem.lock")
    monkeypatch.setattr(coverage, "BIGMEM_LOCK", path)
    seen = []

    def child(name, *args):
        seen.append((name, _held(path)))
        return dict(model=name, status="ok")

    monkeypatch.setattr(coverage, "_run_child", child)
    big = coverage.run_isolated("vgg16", "classification", 1000.0, 10.0, True, "dynamo", bigmem=True)
    small = coverage.run_isolated("resnet18", "classification", 1000.0, 10.0, True, "dynamo", bigmem=False)
    assert seen == [("vgg16", True), ("resnet18", False)]
    assert "bigmem_wait_s" in big and "bigmem_wait_s" not in small
    assert not _held(path)


def test_an_exported_model_onnx_runtime_cannot_run_is_named_with_the_runtime_message():
    # mvit_v1_b through the TorchScript exporter: an If whose branch output carries the traced shape fails in
    # ONNX Runtime on the unpruned file; the row must say the export is broken, not that prunec failed
    import numpy as np
    import torch
    from onnx import TensorProto, helper

    def model(target):
        shape = helper.make_tensor("s", TensorProto.INT64, [len(target)], target)
        g = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [shape])  # fmt: skip
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    x = torch.from_numpy(np.ones((2, 6), np.float32))
    assert coverage._ort_refuses(model([3, 4]), x) == ""
    why = coverage._ort_refuses(model([5, 5]), x)
    assert why.startswith(("Fail:", "RuntimeException:", "InvalidArgument:")) and "Reshape" in why, why


def test_a_child_over_the_memory_cap_is_ended_and_its_row_says_so():
    # the shared machine has 24 GB and no swap: a model whose export grows without bound (mvit_v2_s through the
    # TorchScript exporter passed 21 GB) is ended by the harness, not by the kernel's OOM killer
    row = coverage._run_child("resnet18", "classification", 1000.0, 120.0, True, "torchscript", mem_cap_gb=0.15)
    assert row["status"] == "memory cap" and "during build/export" in row["error"] and row["peak_rss_gb"] > 0.15
    row = coverage._run_child("resnet18", "classification", 1000.0, 1.0, True, "torchscript", mem_cap_gb=100.0)
    assert row["status"] == "timeout" and row["error"].startswith("no result within 1 s")


def test_an_export_with_external_data_is_compiled_from_its_path(monkeypatch):
    # vit_h_14 / regnet_y_128gf export over 2 GB: the exporter writes the weights as external data, and the harness
    # must hand prunec the file (as `prunec compile model.onnx` does), not a proto it cannot serialize
    import onnx

    real = coverage._export_onnx

    def external(m, x, path, exporter=None):
        proto, used = real(m, x, path, exporter)
        onnx.save_model(onnx.load(path), path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
        return onnx.load(path, load_external_data=False), used

    monkeypatch.setattr(coverage, "_export_onnx", external)
    row = coverage.one("squeezenet1_0", "classification", 1000.0, True, "torchscript")
    assert row["status"] == "ok" and row["compiled_from"] == "path (external data)", row
    assert row["nodes"] > 0 and row["macs"] < 1.0
    monkeypatch.setattr(coverage, "_export_onnx", real)
    row = coverage.one("squeezenet1_0", "classification", 1000.0, True, "torchscript")
    assert row["status"] == "ok" and "compiled_from" not in row


def test_a_big_child_is_ended_when_the_shared_machine_runs_out_of_memory(monkeypatch):
    # other jobs' memory counts too: a run at 4 GB while the machine has 0.5 GB left is ended before the OOM killer
    monkeypatch.setattr(coverage, "_rss_gb", lambda pid: 4.0)
    monkeypatch.setattr(coverage, "_available_gb", lambda: 0.5)
    row = coverage._run_child("resnet18", "classification", 1000.0, 120.0, True, "torchscript", mem_cap_gb=100.0)
    assert row["status"] == "memory cap" and "available memory fell to 0.50 GB with this run at 4.0 GB" in row["error"]
    monkeypatch.setattr(coverage, "_available_gb", lambda: 8.0)  # enough left: the 4 GB run goes on
    row = coverage._run_child("resnet18", "classification", 1000.0, 1.0, True, "torchscript", mem_cap_gb=100.0)
    assert row["status"] == "timeout"
