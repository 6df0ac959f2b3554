"""Every op kind of the op specs (passes/ops), one tiny model at a time.

Each test compiles with ``ratio=0.5, granularity=1`` and checks

* structure: the layers around the op really got smaller (or, where the op must
  freeze its channels, did not), module attributes agree with the weights, the
  output shape is unchanged;
* numbers: the report's verification passed, the pruned model matches prunec's
  masked reference on fresh inputs, and where the op is exact under removal, an
  independent reference (the original with the removed weights zeroed, see
  ``_checks.independent_reference``) as well.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

import compiler
from _checks import (
    assert_close,
    frozen_targets,
    independent_reference,
    kept_indices,
    masked_reference,
    prune,
)
from passes.ops import SPECS, OpSpec, register


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def check(model: nn.Module, *inputs: torch.Tensor, independent: bool = True, **kw) -> compiler.CompileResult:
    """Compile, then compare the pruned model with the references on fresh inputs of the same shapes."""
    result = prune(model, inputs, **kw)
    fresh = tuple(torch.randn_like(x) if x.is_floating_point() else x for x in inputs)
    pruned64 = copy.deepcopy(result.model).double().eval()
    dbl = tuple(x.double() if x.is_floating_point() else x for x in fresh)
    with torch.no_grad():
        got = pruned64(*dbl)
        assert_close(masked_reference(result, fresh), got)
        if independent:
            ref = independent_reference(model, result.model)
            assert_close(ref(*dbl), got)
    return result


def sub(result: compiler.CompileResult, name: str) -> nn.Module:
    return result.model.get_submodule(name)


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-trivial statistics and affine parameters for every norm layer."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
                if m.running_mean is not None:
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.LayerNorm, nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.normal_()
                    m.bias.normal_()
    return model


def group_of(result: compiler.CompileResult, member: str):
    groups = [g for g in result.report.groups if member in g.members]
    assert len(groups) == 1, [g.members for g in result.report.groups]
    return groups[0]


# ---------------------------------------------------------------------------
# conv


class ConvChain(nn.Module):
    def __init__(self, conv: type, c_in: int = 3, mid: int = 16, out: int = 8, **kw) -> None:
        super().__init__()
        self.c1 = conv(c_in, mid, 3, padding=1)
        self.c2 = conv(mid, out, 3, padding=1, **kw)

    def forward(self, x):
        return self.c2(F.relu(self.c1(x)))


@pytest.mark.parametrize(
    "conv, shape",
    [(nn.Conv1d, (2, 3, 16)), (nn.Conv2d, (2, 3, 8, 8)), (nn.Conv3d, (1, 3, 6, 6, 6))],
    ids=["conv1d", "conv2d", "conv3d"],
)
def test_conv_chain(conv, shape):
    m = ConvChain(conv)
    r = check(m, torch.randn(shape))
    assert sub(r, "c1").out_channels == 8 and sub(r, "c1").weight.shape[0] == 8
    assert sub(r, "c2").in_channels == 8 and sub(r, "c2").weight.shape[1] == 8
    assert sub(r, "c2").out_channels == 8  # model output: never pruned
    # the two weights were sliced consistently: c2 keeps exactly the input columns c1 kept as outputs
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    assert kept_indices(m.c2.weight, sub(r, "c2").weight, 1) == keep
    assert torch.equal(sub(r, "c1").bias, m.c1.bias[keep])


def test_conv_chain_fully_independent_reference():
    """conv -> relu -> conv: zero the removed output channels of c1 in a copy of the original, by hand."""
    m = ConvChain(nn.Conv2d).eval()
    x = torch.randn(2, 3, 8, 8)
    r = prune(m, x)
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    assert len(keep) == 8
    ref = copy.deepcopy(m)
    removed = [i for i in range(16) if i not in keep]
    with torch.no_grad():
        ref.c1.weight[removed] = 0
        ref.c1.bias[removed] = 0
        # the removed channels were the ones with the smallest L2 norms (default importance)
        norms = m.c1.weight.flatten(1).norm(dim=1)
        assert set(removed) == set(norms.argsort()[:8].tolist())
        assert torch.allclose(ref(x), r(x), rtol=1e-5, atol=1e-5)
        # and the original model itself is different: something was removed
        assert not torch.allclose(m(x), r(x), rtol=1e-5, atol=1e-5)


def test_conv_bn_relu_chain_with_hooks_reference():
    """conv -> bn -> relu -> conv, reference: the original with the removed channels zeroed by a forward hook."""
    m = randomize_norms(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3))).eval()
    x = torch.randn(2, 3, 10, 10)
    r = check(m, x)
    assert sub(r, "0").out_channels == 8 and sub(r, "1").num_features == 8 and sub(r, "3").in_channels == 8
    keep = kept_indices(m[0].weight, sub(r, "0").weight, 0)
    mask = torch.zeros(1, 16, 1, 1)
    mask[:, keep] = 1
    ref = copy.deepcopy(m)
    ref[2].register_forward_hook(lambda mod, inp, out: out * mask)
    with torch.no_grad():
        assert torch.allclose(ref(x), r(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(sub(r, "1").running_mean, m[1].running_mean[keep])
    assert torch.equal(sub(r, "1").running_var, m[1].running_var[keep])


class GroupedNet(nn.Module):
    def __init__(self, mid: int, groups: int, out_mid: int | None = None) -> None:
        super().__init__()
        out_mid = out_mid or mid
        self.c1 = nn.Conv2d(3, mid, 1)
        self.g = nn.Conv2d(mid, out_mid, 3, padding=1, groups=groups)
        self.c3 = nn.Conv2d(out_mid, 4, 1)

    def forward(self, x):
        return self.c3(F.relu(self.g(F.relu(self.c1(x)))))


def test_grouped_conv_prunes_whole_groups():
    m = GroupedNet(16, groups=4)
    r = check(m, torch.randn(2, 3, 8, 8))
    g = sub(r, "g")
    assert (g.groups, g.in_channels, g.out_channels) == (2, 8, 8)  # group width 4 unchanged
    assert sub(r, "c1").out_channels == 8 and sub(r, "c3").in_channels == 8
    # kept input channels of the grouped conv come in whole groups of 4, aligned with its kept output groups
    keep_in = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    keep_out = kept_indices(m.g.weight, g.weight, 0)
    assert keep_in == keep_out
    assert {k // 4 for k in keep_in} and all(sum(1 for k in keep_in if k // 4 == q) in (0, 4) for q in range(4))


def test_depthwise_conv():
    m = GroupedNet(16, groups=16)
    r = check(m, torch.randn(2, 3, 8, 8))
    g = sub(r, "g")
    assert (g.groups, g.in_channels, g.out_channels) == (8, 8, 8)
    assert kept_indices(m.c1.weight, sub(r, "c1").weight, 0) == kept_indices(m.g.weight, g.weight, 0)


def test_depthwise_conv_with_channel_multiplier():
    m = GroupedNet(8, groups=8, out_mid=16)  # each input channel -> 2 output channels
    r = check(m, torch.randn(2, 3, 8, 8))
    g = sub(r, "g")
    assert (g.groups, g.in_channels, g.out_channels) == (4, 4, 8)
    keep_in = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    keep_out = kept_indices(m.g.weight, g.weight, 0)
    assert keep_out == sorted([2 * k for k in keep_in] + [2 * k + 1 for k in keep_in])
    assert sub(r, "c3").in_channels == 8


def test_functional_grouped_conv():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 1)
            self.w = nn.Parameter(torch.randn(16, 4, 3, 3))
            self.c3 = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c3(F.relu(F.conv2d(F.relu(self.c1(x)), self.w, padding=1, groups=4)))

    m = Net()
    r = check(m, torch.randn(2, 3, 8, 8))
    assert r.model.w.shape == (8, 4, 3, 3)
    assert sub(r, "c1").out_channels == 8 and sub(r, "c3").in_channels == 8


def test_grouped_conv_with_an_untracked_weight_freezes_its_input():
    """A grouped conv whose weight an unknown op computed (untracked labels) crashed the analysis (None.reshape):
    its input channels are frozen with the reason, the rest prunes, and the result verifies."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 16, 1)
            self.w = nn.Parameter(torch.randn(16, 4, 3, 3))
            self.c3 = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            w = self.w.sort(dim=-1).values  # sort: an op prunec does not know
            return self.c3(F.relu(F.conv2d(F.relu(self.c1(x)), w, padding=1, groups=4)))

    r = check(Net(), torch.randn(2, 3, 8, 8), independent=False)
    assert sub(r, "c1").out_channels == 16
    assert any("grouped conv with an untracked weight" in reason for g in r.report.groups for reason in g.reasons)


@pytest.mark.parametrize("dim", [1, 2])
def test_conv_transpose(dim):
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    convt = nn.ConvTranspose1d if dim == 1 else nn.ConvTranspose2d
    m = nn.Sequential(conv(3, 16, 3), nn.ReLU(), convt(16, 12, 2, stride=2), nn.ReLU(), conv(12, 4, 1))
    x = torch.randn((2, 3) + (9,) * dim)
    r = check(m, x)
    t = sub(r, "2")
    assert (t.in_channels, t.out_channels) == (8, 6)
    assert t.weight.shape[:2] == (8, 6)
    assert sub(r, "0").out_channels == 8 and sub(r, "4").in_channels == 6


def test_grouped_conv_transpose():
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), nn.ConvTranspose2d(16, 8, 2, stride=2, groups=4), nn.ReLU(), nn.Conv2d(8, 4, 1)
    )
    r = check(m, torch.randn(2, 3, 9, 9))
    t = sub(r, "2")
    assert (t.groups, t.in_channels, t.out_channels) == (2, 8, 4)
    assert sub(r, "0").out_channels == 8 and sub(r, "4").in_channels == 4


# ---------------------------------------------------------------------------
# linear, matmul


