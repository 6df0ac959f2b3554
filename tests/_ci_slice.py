"""The slow sweeps' CI slice: a fixed, hand-picked sample of the ``slow`` tests that ``.ci/run`` runs.

``python -m pytest -q --slow-slice`` (or ``PRUNEC_SLOW_SLICE=1``) runs the default suite plus these
tests; ``--runslow`` runs every slow test. The sample is stratified by suite (torchvision, timm,
ONNX exports, transformers) and, within each, by the construct a model brings that the default suite
does not already run (the default suite has its own slices: tests/test_torchvision.py,
tests/test_coverage_slice.py::test_family_half, tests/test_timm.py::test_timm_slice). The list is
deterministic: the same tests in every run, chosen for coverage and for a total under ten minutes on
two idle cores. Every entry must name a collected test: ``conftest.py`` fails the run on a stale entry.
"""

from __future__ import annotations

# node id -> what the model brings that the default suite does not run
CI_SLICE: dict[str, str] = {
    # torchvision, the coverage sweep (benchmarks/coverage.py sizes)
    "tests/test_coverage_slice.py::test_sweep_half[resnext50_32x4d-classification]": "grouped-conv residual bottlenecks",
    "tests/test_coverage_slice.py::test_sweep_half[densenet161-classification]": "dense concat, growth 48",
    "tests/test_coverage_slice.py::test_sweep_half[efficientnet_v2_s-classification]": "fused MBConv, depthwise, SE",
    "tests/test_coverage_slice.py::test_sweep_half[regnet_x_800mf-classification]": "grouped convs without SE",
    "tests/test_coverage_slice.py::test_sweep_half[alexnet-classification]": "flatten of a pooled map into linears",
    "tests/test_coverage_slice.py::test_sweep_half[vit_b_16-classification]": "ViT-B/16",
    "tests/test_coverage_slice.py::test_sweep_half[deeplabv3_resnet50-segmentation]": "dilated residual net, ASPP with a pooled branch",
    "tests/test_coverage_slice.py::test_sweep_half[swin3d_t-video]": "3D shifted-window attention, inlined",
    # timm, at default input sizes
    "tests/test_timm.py::test_timm_sweep[cspdarknet53]": "CSP stages: split halves that go different ways",
    "tests/test_timm.py::test_timm_sweep[dpn68]": "dual path: residual and dense concat in one block",
    "tests/test_timm.py::test_timm_sweep[ghostnet_100]": "ghost modules: concat of a conv and its depthwise copy",
    "tests/test_timm.py::test_timm_sweep[rexnet_100]": "residual add into the first channels only",
    "tests/test_timm.py::test_timm_sweep[hrnet_w18_small]": "multi-resolution branches fused by upsample and add",
    "tests/test_timm.py::test_timm_sweep[convnextv2_atto]": "global response norm over channels",
    "tests/test_timm.py::test_timm_sweep[levit_128]": "attention with BN-linears, subsampling attention",
    "tests/test_timm.py::test_timm_sweep[beit_base_patch16_224]": "relative position bias, layer scale",
    "tests/test_timm.py::test_timm_sweep[eva02_tiny_patch14_224]": "rotary embeddings, SwiGLU",
    "tests/test_timm.py::test_timm_sweep[efficientformer_l1]": "pooling-mixer stages, then attention with a learned bias",
    # ONNX exports (both exporters)
    "tests/test_onnx_models.py::test_exported_model_sweep[densenet121-torchscript]": "dense concat, TorchScript export",
    "tests/test_onnx_models.py::test_exported_model_sweep[efficientnet_b0-dynamo]": "depthwise and SE, dynamo export",
    "tests/test_onnx_models.py::test_exported_model_sweep[googlenet-dynamo]": "inception concat, dynamo export",
    "tests/test_onnx_models.py::test_dynamic_batch_export[convnext_tiny-dynamo]": "dynamic batch through LayerNorm and permutes",
    "tests/test_onnx_models.py::test_exported_vit_prunes_the_mlps[torchscript]": "exported ViT: heads and MLPs",
    # transformers, from configs
    "tests/test_transformers_sweep.py::test_transformers_sweep[qwen2]": "decoder LM: grouped-query attention 4:1, rotary, RMSNorm",
    "tests/test_transformers_sweep.py::test_transformers_sweep[roberta]": "encoder at BERT-base width, save/reload in its class",
}
