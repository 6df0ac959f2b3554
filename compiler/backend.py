"""The backend: run a (pruned) model on a compiled runtime, and measure it.

Two runtimes:

- ONNX Runtime (:class:`OrtRunner`): TensorRT execution provider, else CUDA, else
  CPU (``provider="auto"``), all graph optimizations on, I/O bound to the device
  on GPU, optional fp16. A PyTorch model reaches it through :func:`export_onnx`.
- PyTorch (:class:`TorchRunner`): ``torch.compile`` where CUDA is present, eager
  otherwise (``mode="auto"``).

Which runtime and provider actually run is visible in ``runner.name`` (what the
runtime reports, not what was asked for), and every choice can be overridden.
Timing helpers measure several runners *interleaved* (A, B, A, B, ...) so that
the ratios of a side-by-side comparison are not skewed by the machine drifting.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from frontends.errors import InvalidArgumentError, UnsupportedModelError

__all__ = [
    "BACKENDS",
    "PROVIDERS",
    "OrtRunner",
    "TorchRunner",
    "Timing",
    "export_onnx",
    "gpu_present",
    "make_runner",
    "resolve_providers",
    "time_interleaved",
    "peak_memory_onnx",
]

BACKENDS = ("auto", "eager", "torch.compile", "onnxruntime")
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
_SHORT = {v: k for k, v in PROVIDERS.items()}


def gpu_present() -> bool:
    """A CUDA device is usable (not merely a CUDA build installed)."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # pragma: no cover - torch is a dependency
        return False


def resolve_providers(provider: str = "auto") -> list[str]:
    """The ONNX Runtime provider list for ``provider`` (``auto|cpu|cuda|tensorrt``), best first.

    ``auto`` takes TensorRT, then CUDA, when a GPU is present and the installed
    ONNX Runtime has them; an explicit GPU provider without a GPU is an error,
    never a silent fall-back to the CPU.
    """
    import onnxruntime as ort

    if provider not in ("auto", *PROVIDERS):
        raise InvalidArgumentError(f"provider must be one of auto, {', '.join(PROVIDERS)}; got {provider!r}")
    avail = set(ort.get_available_providers())
    if provider == "cpu":
        return ["CPUExecutionProvider"]
    gpu = gpu_present()
    if provider == "auto":
        chain = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if gpu and p in avail]
        return chain + ["CPUExecutionProvider"]
    name = PROVIDERS[provider]
    if name not in avail:
        raise InvalidArgumentError(f"provider {provider!r}: this ONNX Runtime has no {name} (it has {', '.join(sorted(avail))})")
    if not gpu:
        raise InvalidArgumentError(f"provider {provider!r} needs a CUDA GPU and none is present; use --provider cpu")
    chain = [name] + (["CUDAExecutionProvider"] if name == "TensorrtExecutionProvider" else [])
    return chain + ["CPUExecutionProvider"]


def _model_bytes(model: Any) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        return bytes(model)
    if isinstance(model, (str, os.PathLike)):
        from frontends.onnx import load_proto

        return load_proto(model)[0].SerializeToString()
    if type(model).__name__ == "ModelProto":
        return model.SerializeToString()
    raise UnsupportedModelError(f"cannot run a {type(model).__name__} in ONNX Runtime: expected an ONNX model")


def _session_source(model: Any, staging: str) -> bytes | str:
    """What an ONNX Runtime session is made from: the model's bytes, or, over 2 GB (protobuf cannot serialize it), a
    path whose external data ONNX Runtime reads itself: the file's own (its locations checked by the loader), or the
    model written with its data beside it into the folder ``staging`` (removed by the caller once the session holds
    the weights)."""
    if isinstance(model, (str, os.PathLike)) or type(model).__name__ == "ModelProto":
        from frontends.onnx import large

        proto = model
        if isinstance(model, (str, os.PathLike)):
            from frontends.onnx import load_proto

            proto = load_proto(model)[0]
            if large.is_large(proto):
                return os.fspath(model)
        if large.is_large(proto):
            from compiler.onnx_io import save_with_external_data

            path = os.path.join(staging, "model.onnx")
            save_with_external_data(proto, path)
            return path
    return _model_bytes(model)


