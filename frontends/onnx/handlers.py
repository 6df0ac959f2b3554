"""The per-op-type lowerings of ONNX nodes into the neutral op kinds, registered by op type.

Each handler is registered with :func:`op`, which says which of the node's inputs are tensor
data; every other input is a static argument the node needs known at lowering (a shape, bounds,
sizes), recorded as an :class:`ArgSlot` with its role from :data:`ARG_ROLES`. A handler returns
True when it emitted the node, False when it cannot say what the node does to channels: the node
then becomes ``kind="unknown"``, never a guess.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx

from frontends.errors import UnsupportedModelError
from frontends.onnx.model import ArgSlot
from frontends.onnx.proto import node_attrs
from frontends.onnx.shapes import slice_range

if TYPE_CHECKING:
    from frontends.onnx.lower import Lowering

log = logging.getLogger(__name__)

__all__ = [
    "ARG_ROLES",
    "BINARY_OPS",
    "HANDLERS",
    "POOL_OPS",
    "REDUCE_OPS",
    "SOFTMAX_OPS",
    "UNARY_OPS",
    "conv_geometry",
    "op",
]

UNARY_OPS = {
    "Abs", "Acos", "Acosh", "Asin", "Asinh", "Atan", "Atanh", "BitwiseNot", "Cast", "CastLike", "Ceil", "Celu", "Clip",
    "Cos", "Cosh", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "IsInf", "IsNaN", "LeakyRelu",
    "Log", "Mish", "Neg", "Not", "Reciprocal", "Relu", "Round", "Selu", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Softplus", "Softsign", "Sqrt", "Tan", "Tanh", "ThresholdedRelu",
}  # fmt: skip
BINARY_OPS = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Greater", "GreaterOrEqual",
    "Less", "LessOrEqual", "And", "Or", "Xor", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "PRelu",
}  # fmt: skip
REDUCE_OPS = {
    "ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod",
    "ReduceL1": "l1", "ReduceL2": "l2", "ReduceLogSum": "logsum", "ReduceLogSumExp": "logsumexp",
    "ReduceSumSquare": "sumsquare",
}  # fmt: skip
POOL_OPS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
SOFTMAX_OPS = {"Softmax", "LogSoftmax", "Hardmax", "LpNormalization"}
# roles of the static arguments the rewrite may change (all others must keep their value)
ARG_ROLES: dict[str, dict[int, str]] = {
    "Reshape": {1: "shape"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Split": {1: "split"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"},
    "Gather": {1: "indices"},
    "Expand": {1: "shape"},
}

Handler = Callable[["Lowering", int, onnx.NodeProto], bool]
DataInputs = tuple[int, ...] | Literal["all"]
HANDLERS: dict[str, tuple[Handler, DataInputs]] = {}


def op(*op_types: str, data: DataInputs = (0,)) -> Callable[[Handler], Handler]:
    """Register a lowering for op types; ``data`` are the input indices that are tensors ("all": every input).

    An op type has one lowering, registered once: a second registration is an error.
    """

    def deco(fn: Handler) -> Handler:
        for t in op_types:
            if t in HANDLERS:
                raise ValueError(f"{t} already lowers with {HANDLERS[t][0].__name__}; cannot register {fn.__name__}")
            HANDLERS[t] = (fn, data)
        return fn

    return deco


# -- handlers: return True when they emitted the node ---------------------------------


@op("Conv", "ConvTranspose", data="all")
def _h_conv(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x, w = lw.tensor(n.input[0]), lw.tensor(n.input[1])
    b = lw.tensor(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if not (x and w) or len(lw.tensor_shape(x)) < 3 or not lw.only_first_output_used(n):
        return False
    groups = int(node_attrs(n).get("group", 1))
    xs, ws = lw.tensor_shape(x), lw.shape(w)
    if ws is not None and len(ws) >= 2 and groups >= 1:  # shape inference does not check this (found by atheris)
        want = ws[0] if n.op_type == "ConvTranspose" else ws[1] * groups
        bs = lw.shape(b) if b else None
        outs = ws[1] * groups if n.op_type == "ConvTranspose" else ws[0]
        if xs[1] != want or outs % groups or (bs is not None and tuple(bs) != (outs,)):
            raise UnsupportedModelError(
                f"node {n.name!r} ({n.op_type}): input of {xs[1]} channels, weight {list(ws)}, group {groups}"
                f"{'' if bs is None else f', bias {list(bs)}'}: inconsistent"
            )
    geometry = conv_geometry(n, xs, ws)
    lw.emit(i, "conv", [x, w, b], [n.output[0]], {"groups": groups, "transposed": n.op_type == "ConvTranspose", **geometry})
    return True


def conv_geometry(n: onnx.NodeProto, xs: tuple[int, ...], ws: tuple[int, ...] | None) -> dict[str, Any]:
    """A Conv's / ConvTranspose's geometry as the torch lowering records it (``frontends.torch.lower.conv_geometry``).

    ``stride`` and ``dilation`` (ints per spatial dim) from ``strides`` and ``dilations``; ``padding`` ints per
    spatial dim, the same on both sides, from ``pads``, or ``"valid"`` / ``"same"`` from ``auto_pad`` (``"same"``:
    stride 1, the output as large as the input, an odd padding's extra at the end as torch puts it); SAME with a
    stride pads from the input size: its ints where they are the same on both sides. ``padding_mode`` is
    ``"zeros"`` (ONNX pads with zeros). One torch cannot state (asymmetric pads; a ConvTranspose's SAME) is left out.
    """
    at = node_attrs(n)
    nspatial = len(xs) - 2
    transposed = n.op_type == "ConvTranspose"

    def per_dim(key: str) -> tuple[int, ...] | None:
        v = tuple(int(a) for a in at.get(key, [1] * nspatial))
        return v if len(v) == nspatial else None

    stride, dilation = per_dim("strides"), per_dim("dilations")
    auto_pad = at.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    padding: tuple[int, ...] | str | None = None
    if auto_pad == "NOTSET":
        pads = [int(p) for p in at.get("pads", [0] * 2 * nspatial)]
        if len(pads) == 2 * nspatial and pads[:nspatial] == pads[nspatial:]:
            padding = tuple(pads[:nspatial])
    elif auto_pad == "VALID":
        padding = (0,) * nspatial if transposed else "valid"
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER") and not transposed and stride and dilation:
        kernel = [int(k) for k in at.get("kernel_shape", ws[2:] if ws is not None else [])]
        if len(kernel) == nspatial:
            totals = [
                max(0, (-(-xs[2 + d] // stride[d]) - 1) * stride[d] + (kernel[d] - 1) * dilation[d] + 1 - xs[2 + d])
                for d in range(nspatial)
            ]
            even = all(t % 2 == 0 for t in totals)
            if all(s == 1 for s in stride) and (auto_pad == "SAME_UPPER" or even):
                padding = "same"
            elif even:
                padding = tuple(t // 2 for t in totals)
    geometry = {"stride": stride, "padding": padding, "dilation": dilation, "padding_mode": "zeros"}
    return {k: v for k, v in geometry.items() if v is not None}


@op("Gemm", data="all")
def _h_gemm(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    at = node_attrs(n)
    a, b = lw.tensor(n.input[0]), lw.tensor(n.input[1])
    c = lw.tensor(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if not (a and b):
        return False
    sa, sb = lw.tensor_shape(a), lw.tensor_shape(b)
    y = n.output[0]
    sy = lw.shapes[y]
    dt = lw.dtype(y)
    k = 0
    if int(at.get("transA", 0)):
        t = lw.tmp(i, k, (sa[1], sa[0]), dt)
        lw.emit(i, "permute", [a], [t], {"perm": [1, 0]}, k=k)
        a, k = t, k + 1
    trans_b = bool(int(at.get("transB", 0)))
    n_out = sb[0] if trans_b else sb[1]
    bias_in_linear = trans_b and c is not None and lw.graph.values[c].is_const and lw.shape(c) == (n_out,)
    main_out = y if c is None or bias_in_linear else lw.tmp(i, k, sy, dt)
    if trans_b:
        lw.emit(i, "linear", [a, b, c if bias_in_linear else None], [main_out], k=k if main_out != y else None)
    else:
        lw.emit(i, "matmul", [a, b], [main_out], k=k if main_out != y else None)
    if main_out != y:
        lw.emit(i, "binary", [main_out, c], [y], {"fn": "Add"})
    return True


@op("MatMul", data="all")
def _h_matmul(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    a, b = lw.tensor(n.input[0]), lw.tensor(n.input[1])
    if not (a and b):
        return False
    lw.emit(i, "matmul", [a, b], [n.output[0]])
    return True


@op("BatchNormalization", data="all")
def _h_bn(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    if int(node_attrs(n).get("training_mode", 0)) or not lw.only_first_output_used(n):
        return False
    x, scale, bias, mean, var = (lw.tensor(v) for v in list(n.input) + [""] * (5 - len(n.input)))
    if not x or len(lw.tensor_shape(x)) < 2:
        return False
    c = lw.tensor_shape(x)[1]
    if any(p is not None and lw.shape(p) != (c,) for p in (scale, bias, mean, var)):
        return False
    for s in (mean, var):
        if s is not None:
            lw.stats_only.setdefault(s, True)
    for p in (scale, bias):
        if p is not None:
            lw.stats_only[p] = False
    lw.emit(i, "batch_norm", [x, mean, var, scale, bias], [n.output[0]])
    return True


@op("InstanceNormalization", data="all")
def _h_instance_norm(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x, scale, bias = (lw.tensor(v) for v in n.input[:3])
    if not x or len(lw.tensor_shape(x)) < 3:
        return False
    c = lw.tensor_shape(x)[1]
    if any(p is not None and lw.shape(p) != (c,) for p in (scale, bias)):
        return False
    if c == 1:
        # one instance: a LayerNorm over every dim after the first two. torch exports GroupNorm(1, C) (PoolFormer)
        # as Reshape to [N, 1, C*H*W], this, Reshape back, then the per-channel affine: the flattened channels
        # prune like LayerNorm's, the verification normalizing over the kept ones. The [1]-sized scale and bias
        # carry no channel.
        lw.emit(i, "layer_norm", [x, None, None], [n.output[0]], {"ndim": len(lw.tensor_shape(x)) - 2})
        return True
    lw.emit(i, "instance_norm", [x, scale, bias, None, None], [n.output[0]])
    return True


@op("LayerNormalization", data="all")
def _h_layer_norm(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    if not lw.only_first_output_used(n):
        return False
    x = lw.tensor(n.input[0])
    scale = lw.tensor(n.input[1]) if len(n.input) > 1 else None
    bias = lw.tensor(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if not x:
        return False
    sx = lw.tensor_shape(x)
    axis = int(node_attrs(n).get("axis", -1))
    axis = axis + len(sx) if axis < 0 else axis
    norm = tuple(sx[axis:])
    if any(p is not None and lw.shape(p) != norm for p in (scale, bias)):
        return False  # broadcast parameters: not the per-channel affine the rule knows
    lw.emit(i, "layer_norm", [x, scale, bias], [n.output[0]], {"ndim": len(norm)})
    return True


@op("GroupNormalization", data="all")
def _h_group_norm(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x, scale, bias = (lw.tensor(v) for v in n.input[:3])
    if not x or len(lw.tensor_shape(x)) < 3:
        return False
    c = lw.tensor_shape(x)[1]
    groups = int(node_attrs(n)["num_groups"])
    if groups <= 0 or c % groups or any(p is not None and lw.shape(p) != (c,) for p in (scale, bias)):
        return False  # opset 18's per-group scale: not per channel
    lw.emit(i, "group_norm", [x, scale, bias], [n.output[0]], {"num_groups": groups})
    return True


@op(*sorted(UNARY_OPS - {"CastLike"}), data=(0,))
@op("CastLike", data=(0, 1))  # its second input (the type to cast like) is a tensor too
def _h_unary(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or lw.shape(n.output[0]) != lw.tensor_shape(x):
        return False
    lw.emit(i, "unary", [x], [n.output[0]], {"fn": n.op_type})
    return True


@op("Identity", "Dropout", data=(0,))
def _h_identity(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or not lw.only_first_output_used(n):
        return False
    if n.op_type == "Dropout" and len(n.input) > 2 and n.input[2]:
        mode = lw.static.get(n.input[2])
        if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
            return False  # training-mode dropout is random
    lw.emit(i, "identity", [x], [n.output[0]], {"fn": n.op_type})
    return True


@op(*sorted(BINARY_OPS), data="all")
def _h_binary(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    ins = [lw.tensor(x) for x in n.input]
    if not ins or any(v is None for v in ins):
        return False
    lw.emit(i, "binary", ins, [n.output[0]], {"fn": n.op_type})
    return True


@op("Concat", data="all")
def _h_concat(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    ins = [lw.tensor(x) for x in n.input if x]
    if not ins or any(v is None for v in ins):
        return False
    lw.emit(i, "concat", ins, [n.output[0]], {"axis": int(node_attrs(n)["axis"])})
    return True


@op("Split", data=(0,))
def _h_split(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or any(not o for o in n.output):
        return False
    sx = lw.tensor_shape(x)
    axis = int(node_attrs(n).get("axis", 0))
    ax = axis + len(sx) if axis < 0 else axis
    outs = [lw.shapes.get(o) for o in n.output]
    sizes = [s[ax] for s in outs if s is not None]
    if len(sizes) != len(outs):
        return False
    # not "equal" even without a ``split`` input (an equal split, ``num_outputs`` from opset 18): the rewrite
    # gives it explicit sizes where its pieces lose different numbers of channels (rewrite_ops._split_sizes), so
    # the pieces prune independently, as the Slices the TorchScript exporter writes for torch.chunk do; tying
    # them (position j of every piece together) merged every channel of a ShuffleNet V2 stage into one class
    lw.emit(i, "split", [x], list(n.output), {"axis": axis, "sizes": sizes, "equal": False})
    return True


@op("Slice", data=(0,))
def _h_slice(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    sx = lw.tensor_shape(x)
    starts, ends = lw.static_ints(n.input[1]), lw.static_ints(n.input[2])
    axes = lw.static_ints(n.input[3]) if len(n.input) > 3 and n.input[3] else list(range(len(starts or [])))
    steps = lw.static_ints(n.input[4]) if len(n.input) > 4 and n.input[4] else [1] * len(starts or [])
    if starts is None or ends is None or axes is None or steps is None or not (len(starts) == len(ends) == len(axes) == len(steps)):
        return False
    axes = [a + len(sx) if a < 0 else a for a in axes]
    cuts = []
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        start, end, step = slice_range(s, e, st, sx[a])
        if len(range(start, end, step)) == sx[a] and step == 1:
            continue  # the whole axis
        cuts.append((a, start, None if end < 0 else end, step))
    y = n.output[0]
    if not cuts:
        lw.emit(i, "identity", [x], [y], {"fn": "Slice"})
        return True
    cur, shape = x, list(sx)
    for k, (a, start, stop, step) in enumerate(cuts):
        shape[a] = len(range(*slice(start, stop, step).indices(sx[a])))
        last = k == len(cuts) - 1
        nxt = y if last else lw.tmp(i, k, tuple(shape), lw.dtype(y))
        lw.emit(i, "slice", [cur], [nxt], {"axis": a, "start": start, "stop": stop, "step": step}, k=None if last else k)
        cur = nxt
    if tuple(shape) != lw.shapes[y]:
        raise AssertionError(f"{n.name}: slice gives {shape}, inference said {lw.shapes[y]}")
    return True


# the indices are tensor data: an embedding lookup's are computed, so they must not be demanded static;
# static ones are recorded by the handler itself, as the ``indices`` argument
@op("Gather", data=(0, 1))
def _h_gather(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    """Embedding lookup (constant table, tensor indices) or a constant index on one axis."""
    at = node_attrs(n)
    axis = int(at.get("axis", 0))
    data, idx = n.input[0], n.input[1]
    y = n.output[0]
    if idx not in lw.static:
        w = lw.tensor(data)
        ix = lw.tensor(idx)
        if w and ix and axis == 0 and lw.graph.values[w].is_const and len(lw.tensor_shape(w)) == 2:
            lw.emit(i, "embedding", [ix, w], [y])
            return True
        if w and ix:  # rows picked by a computed index: the axis and the index are frozen, other dims keep channels
            lw.emit(i, "take", [w, ix], [y], {"axis": axis})
            return True
        return False
    x = lw.tensor(data)
    if not x:
        return False
    sx = lw.tensor_shape(x)
    ax = axis + len(sx) if axis < 0 else axis
    ind = np.asarray(lw.static[idx]).astype(np.int64)
    vals = [int(v) + sx[ax] if v < 0 else int(v) for v in ind.reshape(-1)]
    if ind.ndim == 0:
        mid = list(sx)
        mid[ax] = 1
        t = lw.tmp(i, 0, tuple(mid), lw.dtype(y))
        lw.emit(i, "slice", [x], [t], {"axis": ax, "start": vals[0], "stop": vals[0] + 1, "step": 1}, k=0)
        lw.emit(i, "reshape", [t], [y])
    elif ind.ndim == 1 and vals and vals == list(range(vals[0], vals[0] + len(vals))):
        lw.emit(i, "slice", [x], [y], {"axis": ax, "start": vals[0], "stop": vals[0] + len(vals), "step": 1})
    else:  # any other constant index (an im2col gather): the axis is frozen, the index keeps its value
        lw.emit(i, "take", [x], [y], {"axis": ax, "index_shape": tuple(ind.shape)})
    lw.args.append(ArgSlot(i, 1, idx, "indices"))
    return True


@op("Expand", data=(0,))
def _h_expand(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    """Broadcast to a static shape: dims the input already has keep their channels; the rewrite fits the shape."""
    x = lw.tensor(n.input[0])
    if not x or n.input[1] not in lw.static:
        return False
    lw.emit(i, "expand", [x], [n.output[0]])
    lw.args.append(ArgSlot(i, 1, n.input[1], "shape"))
    return True


@op("Reshape", "Flatten", "Squeeze", "Unsqueeze", data=(0,))
def _h_reshape(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    lw.emit(i, "reshape", [x], [n.output[0]])
    return True


@op("Transpose", data=(0,))
def _h_transpose(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    rank = len(lw.tensor_shape(x))
    perm = [int(p) for p in node_attrs(n).get("perm", list(range(rank))[::-1])]
    lw.emit(i, "permute", [x], [n.output[0]], {"perm": perm})
    return True


@op(*sorted(REDUCE_OPS), data=(0,))
def _h_reduce(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    at = node_attrs(n)
    rank = len(lw.tensor_shape(x))
    if len(n.input) > 1 and n.input[1]:
        axes = lw.static_ints(n.input[1])
    else:
        axes = [int(a) for a in at["axes"]] if "axes" in at else []
    if axes is None:
        return False
    if not axes:
        if int(at.get("noop_with_empty_axes", 0)):
            lw.emit(i, "identity", [x], [n.output[0]], {"fn": n.op_type})
            return True
        axes = list(range(rank))
    keep = bool(int(at.get("keepdims", 1)))
    attrs = {"dims": axes, "keepdim": keep, "fn": REDUCE_OPS[n.op_type]}
    if n.op_type == "ReduceMean":  # the rewrite keeps the original divisor (a Mul after it)
        attrs["rescalable"] = True
    lw.emit(i, "reduce", [x], [n.output[0]], attrs)
    return True


@op("ArgMax", "ArgMin", data=(0,))
def _h_arg_reduce(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    at = node_attrs(n)
    lw.emit(i, "reduce", [x], [n.output[0]], {"dims": [int(at.get("axis", 0))], "keepdim": bool(int(at.get("keepdims", 1))), "fn": n.op_type.lower()})
    return True


@op(*sorted(POOL_OPS), data=(0,))
def _h_pool(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x or len(lw.tensor_shape(x)) < 3 or not lw.only_first_output_used(n):
        return False
    lw.emit(i, "spatial", [x], [n.output[0]], {"nspatial": len(lw.tensor_shape(x)) - 2})
    return True


@op("Resize", data=(0,))
def _h_resize(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    """Resize in every mode (nearest, linear, cubic; scales or sizes; every coordinate transformation) that keeps
    the batch and channel dims: each channel is resized on its own. ``tf_crop_and_resize`` crops by ``roi``, in
    coordinates normalized by each dim's size: it keeps channels apart only where the roi spans the whole batch
    and channel dims (start 0, end 1, the position of every index unchanged whatever the dim's size)."""
    x = lw.tensor(n.input[0])
    if not x:
        return False
    sx, sy = lw.tensor_shape(x), lw.shapes[n.output[0]]
    at = node_attrs(n)
    ctm = at.get("coordinate_transformation_mode", b"half_pixel")
    ctm = ctm.decode() if isinstance(ctm, bytes) else str(ctm)
    if len(sx) < 3 or tuple(sx[:2]) != tuple(sy[:2]):
        return False
    if ctm == "tf_crop_and_resize" and not _roi_spans(lw, n, len(sx), (0, 1)):
        return False
    lw.emit(i, "spatial", [x], [n.output[0]], {"nspatial": len(sx) - 2})
    return True


def _roi_spans(lw: Lowering, n: onnx.NodeProto, rank: int, dims: tuple[int, ...]) -> bool:
    """A static ``roi`` of a Resize whose crop box is [0, 1] on each of ``dims`` (on the node's ``axes``, where it has
    them: the dims it leaves out are not resized)."""
    roi = lw.static.get(n.input[1]) if len(n.input) > 1 and n.input[1] else None
    if roi is None:
        return False
    axes = [int(a) % rank for a in node_attrs(n).get("axes", range(rank))]
    box = np.asarray(roi, dtype=np.float64).reshape(-1)
    if box.size != 2 * len(axes):
        return False
    for k, a in enumerate(axes):
        if a in dims and (box[k] != 0.0 or box[k + len(axes)] != 1.0):
            return False
    return True


@op("Pad", data=(0,))
def _h_pad(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    rank = len(lw.tensor_shape(x))
    pads = lw.static_ints(n.input[1]) if len(n.input) > 1 and n.input[1] else None
    if pads is None:
        return False
    axes = lw.static_ints(n.input[3]) if len(n.input) > 3 and n.input[3] else list(range(rank))
    if axes is None or len(pads) != 2 * len(axes):
        return False
    begin, end = [0] * rank, [0] * rank
    for k, a in enumerate(axes):
        a = a + rank if a < 0 else a
        begin[a], end[a] = pads[k], pads[k + len(axes)]
    torch_order: list[int] = []
    for d in range(rank - 1, -1, -1):
        torch_order += [begin[d], end[d]]
    lw.emit(i, "pad", [x], [n.output[0]], {"pads": torch_order})
    return True


@op(*sorted(SOFTMAX_OPS), data=(0,))
def _h_softmax(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    x = lw.tensor(n.input[0])
    if not x:
        return False
    lw.emit(i, "softmax", [x], [n.output[0]], {"axis": int(node_attrs(n).get("axis", -1))})
    return True



@op("QuantizeLinear", "DequantizeLinear", data="all")
def _h_quantize(lw: Lowering, i: int, n: onnx.NodeProto) -> bool:
    """An activation's QDQ node (a weight's DequantizeLinear is static): element-wise, with a scalar or per-axis
    scale and zero point (the schemes :func:`frontends.onnx.quantized.check_quantization` lets through)."""
    x = lw.tensor(n.input[0])
    params = [lw.tensor(v) if v else None for v in list(n.input[1:3])]
    if not x or (params and params[0] is None):
        return False
    rank = len(lw.tensor_shape(x))
    axis = int(node_attrs(n).get("axis", 1))
    for p in params:
        ps = lw.shape(p) if p else None
        if ps is not None and len(ps) == 1 and ps[0] != 1 and (rank == 0 or ps[0] != lw.tensor_shape(x)[axis % rank]):
            return False
    lw.emit(i, "quantize", [x, *params], [n.output[0]], {"axis": axis, "fn": n.op_type})
    return True