def test_linear_mlp():
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 4))
    r = check(m, torch.randn(5, 8))
    assert (sub(r, "0").out_features, sub(r, "2").in_features, sub(r, "2").out_features, sub(r, "4").in_features) == (16, 16, 8, 8)
    assert sub(r, "4").out_features == 4


def test_linear_on_tokens():
    m = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))
    r = check(m, torch.randn(2, 5, 8))
    assert sub(r, "0").out_features == 16 and sub(r, "2").in_features == 16


def test_matmul_with_parameter():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(8, 16)
            self.W = nn.Parameter(torch.randn(16, 24))
            self.l2 = nn.Linear(24, 4)

        def forward(self, x):
            return self.l2(F.relu(F.relu(self.l1(x)) @ self.W))

    m = Net()
    r = check(m, torch.randn(2, 5, 8))
    assert r.model.W.shape == (8, 12)
    assert sub(r, "l1").out_features == 8 and sub(r, "l2").in_features == 12
    keep = kept_indices(m.l1.weight, sub(r, "l1").weight, 0)
    assert kept_indices(m.W, r.model.W, 0) == keep


def test_matmul_activation_activation():
    """Attention-like: q @ k^T contracts q's and k's channels together; attn @ v carries v's."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
            self.o = nn.Linear(16, 4)

        def forward(self, x):
            attn = torch.matmul(self.q(x), self.k(x).transpose(-1, -2))
            return self.o(torch.bmm(attn, self.v(x)))

    m = Net()
    r = check(m, torch.randn(2, 5, 8))
    for n in "qkv":
        assert sub(r, n).out_features == 8
    assert sub(r, "o").in_features == 8
    assert kept_indices(m.q.weight, sub(r, "q").weight, 0) == kept_indices(m.k.weight, sub(r, "k").weight, 0)
    assert group_of(r, "q") is group_of(r, "k")


# ---------------------------------------------------------------------------
# norms


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_1d_on_linear(affine):
    m = randomize_norms(nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32, affine=affine), nn.ReLU(), nn.Linear(32, 4))).eval()
    r = check(m, torch.randn(6, 8))
    assert sub(r, "1").num_features == 16 and sub(r, "3").in_features == 16


def test_functional_batch_norm():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)
            self.register_buffer("mean", torch.randn(16))
            self.register_buffer("var", torch.rand(16) + 0.5)
            self.w, self.b = nn.Parameter(torch.randn(16)), nn.Parameter(torch.randn(16))

        def forward(self, x):
            y = F.batch_norm(self.c1(x), self.mean, self.var, self.w, self.b, training=False)
            return self.c2(F.relu(y))

    m = Net()
    r = check(m, torch.randn(2, 3, 6, 6))
    assert r.model.mean.shape == (8,) and r.model.w.shape == (8,) and sub(r, "c2").in_channels == 8


@pytest.mark.parametrize("affine", [True, False])
def test_instance_norm(affine):
    m = randomize_norms(nn.Sequential(nn.Conv2d(3, 16, 3), nn.InstanceNorm2d(16, affine=affine), nn.ReLU(), nn.Conv2d(16, 4, 1)))
    r = check(m, torch.randn(2, 3, 8, 8))
    assert sub(r, "0").out_channels == 8 and sub(r, "1").num_features == 8 and sub(r, "3").in_channels == 8


class ConvNeXtish(nn.Module):
    """dwconv -> permute -> LayerNorm -> Linear -> GELU -> Linear -> permute, with a residual, as in ConvNeXt."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.stem = nn.Conv2d(3, 16, 2, stride=2)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.norm = nn.LayerNorm(16)
        self.pw1, self.pw2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = F.layer_norm(y, (16,), self.norm.weight, self.norm.bias, 1e-6) if self.functional else self.norm(y)
        y = self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        return self.head(x + y)


@pytest.mark.parametrize("functional", [False, True], ids=["module", "F.layer_norm"])
def test_layer_norm_channels_last(functional):
    m = randomize_norms(ConvNeXtish(functional))
    r = check(m, torch.randn(2, 3, 8, 8), independent=False)  # LayerNorm statistics change: masked reference only
    assert sub(r, "stem").out_channels == 8 and sub(r, "dw").out_channels == 8 and sub(r, "dw").groups == 8
    assert sub(r, "norm").weight.shape == (8,) and sub(r, "pw1").in_features == 8
    if not functional:
        assert tuple(sub(r, "norm").normalized_shape) == (8,)
    assert sub(r, "pw1").out_features == 16 and sub(r, "pw2").out_features == 8 and sub(r, "head").in_channels == 8
    # the residual stream is one group: stem, dw and pw2 keep the same channels
    keep = kept_indices(m.stem.weight, sub(r, "stem").weight, 0)
    assert kept_indices(m.pw2.weight, sub(r, "pw2").weight, 0) == keep
    assert kept_indices(m.norm.weight[:, None], sub(r, "norm").weight[:, None], 0) == keep


def test_layer_norm_pruned_semantics_is_kept_channel_statistics():
    """The pruned LayerNorm normalizes over the kept channels: check against a hand-written reference."""
    m = randomize_norms(nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))).eval()
    x = torch.randn(3, 8)
    r = check(m, x, independent=False)
    keep = kept_indices(m[0].weight, sub(r, "0").weight, 0)
    with torch.no_grad():
        h = m[0](x)[:, keep]
        h = F.layer_norm(h, (len(keep),), m[1].weight[keep], m[1].bias[keep])
        ref = h @ m[2].weight[:, keep].T + m[2].bias
        assert torch.allclose(ref, r(x), atol=1e-5)


@pytest.mark.parametrize("functional", [False, True], ids=["module", "F.group_norm"])
def test_group_norm(functional):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.gn, self.c2 = nn.Conv2d(3, 16, 1), nn.GroupNorm(4, 16), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = self.c1(x)
            y = F.group_norm(y, 4, self.gn.weight, self.gn.bias) if functional else self.gn(y)
            return self.c2(F.relu(y))

    m = randomize_norms(Net())
    r = check(m, torch.randn(2, 3, 6, 6))  # whole norm groups go: the kept groups' statistics are untouched
    gn = sub(r, "gn")
    assert gn.weight.shape == (8,) and sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8
    if not functional:
        assert (gn.num_groups, gn.num_channels) == (2, 8)
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    assert all(sum(1 for k in keep if k // 4 == q) in (0, 4) for q in range(4))


# ---------------------------------------------------------------------------
# prelu, embedding


@pytest.mark.parametrize("n", [16, 1], ids=["per-channel", "single"])
def test_prelu(n):
    m = nn.Sequential(nn.Conv2d(3, 16, 1), nn.PReLU(n), nn.Conv2d(16, 4, 1))
    with torch.no_grad():
        m[1].weight.uniform_(-1, 1)
    r = check(m, torch.randn(2, 3, 5, 5))
    assert sub(r, "0").out_channels == 8 and sub(r, "2").in_channels == 8
    assert sub(r, "1").num_parameters == (8 if n == 16 else 1)


def test_functional_prelu():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.a, self.c2 = nn.Conv2d(3, 16, 1), nn.Parameter(torch.rand(16)), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c2(F.prelu(self.c1(x), self.a))

    r = check(Net(), torch.randn(2, 3, 5, 5))
    assert r.model.a.shape == (8,)


def test_embedding():
    m = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    idx = torch.randint(0, 50, (2, 7))
    r = check(m, idx)
    assert sub(r, "0").embedding_dim == 8 and sub(r, "0").weight.shape == (50, 8)
    assert sub(r, "1").in_features == 8 and sub(r, "1").out_features == 4


# ---------------------------------------------------------------------------
# unary activations

UNARY = {
    "relu": nn.ReLU(),
    "relu_fn": F.relu,
    "gelu": nn.GELU(),
    "gelu_tanh": nn.GELU(approximate="tanh"),
    "silu": nn.SiLU(),
    "silu_fn": F.silu,
    "sigmoid": nn.Sigmoid(),
    "torch.sigmoid": torch.sigmoid,
    "tanh": nn.Tanh(),
    "hardswish": nn.Hardswish(),
    "hardsigmoid": nn.Hardsigmoid(),
    "relu6": nn.ReLU6(),
    "leaky_relu": nn.LeakyReLU(0.1),
    "leaky_relu_fn": lambda t: F.leaky_relu(t, 0.2),
    "elu": nn.ELU(),
    "selu": nn.SELU(),
    "mish": nn.Mish(),
    "softplus": nn.Softplus(),
    "hardtanh": nn.Hardtanh(),
    "dropout": nn.Dropout(0.5),
    "dropout2d": nn.Dropout2d(0.5),
    "dropout_fn": lambda t: F.dropout(t, 0.3, training=False),
    "identity": nn.Identity(),
    "clamp": lambda t: t.clamp(-0.5, 0.5),
    "abs": torch.abs,
    "neg": lambda t: -t,
    "exp": torch.exp,
    "pow": lambda t: t**2,
    "contiguous": lambda t: t.contiguous(),
}


class UnaryNet(nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)
        self.act = act if isinstance(act, nn.Module) else None
        self.fn = None if isinstance(act, nn.Module) else act

    def forward(self, x):
        y = self.c1(x)
        y = self.act(y) if self.act is not None else self.fn(y)
        return self.c2(y)


@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name):
    r = check(UnaryNet(UNARY[name]), torch.randn(2, 3, 5, 5))
    assert sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8
    assert r.report.frozen_ops == []


# ---------------------------------------------------------------------------
# binary ops


class Pair(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.fn = fn

    def forward(self, x):
        return self.out(self.fn(self.a(x), self.b(x)))


BINARY = {
    "add": lambda a, b: a + b,
    "torch.add": torch.add,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 1.0),
    "iadd": lambda a, b: a.add_(b),
    "maximum": torch.maximum,
}


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_residual_pair(name):
    m = Pair(BINARY[name])
    r = check(m, torch.randn(2, 3, 6, 6))
    assert sub(r, "a").out_channels == sub(r, "b").out_channels == sub(r, "out").in_channels == 8
    # a channel of the pair goes from both members or from neither
    assert kept_indices(m.a.weight, sub(r, "a").weight, 0) == kept_indices(m.b.weight, sub(r, "b").weight, 0)
    assert group_of(r, "a") is group_of(r, "b")


def test_binary_broadcast_parameter_and_scalar():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)
            self.scale = nn.Parameter(torch.randn(16, 1, 1))
            self.shift = nn.Parameter(torch.randn(1, 16, 1, 1))

        def forward(self, x):
            return self.c2(F.relu(self.c1(x) * self.scale + self.shift) * 2.0 - 1.0)

    m = Net()
    r = check(m, torch.randn(2, 3, 5, 5))
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    assert torch.equal(r.model.scale, m.scale[keep]) and torch.equal(r.model.shift, m.shift[:, keep])


