"""The PyTorch side of prunec: an ``nn.Module`` traced into the channel graph, rewritten and verified.

==================  ===============================================================
``trace``           symbolic trace (torch.export as the fallback), shapes on every node
``structured``      arguments and outputs of any pytree shape around a flat graph of their leaves
``concrete``        the concrete trace (values on the example) for models with run-time parts
``runtime``         run-time parts kept as they are: detection's transform, anchors, RoI align, NMS
``lower``           FX nodes into the neutral ops of :mod:`frontends.graph`
``inline``          wrapped leaf functions inlined at the example's sizes
``attention``       ``nn.MultiheadAttention`` decomposed so its heads can be pruned
``nodes``           reading FX nodes: op names, labels, arguments, dotted attributes
``rewrite``         the rewrite pass: constants sliced, then each op's handler
``rewrite_ops``     the torch rewrite handler of each op kind, on the op specs
``rewrite_recurrent``  nn.LSTM / nn.GRU / nn.RNN: rewrite handler and masked reference
``sizes``           sizes computed at run time, evaluated on the pruned shapes
``verify``          the pruned model against the masked original, every node
``calibration``     calibration batches, losses, channel gates on the layers that read channels
``criteria``        the data-driven criteria, OBS compensation and bias propagation
``adapter``         ``TorchAdapter``: the pieces above behind :class:`frontends.adapter.Adapter`
==================  ===============================================================

Importing the package registers the torch rewrite handlers and reference semantics
on the op specs (:mod:`passes.ops`).
"""

from frontends.adapter import VerifyResult
from frontends.torch import rewrite_ops, rewrite_recurrent  # noqa: F401  (registers the torch rewrite handlers)
from frontends.torch.attention import DecomposedMHA, decompose_attention
from frontends.torch.inline import inline_wrapped
from frontends.torch.nodes import call_arg, call_name, module_attr, target_label
from frontends.torch.rewrite import RewriteFX, RewriteResult, TorchRewrite, apply_updates
from frontends.torch.trace import TracedModel, load_torch
from frontends.torch.verify import MaskedInterpreter, VerifyFX, flat_tensors

__all__ = [
    "TracedModel", "load_torch", "RewriteFX", "RewriteResult", "TorchRewrite", "apply_updates",
    "VerifyFX", "VerifyResult", "MaskedInterpreter", "flat_tensors", "DecomposedMHA", "decompose_attention",
    "inline_wrapped", "call_name", "call_arg", "module_attr", "target_label",
]  # fmt: skip
