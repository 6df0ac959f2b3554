"""Workflows of the seeds: iterative schedules, lottery-ticket rewinding, sparsify + dead units,
sparsity regularizers, and compile under torch.distributed (two gloo processes)."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from _checks import kept_indices

import compiler
from frontends.errors import InvalidArgumentError


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 4))


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.fc1 = nn.Linear(16 * 4 * 4, 24)
        self.fc2 = nn.Linear(24, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x)).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 20, lr: float = 0.05) -> nn.Module:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _hidden_units(model: nn.Module) -> int:
    return sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))


# -- iterative schedule -----------------------------------------------------------------------


def test_iterative_schedule_reaches_cumulative_fractions_and_calls_back():
    model = _mlp()
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    calls = []

    def train_fn(m, step):
        calls.append((step, _hidden_units(m)))
        _fit(m, x, y, steps=2)  # trains in place, returns nothing

    evals = []

    def eval_fn(m):
        evals.append(_hidden_units(m))
        with torch.no_grad():
            return float((m(x).argmax(1) == y).float().mean())

    r = compiler.iterative_prune(model, (x[:2],), [0.2, 0.5, 0.8, 0.9], train_fn, eval_fn, granularity=1, verify=False)
    assert [c[0] for c in calls] == [1, 2, 3, 4]
    assert [h.step for h in r.history] == [0, 1, 2, 3, 4]
    hidden0 = 48 + 32
    for h, target in zip(r.history[1:], [0.2, 0.5, 0.8, 0.9], strict=True):
        assert abs(h.fraction - target) <= 0.02, (h.fraction, target)
    # the callback saw the pruned models, and the fractions are the hidden units really removed
    for (_, units), h in zip(calls, r.history[1:], strict=True):
        assert abs((1 - (units - 4) / hidden0) - h.fraction) < 1e-9
    assert _hidden_units(r.model) - 4 == round(hidden0 * 0.1)
    params = [h.params for h in r.history]
    assert params == sorted(params, reverse=True) and params[-1] == sum(p.numel() for p in r.model.parameters())
    assert all(isinstance(h.metric, float) and isinstance(h.metric_pruned, float) for h in r.history)
    assert len(evals) == 1 + 2 * 4
    assert _hidden_units(model) == 48 + 32 + 4  # the caller's model is untouched
    assert "| 4 | 0.900 |" in r.table()


def test_iterative_per_step_fractions_and_macs_measure():
    model = _mlp()
    x = torch.randn(2, 12)
    r = compiler.iterative_prune(model, (x,), [0.5, 0.5], cumulative=False, granularity=1, verify=False)
    assert abs(r.history[-1].fraction - 0.75) <= 0.02
    r = compiler.iterative_prune(model, (x,), [0.3, 0.6], measure="macs", granularity=1, verify=False)
    macs0 = r.history[0].macs
    for h in r.history[1:]:
        assert h.macs <= (1 - h.target) * macs0 and h.fraction >= h.target
    with pytest.raises(InvalidArgumentError):
        compiler.iterative_prune(model, (x,), [0.5], ratio=0.3)
    with pytest.raises(InvalidArgumentError):
        compiler.iterative_prune(model, (x,), [0.5, 0.2])


# -- lottery tickets ---------------------------------------------------------------------------


def _slice_like(init: torch.Tensor, trained: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """``init`` sliced as ``trained`` was sliced into ``pruned`` (indices recovered from the values)."""
    out = init
    for axis in range(trained.dim()):
        if pruned.shape[axis] != trained.shape[axis]:
            idx = kept_indices(trained, pruned, axis)
            out = out.index_select(axis, torch.as_tensor(idx))
    return out


def test_lottery_rewind_equals_init_slices():
    model = _CNN()
    init = copy.deepcopy(model.state_dict())
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    _fit(model, x, y, steps=10)
    trained = copy.deepcopy(model.state_dict())
    r = compiler.lottery_ticket(model, (x[:2],), init, [0.5], granularity=1)
    pruned = r.results[0].model.state_dict()  # the trained weights, sliced
    ticket = r.model.state_dict()
    assert ticket.keys() == pruned.keys()
    sliced = 0
    for k, w in ticket.items():
        if k.endswith("num_batches_tracked"):
            continue
        if w.dim() == 1:  # biases and norm vectors follow their layer's kept output channels
            owner = {"bn1": "conv1"}.get(k.split(".")[0], k.split(".")[0]) + ".weight"
            idx = kept_indices(trained[owner], pruned[owner], 0)
            expect = init[k][idx]
        else:
            expect = _slice_like(init[k], trained[k], pruned[k])
        assert torch.equal(w, expect), k
        sliced += w.shape != init[k].shape
    assert sliced >= 6
    with torch.no_grad():
        assert not torch.equal(r.model.conv1.weight, r.results[0].model.conv1.weight)


def test_iterated_lottery_keeps_init_values_and_retrains():
    model = _CNN()
    init = copy.deepcopy(model.state_dict())
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    _fit(model, x, y, steps=10)
    seen = []

    def retrain(m, step):
        # before retraining, every weight is a slice of its initial value
        for k, w in m.state_dict().items():
            if w.dim() >= 2:
                for axis in range(w.dim()):
                    kept_indices(init[k], w, axis)
        seen.append(step)
        return _fit(m, x, y, steps=3)

    r = compiler.lottery_ticket(model, (x[:2],), init, [0.5, 0.75], retrain, granularity=1, verify=False)
    assert seen == [1, 2]
    assert abs(r.history[-1].fraction - 0.75) <= 0.02
    with pytest.raises(InvalidArgumentError):
        compiler.rewind(r.results[0], _mlp())


# -- unstructured sparsity, then dead units -------------------------------------------------------


def test_sparsify_then_f_nz_gives_a_dense_smaller_network():
    model = _mlp()
    with torch.no_grad():  # units 0-9 of each hidden layer get tiny fan-in weights: a threshold kills them
        model[0].weight[:10] *= 1e-4
        model[2].weight[:10] *= 1e-4
    x = torch.randn(128, 12)
    c = compiler.sparsify_and_compact(model, (x[:2],), threshold=1e-3, calibration=[x[:64], x[64:]])
    assert 0.1 < c.sparsity < 0.5
    out = c.model
    assert [m.out_features for m in out.modules() if isinstance(m, nn.Linear)] == [38, 22, 4]
    for m in out.modules():
        if isinstance(m, nn.Linear):
            assert (m.weight != 0).any(1).all() and (m.weight != 0).any(0).all()  # no dead rows or columns
    assert c.result.report.params_after < c.result.report.params_before
    with torch.no_grad():  # units with no fan-in are constants: bias propagation removes them exactly
        torch.testing.assert_close(out(x), c.sparse(x), rtol=1e-5, atol=1e-5)
    # without bias propagation the removed constants are lost
    c2 = compiler.sparsify_and_compact(model, (x[:2],), threshold=1e-3, bias_propagation=False, verify=False)
    with torch.no_grad():
        assert (c2.model(x) - c.sparse(x)).abs().max() > 1e-3


def test_magnitude_pruner_holds_zeros_during_training():
    model = _mlp()
    x, y = torch.randn(64, 12), torch.randint(0, 4, (64,))
    pruner = compiler.MagnitudePruner(model, scope="global")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    pruner.attach(opt)
    _fit(model, x, y, steps=3)  # builds up momentum
    assert abs(pruner.prune(0.5) - 0.5) < 0.01
    zeros = [m.weight == 0 for m in pruner.layers.values()]
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all((m.weight.grad[z] == 0).all() for m, z in zip(pruner.layers.values(), zeros, strict=True))
        opt.step()
    assert all((m.weight[z] == 0).all() for m, z in zip(pruner.layers.values(), zeros, strict=True))
    assert abs(pruner.prune(0.8) - 0.8) < 0.01
    assert all((m.weight[z] == 0).all() for m, z in zip(pruner.layers.values(), zeros, strict=True))  # masks only grow
    pruner.remove()


# -- regularizers ---------------------------------------------------------------------------------


class _Res(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.stem(x)))
        h = h + self.conv2(F.relu(self.conv1(h)))
        return self.head(h.mean((2, 3)))


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.flatten(1).pow(2).sum(1)


def test_group_weight_decay_couples_residual_channels():
    torch.manual_seed(0)
    model = _Res()
    reg = compiler.SparsityRegularizer(model, (torch.randn(1, 1, 8, 8),), group_decay=1.0)
    # the residual stream: stem and conv2 share a channel; conv1 is a group of its own; the output is frozen
    expect = (_rows(model.stem.weight) + _rows(model.conv2.weight)).sqrt().sum() + _rows(
        model.conv1.weight
    ).sqrt().sum()
    torch.testing.assert_close(reg(), expect)
    # without a trace: one norm per output channel of every layer, output layer included
    flat = sum(_rows(m.weight).sqrt().sum() for m in (model.stem, model.conv1, model.conv2, model.head))
    torch.testing.assert_close(compiler.group_weight_decay(model), flat)
    torch.testing.assert_close(compiler.bn_l1(model), model.bn.weight.abs().sum())


def test_regularizers_are_differentiable_and_decrease_under_sgd():
    torch.manual_seed(0)
    model = _Res()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
    reg = compiler.SparsityRegularizer(model, (torch.randn(1, 1, 8, 8),), group_decay=1.0, bn_l1=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    values = []
    for _ in range(6):
        loss = reg()
        opt.zero_grad()
        loss.backward()
        values.append(loss.item())
        for p in (model.stem.weight, model.conv1.weight, model.conv2.weight, model.bn.weight):
            assert p.grad is not None and p.grad.abs().sum() > 0
        head = model.head.weight.grad  # frozen output channels are not penalized
        assert head is None or not head.any()
        opt.step()
    assert all(b < a for a, b in zip(values, values[1:], strict=False)), values


# -- torch.distributed ----------------------------------------------------------------------------


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_distributed_compile_two_gloo_ranks(tmp_path):
    import _dist_worker as w
    import torch.multiprocessing as mp

    # spawn: a fork of a process that already ran autograd (earlier tests) can hang or fail
    mp.start_processes(w.worker, args=(2, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    r0, r1 = (torch.load(os.path.join(tmp_path, f"rank{i}.pt"), weights_only=True) for i in range(2))
    model, data = w.make_model(), w.make_data()
    for name, kw in w.CASES.items():
        # every rank pruned identically ...
        assert torch.equal(r0[name]["pruned"], r1[name]["pruned"]), name
        assert r0[name]["pruned"].any()
        for k in r0[name]["state"]:
            assert torch.equal(r0[name]["state"][k], r1[name]["state"][k]), (name, k)
        # ... and as one process does on the union of the shards (rank 0's weights)
        ref = compiler.compile(model, (data[0][0][:2],), calibration=data, **kw)
        assert torch.equal(r0[name]["pruned"], torch.as_tensor(ref.plan.selection.pruned)), name
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(r0[name]["state"][k], v, rtol=1e-6, atol=1e-7)
    # fine-tuning under DDP on different shards keeps the ranks' pruned models in sync
    for k in r0["finetuned"]:
        assert torch.equal(r0["finetuned"][k], r1["finetuned"][k]), k


def test_distributed_compile_without_a_process_group_is_compile():
    model = _mlp()
    x = torch.randn(32, 12)
    a = compiler.distributed_compile(model, (x[:2],), [x], importance="activation", granularity=1)
    b = compiler.compile(model, (x[:2],), importance="activation", calibration=[x], granularity=1)
    assert (a.plan.selection.pruned == b.plan.selection.pruned).all()
