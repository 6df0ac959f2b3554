"""Rewrite pass (ONNX): a new, smaller, dense ``ModelProto``.

Works on a copy of the original model; node names, op types, opset imports and
the graph's input and output names and types are kept. Cases handled:

1. every constant with pruned indices on a tracked dim (``analysis.labels``,
   ``analysis.atom_class``, exactly as :mod:`passes.rewrite_fx`) is sliced along
   it: an initializer in place (and its graph input, where it is one), a
   ``Constant`` node's tensor in place, an ``Identity`` of a shared constant (the
   exporters' de-duplication) by giving it its own sliced initializer, any other
   constant computed from constants by a new initializer;
2. attributes follow the new shapes: ``group`` of Conv/ConvTranspose,
   ``num_groups`` of GroupNormalization;
3. static arguments are re-evaluated on the pruned shapes (Shape outputs of the
   pruned tensors through the same Gather/Concat/... nodes) and must come out
   right: Reshape's shape must give the pruned output shape (0 and -1 are kept
   where they stay valid), Slice bounds and Gather indices must select the kept
   positions of the same range, Split sizes and Resize sizes must be the pruned
   sizes, every other argument must keep its value. An argument that does not is
   replaced, for that node only, by a constant with the right value;
4. nodes and initializers the rewrite left without a consumer are removed, stale
   ``value_info`` is dropped and shapes are inferred again; the result must pass
   ``onnx.checker.check_model(full_check=True)``.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from frontends.errors import UnsupportedModelError
from frontends.onnx import (
    OnnxModel,
    UniqueNames,
    evaluate_static,
    implicit_inputs,
    node_attrs,
    reshape_result,
    slice_range,
)
from passes.channel_analysis import AnalysisResult
from passes.ops import strided_blocks

log = logging.getLogger(__name__)

__all__ = ["RewriteONNX", "RewriteOnnxResult"]


@dataclass
class RewriteOnnxResult:
    model: onnx.ModelProto
    sliced: int  # constants given new data
    updated_args: int  # static node arguments given new values
    materialized: list[str] = field(default_factory=list)  # computed constants replaced by initializers
    removed_nodes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _tensor(arr: np.ndarray, name: str, data_type: int | None = None) -> onnx.TensorProto:
    arr = np.asarray(arr, order="C")
    t = numpy_helper.from_array(arr, name)
    if data_type is not None and t.data_type != data_type:
        np_t = helper.tensor_dtype_to_np_dtype(data_type)
        t = helper.make_tensor(name, data_type, arr.shape, arr.astype(np_t).tobytes(), raw=True)
    return t


def _broadcast_shape(a: tuple[int, ...], b: list[int]) -> tuple[int, ...] | None:
    """numpy/ONNX multidirectional broadcasting of two shapes (None: incompatible)."""
    try:
        return tuple(int(n) for n in np.broadcast_shapes(tuple(a), tuple(b)))
    except ValueError:
        return None


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.array_equal(a, b))


class RewriteONNX:
    """``call(loaded, analysis, pruned) -> RewriteOnnxResult``."""

    def call(self, om: OnnxModel, analysis: AnalysisResult, pruned: np.ndarray) -> RewriteOnnxResult:
        m = onnx.ModelProto()
        m.CopyFrom(om.model)
        g = m.graph
        graph = analysis.graph
        names = UniqueNames(g)
        nodes = g.node
        static_nodes = set(om.static_nodes)
        init_pos = {t.name: k for k, t in enumerate(g.initializer)}
        const_node = {n.output[0]: i for i, n in enumerate(nodes) if n.op_type == "Constant"}
        producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
        res = RewriteOnnxResult(m, 0, 0)

        def pshape(v: str) -> tuple[int, ...]:
            return analysis.pruned_shape(v, pruned)

        # -- 1. constants -----------------------------------------------------------
        desired: dict[str, np.ndarray] = {}
        for v in graph.constants():
            arr = om.static.get(v.name)
            if arr is None:
                continue
            new = arr
            for d in range(arr.ndim):
                keep = analysis.keep_mask(v.name, d, pruned)
                if keep is not None and not keep.all():
                    new = np.take(new, np.flatnonzero(keep), axis=d)
            desired[v.name] = new
            if new is arr:
                continue
            res.sliced += 1
            if v.name in init_pos:
                old = g.initializer[init_pos[v.name]]
                g.initializer[init_pos[v.name]].CopyFrom(_tensor(new, v.name, old.data_type))
                for vi in g.input:
                    if vi.name == v.name:
                        _set_dims(vi, new.shape)
            elif v.name in const_node:
                n = nodes[const_node[v.name]]
                dt = n.attribute[0].t.data_type if n.attribute[0].name == "value" else None
                del n.attribute[:]
                n.attribute.append(helper.make_attribute("value", _tensor(new, "", dt)))
        # -- 2. attributes -------------------------------------------------------------
        for op in graph.ops.values():
            if op.kind in ("conv", "group_norm") and isinstance(op.source, int):
                x = op.inputs[0]
                old_c, new_c = graph.shape(x)[1], pshape(x)[1]
                key, old = ("group", int(op.attrs.get("groups", 1))) if op.kind == "conv" else ("num_groups", int(op.attrs["num_groups"]))
                if old > 1 and new_c != old_c:
                    if (old * new_c) % old_c:
                        raise RuntimeError(f"{op.label}: {new_c} of {old_c} channels is not a whole number of {old} groups")
                    _set_int_attr(nodes[op.source], key, old * new_c // old_c)
        # -- 3. static values on the pruned shapes ---------------------------------------
        def shape_of(v: str) -> tuple[int, ...] | None:
            if v in graph.values and graph.values[v].is_tensor:
                return pshape(v)
            return om.shapes.get(v)

        env, done = evaluate_static(m, om.static_nodes, shape_of, all_initializers=False)
        if done != om.static_nodes:
            # A constant computed from weights whose channels are pruned (EdgeNeXt's Fourier position encoding:
            # a conv over a constant grid, then a reshape with the old width) cannot be re-run; that is fine when
            # every value it feeds outside the static part is a constant taken from `desired` (sliced from the
            # original value) and none is an argument the rewrite reads.
            lost_nodes = [i for i in om.static_nodes if i not in set(done)]
            needed = {a.value for a in om.args}
            for i, n in enumerate(nodes):
                if i not in static_nodes:
                    needed |= {x for x in list(n.input) + implicit_inputs(n) if x}
            needed |= {o.name for o in g.output}
            stuck = [nodes[i].name or nodes[i].op_type for i in lost_nodes if any(o in needed and o not in desired for o in nodes[i].output)]
            if stuck:
                raise RuntimeError(f"cannot evaluate {stuck[:3]} on the pruned shapes")
        for a in om.args:  # arguments read straight from an initializer
            if a.value not in env and a.value in init_pos:
                env[a.value] = numpy_helper.to_array(g.initializer[init_pos[a.value]])
        consumers: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, n in enumerate(nodes):
            for k, x in enumerate(n.input):
                if x:
                    consumers[x].append((i, k))
            for x in implicit_inputs(n):
                consumers[x].append((i, -1))
        outputs = {o.name for o in g.output}

        def new_initializer(base: str, arr: np.ndarray, data_type: int | None) -> str:
            name = names.fresh(base)
            g.initializer.append(_tensor(arr, name, data_type))
            return name

        def dtype_of(v: str) -> int | None:
            if v in init_pos:
                return g.initializer[init_pos[v]].data_type
            return om.elem_types.get(v)

        # computed constants used as data
        for v, want in desired.items():
            if v in init_pos or v in const_node:
                continue
            if _same(env.get(v), want):
                continue
            users = consumers.get(v, [])
            p = producer.get(v)
            if p is not None and nodes[p].op_type == "Identity" and all(i not in static_nodes and k >= 0 for i, k in users):
                nodes[p].input[0] = new_initializer(f"{v}_data", want, dtype_of(v))
            else:
                if any(k < 0 for _, k in users) or v in outputs:
                    raise RuntimeError(f"cannot give computed constant {v!r} new data")
                name = new_initializer(f"{v}_pruned", want, dtype_of(v))
                for i, k in users:
                    if i not in static_nodes:
                        nodes[i].input[k] = name
            res.materialized.append(v)
        # shape-derived values used as tensor data (SDPA's 1/sqrt(head size), a divisor read off a shape) keep
        # their original values: they are constants above, materialized where pruning would change them
        for v in om.shape_derived:
            if v in graph.values and graph.values[v].is_tensor and v not in desired and not _same(env.get(v), om.static.get(v)):
                raise RuntimeError(f"shape-derived value {v!r} changes with pruning")
        # -- 4. static arguments --------------------------------------------------------------
        by_node: dict[int, dict[int, str]] = defaultdict(dict)
        roles: dict[tuple[int, int], str] = {}
        for a in om.args:
            by_node[a.node][a.index] = a.value
            roles[(a.node, a.index)] = a.role

        def set_arg(i: int, k: int, arr: np.ndarray) -> None:
            name = nodes[i].input[k]
            if _same(env.get(name), arr):
                return
            only_here = consumers.get(name) == [(i, k)] and name not in graph.values and name not in outputs
            if only_here and name in init_pos:
                old = g.initializer[init_pos[name]]
                old.CopyFrom(_tensor(arr, name, old.data_type))
            elif only_here and name in const_node:
                n = nodes[const_node[name]]
                del n.attribute[:]
                n.attribute.append(helper.make_attribute("value", _tensor(arr, "", dtype_of(name))))
            else:
                base = f"{name}_{nodes[i].name}" if nodes[i].name else f"{name}_pruned"
                nodes[i].input[k] = new_initializer(base, arr, dtype_of(name))
            env[nodes[i].input[k]] = np.asarray(arr)
            res.updated_args += 1

        for i, slots in by_node.items():
            n = nodes[i]
            fixed: set[int] = set()
            if n.op_type == "Reshape":
                fixed |= self._reshape(om, n, i, env, pshape, set_arg)
            elif n.op_type == "Slice":
                fixed |= self._slice(om, analysis, pruned, n, i, env, pshape, set_arg)
            elif n.op_type == "Expand":
                fixed |= self._expand(om, n, i, env, pshape, set_arg)
            elif n.op_type == "Gather":
                fixed |= self._gather(om, analysis, pruned, n, i, env, set_arg)
            elif n.op_type == "Split" and 1 in slots:
                ax = int(node_attrs(n).get("axis", 0))
                ax = ax + len(om.shapes[n.input[0]]) if ax < 0 else ax
                set_arg(i, 1, np.array([pshape(o)[ax] for o in n.output], dtype=np.int64))
                fixed.add(1)
            elif n.op_type == "Resize" and 3 in slots:
                out = pshape(n.output[0])
                axes = node_attrs(n).get("axes")
                rank = len(out)
                want = [out[a + rank if a < 0 else a] for a in axes] if axes else list(out)
                set_arg(i, 3, np.array(want, dtype=np.int64))
                fixed.add(3)
            for k, v in slots.items():
                if k in fixed:
                    continue
                if not _same(env.get(n.input[k]), om.static.get(v)):
                    set_arg(i, k, om.static[v])
        # -- 5. means over pruned channels keep the original divisor: ReduceMean -> Mul(kept / original) ---------
        scaled: dict[int, onnx.NodeProto] = {}
        for op in graph.ops.values():
            if op.kind != "reduce" or not op.attrs.get("rescalable") or not isinstance(op.source, int):
                continue
            x, rank = op.inputs[0], len(graph.shape(op.inputs[0]))
            dims = {d % rank for d in op.attrs["dims"]}
            n_old, n_new = math.prod(graph.shape(x)[d] for d in dims), math.prod(pshape(x)[d] for d in dims)
            if n_old == n_new:
                continue
            n = nodes[op.source]
            out = n.output[0]
            n.output[0] = names.fresh(f"{out}_kept")
            factor = new_initializer(f"{out}_scale", np.array(n_new / n_old), dtype_of(out))
            scaled[op.source] = helper.make_node("Mul", [n.output[0], factor], [out], name=names.fresh(f"{n.name or out}_scale"))
        if scaled:
            order = []
            for i, n in enumerate(nodes):
                order.append(n)
                if i in scaled:
                    order.append(scaled[i])
            new_nodes = [onnx.NodeProto() for _ in order]
            for dst, src in zip(new_nodes, order, strict=True):
                dst.CopyFrom(src)
            del nodes[:]
            nodes.extend(new_nodes)
        # -- 6. clean up -------------------------------------------------------------------------
        self._remove_dead(m, om, res)
        _refresh_shapes(m, {v: pshape(v) for v in graph.values if graph.values[v].is_tensor and not graph.values[v].is_const}, om)
        try:
            onnx.checker.check_model(m, full_check=True)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0]
            try:  # an input whose declared shapes contradict its ops fails the same check: refuse the input
                onnx.checker.check_model(om.model, full_check=True)
            except Exception as orig_exc:
                why = str(orig_exc).strip().splitlines()[0] if str(orig_exc).strip() else type(orig_exc).__name__
                raise UnsupportedModelError(f"{om.name}: the model's declared shapes are inconsistent: {why}") from None
            raise RuntimeError(f"the pruned ONNX model does not pass the checker: {first}") from exc
        res.model = m
        return res

    # -- per-op argument rules ------------------------------------------------------------
    @staticmethod
    def _reshape(om, n, i, env, pshape, set_arg) -> set[int]:
        x, y, spec_name = n.input[0], n.output[0], n.input[1]
        allowzero = bool(int(node_attrs(n).get("allowzero", 0)))
        pin, pout = pshape(x), pshape(y)
        if reshape_result(pin, env[spec_name].reshape(-1).tolist(), allowzero) == pout:
            return {1}
        orig = [int(s) for s in om.static[spec_name].reshape(-1)]
        new = []
        for k, s in enumerate(orig):
            if s == -1:
                new.append(-1)
            elif s == 0 and not allowzero and k < len(pin) and pin[k] == pout[k]:
                new.append(0)
            else:
                new.append(int(pout[k]))
        if reshape_result(pin, new, allowzero) != pout:
            new = [int(s) for s in pout]
        set_arg(i, 1, np.array(new, dtype=om.static[spec_name].dtype))
        return {1}

    @staticmethod
    def _slice(om, analysis, pruned, n, i, env, pshape, set_arg) -> set[int]:
        x = n.input[0]
        sx, px = om.shapes[x], pshape(x)
        rank = len(sx)

        def ints(k: int, default):
            if len(n.input) > k and n.input[k]:
                return [int(v) for v in np.asarray(env[n.input[k]]).reshape(-1)]
            return default

        def orig_ints(k: int, default):
            if len(n.input) > k and n.input[k]:
                return [int(v) for v in np.asarray(om.static[n.input[k]]).reshape(-1)]
            return default

        starts, ends = orig_ints(1, None), orig_ints(2, None)
        axes = [a + rank if a < 0 else a for a in orig_ints(3, list(range(len(starts))))]
        steps = orig_ints(4, [1] * len(starts))
        want: dict[int, range] = {}
        new_starts, new_ends = list(starts), list(ends)
        for k, (a, s, e, st) in enumerate(zip(axes, starts, ends, steps)):
            r = range(*slice_range(s, e, st, sx[a]))
            keep = analysis.keep_mask(x, a, pruned)
            if keep is None or keep.all():
                want[a] = range(*slice_range(s, e, st, px[a]))
                continue
            if st != 1:
                if not strided_blocks(r.start, r.stop, st, sx[a]):
                    raise RuntimeError(f"{n.name}: strided slice over a pruned channel dim")
                want[a] = range(r.start, px[a], st)  # one position of every whole kept block
                new_starts[k], new_ends[k] = r.start, (e if e >= sx[a] else px[a])
                continue
            ns = int(keep[: r.start].sum())
            ne = ns + int(keep[r.start : r.stop].sum())
            want[a] = range(ns, ne)
            new_n = px[a]
            cand_s = ns - new_n if s < 0 and ns < new_n else ns
            if e >= sx[a] and ne == new_n:
                cand_e = e
            elif e < 0 and ne < new_n:
                cand_e = ne - new_n
            else:
                cand_e = ne
            if range(*slice_range(cand_s, cand_e, 1, new_n)) != want[a]:
                cand_s, cand_e = ns, ne
            new_starts[k], new_ends[k] = cand_s, cand_e
        # do the bounds the pruned model computes select what they must?
        cur_s, cur_e = ints(1, None), ints(2, None)
        cur_axes = [a + rank if a < 0 else a for a in ints(3, list(range(len(cur_s))))]
        cur_steps = ints(4, [1] * len(cur_s))
        ok = sorted(cur_axes) == sorted(axes) and all(
            range(*slice_range(s, e, st, px[a])) == want[a] for a, s, e, st in zip(cur_axes, cur_s, cur_e, cur_steps)
        )
        if not ok:
            dt_s, dt_e = om.static[n.input[1]].dtype, om.static[n.input[2]].dtype
            set_arg(i, 1, np.array(new_starts, dtype=dt_s))
            set_arg(i, 2, np.array(new_ends, dtype=dt_e))
        return {1, 2}

    @staticmethod
    def _expand(om, n, i, env, pshape, set_arg) -> set[int]:
        """Expand's target shape broadcasts with the input (ONNX's bidirectional rule): a 1 stays 1, any
        other entry becomes the pruned output size."""
        spec_name = n.input[1]
        pin, pout = pshape(n.input[0]), pshape(n.output[0])
        cur = [int(s) for s in np.asarray(env[spec_name]).reshape(-1)]
        if _broadcast_shape(pin, cur) == pout:
            return {1}
        orig = [int(s) for s in np.asarray(om.static[spec_name]).reshape(-1)]
        off = len(pout) - len(orig)
        new = [1 if s == 1 else int(pout[off + k]) for k, s in enumerate(orig)]
        if _broadcast_shape(pin, new) != pout:
            raise RuntimeError(f"{n.name or 'Expand'}: no target shape gives {pout} from {pin}")
        set_arg(i, 1, np.array(new, dtype=np.asarray(om.static[spec_name]).dtype))
        return {1}

    @staticmethod
    def _gather(om, analysis, pruned, n, i, env, set_arg) -> set[int]:
        x, idx = n.input[0], n.input[1]
        sx = om.shapes[x]
        ax = int(node_attrs(n).get("axis", 0))
        ax = ax + len(sx) if ax < 0 else ax
        orig = np.asarray(om.static[idx])
        vals = [int(v) + sx[ax] if v < 0 else int(v) for v in orig.reshape(-1)]
        keep = analysis.keep_mask(x, ax, pruned)
        if keep is None or keep.all():
            return set()  # checked as an ordinary argument: must keep its value
        start = int(keep[: vals[0]].sum())
        count = int(keep[vals[0] : vals[-1] + 1].sum())
        want = np.array(start, dtype=orig.dtype) if orig.ndim == 0 else np.arange(start, start + count, dtype=orig.dtype)
        set_arg(i, 1, want)
        return {1}

    # -- clean-up ---------------------------------------------------------------------------------
    @staticmethod
    def _remove_dead(m: onnx.ModelProto, om: OnnxModel, res: RewriteOnnxResult) -> None:
        """Drop nodes and initializers this rewrite left unused (what was dead before stays)."""

        def uses(graph: onnx.GraphProto) -> dict[str, int]:
            c: dict[str, int] = defaultdict(int)
            for n in graph.node:
                for x in list(n.input) + implicit_inputs(n):
                    if x:
                        c[x] += 1
            for o in graph.output:
                c[o.name] += 1
            return c

        before = uses(om.model.graph)
        g = m.graph
        while True:
            c = uses(g)
            dead = [
                k for k, n in enumerate(g.node)
                if all(not o or (c.get(o, 0) == 0 and before.get(o, 0) > 0) for o in n.output) and any(o for o in n.output)
            ]  # fmt: skip
            if not dead:
                break
            for k in reversed(dead):
                res.removed_nodes.append(g.node[k].name or g.node[k].op_type)
                del g.node[k]
        c = uses(g)
        graph_inputs = {vi.name for vi in g.input}
        drop = [
            k for k, t in enumerate(g.initializer)
            if c.get(t.name, 0) == 0 and before.get(t.name, 0) > 0 and t.name not in graph_inputs
        ]  # fmt: skip
        for k in reversed(drop):
            del g.initializer[k]


def _set_dims(vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    s = vi.type.tensor_type.shape
    s.ClearField("dim")
    for d in shape:
        s.dim.add().dim_value = int(d)


def _set_int_attr(node: onnx.NodeProto, key: str, value: int) -> None:
    for a in node.attribute:
        if a.name == key:
            a.i = int(value)
            return
    node.attribute.append(helper.make_attribute(key, int(value)))


def _refresh_shapes(m: onnx.ModelProto, pruned_shapes: dict[str, tuple[int, ...]], om: OnnxModel) -> None:
    """Drop stale intermediate shapes and infer them again.

    Outputs of nodes that inference cannot see through (custom domains) get the
    shapes the plan gives them, so the pruned model is as well described as the
    original was.
    """
    del m.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise RuntimeError(f"shape inference fails on the pruned ONNX model: {first}") from exc
    m.graph.value_info.extend(inferred.graph.value_info)
    known = {vi.name for vi in inferred.graph.value_info if vi.type.tensor_type.HasField("shape")}
    known |= {vi.name for vi in list(m.graph.input) + list(m.graph.output)}
    for n in m.graph.node:
        if n.domain in ("", "ai.onnx"):
            continue
        for o in n.output:
            if o and o not in known and o in pruned_shapes and om.elem_types.get(o):
                m.graph.value_info.append(helper.make_tensor_value_info(o, om.elem_types[o], list(pruned_shapes[o])))