def test_binary_broadcast_single_channel_map():
    """x * m with m [N, 1, H, W] (a spatial attention map): x's channels stay prunable."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.att, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 1, 3, padding=1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c2(self.c1(x) * torch.sigmoid(self.att(x)))

    r = check(Net(), torch.randn(2, 3, 5, 5))
    assert sub(r, "c1").out_channels == 8 and sub(r, "att").out_channels == 1


class SENet(nn.Module):
    """conv -> squeeze-excitation gate (mean -> fc -> relu -> fc -> sigmoid -> mul) -> conv."""

    def __init__(self, pool: str = "mean") -> None:
        super().__init__()
        self.pool = pool
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.c2 = nn.Conv2d(16, 4, 1)
        self.avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        s = y.mean((2, 3), keepdim=True) if self.pool == "mean" else self.avg(y)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return self.c2(y * gate)


@pytest.mark.parametrize("pool", ["mean", "adaptive_avg_pool"])
def test_squeeze_excitation_gate(pool):
    m = SENet(pool)
    r = check(m, torch.randn(2, 3, 6, 6))
    assert sub(r, "c1").out_channels == 8 and sub(r, "fc1").in_channels == 8
    assert sub(r, "fc2").out_channels == 8 and sub(r, "c2").in_channels == 8
    assert sub(r, "fc1").out_channels == 4 and sub(r, "fc2").in_channels == 4  # the SE bottleneck is a group too
    assert kept_indices(m.c1.weight, sub(r, "c1").weight, 0) == kept_indices(m.fc2.weight, sub(r, "fc2").weight, 0)
    assert group_of(r, "c1") is group_of(r, "fc2")


# ---------------------------------------------------------------------------
# spatial ops

SPATIAL = {
    "max_pool": nn.MaxPool2d(2),
    "avg_pool": nn.AvgPool2d(2),
    "adaptive_avg_pool": nn.AdaptiveAvgPool2d(3),
    "adaptive_max_pool": nn.AdaptiveMaxPool2d(2),
    "F.max_pool2d": lambda t: F.max_pool2d(t, 3, stride=2, padding=1),
    "F.avg_pool2d": lambda t: F.avg_pool2d(t, 2),
    "F.adaptive_avg_pool2d": lambda t: F.adaptive_avg_pool2d(t, (2, 3)),
    "interpolate_nearest": lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest"),
    "interpolate_bilinear": lambda t: F.interpolate(t, size=(9, 7), mode="bilinear", align_corners=False),
    "upsample": nn.Upsample(scale_factor=2),
}


@pytest.mark.parametrize("name", list(SPATIAL))
def test_spatial(name):
    r = check(UnaryNet(SPATIAL[name]), torch.randn(2, 3, 6, 6))
    assert sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8


def test_pool_1d():
    m = nn.Sequential(nn.Conv1d(3, 16, 3), nn.MaxPool1d(2), nn.Conv1d(16, 4, 1))
    r = check(m, torch.randn(2, 3, 12))
    assert sub(r, "0").out_channels == 8


# ---------------------------------------------------------------------------
# reductions, softmax


class ReduceNet(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.c1, self.fn = nn.Conv2d(3, 16, 3, padding=1), fn
        self.c2 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        return self.c2(y) * self.fn(y)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("mean_spatial_keepdim", lambda t: t.mean((2, 3), keepdim=True)),
        ("sum_spatial", lambda t: t.sum(dim=(-1, -2), keepdim=True)),
        ("amax_spatial", lambda t: t.amax((2, 3), keepdim=True)),
    ],
)
def test_reduce_over_spatial_keeps_channels(name, fn):
    """The reduced tensor keeps its channel dim: a per-channel gate tied to c2's channels... here broadcast over c2's 8."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            return self.c2(y * torch.sigmoid(fn(y)))

    r = check(Net(), torch.randn(2, 3, 6, 6))
    assert sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8


def test_mean_over_spatial_into_linear():
    m = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc = m, nn.Linear(16, 5)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    r = check(Net(), torch.randn(2, 3, 7, 7))
    assert sub(r, "body.0").out_channels == 8 and sub(r, "fc").in_features == 8


@pytest.mark.parametrize(
    "name, fn",
    [
        ("amax", lambda t: t.amax(dim=1, keepdim=True)),
        ("std", lambda t: t.std(1, keepdim=True)),
        ("softmax", lambda t: F.softmax(t, dim=1)),
        ("softmax_module", nn.Softmax(dim=1)),
        ("log_softmax", lambda t: torch.log_softmax(t, -3)),
    ],
)
def test_channel_mixing_reductions_freeze(name, fn):
    """A max or std over the channels or a softmax over them cannot be pruned exactly: c1's channels freeze
    (a mean can: test_mean_over_channels_keeps_the_original_divisor)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
            self.f = fn if isinstance(fn, nn.Module) else None

        def forward(self, x):
            y = self.c1(x)
            z = self.f(y) if self.f is not None else fn(y)
            return self.c2(F.relu(y) * z)

    r = check(Net(), torch.randn(2, 3, 6, 6))
    assert sub(r, "c1").out_channels == 16 and sub(r, "c2").in_channels == 16
    g = group_of(r, "c1")
    assert g.frozen and g.channels_after == 16
    assert any("channel dimension" in reason for reason in g.reasons), g.reasons
    assert r.report.frozen_ops == []  # frozen by a rule, not an unknown op


def test_softmax_over_spatial_does_not_freeze():
    r = check(UnaryNet(lambda t: F.softmax(t, dim=-1)), torch.randn(2, 3, 5, 5))
    assert sub(r, "c1").out_channels == 8


def test_sum_over_channels_is_prunable():
    """A sum over channels is exact when removed channels are zero (the registry says so)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            return self.c2(y) + y.sum(1, keepdim=True)

    r = check(Net(), torch.randn(2, 3, 6, 6), independent=False)
    assert sub(r, "c1").out_channels == 8


# ---------------------------------------------------------------------------
# concat, stack


class CatNet(nn.Module):
    def __init__(self, dim: int, n_a: int = 16, n_b: int = 8) -> None:
        super().__init__()
        self.dim = dim
        self.a, self.b = nn.Conv2d(3, n_a, 3, padding=1), nn.Conv2d(3, n_b, 3, padding=1)
        self.out = nn.Conv2d(n_a + n_b, 4, 1)

    def forward(self, x):
        return self.out(F.relu(torch.cat([self.a(x), self.b(x)], dim=self.dim)))


@pytest.mark.parametrize("dim", [1, -3])
def test_concat(dim):
    m = CatNet(dim)
    r = check(m, torch.randn(2, 3, 6, 6))
    assert sub(r, "a").out_channels == 8 and sub(r, "b").out_channels == 4 and sub(r, "out").in_channels == 12
    ka = kept_indices(m.a.weight, sub(r, "a").weight, 0)
    kb = kept_indices(m.b.weight, sub(r, "b").weight, 0)
    assert kept_indices(m.out.weight, sub(r, "out").weight, 1) == ka + [16 + k for k in kb]


