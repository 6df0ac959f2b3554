"""Recurrent layers (passes/ops/recurrent.py): nn.LSTM / nn.GRU / nn.RNN and ONNX LSTM / GRU / RNN.

The hidden size prunes with the gate blocks of every weight together, across directions
and layers; the pruned model is verified against the masked original (whose recurrent
columns reading removed units are zeroed), and the checks are shown to fail on a
corrupted weight and on a reference without those columns zeroed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import compiler
from frontends.errors import InternalError, VerificationError
from passes.ops import op_spec

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class Tagger(nn.Module):
    """Linear -> ReLU -> recurrent layer -> Linear on its output sequence (and its last hidden state)."""

    def __init__(self, cell: str, use_state: bool = False, **kw) -> None:
        super().__init__()
        self.cell, self.use_state = cell, use_state
        self.inp = nn.Linear(6, 16)
        self.rnn = CELLS[cell](16, 24, **kw)
        dirs = 2 if kw.get("bidirectional") else 1
        self.out = nn.Linear(24 * dirs, 5)
        self.state = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, hn = self.rnn(torch.relu(self.inp(x)))
        out = self.out(y)
        if self.use_state:
            h = hn[0] if self.cell == "lstm" else hn
            out = out + self.state(h[-1]).unsqueeze(-2)  # [B, 5] -> [B, 1, 5] (batch-first only)
        return out


def _x(batch_first: bool) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(3, 7, 6) if batch_first else torch.randn(7, 3, 6)


CASES = [
    pytest.param({}, id="plain"),
    pytest.param({"batch_first": True}, id="batch_first"),
    pytest.param({"bidirectional": True}, id="bidirectional"),
    pytest.param({"num_layers": 2}, id="two_layers"),
    pytest.param({"batch_first": True, "bidirectional": True, "num_layers": 2}, id="all"),
]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_torch_recurrent_hidden_prunes_and_verifies(cell, kw):
    torch.manual_seed(0)
    model = Tagger(cell, **kw).eval()
    x = _x(kw.get("batch_first", False))
    before = model(x)
    r = compiler.compile(model, (x,), ratio=0.5, granularity=1)
    rnn = r.model.rnn
    dirs = 2 if kw.get("bidirectional") else 1
    assert rnn.hidden_size == 12 and rnn.input_size == 8
    assert rnn.bidirectional == bool(kw.get("bidirectional")) and rnn.batch_first == bool(kw.get("batch_first"))
    for name, p in rnn.named_parameters():
        assert p.shape[0] == GATES[cell] * 12, name
        if name.startswith("weight_hh"):
            assert p.shape[1] == 12
        if name.startswith("weight_ih_l1"):
            assert p.shape[1] == 12 * dirs
    assert r.model.out.in_features == 12 * dirs
    assert r.report.frozen_ops == []
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] >= 4 and v["max_abs_error"] < 1e-9
    assert r.report.macs_after < 0.4 * r.report.macs_before
    torch.testing.assert_close(model(x), before)  # the input model is untouched
    assert r.model(x).shape == before.shape


def test_torch_lstm_macs_count_gates_and_recurrence():
    torch.manual_seed(0)
    model = Tagger("lstm", num_layers=2, bidirectional=True).eval()
    x = _x(False)
    r = compiler.compile(model, (x,), ratio=0.5, granularity=1)
    steps = 7 * 3

    def rnn_macs(i: int, h: int) -> int:
        layer0 = 2 * 4 * h * (i + h)
        layer1 = 2 * 4 * h * (2 * h + h)
        return steps * (layer0 + layer1)

    lin = steps * (6 * 16 + 48 * 5)
    assert r.report.macs_before == rnn_macs(16, 24) + lin
    assert r.report.macs_after == rnn_macs(8, 12) + steps * (6 * 8 + 24 * 5)


def test_torch_lstm_final_state_consumer_prunes_with_it():
    torch.manual_seed(0)
    model = Tagger("lstm", use_state=True, batch_first=True).eval()
    x = _x(True)
    r = compiler.compile(model, (x,), ratio=0.5, granularity=1)
    assert r.model.rnn.hidden_size == 12 and r.model.state.in_features == 12
    assert r.report.verification["passed"] and r.report.frozen_ops == []


def test_torch_gru_with_initial_state_input_keeps_hidden():
    """An initial state given by the caller is part of the model's interface: the hidden size is frozen."""

    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.rnn = nn.GRU(16, 24)
            self.out = nn.Linear(24, 5)

        def forward(self, x, h0):
            return self.out(self.rnn(self.inp(x), h0)[0])

    torch.manual_seed(0)
    x, h0 = _x(False), torch.randn(1, 3, 24)
    r = compiler.compile(WithState().eval(), (x, h0), ratio=0.5, granularity=1)
    assert r.model.rnn.hidden_size == 24 and r.model.rnn.input_size == 8
    assert r.report.verification["passed"]


def test_torch_lstm_proj_size_is_frozen_with_reason():
    class Proj(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(6, 16)
            self.rnn = nn.LSTM(16, 24, proj_size=8)
            self.out = nn.Linear(8, 5)

        def forward(self, x):
            return self.out(self.rnn(self.inp(x))[0])

    torch.manual_seed(0)
    r = compiler.compile(Proj().eval(), (_x(False),), ratio=0.5, granularity=1)
    assert r.model.rnn.hidden_size == 24 and r.model.rnn.proj_size == 8 and r.model.rnn.input_size == 8
    assert r.report.verification["passed"]
    reasons = " ".join(str(g) for g in r.report.to_dict().get("groups", []))
    assert "proj_size" in reasons


def test_corrupted_pruned_recurrent_weight_fails_verification(monkeypatch):
    """The check can fail: a pruned recurrent weight changed by the rewrite is caught."""
    spec = op_spec("recurrent")
    handler = spec.rewrite["torch"]

    def corrupt(rw, op, target):
        changed = handler(rw, op, target)
        with torch.no_grad():
            target.weight_hh_l0[0, 0] += 0.5
        return changed

    monkeypatch.setitem(spec.rewrite, "torch", corrupt)
    torch.manual_seed(0)
    with pytest.raises((InternalError, VerificationError), match="differs|verification"):
        compiler.compile(Tagger("gru").eval(), (_x(False),), ratio=0.5, granularity=1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_masked_reference_needs_the_recurrent_columns_dropped(monkeypatch, cell):
    """Zeroing the removed units' outputs alone is not the pruned layer: without the reference semantics
    (recurrent columns reading removed units zeroed) verification fails."""
    monkeypatch.delitem(op_spec("recurrent").reference, "torch")
    torch.manual_seed(0)
    with pytest.raises((InternalError, VerificationError), match="differs|verification"):
        compiler.compile(Tagger(cell).eval(), (_x(False),), ratio=0.5, granularity=1)
