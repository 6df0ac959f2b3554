"""Example inputs for ``prunec inspect``: what a model factory returns, or an ``.npz`` file.

A factory (``package.module:function``) returns a model, or ``(model, example_inputs)``
where the inputs are a tensor, a tuple of tensors, or a dict of keyword inputs
named by the model's ``forward`` arguments. ``--inputs FILE.npz`` holds arrays in the
order of the forward arguments (``np.savez(f, ids)``: ``arr_0``, ``arr_1``, ...) or named
by argument name (``np.savez(f, input_ids=ids)``); their dtypes are kept, so int64
token ids stay token ids.
"""

from __future__ import annotations

import inspect
import logging
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from frontends.errors import InvalidArgumentError

log = logging.getLogger(__name__)

__all__ = [
    "split_factory_result", "positional_inputs", "read_inputs_file", "forward_arguments",
    "torch_inputs_from_file", "onnx_inputs_from_file",
]  # fmt: skip


def split_factory_result(obj: Any, spec: str) -> tuple[Any, Any]:
    """``(model, example_inputs or None)`` from what a factory returned: a model, or a pair (model, inputs)."""
    if isinstance(obj, (tuple, list)):
        if len(obj) != 2:
            raise InvalidArgumentError(
                f"{spec}: the factory returned a {type(obj).__name__} of {len(obj)} items; "
                "return a model, or (model, example_inputs)"
            )
        model, inputs = obj
        if isinstance(inputs, Mapping):
            inputs = positional_inputs(model, inputs, f"{spec}: example inputs")
        elif not isinstance(inputs, (tuple, list)):
            inputs = (inputs,)
        return model, tuple(inputs)
    return obj, None


def forward_arguments(model: Any) -> list[str]:
    """Names of the arguments of ``model.forward`` (or of the callable), in order; [] when unknown."""
    fn = getattr(model, "forward", model)
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def positional_inputs(model: Any, named: Mapping[str, Any], where: str) -> tuple[Any, ...]:
    """Keyword inputs as positional ones, in the order of ``forward``'s arguments.

    The names must be forward arguments and must fill its first arguments without a gap
    (``input_ids`` alone, or ``input_ids`` and ``attention_mask``): the compiler traces
    positional inputs only.
    """
    args = forward_arguments(model)
    if not named:
        raise InvalidArgumentError(f"{where}: no inputs given")
    unknown = [k for k in named if k not in args]
    if unknown:
        shown = ", ".join(args[:8]) + (" ..." if len(args) > 8 else "")
        raise InvalidArgumentError(f"{where}: {', '.join(map(repr, unknown))} not an argument of forward({shown})")
    first_missing = next((a for a in args if a not in named), None)
    taken = [a for a in args if a in named]
    if first_missing is not None and args.index(first_missing) < args.index(taken[-1]):
        raise InvalidArgumentError(
            f"{where}: gives {taken[-1]!r} but not {first_missing!r} before it; "
            f"give the first arguments of forward in order ({', '.join(args[: args.index(taken[-1]) + 1])})"
        )
    return tuple(named[a] for a in taken)


def load_npz(path: str, where: str, hint: str) -> dict[str, Any]:
    """The arrays of an ``.npz`` file by name, read without pickles; a missing file, another format or an
    object array is an :class:`InvalidArgumentError` starting with ``where`` and ending with ``(hint)``."""
    import numpy as np

    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{where}: no such file")
    if not zipfile.is_zipfile(path):
        raise InvalidArgumentError(f"{where}: is not an .npz file ({hint})")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        what = "holds an object array (not loaded: no pickles)" if "pickle" in str(exc) else "is not an .npz file"
        raise InvalidArgumentError(f"{where}: {what} ({hint})") from None


def read_inputs_file(path: str, names: Sequence[str]) -> tuple[list[str] | None, list[Any]]:
    """The arrays of an ``.npz`` file: ``(None, arrays)`` when saved positionally (``arr_0``, ``arr_1``, ...),
    else ``(their names, arrays)`` with every name one of ``names`` (the model's inputs), in that order."""
    data = load_npz(path, f"--inputs {path}", "write it with numpy.savez")
    if not isinstance(data, dict) or not data:
        raise InvalidArgumentError(f"--inputs {path}: holds no arrays (write it with numpy.savez)")
    for k, arr in data.items():
        if arr.dtype.kind not in "biuf":
            raise InvalidArgumentError(
                f"--inputs {path}: array {k!r} has dtype {arr.dtype}; expected numbers or booleans"
            )
        if arr.ndim == 0:
            raise InvalidArgumentError(f"--inputs {path}: array {k!r} is a scalar; an input needs a batch dimension")
    positional = [f"arr_{i}" for i in range(len(data))]
    if sorted(data) == sorted(positional):
        return None, [data[k] for k in positional]
    unknown = [k for k in data if k not in names]
    if unknown:
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise InvalidArgumentError(
            f"--inputs {path}: {', '.join(map(repr, unknown))} names no input of the model ({shown}); "
            "name arrays by input, or save them in order (numpy.savez(f, a, b))"
        )
    ordered = [n for n in names if n in data]
    return ordered, [data[n] for n in ordered]


def torch_inputs_from_file(path: str, model: Any) -> tuple[Any, ...]:
    """A PyTorch model's example inputs from an ``.npz`` file (dtypes kept)."""
    import torch

    args = forward_arguments(model)
    names, arrays = read_inputs_file(path, args)
    tensors = [torch.from_numpy(a.copy()) for a in arrays]
    if names is None:
        if args and len(tensors) > len(args):
            raise InvalidArgumentError(f"--inputs {path}: {len(tensors)} arrays for forward({', '.join(args)})")
        return tuple(tensors)
    return positional_inputs(model, dict(zip(names, tensors, strict=True)), f"--inputs {path}")


def onnx_inputs_from_file(path: str, input_names: Sequence[str]) -> dict[str, Any]:
    """An ONNX model's example inputs from an ``.npz`` file, by graph input name."""
    names, arrays = read_inputs_file(path, input_names)
    if names is None:
        if len(arrays) != len(input_names):
            raise InvalidArgumentError(
                f"--inputs {path}: {len(arrays)} arrays for the model's {len(input_names)} inputs {list(input_names)}"
            )
        names = list(input_names)
    missing = [n for n in input_names if n not in names]
    if missing:
        raise InvalidArgumentError(f"--inputs {path}: no array for the model's input(s) {missing}")
    return dict(zip(names, arrays, strict=True))