def to_fp16(model: Any) -> Any:
    """The model with float32 weights and compute in float16; inputs and outputs stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load_from_string(_model_bytes(model))
    return convert_float_to_float16(proto, keep_io_types=True)


class OrtRunner:
    """An ONNX Runtime session: ``runner(*arrays) -> list of arrays``.

    ``threads`` sets intra-op threads (default: ONNX Runtime's own choice).
    On a GPU provider the inputs are copied to the device once per new input and
    the outputs are bound on the device (``io_binding``), so timed runs measure
    the model, not host-device copies; :meth:`__call__` still returns host arrays.
    """

    def __init__(self, model: Any, provider: str = "auto", fp16: bool = False, threads: int | None = None) -> None:
        import onnxruntime as ort

        if fp16:
            model = to_fp16(model)
        staging = tempfile.TemporaryDirectory(prefix="prunec-ort-", ignore_cleanup_errors=True)
        blob = _session_source(model, staging.name)  # over 2 GB: a path, the external data beside it
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        self.requested = provider
        providers = resolve_providers(provider)
        try:
            self.session = ort.InferenceSession(blob, so, providers=providers)
        except Exception as exc:
            raise UnsupportedModelError(f"ONNX Runtime cannot run this model: {str(exc).splitlines()[0]}") from exc
        finally:
            staging.cleanup()
        self.providers = self.session.get_providers()
        if provider not in ("auto", "cpu") and self.providers[0] != PROVIDERS[provider]:
            raise UnsupportedModelError(
                f"provider {provider!r} was asked for but ONNX Runtime fell back to {self.providers[0]}"
            )
        self.device = "cpu" if self.providers[0] == "CPUExecutionProvider" else "cuda"
        self.fp16 = fp16
        self.name = "onnxruntime-" + _SHORT.get(self.providers[0], self.providers[0]) + ("-fp16" if fp16 else "")
        self.inputs = self.session.get_inputs()
        self.input_names = [i.name for i in self.inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def feeds(self, inputs: Sequence[Any]) -> dict[str, np.ndarray]:
        from frontends.onnx import to_numpy

        if len(inputs) != len(self.input_names):
            raise InvalidArgumentError(f"the model takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        return {n: to_numpy(x) for n, x in zip(self.input_names, inputs, strict=True)}

    def __call__(self, *inputs: Any) -> list[np.ndarray]:
        return self.session.run(self.output_names, self.feeds(inputs))

    def timed_fn(self, *inputs: Any) -> Callable[[], None]:
        """A zero-argument function that runs the model once on these inputs (what timings call)."""
        feeds = self.feeds(inputs)
        if self.device == "cpu":
            sess, names = self.session, self.output_names
            return lambda: sess.run(names, feeds)
        import onnxruntime as ort

        binding = self.session.io_binding()
        for name, arr in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        sess = self.session

        def run() -> None:
            sess.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return run


class TorchRunner:
    """A PyTorch module on ``torch.compile`` (with CUDA) or eager: ``runner(*tensors)``."""

    def __init__(self, module: Any, mode: str = "auto", device: str = "auto", fp16: bool = False) -> None:
        import torch

        if mode not in ("auto", "eager", "torch.compile"):
            raise InvalidArgumentError(f"torch backend mode must be auto, eager or torch.compile; got {mode!r}")
        if device == "auto":
            device = "cuda" if gpu_present() else "cpu"
        if device == "cuda" and not gpu_present():
            raise InvalidArgumentError("device 'cuda' asked for but no CUDA GPU is present")
        if fp16 and device != "cuda":
            raise InvalidArgumentError("fp16 needs a CUDA device for the PyTorch backend")
        self.device = device
        self.fp16 = fp16
        if device != "cpu" or fp16:  # leave the caller's module where it is
            module = copy.deepcopy(module)
        module = module.eval().to(device)
        if fp16:
            module = module.half()
        self.module = module
        if mode == "auto":
            mode = "torch.compile" if device == "cuda" else "eager"
        self.mode = mode
        self._fn = torch.compile(module) if mode == "torch.compile" else module
        self.name = ("torch.compile" if mode == "torch.compile" else "torch-eager") + f"-{device}" + ("-fp16" if fp16 else "")

    def _tensor(self, x: Any) -> Any:
        import torch

        t = torch.as_tensor(x).to(self.device)
        return t.half() if self.fp16 and t.is_floating_point() else t

    def _prepare(self, inputs: Sequence[Any]) -> list[Any]:
        """Each argument as a tensor on the device; in a list, tuple or dict argument (a detection model's list
        of images), each tensor or array leaf, the other leaves as they are."""
        import numpy as np
        import torch
        import torch.utils._pytree as pytree

        def leaf(x: Any) -> Any:
            return self._tensor(x) if isinstance(x, (torch.Tensor, np.ndarray)) else x

        def structured(x: Any) -> bool:  # a list of numbers is still one tensor
            return isinstance(x, (list, tuple, dict)) and any(isinstance(t, (torch.Tensor, np.ndarray)) for t in pytree.tree_leaves(x))

        return [pytree.tree_map(leaf, x) if structured(x) else self._tensor(x) for x in inputs]

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        import torch

        names = list(kwargs)
        values = self._prepare([kwargs[k] for k in names])
        with torch.no_grad():
            return self._fn(*self._prepare(inputs), **dict(zip(names, values, strict=True)))

    def timed_fn(self, *inputs: Any) -> Callable[[], None]:
        import torch

        args = self._prepare(inputs)
        fn = self._fn
        sync = torch.cuda.synchronize if self.device == "cuda" else (lambda: None)

        def run() -> None:
            with torch.no_grad():
                fn(*args)
            sync()

        return run


def make_runner(model: Any, backend: str = "auto", provider: str = "auto", fp16: bool = False,
                example_inputs: Sequence[Any] | None = None) -> OrtRunner | TorchRunner:
    """The runner for ``model`` on ``backend`` (``auto|eager|torch.compile|onnxruntime``).

    An ONNX model always runs in ONNX Runtime. A PyTorch module runs in PyTorch
    (``auto``: torch.compile with CUDA, eager without) unless ``backend`` is
    ``onnxruntime``, which exports it first (``example_inputs`` needed).
    """
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        if backend in ("eager", "torch.compile"):
            raise InvalidArgumentError(f"backend={backend!r} runs PyTorch modules; an ONNX model runs in onnxruntime")
        return OrtRunner(model, provider=provider, fp16=fp16)
    if backend == "onnxruntime":
        if example_inputs is None:
            raise InvalidArgumentError("backend='onnxruntime' for a PyTorch model needs example_inputs to export it")
        return OrtRunner(export_onnx(model, example_inputs), provider=provider, fp16=fp16)
    if provider not in ("auto", "cpu", "cuda"):
        raise InvalidArgumentError(f"provider {provider!r} is an ONNX Runtime provider; use backend='onnxruntime'")
    return TorchRunner(model, mode=backend, device=provider, fp16=fp16)


def export_onnx(module: Any, example_inputs: Sequence[Any], dynamic_batch: bool = True, opset: int = 17) -> Any:
    """Export a PyTorch module to an in-memory ``onnx.ModelProto`` (batch dim dynamic by default).

    The TorchScript exporter first (it keeps the graph close to the module's),
    then the dynamo exporter; a module neither can export raises
    :class:`UnsupportedModelError` naming both reasons.
    """
    import onnx
    import torch

    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    args = tuple(example_inputs)
    names = [f"input{i}" if len(args) > 1 else "input" for i in range(len(args))]
    module = module.eval()
    with torch.no_grad():
        out = module(*args)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    # naming the outputs also keeps the TorchScript exporter from mistaking a GraphModule's .graph for its own
    out_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    errors = []
    for dynamo in (False, True):
        kw: dict[str, Any] = {"input_names": names, "opset_version": opset if not dynamo else max(opset, 18)}
        if not dynamo:
            kw["output_names"] = out_names
        if dynamic_batch:
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=4096)
                kw["dynamic_shapes"] = tuple({0: batch} for _ in args)
            else:
                kw["dynamic_axes"] = {n: {0: "batch"} for n in names + out_names}
        try:
            # not under no_grad: there nn.MultiheadAttention takes its fused fast path, which does not export
            if dynamo:
                prog = torch.onnx.export(module, args, dynamo=True, **kw)
                if prog is None:  # the dynamo exporter returns its program when no file is given
                    raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
                return prog.model_proto
            with tempfile.TemporaryDirectory(prefix="prunec-export-") as tmp:
                path = os.path.join(tmp, "model.onnx")
                torch.onnx.export(module, args, path, dynamo=False, **kw)
                return onnx.load(path)
        except Exception as exc:  # both exporters raise many types
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise UnsupportedModelError("cannot export the model to ONNX: " + "; ".join(errors))


@dataclass
class Timing:
    """Latency of one runner at one batch size: milliseconds per run."""

    median_ms: float
    p90_ms: float
    runs: int
    batch: int

    @property
    def throughput(self) -> float:
        """Samples per second at the median latency."""
        return self.batch * 1000.0 / self.median_ms if self.median_ms > 0 else math.inf

    def to_dict(self) -> dict[str, float]:
        return {"median_ms": self.median_ms, "p90_ms": self.p90_ms, "runs": self.runs, "batch": self.batch,
                "throughput": self.throughput}


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def time_interleaved(fns: Mapping[str, Callable[[], None]], batch: int, warmup: int = 5, runs: int = 30,
                     min_seconds: float = 0.0, progress: Callable[[str], None] | None = None,
                     clock: str = "wall") -> dict[str, Timing]:
    """Time each zero-argument function, interleaved round by round.

    Every round runs each function once, in an order that alternates between
    rounds, so slow drifts of the machine hit all of them alike. ``runs`` rounds
    at least, more until ``min_seconds`` have passed (at most 10x ``runs``).

    ``clock="cpu"`` times each run by the calling thread's CPU time instead of
    the wall clock: for a single-threaded CPU session (``OrtRunner(threads=1)``,
    which computes on the calling thread) it is the run's compute time, and other
    jobs on a shared machine do not inflate it by pre-empting the thread.
    """
    if clock not in CLOCKS:
        raise InvalidArgumentError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    tick = CLOCKS[clock]
    names = list(fns)
    for _ in range(max(warmup, 0)):
        for n in names:
            fns[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    r = 0
    while r < runs or (time.perf_counter() - start < min_seconds and r < 10 * runs):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = tick()
            fns[n]()
            samples[n].append(tick() - t0)
        r += 1
        if progress and r % max(1, runs // 4) == 0 and r <= runs:
            progress(f"  {r}/{runs} rounds")
    return {
        n: Timing(float(np.median(s) * 1e3), float(np.percentile(s, 90) * 1e3), len(s), batch)
        for n, s in samples.items()
    }


_MEMORY_CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort
path, provider, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))
try:  # reset the peak-RSS counter so the imports' peak does not count
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
base = status("VmRSS")
so = ort.SessionOptions(); so.log_severity_level = 3
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
providers = json.loads(sys.argv[4])
gpu_before = None
if providers[0] != "CPUExecutionProvider":
    import torch
    gpu_before = torch.cuda.mem_get_info()[0]
sess = ort.InferenceSession(path, so, providers=providers)
feeds = {}
for i in sess.get_inputs():
    shape = [batch if (k == 0 and not isinstance(d, int)) else (d if isinstance(d, int) else 1) for k, d in enumerate(i.shape)]
    kind = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(i.type, np.float32)
    feeds[i.name] = np.zeros(shape, dtype=kind)
low = None
for _ in range(3):
    sess.run(None, feeds)
    if gpu_before is not None:
        free = torch.cuda.mem_get_info()[0]
        low = free if low is None else min(low, free)
peak = status("VmHWM")
out = {"host_mb": (peak - base) / 1024.0}
if gpu_before is not None:
    out["device_mb"] = (gpu_before - low) / 2**20
print(json.dumps(out))
"""


def peak_memory_onnx(model: Any, provider: str = "auto", batch: int = 1, fp16: bool = False) -> dict[str, float]:
    """Peak memory of loading and running ``model`` at ``batch``, measured in a fresh process.

    ``host_mb``: growth of the process's peak resident set over its state right
    after importing ONNX Runtime (weights, arena, activations); ``device_mb`` on a
    GPU provider: device memory taken. Returns ``{}`` if the child fails.
    """
    if fp16:
        model = to_fp16(model)
    blob = _model_bytes(model)
    providers = resolve_providers(provider)
    with tempfile.TemporaryDirectory(prefix="prunec-mem-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(blob)
        proc = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, path, provider, str(batch), json.dumps(providers)],
            capture_output=True, text=True, timeout=600,
        )
    if proc.returncode != 0:
        return {}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}
