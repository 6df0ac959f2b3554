"""A self-contained first run: build a small network, train it briefly on synthetic data, prune, verify."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DemoNet(nn.Module):
    """Residual add, concat, depthwise conv, squeeze-excitation gate, flatten into a linear layer."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1))
        self.left = nn.Conv2d(32, 24, 1)
        self.right = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Conv2d(32, 24, 1))
        self.se_fc1 = nn.Conv2d(48, 16, 1)
        self.se_fc2 = nn.Conv2d(16, 48, 1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(48 * 16, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.res(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        gate = torch.sigmoid(self.se_fc2(F.relu(self.se_fc1(x.mean((2, 3), keepdim=True)))))
        x = F.max_pool2d(F.relu(x * gate), 2)
        return self.head(self.pool(x))


def synthetic_digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes of 16x16 images: a bar at a class-dependent position and angle, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    angle = (y.float() * torch.pi / 10)[:, None, None]
    offset = (y.float() % 3 - 1)[:, None, None] * 3
    d = (xx - 7.5) * torch.cos(angle) + (yy - 7.5) * torch.sin(angle) - offset
    x = torch.exp(-(d**2) / 2.0) + 0.3 * torch.randn(n, 16, 16, generator=g)
    return x[:, None], y


def train(model: nn.Module, steps: int = 150, seed: int = 0) -> float:
    x, y = synthetic_digits(2048, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss)


def accuracy(model: nn.Module, seed: int = 1) -> float:
    x, y = synthetic_digits(1024, seed)
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
