"""Calibration for the torch adapter: batches, the loss, and a gated run of the traced model.

A *gate* multiplies a channel class wherever a contracting layer reads it (the
input of a conv, linear or matmul, a sum over channels). Removing channel class
``c`` is exactly ``g_c = 0`` there, so derivatives with respect to the gates are
what the data-driven criteria need. In mean-replacement mode the gate acts as
``x' = m + g (x - m)``: ``g_c = 0`` replaces the channel by its mean ``m``.

Loss: with labels, the caller's ``loss_fn(output, labels)``, else cross-entropy for
integer labels and mean squared error for real-valued ones (:func:`task_loss`);
without labels, first-order quantities use random projections of the outputs
(``v . f``, v ~ N(0, 1)), whose squared gradients estimate the change of the
outputs, and second-order ones use the reconstruction error
``||f(g) - f(1)||^2`` of the original model's outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

from frontends.errors import InvalidArgumentError
from frontends.graph import Op
from frontends.torch.structured import Signature
from frontends.torch.trace import TracedModel
from passes.channel_analysis import AnalysisResult
from passes.data_criteria import Consumer, read_consumers

log = logging.getLogger(__name__)

__all__ = ["Batch", "CalibrationData", "Consumer", "GatedRunner", "consumers", "output_tensor", "all_outputs", "task_loss"]


@dataclass
class Batch:
    inputs: tuple[Any, ...]  # what the traced graph takes (the leaves of structured arguments)
    labels: torch.Tensor | None


@dataclass
class CalibrationData:
    """Calibration batches, either all labelled or none, and the caller's loss."""

    batches: list[Batch]
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        labelled = [b.labels is not None for b in self.batches]
        if any(labelled) and not all(labelled):
            raise InvalidArgumentError("calibration mixes batches with and without labels")

    @property
    def labelled(self) -> bool:
        """Whether the batches carry labels (all of them do, or none)."""
        return all(b.labels is not None for b in self.batches)

    @classmethod
    def from_user(
        cls,
        calibration: Iterable[Any] | None,
        example_inputs: Sequence[torch.Tensor],
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        max_batches: int | None = None,
        signature: Signature | None = None,
    ) -> CalibrationData:
        """Batches: a tensor (the single input), or a tuple of the inputs optionally followed by labels.

        With structured arguments (``signature``), a batch is structured like the example: a tuple of the
        positional arguments, optionally followed by labels, or a dict of the keyword arguments, optionally
        with a ``"labels"`` key the example does not have. ``example_inputs`` are then the example's leaves.
        """
        n_in = len(example_inputs)
        out: list[Batch] = []
        if calibration is None:
            return cls([Batch(tuple(example_inputs), None)], loss_fn)
        for i, b in enumerate(calibration):
            if max_batches is not None and i >= max_batches:
                break
            if signature is not None:
                out.append(_structured_batch(i, b, signature))
            elif isinstance(b, torch.Tensor):
                if n_in != 1:
                    raise InvalidArgumentError(f"calibration batch {i}: the model takes {n_in} inputs, got one tensor")
                out.append(Batch((b,), None))
            elif isinstance(b, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in b):
                if len(b) == n_in:
                    out.append(Batch(tuple(b), None))
                elif len(b) == n_in + 1:
                    out.append(Batch(tuple(b[:n_in]), b[n_in]))
                else:
                    raise InvalidArgumentError(
                        f"calibration batch {i}: expected {n_in} input tensor(s), optionally followed by labels; got {len(b)}"
                    )
            else:
                raise InvalidArgumentError(
                    f"calibration batch {i}: expected a tensor or a tuple of tensors, got {type(b).__name__}"
                )
            _check_inputs(i, out[-1].inputs, example_inputs)
        if not out:
            raise InvalidArgumentError("calibration is empty")
        return cls(out, loss_fn)


def _structured_batch(i: int, b: Any, sig: Signature) -> Batch:
    """Calibration batch ``i`` of a model with structured arguments: its leaves (and labels)."""
    where = f"calibration batch {i}"
    labels = None
    if sig.kwargs and isinstance(b, Mapping) and "labels" in b and "labels" not in sig.kwargs:
        b = dict(b)
        labels = b.pop("labels")
    elif not sig.kwargs and isinstance(b, (tuple, list)) and len(b) == len(sig.args) + 1:
        b, labels = tuple(b[:-1]), b[-1]
    if labels is not None and not isinstance(labels, torch.Tensor):
        raise InvalidArgumentError(f"{where}: labels must be a tensor, got {type(labels).__name__}")
    if not sig.kwargs and isinstance(b, torch.Tensor) and len(sig.args) == 1:
        b = (b,)
    leaves = sig.leaves_of(b, where)
    for k, (t, ex) in enumerate(zip(leaves, sig.leaves, strict=True)):
        if isinstance(ex, torch.Tensor) != isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"{where}, input {sig.leaf_names[k]}: {type(t).__name__} where the example has {type(ex).__name__}")
    _check_inputs(i, tuple(leaves), sig.leaves, sig.leaf_names)
    return Batch(tuple(leaves), labels)