def test_concat_of_a_residual_and_its_input():
    """DenseNet-style: cat([x, f(x)]) where x itself feeds a residual add."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1, self.f = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 8, 3, padding=1)
            self.out = nn.Conv2d(24, 4, 1)

        def forward(self, x):
            h = F.relu(self.c0(x) + self.c1(x))
            return self.out(torch.cat([h, F.relu(self.f(h))], 1))

    m = Net()
    r = check(m, torch.randn(2, 3, 6, 6))
    assert sub(r, "c0").out_channels == sub(r, "c1").out_channels == sub(r, "f").in_channels == 8
    assert sub(r, "out").in_channels == 8 + 4


def test_stack():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            s = torch.stack([self.a(x), self.b(x)], dim=0)
            return self.out(F.relu(s).sum(0))

    m = Net()
    r = check(m, torch.randn(2, 3, 5, 5))
    assert sub(r, "a").out_channels == sub(r, "b").out_channels == sub(r, "out").in_channels == 8
    assert kept_indices(m.a.weight, sub(r, "a").weight, 0) == kept_indices(m.b.weight, sub(r, "b").weight, 0)


def test_stack_then_flatten_into_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1), nn.Conv2d(32, 4, 1)

        def forward(self, x):
            s = torch.stack([self.a(x), self.b(x)], dim=1)  # [N, 2, 16, H, W]
            return self.out(F.relu(s.flatten(1, 2)))

    m = Net()
    r = check(m, torch.randn(2, 3, 5, 5))
    assert sub(r, "a").out_channels == sub(r, "b").out_channels == 8 and sub(r, "out").in_channels == 16


# ---------------------------------------------------------------------------
# split, slice, pad


class SplitNet(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        sizes = {"list": (4, 12), "chunk": (8, 8), "int": (8, 8), "split_kw": (6, 10)}[how]
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(sizes[0], 4, 1), nn.Conv2d(sizes[1], 4, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        if self.how == "list":
            p, q = torch.split(y, [4, 12], dim=1)
        elif self.how == "chunk":
            p, q = y.chunk(2, dim=1)
        elif self.how == "int":
            p, q = torch.split(y, 8, 1)
        else:
            p, q = y.split(split_size=[6, 10], dim=1)
        return self.a(p) + self.b(q)


@pytest.mark.parametrize("how", ["list", "split_kw", "chunk", "int"])
def test_split(how):
    m = SplitNet(how)
    r = check(m, torch.randn(2, 3, 6, 6))
    c1, a, b = sub(r, "c1"), sub(r, "a"), sub(r, "b")
    assert c1.out_channels == 8 and a.in_channels + b.in_channels == 8
    keep = kept_indices(m.c1.weight, c1.weight, 0)
    n0 = m.a.in_channels
    assert kept_indices(m.a.weight, a.weight, 1) == [k for k in keep if k < n0]
    assert kept_indices(m.b.weight, b.weight, 1) == [k - n0 for k in keep if k >= n0]
    if how in ("chunk", "int"):  # equal chunks stay equal: channel j of both chunks goes together
        assert a.in_channels == b.in_channels == 4
        assert [k for k in keep if k < 8] == [k - 8 for k in keep if k >= 8]


class UnevenChunkNet(nn.Module):
    """EdgeNeXt's split of 11 channels into chunk(3) = 4, 4, 3 (or split(4) = 4, 4, 3), each piece through its
    own depthwise conv: pruned piece by piece, the call becomes a split with the new sizes."""

    def __init__(self, how: str, loop: bool = False) -> None:
        super().__init__()
        self.how, self.loop = how, loop
        self.c1, self.c2 = nn.Conv2d(3, 11, 1), nn.Conv2d(11, 5, 1)
        self.dw = nn.ModuleList([nn.Conv2d(k, k, 3, padding=1, groups=k) for k in (4, 4, 3)])

    def forward(self, x):
        h = F.relu(self.c1(x))
        if self.how == "method":
            parts = h.chunk(3, dim=1)
        elif self.how == "function":
            parts = torch.chunk(h, 3, 1)
        else:
            parts = torch.split(h, 4, dim=1)
        if self.loop:  # not symbolically traceable: torch.export, aten.chunk / aten.split
            return self.c2(torch.cat([d(p) for d, p in zip(self.dw, parts, strict=True)], 1))
        return self.c2(torch.cat([self.dw[0](parts[0]), self.dw[1](parts[1]), self.dw[2](parts[2])], 1))


@pytest.mark.parametrize("loop", [False, True], ids=["fx", "export"])
@pytest.mark.parametrize("how", ["method", "function", "split_int"])
def test_uneven_chunk_prunes_each_piece(how, loop):
    m = UnevenChunkNet(how, loop).eval()
    with torch.no_grad():  # the last piece matters least: it keeps the fewest channels but at least one
        m.c1.weight[8:] *= 0.01
    # the independent reference matches modules by type, which torch.export's graph does not keep
    r = check(m, torch.randn(1, 3, 8, 8), independent=not loop, granularity=1)
    assert not frozen_targets(r) and r.report.macs_ratio < 0.6
    c1 = sub(r, "c1")
    keep = kept_indices(m.c1.weight, c1.weight, 0)
    pieces = [sum(1 for k in keep if lo <= k < hi) for lo, hi in ((0, 4), (4, 8), (8, 11))]
    assert [sub(r, f"dw.{i}").weight.shape[0] for i in range(3)] == pieces and min(pieces) >= 1
    calls = [n for n in r.model.graph.nodes if "split" in str(n.target) or "chunk" in str(n.target)]
    assert len(calls) == 1 and list(calls[0].args[1]) == pieces


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_split_pieces_lose_the_same_share(ratio):
    """A CSP stage: one conv's output split in two halves that go different ways. The first half's filters are
    tiny, yet each half keeps the same share of its channels (ranking the whole group would leave it one)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            p, q = torch.split(F.relu(self.c1(x)), [8, 8], dim=1)
            return self.a(p) + self.b(q)

    m = Net()
    with torch.no_grad():
        m.c1.weight[:8] *= 1e-3
    r = check(m, torch.randn(2, 3, 5, 5), granularity=1, ratio=ratio)
    n = round(8 * (1 - ratio))
    assert sub(r, "a").in_channels == sub(r, "b").in_channels == n
    # the threshold policy still compares every channel with one threshold: the tiny half goes
    r = check(m, torch.randn(2, 3, 5, 5), granularity=1, threshold=0.01)
    assert sub(r, "a").in_channels == 1 and sub(r, "b").in_channels == 8


