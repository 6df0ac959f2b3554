"""Coverage: every torchvision model through ``compiler.compile(ratio=0.5)``.

For each model (random weights, ``weights=None``): whether it traced and how,
groups found, groups frozen and why, MACs and parameter ratios, the verification
error, and the compile time. Each model runs in its own process (a per-model
time limit; a crash or an out-of-memory kill becomes a row, not the end of the
sweep); rows are appended to ``coverage.jsonl`` and the table
``benchmarks/results/coverage.md`` is rewritten after every model, so the sweep
can run in chunks (``--resume``).

Inputs are the smallest each model takes sensibly, so that the sweep fits on a
CPU: 64x64 for CNNs, ViT built with ``image_size=64`` (56 for the /14 patches),
Swin at 112, MaxViT at its required 224, video models at 8 frames.

    python benchmarks/coverage.py                      # classification models up to --max-params
    python benchmarks/coverage.py --all --resume       # + segmentation and video, skipping rows already done
    python benchmarks/coverage.py --models resnet18,vit_b_16
    python benchmarks/coverage.py --timm               # 63 timm models (pip install timm) -> coverage_timm.md
    python benchmarks/coverage.py --timm --onnx        # the same, exported to ONNX and pruned there -> coverage_timm_onnx.md
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import traceback

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SIZES_DOC = (
    "Inputs (batch 1): 3x64x64 for CNNs (inception_v3 3x96x96), ViT built with `image_size=64` "
    "(vit_h_14: 56), Swin 3x112x112, MaxViT 3x224x224 (its partitions need it); segmentation 3x64x64; "
    "video 3x8x64x64 (MViT 3x16x224x224, its positional embeddings are fixed; S3D 3x16x224x224, its "
    "final pooling needs it)."
)


# timm (``pip install timm``; ``--timm``): one or two models of each family timm has, at their default input size.
TIMM_MODELS = """
resnet18 resnet50d resnext50_32x4d seresnet50 regnety_016 regnetx_016 efficientnet_b0 efficientnetv2_rw_t
tf_efficientnet_lite0 mobilenetv2_100 mobilenetv3_small_100 mobilenetv3_large_100 ghostnet_100 mnasnet_100
densenet121 dla34 dpn68 cspresnet50 cspdarknet53 hrnet_w18_small inception_v3 xception41 rexnet_100 repvgg_a2
vgg11_bn convnext_tiny convnextv2_atto convmixer_768_32 mixer_s16_224 resmlp_12_224 gmlp_ti16_224 poolformer_s12
vit_tiny_patch16_224 vit_small_patch16_224 vit_base_patch32_224 deit_small_distilled_patch16_224
deit3_small_patch16_224 beit_base_patch16_224 eva02_tiny_patch14_224 cait_xxs24_224 xcit_tiny_12_p16_224 levit_128
pit_ti_224 tnt_s_patch16_224 crossvit_tiny_240 twins_svt_small pvt_v2_b0 coat_lite_tiny
swin_tiny_patch4_window7_224 swinv2_tiny_window8_256 maxvit_tiny_tf_224 coatnet_0_rw_224 mobilevit_xxs
mobilevitv2_050 efficientformer_l1 efficientformerv2_s0 edgenext_xx_small fastvit_t8 repvit_m1 tiny_vit_5m_224
focalnet_tiny_srf nest_tiny hgnet_tiny
""".split()


def build_timm(name: str):
    """A timm model (``pretrained=False``, nothing downloaded) and its default input shape (batch 1)."""
    import timm

    model = timm.create_model(name, pretrained=False)
    return model, (1, *model.pretrained_cfg.get("input_size", (3, 224, 224)))


def build_spec(name: str, family: str) -> tuple[dict, tuple[int, ...]]:
    """Constructor keyword arguments and input shape for one model."""
    if family == "video":
        if name.startswith("mvit"):  # positional embeddings of a fixed size
            return {}, (1, 3, 16, 224, 224)
        if name == "s3d":
            return {}, (1, 3, 16, 224, 224)
        return {}, (1, 3, 8, 64, 64)
    if family == "segmentation":
        return {"aux_loss": False, "weights_backbone": None}, (1, 3, 64, 64)
    if name.startswith("vit_"):
        size = 56 if name.endswith("_14") else 64
        return {"image_size": size}, (1, 3, size, size)
    if name.startswith("swin"):
        return {}, (1, 3, 112, 112)
    if name.startswith("maxvit"):
        return {}, (1, 3, 224, 224)
    if name.startswith("inception"):
        return {}, (1, 3, 96, 96)
    return {}, (1, 3, 64, 64)


def models(args) -> list[tuple[str, str]]:
    import torchvision.models as tvm

    if args.timm:
        out = [(n, "timm") for n in TIMM_MODELS]
        if args.models:
            out = [(n, "timm") for n in args.models.split(",")]
        return out
    out = [(n, "classification") for n in tvm.list_models(module=tvm)]
    if args.all:
        out += [(n, "segmentation") for n in tvm.list_models(module=tvm.segmentation)]
        out += [(n, "video") for n in tvm.list_models(module=tvm.video)]
    if args.models:
        wanted = args.models.split(",")
        out = [(n, f) for n, f in out if n in wanted]
    return out


def _export_onnx(m, x, path: str, exporter: str | None = None):
    """The model as a user would hand it to ``prunec``: through the TorchScript ONNX exporter (opset 17) or the
    dynamo exporter (opset 18). ``exporter=None``: TorchScript, else (a model it cannot export, such as EVA-02)
    dynamo; a named exporter is used alone, its failure raised. Returns (proto, exporter)."""
    import contextlib
    import io
    import warnings

    import onnx
    import torch

    def run(which: str):
        # The TorchScript exporter traces with autograd on, as torch.onnx.export is documented to be called: under
        # no_grad an eval-mode nn.MultiheadAttention takes its fused fast path, a single
        # aten::_native_multi_head_attention op that exporter cannot write (every torchvision ViT failed that way).
        grad = torch.enable_grad() if which == "torchscript" else torch.no_grad()
        with warnings.catch_warnings(), grad, contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if which == "torchscript":
                torch.onnx.export(m, (x,), path, dynamo=False, opset_version=17, input_names=["x"])
            else:
                torch.onnx.export(m, (x,), path, dynamo=True, opset_version=18, input_names=["x"])
        return onnx.load(path, load_external_data=False), which  # the weights of a model over 2 GB stay in its file

    if exporter is not None:
        return run(exporter)
    try:
        return run("torchscript")
    except Exception as first:
        try:
            return run("dynamo")
        except Exception:
            raise first from None


def _ort_refuses(proto, x) -> str:
    """Why ONNX Runtime cannot run the exported (unpruned) model on ``x``, as its first message line cut to 300
    characters; empty if it runs. Asked only after prunec refused a model ONNX Runtime could not run."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(proto if isinstance(proto, str) else proto.SerializeToString(),
                                    providers=["CPUExecutionProvider"])  # fmt: skip
        sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    except Exception as exc:
        text = re.sub(r"/onnxruntime_src/.*?\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(exc).strip().splitlines()[0])
        return f"{type(exc).__name__}: {text}"[:400]
    return ""


def _export_reason(exc: BaseException) -> str:
    """One line for an export failure: the exception and, where it wraps another (the dynamo exporter wraps
    what ``torch.export`` raised), the innermost cause, each as its type and first non-empty message line."""

    def line(e: BaseException) -> str:
        text = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        return f"{type(e).__name__}: {text}"[:200]

    root = exc
    seen = {id(exc)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        root = nxt
    return line(exc) if root is exc else f"{line(exc)[:120]} <- {line(root)}"


def one(name: str, family: str, max_params: float, via_onnx: bool = False, exporter: str | None = None) -> dict:
    """Build, compile (verify=True) and measure one model, in this process."""
    import torch
    import torchvision.models as tvm

    sys.path.insert(0, ROOT)
    import compiler

    torch.manual_seed(0)
    row: dict = dict(model=name, family=family)
    try:
        if family == "timm":
            m, shape = build_timm(name)
        else:
            kwargs, shape = build_spec(name, family)
            m = tvm.get_model(name, weights=None, **kwargs)
        m = m.eval()
    except Exception as exc:
        row.update(status="build failed", error=f"{type(exc).__name__}: {exc}")
        return row
    row["input"] = "x".join(str(s) for s in shape[1:])
    n_params = sum(p.numel() for p in m.parameters())
    row["params_m"] = n_params / 1e6
    if n_params > max_params * 1e6:
        row.update(status="skipped: size", error=f"{n_params / 1e6:.0f}M parameters > --max-params {max_params:.0f}M")
        return row
    x = torch.randn(*shape)
    if via_onnx:
        import tempfile

        import onnx

        if exporter is not None:
            row["exporter"] = exporter
        t = time.perf_counter()
        tmpdir = tempfile.TemporaryDirectory()  # kept until the process ends: a model over 2 GB is compiled from it
        path = os.path.join(tmpdir.name, "model.onnx")
        try:
            proto, exporter = _export_onnx(m, x, path, exporter)
        except Exception as exc:
            row.update(status="export failed", error=_export_reason(exc), export_s=time.perf_counter() - t)
            return row
        row.update(exporter=exporter, export_s=time.perf_counter() - t)
        size = sum(os.path.getsize(os.path.join(tmpdir.name, f)) for f in os.listdir(tmpdir.name))
        row["onnx_gb"] = round(size / 1e9, 3)
        if any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer):
            # the exporter wrote its weights as external data (over protobuf's 2 GB): what a user has is the file,
            # and prunec is given its path (`prunec compile model.onnx`), the weights mapped from the data file
            proto, row["compiled_from"] = path, "path (external data)"
            del m
    print("STAGE compile", flush=True)
    t = time.perf_counter()
    try:
        r = compiler.compile(proto, ratio=0.5) if via_onnx else compiler.compile(m, (x,), ratio=0.5)
    except compiler.PrunecError as exc:
        row.update(status="refused", error=f"{type(exc).__name__}: {str(exc)[:300]}", seconds=time.perf_counter() - t)
        if via_onnx and "ONNX Runtime cannot run" in str(exc) and (why := _ort_refuses(proto, x)):
            # the exporter's own file does not run in ONNX Runtime: an export failure, not prunec's
            row.update(status="export failed", error=f"the exported model does not run in ONNX Runtime: {why}",
                       prunec_error=row["error"])  # fmt: skip
        return row
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)[-1]
        row.update(status="crashed", error=f"{type(exc).__name__}: {str(exc)[:200]} ({os.path.basename(tb.filename)}:{tb.lineno})",
                   seconds=time.perf_counter() - t)  # fmt: skip
        return row
    rep = r.report
    frozen = [g for g in rep.groups if g.frozen]
    reasons = sorted({reason.split(": ", 1)[-1] for g in frozen for reason in g.reasons})
    row.update(
        status="ok" if rep.verification["passed"] else "verification failed",
        traced=rep.trace_method + (" (dynamo export)" if via_onnx and exporter == "dynamo" else ""),
        groups=len(rep.groups),
        frozen=len(frozen),
        reasons="; ".join(reasons)[:160],
        unknown=", ".join(sorted({o.target for o in rep.frozen_ops}))[:120],
        macs=rep.macs_ratio,
        params=rep.params_ratio,
        error_v=rep.verification["max_abs_error"],
        scale=rep.verification["reference_scale"],
        nodes=rep.verification.get("nodes_checked", 0),
        node_error=rep.verification.get("max_node_error", 0.0),
        worst_node=rep.verification.get("worst_node", ""),
        dtype=rep.verification.get("dtype", ""),
        seconds=time.perf_counter() - t,
    )
    return row


