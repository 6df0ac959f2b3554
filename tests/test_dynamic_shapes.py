"""Models traced by torch.export run at any batch size (and sequence length for token inputs) after pruning.

Issue #22: a BERT encoder compiled with a calibration batch of 32 failed at batch 256 with
``Guard failed: input_ids.size()[0] == 32``. The batch dim of every input and the sequence dim of
integer (token) inputs are exported as dynamic; the pruned model is checked at several batch sizes
and lengths against per-sample runs of itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import compiler

transformers = pytest.importorskip("transformers")


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def _tokens(b: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 100, (b, n), generator=g), torch.ones(b, n, dtype=torch.long)


def _hidden(out) -> torch.Tensor:  # noqa: ANN001
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@pytest.fixture(scope="module")
def pruned_bert():
    m = _bert()
    ids, mask = _tokens(32, 16)
    r = compiler.compile(m, (ids, mask), ratio=0.5)
    assert r.report.trace_method == "torch.export"
    assert r.report.verification["passed"]
    return r


@pytest.mark.parametrize(("batch", "length"), [(256, 16), (3, 16), (5, 40), (2, 7)])
def test_pruned_bert_runs_at_other_batch_sizes_and_lengths(pruned_bert, batch, length):
    ids, mask = _tokens(batch, length, seed=batch + length)
    with torch.no_grad():
        whole = _hidden(pruned_bert.model(ids, mask))
        assert whole.shape == (batch, length, 64)
        for i in range(min(batch, 4)):  # each sample alone gives the same rows
            alone = _hidden(pruned_bert.model(ids[i : i + 1], mask[i : i + 1]))
            torch.testing.assert_close(whole[i : i + 1], alone, rtol=1e-4, atol=1e-5)


def test_keyword_inputs_export_dynamic_too():
    m = _bert()
    ids, mask = _tokens(8, 12)
    r = compiler.compile(m, {"input_ids": ids, "attention_mask": mask}, ratio=0.5)
    ids2, mask2 = _tokens(20, 24, seed=3)
    with torch.no_grad():
        out = r.model(input_ids=ids2, attention_mask=mask2)
        assert out.last_hidden_state.shape == (20, 24, 64)
        alone = r.model(input_ids=ids2[5:6], attention_mask=mask2[5:6]).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state[5:6], alone, rtol=1e-4, atol=1e-5)


class FixedBatch(nn.Module):
    """Reshapes with the example's batch size written in: torch.export cannot make the batch dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        if x.shape[0] != 4:  # symbolic tracing cannot branch on a size; export specializes it
            raise ValueError("batch 4 only")
        return self.b(torch.relu(self.a(x))).reshape(4, 4)


def test_a_model_that_fixes_its_batch_is_exported_static_with_a_note():
    r = compiler.compile(FixedBatch().eval(), (torch.randn(4, 8),), ratio=0.5, granularity=1)
    assert r.report.trace_method == "torch.export"
    assert r.report.verification["passed"]
    assert any("static" in n for n in r.traced.notes)
    assert any("static" in n for n in r.report.settings["trace_notes"])
    assert r.model(torch.randn(4, 8)).shape == (4, 4)
