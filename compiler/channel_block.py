"""The runtime's channel block: the channel count its convolution kernels compute in steps of.

ONNX Runtime's CPU convolutions (MLAS, NCHWc layout) work on blocks of 16
channels where the processor has AVX-512 and 8 with AVX2: a convolution with 24
output channels then costs what one with 32 costs, and one that reads 8 channels
falls off the blocked path and can be slower than one that reads 16 (measured on
mobilenet_v2: 0.83 ms for 8 input channels at 112x112 against 0.42 ms for 16).
A kept channel count that is not a multiple of the block is paid for in full and
counted as saved in the MACs. Other runtimes have other steps (PyTorch's eager
CPU convolutions measured here grow linearly, with no step).

So the block is *measured* once per runtime: a 1x1 convolution is timed at
``base``, ``base + B/2`` and ``base + B`` output channels; the runtime computes in
blocks of ``B`` when the half step already costs most of the whole step
(:func:`staircase_block`), in every repeat. The result is kept on disk per runtime
fingerprint (``$PRUNEC_CACHE``, as the latency tables), so a compile measures it
once per machine and runtime. ``PRUNEC_CHANNEL_BLOCK=N`` fixes it (reproducible
plans across machines; the test suite pins it to 1).

Selection rounds each group's kept count up to a multiple of the block (and of
``granularity``) and keeps a group no wider than one block whole
(:class:`passes.selection.GroupPlanner`): ``compile(channel_block="auto")``, the
default, or an integer (1: off).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from compiler.latency_cache import cache_dir, runtime_fingerprint
from frontends.errors import InvalidArgumentError

log = logging.getLogger(__name__)

__all__ = ["staircase_block", "runtime_block", "resolve_channel_block", "CANDIDATES"]

CANDIDATES = (16, 8)  # largest first; AVX-512 NCHWc blocks are 16 floats, AVX2's 8
_ENV = "PRUNEC_CHANNEL_BLOCK"


def staircase_block(conv_ms: Callable[[list[int]], list[float]], base: int = 64,
                    candidates: tuple[int, ...] = CANDIDATES, repeats: int = 5, share: float = 0.75,
                    min_step: float = 0.05) -> int:
    """The largest ``B`` in ``candidates`` at which the runtime's cost is a staircase: over ``repeats`` (the median),
    the half step from ``base`` to ``base + B/2`` output channels costs at least ``share`` of the whole step to
    ``base + B`` (a linear cost gives one half), and the whole step is measurable (at least ``min_step`` of the time
    at ``base``); 1 if there is none. ``conv_ms(counts)`` times a convolution at each output channel count
    (interleaved, so drifts hit all alike)."""
    conv_ms([base, base + candidates[-1]])  # warm-up: the first sessions' allocations are not the runtime's cost
    for b in candidates:
        halves, steps = [], []
        for _ in range(repeats):
            t0, th, t1 = conv_ms([base, base + b // 2, base + b])
            halves.append((th - t0) / max(t1 - t0, 1e-12))
            steps.append((t1 - t0) / max(t0, 1e-12))
        if float(np.median(steps)) >= min_step and float(np.median(halves)) >= share:
            return b
    return 1


def _fastest_ms(fns: Sequence[Callable[..., Any]], clock: Callable[[], float], runs: int = 40) -> list[float]:
    """Each function's fastest run in milliseconds, the functions interleaved run by run: the fastest run is the one
    other jobs disturbed least, and interleaving makes a slow spell hit all of them."""
    for fn in fns:
        fn()
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(runs):
        for i, fn in enumerate(fns):
            t0 = clock()
            fn()
            best[i] = min(best[i], clock() - t0)
    return [b * 1e3 for b in best]


class _OrtCpuProbe:
    """A 1x1 convolution (96 input channels, 56x56) in a single-threaded ONNX Runtime CPU session, timed by the
    calling thread's CPU time (which is the session's compute, and which other jobs do not inflate)."""

    name = "onnxruntime-cpu"

    def __call__(self, couts: list[int], cin: int = 96, hw: int = 56) -> list[float]:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        feed = {"x": rng.standard_normal((1, cin, hw, hw)).astype(np.float32)}
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        fns: list[Callable[..., Any]] = []
        for cout in couts:
            w = numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1)).astype(np.float32), "w")
            graph = helper.make_graph(
                [helper.make_node("Conv", ["x", "w"], ["y"])], "probe",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            fns.append(lambda sess=sess: sess.run(None, feed))
        return _fastest_ms(fns, time.thread_time)


class _TorchCpuProbe:
    """A 1x1 convolution (96 input channels, 56x56) in PyTorch on one CPU thread, timed by the thread's CPU time."""

    name = "torch-cpu"

    def __call__(self, couts: list[int], cin: int = 96, hw: int = 56) -> list[float]:
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, cin, hw, hw, generator=g)
        weights = [torch.randn(c, cin, 1, 1, generator=g) for c in couts]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            runs: list[Callable[..., Any]] = [lambda w=w: F.conv2d(x, w) for w in weights]
            with torch.no_grad():
                return _fastest_ms(runs, time.thread_time)
        finally:
            torch.set_num_threads(threads)


