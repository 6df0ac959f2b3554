"""Typed errors: what cannot be traced, run, or asked for is refused with a clear, typed error."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import compiler
from compiler import InternalError, InvalidArgumentError, PrunecError, TraceError, UnsupportedModelError


class DataDependentGate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow: neither torch.fx nor torch.export can trace it
            return x * 2
        return x


GATE_LINE = inspect.getsourcelines(DataDependentGate.forward)[1] + 1


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), DataDependentGate())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.body(x))


def small() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 4, 1))


X = torch.randn(1, 3, 8, 8)


def test_input_errors_are_prunec_errors_and_prunec_failures_are_internal_errors():
    """Two families, one per exit code: ``except PrunecError`` (the input's fault) never catches prunec's own failure."""
    for cls in (InvalidArgumentError, TraceError, UnsupportedModelError):
        assert issubclass(cls, PrunecError) and not issubclass(cls, InternalError)
    assert not issubclass(InternalError, PrunecError)
    # a verification failure on an input prunec accepted is prunec's failure; its name and fields stay
    assert issubclass(compiler.VerificationError, InternalError) and not issubclass(compiler.VerificationError, PrunecError)
    err = compiler.VerificationError("differs by 0.5", max_abs_error=0.5)
    assert err.max_abs_error == 0.5 and str(err) == "differs by 0.5"


def test_untraceable_model_raises_trace_error_naming_module_and_line():
    with pytest.raises(TraceError) as info:
        compiler.compile(Untraceable(), (X,), ratio=0.5)
    err = info.value
    msg = str(err)
    assert "body.2" in msg and "DataDependentGate" in msg
    where = f"{os.path.basename(__file__)}:{GATE_LINE}"
    assert where in msg, msg
    assert "x.sum() > 0" in msg
    assert err.module is not None and "body.2" in err.module
    assert err.location is not None and err.location.startswith(__file__) and f":{GATE_LINE}" in err.location
    assert "\n" not in msg  # one line


class GateNamedThis(nn.Module):
    def forward(this, x):  # noqa: N805  (the first argument is not called self)
        if x.sum() > 0:
            return x * 2
        return x


class TwoGates(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.blocks = nn.Sequential(nn.ReLU(), GateNamedThis())

    def forward(self, x):
        return self.blocks(self.conv(x))


def test_trace_error_names_the_module_path_and_class_never_nonetype():
    """The failing module is named ``path (Class)`` whatever its forward calls its first argument; the root by its class."""
    with pytest.raises(TraceError) as info:
        compiler.compile(TwoGates(), (X,), ratio=0.5)
    msg = str(info.value)
    assert "NoneType" not in msg, msg
    assert "module blocks.1 (GateNamedThis)" in msg and info.value.module == "blocks.1 (GateNamedThis)"
    with pytest.raises(TraceError) as info:
        compiler.compile(GateNamedThis(), (X,), ratio=0.5)
    msg = str(info.value)
    assert "NoneType" not in msg and "module GateNamedThis at" in msg, msg
    assert info.value.module == "GateNamedThis"


def test_failures_print_nothing_of_their_own(capfd):
    """torch.export and ShapeProp print tracebacks and graph dumps; the user gets the exception only."""
    with pytest.raises(TraceError):
        compiler.compile(Untraceable(), (X,))
    with pytest.raises(UnsupportedModelError) as info:
        compiler.compile(small(), (torch.randn(1, 4, 8, 8),))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    msg = str(info.value)
    assert "\n" not in msg and "in 0" in msg and "expected input[1, 4, 8, 8] to have 3 channels" in msg


def test_symbolic_trace_failure_falls_back_to_torch_export():
    """Shape-dependent control flow defeats torch.fx but not torch.export: it compiles."""

    class ShapeBranch(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = torch.relu(self.c1(x))
            if y.shape[-1] > 4:
                y = y * 2
            return self.c2(y)

    r = compiler.compile(ShapeBranch(), (X,), ratio=0.5, granularity=1)
    assert r.report.trace_method == "torch.export"
    assert r.report.verification["passed"]
    assert r.report.macs_after < r.report.macs_before
    assert [o.target for o in r.report.frozen_ops] == []  # torch.export's input guards are checks, not unknown ops


def test_torch_export_forms_of_interpolate_and_gather():
    """Under torch.export, bicubic interpolation and x[:, idx] are aten ops (upsample_bicubic2d, index.Tensor)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 4, 1)
            self.register_buffer("idx", torch.tensor([0, 2, 1, 3]))

        def forward(self, x):
            y = torch.relu(self.c1(x))
            if y.shape[-1] > 4:  # defeats torch.fx
                y = F.interpolate(y, scale_factor=2, mode="bicubic")
            y = y[:, :, self.idx]  # rows gathered along H
            return self.c2(y)

    r = compiler.compile(Net(), (X,), ratio=0.5, granularity=1)
    assert r.report.trace_method == "torch.export"
    assert [o.target for o in r.report.frozen_ops] == []
    assert r.report.verification["passed"] and r.report.macs_after < r.report.macs_before