BIGMEM_LOCK = "/tmp/prunec_bigmem.lock"  # the shared machine's lock for runs over ~3 GB (one such run at a time)
BIG_PARAMS_M = 80.0  # over this many million parameters a model's export + compile takes 3 GB or more


def needs_bigmem(name: str, family: str, params_m: float | None) -> bool:
    """Whether one model's run takes the shared big-memory lock: over :data:`BIG_PARAMS_M` million parameters
    (unknown counts: yes), or a video model at 224x224 (MViT, S3D: 16 full-size frames)."""
    if family == "video" and build_spec(name, family)[1][-1] >= 224:
        return True
    return params_m is None or params_m > BIG_PARAMS_M


@contextlib.contextmanager
def bigmem_lock(take: bool, path: str | None = None):
    """Hold ``path``'s exclusive ``flock`` (waiting for it) while the block runs, if ``take``; yields the seconds
    waited. Taken per model, never around a sweep."""
    if not take:
        yield 0.0
        return
    t = time.perf_counter()
    with open(path or BIGMEM_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_isolated(name: str, family: str, max_params: float, timeout: float, via_onnx: bool = False,
                 exporter: str | None = None, bigmem: bool = False) -> dict:  # fmt: skip
    """``one`` in a child process with a time limit. A timeout or a crash says in which stage it happened
    (``export`` or ``compile``: the child prints ``STAGE compile`` before it calls ``compiler.compile``).
    ``bigmem``: the child runs holding :data:`BIGMEM_LOCK` (the time limit starts once it is held)."""
    with bigmem_lock(bigmem) as waited:
        row = _run_child(name, family, max_params, timeout, via_onnx, exporter)
    if bigmem:
        row["bigmem_wait_s"] = round(waited, 1)
    return row


MEM_CAP_GB = 16.0  # a child over this resident size is ended by the harness before the kernel's OOM killer picks
# a victim on the shared 24 GB machine (maybe another job)


MIN_AVAILABLE_GB = 0.75  # ...or when the machine's available memory falls below this with the child over 3 GB


def _available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return next((int(ln.split()[1]) / 2**20 for ln in f if ln.startswith("MemAvailable:")), float("inf"))
    except OSError:
        return float("inf")


def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(ln.split()[1]) / 2**20 for ln in f if ln.startswith("VmRSS:")), 0.0)
    except OSError:
        return 0.0


