"""The random-architecture generator shared by the tests and ``benchmarks/fuzz.py``.

A network is a list of blocks ``(kind, width, opt)`` over an [N, C, H, W] feature map,
then a linear head (``flatten`` into the linear layer, or a spatial ``mean``). Block
kinds: plain conv, residual add, concat, split (list sizes), chunk, grouped and
depthwise convs, SE gate, channel shuffle, max pooling, channel slice, GroupNorm,
transposed conv, PReLU, and attention (multi-head self-attention over the H*W tokens,
explicit softmax or ``scaled_dot_product_attention``, added back residually).

The same spec builds the same model: ``build(spec)`` seeds torch with ``spec.seed`` and
randomizes every parameter and norm statistic (unique values, so kept indices can be
recovered from pruned weights by value matching).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "BLOCKS",
    "CHANNELS",
    "RandomNet",
    "ArchSpec",
    "build",
    "randomize",
    "random_spec",
    "blocks",
    "policies",
    "specs",
]

CHANNELS = [8, 12, 16, 24, 32]
BLOCKS = [
    "conv", "residual", "concat", "split", "chunk", "grouped", "depthwise", "se", "shuffle", "pool",
    "slice", "groupnorm", "transposed", "prelu", "attention",
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
        if kind == "attention":  # heads x head_dim of q, k, v from the C-dim tokens, projected back to C
            heads = 1 + opt % 2
            dh = max(2, width // (4 * heads))
            L[name + "q"], L[name + "k"], L[name + "v"] = (nn.Linear(c, heads * dh) for _ in range(3))
            L[name + "o"] = nn.Linear(heads * dh, c)
            self.plan.append(("attention", name, heads, dh, bool(opt & 4)))
            return c
        raise AssertionError(kind)

    def _attention(self, x: torch.Tensor, name: str, heads: int, dh: int, sdpa: bool) -> torch.Tensor:
        L = self.layers
        n, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        q, k, v = (L[name + s](t).reshape(n, h * w, heads, dh).transpose(1, 2) for s in "qkv")
        if sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(dh)), dim=-1) @ v
        a = a.transpose(1, 2).reshape(n, h * w, heads * dh)
        return x + L[name + "o"](a).transpose(1, 2).reshape(n, c, h, w)

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
            elif kind == "attention":
                x = self._attention(x, name, *step[2:])
        x = torch.flatten(x, 1) if self.head == "flatten" else x.mean((2, 3))
        return self.fc(x)


@dataclass
class ArchSpec:
    """Everything needed to rebuild one fuzzed model and its compile options (JSON-able)."""

    blocks: list[tuple[str, int, int]]
    head: str = "mean"
    seed: int = 0
    policy: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = [list(b) for b in self.blocks]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArchSpec:
        return cls([tuple(b) for b in d["blocks"]], d.get("head", "mean"), int(d.get("seed", 0)), dict(d.get("policy", {})))


def randomize(m: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and no constant-initialized parameter (PReLU's 0.25, norm scales)."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
        for p in m.parameters():
            if p.numel() > 1 and bool((p == p.reshape(-1)[0]).all()):
                p.normal_()
            elif p.numel() == 1:
                p.uniform_(0.1, 0.4)
    return m.eval()


def build(spec: ArchSpec) -> RandomNet:
    """The model of ``spec``, deterministic in ``spec.seed``, in eval mode."""
    torch.manual_seed(spec.seed)
    return randomize(RandomNet([tuple(b) for b in spec.blocks], spec.head))


EQUALIZATIONS = ["arithmetic_mean", "geometric_mean", "union", "intersection", "max", "sum"]
# criteria that leave the kept weights as they are (the independent reference zeroes removed ones)
CRITERIA = ["l1", "l2", "random", "bn_scale", "synflow", "activation", "n2ps", "taylor", "obd", "mrs", "obs"]
ONNX_CRITERIA = ["l1", "l2", "random"]


def random_spec(rng: random.Random, max_blocks: int = 6, criteria: list[str] | None = None) -> ArchSpec:
    """A random architecture and compile policy drawn from ``rng`` (the benchmark's sampler)."""
    n = rng.randint(1, max_blocks)
    bl = [(rng.choice(BLOCKS), rng.choice(CHANNELS), rng.randint(0, 7)) for _ in range(n)]
    policy: dict[str, Any] = {
        "ratio": round(rng.uniform(0.05, 0.95), 3),
        "equalization": rng.choice(EQUALIZATIONS),
        "scope": rng.choice(["local", "global"]),
        "granularity": rng.choice([1, 2, 4, 8]),
        "importance": rng.choice(criteria or CRITERIA),
        "normalizer": rng.choice(["max", "mean", "none"]),
    }
    if policy["importance"] in ("mrs", "obs"):  # scores only: no weight updates, so removed weights can be zeroed
        policy.update(bias_propagation=False, compensate=False)
    return ArchSpec(bl, rng.choice(["flatten", "mean"]), rng.randint(0, 2**16), policy)


try:  # hypothesis strategies (the test suite); the benchmark needs only random_spec
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    st = None  # type: ignore[assignment]

if st is not None:
    blocks = st.lists(
        st.tuples(st.sampled_from(BLOCKS), st.sampled_from(CHANNELS), st.integers(0, 7)), min_size=1, max_size=6
    )
    policies = st.fixed_dictionaries(
        {
            "ratio": st.floats(0.1, 0.9),
            "equalization": st.sampled_from(EQUALIZATIONS),
            "scope": st.sampled_from(["local", "global"]),
            "granularity": st.sampled_from([1, 2, 4, 8]),
            "importance": st.sampled_from(["l1", "l2", "random"]),
            "normalizer": st.sampled_from(["max", "mean", "none"]),
        }
    )
    specs = st.builds(ArchSpec, blocks, st.sampled_from(["flatten", "mean"]), st.integers(0, 2**16), policies)
