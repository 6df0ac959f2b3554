"""Recurrent layers (passes/ops/recurrent.py): nn.LSTM / nn.GRU / nn.RNN and ONNX LSTM / GRU / RNN.

The hidden size prunes with the gate blocks of every weight together, across directions
and layers; the pruned model is verified against the masked original (whose recurrent
columns reading removed units are zeroed), and the checks are shown to fail on a
corrupted weight and on a reference without those columns zeroed.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
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
    (row,) = [lay for lay in r.report.layers if lay.kind == "recurrent"]  # the layer table has the LSTM
    assert (row.name, row.target, row.in_channels, row.out_channels) == ("rnn", "LSTM", (16, 8), (48, 24))

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



class SizeBranch(nn.Module):
    """A branch on the input's size: torch.fx cannot trace it, torch.export can (nn.LSTM becomes aten.lstm with
    its initial states made by zeros([L*D, B, H]))."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.rnn = CELLS[cell](16, 24, num_layers=2, bidirectional=True)
        self.out = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 3:
            x = x * 2
        return self.out(self.rnn(self.inp(x))[0])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_torch_export_recurrent_prunes_and_verifies_in_float64(cell):
    torch.manual_seed(0)
    x = _x(False)
    r = compiler.compile(SizeBranch(cell).eval(), (x,), ratio=0.5, granularity=1)
    assert r.report.to_dict()["trace_method"] == "torch.export"
    v = r.report.verification
    assert v["passed"] and v["dtype"] == "float64" and v["nodes_checked"] >= 5 and r.report.frozen_ops == []
    sd = r.model.state_dict()
    assert tuple(sd["rnn.weight_hh_l1_reverse"].shape) == (GATES[cell] * 12, 12)
    assert tuple(sd["rnn.weight_ih_l1"].shape) == (GATES[cell] * 12, 24)
    assert r.report.macs_after < 0.4 * r.report.macs_before
    assert r.model(x).shape == (7, 3, 5)


def test_torch_export_masked_reference_needs_the_recurrent_columns_dropped(monkeypatch):
    monkeypatch.delitem(op_spec("recurrent").reference, "torch")
    torch.manual_seed(0)
    with pytest.raises((InternalError, VerificationError), match="differs|verification"):
        compiler.compile(SizeBranch("gru").eval(), (_x(False),), ratio=0.5, granularity=1)

# -- ONNX: LSTM / GRU / RNN nodes exported from torch -------------------------------------------------


def _export(model: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=False, opset_version=17)
    return onnx.load_from_string(f.getvalue())


def _onnx_case(cell: str, kw: dict) -> tuple[onnx.ModelProto, np.ndarray]:
    torch.manual_seed(0)
    x = _x(kw.get("batch_first", False))
    return _export(Tagger(cell, **kw).eval(), x), x.numpy()


def _attr(node: onnx.NodeProto, name: str) -> int:
    return next(a.i for a in node.attribute if a.name == name)