@pytest.mark.parametrize(
    "inputs",
    [(torch.randn(1, 4, 8, 8),), (torch.randn(3, 8, 8, 2, 2),), (torch.randn(1, 3, 8, 8, dtype=torch.float64).long(),)],
    ids=["channels", "rank", "dtype"],
)
def test_wrong_input_shape_raises_unsupported_model_error(inputs):
    with pytest.raises(UnsupportedModelError) as info:
        compiler.compile(small(), inputs, ratio=0.5)
    assert "does not run on the example inputs" in str(info.value)


@pytest.mark.parametrize(
    "kw",
    [
        {"ratio": 1.5},
        {"ratio": 1.0},
        {"ratio": -0.1},
        {"ratio": "0.5"},
        {"ratio": 0.5, "threshold": 0.1},
        {"ratio": 0.5, "target_macs": 0.5},
        {"threshold": 0.1, "target_macs": 0.5},
        {"target_macs": 0.0},
        {"target_macs": -3},
        {"importance": "magic"},
        {"equalization": "median"},
        {"normalizer": "l3"},
        {"granularity": 0},
        {"granularity": 2.5},
        {"min_channels": 0},
        {"scope": "everywhere"},
    ],
    ids=str,
)
def test_bad_arguments_raise_invalid_argument_error(kw):
    with pytest.raises(InvalidArgumentError):
        compiler.compile(small(), (X,), **kw)


def test_invalid_argument_error_is_a_value_error_and_names_the_argument():
    with pytest.raises(ValueError, match="granularity"):
        compiler.compile(small(), (X,), granularity=0)
    with pytest.raises(InvalidArgumentError, match="magic"):
        compiler.compile(small(), (X,), importance="magic")


def test_missing_example_inputs():
    with pytest.raises(InvalidArgumentError):
        compiler.compile(small(), None)


@pytest.mark.parametrize("model", [42, object(), [nn.Conv2d(3, 4, 1)], nn.Conv2d], ids=["int", "object", "list", "class"])
def test_non_module_raises_unsupported_model_error(model):
    with pytest.raises(UnsupportedModelError):
        compiler.compile(model, (X,), ratio=0.5)


@pytest.mark.parametrize("inputs", [([1.0, 2.0],), ("x",), ({"x": X},)], ids=["list", "str", "dict"])
def test_non_tensor_example_inputs(inputs):
    with pytest.raises(UnsupportedModelError):
        compiler.compile(small(), inputs, ratio=0.5)


def test_a_bare_tensor_is_accepted_as_example_inputs():
    r = compiler.compile(small(), X, ratio=0.5, granularity=1)
    assert r.report.verification["passed"]


def test_errors_leave_the_callers_model_alone():
    m = Untraceable()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(TraceError):
        compiler.compile(m, (X,))
    assert all(torch.equal(state[k], v) for k, v in m.state_dict().items())
