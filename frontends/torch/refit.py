"""Sequential compensation (``compensate="sequential"``): each reading layer re-fitted on the inputs of the model
pruned and compensated up to it (torch adapter).

The independent compensation of :meth:`passes.data_criteria.ChannelStatistics.obs_compensation` re-fits every
layer that reads removed channels (in a transformer: the attention output projection reading the heads, the
FFN down projection reading the intermediate neurons) on the *original* model's inputs. In the pruned model those
inputs have drifted: every earlier block lost channels too. Here the layers are taken in graph order and each is
fitted to reproduce the original model's output of that layer from the inputs it reads in the pruned model, in
which every earlier layer already carries its compensation (the layer-wise mask tuning of Kwon et al., "A Fast
Post-Training Pruning Framework for Transformers", 2022, without their mask search):

    min_A E||A x'_K - W̃ x||² + λ ||A - A₀||²     x: the original model's input row, x': the pruned model's

over the statistics Hp = E[x'x'ᵀ], Cx = E[x'xᵀ], Ho = E[xxᵀ] (:class:`passes.data_criteria.LayerStats`). The
held-out guard is the same as the independent one: per layer, no change, the bias shift (E[W̃x] - E[W̃_K x'_K]: the
removed channels' mean contribution plus the upstream drift of the mean) and the ridge re-fits are fitted on the
fitting split of the calibration batches and compared on the held-out split; the winner is then fitted on all the
data and written into the working copy before the next layer's inputs are taken.

Each layer costs two forward passes over the calibration data up to that layer (the original model's and the
pruned one's), stopped once the layer's input is seen.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch

from frontends.torch.calibration import Consumer, GatedRunner
from frontends.torch.rewrite import apply_updates
from passes.data_criteria import LayerStats, compensated, guard_candidates, holdout_plan

if TYPE_CHECKING:
    from frontends.torch.criteria import DataCriteria

__all__ = ["sequential_compensation"]


class _Seen(Exception):
    """Stops a run once the layer's input was recorded."""


def _input_at(runner: GatedRunner, node: str, ins: tuple) -> torch.Tensor:
    """The input the consumer ``node`` reads (before its gate), running the graph only as far as that node."""
    got: list[torch.Tensor] = []

    def rec(c: Consumer, x: torch.Tensor) -> None:
        if c.node == node:
            got.append(x.detach())
            raise _Seen

    runner.record = rec
    try:
        runner.run(*ins)
    except _Seen:
        pass
    finally:
        runner.record = None
    if not got:
        raise RuntimeError(f"the run never reached {node!r}")
    return got[0]


def sequential_compensation(
    data: DataCriteria, pruned: np.ndarray, reduce: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[dict[str, np.ndarray], set[str]]:
    """The weight updates of sequential, held-out-guarded compensation (the module docstring), and the nodes of
    the layers updated; the guard's decisions go to ``data.compensation_report`` as with the independent guard.
    ``reduce`` (the all-reduce of :mod:`compiler.workflows.distributed`) is applied to every statistic before a
    solve and to the held-out losses, so that every rank fits and decides alike."""
    order = {n.name: i for i, n in enumerate(data.gm.graph.nodes)}
    todo = sorted(data._todo(pruned), key=lambda t: order[t[0].consumer.node])
    batches = data.data.batches
    sizes = [int(b.inputs[0].shape[0]) for b in batches]
    one = len(batches) == 1 and all(isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == sizes[0] for x in batches[0].inputs)
    plan = holdout_plan(sizes, split_single=one)
    split = any(held for *_, held in plan) and any(not held for *_, held in plan)
    work = copy.deepcopy(data.gm)
    original = GatedRunner(data.gm, data.cons, data.C)
    pruned_run = GatedRunner(work, data.cons, data.C)
    gates = torch.ones(data.C + 1)
    gates[: data.C][torch.as_tensor(pruned)] = 0.0
    pruned_run.gates = gates
    cands = guard_candidates()
    red = reduce if reduce is not None else (lambda a: a)
    updates: dict[str, np.ndarray] = {}
    done: set[str] = set()
    rows: list[dict] = []
    for lay, W, K in todo if split else ():
        node = lay.consumer.node
        sums = np.zeros((2, 3, W.shape[1], W.shape[1]))  # [fit, held] x [Hp, Cx, Ho]
        count = np.zeros((2, 1))
        with torch.no_grad():
            for i, part, held in plan:
                ins = batches[i].inputs if part is None else tuple(x[part] for x in batches[i].inputs)
                X = data._rows(lay, _input_at(original, node, ins).double())
                Xp = data._rows(lay, _input_at(pruned_run, node, ins).double())
                h = int(held)
                sums[h, 0] += (Xp.T @ Xp).numpy()
                sums[h, 1] += (Xp.T @ X).numpy()
                sums[h, 2] += (X.T @ X).numpy()
                count[h] += X.shape[0]
        means = np.asarray(red(sums / count[:, :, None, None]))  # per piece: a mean, so ranks weigh alike
        rows_all = np.asarray(red(count))[:, 0]
        frac = rows_all / max(float(rows_all.sum()), 1e-30)
        fit, held_s = LayerStats(*means[0]), LayerStats(*means[1])
        full = LayerStats(*(frac[0] * means[0] + frac[1] * means[1]))
        losses = np.asarray(red(data._held_out_losses(W, K, fit, held_s, cands)))
        pick, row = data._guard_row(lay, losses, cands)
        rows.append(row)
        if pick is None:
            continue
        new = data._layer_updates(lay, compensated(W, K, full, pick))
        updates.update(new)
        apply_updates(work, new)  # the next layers' inputs come from the compensated model
        done.add(node)
    note = "sequential: each layer on the inputs of the model pruned and compensated up to it; held-out split of the calibration batches"
    data.compensation_report = data._summary(note if split else "no held-out split: not applied", len(todo), len(done), rows)
    return updates, done
