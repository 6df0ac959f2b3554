"""prunec: a graph-rewriting model compiler for structured pruning.

``compiler.compile(model, example_inputs, ratio=0.5)`` returns a smaller dense
model of the same kind, its report, and a callable that runs it.
"""

from compiler.api import CompileResult, compile
from compiler.report import Report
from frontends.errors import (
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
]
__version__ = "0.1.0"