def _run_child(name: str, family: str, max_params: float, timeout: float, via_onnx: bool, exporter: str | None,
               mem_cap_gb: float | None = None) -> dict:  # fmt: skip
    """The child (``--one``), polled twice a second: ended at ``timeout`` seconds or when its resident size passes
    ``mem_cap_gb`` (default :data:`MEM_CAP_GB`); the row says which, and in which stage."""
    import tempfile

    cap = MEM_CAP_GB if mem_cap_gb is None else mem_cap_gb
    cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--family", family, "--max-params", str(max_params)]
    cmd += ["--onnx"] if via_onnx else []
    cmd += ["--exporter", exporter] if exporter else []
    base = dict(model=name, family=family, **({"exporter": exporter} if exporter else {}))

    def stage(out: str) -> str:
        if "STAGE compile" in out:
            return " (during compile)"
        return " (during build/export)" if via_onnx else ""

    t = time.perf_counter()
    peak, over, low = 0.0, False, float("inf")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        try:
            while p.poll() is None:
                rss = _rss_gb(p.pid)
                peak = max(peak, rss)
                if rss > 3.0:
                    low = min(low, _available_gb())
                if peak > cap or low < MIN_AVAILABLE_GB or time.perf_counter() - t > timeout:
                    over = peak > cap or low < MIN_AVAILABLE_GB
                    p.kill()
                    p.wait()
                    break
                time.sleep(0.5)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        elapsed = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if over:
        why = (f"resident size {peak:.1f} GB passed the harness's {cap:.0f} GB cap" if peak > cap else
               f"the shared machine's available memory fell to {low:.2f} GB with this run at {peak:.1f} GB")
        return dict(base, status="memory cap", error=f"{why}{stage(stdout)}; ended by the harness", seconds=elapsed,
                    peak_rss_gb=round(peak, 2))  # fmt: skip
    if p.returncode != 0 and elapsed > timeout:
        return dict(base, status="timeout", error=f"no result within {timeout:.0f} s{stage(stdout)}", seconds=timeout)
    for line in reversed(stdout.splitlines()):
        if line.startswith("ROW "):
            return dict(json.loads(line[4:]), wall_s=round(elapsed, 1))
    tail = (stderr.strip().splitlines() or [f"exit code {p.returncode}"])[-1][:200]
    return dict(base, status="crashed", error=f"exit code {p.returncode}{stage(stdout)}: {tail}", seconds=elapsed,
                peak_rss_gb=round(peak, 2))  # fmt: skip


