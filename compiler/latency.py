"""Latency as a cost: per-layer tables measured on the device, for ``compile(target_latency=...)``.

Each weight layer (convolution, linear) is timed alone on the runtime the pruned
model will run on (PyTorch on its device, or ONNX Runtime on its provider), at a
grid of input and output channel counts (multiples of the granularity), and its
latency at any planned width is interpolated from that table. What the layers do
not account for (normalizations, activations, pooling, copies) is the whole
model's measured latency minus the layers' sum; it is scaled by the fraction of
activation elements a plan keeps (attention and activation-activation matmuls
are in this rest).

The estimate allocates channels (:meth:`LatencyModel.channel_cost` ranks
channels by saliency per millisecond saved); the compiler then measures the real
pruned model and tightens the target until the measurement meets it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from compiler.latency_cache import CachedTimer
from frontends.graph import Op
from passes.channel_analysis import AnalysisResult
from passes.ops import lookup
from passes.ops.layers import ConvSpec, LatencyLayer, LinearSpec

__all__ = ["LatencyModel", "TorchLayerTimer", "OrtLayerTimer", "layer_timer"]

_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def _time_fn(fn: Callable[[], Any], budget_s: float = 0.015, min_runs: int = 3, max_runs: int = 100) -> float:
    """Median milliseconds of ``fn`` after warm-up, with as many runs as fit the budget."""
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-6)
    runs = int(min(max_runs, max(min_runs, budget_s / once)))
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples) * 1e3)


class TorchLayerTimer:
    """Times single layers with PyTorch on ``device``."""

    def __init__(self, device: str = "cpu", dtype: Any = None) -> None:
        import torch

        self.device = device
        self.dtype = dtype or torch.float32
        self.name = f"torch-{device}"

    def conv(self, s: ConvSpec, cin: int, cout: int) -> float:
        import torch
        import torch.nn.functional as F

        groups = cin if s.depthwise else max(1, cin // s.group_width)
        x = torch.randn(s.n, cin, s.h, s.w, device=self.device, dtype=self.dtype)
        wt = torch.randn(cout, cin // groups, s.kh, s.kw, device=self.device, dtype=self.dtype)
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)

        def run() -> None:
            with torch.no_grad():
                F.conv2d(x, wt, None, s.stride, s.padding, 1, groups)
            sync()

        return _time_fn(run)

    def linear(self, s: LinearSpec, cin: int, cout: int) -> float:
        import torch
        import torch.nn.functional as F

        x = torch.randn(s.m, cin, device=self.device, dtype=self.dtype)
        wt = torch.randn(cout, cin, device=self.device, dtype=self.dtype)
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)

        def run() -> None:
            with torch.no_grad():
                F.linear(x, wt)
            sync()

        return _time_fn(run)


class OrtLayerTimer:
    """Times single layers as one-node ONNX models in ONNX Runtime on ``provider``."""

    def __init__(self, provider: str = "cpu") -> None:
        self.provider = provider
        self.name = f"onnxruntime-{provider}"

    def _run(self, node: Any, x_shape: Sequence[int], inits: list[Any], y_name: str = "y") -> float:
        from onnx import TensorProto, helper

        from compiler.backend import OrtRunner

        graph = helper.make_graph(
            [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
            [helper.make_tensor_value_info(y_name, TensorProto.FLOAT, None)], initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        runner = OrtRunner(model, provider=self.provider)
        fn = runner.timed_fn(np.random.default_rng(0).standard_normal(x_shape).astype(np.float32))
        return _time_fn(fn)

    def conv(self, s: ConvSpec, cin: int, cout: int) -> float:
        from onnx import helper, numpy_helper

        groups = cin if s.depthwise else max(1, cin // s.group_width)
        w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((cout, cin // groups, s.kh, s.kw)).astype(np.float32), "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], group=groups, strides=list(s.stride),
                                pads=[s.padding[0], s.padding[1], s.padding[0], s.padding[1]], kernel_shape=[s.kh, s.kw])
        return self._run(node, (s.n, cin, s.h, s.w), [w])

    def linear(self, s: LinearSpec, cin: int, cout: int) -> float:
        from onnx import helper, numpy_helper

        w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((cin, cout)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        return self._run(node, (s.m, cin), [w])


def layer_timer(runner: Any) -> CachedTimer:
    """The layer timer that matches a backend runner (same runtime, same device), its timings kept on disk
    (:mod:`compiler.latency_cache`)."""
    from compiler.backend import OrtRunner

    if isinstance(runner, OrtRunner):
        provider = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}.get(runner.providers[0], "cuda")
        return CachedTimer(OrtLayerTimer(provider))
    return CachedTimer(TorchLayerTimer(runner.device))


class _Table:
    """Latency of one layer over a grid of (input, output) channel counts; bilinear in between."""

    def __init__(self, cins: list[int], couts: list[int], ms: np.ndarray) -> None:
        self.cins, self.couts, self.ms = np.asarray(cins, float), np.asarray(couts, float), ms

    def __call__(self, cin: int, cout: int) -> float:
        def axis(grid: np.ndarray, v: float) -> tuple[int, int, float]:
            if len(grid) == 1:
                return 0, 0, 0.0
            j = int(np.clip(np.searchsorted(grid, v) - 1, 0, len(grid) - 2))
            t = (v - grid[j]) / (grid[j + 1] - grid[j])
            return j, j + 1, float(t)

        i0, i1, ti = axis(self.cins, cin)
        o0, o1, to = axis(self.couts, cout)
        m = self.ms
        val = (1 - ti) * ((1 - to) * m[i0, o0] + to * m[i0, o1]) + ti * ((1 - to) * m[i1, o0] + to * m[i1, o1])
        return max(float(val), 0.0)


def _grid(n: int, granularity: int) -> list[int]:
    g = granularity if n > granularity else 1
    return sorted({min(n, max(g, math.ceil(f * n / g) * g)) for f in _FRACTIONS})


def _next_estimate_target(points: list[tuple[float, float]], est_target: float, target_ms: float, measured: float) -> float:
    """The estimate to aim at next: interpolated between the closest measurements under and over the
    target where there are both, else the last aim scaled by target / measured."""
    under = [pt for pt in points if pt[1] <= target_ms]
    over = [pt for pt in points if pt[1] > target_ms]
    if under and over:
        (e0, m0), (e1, m1) = max(under, key=lambda pt: pt[1]), min(over, key=lambda pt: pt[1])
        if m1 > m0 and e1 != e0:
            return e0 + (target_ms - m0) * (e1 - e0) / (m1 - m0)
    return est_target * target_ms / measured


class LatencyModel:
    """Estimated latency (ms) of a planned pruning, from tables measured on the device."""

    def __init__(
        self,
        analysis: AnalysisResult,
        timer: TorchLayerTimer | OrtLayerTimer | CachedTimer,
        whole_ms: float,
        granularity: int = 8,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.analysis = analysis
        self.timer = timer
        self.whole_ms = whole_ms
        graph = analysis.graph
        self.layers: list[tuple[Op, Any, Any]] = []  # (op, table, spec)
        tables: dict[Any, _Table] = {}
        ops = [op for op in graph.ops.values() if (s := lookup(op)) is not None and s.latency is not None]
        t0 = time.perf_counter()
        for k, op in enumerate(ops):
            layer = self._layer(op, graph.shape)
            if layer is None:
                continue
            key, cin, cout = layer.layer, layer.cin, layer.cout
            if key not in tables:
                tables[key] = self._measure(key, cin, cout, granularity)
            self.layers.append((op, tables[key], key))
            if progress and (k + 1) % 20 == 0:
                progress(f"  latency tables: {k + 1}/{len(ops)} layers, {len(tables)} distinct, {time.perf_counter() - t0:.1f}s")
        self.n_tables = len(tables)
        self.cache: dict[str, Any] | None = None  # where the timings came from (compiler.latency_cache)
        if isinstance(timer, CachedTimer):
            timer.save()
            self.cache = timer.info()
        full = np.zeros(analysis.n_classes, dtype=bool)
        self.layer_full_ms = self._layers_ms(full)
        self.rest_ms = max(whole_ms - self.layer_full_ms, 0.0)
        self._act_values = [v.name for v in graph.values.values() if not v.is_const and v.shape]
        self._act_full = max(self._activation_elems(full), 1)

    # -- tables ----------------------------------------------------------------
    @staticmethod
    def _layer(op: Op, shape: Callable[[str], tuple[int, ...]]) -> LatencyLayer | None:
        """The op's spec describes the layer a table times, and its widths under ``shape``."""
        spec = lookup(op)
        return spec.latency(op, shape) if spec is not None and spec.latency is not None else None

    def _measure(self, spec: Any, cin: int, cout: int, granularity: int) -> _Table:
        if isinstance(spec, ConvSpec) and spec.depthwise:
            cs = _grid(cin, granularity)
            diag = [self.timer.conv(spec, c, c) for c in cs]
            return _DiagTable(cs, diag)
        if isinstance(spec, ConvSpec) and spec.group_width > 1 and cin > spec.group_width:
            gw = spec.group_width  # grouped: whole groups, input counts are multiples of the group width
            cins = sorted({max(gw, math.ceil(f * cin / gw) * gw) for f in _FRACTIONS})
        else:
            cins = _grid(cin, granularity)
        couts = _grid(cout, granularity)
        fn = self.timer.conv if isinstance(spec, ConvSpec) else self.timer.linear
        ms = np.array([[fn(spec, ci, co) for co in couts] for ci in cins])
        return _Table(cins, couts, ms)

    # -- estimates -------------------------------------------------------------
    def _layers_ms(self, pruned: np.ndarray) -> float:
        total = 0.0
        for op, table, _ in self.layers:
            layer = self._layer(op, lambda v: self.analysis.pruned_shape(v, pruned))
            assert layer is not None
            total += table(layer.cin, layer.cout)
        return total

    def _activation_elems(self, pruned: np.ndarray) -> int:
        ps = self.analysis.pruned_shape
        return sum(math.prod(ps(v, pruned)) for v in self._act_values)

    def estimate(self, pruned: np.ndarray) -> float:
        """Estimated milliseconds of the model pruned by ``pruned`` (bool per class)."""
        frac = self._activation_elems(pruned) / self._act_full
        return self._layers_ms(pruned) + self.rest_ms * frac

    def channel_cost(self) -> np.ndarray:
        """Milliseconds saved per unit width, per class: each group's slope from full to half width."""
        a = self.analysis
        out = np.ones(a.n_classes)
        full = np.zeros(a.n_classes, dtype=bool)
        base = self.estimate(full)
        for g in a.groups:
            if not g.prunable:
                continue
            movable = g.classes[~g.frozen]
            if movable.size == 0:
                continue
            half = full.copy()
            half[movable[: max(1, movable.size // 2)]] = True
            width = int(g.widths[~g.frozen][: max(1, movable.size // 2)].sum())
            out[g.classes] = max(base - self.estimate(half), 1e-6) / max(width, 1)
        return out


class _DiagTable(_Table):
    """A depthwise layer: input and output channels are the same channels."""

    def __init__(self, cs: list[int], ms: list[float]) -> None:
        super().__init__(cs, cs, np.asarray(ms))

    def __call__(self, cin: int, cout: int) -> float:
        return max(float(np.interp(min(cin, cout), self.cins, self.ms)), 0.0)


class LatencyTarget:
    """Measures models on the result's backend and re-plans until the measured latency meets a target."""

    ROUNDS = 4

    def __init__(self, backend_options: dict[str, Any], example_inputs: Sequence[Any], progress: Callable[[str], None] | None = None) -> None:
        self.options = dict(backend_options)
        self.inputs = tuple(example_inputs)
        self.progress = progress
        self.timer: CachedTimer | None = None
        self.runtime = ""
        shape = getattr(self.inputs[0], "shape", None) if self.inputs else None
        self.batch = int(shape[0]) if shape is not None and len(shape) else 1

    def measure(self, model: Any) -> float:
        """Median milliseconds of one run of ``model`` on the backend, at the example inputs."""
        from compiler.backend import make_runner, time_interleaved

        runner = make_runner(model, example_inputs=self.inputs, **self.options)
        if self.timer is None:
            self.timer = layer_timer(runner)
            self.runtime = runner.name
        fn = runner.timed_fn(*self.inputs)
        return time_interleaved({"m": fn}, batch=self.batch, warmup=5, runs=20, min_seconds=0.5)["m"].median_ms

    def target_ms(self, target: float, original_ms: float) -> float:
        return target * original_ms if target <= 1.0 else float(target)

    def meet(self, p: Any, target_ms: float, opts: Any, build: Callable[[Any], Any], model_of: Callable[[Any], Any]) -> tuple[Any, Any, dict[str, Any]]:
        """Build the planned model, measure it, and re-plan against a corrected estimate.

        ``build(plan)`` rewrites a plan into whatever ``model_of`` turns into a
        runnable model. A measurement above the target tightens the estimate's
        target by the ratio; one well below it (under 90%) loosens it, so the
        model is not pruned more than the target asks. Where measurements lie on
        both sides of the target (the unpruned model is one), the next estimate
        target is interpolated between them, so a loosening never overshoots to
        the unpruned model. Returns the pruned plan that met the target with the
        most latency left (else the fastest), its build, and the history of rounds.
        """
        from dataclasses import replace

        from compiler.pipeline import select_latency

        est_target = target_ms
        history: list[dict[str, Any]] = []
        built = build(p)
        best: tuple[float, Any, Any] | None = None
        fastest: tuple[float, Any, Any] | None = None
        # (estimate, measured) pairs; the unpruned model is one (its estimate is the whole-model time)
        points = [(p.latency.estimate(np.zeros_like(p.selection.pruned)), p.latency.whole_ms)]
        for r in range(self.ROUNDS):
            measured = self.measure(model_of(built))
            estimate = p.latency.estimate(p.selection.pruned)
            points.append((estimate, measured))
            history.append({"round": r + 1, "estimate_target_ms": round(est_target, 4), "estimated_ms": round(estimate, 4),
                            "measured_ms": round(measured, 4)})
            if self.progress:
                self.progress(f"  latency round {r + 1}: estimated {estimate:.3f} ms, measured {measured:.3f} ms, target {target_ms:.3f} ms")
            pruned_any = bool(p.selection.pruned.any())
            if measured <= target_ms and pruned_any and (best is None or measured > best[0]):
                best = (measured, p, built)
            if fastest is None or measured < fastest[0]:
                fastest = (measured, p, built)
            if (0.9 * target_ms <= measured <= target_ms) or r == self.ROUNDS - 1:
                break
            est_target = _next_estimate_target(points, est_target, target_ms, measured)
            p = replace(p, selection=select_latency(p.analysis, p.saliency.scores, p.latency, est_target, opts))
            built = build(p)
        chosen = best or fastest
        assert chosen is not None
        measured, p, built = chosen
        info = {
            "target_ms": round(target_ms, 4),
            "met": measured <= target_ms,
            "measured_ms": round(measured, 4),
            "runtime": self.runtime,
            "batch": self.batch,
            "tables": p.latency.n_tables,
            "tables_cache": p.latency.cache,
            "rounds": history,
        }
        if not info["met"]:
            import logging

            logging.getLogger(__name__).warning(
                "target_latency %.3f ms not met: measured %.3f ms at best after %d rounds", target_ms, measured, len(history)
            )
        return p, built, info
