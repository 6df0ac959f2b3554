"""torchvision detection models: backbone, FPN and heads prune and verify; the data-dependent parts run as they are.

Fast tests use small detectors built from torchvision's classes (a three-conv backbone, a 64-96
pixel transform); the five torchvision models of issue #22 are ``slow``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import compiler
from frontends.errors import InvalidArgumentError, VerificationError
from frontends.torch.rewrite import RewriteFX
from frontends.torch.verify import VerifyFX

tv = pytest.importorskip("torchvision")
from torchvision.models import detection  # noqa: E402
from torchvision.models.detection.anchor_utils import AnchorGenerator  # noqa: E402
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead  # noqa: E402
from torchvision.models.detection.retinanet import RetinaNetHead  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402


def _backbone(out: int = 16) -> nn.Module:
    body = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(32, out, 1),
    )  # fmt: skip
    body.out_channels = out
    return body


def tiny_fasterrcnn() -> nn.Module:
    torch.manual_seed(0)
    return detection.FasterRCNN(
        _backbone(), num_classes=None, min_size=64, max_size=96, box_score_thresh=0.0,
        rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0),)), rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=40, box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(16 * 49, 64),
        box_predictor=FastRCNNPredictor(64, 3),
    ).eval()  # fmt: skip


def tiny_retinanet() -> nn.Module:
    torch.manual_seed(0)
    anchors = AnchorGenerator(((16, 32),), ((0.5, 1.0),))
    return detection.RetinaNet(
        _backbone(), num_classes=3, min_size=64, max_size=96, anchor_generator=anchors, score_thresh=0.0,
        head=RetinaNetHead(16, anchors.num_anchors_per_location()[0], 3),
    ).eval()  # fmt: skip


def _images(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in sizes]


def _leaves(gm: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_module"}


def test_fasterrcnn_prunes_its_backbone_and_heads_and_verifies():
    m = tiny_fasterrcnn()
    x = _images((64, 80), (72, 64))
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    v = r.report.verification
    assert r.report.trace_method == "concrete_trace"
    assert v["passed"] and v["nodes_checked"] > 20  # the heads' outputs before post-processing among them
    assert r.report.macs_after < 0.6 * r.report.macs_before
    # the data-dependent parts are single run-time nodes, kept as they are
    assert {"transform", "rpn.anchor_generator", "rpn.runtime_filter_proposals", "roi_heads.box_roi_pool",
            "roi_heads.runtime_postprocess_detections", "transform.runtime_postprocess"} <= _leaves(r.model)  # fmt: skip
    out = r.model(_images((90, 70), (64, 64), seed=3))  # other image sizes run
    assert [sorted(o) for o in out] == [["boxes", "labels", "scores"]] * 2
    assert all(o["boxes"].shape[1] == 4 for o in out)
    with pytest.raises(InvalidArgumentError, match="number of images"):  # list lengths are the example's
        r.model(_images((64, 64)))


def test_the_concrete_trace_reads_sizes_at_run_time():
    """Unpruned, the traced graph gives the model's own detections on images of other sizes (sizes are not baked in)."""
    m = tiny_fasterrcnn()
    r = compiler.compile(m, (_images((64, 80)),), ratio=0.5, granularity=1, verify=False)
    for size in [(96, 64), (50, 120)]:
        y = _images(size, seed=5)
        want = m(y)[0]
        got = r.traced.gm(*y)  # the flat traced graph: one leaf per image
        assert len(got) == 3 and torch.equal(got[0], want["boxes"]) and torch.equal(got[2], want["scores"])


def test_retinanet_prunes_and_verifies():
    m = tiny_retinanet()
    x = _images((64, 64))
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    assert r.report.verification["passed"]
    assert r.report.macs_after < 0.7 * r.report.macs_before
    assert {"anchor_generator", "runtime_postprocess_detections"} <= _leaves(r.model)
    # the anchor generator reads only the feature maps' sizes: the backbone's output channels still prune
    assert r.model.get_submodule("backbone.5").out_channels < 16
    out = r.model(_images((80, 96), seed=2))
    assert out[0]["boxes"].shape[1] == 4


def test_keypointrcnn_prunes_its_keypoint_head_past_keypointrcnn_inference():
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor

    torch.manual_seed(0)
    m = detection.KeypointRCNN(
        _backbone(), num_classes=None, min_size=64, max_size=96, box_score_thresh=0.0, box_detections_per_img=10,
        rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0),)), rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=40, box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_head=TwoMLPHead(16 * 49, 64),
        box_predictor=FastRCNNPredictor(64, 2), keypoint_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        keypoint_head=KeypointRCNNHeads(16, (32, 32)), keypoint_predictor=KeypointRCNNPredictor(32, 3),
    ).eval()  # fmt: skip
    r = compiler.compile(m, (_images((64, 80)),), ratio=0.5, granularity=1)
    assert r.report.verification["passed"]
    assert r.model.get_submodule("roi_heads.keypoint_head.0").out_channels < 32
    # keypointrcnn_inference (a module-level function) is one run-time call
    calls = [n for n in r.model.graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "") == "keypointrcnn_inference"]
    assert len(calls) == 1
    out = r.model(_images((72, 90), seed=4))[0]
    assert out["keypoints"].shape[1:] == (3, 3) and out["keypoints"].shape[0] == out["boxes"].shape[0]


def test_verification_fails_on_a_wrong_head():
    """The head outputs before post-processing are compared: a pruned RPN head scaled by 1.01 fails."""
    m = tiny_fasterrcnn()
    r = compiler.compile(m, (_images((64, 64)),), ratio=0.5, granularity=1)
    traced, plan = r.traced, r.plan
    flat = RewriteFX().call(traced, plan.analysis, plan.selection.pruned).module
    VerifyFX().call(traced, plan.analysis, plan.selection.pruned, flat, traced.example_inputs)
    with torch.no_grad():
        flat.get_submodule("rpn.head.cls_logits").weight.mul_(1.01)
    with pytest.raises(VerificationError):
        VerifyFX().call(traced, plan.analysis, plan.selection.pruned, flat, traced.example_inputs)


MODELS = [
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
    "fcos_resnet50_fpn",
    "keypointrcnn_resnet50_fpn",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torchvision_detection_models(name):
    torch.manual_seed(0)
    m = getattr(detection, name)(weights=None, weights_backbone=None).eval()
    x = [torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))]
    r = compiler.compile(m, (x,), ratio=0.5)
    assert r.report.trace_method == "concrete_trace"
    assert r.report.verification["passed"]
    assert r.report.macs_after < 0.5 * r.report.macs_before
    out = r.model(x)
    assert isinstance(out, list) and "boxes" in out[0]