_EXPORTERS = {
    "torchscript": "TorchScript ONNX exporter (`torch.onnx.export(..., dynamo=False)`, opset 17, static shapes)",
    "dynamo": "dynamo exporter (`torch.onnx.export(..., dynamo=True)`, opset 18, static shapes)",
}


def write(rows: list[dict], total: int, timm: bool = False, via_onnx: bool = False, exporter: str | None = None) -> str:
    not_run = [r for r in rows if r.get("status") == "not run"]
    rows = [r for r in rows if r.get("status") != "not run"]
    ok = [r for r in rows if r.get("status") == "ok"]
    half = [r for r in ok if r["macs"] < 0.5]
    skipped = [r for r in rows if str(r.get("status", "")).startswith("skipped")]
    if timm:
        import timm as timm_pkg

        what, sizes = "timm models", f"timm {timm_pkg.__version__}, `pretrained=False`, each at its default input size (batch 1)."
        cmd = "`python benchmarks/coverage.py --timm`"
    else:
        what, sizes, cmd = "torchvision models", SIZES_DOC, "`python benchmarks/coverage.py --all --resume`"
    how = "`compiler.compile(model, (x,), ratio=0.5)`"
    if via_onnx:
        what += ", exported to ONNX,"
        cmd = cmd[:-1] + " --onnx" + (f" --exporter {exporter}`" if exporter else "`")
        if exporter:
            how = (f"each model exported with the {_EXPORTERS[exporter]} alone (a failure is a row with its reason), then "
                   "`compiler.compile(onnx_model, ratio=0.5)` (what `prunec compile model.onnx` does), verified in ONNX Runtime")
        else:
            how = ("each model exported with the TorchScript ONNX exporter (opset 17, static shapes; where that "
                   "fails, the dynamo exporter, opset 18, marked in `traced`), then "
                   "`compiler.compile(onnx_model, ratio=0.5)` (what `prunec compile model.onnx` does)")
    lines = [
        f"# Coverage: {what} through prunec",
        "",
        f"{how} with defaults (l2, arithmetic_mean, granularity 8, verify=True), "
        f"random weights, CPU (2 shared cores), {time.strftime('%Y-%m-%d')}. {sizes} "
        "Verification: the pruned model against the original with removed channels zeroed, float64, every "
        "intermediate tensor compared at its kept positions; `error` is the max abs difference at the outputs, "
        "`scale` the max |output|; times are wall-clock on a machine shared with other jobs (they vary with its load). "
        f"Produced by {cmd} (in chunks; models over `--max-params`, 1000M, would be listed).",
        "",
        f"**{len(ok)} of {len(rows)} models compiled and verified; {len(half)} of them below half the MACs; "
        f"{len(skipped)} skipped for size"
        + (f"; {total - len(rows)} not run yet" if total > len(rows) else "")
        + ".**",
        "",
        "| model | family | input | status | traced | groups | frozen | MACs | params | error / scale | "
        + ("nodes | max node error | worst node | " if via_onnx else "") + "time (s) | frozen because / unknown ops / error |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if via_onnx else "") + "---|---|",
    ]
    blank = " | | |" if via_onnx else ""
    for r in rows + not_run:
        if r.get("status") == "not run":
            lines.append(f"| {r['model']} | {r['family']} | | not run (sweep stopped for time) | | | | | | |{blank} | |")
            continue
        inp = r.get("input", "")
        if r.get("status") in ("ok", "verification failed"):
            why = r["reasons"] + (f" — unknown: {r['unknown']}" if r["unknown"] else "")
            lines.append(
                f"| {r['model']} | {r['family']} | {inp} | {r['status']} | {r['traced']} | {r['groups']} | {r['frozen']} | "
                f"{r['macs']:.3f} | {r['params']:.3f} | {r['error_v']:.1e} / {r['scale']:.1e} | "
                + (f"{r.get('nodes', 0)} | {r.get('node_error', 0.0):.1e} | `{r.get('worst_node', '')}` | " if via_onnx else "")
                + f"{r['seconds']:.1f} | {why} |"
            )
        else:
            note = f" [checked by hand: {r['note']}]" if r.get("note") else ""
            err = (str(r.get("error", "")) + note).replace("|", "/").replace("\n", " ")
            lines.append(f"| {r['model']} | {r['family']} | {inp} | {r['status']} | | | | | |{blank} | {r.get('seconds', 0):.1f} | {err} |")
    return "\n".join(lines) + "\n"