def test_split_three_way_with_unused_part():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.a, self.b = nn.Conv2d(3, 24, 1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            p, _, q = torch.split(F.relu(self.c1(x)), [8, 8, 8], dim=1)
            return self.a(p) * self.b(q)

    r = check(Net(), torch.randn(2, 3, 5, 5))
    assert sub(r, "c1").out_channels < 24 and sub(r, "a").in_channels + sub(r, "b").in_channels <= sub(r, "c1").out_channels


@pytest.mark.parametrize(
    "name, fn, width",
    [
        ("head", lambda t: t[:, :8], 8),
        ("middle", lambda t: t[:, 4:12], 8),
        ("tail_negative", lambda t: t[:, -6:], 6),
        ("narrow", lambda t: t.narrow(1, 2, 10), 10),
        ("torch.narrow", lambda t: torch.narrow(t, 1, 0, 8), 8),
    ],
)
def test_slice(name, fn, width):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(width, 4, 1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            return self.c2(fn(y)) + self.c2(y[:, :width])

    r = check(Net(), torch.randn(2, 3, 6, 6))
    assert sub(r, "c1").out_channels < 16
    assert sub(r, "c2").in_channels < width


def test_slice_keeps_consistent_columns():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(8, 4, 1)

        def forward(self, x):
            return self.c2(F.relu(self.c1(x))[:, 4:12])

    m = Net()
    r = check(m, torch.randn(2, 3, 6, 6))
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    # channels outside the slice are never used: they are the cheapest to remove, and go
    assert kept_indices(m.c2.weight, sub(r, "c2").weight, 1) == [k - 4 for k in keep if 4 <= k < 12]


@pytest.mark.parametrize("sl, pairs", [(slice(None, None, 2), True), (slice(1, None, 2), True), (slice(1, 15, 2), False),
                                       (slice(0, None, 3), False)])
def test_strided_channel_slice(sl, pairs):
    """x[:, ::2] takes one channel of every pair: the pairs prune whole. A strided slice that misses a pair
    (1:15:2) or does not divide the dim (::3 of 16) freezes it."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            n = len(range(16)[sl])
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(n, 4, 1)

        def forward(self, x):
            return self.c2(F.relu(self.c1(x))[:, sl])

    m = Net()
    r = check(m, torch.randn(2, 3, 6, 6))
    if pairs:
        keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
        assert len(keep) < 16 and all(k ^ 1 in keep for k in keep)
    else:
        assert sub(r, "c1").out_channels == 16


@pytest.mark.parametrize(
    "name, fn",
    [
        ("F.pad_spatial", lambda t: F.pad(t, (1, 1, 2, 0))),
        ("F.pad_reflect", lambda t: F.pad(t, (1, 1, 1, 1), mode="reflect")),
        ("ZeroPad2d", nn.ZeroPad2d(1)),
        ("ReflectionPad2d", nn.ReflectionPad2d((1, 0, 1, 0))),
    ],
)
def test_pad_spatial(name, fn):
    r = check(UnaryNet(fn), torch.randn(2, 3, 5, 5))
    assert sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8


def test_pad_channel_dim_freezes():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(18, 4, 1)

        def forward(self, x):
            return self.c2(F.pad(F.relu(self.c1(x)), (0, 0, 0, 0, 1, 1)))

    r = check(Net(), torch.randn(2, 3, 5, 5))
    assert sub(r, "c1").out_channels == 16
    assert group_of(r, "c1").frozen


# ---------------------------------------------------------------------------
# permute, transpose


@pytest.mark.parametrize(
    "name, fwd, back",
    [
        ("permute", lambda t: t.permute(0, 2, 3, 1), lambda t: t.permute(0, 3, 1, 2)),
        ("torch.permute", lambda t: torch.permute(t, (0, 2, 3, 1)), lambda t: torch.permute(t, [0, 3, 1, 2])),
        ("transpose", lambda t: t.transpose(1, 3), lambda t: t.transpose(3, 1)),
        ("movedim", lambda t: t.movedim(1, -1), lambda t: torch.movedim(t, -1, 1)),
    ],
)
def test_permute(name, fwd, back):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.fc, self.c2 = nn.Conv2d(3, 16, 1), nn.Linear(16, 12), nn.Conv2d(12, 4, 1)

        def forward(self, x):
            return self.c2(back(F.relu(self.fc(fwd(F.relu(self.c1(x)))))))

    r = check(Net(), torch.randn(2, 3, 5, 5))
    assert sub(r, "c1").out_channels == 8 and sub(r, "fc").in_features == 8
    assert sub(r, "fc").out_features == 6 and sub(r, "c2").in_channels == 6


# ---------------------------------------------------------------------------
# reshape family


class FlattenNet(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.c1(x)), 2)  # [N, 16, 4, 4]
        if self.how == "flatten":
            y = torch.flatten(y, 1)
        elif self.how == "module":
            y = self.flat(y)
        elif self.how == "view_size":
            y = y.view(y.size(0), -1)
        elif self.how == "view_const":
            y = y.view(2, 256)
        elif self.how == "reshape_const":
            y = y.reshape(2, 16 * 16)
        elif self.how == "reshape_tuple":
            y = torch.reshape(y, (-1, 256))
        return self.fc2(F.relu(self.fc1(y)))


@pytest.mark.parametrize("how", ["flatten", "module", "view_size", "view_const", "reshape_const", "reshape_tuple"])
def test_flatten_into_linear(how):
    m = FlattenNet(how)
    r = check(m, torch.randn(2, 3, 8, 8))
    kept = sub(r, "c1").out_channels
    assert kept == 8
    assert sub(r, "fc1").in_features == kept * 16 and sub(r, "fc1").weight.shape[1] == kept * 16
    assert sub(r, "fc1").out_features == 16 and sub(r, "fc2").in_features == 16
    # the linear layer keeps the 16 spatial columns of every kept channel, in order
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    cols = [c * 16 + s for c in keep for s in range(16)]
    assert torch.equal(sub(r, "fc1").weight, m.fc1.weight[kept_indices(m.fc1.weight, sub(r, "fc1").weight, 0)][:, cols])


def test_unsqueeze_squeeze():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.fc, self.c2 = nn.Conv2d(3, 16, 3), nn.Linear(16, 16), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            s = y.mean((2, 3), keepdim=True).squeeze(-1).squeeze(-1)  # [N, 16]
            v = torch.sigmoid(self.fc(s))
            g = v.unsqueeze(-1).unsqueeze(-1)  # [N, 16, 1, 1]
            h = v[:, :, None, None]  # unsqueeze by indexing
            return self.c2(y * g + h)

    m = Net()
    r = check(m, torch.randn(2, 3, 6, 6))
    assert sub(r, "c1").out_channels == 8 and sub(r, "fc").in_features == 8
    assert sub(r, "fc").out_features == 8 and sub(r, "c2").in_channels == 8
    assert kept_indices(m.c1.weight, sub(r, "c1").weight, 0) == kept_indices(m.fc.weight, sub(r, "fc").weight, 0)


def test_unflatten_head_split():
    """[N, T, 32] -> [N, T, 4, 8] -> ... -> [N, T, 32]: head dim j of every head goes together."""

    class Net(nn.Module):
        def __init__(self, module: bool):
            super().__init__()
            self.module = module
            self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 4)
            self.unflat = nn.Unflatten(-1, (4, 8))

        def forward(self, x):
            y = F.relu(self.fc1(x))
            h = self.unflat(y) if self.module else y.unflatten(-1, (4, 8))
            h = h * torch.sigmoid(h.sum(-2, keepdim=True))  # mixes heads: every head keeps the same dims
            return self.fc2(h.flatten(-2))

    for module in (False, True):
        m = Net(module)
        r = check(m, torch.randn(2, 5, 8))
        assert sub(r, "fc1").out_features == 16 and sub(r, "fc2").in_features == 16
        keep = kept_indices(m.fc1.weight, sub(r, "fc1").weight, 0)
        dims = sorted({k % 8 for k in keep})
        assert keep == [h * 8 + d for h in range(4) for d in dims]
        if module:
            assert tuple(sub(r, "unflat").unflattened_size) == (4, 4)


class Shuffle(nn.Module):
    """ShuffleNet's channel shuffle: view [N, g, C/g, H, W] -> transpose -> view [N, C, H, W]."""

    def __init__(self, how: str, groups: int = 1) -> None:
        super().__init__()
        self.how = how
        self.c1 = nn.Conv2d(3, 16, 1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
        self.c3 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = F.relu(self.c1(x))
        n, c, h, w = y.shape
        if self.how == "sizes":
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        elif self.how == "const":  # constant ints, as after tracing with a fixed batch size
            y = y.view(2, 2, 8, 5, 5).transpose(1, 2).contiguous().view(2, 16, 5, 5)
        else:  # torchvision's shufflenet: reshape + flatten
            y = torch.transpose(y.reshape(n, 2, c // 2, h, w), 1, 2).contiguous().flatten(1, 2)
        return self.c3(F.relu(self.c2(y)))


@pytest.mark.parametrize("how", ["sizes", "const", "flatten"])
def test_channel_shuffle(how):
    m = Shuffle(how)
    r = check(m, torch.randn(2, 3, 5, 5))
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    assert len(keep) == 8
    # channel j of both shuffle groups is pruned together ...
    assert [k for k in keep if k < 8] == [k - 8 for k in keep if k >= 8]
    # ... and c2 keeps the shuffled positions of the kept channels: channel g*8+j lands at 2*j+g
    assert kept_indices(m.c2.weight, sub(r, "c2").weight, 1) == sorted(2 * (k % 8) + k // 8 for k in keep)
    assert sub(r, "c2").in_channels == 8 and sub(r, "c3").in_channels == 8


def test_channel_shuffle_into_grouped_conv():
    """After the shuffle, a 2-group conv sees channels {0..3, 8..11} in group 0: whole groups go."""
    m = Shuffle("sizes", groups=2)
    r = check(m, torch.randn(2, 3, 5, 5))
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    assert keep in ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])
    c2 = sub(r, "c2")
    assert (c2.in_channels, c2.out_channels, c2.groups) == (8, 8, 1)


def test_channel_shuffle_module_is_frozen_unless_registered(monkeypatch):
    """nn.ChannelShuffle is a leaf module the frontend does not know: it freezes, until a rule is registered."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.shuffle, self.c2 = nn.Conv2d(3, 16, 1), nn.ChannelShuffle(2), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.c2(self.shuffle(F.relu(self.c1(x))))

    m = Net()
    x = torch.randn(2, 3, 5, 5)
    r = check(m, x)
    assert frozen_targets(r) == ["ChannelShuffle"]
    assert [o.label for o in r.report.frozen_ops] == ["shuffle"]
    assert sub(r, "c1").out_channels == 16 and sub(r, "c2").in_channels == 16
    assert "ChannelShuffle" in " ".join(group_of(r, "c1").reasons)

    monkeypatch.setitem(SPECS, "ChannelShuffle", OpSpec("ChannelShuffle"))  # undone after the test

    @register("ChannelShuffle")
    def shuffle_rule(op, ctx):
        x = op.inputs[0]
        xl = ctx.get(x)
        g, c = 2, ctx.shape(x)[1]
        ctx.tie_strided(xl[1], g)  # channel j of every group: one channel
        out = list(xl)
        out[1] = xl[1].reshape(g, c // g).T.reshape(-1)
        ctx.set(op.outputs[0], out)

    r = check(m, x)
    assert r.report.frozen_ops == []
    assert sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8


# ---------------------------------------------------------------------------
# unknown ops and user rules


@torch.fx.wrap
def channel_gate(x: torch.Tensor) -> torch.Tensor:
    """Kept out of symbolic tracing by fx.wrap, but its body traces at the example's sizes: inlined."""
    return x * torch.sigmoid(x)


@torch.fx.wrap
def opaque_gate(x: torch.Tensor) -> torch.Tensor:
    """A custom op the registry cannot know: its body branches on tensor values, so it is not inlined."""
    if bool((x > 0).any()):
        return x * torch.sigmoid(x)
    return x


class UnknownNet(nn.Module):
    def __init__(self, op) -> None:
        super().__init__()
        self.op = op
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        if self.op == "wrapped":  # a wrapped function must be called by its global name
            y = opaque_gate(y)
        elif self.op == "inlined":
            y = channel_gate(y)
        else:
            y = self.op(y)
        return self.c3(F.relu(self.c2(y)))


@pytest.mark.parametrize(
    "name, op, target",
    [
        ("flip", lambda t: t.flip(1), "Tensor.flip"),
        ("fliplr", lambda t: torch.fliplr(t), "torch.fliplr"),
        ("fx.wrap", "wrapped", f"{__name__}.opaque_gate"),
    ],
)
def test_unknown_op_freezes_and_is_reported(name, op, target):
    m = UnknownNet(op)
    r = check(m, torch.randn(2, 3, 5, 5))
    assert frozen_targets(r) == [target]
    # channels touching the unknown op are frozen ...
    assert sub(r, "c1").out_channels == 16 and sub(r, "c2").in_channels == 16
    g = group_of(r, "c1")
    assert g.frozen and any(target in reason and "not in the op registry" in reason for reason in g.reasons)
    # ... the others are not
    assert sub(r, "c2").out_channels == 8 and sub(r, "c3").in_channels == 8
    assert target in r.report.summary()


def test_wrapped_function_with_a_traceable_body_is_inlined_and_pruned():
    r = check(UnknownNet("inlined"), torch.randn(2, 3, 5, 5))
    assert frozen_targets(r) == []
    assert sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8


def test_user_registered_rule_makes_an_unknown_op_prunable(monkeypatch):
    m = UnknownNet("wrapped")
    x = torch.randn(2, 3, 5, 5)
    target = f"{__name__}.opaque_gate"
    assert target not in SPECS

    def passthrough(op, ctx):
        ctx.set(op.outputs[0], ctx.get(op.inputs[0]))

    monkeypatch.setitem(SPECS, target, OpSpec(target))  # undone after the test
    register(target)(passthrough)
    r = check(m, x)
    assert r.report.frozen_ops == []
    assert sub(r, "c1").out_channels == 8 and sub(r, "c2").in_channels == 8


def test_user_rule_for_flip(monkeypatch):
    """A correct rule for flip over channels: output channel i is input channel C-1-i."""
    m = UnknownNet(lambda t: t.flip(1))
    x = torch.randn(2, 3, 5, 5)

    def flip_rule(op, ctx):
        xl = list(ctx.get(op.inputs[0]))
        for d in op.source.args[1] if isinstance(op.source.args[1], (list, tuple)) else [op.source.args[1]]:
            if xl[d] is not None:
                xl[d] = xl[d][::-1].copy()
        ctx.set(op.outputs[0], xl)

    monkeypatch.setitem(SPECS, "Tensor.flip", OpSpec("Tensor.flip", rule=flip_rule))
    r = check(m, x)
    assert r.report.frozen_ops == []
    keep = kept_indices(m.c1.weight, sub(r, "c1").weight, 0)
    assert len(keep) == 8
    assert kept_indices(m.c2.weight, sub(r, "c2").weight, 1) == sorted(15 - k for k in keep)


# ---------------------------------------------------------------------------
# model outputs


def test_model_outputs_are_never_pruned():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1), nn.Linear(16, 6)

        def forward(self, x):
            y = F.relu(self.c1(x))
            z = self.c2(y)
            return z, self.fc(z.mean((2, 3))), y

    m = Net()
    r = check(m, torch.randn(2, 3, 4, 4))
    assert sub(r, "c1").out_channels == 16  # y is an output
    assert sub(r, "c2").out_channels == 16  # z is an output
    assert sub(r, "fc").out_features == 6


@pytest.mark.parametrize("how", ["split", "slice"])
def test_a_part_whose_channels_all_score_lowest_keeps_one(how):
    """Regression: split/slice parts holding only low-saliency channels were pruned to zero channels,
    leaving a conv with no inputs (the rewritten model crashed)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(12, 4, 1)

        def forward(self, x):
            y = F.relu(self.c1(x))
            p, q = torch.split(y, [4, 12], dim=1) if how == "split" else (y[:, :4], y[:, 4:])
            return self.a(p) + self.b(q)

    m = Net()
    with torch.no_grad():
        m.c1.weight[:4] *= 0.01  # the first part's channels are the least salient of the group
    r = check(m, torch.randn(2, 3, 6, 6))
    assert sub(r, "a").in_channels >= 1
    assert sub(r, "a").in_channels + sub(r, "b").in_channels == sub(r, "c1").out_channels


# ---------------------------------------------------------------------------
# more patterns: other axes, several inputs, in-place ops, attention written out


def test_concat_along_a_spatial_axis_ties_the_inputs_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.out(F.relu(torch.cat([self.a(x), self.b(x)], dim=2)))

    m = Net()
    r = check(m, torch.randn(2, 3, 4, 4))
    assert sub(r, "a").out_channels == sub(r, "b").out_channels == sub(r, "out").in_channels == 8
    assert kept_indices(m.a.weight, sub(r, "a").weight, 0) == kept_indices(m.b.weight, sub(r, "b").weight, 0)


def test_split_along_a_spatial_axis():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.o1, self.o2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            p, q = torch.split(F.relu(self.a(x)), [2, 4], dim=2)
            return torch.cat([self.o1(p), self.o2(q)], dim=2)

    r = check(Net(), torch.randn(2, 3, 6, 4))
    assert sub(r, "a").out_channels == 8 and sub(r, "o1").in_channels == sub(r, "o2").in_channels == 8


def test_parameter_on_the_left_of_matmul():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.W, self.o = nn.Parameter(torch.randn(12, 8)), nn.Linear(12, 2)

        def forward(self, x):  # x: [N, 8, T]
            return self.o(F.relu(torch.matmul(self.W, x)).transpose(1, 2))

    m = Net()
    r = check(m, torch.randn(2, 8, 5))
    assert r.model.W.shape == (6, 8) and sub(r, "o").in_features == 6


def test_two_inputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.o = nn.Conv2d(3, 16, 1), nn.Conv2d(5, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x, y):
            return self.o(F.relu(self.a(x) + self.b(y)))

    r = check(Net(), torch.randn(2, 3, 4, 4), torch.randn(2, 5, 4, 4))
    assert sub(r, "a").out_channels == sub(r, "b").out_channels == 8
    assert sub(r, "a").in_channels == 3 and sub(r, "b").in_channels == 5  # model inputs: never pruned


def test_in_place_ops():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.o = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            y = F.relu(self.a(x), inplace=True)
            y += self.b(y)
            return self.o(y.relu_())

    m = Net()
    r = check(m, torch.randn(2, 3, 4, 4))
    assert sub(r, "a").out_channels == sub(r, "b").out_channels == sub(r, "o").in_channels == 8


def test_layer_scale_parameter_indexed_and_viewed():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.o = nn.Conv2d(3, 16, 1), nn.Parameter(torch.randn(16)), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.o(self.a(x) * self.g[:, None, None] + self.g.view(1, -1, 1, 1))

    m = Net()
    r = check(m, torch.randn(2, 3, 4, 4))
    keep = kept_indices(m.a.weight, sub(r, "a").weight, 0)
    assert torch.equal(r.model.g, m.g[keep])


def test_linear_unflattened_back_into_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.fc, self.o = nn.Conv2d(3, 16, 1), nn.Linear(16 * 4 * 4, 8 * 4 * 4), nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = F.relu(self.fc(torch.flatten(F.relu(self.a(x)), 1)))
            return self.o(y.unflatten(1, (8, 4, 4)))

    m = Net()
    r = check(m, torch.randn(2, 3, 4, 4))
    assert sub(r, "a").out_channels == 8 and sub(r, "fc").in_features == 8 * 16
    assert sub(r, "fc").out_features == 4 * 16 and sub(r, "o").in_channels == 4
    # the linear's output neurons go in blocks of 16 (one channel of the unflattened map each)
    rows = kept_indices(m.fc.weight, sub(r, "fc").weight, 0)
    assert sorted({k // 16 for k in rows}) == [k // 16 for k in rows[::16]] and len(rows) == 64


def test_depthwise_conv1d_on_tokens():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.e, self.c, self.o = nn.Linear(4, 16), nn.Conv1d(16, 16, 3, padding=1, groups=16), nn.Linear(16, 2)

        def forward(self, x):
            h = F.gelu(self.e(x))
            return self.o(h + self.c(h.transpose(1, 2)).transpose(1, 2))

    m = Net()
    r = check(m, torch.randn(2, 7, 4))
    assert sub(r, "e").out_features == 8 and sub(r, "c").groups == 8 and sub(r, "o").in_features == 8


class Attention(nn.Module):
    """Multi-head self-attention written out: head split by view, q @ k^T, softmax over keys, @ v."""

    def __init__(self, heads: int, dim: int, size_scale: bool = False) -> None:
        super().__init__()
        self.h, self.d, self.size_scale = heads, dim, size_scale
        D = heads * dim
        self.q, self.k, self.v, self.proj = nn.Linear(16, D), nn.Linear(16, D), nn.Linear(16, D), nn.Linear(D, 16)
        self.fc = nn.Linear(16, 4)
        self.scale = dim**-0.5

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(B, T, self.h, self.d).transpose(1, 2)
        v = self.v(x).view(B, T, self.h, self.d).transpose(1, 2)
        scale = q.size(-1) ** -0.5 if self.size_scale else self.scale  # a scale read off the (pruned) head dim
        a = torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)
        y = (a @ v).transpose(1, 2).reshape(B, T, self.h * self.d)
        return self.fc(F.relu(x + self.proj(y)))


@pytest.mark.parametrize("size_scale", [False, True], ids=["const-scale", "size-scale"])
@pytest.mark.parametrize("heads, dim", [(2, 8), (4, 4), (8, 2)])
def test_attention_written_out(heads, dim, size_scale):
    m = Attention(heads, dim, size_scale)
    r = check(m, torch.randn(2, 5, 16), independent=False)
    D = heads * dim
    for n in "qkv":
        assert sub(r, n).out_features == D // 2
    assert sub(r, "proj").in_features == D // 2
    q_keep = kept_indices(m.q.weight, sub(r, "q").weight, 0)
    assert q_keep == kept_indices(m.k.weight, sub(r, "k").weight, 0)
    # whole heads or the same dims of every head: the [h, d] structure stays rectangular
    heads_kept = sorted({i // dim for i in q_keep})
    dims_kept = sorted({i % dim for i in q_keep})
    assert q_keep == [h * dim + d for h in heads_kept for d in dims_kept]


@pytest.mark.parametrize("kind", ["sdpa", "MultiheadAttention"])
@pytest.mark.parametrize("attention", ["head_dim", "heads"])
def test_attention_ops_are_pruned(kind, attention):
    """SDPA has a rule (head dims tie q to k; v gives the output); nn.MultiheadAttention is decomposed first."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
            self.att = nn.MultiheadAttention(16, 4, batch_first=True)
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            h = F.relu(self.inp(x))
            if kind == "sdpa":
                return self.fc(F.scaled_dot_product_attention(self.q(h), self.k(h), self.v(h)))
            return self.fc(self.att(h, h, h, need_weights=False)[0])  # averaged weights would pin the heads

    m = Net()
    x = torch.randn(2, 5, 8)
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1, attention=attention)
    assert r.report.verification["passed"]
    assert frozen_targets(r) == []
    if kind == "sdpa":
        assert sub(r, "q").out_features == sub(r, "k").out_features == 8  # q and k share the contracted dim
        assert sub(r, "v").out_features == 8 and sub(r, "fc").in_features == 8
        assert "scale" in r.model.code  # the original 1/sqrt(16) is kept explicitly
    else:
        att = r.model.get_submodule("att")
        assert att.q_proj.out_features == att.k_proj.out_features == att.v_proj.out_features == 8
        assert att.out_proj.in_features == 8
        head_reshape = [line for line in r.model.code.splitlines() if "q_proj.reshape(" in line][0]
        heads, head_dim = (2, 4) if attention == "heads" else (4, 2)
        assert f", {heads}, {head_dim})" in head_reshape, head_reshape
    with torch.no_grad():
        assert r.model(x).shape == m(x).shape


def test_basic_indexing_ellipsis_and_strided_spatial_slices():
    """Patch merging (Swin): x[..., 0::2, 0::2, :] on channels-last spatial dims keeps the channels prunable."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.merge = nn.Linear(64, 8)

        def forward(self, x):  # x: [B, H, W, 6]
            h = F.relu(self.inp(x))
            parts = [h[..., 0::2, 0::2, :], h[..., 1::2, 0::2, :], h[..., 0::2, 1::2, :], h[..., 1::2, 1::2, :]]
            return self.merge(torch.cat(parts, -1)).mean((1, 2))

    m = Net()
    x = torch.randn(2, 4, 4, 6)
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    assert r.report.verification["passed"] and frozen_targets(r) == []
    assert sub(r, "inp").out_features == 8 and sub(r, "merge").in_features == 32


def test_channel_slice_inside_index_is_rewritten():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(6, 4, 1)

        def forward(self, x):
            h = torch.cat([self.a(x), x, x], 1)  # 16 prunable channels, then 6 frozen input channels
            return self.b(h[:, 16:, ::2])

    m = Net()
    x = torch.randn(2, 3, 6, 6)
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    assert r.report.verification["passed"]
    assert sub(r, "a").out_channels == 8
    with torch.no_grad():
        assert torch.allclose(r.model(x), m(x), atol=1e-6)  # only a's channels go, and b never read them


def test_runtime_pad_factory_roll_and_size_derived_scale():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(8, 16)
            self.out = nn.Linear(16, 8)

        def forward(self, x):  # x: [B, N, 8]
            B, N, C = x.shape
            q, k, v = self.q(x), self.k(x), self.v(x)
            q = q * (q.shape[-1] // 2) ** -0.5  # a scale computed from a size that pruning changes
            a = torch.softmax(q @ k.transpose(-2, -1) + x.new_zeros((N, N)), -1)
            y = torch.roll(a @ v, shifts=1, dims=1)
            y = F.pad(y, (0, 0, 0, N % 2))  # pad widths computed at run time (tokens only)
            return self.out(y)

    m = Net()
    x = torch.randn(2, 5, 8)
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    assert r.report.verification["passed"] and frozen_targets(r) == []
    assert sub(r, "q").out_features == 8 and sub(r, "v").out_features == 8
    assert f"q * {(16 // 2) ** -0.5}" in r.model.code  # the scale stays the original model's constant


# ---------------------------------------------------------------------------
# einsum, index tensors, wrapped functions


def test_einsum_attention_and_weight_contraction():
    """Letters shared by operands and output are one channel; contracted letters are tied only."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(8, 3 * 2 * 8)
            self.W = nn.Parameter(torch.randn(16, 12))
            self.out = nn.Linear(12, 4)

        def forward(self, x):  # x: [B, N, 8]
            B, N, _ = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, 2, 8).permute(2, 0, 3, 1, 4)
            a = torch.softmax(torch.einsum("b h i d, b h j d -> b h i j", q, k) * 0.35, -1)
            y = torch.einsum("bhij,bhjd->bhid", a, v).transpose(1, 2).reshape(B, N, 16)
            return self.out(F.relu(torch.einsum("bnc,cd->bnd", y, self.W)))

    m = Net()
    r = check(m, torch.randn(2, 5, 8), independent=False)
    assert frozen_targets(r) == []
    assert sub(r, "qkv").out_features == 3 * 2 * 4  # head dims pruned in q, k and v alike
    assert r.model.W.shape == (8, 6)  # contracted rows follow the heads, the output letter is a producer
    assert sub(r, "out").in_features == 6


def test_einsum_parse_and_unknown_forms():
    from passes.ops import parse_einsum

    assert parse_einsum("b h i d, b h j d -> b h i j", 2) == (["bhid", "bhjd"], "bhij")
    assert parse_einsum("ij,jk", 2) == (["ij", "jk"], "ik")  # implicit output
    assert parse_einsum("...d,de->...e", 2) is None  # ellipsis: not understood, frozen
    assert parse_einsum("ij,jk->ikk", 2) is None

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.einsum("...c,...c->...c", self.a(x), self.a(x)))

    r = prune(Net(), torch.randn(2, 8))
    assert r.model.a.out_features == 16  # the ellipsis froze the channels it touched
    assert any(g.frozen and "a" in g.members for g in r.report.groups)


