"""Typed errors of prunec (re-exported by :mod:`compiler`)."""

from __future__ import annotations

__all__ = [
    "PrunecError",
    "InvalidArgumentError",
    "TraceError",
    "UnsupportedModelError",
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


class VerificationError(PrunecError):
    """The pruned model does not match the original with the removed channels zeroed."""

    def __init__(self, message: str, max_abs_error: float | None = None) -> None:
        super().__init__(message)
        self.max_abs_error = max_abs_error