def _read_jsonl(path: str) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    rows[r["model"]] = r
    return rows


_DIFFER_WHY = (
    "Why the exporters can prune differently: they write different graphs of the same model. **ShuffleNet V2**: the "
    "TorchScript exporter writes `torch.chunk(x, 2)` as two `Slice`s whose bounds are computed from the input's "
    "shape; the dynamo exporter writes one `Split(num_outputs=2)`. prunec used to keep an equal `Split` equal "
    "(position j of both pieces one channel); with the channel shuffle's `Reshape` to (2, C/2) before it, that merged "
    "every channel of a stage's shuffle group into one class, which cannot be removed, so those groups were not "
    "pruned at all under dynamo (shufflenet_v2_x1_0 0.478x against 0.394x). An equal `Split` now gets explicit "
    "sizes where its pieces lose different numbers of channels, and prunes like the `Slice`s (same groups, same "
    "classes, same scores); what still differs is the selection: for a group that a sized `Split` cuts into "
    "pieces it takes the same share of each piece (`passes.selection.balanced_scores`), which it does not do "
    "for `Slice`s, so the two exports remove different channels of the same classes (with that balancing switched "
    "off, the dynamo export of shufflenet_v2_x1_0 gives exactly the TorchScript export's 0.394x). **ConvNeXt** (seen on convnext_tiny, "
    "groups 23 / 17): the dynamo export de-duplicates equal constants, so layers of different blocks read one "
    "initializer (the zero Linear biases, LayerNorm parameters), and a constant two layers read ties their "
    "channels: the MLP hidden channels of a stage's blocks become one group (22 members) instead of one group per "
    "block; and its `as_strided` before the classifier becomes a `Gather` with tensor indices, which freezes the "
    "last stage's 768 channels (\"indexing a channel dimension with a tensor\"). Checked: with each reader given "
    "its own copy of the shared constants the dynamo export has TorchScript's 23 groups and prunes to 0.301x (the "
    "rest is that frozen stage). Not fixed here (it needs the "
    "loader to give each reader its own copy of a shared constant, or a rule for that `Gather`). DenseNet and "
    "Swin also have a different number of channel groups in the two exports; their cause was not investigated."
)


