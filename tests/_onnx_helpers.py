"""Shared checks of the ONNX tests (imported by the test modules, not collected).

* ``build``: a model from ONNX text, its initializers filled with random values
  (unique, so kept indices can be recovered from the pruned weights);
* ``prune_onnx``: ``compiler.compile`` on it, plus the structural checks every
  result must pass (checker with full_check, same opset, same I/O names, types
  and shapes, node names and op types kept, runs in ONNX Runtime with its
  optimizations on, same outputs shapes);
* ``independent_reference``: built without prunec code: the kept indices of
  every sliced constant are recovered by value matching against the original's
  (several values per slice, so a chance equality of two random weights is harmless),
  a copy of the original gets every removed position of those constants zeroed,
  and ONNX Runtime runs it. For models without statistics over channels
  (LayerNorm, GroupNorm's affine-free parts) or divisions by a removed constant,
  that copy computes exactly what the pruned model computes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import compiler

__all__ = ["build", "prune_onnx", "run", "inputs_for", "independent_reference", "consts", "rel_err", "op_types"]


def build(text: str, inits: Mapping[str, Any] | None = None, opset: int = 17, seed: int = 0, ir: int = 8) -> onnx.ModelProto:
    """A model from ONNX text; ``inits`` maps names to arrays or shapes (random normal values)."""
    m = onnx.parser.parse_model(f'<ir_version: {ir}, opset_import: ["" : {opset}]>\n' + text)
    rng = np.random.default_rng(seed)
    for name, v in (inits or {}).items():
        if isinstance(v, np.ndarray):
            arr = v
        else:
            arr = rng.standard_normal(v).astype(np.float32)
        m.graph.initializer.append(numpy_helper.from_array(arr, name))
    for i, n in enumerate(m.graph.node):
        if not n.name:
            n.name = f"n{i}_{n.op_type}"
    onnx.checker.check_model(m, full_check=True)
    return m


def inputs_for(m: onnx.ModelProto, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in m.graph.initializer}
    out = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        dt = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        out[vi.name] = rng.standard_normal(shape).astype(dt) if np.dtype(dt).kind == "f" else np.zeros(shape, dtype=dt)
    return out


def run(m: onnx.ModelProto, feeds: Mapping[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def op_types(m: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in m.graph.node]


def consts(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant outputs by name."""
    out = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))


def _io(vis: Sequence[onnx.ValueInfoProto], skip: set[str]) -> list[tuple]:
    return [
        (vi.name, vi.type.tensor_type.elem_type, [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim])
        for vi in vis
        if vi.name not in skip
    ]


def prune_onnx(
    m: onnx.ModelProto | str,
    inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray] | None = None,
    removed_ok: Sequence[str] = (),  # node names or op types the rewrite may drop (dead shape computations)
    **kw: Any,
) -> compiler.CompileResult:
    """compile with the op-test defaults (ratio 0.5, granularity 1) and the structural checks."""
    kw.setdefault("granularity", 1)
    if not any(k in kw for k in ("ratio", "threshold", "target_macs")):
        kw["ratio"] = 0.5
    orig = m if isinstance(m, onnx.ModelProto) else onnx.load(m)
    before = orig.SerializeToString()
    result = compiler.compile(m, inputs, **kw)
    assert orig.SerializeToString() == before, "the input model was modified"
    new = result.model
    assert isinstance(new, onnx.ModelProto)
    onnx.checker.check_model(new, full_check=True)
    assert list(new.opset_import) == list(orig.opset_import)
    assert new.ir_version == orig.ir_version
    inits = {t.name for t in orig.graph.initializer}
    assert _io(new.graph.input, inits) == _io(orig.graph.input, inits)
    assert _io(new.graph.output, set()) == _io(orig.graph.output, set())
    got = [(n.name, n.op_type) for n in new.graph.node]
    missing = [(n.name, n.op_type) for n in orig.graph.node if (n.name, n.op_type) not in set(got)]
    assert all(name in removed_ok or t in removed_ok for name, t in missing), f"nodes removed: {missing}"
    assert got == [(n.name, n.op_type) for n in orig.graph.node if (n.name, n.op_type) not in set(missing)], "node order changed"
    if kw.get("verify", True):
        v = result.report.verification
        assert v is not None and v["passed"] is True, v
    rep = result.report
    assert rep.macs_after <= rep.macs_before and rep.params_after <= rep.params_before
    feeds = result.traced.inputs if inputs is None or not isinstance(inputs, Mapping) else inputs
    ref = run(orig, feeds)
    out = run(new, feeds)  # with ONNX Runtime's optimizations on
    assert [o.shape for o in out] == [r.shape for r in ref], "output shapes changed"
    got_call = result(*feeds.values())
    got_call = got_call if isinstance(got_call, list) else [got_call]
    assert [np.shape(o) for o in got_call] == [r.shape for r in ref]
    return result


def _resolve(m: onnx.ModelProto) -> dict[tuple[int, int], np.ndarray]:
    """The constant behind every node input (through Identity and Constant), by (node index, input index)."""
    c = consts(m)
    alias: dict[str, str] = {}
    for n in m.graph.node:
        if n.op_type == "Identity" and n.input[0] in c:
            alias[n.output[0]] = n.input[0]
    out = {}
    for i, n in enumerate(m.graph.node):
        for k, x in enumerate(n.input):
            src = alias.get(x, x)
            if src in c and n.op_type != "Identity":
                out[(i, k)] = c[src]
    return out


def _kept(orig: np.ndarray, new: np.ndarray) -> list[np.ndarray | None]:
    """Kept indices of every dim of ``orig`` that ``new`` is a slice of (value matching)."""
    kept: list[np.ndarray | None] = []
    for d in range(orig.ndim):
        if orig.shape[d] == new.shape[d]:
            kept.append(None)
            continue
        idx = []
        for j in range(new.shape[d]):
            cands: set[int] | None = None
            for probe in np.take(new, j, axis=d).reshape(-1)[:16]:  # random values: rarely equal, never 16 times
                hits = {int(h[d]) for h in np.argwhere(orig == probe)}
                assert hits, "a pruned value is not in the original"
                cands = hits if cands is None else cands & hits
                if len(cands) == 1:
                    break
            assert cands is not None and len(cands) == 1, "ambiguous values: make the test's weights unique"
            idx.append(cands.pop())
        assert idx == sorted(idx), "kept channels out of order"
        kept.append(np.array(idx))
    return kept


def independent_reference(orig: onnx.ModelProto, new: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``orig`` with every position the pruned model removed from a constant zeroed."""
    before, after = _resolve(orig), _resolve(new)
    names = {n.name: i for i, n in enumerate(new.graph.node)}
    m = onnx.ModelProto()
    m.CopyFrom(orig)
    for i, n in enumerate(m.graph.node):
        j = names.get(n.name)
        for k, _ in enumerate(n.input):
            a = before.get((i, k))
            b = after.get((j, k)) if j is not None else None
            if a is None or b is None or a.shape == b.shape or a.ndim == 0:
                continue
            z = np.array(a, copy=True)
            for d, keep in enumerate(_kept(a, b)):
                if keep is None:
                    continue
                drop = np.setdiff1d(np.arange(a.shape[d]), keep)
                idx = [slice(None)] * a.ndim
                idx[d] = drop
                z[tuple(idx)] = 0
            name = f"{n.input[k]}__zeroed_{i}_{k}"
            m.graph.initializer.append(numpy_helper.from_array(z, name))
            n.input[k] = name
    return run(m, feeds, optimize=False)
