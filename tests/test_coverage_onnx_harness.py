"""The ONNX coverage sweep's harness (``benchmarks/coverage.py --onnx --exporter ...``): a named exporter is used
alone, an export failure is reported by its innermost cause, and the combined table ``coverage_onnx.md`` shows
for each exporter only what its jsonl rows hold (no model claimed that was not run)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

pytest.importorskip("torchvision")
onnx = pytest.importorskip("onnx")

_spec = importlib.util.spec_from_file_location(
    "coverage_sweep_onnx", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "coverage.py")
)
coverage = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(coverage)


def test_named_exporter_is_used_alone(tmp_path, monkeypatch):
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    proto, used = coverage._export_onnx(m, x, str(tmp_path / "m.onnx"), "torchscript")
    assert used == "torchscript" and proto.opset_import[0].version == 17
    calls = []
    real = torch.onnx.export

    def failing(*args, **kwargs):
        calls.append(kwargs.get("dynamo"))
        if not kwargs.get("dynamo"):
            raise RuntimeError("torchscript cannot")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", failing)
    with pytest.raises(RuntimeError, match="torchscript cannot"):  # no fallback to dynamo when one is named
        coverage._export_onnx(m, x, str(tmp_path / "n.onnx"), "torchscript")
    assert calls == [False]


def test_export_reason_names_the_innermost_cause():
    try:
        try:
            raise ValueError("\n  the real reason\nmore")
        except ValueError as inner:
            raise RuntimeError("Failed to export the model with torch.export.\nstep 1/3") from inner
    except RuntimeError as exc:
        reason = coverage._export_reason(exc)
    assert reason == "RuntimeError: Failed to export the model with torch.export. <- ValueError: the real reason"
    assert coverage._export_reason(KeyError("k")) == "KeyError: 'k'"


def test_combined_table_shows_only_rows_that_ran():
    ok = dict(model="a", family="classification", input="3x64x64", status="ok", macs=0.3, params=0.35, nodes=12, groups=5,
              node_error=2e-7, worst_node="v", seconds=1.5)  # fmt: skip
    failed = dict(model="a", family="classification", status="export failed", error="X: no | way")
    todo = [("a", "classification"), ("b", "classification"), ("c", "video")]
    text = coverage.write_combined(todo, {"torchscript": {"a": ok}, "dynamo": {"a": failed}})
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| ") and " | classification" in line or " | video" in line}
    assert "| ok | 0.300 | 0.350 | 12 | 2.0e-07 | 1.5 | export failed |" in rows["a"]
    assert rows["a"].endswith("dynamo: X: no / way |")
    assert rows["b"].count("not run") == 2 and rows["c"].count("not run") == 2
    assert "classification (2 models): torchscript 1 run, dynamo 1 run; segmentation: not run; video: not run" in text
    assert "torchscript: 1 of 1 run compiled and verified (1 below half the MACs, MACs 0.30x to 0.30x)" in text
    assert "dynamo: 0 of 1 run compiled and verified (0 below half the MACs), 1 not exported, 0 failed in prunec" in text
    assert "Both exporters verified on 0 models" in text
    both = coverage.write_combined(todo, {"torchscript": {"a": ok}, "dynamo": {"a": dict(ok, macs=0.4)}})
    assert "on 1: a (0.300 / 0.400)." in both
    both = coverage.write_combined(todo, {"torchscript": {"a": ok}, "dynamo": {"a": dict(ok, macs=0.4, groups=3)}})
    assert "on 1: a (0.300 / 0.400, groups 5 / 3)." in both
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert all(line.count("|") == header.count("|") for line in rows.values())


def test_torchscript_export_of_a_vit_does_not_hit_the_fused_attention_op(tmp_path):
    # Under no_grad an eval nn.MultiheadAttention runs aten::_native_multi_head_attention, which the TorchScript
    # exporter cannot write: the harness exported every torchvision ViT that way and recorded "export failed".
    from torchvision.models.vision_transformer import VisionTransformer

    m = VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=3)
    m = m.eval()
    x = torch.randn(1, 3, 16, 16)
    proto, used = coverage._export_onnx(m, x, str(tmp_path / "vit.onnx"), "torchscript")
    assert used == "torchscript"
    assert {"MatMul", "Softmax"} <= {n.op_type for n in proto.graph.node}
    assert torch.is_grad_enabled()
