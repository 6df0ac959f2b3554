"""ONNX ``LSTM`` / ``GRU`` / ``RNN``: lowering, rewrite and masked reference of the ``recurrent`` op.

Lowering: one node is one ``recurrent`` op (passes/ops/recurrent.py) with stacked weights
``W [D, G*H, in]``, ``R [D, G*H, H]``, ``B [D, 2*G*H]``, ``P [D, 3*H]`` (gate order i,o,f,c
for LSTM, z,r,h for GRU: the channel rule does not depend on it), the states ``initial_h``,
``initial_c`` and the outputs ``Y`` (``[seq, D, batch, H]``, or ``[batch, seq, D, H]`` with
``layout=1``), ``Y_h``, ``Y_c``, whose last dim is the hidden size in every layout. The
activations, ``clip``, ``input_forget`` and ``linear_before_reset`` act unit by unit, so
they need nothing.

Rewrite: the constants are sliced before the handler runs; it sets ``hidden_size``.

Reference semantics: the masked original runs the node with the columns of ``R`` that read
removed units zeroed, so the kept units see what they see in the pruned node (zeroing the
removed units' outputs after the node is not enough: inside it they still feed the kept
units through ``R``); the removed units' outputs are then zeroed like every removed channel.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from frontends.errors import VerificationError
from frontends.graph import Op
from frontends.onnx.handlers import op
from frontends.onnx.proto import node_attrs
from frontends.onnx.rewrite import OnnxRewrite
from frontends.onnx.verify import MaskedReference
from passes.ops import op_spec
from passes.ops.recurrent import GATES

if TYPE_CHECKING:
    from frontends.onnx.lower import Lowering

log = logging.getLogger(__name__)

__all__: list[str] = []  # reached through the handler table and the op spec

_spec = op_spec("recurrent")
_ROLES = ("y", "h", "c")


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@op("LSTM", "GRU", "RNN", data="all")
def _h_recurrent(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    """X, W, R, B, sequence_lens, initial_h, initial_c, P -> Y, Y_h, Y_c as one ``recurrent`` op."""
    at = node_attrs(n)
    cell = n.op_type.lower()
    direction = _text(at.get("direction", "forward"))
    hidden = at.get("hidden_size")
    ins = [lw.tensor(x) if x else None for x in list(n.input) + [""] * (8 - len(n.input))]
    x, w, r = ins[0], ins[1], ins[2]
    if not (x and w and r) or hidden is None or direction not in ("forward", "reverse", "bidirectional"):
        return False
    b, seq_lens, h0 = ins[3], ins[4], ins[5]
    c0, p = (ins[6], ins[7]) if cell == "lstm" else (None, None)
    outs = [(role, o) for role, o in zip(_ROLES, n.output, strict=False) if o]
    if not outs or any(lw.shapes.get(o) is None for _r, o in outs):
        return False
    attrs = {
        "cell": cell, "gates": GATES[cell], "layers": 1, "directions": 2 if direction == "bidirectional" else 1,
        "hidden": int(hidden), "proj": 0, "weights": "stacked", "outputs": [role for role, _o in outs],
        "y_concat": False, "layout": int(at.get("layout", 0)),
    }  # fmt: skip
    lw.emit(i, "recurrent", [x, h0, c0, seq_lens, w, r, b, p], [o for _r, o in outs], attrs)
    return True


@_spec.rewriter("onnx")
def _recurrent_hidden_size(rw: OnnxRewrite, op_: Op, node: int) -> set[int]:
    """``hidden_size`` from the sliced recurrent weight ``R [D, G*H, H]``."""
    if op_.attrs.get("weights") != "stacked":
        return set()
    rw.set_int_attr(node, "hidden_size", rw.pruned_shape(op_.input(5))[2])
    return set()


@_spec.reference_semantics("onnx")
def _recurrent_reference(ref: MaskedReference, op_: Op, n: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The node reading an ``R`` whose columns over removed hidden units are zero (module docstring)."""
    r = op_.input(5)
    keep = ref.keep_mask(r, range(2, 3))
    if keep is None:
        return None
    node = onnx.NodeProto()
    node.CopyFrom(n)
    if n.input[2] in ref.om.static:  # a constant R: its masked copy
        arr = np.array(ref.om.static[n.input[2]], copy=True)
        arr[:, :, ~keep.reshape(-1)] = 0
        node.input[2] = ref.const(f"{r}__masked", arr)
        return [node]
    elem = ref.om.elem_types.get(n.input[2])  # computed at run time: times a 0/1 mask over its columns
    if not elem:
        raise VerificationError(f"cannot build the masked reference: the element type of {n.input[2]!r} is unknown")
    cols = ref.const(f"{r}__keep", keep.reshape(1, 1, -1).astype(helper.tensor_dtype_to_np_dtype(elem)))
    masked = ref.names.fresh(f"{r}__masked")
    node.input[2] = masked
    return [helper.make_node("Mul", [n.input[2], cols], [masked], name=ref.names.fresh(f"{r}__mask")), node]
