"""Depth pruning of a Swin Transformer (torchvision's SwinTransformer class, the blocks of swin_t, at a
small width so the test is quick): every block, the shifted-window ones included, is a candidate made of
its attention and MLP branches, and removing a shifted-window block verifies against the original with
that block's branches zeroed, and against an independent reference with its output layers zeroed by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.models.swin_transformer import SwinTransformer, SwinTransformerBlock

import compiler
from frontends.errors import VerificationError
from frontends.torch.adapter import TorchAdapter
from passes.depth import FindBlocks


def _swin() -> tuple[SwinTransformer, torch.Tensor]:
    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2, 2, 2], num_heads=[2, 2, 4, 4], window_size=[4, 4],
                            num_classes=10).eval()  # fmt: skip
    return model, torch.randn(1, 3, 64, 64)  # patch grids 16, 8, 4, 2: the first two stages shift their windows


BLOCKS = [f"features.{s}.{i}" for s in (1, 3, 5, 7) for i in (0, 1)]


def test_swin_blocks_are_candidates_with_both_branches_and_each_stage_keeps_one():
    model, x = _swin()
    r = compiler.compile(model, (x,), depth=0.25, depth_importance="norm")
    d = r.report.depth
    assert [b["name"] for b in d["blocks"]] == BLOCKS
    assert all(b["branches"] == 2 for b in d["blocks"])  # window attention and MLP together: the block goes whole
    assert len({b["stage"] for b in d["blocks"]}) == 4 and d["not_removable"] == []  # patch merging is no residual add
    assert len(d["removed"]) == 2 and d["verification"]["passed"] and d["verification"]["nodes_checked"] > 20
    stages = {b["stage"] for b in d["blocks"] if b["removed"]}
    assert len(stages) == 2  # two blocks of two different stages: a stage keeps one
    keys = set(r.model.state_dict())
    for name in d["removed"]:
        assert not any(k.startswith(name + ".") for k in keys), name


@pytest.mark.parametrize("name", ["features.1.1", "features.3.1"])
def test_removing_a_shifted_window_block_verifies_and_matches_an_independent_reference(name):
    model, x = _swin()
    block = model.get_submodule(name)
    assert isinstance(block, SwinTransformerBlock) and list(block.attn.shift_size) == [2, 2]  # a shifted-window block
    adapter = TorchAdapter(model, (x,))
    adapter.load(lambda step, fn, *a, **k: fn(*a, **k))
    handler = adapter.depth()
    analysis = FindBlocks().call(adapter.graph)
    removed = [b for b in analysis.blocks if b.name == name]
    pruned = handler.remove(removed)
    assert handler.verify(removed, pruned, 1e-6).passed
    assert not any(k.startswith(name + ".") for k in pruned.state_dict())
    # independent reference: the block's attention projection and last MLP layer zeroed by hand
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for sub in (f"{name}.attn.proj", f"{name}.mlp.3"):
            ref.get_submodule(sub).weight.zero_()
            ref.get_submodule(sub).bias.zero_()
        torch.testing.assert_close(pruned(x), ref(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(pruned(x), model(x), atol=1e-4)  # the block did something: the check is not vacuous
    # the check can fail: the unshifted neighbour removed instead is not the original with this block zeroed
    other = [b for b in analysis.blocks if b.name == name[:-1] + "0"]
    with pytest.raises(VerificationError, match="removed branches zeroed"):
        handler.verify(removed, handler.remove(other), 1e-6)
