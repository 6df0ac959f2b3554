"""Detection coverage: torchvision detection models through prunec and Torch-Pruning at ratio 0.5.

For each model (``weights=None, weights_backbone=None``, random weights, one 3x320x320
image, ``box_score_thresh=0.0`` where the model has it so that detections are not
empty): prunec's trace method, its MACs ratio as the report counts it (the traced
backbone, FPN and heads: the run-time parts are not counted), whether verification
passed and what it compared, and the *whole-model* MACs ratio of the pruned model
counted the same way for both tools (every ``Conv``/``Linear`` call of an eager run on
the image, RoI heads included); then Torch-Pruning (``MetaPruner``, L2 magnitude,
``pruning_ratio=0.5``, the layers that produce the outputs ignored) on the same model,
its whole-model MACs ratio and whether its pruned model runs, or its failure.

Each model runs in its own process (time limit, a crash is a row).

    python benchmarks/coverage_detection.py
    python benchmarks/coverage_detection.py --models retinanet_resnet50_fpn   # rows of earlier runs kept
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "ssdlite320_mobilenet_v3_large",
    "fcos_resnet50_fpn",
    "keypointrcnn_resnet50_fpn",
]
OUTPUT_LAYERS = ("predictor", "cls_logits", "bbox_pred", "bbox_reg", "bbox_ctrness")


def _build(name: str):  # noqa: ANN202
    import torch
    from torchvision.models import detection

    torch.manual_seed(0)
    kwargs = {"weights": None, "weights_backbone": None}
    fn = getattr(detection, name)
    for key in ("box_score_thresh", "score_thresh"):
        try:
            return fn(**kwargs, **{key: 0.0}).eval()
        except TypeError:
            continue
    return fn(**kwargs).eval()


def eager_macs(model, images) -> int:  # noqa: ANN001
    """MACs of every Conv/Linear call of one eager run (RoI heads at the RoIs this image gives)."""
    import torch
    import torch.nn as nn

    total = [0]

    def hook(m, inp, out) -> None:  # noqa: ANN001
        if isinstance(m, nn.modules.conv._ConvNd):
            k = 1
            for s in m.kernel_size:
                k *= s
            total[0] += out.numel() * (m.in_channels // m.groups) * k
        elif isinstance(m, nn.Linear):
            total[0] += out.numel() * m.in_features

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    with torch.no_grad():
        model(images)
    for h in hs:
        h.remove()
    return total[0]


def _prunec(name: str) -> dict:
    import torch

    import compiler

    model = _build(name)
    x = [torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))]
    t = time.time()
    r = compiler.compile(model, (x,), ratio=0.5)
    d = r.report.to_dict()
    row = {"prunec_time_s": round(time.time() - t, 1), "method": d.get("trace_method")}
    row["prunec_graph_macs"] = d["macs_after"] / d["macs_before"]
    v = d.get("verification") or {}
    row["verified"] = bool(v.get("passed"))
    row["nodes_compared"] = v.get("nodes_checked")
    row["frozen_groups"] = sum(1 for g in d.get("groups", []) if g.get("frozen"))
    before, after = eager_macs(model, x), eager_macs(r.model, x)
    row["prunec_whole_macs"] = after / before
    out_o, out_p = model(x), r.model(x)
    row["detections"] = [int(o["boxes"].shape[0]) for o in out_o]
    row["detections_pruned"] = [int(o["boxes"].shape[0]) for o in out_p]
    return row


def _tp(name: str) -> dict:
    import torch
    import torch_pruning as tp

    model = _build(name)
    x = [torch.rand(3, 320, 320, generator=torch.Generator().manual_seed(1))]
    before = eager_macs(model, x)
    ignored = [m for n, m in model.named_modules() if any(k in n for k in OUTPUT_LAYERS)]
    t = time.time()
    pruner = tp.pruner.MetaPruner(
        model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5, ignored_layers=ignored,
        forward_fn=lambda m, inp: m(inp),
    )
    pruner.step()
    row = {"tp_time_s": round(time.time() - t, 1)}
    row["tp_whole_macs"] = eager_macs(model, x) / before
    return row


def _one(name: str, part: str) -> dict:
    row: dict = {"model": name}
    try:
        row.update(_prunec(name) if part == "prunec" else _tp(name))
    except Exception as exc:  # noqa: BLE001 - a failure is a row
        row[f"{part}_error"] = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
    return row


def _run_part(name: str, part: str, timeout: int) -> dict:
    """One tool on one model in its own process (a hang or a crash of one tool keeps the other's result)."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        p = subprocess.run([sys.executable, __file__, "--one", name, "--part", part], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": name, f"{part}_error": f"timeout after {timeout} s"}
    line = (p.stdout.strip().splitlines() or [""])[-1]
    if line.startswith("{"):
        return json.loads(line)
    return {"model": name, f"{part}_error": (p.stderr.strip().splitlines() or ["crashed"])[-1][:160]}


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.3f}x"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | prunec trace | prunec MACs (backbone+FPN+heads, report) | prunec MACs (whole model, eager) | verified | detections orig/pruned | Torch-Pruning MACs (whole model, eager) | prunec time | TP time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ver = "yes" if r.get("verified") else ("no" if "verified" in r else "")
        if r.get("verified") and r.get("nodes_compared"):
            ver += f" ({r['nodes_compared']} tensors)"
        prunec = _fmt(r.get("prunec_graph_macs")) if "prunec_error" not in r else f"failed: {r['prunec_error']}"
        tp_cell = _fmt(r.get("tp_whole_macs")) if "tp_error" not in r else f"failed: {r['tp_error']}"
        det = f"{r.get('detections')}/{r.get('detections_pruned')}" if "detections" in r else ""
        lines.append(
            f"| {r['model']} | {r.get('method') or ''} | {prunec} | {_fmt(r.get('prunec_whole_macs'))} | {ver} | {det} | {tp_cell} "
            f"| {r.get('prunec_time_s', '')} s | {r.get('tp_time_s', '')} s |"
        )
    return "\n".join(lines)


