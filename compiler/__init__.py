"""prunec: a graph-rewriting model compiler for structured pruning.

``compiler.compile(model, example_inputs, ratio=0.5)`` returns a smaller dense
model of the same kind, its report, and a callable that runs it.
"""

from typing import TYPE_CHECKING, Any

from compiler.api import CompileResult, compile
from compiler.report import Report
from frontends.errors import (
    InternalError,
    InvalidArgumentError,
    PrunecError,
    TraceError,
    UnsupportedModelError,
    VerificationError,
)

__all__ = [
    "compile",
    "CompileResult",
    "Report",
    "PrunecError",
    "InvalidArgumentError",
    "TraceError",
    "UnsupportedModelError",
    "VerificationError",
    "InternalError",
    "iterative_prune",
    "lottery_ticket",
    "rewind",
    "MagnitudePruner",
    "sparsify_and_compact",
    "SparsityRegularizer",
    "group_weight_decay",
    "bn_l1",
    "distributed_compile",
    "compile_pretrained",
    "verify_pretrained",
]
__version__ = "0.1.0"

# The workflows (compiler/workflows/) import torch; they load on first use so that
# ``import compiler`` stays free of it.
_WORKFLOWS = (
    "iterative_prune",
    "lottery_ticket",
    "rewind",
    "MagnitudePruner",
    "sparsify_and_compact",
    "SparsityRegularizer",
    "group_weight_decay",
    "bn_l1",
    "distributed_compile",
)
_PRETRAINED = ("compile_pretrained", "verify_pretrained")  # checkpoint folders disk to disk (compiler.pretrained)
if TYPE_CHECKING:
    from compiler.pretrained import compile_pretrained, verify_pretrained
    from compiler.workflows import (
        MagnitudePruner,
        SparsityRegularizer,
        bn_l1,
        distributed_compile,
        group_weight_decay,
        iterative_prune,
        lottery_ticket,
        rewind,
        sparsify_and_compact,
    )


def __getattr__(name: str) -> Any:
    if name in _WORKFLOWS:
        from compiler import workflows

        return getattr(workflows, name)
    if name in _PRETRAINED:
        from compiler import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'compiler' has no attribute {name!r}")
