"""Op knowledge: one :class:`OpSpec` per op kind, defined by family.

Importing this package registers every built-in spec. Adapters attach their
rewrite and verification handlers to the same specs (``frontends/torch``,
``frontends/onnx``); users register their own layers the same way
(docs/extending.md).
"""

from passes.ops import addmm, elementwise, indexing, layers, norms, recurrent, shapes  # noqa: F401  (registers the built-in specs)
from passes.ops.common import parse_einsum, reshape_groups, strided_blocks
from passes.ops.context import Producer, RuleContext
from passes.ops.spec import SPECS, ChannelRead, OpSpec, lookup, op_spec, register

__all__ = [
    "OpSpec", "ChannelRead", "SPECS", "op_spec", "lookup", "register", "RuleContext", "Producer",
    "parse_einsum", "reshape_groups", "strided_blocks",
]  # fmt: skip