def write_combined(todo: list[tuple[str, str]], by_exporter: dict[str, dict[str, dict]]) -> str:
    """``coverage_onnx.md``: one row per torchvision model, for each exporter what its sweep's jsonl holds."""
    names = list(_EXPORTERS)
    families = list(dict.fromkeys(f for _, f in todo))
    ran = []
    for fam in ("classification", "segmentation", "video"):
        n = sum(1 for _, f in todo if f == fam)
        got = {e: sum(1 for r in by_exporter[e].values() if r["family"] == fam and not str(r.get("status", "")).startswith("skipped"))
               for e in names}  # fmt: skip
        if fam not in families or not any(got.values()):
            ran.append(f"{fam}: not run")
        else:
            ran.append(f"{fam} ({n} models): " + ", ".join(f"{e} {got[e]} run" for e in names))
    summary = []
    for e in names:
        rows = [by_exporter[e][n] for n, _ in todo if n in by_exporter[e]]
        rows = [r for r in rows if not str(r.get("status", "")).startswith("skipped")]
        ok = [r for r in rows if r.get("status") == "ok"]
        half = [r for r in ok if r["macs"] < 0.5]
        exp = [r for r in rows if r.get("status") == "export failed" or "during build/export" in str(r.get("error", ""))]
        oom = [r for r in rows if r not in exp and (r.get("status") == "memory cap" or (
            r.get("status") == "crashed" and str(r.get("error", "")).startswith("exit code -9")))]
        bad = [r for r in rows if r.get("status") != "ok" and r not in exp and r not in oom]
        span = f", MACs {min(r['macs'] for r in ok):.2f}x to {max(r['macs'] for r in ok):.2f}x" if ok else ""
        summary.append(f"{e}: {len(ok)} of {len(rows)} run compiled and verified ({len(half)} below half the MACs{span}), "
                       f"{len(exp)} not exported, {len(bad)} failed in prunec"
                       + (f", {len(oom)} ended for memory (the kernel's out-of-memory killer or the harness's cap) ({', '.join(r['model'] for r in oom)})" if oom else ""))  # fmt: skip
    both = [(n, by_exporter["torchscript"][n], by_exporter["dynamo"][n]) for n, _ in todo
            if all(by_exporter[e].get(n, {}).get("status") == "ok" for e in names)]  # fmt: skip
    differ = [f"{n} ({a['macs']:.3f} / {b['macs']:.3f}" + (f", groups {a['groups']} / {b['groups']})" if a["groups"] != b["groups"] else ")")
              for n, a, b in both if abs(a["macs"] - b["macs"]) > 0.005]  # fmt: skip
    skipped = sorted({n for e in names for n, r in by_exporter[e].items() if str(r.get("status", "")).startswith("skipped")})
    lines = [
        "# Coverage: torchvision models exported to ONNX (TorchScript and dynamo exporters) through prunec",
        "",
        "Each model (random weights, `weights=None`) exported with each exporter alone: "
        + "; ".join(f"**{e}**: the {_EXPORTERS[e]}" for e in names)
        + "; then `compiler.compile(onnx_model, ratio=0.5)` with defaults (l2, arithmetic_mean, granularity 8, "
        "verify=True), what `prunec compile model.onnx` does. Verification runs in ONNX Runtime (float32, CPU): "
        "the pruned model against the original with removed channels zeroed, every graph output and every "
        "intermediate tensor the pruned model still computes compared at its kept positions; `nodes` is how many "
        "intermediate tensors were compared, `node err` the worst |difference| / scale over them "
        "(`verification.max_node_error`; the value name where it was seen is in the per-exporter tables). "
        "`time` is the compile time in seconds (export not included), wall-clock on a shared 2-core machine. "
        f"{SIZES_DOC} Each model runs in its own process with a time limit.",
        "",
        "Produced by `python benchmarks/coverage.py --onnx --exporter torchscript --resume` and "
        "`... --exporter dynamo --resume` (rows in `coverage_onnx_torchscript.jsonl`, `coverage_onnx_dynamo.jsonl`; "
        "per-exporter tables with the output errors and worst nodes in `coverage_onnx_torchscript.md`, "
        "`coverage_onnx_dynamo.md`); this table re-rendered by `python benchmarks/coverage.py --onnx --table-only`"
        + (" (`--all` for segmentation and video)" if "segmentation" not in families else "") + f", {time.strftime('%Y-%m-%d')}.",
        "",
        "**Sets: " + "; ".join(ran) + ".**",
        "",
        "**" + "; ".join(summary) + ".**" + (f" Skipped for size (`--max-params`): {', '.join(skipped)}." if skipped else ""),
        "",
        f"Both exporters verified on {len(both)} models; the MACs ratio differs between the two exports (torchscript / "
        f"dynamo, more than 0.005; the number of channel groups where it differs too) on {len(differ)}" + (f": {', '.join(differ)}." if differ else "."),
        "",
        _DIFFER_WHY,
        "",
        "`not run (time)`: the sweep did not reach the model before the time it had (2 CPU cores shared with other "
        "jobs; the larger models, over about 80M parameters, whose compile takes 3 to 4.5 GB, and the 16-frame "
        "224x224 video models must run one at a time behind the machine's shared big-memory lock, which other jobs "
        "held); it was not attempted, nothing is known of it. A `crashed` row with exit code -9 is a compile the "
        "kernel's out-of-memory killer ended on the shared machine (dmesg), not an error prunec reported; a "
        f"`memory cap` row is a run the harness ended when its resident size passed {MEM_CAP_GB:.0f} GB (the machine "
        "has 24 GB, no swap, shared). `[checked by hand: ...]` is what was found by running the failing step alone. "
        "Models whose export is over 2 GB (external data) are compiled from the exported file's path, as "
        "`prunec compile model.onnx` is.",
        "",
        "| model | family | input | "
        + " | ".join(f"{e} status | MACs | params | nodes | node err | time" for e in names)
        + " | failure reason |",
        "|---|---|---|" + "---|---|---|---|---|---|" * len(names) + "---|",
    ]
    for name, fam in todo:
        cells, reasons, inp = [], [], ""
        for e in names:
            r = by_exporter[e].get(name)
            if r is None:
                cells.append("not run (time) | | | | |")
                continue
            inp = inp or r.get("input", "")
            st = r.get("status", "")
            if st in ("ok", "verification failed"):
                cells.append(f"{st} | {r['macs']:.3f} | {r['params']:.3f} | {r.get('nodes', 0)} | "
                             f"{r.get('node_error', 0.0):.1e} | {r['seconds']:.1f}")  # fmt: skip
                if st != "ok":
                    reasons.append(f"{e}: verification failed at `{r.get('worst_node', '')}`")
            else:
                sec = f"{r['seconds']:.1f}" if "seconds" in r else ""
                cells.append(f"{st} | | | | | {sec}")
                note = f" [checked by hand: {r['note']}]" if r.get("note") else ""
                reasons.append(f"{e}: " + (str(r.get("error", "")) + note).replace("|", "/").replace("\n", " "))
        lines.append(f"| {name} | {fam} | {inp} | " + " | ".join(cells) + " | " + "; ".join(reasons) + " |")
    return "\n".join(lines) + "\n"


