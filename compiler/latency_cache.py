"""Layer timings kept on disk, per runtime: each layer shape is measured once on a machine, then read back.

The latency tables (:class:`compiler.latency.LatencyModel`) time every distinct
layer at a grid of widths; that is most of what ``allocation="latency"`` and
``target_latency`` cost. :class:`CachedTimer` wraps a layer timer and keeps its
measurements in one JSON file per runtime fingerprint (runtime and provider,
its version, the processor or GPU, the core count) under ``$PRUNEC_CACHE``
(default ``~/.cache/prunec``), so a second compile of the same layers on the
same runtime measures nothing and plans from the same numbers.
``PRUNEC_CACHE=off`` turns the cache off.

A key is the layer kind, its shape record (``ConvSpec``/``LinearSpec``: batch,
spatial size, kernel, stride...) and the two widths; a value is milliseconds.
Writes merge with what another process wrote meanwhile and replace the file
atomically.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import tempfile
from dataclasses import astuple
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["CachedTimer", "cache_dir", "runtime_fingerprint"]

_VERSION = 1  # bump when what a key means changes


def cache_dir() -> str | None:
    """The cache root: ``$PRUNEC_CACHE``, else ``~/.cache/prunec``; None when ``PRUNEC_CACHE`` is ``off``/``0``/empty."""
    env = os.environ.get("PRUNEC_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "false", "no") else os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "prunec")


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runtime_fingerprint(timer: Any) -> str:
    """What a timing depends on besides the layer: the timer's runtime and device, the runtime's version, the
    hardware (GPU name for a CUDA device, else the processor and its core count)."""
    name = str(getattr(timer, "name", type(timer).__name__))
    if name.startswith("onnxruntime"):
        import onnxruntime

        version = f"ort{onnxruntime.__version__}"
    else:
        import torch

        version = f"torch{torch.__version__}"
    hw = f"{_processor()}-{os.cpu_count()}cores"
    if "cuda" in name or "tensorrt" in name:
        try:
            import torch

            hw = torch.cuda.get_device_name(0) if torch.cuda.is_available() else hw
        except Exception:  # noqa: BLE001 - the name is only a key
            pass
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{name}-{version}-{hw}")[:180]


class CachedTimer:
    """A layer timer (``conv(spec, cin, cout)``, ``linear(spec, cin, cout)`` -> ms) whose measurements are kept on disk.

    ``hits`` and ``misses`` count the timings read back and measured; :meth:`save` writes new ones (the latency
    model calls it once its tables are complete)."""

    def __init__(self, timer: Any, root: str | None = None) -> None:
        self.timer = timer
        self.name = timer.name
        self.fingerprint = runtime_fingerprint(timer)
        root = cache_dir() if root is None else root
        self.path = os.path.join(root, "latency", f"{self.fingerprint}.json") if root else None
        self.hits = 0
        self.misses = 0
        self._new: dict[str, float] = {}
        self._table = self._read()

    def _read(self) -> dict[str, float]:
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            log.warning("latency cache %s unreadable (%s): measuring again", self.path, exc)
            return {}
        if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("ms"), dict):
            return {}
        return {str(k): float(v) for k, v in data["ms"].items() if isinstance(v, (int, float))}

    @staticmethod
    def key(kind: str, spec: Any, cin: int, cout: int) -> str:
        return f"{kind}|{type(spec).__name__}{astuple(spec)}|{int(cin)}|{int(cout)}"

    def _get(self, kind: str, spec: Any, cin: int, cout: int) -> float:
        k = self.key(kind, spec, cin, cout)
        if k in self._table:
            self.hits += 1
            return self._table[k]
        self.misses += 1
        ms = float(getattr(self.timer, kind)(spec, cin, cout))
        self._table[k] = self._new[k] = ms
        return ms

    def conv(self, spec: Any, cin: int, cout: int) -> float:
        return self._get("conv", spec, cin, cout)

    def linear(self, spec: Any, cin: int, cout: int) -> float:
        return self._get("linear", spec, cin, cout)

    def save(self) -> None:
        """Write the timings measured since the last save, merged with the file as it is now (atomic replace)."""
        if self.path is None or not self._new:
            return
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            merged = {**self._read(), **self._new}
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), suffix=".tmp")
        except OSError as exc:  # a read-only home is no reason to fail a compile
            log.warning("latency cache %s not written: %s", self.path, exc)
            return
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": _VERSION, "runtime": self.fingerprint, "ms": merged}, f, indent=0, sort_keys=True)
            os.replace(tmp, self.path)
            self._new = {}
        except OSError as exc:
            log.warning("latency cache %s not written: %s", self.path, exc)
            if os.path.exists(tmp):
                os.unlink(tmp)

    def info(self) -> dict[str, Any]:
        """For the report: where the timings came from."""
        return {"path": self.path, "read": self.hits, "measured": self.misses}