def _merge(rows: list[dict]) -> list[dict]:
    """These rows over the ones of earlier runs (``coverage_detection.jsonl``, one per model, the latest kept), in
    the order of ``MODELS``."""
    path = os.path.join(RESULTS, "coverage_detection.jsonl")
    known: dict[str, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    known[r["model"]] = r
    known.update({r["model"]: r for r in rows})
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as f:
        for r in known.values():
            f.write(json.dumps(r) + "\n")
    order = {m: i for i, m in enumerate(MODELS)}
    return sorted(known.values(), key=lambda r: order.get(r["model"], len(order)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--part", default="prunec", help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=int, default=1500, help="seconds per model and tool")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_one(a.one, a.part)))
        return
    rows = []
    for name in a.models.split(","):
        row = _run_part(name, "prunec", a.timeout)
        row.update({k: v for k, v in _run_part(name, "tp", a.timeout).items() if k != "model"})
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows = _merge(rows)
    md = (
        "# Detection coverage (ratio 0.5, random weights, one 3x320x320 image)\n\n"
        "Generated by `benchmarks/coverage_detection.py`. prunec's report counts the MACs of the traced graph "
        "(backbone, FPN and heads, the RoI heads at the example's number of RoIs); the run-time parts (resize "
        "transform, anchors, RoI align, NMS, post-processing) are not pruned and not counted there. The whole-model "
        "columns count every Conv/Linear call of an eager run of the original and the pruned model on the same "
        "image, for both tools alike. Torch-Pruning: `MetaPruner`, L2 magnitude, `pruning_ratio=0.5`, output layers "
        "(predictors, cls_logits, bbox_pred/reg, ctrness) ignored; it has no verification.\n\n" + table(rows) + "\n"
    )
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "coverage_detection.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