def render_combined(args) -> None:
    """Rewrite ``results/coverage_onnx.md`` from both exporters' jsonl files (``--all``: the model list with
    segmentation and video; also used when either jsonl already holds such rows)."""
    by_exporter = {e: _read_jsonl(os.path.join(RESULTS, f"coverage_onnx_{e}.jsonl")) for e in _EXPORTERS}
    families = {r["family"] for rows in by_exporter.values() for r in rows.values()}
    todo = models(argparse.Namespace(timm=False, all=args.all or bool(families - {"classification"}), models=None))
    out = os.path.join(RESULTS, "coverage_onnx.md")
    tmp = f"{out}.{os.getpid()}.tmp"  # the two exporters' sweeps may render at the same time
    with open(tmp, "w") as f:
        f.write(write_combined(todo, by_exporter))
    os.replace(tmp, out)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--all", action="store_true", help="segmentation and video models too")
    ap.add_argument("--models", help="comma-separated model names")
    ap.add_argument("--timm", action="store_true", help="timm models (TIMM_MODELS) instead; table coverage_timm.md")
    ap.add_argument("--onnx", action="store_true", help="export each model to ONNX and prune that; table *_onnx.md")
    ap.add_argument("--exporter", choices=sorted(_EXPORTERS), help="with --onnx: this ONNX exporter alone, no fallback; "
                    "rows in *_onnx_<exporter>.jsonl (torchvision: the combined table coverage_onnx.md is re-rendered too)")
    ap.add_argument("--max-params", type=float, default=1000.0, help="skip (and list) models with more parameters (millions)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in the .jsonl; run only the others")
    ap.add_argument("--smallest-first", action="store_true", help="run the models in the order of their parameter "
                    "counts as results/coverage.jsonl records them (unknown last), so a sweep cut short covers the most models")
    ap.add_argument("--rerun", help="with --resume: comma-separated models to run again although the .jsonl has "
                    "their rows (the new row is appended and replaces the old one)")
    ap.add_argument("--exclude", help="comma-separated models not to run now (they stay in the tables, as not run "
                    "or with their earlier rows)")
    ap.add_argument("--until", help="HH:MM (UTC, same day): start no model after this time (the sweep ends there)")
    ap.add_argument("--limit", type=int, default=0, help="run at most this many models now (chunks)")
    ap.add_argument("--out", default=None, help="table path (default results/coverage.md, or coverage_timm.md with --timm)")
    ap.add_argument("--table-only", action="store_true", help="rewrite the table from the .jsonl; models not in it are listed as not run")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--family", default="classification", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        import resource

        row = one(args.one, args.family, args.max_params, args.onnx, args.exporter)
        row["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)  # KiB on Linux
        print("ROW " + json.dumps(row), flush=True)
        return
    if args.rerun and not args.resume:
        ap.error("--rerun needs --resume (without it the .jsonl is started afresh)")
    if args.exporter and not args.onnx:
        ap.error("--exporter needs --onnx")
    combined = args.onnx and not args.timm and args.out is None
    if combined and not args.exporter:
        if not args.table_only:
            ap.error("torchvision --onnx runs one exporter at a time: add --exporter torchscript|dynamo "
                     "(or --table-only to re-render coverage_onnx.md from both)")
        render_combined(args)
        return
    if args.out is None:
        stem = ("coverage_timm" if args.timm else "coverage") + ("_onnx" if args.onnx else "")
        args.out = os.path.join(RESULTS, stem + (f"_{args.exporter}" if args.exporter else "") + ".md")
    jsonl = os.path.splitext(args.out)[0] + ".jsonl"
    done: dict[str, dict] = {}
    if (args.resume or args.table_only) and os.path.exists(jsonl):
        with open(jsonl) as f:
            for line in f:
                r = json.loads(line)
                if args.table_only or not str(r.get("status", "")).startswith("skipped"):  # the size cap may have changed
                    done[r["model"]] = r
    elif os.path.exists(jsonl):
        os.remove(jsonl)
    todo = models(args)
    if args.table_only:
        rows = [done.get(n, dict(model=n, family=f, status="not run")) for n, f in todo]
        with open(args.out, "w") as f:
            f.write(write(rows, len(todo), args.timm, args.onnx, args.exporter))
        print(f"wrote {args.out}")
        if combined:
            render_combined(args)
        return
    order = list(todo)
    known_params = {n: r["params_m"] for n, r in _read_jsonl(os.path.join(RESULTS, "coverage.jsonl")).items() if "params_m" in r}
    known_params.update({n: r["params_m"] for n, r in done.items() if "params_m" in r})
    if args.smallest_first:
        order.sort(key=lambda nf: known_params.get(nf[0], float("inf")))
    rerun = set(args.rerun.split(",")) if args.rerun else set()
    exclude = set(args.exclude.split(",")) if args.exclude else set()
    ran = 0
    for i, (name, family) in enumerate(order):
        if (name in done and name not in rerun) or name in exclude:
            continue
        if args.limit and ran >= args.limit:
            break
        if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
            print(f"--until {args.until} UTC reached: no further model started", flush=True)
            break
        row = run_isolated(name, family, args.max_params, args.timeout, args.onnx, args.exporter,
                           bigmem=needs_bigmem(name, family, known_params.get(name)))
        ran += 1
        done[name] = row
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        extra = f"MACs {row['macs']:.3f} verify {row['error_v']:.1e}" if "macs" in row else row.get("error", "")
        print(f"[{i + 1}/{len(todo)}] {name}: {row['status']} {extra} ({row.get('seconds', 0):.1f}s)", flush=True)
        rows = [done[n] for n, _ in todo if n in done]
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(write(rows, len(todo), args.timm, args.onnx, args.exporter))
        os.replace(tmp, args.out)
        if combined:
            render_combined(args)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
