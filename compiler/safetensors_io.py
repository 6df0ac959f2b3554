"""Reading and writing safetensors files one tensor at a time, without memory-mapping whole shards.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: ``dtype``,
``shape``, ``data_offsets`` relative to the end of the header; ``__metadata__``), then the raw
row-major little-endian bytes. :class:`ShardReader` reads one tensor (or a range of its leading rows)
with plain file reads into a fresh tensor, so the process holds what it asked for and no mapped pages
of the rest of the shard. :class:`ShardWriter` writes the header up front (every output shape is known
before any tensor is sliced) and then each tensor's bytes in order, so a shard is written with one
tensor in memory at a time. Files written here read back with ``safetensors.safe_open``.
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
from collections.abc import Sequence
from typing import IO, Any

import torch

from frontends.errors import InvalidArgumentError

__all__ = ["ShardReader", "ShardWriter", "TensorInfo", "DTYPES"]

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip
_CODES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class TensorInfo:
    """One tensor of a shard: its dtype code, shape and byte range (from the start of the data)."""

    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: Sequence[int], begin: int, end: int) -> None:
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, tuple(int(s) for s in shape), begin, end

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class ShardReader:
    """The tensors of one ``.safetensors`` file: ``infos`` (in file order), ``read(name)``, ``read_rows(name, a, b)``."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise InvalidArgumentError(f"{path}: not a safetensors file (shorter than 8 bytes)")
                (n,) = struct.unpack("<Q", head)
                if n > min(_MAX_HEADER, size - 8):
                    raise InvalidArgumentError(f"{path}: not a safetensors file (header length {n})")
                header = json.loads(f.read(n))
        except OSError as exc:
            raise InvalidArgumentError(f"{path}: cannot read ({exc.strerror or exc})") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise InvalidArgumentError(f"{path}: not a safetensors file (its header is not JSON)") from None
        self.data_start = 8 + n
        self.metadata = header.pop("__metadata__", None) or {}
        infos = []
        for name, d in header.items():
            if not isinstance(d, dict) or d.get("dtype") not in DTYPES:
                raise InvalidArgumentError(f"{path}: tensor {name} has dtype {d.get('dtype') if isinstance(d, dict) else d!r}, "
                                           f"which prunec does not read (supported: {', '.join(DTYPES)})")  # fmt: skip
            begin, end = (int(x) for x in d["data_offsets"])
            info = TensorInfo(name, d["dtype"], d["shape"], begin, end)
            if end - begin != math.prod(info.shape) * info.torch_dtype.itemsize or self.data_start + end > size:
                raise InvalidArgumentError(f"{path}: tensor {name} has a byte range that does not match its shape (truncated file?)")
            infos.append(info)
        self.infos = sorted(infos, key=lambda i: i.begin)
        self.by_name = {i.name: i for i in self.infos}

    def _read_bytes(self, f: io.BufferedReader, offset: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
        buf = torch.empty(nbytes, dtype=torch.uint8)
        f.seek(self.data_start + offset)
        view = buf.numpy().data
        got = 0
        while got < nbytes:
            k = f.readinto(view[got:])
            if not k:
                raise InvalidArgumentError(f"{self.path}: file ends inside a tensor (truncated)")
            got += k
        return buf.view(dtype)

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, in its stored dtype."""
        info = self.by_name[name]
        with open(self.path, "rb") as f:
            return self._read_bytes(f, info.begin, info.nbytes, info.torch_dtype).reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the leading dim (a contiguous byte range)."""
        info = self.by_name[name]
        stop = min(stop, info.shape[0])
        row = math.prod(info.shape[1:]) * info.torch_dtype.itemsize
        with open(self.path, "rb") as f:
            t = self._read_bytes(f, info.begin + start * row, (stop - start) * row, info.torch_dtype)
        return t.reshape((stop - start, *info.shape[1:]))


class ShardWriter:
    """Writes one ``.safetensors`` file: the header from ``entries`` (name, dtype, shape) first, then
    :meth:`write` each tensor in the order given; :meth:`close` checks that every one was written."""

    def __init__(self, f: IO[bytes], entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None = None) -> None:
        self.f = f
        header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self.order: list[tuple[str, int, torch.dtype, tuple[int, ...]]] = []
        for name, dtype, shape in entries:
            n = math.prod(shape) * dtype.itemsize
            header[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            self.order.append((name, n, dtype, tuple(shape)))
            offset += n
        self.total = offset
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        self._next = 0

    def write(self, name: str, t: torch.Tensor) -> None:
        want, n, dtype, shape = self.order[self._next]
        if name != want or t.dtype != dtype or tuple(t.shape) != shape:
            raise ValueError(f"expected {want} {dtype} {shape}, got {name} {t.dtype} {tuple(t.shape)}")
        data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        assert data.nbytes == n
        self.f.write(data.data)
        self._next += 1

    def close(self) -> None:
        if self._next != len(self.order):
            raise ValueError(f"{len(self.order) - self._next} tensors were not written")
