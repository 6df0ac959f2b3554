"""Calibration for the ONNX adapter: batches checked against the model's inputs, and the private models that
run them in ONNX Runtime.

A batch is a dict of arrays by graph-input name, one array (a model of one input), or a tuple of the inputs in
graph-input order optionally followed by integer labels; arrays or torch tensors. Each input must have its
example input's shape past axis 0 (the samples) and its dtype family; a model whose declared axis 0 is a fixed
size B gets each batch in pieces of B samples (a batch whose size is not a multiple of B is refused).

The model itself is never changed: :func:`capture_model` is a copy that lists intermediate values as extra graph
outputs, :func:`gated_model` a copy in which chosen inputs of consumer nodes pass through a gate
``m + g (x - m)`` (``g`` read from a new graph input :data:`GATES`, one entry per channel class and a constant 1
last; ``g = 0`` replaces a channel by its calibration mean ``m``, as :class:`frontends.torch.calibration.GatedRunner`
does).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from frontends.errors import InvalidArgumentError
from frontends.onnx.model import OnnxModel
from frontends.onnx.opsets import list_initializers_as_inputs
from frontends.onnx.proto import UniqueNames, numpy_dtype, real_inputs, to_numpy

log = logging.getLogger(__name__)

__all__ = ["GATES", "GatedRead", "OnnxBatch", "OnnxCalibration", "capture_model", "gated_model"]

GATES = "prunec_gates"


@dataclass
class OnnxBatch:
    """One calibration batch: inputs by graph-input name, and labels (or None)."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        """Samples in the batch (axis 0 of the first input)."""
        first = next(iter(self.inputs.values()))
        return int(first.shape[0]) if first.ndim else 1


@dataclass
class OnnxCalibration:
    """Calibration batches of an ONNX model, either all labelled or none."""

    batches: list[OnnxBatch]

    @property
    def labelled(self) -> bool:
        return bool(self.batches) and all(b.labels is not None for b in self.batches)

    @classmethod
    def from_user(cls, calibration: Iterable[Any] | None, om: OnnxModel) -> OnnxCalibration:
        """The batches of ``calibration`` (the module docstring's forms); without it, the example inputs."""
        if calibration is None:
            return cls([OnnxBatch(dict(om.inputs), None)])
        if isinstance(calibration, (np.ndarray, Mapping)) or hasattr(calibration, "detach"):
            raise InvalidArgumentError(
                f"calibration is one {type(calibration).__name__}; give an iterable of batches, e.g. [batch] or a list of dicts"
            )
        names = list(om.inputs)
        fixed = _fixed_batch(om)
        out: list[OnnxBatch] = []
        for i, b in enumerate(calibration):
            arrays, labels = _batch_items(i, b, names)
            inputs = {n: _conform(i, n, a, om.inputs[n]) for n, a in zip(names, arrays, strict=True)}
            sizes = {int(a.shape[0]) for a in inputs.values() if a.ndim}
            if len(sizes) > 1:
                raise InvalidArgumentError(f"calibration batch {i}: the inputs have different numbers of samples {sorted(sizes)}")
            batch = OnnxBatch(inputs, None if labels is None else _labels(i, labels, inputs))
            out.extend(_split(i, batch, fixed))
        if not out:
            raise InvalidArgumentError("calibration is empty")
        labelled = [b.labels is not None for b in out]
        if any(labelled) and not all(labelled):
            raise InvalidArgumentError("calibration mixes batches with and without labels")
        return cls(out)


def _fixed_batch(om: OnnxModel) -> int | None:
    """The size every input declares for axis 0 where it is fixed (None: dynamic, or the inputs disagree)."""
    sizes = set()
    for vi in real_inputs(om.model):
        dims = vi.type.tensor_type.shape.dim if vi.type.tensor_type.HasField("shape") else []
        if not dims:
            return None
        d = dims[0]
        if not (d.HasField("dim_value") and d.dim_value > 0):
            return None
        sizes.add(int(d.dim_value))
    return sizes.pop() if len(sizes) == 1 else None


def _batch_items(i: int, b: Any, names: list[str]) -> tuple[list[Any], Any]:
    """A batch's input arrays in graph-input order, and its labels (or None)."""
    n = len(names)
    if isinstance(b, Mapping):
        missing = [k for k in names if k not in b]
        extra = [str(k) for k in b if k not in names]
        if missing or extra:
            what = f"{extra[0]!r} names no input" if extra else f"no array for input {missing[0]!r}"
            raise InvalidArgumentError(f"calibration batch {i}: {what}; the model's inputs are {', '.join(names)}")
        return [b[k] for k in names], None
    if hasattr(b, "shape"):
        if n != 1:
            raise InvalidArgumentError(f"calibration batch {i}: the model takes {n} inputs ({', '.join(names)}), got one array")
        return [b], None
    if isinstance(b, (tuple, list)) and all(hasattr(t, "shape") for t in b):
        if len(b) == n:
            return list(b), None
        if len(b) == n + 1:
            return list(b[:n]), b[n]
        raise InvalidArgumentError(
            f"calibration batch {i}: expected {n} input array(s) ({', '.join(names)}), optionally followed by labels; got {len(b)}"
        )
    raise InvalidArgumentError(
        f"calibration batch {i}: expected a dict of arrays by input name, an array or a tuple of arrays, got {type(b).__name__}"
    )


def _family(a: np.ndarray) -> str:
    return "floating-point" if a.dtype.kind in "fc" else "integer"


def _conform(i: int, name: str, x: Any, example: np.ndarray) -> np.ndarray:
    """Input ``name`` of batch ``i``: the example input's shape past axis 0 and dtype family, cast to its dtype."""
    a = to_numpy(x)
    if a.ndim != example.ndim or (example.ndim > 0 and a.shape[1:] != example.shape[1:]) or (example.ndim == 0 and a.shape != ()):
        expected = "[" + ", ".join(["N", *map(str, example.shape[1:])]) + "]" if example.ndim else "[]"
        raise InvalidArgumentError(
            f"calibration batch {i}, input {name!r}: shape {list(a.shape)} does not match the model's "
            f"{list(example.shape)} (expected {expected}, any number of samples N)"
        )
    if a.dtype.kind not in "biufc" or _family(a) != _family(example):
        raise InvalidArgumentError(
            f"calibration batch {i}, input {name!r}: dtype {a.dtype} where the model takes {example.dtype}"
        )
    return np.ascontiguousarray(a, dtype=example.dtype)


def _labels(i: int, labels: Any, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Integer class labels, one per sample."""
    y = to_numpy(labels)
    n = next(iter(inputs.values())).shape[0]
    if y.dtype.kind not in "iu" or y.ndim < 1 or y.shape[0] != n:
        raise InvalidArgumentError(
            f"calibration batch {i}: labels must be integer class indices, one per sample ({n}); got dtype {y.dtype}, "
            f"shape {list(y.shape)}"
        )
    return y.astype(np.int64)


def _split(i: int, b: OnnxBatch, fixed: int | None) -> list[OnnxBatch]:
    """``b`` as batches of the model's fixed batch size (itself where the size is dynamic or already that)."""
    n = b.size
    if fixed is None or n == fixed:
        return [b]
    if n % fixed:
        raise InvalidArgumentError(
            f"calibration batch {i} has {n} samples; the model's inputs have a fixed batch size of {fixed}: "
            f"give batches of a multiple of {fixed}"
        )
    return [
        OnnxBatch({k: v[s : s + fixed] for k, v in b.inputs.items()}, None if b.labels is None else b.labels[s : s + fixed])
        for s in range(0, n, fixed)
    ]


# -- the private models --------------------------------------------------------------------------------


def capture_model(model: onnx.ModelProto, names: Sequence[str], types: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the values ``names`` (ONNX element types from ``types``)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, types[n], None) for n in names if n not in present)
    return m


@dataclass(frozen=True)
class GatedRead:
    """One input of a node to gate: node index, input index, per-position classes along ``dim``, the mean there."""

    node: int
    index: int
    value: str
    dim: int
    rank: int
    classes: np.ndarray  # class per position (-1: none)
    mean: np.ndarray  # per position
    elem: int


def gated_model(model: onnx.ModelProto, reads: Sequence[GatedRead], n_classes: int) -> tuple[onnx.ModelProto, str]:
    """A copy of ``model`` in which each read goes through ``m + g (x - m)``, ``g = gates[class]`` (float32
    ``[n_classes + 1]``, a new graph input named after :data:`GATES`; a position of no class reads the last
    entry); and the name of that input."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    names = UniqueNames(g)
    gates = names.fresh(GATES)
    g.input.append(helper.make_tensor_value_info(gates, TensorProto.FLOAT, [n_classes + 1]))
    before: dict[int, list[onnx.NodeProto]] = {}
    for r in reads:
        t = {s: names.fresh(f"{r.value}__gate_{s}") for s in ("idx", "shape", "mean", "g1", "g32", "g", "d", "gd", "out")}
        shape = [1] * r.rank
        shape[r.dim] = len(r.classes)
        idx = np.where(r.classes >= 0, r.classes, n_classes).astype(np.int64)
        g.initializer.extend(
            [
                numpy_helper.from_array(idx, t["idx"]),
                numpy_helper.from_array(np.array(shape, dtype=np.int64), t["shape"]),
                numpy_helper.from_array(np.asarray(r.mean, dtype=numpy_dtype(r.elem)).reshape(shape), t["mean"]),
            ]
        )
        nodes = [
            helper.make_node("Gather", [gates, t["idx"]], [t["g1"]]),
            helper.make_node("Reshape", [t["g1"], t["shape"]], [t["g32"]]),
        ]
        gate = t["g32"]
        if r.elem != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [gate], [t["g"]], to=r.elem))
            gate = t["g"]
        nodes += [
            helper.make_node("Sub", [r.value, t["mean"]], [t["d"]]),
            helper.make_node("Mul", [gate, t["d"]], [t["gd"]]),
            helper.make_node("Add", [t["mean"], t["gd"]], [t["out"]]),
        ]
        before.setdefault(r.node, []).extend(nodes)
        g.node[r.node].input[r.index] = t["out"]
    order: list[onnx.NodeProto] = []
    for i, n in enumerate(g.node):
        order.extend(before.get(i, []))
        order.append(n)
    copies = [onnx.NodeProto() for _ in order]
    for dst, src in zip(copies, order, strict=True):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(copies)
    del g.value_info[:]
    if m.ir_version < 4:
        list_initializers_as_inputs(m)
    return m, gates
