"""What a channel rule sees and may do while the analysis walks the graph."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from frontends.graph import ChannelGraph, Op
from passes.atoms import AtomTable, Labels

log = logging.getLogger(__name__)

__all__ = ["RuleContext", "Producer", "axis"]


@dataclass
class Producer:
    """Units (output channels) of a layer that a saliency criterion scores.

    ``weight`` is the constant whose slices along ``axis`` are the units' fan-in
    weights; ``atoms[i]`` is the atom of unit ``i``.
    """

    op: str
    weight: str
    axis: int
    atoms: np.ndarray


class RuleContext:
    """What a rule may do while the analysis walks the graph."""

    def __init__(self, graph: ChannelGraph, atoms: AtomTable, options: dict | None = None) -> None:
        self.graph = graph
        self.atoms = atoms
        self.options = dict(options or {})  # e.g. {"attention": "heads"}
        self.labels: dict[str, Labels] = {}
        self.producers: list[Producer] = []
        self.op: Op | None = None  # op being analysed

    # -- labels -------------------------------------------------------------
    def shape(self, value: str) -> tuple[int, ...]:
        return self.graph.shape(value)

    def get(self, value: str) -> Labels:
        """Labels of a value; constants get fresh atoms on every dimension."""
        lab = self.labels.get(value)
        if lab is None:
            v = self.graph.values[value]
            if v.shape is None:
                lab = []
            elif v.is_const:
                lab = [self.atoms.fresh(n) for n in v.shape]
            else:
                lab = [None] * len(v.shape)
            self.labels[value] = lab
        return lab

    def set(self, value: str, labels: Labels) -> None:
        shape = self.graph.values[value].shape
        if shape is None:
            return
        if len(labels) != len(shape):
            raise AssertionError(f"{value}: {len(labels)} labels for shape {shape}")
        for d, (lab, n) in enumerate(zip(labels, shape, strict=True)):
            if lab is not None and len(lab) != n:
                raise AssertionError(f"{value} dim {d}: {len(lab)} atoms for size {n}")
        self.labels[value] = list(labels)

    # -- relations ----------------------------------------------------------
    def freeze(self, atoms: np.ndarray | None, reason: str) -> None:
        if atoms is not None:
            self.atoms.freeze(atoms, self.op.name if self.op else "", reason)

    def freeze_all(self, value: str, reason: str) -> None:
        for lab in self.get(value):
            self.freeze(lab, reason)

    def tie(self, a: np.ndarray | None, b: np.ndarray | None, reason: str) -> np.ndarray | None:
        """Channels ``a[i]`` and ``b[i]`` are the same channel: prune together.

        A tracked dimension tied to an untracked one of the same size is frozen,
        and the result is untracked (None): a frozen label carried further would
        only freeze more, e.g. the head dim merged with it by a reshape (Swin's
        relative position bias, a per-head constant, added to the attention scores).
        Returns the label the result carries.
        """
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.freeze(a if a is not None else b, reason)
            return None
        self.atoms.union(a, b)
        return a

    def tie_blocks(self, atoms: np.ndarray, block: int) -> None:
        """Tie every consecutive block of ``block`` atoms into one channel."""
        n = len(atoms)
        if block > 1 and n % block == 0:
            blocks = atoms.reshape(n // block, block)
            self.atoms.union(blocks, np.repeat(blocks[:, :1], block, axis=1))

    def tie_strided(self, atoms: np.ndarray, parts: int) -> None:
        """Tie position ``j`` of every one of ``parts`` equal chunks together."""
        n = len(atoms)
        if parts > 1 and n % parts == 0:
            chunks = atoms.reshape(parts, n // parts)
            self.atoms.union(chunks, np.repeat(chunks[:1], parts, axis=0))

    def producer(self, weight: str, axis: int, atoms: np.ndarray | None) -> None:
        """Declare the units a criterion scores; only constant weights can be scored."""
        assert self.op is not None
        if atoms is not None and self.is_const(weight):
            self.producers.append(Producer(self.op.name, weight, axis, atoms))

    def is_const(self, value: str | None) -> bool:
        return value is not None and self.graph.values[value].is_const


def axis(axis: int, rank: int) -> int:
    """A possibly negative axis as a non-negative one."""
    return axis + rank if axis < 0 else axis
