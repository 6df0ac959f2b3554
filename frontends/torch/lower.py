"""Lowering: a traced ``GraphModule`` into the framework-neutral :class:`ChannelGraph`.

Each FX node becomes a neutral op (:mod:`frontends.graph`): module calls by module
class, functions and methods by name (one handler per family, ``_handles``), ATen ops
of ``torch.export`` graphs by their op names. Module parameters and ``get_attr``
tensors become constant values named by their state-dict path. A node the tables do
not know becomes ``kind="unknown"`` with its source-level target, never a guess.

Attributes recorded for the framework-neutral passes (the ONNX lowering records the same):

=============  ==============================================================
conv           ``groups``, ``transposed``, and its geometry: ``stride`` and
               ``dilation`` (ints per spatial dim), ``padding`` (ints per
               spatial dim, or ``"same"`` / ``"valid"``), ``padding_mode``
               (``"zeros"``, ``"reflect"``, ``"replicate"``, ``"circular"``)
layer_norm     ``ndim``: how many trailing dims it normalizes
group_norm     ``num_groups``; ``stats_over_kept`` (the torch reference can
               normalize over the kept channels)
=============  ==============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

from frontends.graph import ChannelGraph, Op, Value
from frontends.torch import runtime
from frontends.torch.nodes import call_arg, call_name, flat_args, flatten, module_attr, target_label

log = logging.getLogger(__name__)

__all__ = ["lower", "conv_geometry", "resizable_split", "UNARY_MODULES"]


UNARY_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Threshold, nn.RReLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
)  # fmt: skip

_UNARY_FN_NAMES = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "celu", "gelu", "silu", "mish",
    "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish", "hardsigmoid", "hardtanh", "hardtanh_", "softplus",
    "softsign", "logsigmoid", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "feature_alpha_dropout", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "abs", "neg", "exp", "log",
    "sqrt", "rsqrt", "sin", "cos", "erf", "square", "reciprocal", "sign", "floor", "ceil", "round",
    "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type_as", "pow",
    "__pow__", "nan_to_num", "log1p", "expm1", "tanhshrink", "hardshrink", "softshrink", "threshold",
    "relu6_", "silu_", "hardswish_", "gelu_", "requires_grad_", "identity", "zero_", "alias",
    "invert", "logical_not", "bitwise_not", "__invert__", "rpow", "__rpow__", "exp2", "abs_",
}  # fmt: skip
_BINARY_FN_NAMES = {
    "add", "sub", "mul", "truediv", "div", "iadd", "isub", "imul", "itruediv", "add_", "sub_", "mul_", "div_",
    "maximum", "minimum", "where", "rsub", "radd", "true_divide", "multiply", "subtract", "divide", "fmax", "fmin",
    "floordiv", "floor_divide", "remainder", "mod", "atan2", "hypot", "lerp", "addcmul",
}  # fmt: skip
_REDUCE_FN = {"mean": "mean", "sum": "sum", "amax": "max", "amin": "min", "nansum": "sum", "nanmean": "mean",
              "std": "std", "var": "var", "prod": "prod", "logsumexp": "logsumexp", "norm": "norm"}  # fmt: skip
_POOL_FN = {
    "max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "avg_pool1d": 1, "avg_pool2d": 2, "avg_pool3d": 3,
    "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2, "adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1,
    "adaptive_max_pool2d": 2, "adaptive_max_pool3d": 3, "lp_pool1d": 1, "lp_pool2d": 2, "lp_pool3d": 3,
    "max_pool2d_with_indices": 2,
}  # fmt: skip
_SAFE_NON_TENSOR = {"size", "dim", "numel", "getattr", "ndimension", "nelement", "_assert", "__len__", "len",
                    "sym_size", "sym_numel", "_assert_tensor_metadata", "_assert_scalar"}  # fmt: skip


def _is_container(node: torch.fx.Node) -> bool:
    """Whether the node produced a tuple or list (of one tensor, too: ``x[0]`` picks it, not a row of it)."""
    tm = node.meta.get("tensor_meta")
    if tm is not None:
        return isinstance(tm, (list, tuple)) and not isinstance(tm, TensorMetadata)
    return isinstance(node.meta.get("val"), (list, tuple))


class _Lowering:
    """One pass over the FX graph in order, adding each node's values and op to a new :class:`ChannelGraph`."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.graph = ChannelGraph("torch")
        self.node_values: dict[str, list[str]] = {}
        self.params = {id(p) for p in gm.parameters()}
        self.nested: dict[str, list[str]] = {}  # a tuple-valued output (an LSTM's (h_n, c_n)): its tensors

    # -- values ---------------------------------------------------------------
    def _meta_values(self, node: torch.fx.Node) -> list[tuple[tuple[int, ...] | None, str | None]]:
        tm = node.meta.get("tensor_meta")
        if tm is None and "val" in node.meta:  # torch.export graphs
            val = node.meta["val"]
            if isinstance(val, torch.Tensor):
                return [(tuple(int(s) for s in val.shape), str(val.dtype))]
            if isinstance(val, (list, tuple)):
                return [
                    (tuple(int(s) for s in v.shape), str(v.dtype)) if isinstance(v, torch.Tensor) else (None, None)
                    for v in val
                ]
            return [(None, None)]
        if isinstance(tm, TensorMetadata):
            return [(tuple(int(s) for s in tm.shape), str(tm.dtype))]
        if isinstance(tm, (list, tuple)):
            return [
                (tuple(int(s) for s in t.shape), str(t.dtype)) if isinstance(t, TensorMetadata) else (None, None)
                for t in tm
            ]
        return [(None, None)]

    def _const(self, name: str, tensor: torch.Tensor) -> str:
        if name not in self.graph.values:
            data = const_view(tensor)
            self.graph.add_value(
                Value(name, tuple(tensor.shape), str(tensor.dtype), data=data, trainable=id(tensor) in self.params)
            )
        return name

    def _out(self, node: torch.fx.Node) -> list[str]:
        metas = self._meta_values(node)
        if len(metas) == 1 and not isinstance(node.meta.get("tensor_meta"), (list, tuple)) and not isinstance(
            node.meta.get("val"), (list, tuple)
        ):
            shape, dtype = metas[0]
            self.graph.add_value(Value(node.name, shape, dtype))
            names = [node.name]
        else:
            names = []
            for i, (shape, dtype) in enumerate(metas):
                n = f"{node.name}#{i}"
                self.graph.add_value(Value(n, shape, dtype))
                names.append(n)
        self.node_values[node.name] = names
        return names

    def _val(self, arg: Any) -> str | None:
        """Value name of a tensor argument; None for anything else."""
        if isinstance(arg, torch.fx.Node):
            vals = self.node_values.get(arg.name)
            if vals and len(vals) == 1 and self.graph.values[vals[0]].is_tensor:
                return vals[0]
        return None

    def _is_tensor(self, arg: Any) -> bool:
        return self._val(arg) is not None

    # -- ops -------------------------------------------------------------------
    def _emit(self, node: torch.fx.Node, kind: str, inputs: list[str | None], attrs: dict | None = None) -> None:
        outs = self._out(node)
        label = str(node.target) if node.op == "call_module" else node.name
        op = Op(node.name, kind, inputs, outs, attrs or {}, label=label, target=target_label(node, self.gm), source=node)
        op.scope = module_scope(node, label)
        self.graph.add_op(op)

    def _unknown(self, node: torch.fx.Node, extra: list[str] | None = None) -> None:
        ins: list[str | None] = [v for v in (self._val(a) for a in flat_args(node)) if v is not None]
        ins += extra or []
        self._emit(node, "unknown", ins, {})

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape, dtype = self._meta_values(node)[0]
                self.graph.add_value(Value(node.name, shape, dtype))
                self.node_values[node.name] = [node.name]
                if shape is not None:
                    self.graph.inputs.append(node.name)
            elif node.op == "get_attr":
                obj = module_attr(self.gm, str(node.target))
                if isinstance(obj, torch.Tensor):
                    self.node_values[node.name] = [self._const(str(node.target), obj)]
                else:
                    self.graph.add_value(Value(node.name, None))
                    self.node_values[node.name] = [node.name]
            elif node.op == "call_module":
                self._module(node)
            elif node.op in ("call_function", "call_method"):
                self._function(node)
            elif node.op == "output":
                for a in flatten(node.args[0]):
                    v = self._val(a)
                    if v is not None and v not in self.graph.outputs:
                        self.graph.outputs.append(v)
        return self.graph

    def _module(self, node: torch.fx.Node) -> None:
        name = str(node.target)
        m = self.gm.get_submodule(name)
        p = {k: self._const(f"{name}.{k}", t) for k, t in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)) if t is not None}
        x = self._val(node.args[0]) if node.args else None
        if type(m).__name__ == "GuardsFn" and not node.users:  # torch.export's input-shape guards: checks, no value
            self._skip(node)
            return
        if isinstance(m, nn.modules.conv._ConvNd) and x:
            geometry = conv_geometry(len(m.kernel_size), m.stride, m.padding, m.dilation, m.padding_mode)
            self._emit(node, "conv", [x, p["weight"], p.get("bias")], {"groups": m.groups, "transposed": m.transposed, **geometry})
        elif isinstance(m, nn.Linear) and x:
            self._emit(node, "linear", [x, p["weight"], p.get("bias")])
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and x:
            self._emit(node, "batch_norm", [x, p.get("running_mean"), p.get("running_var"), p.get("weight"), p.get("bias")])
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm) and x:
            self._emit(node, "instance_norm", [x, p.get("weight"), p.get("bias"), p.get("running_mean"), p.get("running_var")])
        elif isinstance(m, nn.LayerNorm) and x:
            self._emit(node, "layer_norm", [x, p.get("weight"), p.get("bias")], {"ndim": len(m.normalized_shape)})
        elif isinstance(m, nn.GroupNorm) and x:
            self._emit(node, "group_norm", [x, p.get("weight"), p.get("bias")], {"num_groups": m.num_groups, "stats_over_kept": True})
        elif isinstance(m, nn.PReLU) and x:
            self._emit(node, "prelu", [x, p["weight"]])
        elif isinstance(m, nn.Embedding) and x:
            self._emit(node, "embedding", [x, p["weight"]])
        elif isinstance(m, nn.RNNBase) and x and self._recurrent(node, m, x, p):
            pass
        elif isinstance(m, UNARY_MODULES) and x:
            self._emit(node, "unary", [x], {"fn": type(m).__name__})
        elif isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)) and x and m.dim is not None:
            self._emit(node, "softmax", [x], {"axis": m.dim})
        elif isinstance(m, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
                            nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd)) and x:
            nsp = int(type(m).__name__[-2])
            self._emit(node, "spatial", [x], {"nspatial": nsp})
        elif isinstance(m, (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)) and x:
            self._emit(node, "spatial", [x], {"nspatial": len(self.graph.shape(x)) - 2})
        elif isinstance(m, nn.Unfold) and x and len(self.graph.shape(x) or ()) == 4:
            self._emit(node, "unfold", [x])
        elif isinstance(m, (nn.Flatten, nn.Unflatten)) and x:
            self._emit(node, "reshape", [x])
        elif isinstance(m, (nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
                            nn.ZeroPad2d)) and x:
            self._emit(node, "pad", [x], {"pads": list(m.padding)})
        elif runtime.is_leaf_module(m) and runtime.value_args(m) is not None:  # reads only some arguments' values
            read = [a for i, a in enumerate(node.args) if i in (runtime.value_args(m) or ())]
            self._emit(node, "unknown", [v for v in (self._val(a) for a in flatten(read)) if v is not None], {})
        else:
            self._unknown(node, extra=list(p.values()))

    def _function(self, node: torch.fx.Node) -> None:
        fn = call_name(node)
        args: list[Any] = list(node.args)
        kwargs: dict[str, Any] = dict(node.kwargs)
        metas = self._meta_values(node)
        out_is_tensor = any(s is not None for s, _ in metas)
        has_tensor_in = any(self._is_tensor(a) for a in flat_args(node))

        # tuple element access
        if fn == "getitem" and isinstance(args[0], torch.fx.Node) and args[0].name in self.node_values:
            src = self.node_values[args[0].name]
            container = _is_container(args[0])
            if len(src) > 1 or not self.graph.values[src[0]].is_tensor or container:
                if isinstance(args[1], int) and (len(src) > 1 or container) and -len(src) <= args[1] < len(src):
                    self.node_values[node.name] = self.nested.get(src[args[1]], [src[args[1]]])
                    return
                if not out_is_tensor:
                    self._skip(node)
                    return
        if not out_is_tensor and (not has_tensor_in or fn in _SAFE_NON_TENSOR):
            self._skip(node)
            return
        if fn == "stochastic_depth":
            training = kwargs.get("training", args[3] if len(args) > 3 else True)
            if training is False or float(kwargs.get("p", args[1] if len(args) > 1 else 0.0)) == 0.0:
                self._emit(node, "identity", [self._val(args[0])], {"fn": fn})
                return
        handler = _HANDLERS.get(fn)
        if handler is not None:
            try:
                if handler(self, node, args, kwargs):
                    return
            except (IndexError, KeyError, TypeError, ValueError) as exc:  # unexpected call form
                log.debug("lowering %s failed: %s", node.name, exc)
                if node.name in self.node_values:
                    raise
        tensors_in = [a for a in flat_args(node) if self._is_tensor(a)]
        if fn in _UNARY_FN_NAMES and len(tensors_in) == 1:  # x.pow(2) and 10000 ** x alike: element-wise in x
            self._emit(node, "unary", [self._val(tensors_in[0])], {"fn": fn})
            return
        if fn in _BINARY_FN_NAMES:
            ins = [self._val(a) for a in list(args) + list(kwargs.values()) if self._is_tensor(a)]
            if ins and len(metas) == 1:
                self._emit(node, "binary", ins, {"fn": fn})
                return
        self._unknown(node)

    def _recurrent(self, node: torch.fx.Node, m: nn.RNNBase, x: str, p: dict[str, str]) -> bool:
        """nn.LSTM / nn.GRU / nn.RNN called on a tensor: one ``recurrent`` op (passes/ops/recurrent.py), outputs
        ``[y, h_n(, c_n)]``; an LSTM's ``(h_n, c_n)`` is a tuple value whose tensors ``getitem`` reaches."""
        cell = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn"}.get(m.mode)
        hx = node.args[1] if len(node.args) > 1 else node.kwargs.get("hx")
        states = list(hx) if isinstance(hx, (tuple, list)) else [hx]
        h0, c0 = (self._val(s) for s in (states + [None, None])[:2])
        metas = self._meta_values(node)
        if cell is None or len(metas) != 2 or metas[0][0] is None or (hx is not None and h0 is None):
            return False
        dirs = 2 if m.bidirectional else 1
        sfx = ["", "_reverse"]
        weights = [p.get(f"{w}_l{layer}{sfx[d]}") for layer in range(m.num_layers) for d in range(dirs)
                   for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")]  # fmt: skip
        tm = node.meta.get("tensor_meta")
        state_metas = list(tm[1]) if cell == "lstm" and isinstance(tm, (list, tuple)) and isinstance(tm[1], (list, tuple)) else []
        if cell == "lstm" and len(state_metas) != 2:
            return False
        y = f"{node.name}#0"
        self.graph.add_value(Value(y, metas[0][0], metas[0][1]))
        if cell == "lstm":
            tup = f"{node.name}#1"
            self.graph.add_value(Value(tup, None))
            states_out = [f"{tup}.{i}" for i in range(2)]
            for v, t in zip(states_out, state_metas, strict=True):
                self.graph.add_value(Value(v, tuple(int(s) for s in t.shape), str(t.dtype)))
            self.nested[tup] = states_out
            self.node_values[node.name] = [y, tup]
        else:
            states_out = [f"{node.name}#1"]
            self.graph.add_value(Value(states_out[0], metas[1][0], metas[1][1]))
            self.node_values[node.name] = [y, states_out[0]]
        attrs = {
            "cell": cell, "gates": {"lstm": 4, "gru": 3, "rnn": 1}[cell], "layers": m.num_layers, "directions": dirs,
            "hidden": m.hidden_size, "proj": int(getattr(m, "proj_size", 0) or 0), "weights": "per_layer",
            "outputs": ["y", "h", "c"][: 1 + len(states_out)], "y_concat": True, "batch_first": m.batch_first,
        }  # fmt: skip
        label = str(node.target)
        op = Op(node.name, "recurrent", [x, h0, c0, None, *weights], [y, *states_out], attrs, label=label,
                target=target_label(node, self.gm), source=node)  # fmt: skip
        op.scope = module_scope(node, label)
        self.graph.add_op(op)
        return True

    def _skip(self, node: torch.fx.Node) -> None:
        """A node with no tensor result (a size, an assert): values with no shape, no op."""
        names = []
        for i in range(len(self._meta_values(node))):
            n = node.name if i == 0 else f"{node.name}#{i}"
            self.graph.add_value(Value(n, None))
            names.append(n)
        self.node_values[node.name] = names


# -- function handlers: return True when they emitted the node -----------------
Handler = Callable[[_Lowering, torch.fx.Node, list, dict], bool]
_HANDLERS: dict[str, Handler] = {}


def _handles(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            _HANDLERS[n] = fn
        return fn

    return deco


def conv_geometry(nspatial: int, stride: Any, padding: Any, dilation: Any, padding_mode: str = "zeros") -> dict[str, Any]:
    """A conv's ``stride``, ``padding``, ``dilation`` (ints per spatial dim; ``padding`` may be ``"same"`` or
    ``"valid"``) and ``padding_mode`` as op attributes; one given as something else (a size read at run time)
    is left out."""

    def per_dim(v: Any) -> tuple[int, ...] | None:
        if isinstance(v, int) and not isinstance(v, bool):
            return (v,) * nspatial
        if isinstance(v, (list, tuple)) and len(v) == nspatial and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
            return tuple(v)
        return None

    geometry = {
        "stride": per_dim(stride),
        "padding": padding if padding in ("same", "valid") else per_dim(padding),
        "dilation": per_dim(dilation),
        "padding_mode": padding_mode,
    }
    return {k: v for k, v in geometry.items() if v is not None}


@_handles("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _h_conv(lw: _Lowering, node, args, kwargs) -> bool:
    """F.conv{n}d(x, w, b, stride, padding, dilation, groups); F.conv_transpose{n}d(x, w, b, stride, padding,
    output_padding, groups, dilation)."""
    transposed = "transpose" in call_name(node)
    x, w = lw._val(args[0]), lw._val(call_arg(args, kwargs, 1, "weight"))
    b = lw._val(call_arg(args, kwargs, 2, "bias"))
    groups = call_arg(args, kwargs, 6, "groups", 1)
    if not (x and w) or not isinstance(groups, int):
        return False
    dilation = call_arg(args, kwargs, 7, "dilation", 1) if transposed else call_arg(args, kwargs, 5, "dilation", 1)
    geometry = conv_geometry(
        len(lw.graph.shape(w)) - 2, call_arg(args, kwargs, 3, "stride", 1), call_arg(args, kwargs, 4, "padding", 0), dilation
    )
    lw._emit(node, "conv", [x, w, b], {"groups": groups, "transposed": transposed, **geometry})
    return True


@_handles("convolution")
def _h_aten_convolution(lw, node, args, kwargs) -> bool:
    """aten.convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups) (torch.export)."""
    x, w, b = lw._val(args[0]), lw._val(args[1]), lw._val(args[2])
    transposed, groups = bool(args[6]), int(args[8])
    if not (x and w):
        return False
    geometry = conv_geometry(len(lw.graph.shape(w)) - 2, args[3], args[4], args[5])
    lw._emit(node, "conv", [x, w, b], {"groups": groups, "transposed": transposed, **geometry})
    return True


@_handles("linear")
def _h_linear(lw, node, args, kwargs) -> bool:
    x, w, b = lw._val(args[0]), lw._val(call_arg(args, kwargs, 1, "weight")), lw._val(call_arg(args, kwargs, 2, "bias"))
    if not (x and w) or len(lw.graph.shape(w)) != 2:
        return False
    lw._emit(node, "linear", [x, w, b])
    return True


@_handles("batch_norm")
def _h_batch_norm(lw, node, args, kwargs) -> bool:
    if isinstance(node.target, torch._ops.OpOverload):  # aten: input, weight, bias, mean, var
        x, w, b, m, v = (lw._val(args[i]) if len(args) > i else None for i in range(5))
    else:  # F.batch_norm(input, running_mean, running_var, weight, bias, ...)
        x = lw._val(args[0])
        m, v = lw._val(call_arg(args, kwargs, 1, "running_mean")), lw._val(call_arg(args, kwargs, 2, "running_var"))
        w, b = lw._val(call_arg(args, kwargs, 3, "weight")), lw._val(call_arg(args, kwargs, 4, "bias"))
    if not x:
        return False
    lw._emit(node, "batch_norm", [x, m, v, w, b])
    return True


@_handles("_native_batch_norm_legit_no_training")
def _h_native_bn(lw, node, args, kwargs) -> bool:
    x, w, b, m, v = (lw._val(args[i]) for i in range(5))
    outs = lw._out(node)
    lw.graph.add_op(Op(node.name, "batch_norm", [x, m, v, w, b], outs[:1], {}, node.name, str(node.target), node))
    # the statistics outputs carry no channels anyone prunes through
    return True


@_handles("instance_norm")
def _h_instance_norm(lw, node, args, kwargs) -> bool:
    x = lw._val(args[0])
    m, v = lw._val(call_arg(args, kwargs, 1, "running_mean")), lw._val(call_arg(args, kwargs, 2, "running_var"))
    w, b = lw._val(call_arg(args, kwargs, 3, "weight")), lw._val(call_arg(args, kwargs, 4, "bias"))
    lw._emit(node, "instance_norm", [x, w, b, m, v])
    return True


@_handles("layer_norm")
def _h_layer_norm(lw, node, args, kwargs) -> bool:
    x, shape = lw._val(args[0]), call_arg(args, kwargs, 1, "normalized_shape")
    w, b = lw._val(call_arg(args, kwargs, 2, "weight")), lw._val(call_arg(args, kwargs, 3, "bias"))
    if not x or not isinstance(shape, (list, tuple, torch.Size)) or not all(isinstance(s, int) for s in shape):
        return False
    lw._emit(node, "layer_norm", [x, w, b], {"ndim": len(shape)})
    return True


@_handles("group_norm")
def _h_group_norm(lw, node, args, kwargs) -> bool:
    x, g = lw._val(args[0]), call_arg(args, kwargs, 1, "num_groups")
    w, b = lw._val(call_arg(args, kwargs, 2, "weight")), lw._val(call_arg(args, kwargs, 3, "bias"))
    if not x or not isinstance(g, int):
        return False
    lw._emit(node, "group_norm", [x, w, b], {"num_groups": g, "stats_over_kept": True})
    return True


@_handles("prelu")
def _h_prelu(lw, node, args, kwargs) -> bool:
    x, w = lw._val(args[0]), lw._val(call_arg(args, kwargs, 1, "weight"))
    if not (x and w):
        return False
    lw._emit(node, "prelu", [x, w])
    return True


@_handles("embedding")
def _h_embedding(lw, node, args, kwargs) -> bool:
    if isinstance(node.target, torch._ops.OpOverload):  # aten.embedding(weight, indices)
        w, idx = lw._val(args[0]), lw._val(args[1])
    else:
        idx, w = lw._val(args[0]), lw._val(call_arg(args, kwargs, 1, "weight"))
    if not (idx and w):
        return False
    lw._emit(node, "embedding", [idx, w])
    return True


@_handles(*_POOL_FN)
def _h_pool(lw, node, args, kwargs) -> bool:
    x = lw._val(args[0])
    if not x or len(lw._meta_values(node)) != 1:
        return False
    lw._emit(node, "spatial", [x], {"nspatial": _POOL_FN[call_name(node)]})
    return True


@_handles("interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "upsample_nearest1d", "upsample_nearest2d",
          "upsample_nearest3d", "upsample_linear1d", "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d",
          "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa", "_upsample_nearest_exact2d")
def _h_interp(lw, node, args, kwargs) -> bool:
    x = lw._val(args[0])
    if not x:
        return False
    lw._emit(node, "spatial", [x], {"nspatial": len(lw.graph.shape(x)) - 2})
    return True


@_handles(*_REDUCE_FN)
def _h_reduce(lw, node, args, kwargs) -> bool:
    fn = call_name(node)
    x = lw._val(args[0])
    if not x or len(lw._meta_values(node)) != 1 or sum(lw._is_tensor(a) for a in flat_args(node)) != 1:
        return False
    rank = len(lw.graph.shape(x))
    dims = call_arg(args, kwargs, 1, "dim", None)
    if fn == "norm":
        dims = call_arg(args, kwargs, 2, "dim", None)
    if dims is None:
        dims = list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    if not all(isinstance(d, int) for d in dims):
        return False
    keepdim = bool(call_arg(args, kwargs, 2 if fn != "norm" else 3, "keepdim", False))
    attrs = {"dims": list(dims), "keepdim": keepdim, "fn": _REDUCE_FN[fn]}
    if attrs["fn"] == "mean" and fn == "mean":  # the rewrite keeps the original divisor (RMSNorm's mean of squares)
        attrs["rescalable"] = True
    lw._emit(node, "reduce", [x], attrs)
    return True


@_handles("softmax", "log_softmax", "_softmax", "_log_softmax", "softmin")
def _h_softmax(lw, node, args, kwargs) -> bool:
    x, dim = lw._val(args[0]), call_arg(args, kwargs, 1, "dim")
    if not x or not isinstance(dim, int):
        return False
    lw._emit(node, "softmax", [x], {"axis": dim})
    return True


@_handles("cat", "concat", "concatenate")
def _h_cat(lw, node, args, kwargs) -> bool:
    tensors, dim = call_arg(args, kwargs, 0, "tensors"), call_arg(args, kwargs, 1, "dim", 0)
    ins = [lw._val(t) for t in tensors]
    if not ins or any(v is None for v in ins) or not isinstance(dim, int):
        return False
    lw._emit(node, "concat", ins, {"axis": dim})
    return True


@_handles("stack")
def _h_stack(lw, node, args, kwargs) -> bool:
    tensors, dim = call_arg(args, kwargs, 0, "tensors"), call_arg(args, kwargs, 1, "dim", 0)
    ins = [lw._val(t) for t in tensors]
    if not ins or any(v is None for v in ins) or not isinstance(dim, int):
        return False
    lw._emit(node, "stack", ins, {"axis": dim})
    return True


@_handles("split", "chunk", "split_with_sizes", "tensor_split")
def _h_split(lw, node, args, kwargs) -> bool:
    fn = call_name(node)
    x = lw._val(args[0])
    if not x:
        return False
    metas = lw._meta_values(node)
    if any(s is None for s, _ in metas):
        return False
    dim = call_arg(args, kwargs, 2, "dim", 0)
    if fn == "tensor_split":
        spec = call_arg(args, kwargs, 1, "indices_or_sections", None)
        spec = kwargs.get("indices", kwargs.get("sections", spec))
        if isinstance(spec, int):  # sections: equal only when they divide the dim
            spec = None if lw.graph.shape(x)[dim] % spec else spec
    else:
        spec = call_arg(args, kwargs, 1, "chunks" if fn == "chunk" else "split_size_or_sections", None)
        if spec is None:
            spec = kwargs.get("split_size", kwargs.get("split_sizes"))
    if not isinstance(dim, int) or spec is None:
        return False
    ax = dim % len(lw.graph.shape(x))
    sizes = [s[ax] for s, _ in metas]
    equal = fn == "chunk" or isinstance(spec, int)
    if not equal and not (isinstance(spec, (list, tuple)) and all(isinstance(s, int) for s in spec)):
        return False
    if equal and len(set(sizes)) > 1 and fn in ("chunk", "split") and isinstance(spec, int) and resizable_split(node):
        # chunk(3) of 88 channels is 30, 30, 28: pruned apiece, the rewrite spells the sizes out (split(sizes))
        equal = False
    outs = lw._out(node)
    lw.graph.add_op(
        Op(node.name, "split", [x], outs, {"axis": dim, "sizes": sizes, "equal": equal}, node.name, target_label(node, lw.gm), node)
    )
    return True


def resizable_split(node: torch.fx.Node) -> bool:
    """A chunk/split by a size the rewrite can turn into a split with explicit sizes (the call forms it knows)."""
    if node.op == "call_method":
        return node.target in ("chunk", "split")
    return node.target in (torch.chunk, torch.split, torch.ops.aten.split.Tensor, torch.ops.aten.chunk.default)


@_handles("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "_unsafe_view")
def _h_reshape(lw, node, args, kwargs) -> bool:
    x = lw._val(args[0])
    if not x or len(lw._meta_values(node)) != 1:
        return False
    lw._emit(node, "reshape", [x])
    return True


@_handles("permute", "transpose", "t", "numpy_T", "swapaxes", "swapdims", "movedim")
def _h_permute(lw, node, args, kwargs) -> bool:
    fn = call_name(node)
    x = lw._val(args[0])
    if not x:
        return False
    rank = len(lw.graph.shape(x))
    if fn == "permute":
        dims = args[1:] if node.op == "call_method" and len(args) > 2 else call_arg(args, kwargs, 1, "dims")
        if isinstance(dims, int):
            dims = [dims]
        perm = [int(d) % rank for d in dims]
    elif fn in ("t", "numpy_T"):  # (numpy_T: torch.export's ``x.T``, as in Falcon's FalconLinear ``x @ W.T``)
        perm = list(range(rank))[::-1]
    elif fn == "movedim":
        src, dst = call_arg(args, kwargs, 1, "source"), call_arg(args, kwargs, 2, "destination")
        if not (isinstance(src, int) and isinstance(dst, int)):
            return False
        perm = list(range(rank))
        perm.insert(dst % rank, perm.pop(src % rank))
    else:
        a, b = call_arg(args, kwargs, 1, "dim0"), call_arg(args, kwargs, 2, "dim1")
        if not (isinstance(a, int) and isinstance(b, int)):
            return False
        perm = list(range(rank))
        perm[a % rank], perm[b % rank] = perm[b % rank], perm[a % rank]
    lw._emit(node, "permute", [x], {"perm": perm})
    return True


@_handles("matmul", "bmm", "mm", "__matmul__")
def _h_matmul(lw, node, args, kwargs) -> bool:
    a, b = lw._val(args[0]), lw._val(args[1])
    if not (a and b):
        return False
    lw._emit(node, "matmul", [a, b])
    return True


@_handles("lstm", "gru", "rnn_tanh", "rnn_relu")
def _h_recurrent_fn(lw, node, args, kwargs) -> bool:
    """aten.lstm / gru / rnn_tanh / rnn_relu (torch.export's nn.LSTM, ...): (x, hx, params, has_biases, num_layers,
    dropout, train, bidirectional, batch_first) -> a ``recurrent`` op, as the module is lowered."""
    if len(args) != 9 or not isinstance(args[2], (list, tuple)) or not isinstance(args[4], int):
        return False  # the packed-sequence overload (data, batch_sizes, ...) is not this
    cell = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn", "rnn_relu": "rnn"}[call_name(node)]
    x, hx, params, has_biases, layers, bidirectional = lw._val(args[0]), args[1], list(args[2]), args[3], args[4], args[7]
    states = [lw._val(h) for h in (hx if isinstance(hx, (list, tuple)) else [hx])]
    ws = [lw._val(p) for p in params]
    dirs = 2 if bidirectional else 1
    per = len(ws) // (layers * dirs) if layers * dirs else 0
    plain = 4 if has_biases else 2
    if not x or any(v is None for v in states + ws) or per not in (plain, plain + 1) or per * layers * dirs != len(ws):
        return False
    slots: list[str | None] = []
    for k in range(layers * dirs):
        w = ws[k * per : (k + 1) * per]
        slots += w[:2] + (w[2:4] if has_biases else [None, None]) + ([w[-1]] if per > plain else [None])
    hidden = lw.graph.shape(ws[1])[0] // {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    n_out = 3 if cell == "lstm" else 2
    if len(lw._meta_values(node)) != n_out:
        return False
    attrs = {
        "cell": cell, "gates": {"lstm": 4, "gru": 3, "rnn": 1}[cell], "layers": layers, "directions": dirs,
        "hidden": hidden, "proj": lw.graph.shape(ws[plain])[0] if per > plain else 0, "weights": "per_layer",
        "outputs": ["y", "h", "c"][:n_out], "y_concat": True, "batch_first": bool(args[8]),
    }  # fmt: skip
    h0, c0 = (states + [None, None])[:2]
    lw._emit(node, "recurrent", [x, h0, c0, None, *slots], attrs)
    return True


@_handles("addmm")
def _h_addmm(lw, node, args, kwargs) -> bool:
    """torch.addmm(bias, x, W) with beta = alpha = 1: ``addmm`` (passes/ops/addmm.py; transformers' Conv1D)."""
    b, x, w = lw._val(args[0]), lw._val(call_arg(args, kwargs, 1, "mat1")), lw._val(call_arg(args, kwargs, 2, "mat2"))
    if not (b and x and w) or kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
        return False
    lw._emit(node, "addmm", [x, w, b])
    return True


@_handles("normalize")
def _h_normalize(lw, node, args, kwargs) -> bool:
    """F.normalize(x, p, dim): x divided by its p-norm along dim."""
    x, p, dim = lw._val(args[0]), call_arg(args, kwargs, 1, "p", 2.0), call_arg(args, kwargs, 2, "dim", 1)
    if not x or not isinstance(p, (int, float)) or not isinstance(dim, int) or call_arg(args, kwargs, 4, "out") is not None:
        return False
    lw._emit(node, "normalize", [x], {"p": float(p), "axis": dim})
    return True


@_handles("einsum")
def _h_einsum(lw, node, args, kwargs) -> bool:
    eq = call_arg(args, kwargs, 0, "equation")
    operands = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    ins = [lw._val(a) for a in operands]
    if not isinstance(eq, str) or not ins or any(v is None for v in ins) or len(lw._meta_values(node)) != 1:
        return False
    lw._emit(node, "einsum", ins, {"equation": eq})
    return True


@_handles("scaled_dot_product_attention")
def _h_sdpa(lw, node, args, kwargs) -> bool:
    q, k, v = (lw._val(call_arg(args, kwargs, i, n)) for i, n in enumerate(("query", "key", "value")))
    mask = lw._val(call_arg(args, kwargs, 3, "attn_mask"))
    if not (q and k and v):
        return False
    lw._emit(node, "attention", [q, k, v, mask], {"scale": call_arg(args, kwargs, 6, "scale")})
    return True


@_handles("pad")
def _h_pad(lw, node, args, kwargs) -> bool:
    x, pads = lw._val(args[0]), call_arg(args, kwargs, 1, "pad")
    if not x or not isinstance(pads, (list, tuple)):
        return False
    if all(isinstance(p, int) for p in pads):
        lw._emit(node, "pad", [x], {"pads": list(pads)})
        return True
    # pad widths computed at run time: the dims that may be padded are the ones the pad list names
    rank = len(lw.graph.shape(x))
    zero = lambda p: isinstance(p, int) and p == 0  # noqa: E731
    dims = [rank - 1 - i for i in range(len(pads) // 2) if not (zero(pads[2 * i]) and zero(pads[2 * i + 1]))]
    lw._emit(node, "pad", [x], {"padded_dims": dims})
    return True


@_handles("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like", "full_like",
          "empty_like", "rand_like", "randn_like")
def _h_factory(lw, node, args, kwargs) -> bool:
    """A new tensor: only its shape comes from the input, never its values."""
    if len(lw._meta_values(node)) != 1:
        return False
    lw._emit(node, "factory", [])
    return True


@_handles("arange", "zeros", "ones", "full", "empty", "eye", "linspace", "logspace", "tensor", "scalar_tensor",
          "as_tensor", "rand", "randn", "randint")
def _h_new_tensor(lw, node, args, kwargs) -> bool:
    """torch.arange(n), torch.zeros(h, w): a tensor made from numbers (sizes read at run time included)."""
    if any(lw._is_tensor(a) for a in flat_args(node)) or len(lw._meta_values(node)) != 1:
        return False
    lw._emit(node, "factory", [])
    return True


@_handles("unfold")
def _h_unfold(lw, node, args, kwargs) -> bool:
    """F.unfold (im2col): [N, C, H, W] -> [N, C * kh * kw, L] (Tensor.unfold, a sliding window on one dim, is not this)."""
    x = lw._val(args[0])
    if node.op != "call_function" or not x or len(lw.graph.shape(x) or ()) != 4:
        return False
    lw._emit(node, "unfold", [x])
    return True


@_handles("type_as")
def _h_type_as(lw, node, args, kwargs) -> bool:
    """x.type_as(y): x's values in y's dtype; y gives only its dtype."""
    x = lw._val(args[0])
    if not x:
        return False
    lw._emit(node, "unary", [x], {"fn": "type_as"})
    return True


@_handles("cumsum", "cumprod", "cummax", "cummin", "logcumsumexp")
def _h_scan(lw, node, args, kwargs) -> bool:
    """A running sum along ``dim`` mixes the positions of that dim (frozen if it holds channels); others pass."""
    x, dim = lw._val(args[0]), call_arg(args, kwargs, 1, "dim")
    if not x or not isinstance(dim, int) or sum(lw._is_tensor(a) for a in flat_args(node)) != 1:
        return False
    if call_name(node) in ("cummax", "cummin"):  # (values, indices)
        return False
    lw._emit(node, "scan", [x], {"axis": dim})
    return True


@_handles("repeat", "tile")
def _h_tile(lw, node, args, kwargs) -> bool:
    """x.repeat(a, b, ...) / torch.tile: a dim repeated more than once is frozen if it holds channels."""
    x = lw._val(args[0])
    reps = list(args[1:]) if len(args) > 2 else args[1] if len(args) > 1 else kwargs.get("repeats", kwargs.get("dims"))
    if isinstance(reps, int):
        reps = [reps]
    if not x or not isinstance(reps, (list, tuple)) or len(reps) < len(lw.graph.shape(x)):
        return False
    lead = len(reps) - len(lw.graph.shape(x))  # reps longer than the rank add leading dims
    axes = [d - lead for d, r in enumerate(reps) if d >= lead and not (isinstance(r, int) and r == 1)]
    lw._emit(node, "repeat", [x], {"axes": axes, "lead": lead})
    return True


@_handles("index")
def _h_aten_index(lw, node, args, kwargs) -> bool:
    """aten.index.Tensor(x, [None, ..., idx]) (torch.export's x[..., idx]): one integer index tensor is a gather."""
    if not isinstance(node.target, torch._ops.OpOverload) or len(args) < 2 or not isinstance(args[1], (list, tuple)):
        return False
    x, idx = lw._val(args[0]), list(args[1])
    pos = [k for k, i in enumerate(idx) if i is not None]
    if not x or len(pos) != 1:
        return False
    i_val = lw._val(idx[pos[0]])
    if not i_val or "int" not in str(lw.graph.values[i_val].dtype):
        return False
    lw._emit(node, "take", [x, i_val], {"axis": pos[0]})
    return True


@_handles("roll")
def _h_roll(lw, node, args, kwargs) -> bool:
    x, dims = lw._val(args[0]), call_arg(args, kwargs, 2, "dims")
    if not x:
        return False
    rank = len(lw.graph.shape(x))
    dims = list(range(rank)) if dims is None else [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return False
    lw._emit(node, "roll", [x], {"dims": dims})
    return True


@_handles("getitem")
def _h_getitem(lw, node, args, kwargs) -> bool:
    """x[..., a:b] on one axis is a slice; anything else is unknown."""
    x, idx = lw._val(args[0]), args[1]
    if not x:
        return False
    idx = idx if isinstance(idx, tuple) else (idx,)
    tensors = [k for k, i in enumerate(idx) if isinstance(i, torch.fx.Node)]
    if tensors:  # x[..., index_tensor]: a gather of whole rows along one axis (Swin's relative position bias)
        k = tensors[0]
        i_val = lw._val(idx[k])
        if len(tensors) != 1 or not i_val or "int" not in str(lw.graph.values[i_val].dtype):
            return False
        if any(not (isinstance(i, slice) and i == slice(None)) for j, i in enumerate(idx) if j != k):
            return False
        lw._emit(node, "take", [x, i_val], {"axis": k})
        return True
    ints = [k for k, i in enumerate(idx) if isinstance(i, int) and not isinstance(i, bool)]
    if len(ints) == 1 and all(isinstance(i, slice) and i == slice(None) for k, i in enumerate(idx) if k != ints[0]):
        lw._emit(node, "select", [x], {"axis": ints[0], "index": idx[ints[0]]})
        return True
    if any(i is Ellipsis for i in idx) or any(not isinstance(i, slice) for i in idx):
        if all(i is None or (isinstance(i, slice) and i == slice(None)) or i is Ellipsis for i in idx):
            lw._emit(node, "reshape", [x])  # x[:, None] style unsqueeze
            return True
        items = _index_items(idx, lw.graph.shape(x), dynamic=True)
        if items is None:
            return False
        lw._emit(node, "index", [x], {"items": items})
        return True
    axes = [k for k, s in enumerate(idx) if s != slice(None)]
    if len(axes) == 0:
        lw._emit(node, "identity", [x], {"fn": "getitem"})
        return True
    s = idx[axes[0]]
    if len(axes) != 1 or not all(v is None or isinstance(v, int) for v in (s.start, s.stop, s.step)):
        items = _index_items(idx, lw.graph.shape(x), dynamic=True)
        if items is None:
            return False
        lw._emit(node, "index", [x], {"items": items})
        return True
    lw._emit(node, "slice", [x], {"axis": axes[0], "start": s.start, "stop": s.stop, "step": s.step})
    return True


@_handles("setitem")
def _h_setitem(lw, node, args, kwargs) -> bool:
    """x[index] = v in place (basic indexing): v is written into x's indexed positions."""
    x, idx, v = lw._val(args[0]), args[1], args[2]
    if not x or lw.graph.shape(x) is None:
        return False
    idx = idx if isinstance(idx, tuple) else (idx,)
    items = _index_items(idx, lw.graph.shape(x))
    if items is None:
        return False
    ins = [x]
    if isinstance(v, torch.fx.Node):
        val = lw._val(v)
        if not val or lw.graph.shape(val) is None:
            return False
        ins.append(val)
    elif not isinstance(v, (int, float, bool)):
        return False
    lw._emit(node, "setitem", ins, {"items": items})
    return True


@_handles("repeat_interleave")
def _h_repeat_interleave(lw, node, args, kwargs) -> bool:
    """repeat_interleave(x, repeats, dim): every index of ``dim`` repeated; other dims keep their channels."""
    x = lw._val(args[0])
    dim = call_arg(args, kwargs, 2, "dim", None)  # repeats (an int, a size read at run time, or a tensor) only sizes that dim
    if not x or not isinstance(dim, int) or len(lw._meta_values(node)) != 1:
        return False
    lw._emit(node, "repeat", [x], {"axes": [dim]})
    return True


@_handles("expand", "expand_as")
def _h_expand(lw, node, args, kwargs) -> bool:
    x = lw._val(args[0])
    if not x or len(lw._meta_values(node)) != 1:
        return False
    lw._emit(node, "expand", [x])
    return True


@_handles("unbind")
def _h_unbind(lw, node, args, kwargs) -> bool:
    x, dim = lw._val(args[0]), call_arg(args, kwargs, 1, "dim", 0)
    if not x or not isinstance(dim, int) or any(s is None for s, _ in lw._meta_values(node)):
        return False
    outs = lw._out(node)
    lw.graph.add_op(Op(node.name, "unbind", [x], outs, {"axis": dim}, node.name, target_label(node, lw.gm), node))
    return True


@_handles("select")
def _h_select(lw, node, args, kwargs) -> bool:
    x, dim, index = lw._val(args[0]), call_arg(args, kwargs, 1, "dim"), call_arg(args, kwargs, 2, "index")
    if not x or not isinstance(dim, int) or not isinstance(index, int):
        return False
    lw._emit(node, "select", [x], {"axis": dim, "index": index})
    return True


def _index_items(idx: tuple, shape: tuple[int, ...], dynamic: bool = False) -> list[tuple] | None:
    """Basic indexing (ints, slices, None, one Ellipsis) as per-dim items in input order.

    With ``dynamic``, a slice whose bounds are computed at run time (``x[:, :H]``
    with ``H`` read off a shape: timm's Swin crops its padding so) is a
    ``("dslice", d, k)`` item (``k``: its place in ``idx``); the rule freezes that dim.
    """
    if sum(i is Ellipsis for i in idx) > 1:
        return None
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if n_real > len(shape):
        return None
    items: list[tuple] = []
    d = 0
    for k, i in enumerate(idx):
        if i is Ellipsis:
            for _ in range(len(shape) - n_real):
                items.append(("slice", d, None, None, None))
                d += 1
        elif i is None:
            items.append(("new",))
        elif isinstance(i, slice) and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (i.start, i.stop, i.step)):
            items.append(("slice", d, i.start, i.stop, i.step))
            d += 1
        elif isinstance(i, int) and not isinstance(i, bool):
            items.append(("int", d, i))
            d += 1
        elif dynamic and isinstance(i, slice) and all(v is None or isinstance(v, (int, torch.fx.Node)) for v in (i.start, i.stop, i.step)):
            items.append(("dslice", d, k))  # k: where the slice is in the index (its bounds are nodes)
            d += 1
        else:
            return None
    while d < len(shape):
        items.append(("slice", d, None, None, None))
        d += 1
    return items


@_handles("narrow")
def _h_narrow(lw, node, args, kwargs) -> bool:
    x, dim, start, length = lw._val(args[0]), args[1], args[2], args[3]
    if not x or not all(isinstance(v, int) for v in (dim, start, length)):
        return False
    lw._emit(node, "slice", [x], {"axis": dim, "start": start, "stop": start + length, "step": 1})
    return True


@_handles("slice")
def _h_aten_slice(lw, node, args, kwargs) -> bool:
    """aten.slice.Tensor(x, dim, start, end, step) (torch.export's form of x[..., a:b])."""
    if not isinstance(node.target, torch._ops.OpOverload):
        return False
    x = lw._val(args[0])
    dim, start, end, step = (call_arg(args, kwargs, i, k, d) for i, k, d in ((1, "dim", 0), (2, "start", None), (3, "end", None), (4, "step", 1)))
    if not x or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (dim, start, end, step)):
        return False
    lw._emit(node, "slice", [x], {"axis": dim, "start": start, "stop": end, "step": step})
    return True


def lower(gm: torch.fx.GraphModule) -> tuple[ChannelGraph, dict[str, list[str]]]:
    lw = _Lowering(gm)
    graph = lw.run()
    return graph, lw.node_values


def module_scope(node: torch.fx.Node, label: str) -> list[tuple[str, str]] | None:
    """The modules enclosing a node, outermost first, as (path, class name): from the tracer's
    ``nn_module_stack`` (torch.export) or, for a module call, its dotted path."""
    stack = node.meta.get("nn_module_stack")
    if isinstance(stack, Mapping) and stack:
        scopes: list[tuple[str, str]] = []
        for entry in stack.values():
            path, cls = entry if isinstance(entry, tuple) and len(entry) == 2 else (str(entry), "")
            path = str(path)
            tname = getattr(cls, "__name__", str(cls).rsplit(".", 1)[-1])
            if path and (not scopes or scopes[-1][0] != path):
                scopes.append((path, tname))
        if scopes and scopes[-1][0] == label:  # a module call: the module is the op, not its block
            scopes.pop()
        return scopes
    if node.op == "call_module" and "." in label:
        parts = label.split(".")
        return [(".".join(parts[: i + 1]), "") for i in range(len(parts) - 1)]
    return None


def const_view(tensor: torch.Tensor) -> np.ndarray:
    """A constant's values as a numpy array that shares the tensor's memory where numpy has its dtype
    (bfloat16 through ``ml_dtypes``): the analysis of a large model holds no second copy of its weights.
    Readers that compute (criteria) convert to float64 a tensor, or a chunk of one, at a time."""
    t = tensor.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
        return t.float().numpy()  # float8 and other types numpy has no name for
    return t.numpy()
