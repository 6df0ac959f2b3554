"""Random architectures (hypothesis): residual adds, concat, split/chunk, grouped and depthwise
convs, SE gates, channel shuffle, flatten into linear; compiled with random policies and checked
against the masked reference and an independent one (the original with removed weights zeroed)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _checks import assert_close, independent_reference, masked_reference, prune

CHANNELS = [8, 12, 16, 24, 32]
BLOCKS = [
    "conv", "residual", "concat", "split", "chunk", "grouped", "depthwise", "se", "shuffle", "pool",
    "slice", "groupnorm", "transposed", "prelu",
]  # fmt: skip


class RandomNet(nn.Module):
    """A chain of blocks over an [N, C, H, W] feature map, then a linear head."""

    def __init__(self, blocks: list[tuple], head: str, c_in: int = 3, hw: int = 8) -> None:
        super().__init__()
        self.plan: list[tuple] = []
        self.layers = nn.ModuleDict()
        c = c_in
        for i, (kind, width, opt) in enumerate(blocks):
            name = f"b{i}"
            if kind == "pool" and hw < 2:
                kind = "conv"
            c = self._add(name, kind, c, width, opt)
            if kind == "pool":
                hw //= 2
        self.head = head
        self.fc = nn.Linear(c * hw * hw if head == "flatten" else c, 5)

    def _add(self, name: str, kind: str, c: int, width: int, opt: int) -> int:
        L = self.layers
        if kind == "conv" or (kind in ("residual", "se", "shuffle", "chunk") and c < 4):
            L[name] = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
            self.plan.append(("seq", name))
            return width
        if kind == "residual":
            L[name + "a"] = nn.Conv2d(c, width, 3, padding=1)
            L[name + "b"] = nn.Conv2d(width, c, 3, padding=1)
            self.plan.append(("residual", name))
            return c
        if kind == "concat":
            w2 = CHANNELS[opt % len(CHANNELS)]
            L[name + "a"], L[name + "b"] = nn.Conv2d(c, width, 1), nn.Conv2d(c, w2, 3, padding=1)
            self.plan.append(("concat", name))
            return width + w2
        if kind == "split":  # list sizes, each part its own conv, then added
            k = 1 + opt % (c - 1) if c > 1 else 1
            if c == 1:
                L[name] = nn.Sequential(nn.Conv2d(c, width, 1), nn.ReLU())
                self.plan.append(("seq", name))
                return width
            L[name + "a"], L[name + "b"] = nn.Conv2d(k, width, 1), nn.Conv2d(c - k, width, 3, padding=1)
            self.plan.append(("split", name, [k, c - k]))
            return width
        if kind == "chunk":  # equal chunks, concatenated back in the other order
            if c % 2:
                L[name] = nn.Sequential(nn.Conv2d(c, 2 * width, 1), nn.ReLU())
                self.plan.append(("seq", name))
                return 2 * width
            L[name + "a"], L[name + "b"] = nn.Conv2d(c // 2, width, 1), nn.Conv2d(c // 2, width, 1)
            self.plan.append(("chunk", name))
            return 2 * width
        if kind == "grouped":
            g = [d for d in (2, 4) if c % d == 0 and width % d == 0]
            g = g[opt % len(g)] if g else 1
            L[name] = nn.Sequential(nn.Conv2d(c, width, 3, padding=1, groups=g), nn.ReLU())
            self.plan.append(("seq", name))
            return width
        if kind == "depthwise":
            mult = 1 + opt % 2
            L[name] = nn.Sequential(nn.Conv2d(c, c * mult, 3, padding=1, groups=c), nn.BatchNorm2d(c * mult), nn.Hardswish())
            self.plan.append(("seq", name))
            return c * mult
        if kind == "se":
            L[name + "a"], L[name + "b"] = nn.Conv2d(c, max(c // 4, 2), 1), nn.Conv2d(max(c // 4, 2), c, 1)
            self.plan.append(("se", name))
            return c
        if kind == "shuffle":
            g = 2 if c % 2 == 0 else 1
            L[name] = nn.Conv2d(c, c, 1, groups=g)
            self.plan.append(("shuffle", name, g))
            return c
        if kind == "pool":
            self.plan.append(("pool", name))
            return c
        if kind == "slice":  # a contiguous channel range of x feeds a conv, the whole of x another
            lo = opt % c
            hi = min(c, lo + max(1, c // 2))
            L[name + "a"], L[name + "b"] = nn.Conv2d(hi - lo, width, 1), nn.Conv2d(c, width, 1)
            self.plan.append(("slice", name, lo, hi))
            return width
        if kind == "groupnorm":
            g = max(d for d in (1, 2, 4) if width % d == 0)
            L[name] = nn.Sequential(nn.Conv2d(c, width, 3, padding=1), nn.GroupNorm(g, width), nn.GELU())
            self.plan.append(("seq", name))
            return width
        if kind == "transposed":  # upsample by a transposed conv, back down by average pooling
            L[name] = nn.Sequential(nn.ConvTranspose2d(c, width, 2, stride=2), nn.ReLU(), nn.AvgPool2d(2))
            self.plan.append(("seq", name))
            return width
        if kind == "prelu":
            L[name] = nn.Sequential(nn.Conv2d(c, width, 1), nn.PReLU(width if opt % 2 else 1))
            self.plan.append(("seq", name))
            return width
        raise AssertionError(kind)

    def forward(self, x):
        L = self.layers
        for step in self.plan:
            kind, name = step[0], step[1]
            if kind == "seq":
                x = L[name](x)
            elif kind == "residual":
                x = F.relu(x + L[name + "b"](F.relu(L[name + "a"](x))))
            elif kind == "concat":
                x = torch.cat([F.relu(L[name + "a"](x)), F.silu(L[name + "b"](x))], dim=1)
            elif kind == "split":
                p, q = torch.split(x, step[2], dim=1)
                x = F.relu(L[name + "a"](p) + L[name + "b"](q))
            elif kind == "chunk":
                p, q = x.chunk(2, dim=1)
                x = torch.cat([F.relu(L[name + "b"](q)), F.relu(L[name + "a"](p))], dim=1)
            elif kind == "se":
                s = torch.sigmoid(L[name + "b"](F.relu(L[name + "a"](x.mean((2, 3), keepdim=True)))))
                x = x * s
            elif kind == "shuffle":
                g = step[2]
                n, c, h, w = x.shape
                x = L[name](x).view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)
            elif kind == "pool":
                x = F.max_pool2d(x, 2)
            elif kind == "slice":
                x = F.relu(L[name + "a"](x[:, step[2] : step[3]]) + L[name + "b"](x))
        x = torch.flatten(x, 1) if self.head == "flatten" else x.mean((2, 3))
        return self.fc(x)


blocks = st.lists(
    st.tuples(st.sampled_from(BLOCKS), st.sampled_from(CHANNELS), st.integers(0, 7)), min_size=1, max_size=6
)
policies = st.fixed_dictionaries(
    {
        "ratio": st.floats(0.1, 0.9),
        "equalization": st.sampled_from(["arithmetic_mean", "geometric_mean", "union", "intersection", "max", "sum"]),
        "scope": st.sampled_from(["local", "global"]),
        "granularity": st.sampled_from([1, 2, 4, 8]),
        "importance": st.sampled_from(["l1", "l2", "random"]),
        "normalizer": st.sampled_from(["max", "mean", "none"]),
    }
)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=blocks, head=st.sampled_from(["flatten", "mean"]), policy=policies, seed=st.integers(0, 2**16))
def test_random_architecture(blocks, head, policy, seed):
    torch.manual_seed(seed)
    m = RandomNet(blocks, head)
    with torch.no_grad():  # non-trivial norm statistics
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
            if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                mod.weight.normal_()
                mod.bias.normal_()
    m.eval()
    x = torch.randn(2, 3, 8, 8)
    r = prune(m, x, **policy)  # verification passed, output shape, MACs/params non-increasing, attributes
    rep = r.report
    assert rep.macs_after <= rep.macs_before
    assert r.model.fc.out_features == 5
    # fresh inputs of another batch size: the masked reference and an independent one
    x2 = torch.randn(3, 3, 8, 8)
    got = copy.deepcopy(r.model).double()(x2.double())
    with torch.no_grad():
        assert_close(masked_reference(r, (x2,)), got, rtol=1e-9)
        assert_close(independent_reference(m, r.model)(x2.double()), got, rtol=1e-9)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(blocks=blocks, target=st.floats(0.2, 0.9))
def test_random_architecture_target_macs(blocks, target):
    torch.manual_seed(0)
    m = RandomNet(blocks, "mean").eval()
    r = prune(m, torch.randn(1, 3, 8, 8), target_macs=target)
    rep = r.report
    if rep.macs_after > target * rep.macs_before:  # unreachable: then it is the most that can be pruned
        assert rep.settings["ratio_used"] == 0.999
        assert prune(m, torch.randn(1, 3, 8, 8), ratio=0.999, scope="local").report.macs_after == rep.macs_after