@pytest.mark.parametrize("kw", [pytest.param({}, id="plain"), pytest.param(
    {"batch_first": True, "bidirectional": True, "num_layers": 2}, id="all")])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnx_recurrent_hidden_prunes_and_verifies_in_onnxruntime(cell, kw):
    import onnxruntime as ort

    proto, x = _onnx_case(cell, kw)
    original = proto.SerializeToString()
    r = compiler.compile(proto, (x,), ratio=0.5, granularity=1)
    assert proto.SerializeToString() == original  # the input model is untouched
    nodes = [n for n in r.model.graph.node if n.op_type == cell.upper()]
    assert len(nodes) == kw.get("num_layers", 1)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer}
    dirs = 2 if kw.get("bidirectional") else 1
    for k, n in enumerate(nodes):
        assert _attr(n, "hidden_size") == 12
        w, rr = inits[n.input[1]], inits[n.input[2]]
        assert w.shape == (dirs, GATES[cell] * 12, 8 if k == 0 else 12 * dirs)
        assert rr.shape == (dirs, GATES[cell] * 12, 12)
        assert inits[n.input[3]].shape == (dirs, 2 * GATES[cell] * 12)
    assert r.report.frozen_ops == []
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] >= 6
    assert r.report.macs_after < 0.4 * r.report.macs_before
    onnx.checker.check_model(r.model, full_check=True)
    sess = ort.InferenceSession(r.model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == (x.shape[0], x.shape[1], 5)


def test_onnx_macs_match_the_torch_path():
    torch.manual_seed(0)
    model = Tagger("lstm", bidirectional=True, num_layers=2).eval()
    x = _x(False)
    rt = compiler.compile(model, (x,), ratio=0.5, granularity=1)
    ro = compiler.compile(_export(model, x), (x.numpy(),), ratio=0.5, granularity=1)
    assert ro.report.macs_before == rt.report.macs_before
    assert ro.report.macs_after == rt.report.macs_after < 0.4 * ro.report.macs_before


def test_onnx_corrupted_pruned_recurrent_weight_fails_verification(monkeypatch):
    spec = op_spec("recurrent")
    handler = spec.rewrite["onnx"]

    def corrupt(rw, op, node):
        fixed = handler(rw, op, node)
        name = rw.nodes[node].input[2]
        t = rw.g.initializer[rw.init_pos[name]]
        arr = onnx.numpy_helper.to_array(t).copy()
        arr[0, 0, 0] += 0.5
        t.CopyFrom(onnx.numpy_helper.from_array(arr, name))
        return fixed

    monkeypatch.setitem(spec.rewrite, "onnx", corrupt)
    proto, x = _onnx_case("lstm", {})
    with pytest.raises((InternalError, VerificationError), match="differs|verification"):
        compiler.compile(proto, (x,), ratio=0.5, granularity=1)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_onnx_masked_reference_needs_the_recurrent_columns_dropped(monkeypatch, cell):
    monkeypatch.delitem(op_spec("recurrent").reference, "onnx")
    proto, x = _onnx_case(cell, {})
    with pytest.raises((InternalError, VerificationError), match="differs|verification"):
        compiler.compile(proto, (x,), ratio=0.5, granularity=1)


LSTM_STATES = """
g (float[5,2,6] x) => (float[2,2,4] y) {
  [lstm] ys, yh, yc = LSTM<hidden_size=8, direction="bidirectional">(x, W, R, B, , h0, c0, P)
  [mh] a = MatMul(yh, Wh)
  [mc] b = MatMul(yc, Wc)
  [add] y = Add(a, b)
}
"""


@pytest.mark.parametrize("corrupt", [False, True])
def test_onnx_lstm_states_and_peepholes_follow(corrupt):
    """initial_h / initial_c (initializers), peepholes and Y_h / Y_c (read downstream) follow the hidden units
    (layout 0: ONNX Runtime runs no layout=1 recurrent node). The independent check: the original with the removed
    units' rows, columns and states zeroed (a removed unit then stays at zero) computes what the pruned model does."""
    import onnxruntime as ort

    from tests._onnx_helpers import build

    shapes = {"W": (2, 32, 6), "R": (2, 32, 8), "B": (2, 64), "h0": (2, 2, 8), "c0": (2, 2, 8), "P": (2, 24),
              "Wh": (8, 4), "Wc": (8, 4)}  # fmt: skip
    m = build(LSTM_STATES, shapes)
    x = np.random.default_rng(3).standard_normal((5, 2, 6)).astype(np.float32)
    r = compiler.compile(m, (x,), ratio=0.5, granularity=1)
    assert r.report.verification["passed"] and r.report.verification["nodes_checked"] >= 3
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer}
    assert _attr(next(n for n in r.model.graph.node if n.op_type == "LSTM"), "hidden_size") == 4
    assert inits["W"].shape == (2, 16, 6) and inits["R"].shape == (2, 16, 4) and inits["B"].shape == (2, 32)
    assert inits["h0"].shape == (2, 2, 4) and inits["c0"].shape == (2, 2, 4) and inits["P"].shape == (2, 12)
    assert inits["Wh"].shape == (4, 4) and inits["Wc"].shape == (4, 4)
    # which hidden units were kept: the rows of Wh kept, matched by value
    orig = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    kept = [int(np.flatnonzero((orig["Wh"] == row).all(1))[0]) for row in inits["Wh"]]
    gone = np.setdiff1d(np.arange(8), kept)
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    zeroed = {k: v.copy() for k, v in orig.items()}
    rows = np.concatenate([gone + 8 * g for g in range(4)])
    zeroed["W"][:, rows] = 0
    zeroed["R"][:, rows] = 0
    zeroed["R"][:, :, gone] = 0
    zeroed["B"][:, np.concatenate([gone + 8 * g for g in range(8)])] = 0
    zeroed["P"][:, np.concatenate([gone + 8 * g for g in range(3)])] = 0
    zeroed["h0"][..., gone] = 0
    zeroed["c0"][..., gone] = 0
    if corrupt:  # the independent check can fail: a kept unit's recurrent weight changed in the reference
        zeroed["R"][0, kept[0], kept[1]] += 0.5
    del ref.graph.initializer[:]
    ref.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in zeroed.items())

    def run(model):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, {"x": x})[0]

    err = float(np.abs(run(ref) - run(r.model)).max())
    assert (err > 1e-3) if corrupt else (err < 1e-5), err


