"""The torch adapter's parts of the op specs: rewrite handlers, reference semantics, recorded attributes.

* a user's own leaf module (a spec under its class name) keeps its call, has its rule
  applied and its attributes updated by its own torch rewrite handler;
* every built-in handler the torch rewrite used to dispatch by hand is on its spec;
* conv geometry is recorded in ``op.attrs`` the same way for modules, functional
  calls and torch.export's ATen graph.
"""

from __future__ import annotations

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from _checks import prune

import frontends.torch  # noqa: F401  (registers the torch handlers)
from frontends.errors import InternalError
from frontends.torch import load_torch
from frontends.torch.lower import lower
from passes.ops import SPECS, OpSpec, op_spec


class MyScale(nn.Module):
    """A user's per-channel scale whose forward reads its own channel count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, self.channels, 1, 1)


class ScaleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.scale, self.c2 = nn.Conv2d(3, 16, 3, padding=1), MyScale(16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c2(F.relu(self.scale(self.c1(x))))


def _my_scale_rule(op, ctx):
    x, w = op.inputs  # the module's input, then its parameters
    xl = ctx.get(x)
    ctx.tie(xl[1], ctx.get(w)[0], "MyScale: one scale per channel")
    ctx.set(op.outputs[0], xl)


def _my_scale_rewrite(rw, op, target) -> bool:
    if not isinstance(target, MyScale):
        return False
    return rw.set_attrs(target, channels=rw.pruned_shape(op.outputs[0])[1])


def _called_modules(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_module"]


def test_a_user_module_without_a_spec_is_traced_through():
    torch.manual_seed(0)
    traced = load_torch(ScaleNet().eval(), (torch.randn(2, 3, 6, 6),))
    assert "scale" not in _called_modules(traced.gm)


def test_a_user_module_with_a_rule_stays_a_leaf_and_its_handler_updates_it(monkeypatch):
    torch.manual_seed(0)
    m, x = ScaleNet().eval(), torch.randn(2, 3, 6, 6)
    monkeypatch.setitem(SPECS, "MyScale", OpSpec("MyScale", rule=_my_scale_rule))  # undone after the test

    # the rule alone: analysed and sliced, but the module's own channel count is stale
    with pytest.raises(InternalError, match=r"RuntimeError: shape '\[1, 16, 1, 1\]' is invalid"):
        prune(m, x)

    op_spec("MyScale").rewriter("torch")(_my_scale_rewrite)
    r = prune(m, x)
    assert "scale" in _called_modules(r.model)  # kept a leaf, called as the module
    assert r.report.frozen_ops == []
    assert r.model.get_submodule("c1").out_channels == 8
    assert r.model.get_submodule("scale").channels == 8 and r.model.get_submodule("scale").weight.shape == (8,)
    with torch.no_grad():
        assert r(x).shape == m(x).shape


def test_every_hand_dispatched_kind_has_a_torch_handler():
    kinds = ["conv", "linear", "batch_norm", "instance_norm", "layer_norm", "group_norm", "prelu", "embedding",
             "reshape", "expand", "attention", "split", "slice", "index", "setitem", "unary", "binary", "reduce"]  # fmt: skip
    assert [k for k in kinds if "torch" not in SPECS[k].rewrite] == []
    assert sorted(k for k, s in SPECS.items() if "torch" in s.reference) == ["group_norm", "layer_norm", "recurrent"]


class Convs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1, padding_mode="reflect")
        self.b = nn.Conv2d(8, 8, 3, padding="same", dilation=2, groups=4)
        self.w = nn.Parameter(torch.randn(8, 8, 3))

    def forward(self, x):
        y = self.b(self.a(x))
        return F.conv1d(y.flatten(2), self.w, stride=2, padding=1)


def _conv_attrs(graph) -> list[dict]:
    return [{k: op.attrs.get(k) for k in ("stride", "padding", "dilation", "padding_mode", "groups")}
            for op in graph.ops.values() if op.kind == "conv"]  # fmt: skip


def test_conv_geometry_is_recorded():
    x = torch.randn(1, 3, 8, 8)
    want = [
        {"stride": (2, 2), "padding": (1, 1), "dilation": (1, 1), "padding_mode": "reflect", "groups": 1},
        {"stride": (1, 1), "padding": "same", "dilation": (2, 2), "padding_mode": "zeros", "groups": 4},
        {"stride": (2,), "padding": (1,), "dilation": (1,), "padding_mode": "zeros", "groups": 1},
    ]
    assert _conv_attrs(load_torch(Convs().eval(), (x,)).graph) == want


def test_conv_geometry_is_recorded_from_aten():
    """torch.export's aten.convolution has explicit padding (the reflect pad is an op of its own)."""
    m = Convs().eval()
    m.a.padding_mode = "zeros"
    m.b.padding = (2, 2)
    x = torch.randn(1, 3, 8, 8)
    graph, _ = lower(torch.export.export(m, (x,), strict=False).module())
    got = _conv_attrs(graph)
    assert [g["stride"] for g in got] == [(2, 2), (1, 1), (2,)]
    assert [g["padding"] for g in got] == [(1, 1), (2, 2), (1,)]
    assert [g["dilation"] for g in got] == [(1, 1), (2, 2), (1,)]
    assert [g["groups"] for g in got] == [1, 4, 1]
