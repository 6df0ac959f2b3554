"""Typed errors of prunec (re-exported by :mod:`compiler`).

Two families, one per CLI exit code: :class:`PrunecError` and its subclasses are the user's
input at fault (exit code 2); :class:`InternalError` and its subclasses are prunec's own
failure on an input it accepted (exit code 1).
"""

from __future__ import annotations

__all__ = [
    "PrunecError",
    "InvalidArgumentError",
    "TraceError",
    "UnsupportedModelError",
    "InternalError",
    "VerificationError",
]


class PrunecError(Exception):
    """Base class: bad input or an unsupported model (CLI exit code 2)."""


class InvalidArgumentError(PrunecError, ValueError):
    """An argument of ``compile`` or the CLI is out of range or of the wrong kind."""


class TraceError(PrunecError):
    """The model could be traced neither by torch.fx nor by torch.export."""

    def __init__(self, message: str, module: str | None = None, location: str | None = None) -> None:
        super().__init__(message)
        self.module = module
        self.location = location


class UnsupportedModelError(PrunecError):
    """The model or its inputs are of a kind prunec cannot handle."""


class InternalError(Exception):
    """prunec failed on an input it accepted: a bug of prunec, not of the input (CLI exit code 1).

    Raise it where prunec's own result fails prunec's own check: a verification mismatch, a
    failed post-rewrite check (shapes, MACs or parameters that differ from the plan), a pruned
    model that does not re-trace or does not pass the ONNX checker. Deliberately not a
    :class:`PrunecError`: ``except PrunecError`` (the user's fault) must not catch it. Input
    that prunec cannot handle is :class:`UnsupportedModelError` instead, raised before pruning.
    """


class VerificationError(InternalError):
    """The pruned model does not match the original with the removed channels zeroed."""

    def __init__(self, message: str, max_abs_error: float | None = None) -> None:
        super().__init__(message)
        self.max_abs_error = max_abs_error