def test_index_tensor_gathers_rows_and_keeps_columns():
    """table[index] (Swin's relative position bias): the gathered axis is frozen, the head dim is pruned."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 16)
            self.table = nn.Parameter(torch.randn(7, 16))
            self.register_buffer("index", torch.tensor([[0, 3], [6, 2], [1, 1], [5, 4], [2, 0]]))
            self.out = nn.Linear(16, 4)

        def forward(self, x):  # x: [B, 5, 2, 8]
            return self.out(F.relu(self.proj(x) + self.table[self.index]))

    m = Net()
    r = check(m, torch.randn(3, 5, 2, 8), independent=False)
    assert frozen_targets(r) == []
    assert sub(r, "proj").out_features == 8 and r.model.table.shape == (7, 8)
    assert kept_indices(m.proj.weight, sub(r, "proj").weight, 0) == kept_indices(m.table.t(), r.model.table.t(), 0)


def _wrapped_window_sum(x: torch.Tensor, weight: torch.Tensor, window: int) -> torch.Tensor:
    """Size branches and a mask made from sizes, as in torchvision's shifted_window_attention."""
    B, N, C = x.shape
    if window >= N:  # a branch on a size: symbolic tracing cannot enter this function
        window = N
    mask = x.new_zeros((N,))
    mask[: N // 2] = 1.0
    y = F.linear(x, weight) * (C // 2) ** -0.5
    return y + mask.unsqueeze(-1)


torch.fx.wrap("_wrapped_window_sum")


def test_wrapped_function_is_inlined_at_the_example_sizes():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.w = nn.Parameter(torch.randn(12, 16))
            self.b = nn.Linear(12, 4)

        def forward(self, x):
            return self.b(F.relu(_wrapped_window_sum(F.relu(self.a(x)), self.w, 3)))

    m = Net()
    gm = torch.fx.symbolic_trace(m)
    assert any(n.target is _wrapped_window_sum for n in gm.graph.nodes)  # a leaf for plain symbolic tracing
    x = torch.randn(2, 6, 8)
    r = check(m, x, independent=False)
    assert frozen_targets(r) == []
    assert "_wrapped_window_sum(" not in r.model.code  # the body's ops, not the call
    assert sub(r, "a").out_features == 8 and r.model.w.shape == (6, 8) and sub(r, "b").in_features == 6
    assert f"{(16 // 2) ** -0.5}" in r.model.code  # the size-derived scale keeps the original value


def test_normalize_over_channels_is_exact():
    """F.normalize along a channel dim: removed (zeroed) channels add nothing to the norm (Swin V2's cosine attention)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(F.normalize(self.a(x), dim=-1) * 3.0)

    m = Net()
    r = check(m, torch.randn(3, 8))
    assert frozen_targets(r) == [] and sub(r, "a").out_features == 8 and sub(r, "b").in_features == 8


def _wrapped_add_tail(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MViT's _add_shortcut / _add_rel_pos: an in-place add into a slice of the tokens."""
    x[:, 1:, :] += y[:, 1:, :]
    return x


def _wrapped_write_channels(x: torch.Tensor, y: torch.Tensor) -> None:
    """Writes into a contiguous part of the channel dim and returns nothing: the caller reads x again."""
    x[:, :, 4:12] = y * 2.0


def _wrapped_view_update(x: torch.Tensor) -> torch.Tensor:
    """Updates x through a view with no write-back (x changes because t is a view of it)."""
    t = x[:, 1:]
    t += 1.0
    t.mul_(2.0)
    return x


torch.fx.wrap("_wrapped_add_tail")
torch.fx.wrap("_wrapped_write_channels")
torch.fx.wrap("_wrapped_view_update")


class InPlaceNet(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16 if kind != "write" else 8)
        self.out = nn.Linear(16, 4)

    def forward(self, x):
        h = self.a(x)
        if self.kind == "tail":
            h = _wrapped_add_tail(h, self.b(x))
        elif self.kind == "write":
            _wrapped_write_channels(h, self.b(x))
        else:
            h = _wrapped_view_update(h)
        return self.out(F.relu(h))


@pytest.mark.parametrize("kind", ["tail", "write", "view"])
def test_in_place_updates_in_wrapped_bodies_are_inlined(kind):
    """``x[:, 1:] += y``, ``x[..., 4:12] = v`` and updates through a view are inlined as the in-place
    updates they are (the update through a view changes x: the masked reference must see that too)."""
    m = InPlaceNet(kind)
    x = torch.randn(2, 5, 8)
    r = check(m, x, independent=False)
    assert frozen_targets(r) == []
    assert "_wrapped_" not in r.model.code
    assert sub(r, "a").out_features == 8
    if kind == "write":  # the written slice [4:12) of the channels is tied to b's outputs; its bounds follow the kept channels
        kept = kept_indices(m.a.weight, sub(r, "a").weight, 0)
        assert sub(r, "b").out_features == sum(4 <= k < 12 for k in kept)
    with torch.no_grad():
        fresh = torch.randn(2, 5, 8)
        assert r.model(fresh).shape == m(fresh).shape


def test_tensor_split_and_repeat_interleave():
    """MViT's pooling: tensor_split of the class token along tokens, and a positional table repeated along time."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.pos = nn.Parameter(torch.randn(2, 16))
            self.out = nn.Linear(16, 4)

        def forward(self, x):  # [B, 1 + 2 * 3, 8]
            h = self.a(x)
            cls, rest = torch.tensor_split(h, (1,), dim=1)
            rest = rest + torch.repeat_interleave(self.pos, 3, dim=0)
            lo, hi = torch.tensor_split(h, [6], dim=2)  # a channel split at an index
            return self.out(F.relu(torch.cat([cls, rest], dim=1))) + self.out(torch.cat([hi, lo], dim=2))

    m = Net()
    r = check(m, torch.randn(2, 7, 8), independent=False)
    assert frozen_targets(r) == []
    assert sub(r, "a").out_features < 16 and r.model.pos.shape[1] == sub(r, "a").out_features


def test_slice_bounds_read_at_run_time():
    """timm's Swin pads to whole windows and crops back with ``x[:, :H, :W, :]``, ``H, W`` read off a shape.
    A run-time bound over a spatial dim leaves the channels prunable; over a channel dim it freezes that dim,
    and a bound read from a pruned tensor keeps its original value."""

    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x):
            B, C, H, W = x.shape
            h = F.pad(self.a(x).permute(0, 2, 3, 1), (0, 0, 0, 2, 0, 2))
            return self.out(F.relu(h[:, :H, :W, :].contiguous())).mean((1, 2))

    r = check(Crop(), torch.randn(2, 3, 6, 6), independent=False)
    assert frozen_targets(r) == [] and sub(r, "a").out_channels < 16

    class ChannelCrop(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 8)
            self.out, self.out2 = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            g = F.relu(self.b(x))
            h = self.a(x)[..., : g.shape[-1]]  # bound read from b's output, which prunes
            return self.out(F.relu(h)) + self.out2(g)

    r = check(ChannelCrop(), torch.randn(3, 8), independent=False)
    assert sub(r, "b").out_features < 8  # b prunes; the slice still takes a's first 8 channels
    assert sub(r, "a").out_features == 16 and sub(r, "out").in_features == 8


def test_module_called_several_times_is_updated_once():
    """CoaT calls one depthwise position-encoding conv in every block of a stage: its groups (and a shared
    GroupNorm's) follow the pruned width once, not once per call."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 1)
            self.pos = nn.Conv2d(16, 16, 3, padding=1, groups=16)
            self.norm = nn.GroupNorm(4, 16)
            self.b1, self.b2 = nn.Conv2d(16, 16, 1), nn.Conv2d(16, 16, 1)
            self.up = nn.ConvTranspose2d(16, 16, 2, stride=2, groups=16)
            self.out = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            h = self.a(x)
            for b in (self.b1, self.b2):
                h = h + self.pos(h)
                h = h + b(F.relu(self.norm(h)))
            h = self.up(h)
            return self.out(self.up(h[..., ::2, ::2]))

    r = check(Net(), torch.randn(2, 3, 8, 8), independent=False)
    n = sub(r, "a").out_channels
    assert n < 16 and sub(r, "pos").groups == n and sub(r, "up").groups == n
    assert sub(r, "norm").num_channels == n and sub(r, "norm").num_groups == 4 * n // 16


@pytest.mark.parametrize("functional", [False, True])
def test_single_group_groupnorm_prunes_like_layer_norm(functional):
    """PoolFormer's GroupNorm(1, C) normalizes over C, H, W: its channels prune one by one (the group count
    stays 1), where more groups prune whole groups."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.out = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 32, 1), nn.Conv2d(32, 16, 1), nn.Conv2d(16, 4, 1)
            self.n1, self.n2 = nn.GroupNorm(1, 16), nn.GroupNorm(1, 16)

        def norm(self, m, h):
            return F.group_norm(h, 1, m.weight, m.bias, m.eps) if functional else m(h)

        def forward(self, x):
            h = self.a(x)
            h = h + self.c(F.gelu(self.b(self.norm(self.n1, h))))
            return self.out(self.norm(self.n2, h))

    m = Net()
    for n in (m.n1, m.n2):
        nn.init.normal_(n.weight)
        nn.init.normal_(n.bias)
    r = check(m, torch.randn(2, 3, 5, 5), independent=False)
    assert frozen_targets(r) == []
    assert sub(r, "a").out_channels < 16 and r.model.n1.weight.shape == (sub(r, "a").out_channels,)
    if not functional:
        assert r.model.n1.num_groups == 1 and r.model.n1.num_channels == sub(r, "a").out_channels


def test_positional_encoding_built_from_numbers():
    """XCiT / EdgeNeXt Fourier features: a mask's cumsum, arange, ``t ** (2 * (i // 2) / d)``, ~mask, repeat with
    more repeats than dims, type_as; none of them is an unknown op, and the channels they meet prune."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj, self.a, self.out = nn.Conv2d(8, 16, 1), nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)

        def forward(self, x):
            B, _, H, W = x.shape
            mask = ~torch.zeros(1, H, W, dtype=torch.bool)
            y = mask.cumsum(1, dtype=torch.float32)
            i = torch.arange(4, dtype=torch.float32)
            t = 10000 ** (2 * (i // 2) / 4)
            pos = torch.cat([(y[..., None] / t).sin(), (y[..., None] / t).cos()], dim=3).permute(0, 3, 1, 2)
            pos = self.proj(pos.type_as(x)).repeat(B, 1, 1, 1)
            h = self.a(x) + pos.repeat(1, 1, 1, 1)
            return self.out(F.relu(h)).repeat(2, 1, 1, 1, 1)

    r = check(Net(), torch.randn(2, 3, 5, 5), independent=False)
    assert frozen_targets(r) == []
    assert sub(r, "a").out_channels < 16 and sub(r, "proj").out_channels == sub(r, "a").out_channels


def test_channel_cumsum_and_channel_repeat_freeze():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)
            self.out2 = nn.Linear(32, 4)

        def forward(self, x):
            return self.out(self.a(x).cumsum(-1)) + self.out2(self.b(x).repeat(1, 2))

    r = prune(Net(), (torch.randn(3, 8),), ratio=0.5, granularity=1)
    assert sub(r, "a").out_features == 16 and sub(r, "b").out_features == 16
    assert r.report.verification["passed"]


@pytest.mark.parametrize("functional", [False, True])
def test_unfold_expands_each_channel_to_its_kernel_positions(functional):
    """TNT's pixel embedding: nn.Unfold (im2col) then a linear over C * kh * kw: channels prune through it."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.unfold, self.fc, self.out = nn.Conv2d(3, 16, 1), nn.Unfold(2, stride=2), nn.Linear(64, 8), nn.Linear(8, 4)

        def forward(self, x):
            h = F.relu(self.a(x))
            cols = F.unfold(h, 2, stride=2) if functional else self.unfold(h)  # [N, 16 * 4, L]
            return self.out(F.relu(self.fc(cols.transpose(1, 2))))

    r = check(Net(), torch.randn(2, 3, 6, 6), independent=False)
    assert frozen_targets(r) == []
    n = sub(r, "a").out_channels
    assert n < 16 and sub(r, "fc").in_features == 4 * n


@pytest.mark.parametrize("functional_slice", [False, True])
def test_interleaved_rotary_pairs_prune_together(functional_slice):
    """GPT-J / EVA-02 rotary embedding: x[..., ::2] and x[..., 1::2] rotate the pairs (2i, 2i+1). Each pair is
    one channel (the rotation's tables are sliced with it); a strided slice that is not one position of every
    pair freezes its dim."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Linear(8, 16), nn.Linear(16, 4)
            self.b, self.out2 = nn.Linear(8, 16), nn.Linear(7, 4)
            ang = torch.arange(5.0)[:, None] * torch.linspace(0.1, 1.0, 8)
            self.register_buffer("cos", ang.cos())
            self.register_buffer("sin", ang.sin())

        def forward(self, x):  # [B, 5, 8]
            h = self.a(x)
            if functional_slice:
                e, o = torch.ops.aten.slice.Tensor(h, 2, 0, None, 2), torch.ops.aten.slice.Tensor(h, 2, 1, 9223372036854775807, 2)
            else:
                e, o = h[..., ::2], h[..., 1::2]
            r = torch.stack([e * self.cos - o * self.sin, e * self.sin + o * self.cos], -1).flatten(-2)
            g = self.b(x)
            return self.out(F.relu(r)) + self.out2(g[..., 1:15:2])  # 7 odd channels of 16: not whole pairs

    m = Net()
    r = check(m, torch.randn(3, 5, 8), independent=False, granularity=1)
    assert frozen_targets(r) == []
    n = sub(r, "a").out_features
    assert n < 16 and n % 2 == 0 and r.model.cos.shape == (5, n // 2)
    kept = kept_indices(m.a.weight, sub(r, "a").weight, 0)
    assert all(k ^ 1 in kept for k in kept)  # whole pairs
    assert sub(r, "b").out_features == 16


def test_mean_over_channels_keeps_the_original_divisor():
    """RMSNorm written as ops (LLaMA): mean(x**2) over the hidden dim. The pruned mean is scaled by kept / original,
    so it equals the original's mean with the removed channels zeroed, and the hidden size prunes."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.out = nn.Linear(8, 32), nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 4)
            self.w = nn.Parameter(torch.randn(32))

        def rms(self, h):
            return self.w * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)

        def forward(self, x):
            h = self.a(x)
            h = h + self.c(F.relu(self.b(self.rms(h))))
            return self.out(self.rms(h))

    m = Net()
    r = check(m, torch.randn(3, 5, 8), independent=False)
    assert frozen_targets(r) == []
    assert sub(r, "a").out_features == 16 and r.model.w.shape == (16,)
    assert "mean * 0.5" in r.model.code


def test_max_over_channels_freezes_them():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.out = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            h = self.a(x)
            return self.out(h - h.amax(-1, keepdim=True))

    r = prune(Net(), (torch.randn(3, 8),), ratio=0.5, granularity=1)
    assert sub(r, "a").out_features == 16


def _wrapped_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """Swin-style: the batch folded into the window count, sizes read from the input."""
    B, N, C = x.shape
    if window > N:  # a branch on a non-batch size
        window = N
    w = x.reshape(B * (N // window), window, C)  # the batch enters the reshape
    w = w - w.mean(1, keepdim=True)
    return w.reshape(B, N, C)


torch.fx.wrap("_wrapped_windows")


def test_wrapped_function_reads_the_batch_size_at_run_time():
    """A size that changes with the batch is read at run time in the inlined body, the others are constants:
    the pruned model runs at any batch size."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(F.relu(_wrapped_windows(self.a(x), 3)))

    m = Net()
    r = check(m, torch.randn(2, 6, 8), independent=False)
    assert frozen_targets(r) == [] and "_wrapped_windows(" not in r.model.code
    assert sub(r, "a").out_features == 8
    xb = torch.randn(5, 6, 8)
    with torch.no_grad():
        yb = r.model(xb)
        ys = torch.cat([r.model(xb[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(yb, ys)