class _LayerTimerProbe:
    """The latency tables' layer timer (GPU providers, PyTorch): a 1x1 convolution at 56x56 on the wall clock."""

    def __init__(self, timer: Any) -> None:
        self.timer = timer
        self.name = timer.name

    def __call__(self, couts: list[int], cin: int = 96, hw: int = 56) -> list[float]:
        from passes.ops.layers import ConvSpec

        spec = ConvSpec(1, hw, hw, 1, 1, (1, 1), (0, 0), False, cin)
        return [float(self.timer.conv(spec, cin, c)) for c in couts]


def _probe(runtime: str, provider: str) -> Any:
    from compiler.latency import OrtLayerTimer, TorchLayerTimer

    if runtime == "onnxruntime":
        return _OrtCpuProbe() if provider == "cpu" else _LayerTimerProbe(OrtLayerTimer(provider))
    return _TorchCpuProbe() if provider == "cpu" else _LayerTimerProbe(TorchLayerTimer(provider))


def _target(backend_options: dict[str, Any], onnx_model: bool) -> tuple[str, str]:
    """(runtime, device/provider) that the compiled model runs on: ``onnxruntime`` with ``cpu|cuda|tensorrt`` for an
    ONNX model or ``backend="onnxruntime"``, else ``torch`` on ``cpu|cuda`` (``auto``: CUDA when present)."""
    from compiler.backend import gpu_present, resolve_providers

    backend = backend_options.get("backend", "auto") or "auto"
    provider = backend_options.get("provider", "auto") or "auto"
    if onnx_model or backend == "onnxruntime":
        first = resolve_providers(provider)[0]
        return "onnxruntime", {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda"}.get(first, "cpu")
    if provider == "auto":
        provider = "cuda" if gpu_present() else "cpu"
    return "torch", provider


def _cache_path() -> str | None:
    root = cache_dir()
    return os.path.join(root, "channel_block.json") if root else None


def _read(path: str | None) -> dict[str, int]:
    if path is None or not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError, TypeError) as exc:
        log.warning("channel block cache %s unreadable (%s): measuring again", path, exc)
        return {}


def _write(path: str | None, key: str, block: int) -> None:
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        merged = {**_read(path), key: block}
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only home is no reason to fail a compile
        log.warning("channel block cache %s not written: %s", path, exc)


def runtime_block(backend_options: dict[str, Any], onnx_model: bool,
                  progress: Callable[[str], None] | None = None) -> tuple[int, dict[str, Any]]:
    """The channel block of the runtime the compiled model runs on, and how it was found (for the report):
    ``PRUNEC_CHANNEL_BLOCK`` if set, else the cached measurement of this runtime, else measured now and cached."""
    env = os.environ.get(_ENV)
    if env is not None and env.strip():
        try:
            block = int(env)
        except ValueError:
            raise InvalidArgumentError(f"{_ENV}={env!r} is not a whole number of channels") from None
        if block < 1:
            raise InvalidArgumentError(f"{_ENV}={env!r} must be at least 1")
        return block, {"block": block, "source": f"${_ENV}"}
    runtime, device = _target(backend_options, onnx_model)
    probe = _probe(runtime, device)
    key = runtime_fingerprint(probe)
    path = _cache_path()
    cached = _read(path)
    if key in cached:
        return cached[key], {"block": cached[key], "source": "cache", "runtime": key, "path": path}
    t0 = time.perf_counter()
    votes = [staircase_block(probe), staircase_block(probe)]  # kept for good: two agreeing measurements, else a third
    if votes[0] != votes[1]:
        votes.append(staircase_block(probe))
    block = max(set(votes), key=lambda b: (votes.count(b), -b))  # a three-way split keeps the smallest (least change)
    _write(path, key, block)
    if progress:
        progress(f"channel block of {probe.name}: {block} (measured in {time.perf_counter() - t0:.1f}s, kept in {path})")
    return block, {"block": block, "source": "measured", "runtime": key, "path": path,
                   "seconds": round(time.perf_counter() - t0, 2)}


def resolve_channel_block(opts: Any, backend_options: dict[str, Any], onnx_model: bool,
                          progress: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any] | None]:
    """``opts`` with ``channel_block="auto"`` replaced by the runtime's measured block, and how it was found (None
    where the caller gave a number)."""
    from dataclasses import replace

    if opts.channel_block != "auto":
        return opts, None
    block, info = runtime_block(backend_options, onnx_model, progress)
    return replace(opts, channel_block=block), info
