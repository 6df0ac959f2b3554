"""Pruning workflows of the seeds, built on :func:`compiler.compile`.

=========================== ==================================================================
``iterative_prune``         a schedule of pruning steps with training in between (seed 002,
                            table 2.2: cumulative fractions 0.2, 0.5, 0.8, 0.9); a per-step
                            history of parameters, MACs and the caller's metric
``lottery_ticket``          the same loop, rewinding the surviving weights to their values at
                            initialization or an early checkpoint after every step (seed 003)
``rewind``                  one pruned architecture with the weights of another state of the
                            original model (the kept slices of every tensor)
``MagnitudePruner``         unstructured magnitude pruning *during* training, the zeros held by
                            gradient and optimizer-step masks (seeds 000, 002)
``sparsify_and_compact``    unstructured threshold / top-k, then the dead units removed into a
                            dense network (``compile(f_nz=...)``, seed 002 fig. 2.11)
``SparsityRegularizer``     group weight decay over each channel's fan-in, per coupling group
                            (seed 004), and BatchNorm-scale L1 (network slimming), as a loss term
``distributed_compile``     ``compile`` under ``torch.distributed``: calibration statistics and
                            weight updates reduced across ranks, so every rank prunes identically
``distill``                 knowledge distillation of the pruned model from the original on
                            unlabelled batches (logits KL and/or output MSE), DDP-aware; held-out
                            quality before and after
=========================== ==================================================================

Modules: :mod:`~compiler.workflows.schedules` (iterative pruning, lottery tickets, rewinding),
:mod:`~compiler.workflows.magnitude` (unstructured sparsity and compaction),
:mod:`~compiler.workflows.regularizers` (loss terms), :mod:`~compiler.workflows.distributed`,
:mod:`~compiler.workflows.distill`.
"""

from compiler.workflows.distill import DistillResult, distill
from compiler.workflows.distributed import distributed_compile
from compiler.workflows.magnitude import CompactResult, MagnitudePruner, sparsify_and_compact, weight_sparsity
from compiler.workflows.regularizers import SparsityRegularizer, bn_l1, group_weight_decay
from compiler.workflows.schedules import PruneStep, WorkflowResult, iterative_prune, lottery_ticket, rewind

__all__ = [
    "iterative_prune",
    "lottery_ticket",
    "rewind",
    "PruneStep",
    "WorkflowResult",
    "MagnitudePruner",
    "sparsify_and_compact",
    "CompactResult",
    "weight_sparsity",
    "SparsityRegularizer",
    "group_weight_decay",
    "bn_l1",
    "distributed_compile",
    "distill",
    "DistillResult",
]
