"""Weight updates (OBS compensation, bias propagation) on a private copy of a loaded ONNX model.

``updates`` maps constant names to new full-size values (the pipeline's weight-updates step). An initializer
or a ``Constant`` node's tensor gets the new value in the copy (and in its ``static`` values, which the rewrite
slices from); a quantized weight or bias (QDQ: the output of a ``DequantizeLinear`` of integer codes) gets its
new value quantized again on its own scales and zero points: new codes, and in ``static`` the value they dequantize
to (what the pruned model computes; the rewrite then slices the codes as they are); a name in ``new_biases`` is a bias of its own a Conv or Gemm is given (it had none, or shared one
with other nodes): a new initializer, its node's third input. For the rewrite the new bias is cut to the layer's kept output channels (the channel graph
does not know it, so the rewrite would not slice it); for the verification's reference it stays full size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from frontends.errors import InternalError
from frontends.onnx.model import OnnxModel
from frontends.onnx.opsets import list_initializers_as_inputs
from frontends.onnx.quantized import dequantized_weight, requantize

log = logging.getLogger(__name__)

__all__ = ["with_updates"]


def with_updates(
    om: OnnxModel,
    updates: Mapping[str, np.ndarray],
    new_biases: Mapping[str, int] | None = None,
    kept_outputs: Callable[[int], np.ndarray | None] | None = None,
) -> OnnxModel:
    """``om`` with ``updates`` applied to a copy of its model (``om`` itself is unchanged); ``kept_outputs(i)``
    gives the kept output channels of node ``i`` (None: all), which a new bias there is cut to."""
    if not updates:
        return om
    new_biases = new_biases or {}
    m = onnx.ModelProto()
    m.CopyFrom(om.model)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    const_nodes = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    static = dict(om.static)
    dq_nodes = {n.output[0]: n for n in g.node if dequantized_weight(n, static)}
    requantized: list[str] = []
    for name, arr in updates.items():
        if name in new_biases:
            _add_bias(g, new_biases[name], name, np.asarray(arr), kept_outputs)
        elif name in inits:
            old = inits[name]
            new = np.asarray(arr, dtype=helper.tensor_dtype_to_np_dtype(old.data_type)).reshape(tuple(old.dims))
            old.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(new), name))
            static[name] = new
        elif name in const_nodes:
            n = const_nodes[name]
            old_t = next((a.t for a in n.attribute if a.name == "value"), None)
            if old_t is None:
                raise InternalError(f"cannot update constant {name!r}: its Constant node has no tensor value")
            new = np.asarray(arr, dtype=helper.tensor_dtype_to_np_dtype(old_t.data_type)).reshape(tuple(old_t.dims))
            del n.attribute[:]
            n.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.ascontiguousarray(new))))
            static[name] = new
        elif name in dq_nodes and dq_nodes[name].input[0] in inits:  # a quantized (QDQ) weight or bias
            n = dq_nodes[name]
            codes, value, saturated = requantize(n, static, arr)
            inits[n.input[0]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(codes), n.input[0]))
            static[n.input[0]], static[name] = codes, value
            requantized.append(f"{name} ({saturated} saturated)" if saturated else name)
        else:
            raise InternalError(f"weight update of {name!r}, which is no initializer, Constant or quantized weight of the model")
    if m.ir_version < 4:
        list_initializers_as_inputs(m)
    notes = list(om.notes)
    if requantized:
        notes.append(f"updated quantized weights quantized again on their own scales and zero points: {', '.join(requantized)}")
    return replace(om, model=m, static=static, notes=notes)


def _add_bias(
    g: onnx.GraphProto, i: int, name: str, arr: np.ndarray, kept_outputs: Callable[[int], np.ndarray | None] | None
) -> None:
    """Node ``i`` (a Conv or Gemm without a bias) reads the new initializer ``name`` as its bias."""
    n = g.node[i]  # a bias it already has is shared with other nodes, which keep it
    keep = kept_outputs(i) if kept_outputs is not None else None
    if keep is not None:
        arr = arr[keep]
    weight = next((t for t in g.initializer if t.name == n.input[1]), None)
    if weight is not None:  # the bias has the weight's dtype (a float64 sum of means would not do)
        arr = arr.astype(helper.tensor_dtype_to_np_dtype(weight.data_type))
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    while len(n.input) < 2:
        n.input.append("")
    if len(n.input) == 2:
        n.input.append(name)
    else:
        n.input[2] = name
