"""Compile options: one record, validated once (``Options.validate``) at the API's door."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from frontends.errors import InvalidArgumentError

__all__ = ["Options"]


@dataclass
class Options:
    ratio: float | None = None
    threshold: float | None = None
    target_macs: float | None = None
    importance: str = "auto"  # a criterion of passes.importance.CRITERIA; auto: chosen from the data (compiler.defaults)
    equalization: str = "arithmetic_mean"
    normalizer: str = "max"
    granularity: int = 8
    min_channels: int = 1
    channel_block: int | str = "auto"  # the runtime's channel block (compiler.channel_block): "auto" measures it, 1: off
    scope: str = "local"
    ignore: Sequence[str] = ()
    verify: bool = True
    rtol: float = 1e-5
    seed: int = 0
    f_nz: float | None = None
    bias_propagation: bool | None = None  # None: on for mrs and f_nz
    compensate: bool | str | None = None  # None: on for obs; "sequential": each layer on the pruned model's inputs (torch)
    probes: int = 4
    attention: str = "head_dim"  # or "heads": what a reshape into attention heads prunes
    target_latency: float | None = None  # milliseconds (> 1) or a fraction of the original's latency (<= 1)
    allocation: str = "uniform"  # "uniform" ratio per group; target_macs: "latency" (saliency per measured ms saved); ratio/target_macs: "sensitivity" (passes.allocation)
    depth: float | str | None = None  # fraction of removable residual blocks to remove, or "auto" (with target_macs or target_latency)
    depth_importance: str = "auto"  # block criterion (passes.depth.DEPTH_CRITERIA); auto: cosine with calibration, else norm
    hf_compatible: bool | None = None  # plans a transformers config can hold (compiler.hf_constraints); None: on for a PreTrainedModel
    experts: float | None = None  # fraction of each mixture-of-experts layer's experts to remove (compiler.experts)
    # raw criterion statistics and weight updates pass through this (an all-reduce under torch.distributed)
    statistics_reducer: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    def reduce(self, a: np.ndarray) -> np.ndarray:
        return a if self.statistics_reducer is None else self.statistics_reducer(a)

    @property
    def propagate_bias(self) -> bool:
        if self.bias_propagation is not None:
            return self.bias_propagation
        return self.importance == "mrs" or self.f_nz is not None

    @property
    def compensates(self) -> bool:
        return bool(self.compensate) if self.compensate is not None else self.importance == "obs"

    def settings(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("statistics_reducer")
        d["ignore"] = list(self.ignore)
        return d

    def validate(self) -> None:
        """Raise :class:`InvalidArgumentError` naming the first bad option; the passes trust what passes here."""
        from passes.importance import CRITERIA
        from passes.saliency import EQUALIZATIONS, NORMALIZERS

        if self.importance != "auto" and self.importance not in CRITERIA:
            raise InvalidArgumentError(f"importance={self.importance!r} is not available; choose from auto, {', '.join(CRITERIA)}")
        if self.equalization not in EQUALIZATIONS:
            raise InvalidArgumentError(f"equalization={self.equalization!r}; choose from {', '.join(EQUALIZATIONS)}")
        if self.normalizer not in NORMALIZERS:
            raise InvalidArgumentError(f"normalizer={self.normalizer!r}; choose from {', '.join(NORMALIZERS)}")
        given = [x is not None for x in (self.ratio, self.threshold, self.target_macs, self.f_nz, self.target_latency)]
        if sum(given) > 1:
            raise InvalidArgumentError("give only one of ratio=, threshold=, target_macs=, target_latency=, f_nz=")
        if not (self.compensate is None or isinstance(self.compensate, bool) or self.compensate == "sequential"):
            raise InvalidArgumentError(f"compensate must be True, False, None or 'sequential', got {self.compensate!r}")
        if self.allocation not in ("uniform", "latency", "sensitivity"):
            raise InvalidArgumentError(f"allocation must be 'uniform', 'latency' or 'sensitivity', got {self.allocation!r}")
        if self.allocation == "sensitivity":
            self._validate_sensitivity()
        if self.allocation == "latency" and self.target_macs is None:
            raise InvalidArgumentError("allocation='latency' goes with target_macs= (target_latency= allocates by latency already)")
        if self.target_latency is not None and not (
            isinstance(self.target_latency, (int, float)) and math.isfinite(self.target_latency) and self.target_latency > 0
        ):
            raise InvalidArgumentError(f"target_latency must be positive milliseconds or a fraction, got {self.target_latency!r}")
        if self.f_nz is not None and not (isinstance(self.f_nz, (int, float)) and 0.0 <= self.f_nz < 1.0):
            raise InvalidArgumentError(f"f_nz must be a fraction in [0, 1), got {self.f_nz!r}")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0.0 <= self.ratio < 1.0):
            raise InvalidArgumentError(f"ratio must be a number in [0, 1), got {self.ratio!r}")
        if self.target_macs is not None and not self.target_macs > 0:
            raise InvalidArgumentError(f"target_macs must be positive, got {self.target_macs!r}")
        if not isinstance(self.granularity, int) or self.granularity < 1:
            raise InvalidArgumentError(f"granularity must be an integer >= 1, got {self.granularity!r}")
        if not (self.channel_block == "auto" or (isinstance(self.channel_block, int) and not isinstance(self.channel_block, bool)
                                                 and self.channel_block >= 1)):
            raise InvalidArgumentError(f"channel_block must be 'auto' or an integer >= 1, got {self.channel_block!r}")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise InvalidArgumentError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")
        if self.hf_compatible is not None and not isinstance(self.hf_compatible, bool):
            raise InvalidArgumentError(f"hf_compatible must be True, False or None, got {self.hf_compatible!r}")
        if self.attention not in ("head_dim", "heads", "both"):
            raise InvalidArgumentError(f"attention must be 'head_dim', 'heads' or 'both', got {self.attention!r}")
        self._validate_depth()
        self._validate_experts()
        if self.scope not in ("local", "global"):
            raise InvalidArgumentError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if isinstance(self.ignore, str):
            self.ignore = [self.ignore]

    def _validate_experts(self) -> None:
        if self.experts is None:
            return
        if isinstance(self.experts, bool) or not isinstance(self.experts, (int, float)) or not 0.0 <= self.experts < 1.0:
            raise InvalidArgumentError(f"experts must be a fraction of each layer's experts in [0, 1), got {self.experts!r}")
        if self.depth is not None or self.attention == "both":
            raise InvalidArgumentError("experts= does not combine with depth= or attention='both'")
        if self.target_macs is not None or self.target_latency is not None or self.f_nz is not None:
            raise InvalidArgumentError("experts= goes with ratio= or threshold= (or no width policy) for the kept experts")

    def _validate_sensitivity(self) -> None:
        if self.ratio is None and self.target_macs is None:
            raise InvalidArgumentError("allocation='sensitivity' spreads a ratio= or target_macs= budget over the groups: give one of them")
        if self.scope != "local":
            raise InvalidArgumentError("allocation='sensitivity' chooses each group's ratio itself: leave scope at 'local'")
        if self.depth is not None or self.attention == "both":
            raise InvalidArgumentError("allocation='sensitivity' does not combine with depth= or attention='both'")

    def _validate_depth(self) -> None:
        from passes.depth import DEPTH_CRITERIA

        if self.depth_importance not in ("auto", *DEPTH_CRITERIA):
            raise InvalidArgumentError(f"depth_importance={self.depth_importance!r}; choose from auto, {', '.join(DEPTH_CRITERIA)}")
        if self.depth is None:
            return
        if self.depth == "auto":
            if self.target_macs is None and self.target_latency is None:
                raise InvalidArgumentError(
                    "depth='auto' splits a budget between depth and width: give target_macs= or target_latency="
                )
        elif isinstance(self.depth, bool) or not isinstance(self.depth, (int, float)) or not 0.0 <= self.depth < 1.0:
            raise InvalidArgumentError(f"depth must be a fraction of the removable blocks in [0, 1), or 'auto'; got {self.depth!r}")
        if self.attention == "both":
            raise InvalidArgumentError("depth= does not combine with attention='both'")
        if self.f_nz is not None:
            raise InvalidArgumentError("depth= does not combine with f_nz=")
