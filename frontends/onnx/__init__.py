"""ONNX frontend: load an ONNX model and lower it to a ChannelGraph.

One concern per module:

- :mod:`~frontends.onnx.load`: read a path or ``ModelProto`` of opset 7 or later (below 13: upgraded on a private copy), with the
  external-data security checks and the consistency checks the analysis relies on;
- :mod:`~frontends.onnx.inputs`: the example inputs (the user's, checked, or random ones);
- :mod:`~frontends.onnx.runtime`: ONNX Runtime sessions and runs;
- :mod:`~frontends.onnx.large`: models over protobuf's 2 GB limit (checked on their path, inferred and run on
  light copies);
- :mod:`~frontends.onnx.shapes`: static shapes (shape inference, then one ONNX Runtime run for the
  rest) and the shape arithmetic of Slice and Reshape;
- :mod:`~frontends.onnx.evaluate`: the static values, evaluated once with the reference evaluator;
- :mod:`~frontends.onnx.lower` and :mod:`~frontends.onnx.handlers`: the lowering, one handler per
  op type;
- :mod:`~frontends.onnx.model`: what they give (:class:`OnnxModel`, :class:`ArgSlot`);
- :mod:`~frontends.onnx.frontend`: :func:`load_onnx`, the steps above in order;
- :mod:`~frontends.onnx.proto`: small helpers over ONNX protos the others share;
- :mod:`~frontends.onnx.rewrite` and :mod:`~frontends.onnx.rewrite_ops`: the rewrite pass (constants
  sliced, static values re-evaluated) and the ONNX rewrite handler of each op kind, on the op specs;
- :mod:`~frontends.onnx.rewrite_recurrent`: LSTM / GRU / RNN (lowering, rewrite, reference semantics);
- :mod:`~frontends.onnx.quantized`: QDQ models (codes behind DequantizeLinear, activation quantizers), the
  schemes refused, and their rewrite and verification rules;
- :mod:`~frontends.onnx.verify`: the pruned model against the masked original in ONNX Runtime, with
  the ONNX reference semantics of the ops where zeroing is not the reference;
- :mod:`~frontends.onnx.adapter`: :class:`OnnxAdapter`, the pipeline's view of all of the above.

Importing the package registers the ONNX rewrite handlers and reference semantics on the op specs
(:mod:`passes.ops`).
"""

from frontends.onnx import rewrite_ops, rewrite_recurrent, verify  # noqa: F401  (register the ONNX handlers on the op specs)
from frontends.onnx.adapter import OnnxAdapter
from frontends.onnx.evaluate import constant_value, evaluate_static, static_candidates
from frontends.onnx.frontend import load_onnx, lower_onnx
from frontends.onnx.inputs import MAX_EXAMPLE_ELEMENTS, check_input_size, make_example_inputs
from frontends.onnx.load import MIN_OPSET, load_proto
from frontends.onnx.model import ArgSlot, OnnxModel
from frontends.onnx.proto import (
    UniqueNames,
    all_tensors,
    implicit_inputs,
    node_attrs,
    numpy_dtype,
    onnx_opset,
    real_inputs,
    tensor_dims,
    to_numpy,
)
from frontends.onnx.rewrite import OnnxRewrite, RewriteONNX, RewriteOnnxResult
from frontends.onnx.runtime import ort_session, ort_values, run_ort
from frontends.onnx.shapes import infer_shapes, reshape_result, slice_range
from frontends.onnx.verify import MaskedReference, VerifyONNX, masked_reference

__all__ = [
    "MAX_EXAMPLE_ELEMENTS",
    "MIN_OPSET",
    "ArgSlot",
    "MaskedReference",
    "OnnxAdapter",
    "OnnxModel",
    "OnnxRewrite",
    "RewriteONNX",
    "RewriteOnnxResult",
    "VerifyONNX",
    "UniqueNames",
    "all_tensors",
    "check_input_size",
    "constant_value",
    "evaluate_static",
    "implicit_inputs",
    "infer_shapes",
    "load_onnx",
    "load_proto",
    "lower_onnx",
    "make_example_inputs",
    "masked_reference",
    "node_attrs",
    "numpy_dtype",
    "onnx_opset",
    "ort_session",
    "ort_values",
    "real_inputs",
    "reshape_result",
    "run_ort",
    "slice_range",
    "static_candidates",
    "tensor_dims",
    "to_numpy",
]
