"""Static values of an ONNX model: what is known before it runs, evaluated once.

*Static* values are initializers, ``Constant`` outputs, ``Shape``/``Size`` outputs and everything
computed only from those (the Shape -> Gather -> Unsqueeze -> Concat subgraphs exporters emit).
They are evaluated with the ONNX reference evaluator; their nodes are not lowered. A value
computed from a tensor's shape is *shape-derived*: used as data, the rewrite keeps its original
value, as the masked original has it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from frontends.onnx.large import tensor_array
from frontends.onnx.load import MIN_OPSET
from frontends.onnx.proto import DEFAULT_DOMAINS, has_subgraph, node_attrs, onnx_opset, real_inputs

log = logging.getLogger(__name__)

__all__ = ["constant_value", "evaluate_static", "static_candidates"]

NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}

ShapeOf = Callable[[str], "tuple[int, ...] | None"]

_CONSTANT_DTYPES = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
    "value_string": None,
    "value_strings": None,
}


def constant_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a ``Constant`` node, whichever attribute holds it."""
    a = node.attribute[0]
    if a.name == "value":
        return numpy_helper.to_array(a.t)
    v = helper.get_attribute_value(a)
    if a.name not in _CONSTANT_DTYPES:
        raise ValueError(f"Constant with a {a.name} attribute")
    dtype = _CONSTANT_DTYPES[a.name]
    return np.array(v) if dtype is None else np.array(v, dtype=dtype)


def static_candidates(model: onnx.ModelProto) -> tuple[list[int], set[str]]:
    """Nodes computable at lowering (in graph order) and the values they give that depend on a shape."""
    g = model.graph
    fed = {vi.name for vi in real_inputs(model)}
    known = {t.name for t in g.initializer if t.name not in fed}
    derived: set[str] = set()
    nodes: list[int] = []
    for i, n in enumerate(g.node):
        if n.domain not in DEFAULT_DOMAINS or n.op_type in NONDETERMINISTIC or has_subgraph(n):
            continue
        ins = [x for x in n.input if x]
        if n.op_type == "Constant":
            ok, from_shape = True, False
        elif n.op_type in ("Shape", "Size"):
            ok, from_shape = bool(ins), True
        else:
            ok = bool(ins) and all(x in known for x in ins)
            from_shape = any(x in derived for x in ins)
        if ok:
            nodes.append(i)
            for o in n.output:
                if o:
                    known.add(o)
                    if from_shape:
                        derived.add(o)
    return nodes, derived


def evaluate_static(
    model: onnx.ModelProto,
    nodes: Sequence[int],
    shape_of: ShapeOf,
    all_initializers: bool = True,
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Evaluate static nodes with the reference evaluator; ``Shape``/``Size`` read ``shape_of``.

    Returns (values, nodes evaluated): the outputs of the evaluated nodes and the
    initializers (all of them, or only those the nodes read). A node that cannot
    be evaluated, and every static node depending on it, is left out.
    """
    g = model.graph
    fed = {vi.name for vi in real_inputs(model)}
    inits = [t for t in g.initializer if t.name not in fed]
    if not all_initializers:
        read = {x for i in nodes for x in g.node[i].input}
        inits = [t for t in inits if t.name in read]
    env: dict[str, np.ndarray] = {t.name: tensor_array(t) for t in inits}  # a mapped large initializer: no copy
    opsets = {(o.domain or ""): int(o.version) for o in model.opset_import}
    opsets.setdefault("", onnx_opset(model) or MIN_OPSET)
    done: list[int] = []
    for i in nodes:
        n = g.node[i]
        try:
            outs = _evaluate_node(n, env, shape_of, opsets)
        except Exception as exc:  # an op the reference evaluator cannot run: the node stays dynamic
            log.info("cannot evaluate %s (%s) at lowering: %s", n.name or n.op_type, n.op_type, exc)
            continue
        if outs is None:
            continue
        for o, v in zip(n.output, outs, strict=False):  # optional trailing outputs may be absent
            if o:
                env[o] = np.asarray(v)
        done.append(i)
    return env, done


def _evaluate_node(n: onnx.NodeProto, env: dict[str, np.ndarray], shape_of: ShapeOf, opsets: dict[str, int]) -> list | None:
    """The outputs of one static node from the values in ``env`` (None: an input is not known)."""
    ins = [x for x in n.input if x]
    if n.op_type == "Constant":
        return [constant_value(n)]
    if n.op_type in ("Shape", "Size"):
        shape = shape_of(ins[0]) if ins[0] not in env else tuple(env[ins[0]].shape)
        if shape is None:
            return None
        if n.op_type == "Size":
            return [np.array(math.prod(shape), dtype=np.int64)]
        at = node_attrs(n)
        start, end = int(at.get("start", 0)), at.get("end")
        return [np.array(shape[start : (None if end is None else int(end))], dtype=np.int64)]
    if any(x not in env for x in ins):
        return None
    if n.op_type == "Identity":
        return [env[ins[0]]]
    from onnx.reference import ReferenceEvaluator

    outs = ReferenceEvaluator(n, opsets=opsets).run(None, {x: env[x] for x in ins})
    assert isinstance(outs, list)  # a dict only when asked for intermediate results
    return outs
