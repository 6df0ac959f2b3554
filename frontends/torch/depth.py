"""Depth pruning on a traced PyTorch model: run it for the ranking, remove residual branches, verify.

:class:`TorchDepth` is the torch side of :mod:`passes.depth`:

1. ``values`` / ``loss``: the traced graph run by an ``fx.Interpreter`` (:class:`ZeroedRunner`)
   that captures stream values, and zeroes a removed branch's output at its add;
2. ``remove``: a copy of the graph module in which each removed add's uses read the stream
   instead, the branch's nodes are gone (dead-code elimination, checked node by node), and
   the modules and parameters nothing reads any more are deleted;
3. ``verify``: the original with those branches zeroed at their adds (the reference) against
   the pruned module, on every intermediate tensor both compute and on the outputs, in
   float64 where the model runs in it;
4. ``reindex_layers``: the pruned module with the kept elements of a layer list renumbered
   0..n-1 (``model.layers.5`` -> ``model.layers.3``), for a config with fewer layers.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from frontends.adapter import VerifyResult, verify_wide_then_narrow
from frontends.errors import InternalError, InvalidArgumentError, UnsupportedModelError, VerificationError
from frontends.torch.calibration import Batch, CalibrationData, all_outputs, task_loss
from frontends.torch.trace import TracedModel
from passes.depth import Block

log = logging.getLogger(__name__)

__all__ = ["TorchDepth", "ZeroedRunner", "reindex_layers"]


class ZeroedRunner(torch.fx.Interpreter):
    """Runs a graph module with the branch input of the ``zero`` adds (node name -> arg index) zeroed;
    keeps the tensors of the ``capture`` nodes (every floating-point node where ``capture`` is None)."""

    def __init__(self, gm: torch.fx.GraphModule, zero: dict[str, int] | None = None, capture: set[str] | None = None) -> None:
        super().__init__(gm)
        self.zero, self.capture = zero or {}, capture
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        arg = self.zero.get(n.name)
        if arg is None:
            out = super().run_node(n)
        else:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            args = tuple(torch.zeros_like(a) if i == arg else a for i, a in enumerate(args))
            out = getattr(self, n.op)(n.target, args, kwargs)
        if n.op not in ("placeholder", "output", "get_attr") and (self.capture is None or n.name in self.capture):
            if isinstance(out, torch.Tensor) and (self.capture is not None or out.is_floating_point()):
                self.values[n.name] = out.detach().clone()
        return out


class TorchDepth:
    """The :class:`passes.depth.DepthRunner` of a traced model, and its block removal and verification."""

    def __init__(self, traced: TracedModel, data: CalibrationData, inputs: Sequence[Any], has_calibration: bool) -> None:
        self.traced, self.data, self.inputs = traced, data, tuple(inputs)
        self.has_calibration = has_calibration
        self.node_of: dict[str, str] = {vs[0]: node for node, vs in traced.node_values.items() if len(vs) == 1}
        self.held: list[Batch] = []
        self._reference: dict[int, list[torch.Tensor]] = {}

    # -- the ranking's runner ------------------------------------------------------------------------------

    def hold_out(self, fraction: float = 0.25) -> list[Batch]:
        """Set the last ``fraction`` of the calibration batches (at least one) aside for :meth:`quality`;
        the ranking reads the rest. Returns the held-out batches."""
        n = len(self.data.batches)
        if not self.has_calibration or n < 2:
            raise InvalidArgumentError(
                "depth='auto' measures quality on calibration batches the ranking does not see: give calibration= "
                f"with at least 2 batches (got {n if self.has_calibration else 0})"
            )
        k = max(1, int(n * fraction))
        self.held = self.data.batches[n - k :]
        self.data = CalibrationData(self.data.batches[: n - k], self.data.loss_fn)
        self._reference.clear()
        return self.held

    def calibration(self) -> list[tuple[torch.Tensor, ...]]:
        """The ranking's batches in the form ``compile(calibration=)`` takes."""
        return [tuple(b.inputs) + ((b.labels,) if b.labels is not None else ()) for b in self.data.batches]

    def _node(self, value: str) -> str:
        node = self.node_of.get(value)
        if node is None:
            raise UnsupportedModelError(f"depth: value {value} is one output of a node with several; cannot run or rewrite it")
        return node

    def values(self, names: Sequence[str], data: str) -> Iterator[dict[str, np.ndarray]]:
        nodes = {self._node(v): v for v in names}
        batches = self.data.batches if data == "calibration" else [Batch(self.inputs, None)]
        for b in batches:
            run = ZeroedRunner(self.traced.gm, capture=set(nodes))
            with torch.no_grad():
                run.run(*b.inputs)
            yield {v: run.values[n].double().cpu().numpy() for n, v in nodes.items()}

    def zero_args(self, blocks: Sequence[Block]) -> dict[str, int]:
        """The add nodes of ``blocks``' branches and which of their arguments is the branch."""
        nodes = {n.name: n for n in self.traced.gm.graph.nodes}
        out: dict[str, int] = {}
        for blk in blocks:
            for br in blk.branches:
                add = nodes[self._node(br.out)]
                branch = self._node(br.branch)
                idx = [i for i, a in enumerate(add.args) if isinstance(a, torch.fx.Node) and a.name == branch]
                if len(idx) != 1:
                    raise InternalError(f"depth: {add.name} does not read the branch {branch} once")
                out[add.name] = idx[0]
        return out

    def loss(self, removed: Sequence[Block]) -> float:
        """Mean over the calibration batches: the task loss with labels; without, the relative squared change
        of the outputs from the original's."""
        zero = self.zero_args(removed)
        total = 0.0
        for i, b in enumerate(self.data.batches):
            with torch.no_grad():
                out = ZeroedRunner(self.traced.gm, zero, capture=set()).run(*b.inputs)
            if b.labels is not None:
                total += float(task_loss(out, b.labels, self.data.loss_fn, reduction="mean"))
                continue
            ref = self._reference.get(i)
            if ref is None:
                with torch.no_grad():
                    ref = self._reference[i] = [t.double() for t in all_outputs(self.traced.gm(*b.inputs))]
            got = [t.double() for t in all_outputs(out)]
            total += sum(float(((g - r) ** 2).sum()) / max(float((r**2).sum()), 1e-30) for g, r in zip(got, ref, strict=True))
        return total / max(len(self.data.batches), 1)

    # -- removal -------------------------------------------------------------------------------------------

    def remove(self, blocks: Sequence[Block]) -> torch.fx.GraphModule:
        """A new graph module without the branches of ``blocks`` (the traced one is not touched)."""
        gm = copy.deepcopy(self.traced.gm)
        nodes = {n.name: n for n in gm.graph.nodes}
        attrs_before = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
        now: dict[str, torch.fx.Node] = {}  # a removed add -> what its uses read now (consecutive blocks chain)
        for add_name in self.zero_args(blocks):
            add = nodes[add_name]
            stream = [br.stream for blk in blocks for br in blk.branches if self._node(br.out) == add_name][0]
            target = now.get(self._node(stream), nodes[self._node(stream)])
            add.replace_all_uses_with(target)
            now[add_name] = target
            gm.graph.erase_node(add)
        branch_nodes = {self._op_node(o) for blk in blocks for br in blk.branches for o in br.ops}
        doomed = {n for n in gm.graph.nodes if n.name in branch_nodes}
        stack = list(doomed)
        while stack:  # and what is computed from them (size arithmetic, torch.export's metadata asserts)
            for u in stack.pop().users:
                if u not in doomed:
                    if u.op == "output":
                        raise InternalError(f"depth: a branch value of {u.name} reaches the model output")
                    doomed.add(u)
                    stack.append(u)
        for n in reversed(list(gm.graph.nodes)):  # last node first; impure ones too (sdpa, dropout)
            if n in doomed:
                gm.graph.erase_node(n)
        _drop_dead(gm.graph)  # what only the branches read (their side inputs: norm weights, masks)
        attrs_after = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
        gm.delete_all_unused_submodules()
        for target in sorted(attrs_before - attrs_after):
            _delete_attr(gm, target)
        gm.graph.lint()
        gm.recompile()
        return gm

    def _op_node(self, op: str) -> str | None:
        src = self.traced.graph.ops[op].source
        return src.name if isinstance(src, torch.fx.Node) else None

    # -- verification --------------------------------------------------------------------------------------

    def verify(self, blocks: Sequence[Block], module: nn.Module, rtol: float) -> VerifyResult:
        """Raise :class:`VerificationError` unless ``module`` equals the original with ``blocks`` zeroed."""
        return verify_wide_then_narrow(
            lambda wide: self._compare(blocks, module, torch.float64, rtol) if wide else self._compare(blocks, module, torch.float32, max(rtol, 1e-4)),
            "depth-pruned model",
            "the original with the removed branches zeroed",
        )

    def _compare(self, blocks: Sequence[Block], module: nn.Module, dtype: torch.dtype, rtol: float) -> VerifyResult:
        ins = [x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in self.inputs]
        ref_gm = copy.deepcopy(self.traced.gm).to(dtype)
        new = copy.deepcopy(module).to(dtype).eval()
        with torch.no_grad():
            ref_run = ZeroedRunner(ref_gm, self.zero_args(blocks))
            ref_out = all_outputs(ref_run.run(*ins))
            if isinstance(new, torch.fx.GraphModule):
                got_run = ZeroedRunner(new)
                got_out = all_outputs(got_run.run(*ins))
                mine = got_run.values
            else:
                got_out, mine = all_outputs(new(*ins)), {}
        if len(ref_out) != len(got_out) or any(a.shape != b.shape for a, b in zip(ref_out, got_out, strict=True)):
            raise VerificationError(f"depth-pruned model outputs {[tuple(t.shape) for t in got_out]}, the original {[tuple(t.shape) for t in ref_out]}")
        n, worst_err, worst = 0, 0.0, ""
        for name, r in ref_run.values.items():
            m = mine.get(name)
            if m is None:
                continue
            if m.shape != r.shape:
                raise VerificationError(f"node {name}: the depth-pruned model gives shape {tuple(m.shape)}, the original {tuple(r.shape)}")
            e = _relative(r, m)
            n += 1
            if e > worst_err:
                worst_err, worst = e, name
        err = max((_abs_diff(a, b) for a, b in zip(ref_out, got_out, strict=True)), default=0.0)
        scale = max((float(a.double().abs().max()) for a in ref_out if a.numel() and a.is_floating_point()), default=0.0)
        tol = 1e-7 + rtol * scale
        return VerifyResult(bool(err <= tol and worst_err <= rtol), err, scale, tol, str(dtype).replace("torch.", ""), n, worst_err, worst)

    # -- held-out quality (the width/depth search) ---------------------------------------------------------

    def quality(self, module: nn.Module, batches: Sequence[Batch]) -> float:
        """Mean cosine similarity, per sample, of ``module``'s first output to the original's on ``batches``."""
        sims: list[float] = []
        for b in batches:
            with torch.no_grad():
                want = all_outputs(self.traced.gm(*b.inputs))[0].double()
                got = all_outputs(module(*b.inputs))[0].double()
            w, g = want.reshape(want.shape[0], -1), got.reshape(got.shape[0], -1)
            sims.extend(torch.nn.functional.cosine_similarity(w, g, dim=1).tolist())
        return float(np.mean(sims)) if sims else float("nan")