def _family(t: torch.Tensor) -> str:
    return "floating-point" if t.is_floating_point() or t.is_complex() else "integer"


def _check_inputs(i: int, inputs: tuple[Any, ...], example_inputs: Sequence[Any], names: Sequence[str] | None = None) -> None:
    """Each input of calibration batch ``i`` has its example input's shape past dim 0 (the batch) and dtype family."""
    for k, (t, ex) in enumerate(zip(inputs, example_inputs, strict=True)):
        if not isinstance(ex, torch.Tensor):
            continue
        name = names[k] if names is not None else str(k)
        if t.dim() != ex.dim() or (ex.dim() > 0 and t.shape[1:] != ex.shape[1:]) or (ex.dim() == 0 and t.shape != ex.shape):
            expected = "[" + ", ".join(["N", *map(str, ex.shape[1:])]) + "]" if ex.dim() > 0 else "[]"
            raise InvalidArgumentError(
                f"calibration batch {i}, input {name}: shape {list(t.shape)} does not match the example input's "
                f"{list(ex.shape)} (expected {expected}, any batch size N)"
            )
        if _family(t) != _family(ex):
            raise InvalidArgumentError(
                f"calibration batch {i}, input {name}: dtype {t.dtype} ({_family(t)}) where the example input is "
                f"{ex.dtype} ({_family(ex)})"
            )


def output_tensor(out: Any) -> torch.Tensor:
    """The first tensor of a model's output (logits), for the loss."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for v in out.values():
            return output_tensor(v)
    if isinstance(out, (list, tuple)) and out:
        return output_tensor(out[0])
    raise InvalidArgumentError(f"cannot find a tensor in the model output ({type(out).__name__})")


def all_outputs(out: Any) -> list[torch.Tensor]:
    """Every tensor of a model's output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in all_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in all_outputs(v)]
    return []


def task_loss(out: Any, labels: torch.Tensor, loss_fn: Callable | None, reduction: str = "sum") -> torch.Tensor:
    """The caller's ``loss_fn(out, labels)``; else cross-entropy for integer labels, mean squared error otherwise."""
    if loss_fn is not None:
        return loss_fn(out, labels)
    logits = output_tensor(out)
    if labels.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8) and logits.dim() >= 2:
        return F.cross_entropy(logits, labels.long(), reduction=reduction)
    return F.mse_loss(logits, labels.to(logits.dtype), reduction=reduction)


def consumers(traced: TracedModel, analysis: AnalysisResult) -> list[Consumer]:
    """Every op that contracts over a tracked channel dim of its input (its spec's ``reads``), where its FX node
    reads a node as its first argument (what :class:`GatedRunner` gates)."""

    def key(op: Op, value: str) -> str | None:
        node = op.source
        if not isinstance(node, torch.fx.Node) or not node.args or not isinstance(node.args[0], torch.fx.Node):
            return None
        return node.name

    return read_consumers(analysis, key)


class GatedRunner(torch.fx.Interpreter):
    """Runs the traced graph with gates on the consumers' inputs.

    ``gates`` has shape ``[n_classes + 1]`` (one per class and a constant 1) or
    ``[batch, n_classes + 1]`` (per sample). ``means[node]`` switches a consumer
    to mean replacement; ``record`` collects the gated inputs.
    """

    def __init__(self, gm: torch.fx.GraphModule, cons: list[Consumer], n_classes: int) -> None:
        super().__init__(gm)
        self.by_node = {c.node: c for c in cons}
        self.idx = {c.node: torch.as_tensor(np.where(c.classes >= 0, c.classes, n_classes)) for c in cons}
        self.gates: torch.Tensor | None = None
        self.means: dict[str, torch.Tensor] = {}
        self.record: Callable[[Consumer, torch.Tensor], None] | None = None

    def run_node(self, n: torch.fx.Node) -> Any:
        c = self.by_node.get(n.name)
        if c is None or (self.gates is None and self.record is None):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x = args[0]
        if self.record is not None:
            self.record(c, x)
        if self.gates is not None:
            x = self._gate(c, x)
        args = (x,) + tuple(args[1:])
        return getattr(self, n.op)(n.target, args, kwargs)

    def _gate(self, c: Consumer, x: torch.Tensor) -> torch.Tensor:
        assert self.gates is not None
        idx = self.idx[c.node]
        shape = [1] * x.dim()
        shape[c.dim] = len(idx)
        if self.gates.dim() == 1:
            g = self.gates[idx].reshape(shape)
        else:
            shape[0] = x.shape[0]
            g = self.gates[:, idx].reshape([x.shape[0]] + shape[1:]) if c.dim != 0 else self.gates[:, idx]
        g = g.to(x.dtype)
        m = self.means.get(c.node)
        if m is not None:
            return m + g * (x - m)
        return x * g
