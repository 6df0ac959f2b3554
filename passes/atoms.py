"""Channel atoms: the unit of coupling.

Every tracked dimension of every tensor carries an integer array, one *atom* id
per index. Rules of the op registry relate atoms (``union``: must be pruned
together) and freeze them (never pruned). Unions are recorded, not applied, and
solved once with connected components, so analysis is linear in graph size.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["AtomTable", "Labels"]

# Per-dimension atom arrays of one tensor; ``None`` for a dimension without
# channel structure (batch, spatial, or anything that must not be pruned).
Labels = list[np.ndarray | None]


@dataclass
class FreezeRecord:
    atoms: np.ndarray
    op: str
    reason: str


@dataclass
class AtomTable:
    count: int = 0
    _pairs_a: list[np.ndarray] = field(default_factory=list)
    _pairs_b: list[np.ndarray] = field(default_factory=list)
    freezes: list[FreezeRecord] = field(default_factory=list)

    def fresh(self, n: int) -> np.ndarray:
        ids = np.arange(self.count, self.count + n, dtype=np.int64)
        self.count += n
        return ids

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"union of {a.shape} and {b.shape} atoms")
        self._pairs_a.append(a)
        self._pairs_b.append(b)

    def freeze(self, atoms: np.ndarray, op: str, reason: str) -> None:
        atoms = np.asarray(atoms, dtype=np.int64).ravel()
        if atoms.size:
            self.freezes.append(FreezeRecord(atoms, op, reason))

    @property
    def union_elements(self) -> int:
        """Atom pairs recorded by ``union`` (the work the solve does, besides the atoms)."""
        return sum(a.size for a in self._pairs_a)

    @property
    def freeze_elements(self) -> int:
        return sum(r.atoms.size for r in self.freezes)

    def solve(self) -> np.ndarray:
        """Class id of every atom (connected components of the unions)."""
        n = self.count
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if self._pairs_a:
            a = np.concatenate(self._pairs_a)
            b = np.concatenate(self._pairs_b)
        else:
            a = b = np.zeros(0, dtype=np.int64)
        m = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n, n))
        _, comp = connected_components(m, directed=False)
        return comp.astype(np.int64)