def _relative(r: torch.Tensor, m: torch.Tensor) -> float:
    """max |r - m| / max |r| over the finite positions (non-finite ones must match)."""
    if r.numel() == 0:
        return 0.0
    fr, fm = torch.isfinite(r), torch.isfinite(m)
    if not torch.equal(fr, fm):
        return math.inf
    if not bool(fr.any()):
        return 0.0
    scale = float(r[fr].abs().max())
    diff = float((r[fr].double() - m[fm].double()).abs().max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def _abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.numel() == 0:
        return 0.0
    if not a.is_floating_point():
        return float((a != b).any())
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb):
        return math.inf
    return float((a[fa].double() - b[fb].double()).abs().max()) if bool(fa.any()) else 0.0


def _drop_dead(graph: torch.fx.Graph) -> None:
    """Dead-code elimination that also drops torch.export's metadata asserts on values nothing else reads."""
    while True:
        before = len(graph.nodes)
        for n in list(graph.nodes):
            ins = n.all_input_nodes
            if "_assert" in str(n.target) and not n.users and ins and all(all("_assert" in str(u.target) for u in i.users) for i in ins):
                graph.erase_node(n)
        graph.eliminate_dead_code()
        if len(graph.nodes) == before:
            return


def _delete_attr(gm: nn.Module, target: str) -> None:
    """Delete the parameter or buffer at ``target`` where its module is still there."""
    path, _, name = target.rpartition(".")
    try:
        owner = gm.get_submodule(path) if path else gm
    except AttributeError:
        return
    if hasattr(owner, name):
        delattr(owner, name)


def reindex_layers(gm: torch.fx.GraphModule, prefix: str, kept: Sequence[int]) -> torch.fx.GraphModule:
    """A graph module whose ``prefix.<kept[i]>.*`` modules and attributes are named ``prefix.<i>.*``."""
    new_index = {str(old): str(i) for i, old in enumerate(kept)}
    head = prefix + "."

    def rename(target: str) -> str:
        if not target.startswith(head):
            return target
        idx, _, rest = target[len(head) :].partition(".")
        return f"{head}{new_index.get(idx, idx)}" + (f".{rest}" if rest else "")

    graph = copy.deepcopy(gm.graph)
    root: dict[str, Any] = {}
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            old = str(node.target)
            obj: Any = gm.get_submodule(old) if node.op == "call_module" else _get_attr(gm, old)
            node.target = rename(old)
            root[node.target] = obj
    return torch.fx.GraphModule(root, graph, class_name=type(gm).__name__)


def _get_attr(gm: nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