def test_onnx_dynamo_export_lstm_prunes_and_verifies():
    """torch.onnx's dynamo exporter writes the same LSTM node (with its own Transpose / Reshape around it)."""
    torch.manual_seed(0)
    x = _x(False)
    proto = torch.onnx.export(Tagger("lstm", bidirectional=True).eval(), (x,), dynamo=True).model_proto
    assert "LSTM" in {n.op_type for n in proto.graph.node}
    r = compiler.compile(proto, (x.numpy(),), ratio=0.5, granularity=1)
    assert r.report.verification["passed"] and r.report.frozen_ops == []
    assert _attr(next(n for n in r.model.graph.node if n.op_type == "LSTM"), "hidden_size") == 12
    assert r.report.macs_after < 0.4 * r.report.macs_before


class Seq2Seq(nn.Module):
    """An encoder LSTM whose final (h, c) start a decoder LSTM, and a GRU started from a computed state."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Linear(6, 16)
        self.enc = nn.LSTM(16, 24, num_layers=2)
        self.dec = nn.LSTM(16, 24, num_layers=2)
        self.init = nn.Linear(6, 24)
        self.gru = nn.GRU(16, 24)
        self.out = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, (h, c) = self.enc(self.emb(x))
        o, _ = self.dec(self.emb(y), (h, c))
        g, _ = self.gru(self.emb(y), torch.tanh(self.init(x.mean(0))).unsqueeze(0))
        return self.out(o) + self.out(g)


def test_torch_states_passed_between_layers_prune_together():
    """The encoder's final states are the decoder's initial ones: both keep the same hidden units; a computed
    initial state (a Linear's output) prunes with the GRU it starts."""
    torch.manual_seed(0)
    x, y = torch.randn(7, 3, 6), torch.randn(5, 3, 6)
    r = compiler.compile(Seq2Seq().eval(), (x, y), ratio=0.5, granularity=1)
    m = r.model
    assert m.enc.hidden_size == m.dec.hidden_size == m.gru.hidden_size == m.init.out_features == 12
    v = r.report.verification
    assert v["passed"] and v["nodes_checked"] >= 10 and r.report.frozen_ops == []
    # the encoder's units are the decoder's (it reads their (h, c)), and the computed state's are the GRU's
    members = [set(g["members"]) for g in r.report.to_dict()["groups"]]
    assert any({"enc", "dec"} <= m for m in members) and any({"init", "gru"} <= m for m in members)


def test_onnx_gru_with_a_recurrent_weight_computed_at_run_time():
    """R = R0 * s with s a model input: R0 is sliced, and the masked reference masks R's columns with a Mul."""
    from tests._onnx_helpers import build

    text = """
    g (float[5,2,6] x, float[1] s) => (float[5,2,4] y) {
      [scale] r = Mul(R0, s)
      [gru] ys, yh = GRU<hidden_size=8>(x, W, r, B)
      [sq] z = Squeeze(ys, one)
      [mm] y = MatMul(z, Wo)
    }
    """
    m = build(text, {"W": (1, 24, 6), "R0": (1, 24, 8), "B": (1, 48), "Wo": (8, 4), "one": np.array([1], dtype=np.int64)})
    rng = np.random.default_rng(0)
    x, s = rng.standard_normal((5, 2, 6)).astype(np.float32), np.array([0.7], dtype=np.float32)
    r = compiler.compile(m, (x, s), ratio=0.5, granularity=1)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer}
    assert inits["R0"].shape == (1, 12, 4) and inits["W"].shape == (1, 12, 6) and inits["Wo"].shape == (4, 4)
    assert r.report.verification["passed"] and r.report.frozen_ops == []


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_torch_unbatched_input(cell):
    """An unbatched sequence [seq, features] (states [L*D, H]) prunes the same way."""
    torch.manual_seed(0)
    r = compiler.compile(Tagger(cell, bidirectional=True, num_layers=2).eval(), (torch.randn(7, 6),), ratio=0.5, granularity=1)
    assert r.model.rnn.hidden_size == 12 and r.report.verification["passed"] and r.report.frozen_ops == []
