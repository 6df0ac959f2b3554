"""Data-driven criteria on an ONNX file against the PyTorch path, on held-out digits.

A small CNN is trained in-process on scikit-learn's bundled digits (8x8, 10 classes; train,
calibration and evaluation samples disjoint, seeded), exported to ONNX (TorchScript exporter,
opset 17, dynamic batch), and pruned at ratio 0.5 by each criterion the ONNX adapter serves:
once as a PyTorch module (``compiler.compile`` with the calibration batches), once as the
ONNX file from the command line (``prunec prune IN.onnx -o OUT.onnx --importance C
--calibration cal.npz``, batches of 64 — the PyTorch path gets the same batches). Reported:
accuracy of each pruned model on the evaluation samples (the ONNX one in ONNX Runtime), mean
over seeds, and the largest |torch - onnx| difference of one seed.

    python benchmarks/onnx_calibration.py [--seeds 3]

Writes benchmarks/results/onnx_calibration.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import compiler  # noqa: E402
from compiler import cli  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# (row name, importance, extra compile() options: a case with options runs the ONNX path through the API, the
# command line having no flag for them)
CASES: list[tuple[str, str, dict]] = [
    ("l1", "l1", {}),
    ("l2", "l2", {}),
    ("activation", "activation", {}),
    ("activation + bias propagation (API)", "activation", {"bias_propagation": True}),
    ("n2ps", "n2ps", {}),
    ("obs (with compensation)", "obs", {}),
    ("mrp", "mrp", {}),
]
BATCH = cli.CALIBRATION_BATCH


class DigitsCNN(nn.Module):
    """Two padded convs, a max pool, an unpadded conv without bias, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = nn.Conv2d(32, 32, 3, bias=False)
        self.fc1 = nn.Linear(32 * 2 * 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.c1(x))
        x = F.max_pool2d(F.relu(self.c2(x)), 2)
        x = F.relu(self.c3(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def digits_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Disjoint train (1000), calibration (300) and evaluation (497) samples: images [N, 1, 8, 8] in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    parts = {"train": perm[:1000], "cal": perm[1000:1300], "eval": perm[1300:]}
    return {k: (x[ix], y[ix]) for k, ix in parts.items()}


def train(x: np.ndarray, y: np.ndarray, seed: int = 0, epochs: int = 15) -> DigitsCNN:
    """A :class:`DigitsCNN` trained with Adam (seeded: the same weights on every run on one machine)."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def export(model: nn.Module, path: str) -> str:
    """The model as ONNX (TorchScript exporter, opset 17), input ``x`` with a dynamic batch."""
    with warnings_off():
        torch.onnx.export(
            model, (torch.zeros(1, 1, 8, 8),), path, dynamo=False, opset_version=17, input_names=["x"],
            output_names=["logits"], dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}},
        )  # fmt: skip
    return path


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def batches(x: np.ndarray) -> list[np.ndarray]:
    """The calibration batches the CLI makes of ``x`` (``--calibration``: 64 samples each)."""
    return [x[i : i + BATCH] for i in range(0, len(x), BATCH)]


def torch_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def onnx_accuracy(path: str, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return float((sess.run(None, {sess.get_inputs()[0].name: x})[0].argmax(1) == y).mean())


def prune_cli(src: str, out: str, importance: str, cal_npz: str) -> None:
    """``prunec prune`` in-process; raises where it does not exit 0."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli.main(["prune", src, "-o", out, "--ratio", "0.5", "--importance", importance, "--calibration", cal_npz])
    if code != 0:
        raise RuntimeError(f"prunec prune --importance {importance} exited {code}: {err.getvalue().strip()}")


def run_seed(seed: int, folder: str) -> dict[str, tuple[float, float]]:
    """Accuracy of the torch and the ONNX path per case, for one seed."""
    data = digits_splits(seed)
    model = train(*data["train"], seed=seed)
    src = export(model, os.path.join(folder, f"digits{seed}.onnx"))
    cal_npz = os.path.join(folder, f"cal{seed}.npz")
    np.savez(cal_npz, x=data["cal"][0])
    xe, ye = data["eval"]
    out: dict[str, tuple[float, float]] = {"unpruned": (torch_accuracy(model, xe, ye), onnx_accuracy(src, xe, ye))}
    cal = [torch.from_numpy(b) for b in batches(data["cal"][0])]
    for k, (name, importance, options) in enumerate(CASES):
        pruned_t = compiler.compile(model, (torch.from_numpy(xe[:8]),), ratio=0.5, importance=importance, calibration=cal, **options)
        dst = os.path.join(folder, f"pruned{seed}_{k}.onnx")
        if options:
            res = compiler.compile(src, (xe[:8],), ratio=0.5, importance=importance, calibration=[b.numpy() for b in cal], **options)
            with open(dst, "wb") as f:
                f.write(res.model.SerializeToString())
        else:
            prune_cli(src, dst, importance, cal_npz)
        out[name] = (torch_accuracy(pruned_t.model, xe, ye), onnx_accuracy(dst, xe, ye))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    per_seed = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(args.seeds):
            per_seed.append(run_seed(seed, folder))
            print(f"seed {seed} done ({time.time() - t0:.0f}s)", file=sys.stderr)
    names = list(per_seed[0])
    lines = [
        "# Data-driven criteria on ONNX vs PyTorch (digits CNN, ratio 0.5)",
        "",
        "`python benchmarks/onnx_calibration.py --seeds " + str(args.seeds) + "`. A small CNN "
        "(conv 16 - conv 32 - maxpool - conv 32 without bias - linear 64 - linear 10) trained on 1000 "
        "digits, exported to ONNX (TorchScript exporter, opset 17); 300 other digits calibrate, 497 more "
        "evaluate. The PyTorch path is `compiler.compile(module, ratio=0.5, importance=C, calibration=batches)`, "
        "the ONNX path is `prunec prune digits.onnx -o out.onnx --ratio 0.5 --importance C --calibration cal.npz` "
        f"(the same batches of {BATCH}); the ONNX model is evaluated in ONNX Runtime. Granularity 8 (the default) "
        "in both. Accuracy on the evaluation digits, mean over seeds; the last column is the largest "
        "|torch - onnx| of one seed.",
        "",
        "| criterion | torch | onnx | max abs difference (one seed) |",
        "|---|---|---|---|",
    ]
    for n in names:
        t = np.mean([s[n][0] for s in per_seed])
        o = np.mean([s[n][1] for s in per_seed])
        d = max(abs(s[n][0] - s[n][1]) for s in per_seed)
        lines.append(f"| {n} | {t:.3f} | {o:.3f} | {d:.3f} |")
    lines += [
        "",
        "Criteria that need gradients (taylor, taylor2, mrs, obd, synflow) are not served on ONNX models; "
        "`prunec prune` refuses them in one line naming the criteria above.",
        "",
        f"Total time {time.time() - t0:.0f}s on {os.cpu_count()} CPU cores (`OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}`).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "onnx_calibration.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
