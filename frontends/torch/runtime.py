"""Run-time parts of a model: code that stays as it is in the pruned model, its channels constrained, never rewritten.

Detection models (torchvision's Faster/Mask/Keypoint R-CNN, RetinaNet, FCOS, SSD) run
data-dependent code around their backbone, FPN and heads: the resize transform, anchor
generation, box decoding, NMS, RoI align. Neither ``torch.fx`` (Python control flow on
sizes) nor ``torch.export`` (sizes that depend on the data) traces it. Here it is a
*run-time leaf* of the concrete trace (:mod:`frontends.torch.concrete`): one node that
runs the original code when the pruned model runs.

Three kinds of leaves, by class or function name (the registry below):

1. modules (``GeneralizedRCNNTransform``, ``AnchorGenerator``, ``DefaultBoxGenerator``,
   ``MultiScaleRoIAlign``): a ``call_module`` node, as ``torch.fx`` leaves are;
2. methods called on ``self`` (``RoIHeads.postprocess_detections``,
   ``GeneralizedRCNNTransform.postprocess``, ...): the method runs in a
   :class:`RuntimeMethod` module registered on its owner as ``runtime_<method>``,
   holding a copy of the owner without its submodules and tensors (the method reads
   only thresholds and box coders);
3. module-level functions (``keypointrcnn_inference``, ``maskrcnn_inference``): a
   ``call_function`` node.

Each leaf is an ``unknown`` op for the channel analysis, so the channels of the tensors
it reads are frozen (the report names it). A leaf that reads only the *sizes* of some of
its arguments (an anchor generator reads the feature maps' sizes) lists the arguments it
reads values of (:func:`value_args`); the others freeze nothing.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = ["RuntimeMethod", "mutable", "LEAF_MODULES", "LEAF_METHODS", "leaf_functions", "value_args", "has_runtime_parts"]

# class name -> indices of the positional arguments whose *values* it reads (None: all of them)
LEAF_MODULES: dict[str, tuple[int, ...] | None] = {
    "GeneralizedRCNNTransform": None,
    "AnchorGenerator": (0,),  # (image_list, feature_maps): the feature maps' sizes only
    "DefaultBoxGenerator": (0,),
    "MultiScaleRoIAlign": None,
}

# class name -> methods that run at run time
LEAF_METHODS: dict[str, tuple[str, ...]] = {
    "GeneralizedRCNNTransform": ("postprocess",),
    "RegionProposalNetwork": ("filter_proposals",),
    "RoIHeads": ("postprocess_detections",),
    "RetinaNet": ("postprocess_detections",),
    "FCOS": ("postprocess_detections",),
    "SSD": ("postprocess_detections",),
}


def leaf_functions() -> list[Callable[..., Any]]:
    """Module-level functions that run at run time (torchvision's, where torchvision is installed)."""
    try:
        from torchvision.models.detection import roi_heads
    except ImportError:  # pragma: no cover - torchvision is an optional dependency
        return []
    return [roi_heads.keypointrcnn_inference, roi_heads.maskrcnn_inference]


def _class_names(m: nn.Module) -> set[str]:
    return {c.__name__ for c in type(m).__mro__}


def has_runtime_parts(model: nn.Module) -> bool:
    """Whether the model holds a registered run-time leaf (then the concrete trace is worth trying)."""
    for m in model.modules():
        names = _class_names(m)
        if names & set(LEAF_MODULES) or names & set(LEAF_METHODS):
            return True
    return False


def is_leaf_module(m: nn.Module) -> bool:
    return isinstance(m, RuntimeMethod) or bool(_class_names(m) & set(LEAF_MODULES))


def value_args(m: nn.Module) -> tuple[int, ...] | None:
    """Positional arguments whose values a run-time module reads (None: all; see the module docstring)."""
    if isinstance(m, RuntimeMethod):
        return None
    for name in _class_names(m):
        if name in LEAF_MODULES:
            return LEAF_MODULES[name]
    return None


def mutable(a: Any) -> Any:
    """``a`` with every list and dict (torch.fx's immutable ones included) copied as a plain list and dict."""
    if isinstance(a, list):
        return [mutable(x) for x in a]
    if isinstance(a, tuple) and not hasattr(a, "_fields"):
        return tuple(mutable(x) for x in a)
    if isinstance(a, dict):
        return {k: mutable(v) for k, v in a.items()}
    return a


class RuntimeMethod(nn.Module):
    """Runs ``type(owner).<method>`` on a copy of ``owner`` without submodules, parameters or buffers."""

    def __init__(self, owner: nn.Module, method: str) -> None:
        super().__init__()
        stub = copy.copy(owner)
        for store in ("_modules", "_parameters", "_buffers"):
            stub.__dict__[store] = {}
        self.__dict__["owner"] = stub  # not a submodule: nothing of it is pruned or moved
        self.method = method
        self.owner_class = type(owner)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # torch.fx hands node arguments over as immutable lists and dicts; the method may update them
        # (``GeneralizedRCNNTransform.postprocess`` writes the rescaled boxes into its detections)
        return getattr(self.owner_class, self.method)(self.__dict__["owner"], *mutable(args), **mutable(kwargs))

    def extra_repr(self) -> str:
        return f"{self.owner_class.__name__}.{self.method}"
