"""``compiler.workflows.distill`` (issue 18, point 4): a short recovery of a pruned model from the original."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import compiler
from compiler.workflows import distill


def _digits_images():
    from sklearn.datasets import load_digits

    d = load_digits()
    X = torch.tensor(d.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    return X[perm], y[perm]


@pytest.fixture(scope="module")
def digits_cnn():
    torch.manual_seed(0)
    X, y = _digits_images()
    from _distill_worker import digits_net

    m = digits_net()
    opt = torch.optim.Adam(m.parameters(), 3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        i = torch.randint(0, 1200, (128,), generator=g)
        loss = F.cross_entropy(m(X[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    pruned = compiler.compile(m, (X[:2],), ratio=0.75, importance="l2", granularity=1).model
    return m, pruned, X, y


def _agreement(a, b, X):
    with torch.no_grad():
        return float((a(X).argmax(1) == b(X).argmax(1)).float().mean())


def test_distill_improves_held_out_agreement(digits_cnn, capsys):
    teacher, student, X, y = digits_cnn
    before_state = {k: v.clone() for k, v in student.state_dict().items()}
    train = [X[i : i + 32] for i in range(0, 512, 32)]  # unlabelled: images only
    held = [X[i : i + 128] for i in range(1200, len(X), 128)]
    r = distill(teacher, student, train, steps=200, eval_data=held, lr=3e-3)
    assert r.steps == 200 and "agreement" in r.before
    assert r.after["agreement"] > r.before["agreement"] + 0.05, (r.before, r.after)
    assert r.after["loss"] < 0.5 * r.before["loss"]
    Xh = X[1200:]
    assert r.after["agreement"] == pytest.approx(_agreement(r.model, teacher, Xh), abs=1e-6)
    assert _agreement(r.model, teacher, Xh) > _agreement(student, teacher, Xh)
    # accuracy on labels nobody trained on follows
    with torch.no_grad():
        acc = lambda m: float((m(Xh).argmax(1) == y[1200:]).float().mean())  # noqa: E731
        assert acc(r.model) > acc(student)
    assert all(torch.equal(before_state[k], v) for k, v in student.state_dict().items())  # the caller's student is untouched
    err = capsys.readouterr().err
    assert "distill: step 200/200" in err and "held-out before" in err


def test_distill_hidden_states_of_dict_inputs():
    """Keyword-argument batches (as transformers take) and a dict output without logits: output MSE."""

    class Enc(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(12, width), nn.Linear(width, 8)

        def forward(self, x, scale):
            return {"last_hidden_state": self.b(torch.relu(self.a(x))) * scale}

    torch.manual_seed(0)
    teacher, student = Enc(32).eval(), Enc(8).eval()
    batches = [{"x": torch.randn(16, 5, 12), "scale": torch.tensor(2.0)} for _ in range(6)]
    r = distill(teacher, student, batches[:4], steps=150, eval_data=batches[4:], lr=1e-2, progress=False)
    assert "agreement" not in r.after
    assert r.after["loss"] < 0.5 * r.before["loss"] and r.after["cosine"] > r.before["cosine"]


def test_distill_refuses_overlapping_or_bad_arguments(digits_cnn):
    teacher, student, X, _ = digits_cnn
    train = [X[i : i + 32] for i in range(0, 128, 32)]
    with pytest.raises(compiler.InvalidArgumentError):
        distill(teacher, student, train, steps=1, eval_data=train)
    with pytest.raises(compiler.InvalidArgumentError):
        distill(teacher, student, train, steps=1, eval_data=[train[0]])
    with pytest.raises(compiler.InvalidArgumentError):
        distill(teacher, student, train, steps=1, eval_data=[X[0:32]])  # the same tensor view again
    with pytest.raises(compiler.InvalidArgumentError):
        distill(teacher, student, train, steps=-1, eval_data=[X[1200:1300]])
    with pytest.raises(compiler.InvalidArgumentError):
        distill(teacher, student, train, steps=1, eval_data=[X[1200:1300]], logit_weight=0.0, hidden_weight=0.0)


def test_distill_two_gloo_ranks(digits_cnn, tmp_path):
    import _distill_worker as w
    import torch.multiprocessing as mp

    teacher, _, X, _ = digits_cnn
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")  # tensors only: the worker reads with weights_only=True
    torch.save(X, tmp_path / "x.pt")
    mp.start_processes(w.worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(os.path.join(tmp_path, f"rank{i}.pt"), weights_only=True) for i in range(2))
    for k in r0["state"]:  # DDP kept the ranks' students identical although each trained on its own shard
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert r0["after"] == r1["after"] and r0["after"]["samples"] == len(X) - 1200  # quality over both ranks' shards
    assert r0["after"]["agreement"] > r0["before"]["agreement"]
