"""Shared checks of the test suite (imported by the test modules, not collected).

Two kinds of reference for a pruned model:

* ``masked_reference``: prunec's own reference (``VerifyFX.reference``: the
  original traced graph with the removed channels zeroed after every node),
  re-run here in float64 on fresh inputs;
* ``independent_reference``: built without any prunec code. The kept indices of
  every weight are recovered by matching the pruned weight's slices against the
  original weight's (random weights are unique), then a deep copy of the original
  model gets the removed output units of every layer and the removed input
  columns of every non-grouped layer zeroed. For models without channel-mixing
  normalizations (LayerNorm) that copy computes exactly what the pruned network
  computes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

import compiler
from frontends.torch import VerifyFX, flat_tensors

__all__ = [
    "prune",
    "check_attributes",
    "masked_reference",
    "kept_indices",
    "independent_reference",
    "assert_close",
    "max_rel_err",
    "frozen_targets",
]


def prune(model: nn.Module, inputs: Sequence[torch.Tensor] | torch.Tensor, **kw: Any) -> compiler.CompileResult:
    """compile with the op-test defaults (ratio 0.5, granularity 1), plus the checks every result must pass."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    kw.setdefault("granularity", 1)
    if not any(k in kw for k in ("ratio", "threshold", "target_macs")):
        kw["ratio"] = 0.5
    model.eval()
    result = compiler.compile(model, tuple(inputs), **kw)
    rep = result.report
    if kw.get("verify", True):
        assert rep.verification is not None and rep.verification["passed"] is True, rep.verification
    with torch.no_grad():
        ref = flat_tensors(model(*inputs))
        got = flat_tensors(result(*inputs))
    assert [t.shape for t in got] == [t.shape for t in ref], "output shapes changed"
    assert rep.macs_after <= rep.macs_before
    assert rep.params_after <= rep.params_before
    check_attributes(result.model)
    return result


def check_attributes(model: nn.Module) -> None:
    """Module attributes agree with the (sliced) weight shapes."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            w = m.weight
            if m.transposed:
                assert m.in_channels == w.shape[0], name
                assert m.out_channels == w.shape[1] * m.groups, name
            else:
                assert m.out_channels == w.shape[0], name
                assert m.in_channels == w.shape[1] * m.groups, name
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0, name
            if m.bias is not None:
                assert m.bias.shape == (m.out_channels,), name
        elif isinstance(m, nn.Linear):
            assert m.weight.shape == (m.out_features, m.in_features), name
            if m.bias is not None:
                assert m.bias.shape == (m.out_features,), name
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                if t is not None:
                    assert t.shape == (m.num_features,), name
        elif isinstance(m, nn.LayerNorm):
            if m.weight is not None:
                assert tuple(m.weight.shape) == tuple(m.normalized_shape), name
        elif isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0, name
            if m.weight is not None:
                assert m.weight.shape == (m.num_channels,), name
        elif isinstance(m, nn.PReLU):
            assert m.num_parameters == m.weight.numel(), name
        elif isinstance(m, nn.Embedding):
            assert m.weight.shape == (m.num_embeddings, m.embedding_dim), name


def masked_reference(result: compiler.CompileResult, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """prunec's masked original (float64) on ``inputs``."""
    ins = [x.double() if x.is_floating_point() else x for x in inputs]
    gm = copy.deepcopy(result.traced.gm).double()
    p = result.plan
    out = VerifyFX().reference(result.traced, p.analysis, p.selection.pruned, ins, gm=gm)
    return flat_tensors(out)


def kept_indices(orig: torch.Tensor, new: torch.Tensor, axis: int) -> list[int]:
    """Indices along ``axis`` of ``orig`` whose slices survive in ``new`` (other axes may be sliced too).

    Slice ``i`` of ``new`` holds a subset of the values of one slice of ``orig``; the
    original slice holding all of them is the match.
    """
    a = orig.detach().double().movedim(axis, 0).reshape(orig.shape[axis], -1).tolist()
    b = new.detach().double().movedim(axis, 0).reshape(new.shape[axis], -1).tolist()
    where: dict[float, set[int]] = {}
    for j, row in enumerate(a):
        for v in row:
            where.setdefault(v, set()).add(j)
    out = []
    for row in b:
        assert row, "empty slice"
        cand = set(where.get(row[0], ()))
        for v in row[1:]:
            cand &= where.get(v, set())
        assert len(cand) == 1, f"slice of the pruned weight matches {len(cand)} slices of the original (axis {axis})"
        out.append(cand.pop())
    assert out == sorted(out), "kept slices changed order"
    return out


def independent_reference(original: nn.Module, pruned: nn.Module) -> nn.Module:
    """A copy of ``original`` computing what ``pruned`` computes, by zeroing removed weights."""
    ref = copy.deepcopy(original).double().eval()
    pmods = dict(pruned.named_modules())
    with torch.no_grad():
        for name, m in ref.named_modules():
            pm = pmods.get(name)
            if pm is None or type(pm) is not type(m):
                continue
            if isinstance(m, nn.modules.conv._ConvNd):
                out_axis, in_axis = (1, 0) if m.transposed else (0, 1)
                if m.groups == 1:
                    keep_out = kept_indices(m.weight, pm.weight, out_axis)
                    keep_in = kept_indices(m.weight, pm.weight, in_axis)
                    _zero_except(m.weight, out_axis, keep_out)
                    _zero_except(m.weight, in_axis, keep_in)
                    if m.bias is not None:
                        _zero_except(m.bias, 0, keep_out)
                else:  # grouped: whole groups go; axis 0 is the output (conv) or input (transposed) channels
                    keep = kept_indices(m.weight, pm.weight, 0)
                    _zero_except(m.weight, 0, keep)
                    if m.bias is not None and not m.transposed:
                        _zero_except(m.bias, 0, keep)
            elif isinstance(m, nn.Linear):
                keep_out = kept_indices(m.weight, pm.weight, 0)
                keep_in = kept_indices(m.weight, pm.weight, 1)
                _zero_except(m.weight, 0, keep_out)
                _zero_except(m.weight, 1, keep_in)
                if m.bias is not None:
                    _zero_except(m.bias, 0, keep_out)
    return ref


def _zero_except(t: torch.Tensor, axis: int, keep: list[int]) -> None:
    drop = torch.ones(t.shape[axis], dtype=torch.bool)
    drop[keep] = False
    t.data.index_fill_(axis, torch.nonzero(drop).flatten(), 0.0)


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def assert_close(ref: Sequence[torch.Tensor] | torch.Tensor, got: Sequence[torch.Tensor] | torch.Tensor, rtol: float = 1e-9) -> None:
    ref, got = flat_tensors(ref), flat_tensors(got)
    assert len(ref) == len(got)
    for a, b in zip(ref, got):
        assert a.shape == b.shape
        err = max_rel_err(a, b)
        assert err <= rtol, f"max relative error {err:.3g} > {rtol:.1g}"


def frozen_targets(result: compiler.CompileResult) -> list[str]:
    return [o.target for o in result.report.frozen_ops]
