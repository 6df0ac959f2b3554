"""``hf_compatible``: plans that a Hugging Face model's own config can hold.

A ``transformers`` config holds one size per field for all layers, and many
classes derive sizes from others (BERT: head size = ``hidden_size /
num_attention_heads``). A plan that prunes a width no config field says, or a
different width per layer, compiles and verifies but cannot be saved with
``save_pretrained`` (:mod:`compiler.hf`). With ``hf_compatible`` (on by default
for a ``PreTrainedModel``) the selection is repaired, at every step of the
policy (ratio, threshold, every bisection step of ``target_macs``), so that:

- groups of the same role in every layer (the FFN up-projections, the
  attention blocks, ...: a role is the producers' module paths with the layer
  indices taken out) keep the same number of channels — the most any of them
  keeps under the plan;
- the config built from the pruned sizes (``num_attention_heads``,
  ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
  ``hidden_size``) builds, on the meta device, exactly the pruned weight
  shapes (the oracle: the model's own class decides, not a table of
  architectures). A role whose pruned width the config cannot express keeps
  more channels, up to all of them: then it is frozen, with the class's own
  reason in the report (e.g. BERT's attention under either ``attention=``
  mode: fewer heads change the derived head size, a smaller head size needs a
  ``hidden_size`` the residual stream does not have).

The report's ``settings.hf_constraint`` gives the config class, the planned
MACs with and without the constraint, and each frozen role with its reason.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from passes.channel_analysis import AnalysisResult, Group

log = logging.getLogger(__name__)

__all__ = ["HfConstraint"]

_Q, _K, _V = ("q_proj", "query", "q"), ("k_proj", "key", "k"), ("v_proj", "value", "v")
_INDEX = re.compile(r"\.\d+(?=\.|$)")


def _child(mod: nn.Module, names: tuple[str, ...]) -> str | None:
    for n in names:
        if isinstance(getattr(mod, n, None), nn.Linear):
            return n
    return None


@dataclass
class _Role:
    key: str  # producers' module paths, layer indices replaced by N
    groups: list[Group] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.groups[0].classes)


class HfConstraint:
    """``repair(analysis, scores, pruned) -> pruned``: the closest plan the model's config can express
    (keeping channels, never removing more). ``freeze(analysis)`` marks the roles it had to keep whole."""

    def __init__(self, model: nn.Module, analysis: AnalysisResult, attention: str) -> None:
        self.model = model
        self.cfg = model.config  # type: ignore[union-attr]
        self.cfg_name = type(self.cfg).__name__
        self.attention = attention
        self.analysis = analysis
        graph = analysis.graph
        self.weights = {name: tuple(v.shape) for name, v in graph.values.items() if v.is_const and v.shape is not None}
        self.roles = self._roles(analysis)
        self.reasons: dict[str, str] = {}  # role key -> why it keeps every channel
        self._cache: dict[tuple, str | None] = {}
        self._blocks = self._attention_blocks()
        inter = getattr(self.cfg, "intermediate_size", None)
        hidden = getattr(self.cfg, "hidden_size", None)
        self._ffn = [
            f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and inter is not None and m.out_features == inter and m.out_features != hidden
        ]  # fmt: skip
        self._embed = next(
            (f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.embedding_dim == hidden),
            None,
        )
        self._state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self._buffers = {k: tuple(b.shape) for k, b in model.named_buffers()}
        self._persistent = set(self._state)

    # -- roles ---------------------------------------------------------------------------------

    def _roles(self, analysis: AnalysisResult) -> list[_Role]:
        graph = analysis.graph
        roles: dict[str, _Role] = {}
        for g in analysis.groups:
            if not g.prunable:
                continue
            paths = []
            for name in g.producers:
                op = graph.ops[name]
                consts = [v for v in op.inputs if v is not None and v in graph.values and graph.values[v].is_const]
                paths.append(_INDEX.sub(".N", consts[0]) if consts else _INDEX.sub(".N", op.label or name))
            key = " + ".join(sorted(set(paths))) + f" [{len(g.classes)}]"
            roles.setdefault(key, _Role(key)).groups.append(g)
        return list(roles.values())

    def _attention_blocks(self) -> list[tuple[str, str, str]]:
        out = []
        for name, mod in self.model.named_modules():
            q, k, v = _child(mod, _Q), _child(mod, _K), _child(mod, _V)
            if q and k and v:
                p = f"{name}." if name else ""
                out.append((f"{p}{q}.weight", f"{p}{k}.weight", f"{p}{v}.weight"))
        return out

    # -- the oracle ----------------------------------------------------------------------------

    def _shape(self, name: str, pruned: np.ndarray) -> tuple[int, ...] | None:
        if name not in self.weights:
            return None
        return self.analysis.pruned_shape(name, pruned)

    def _changes(self, pruned: np.ndarray) -> dict[str, int]:
        """The config fields that the pruned shapes imply (from the first layer that has them)."""
        cfg, ch = self.cfg, {}
        heads = getattr(cfg, "num_attention_heads", None)
        if self._blocks and heads:
            q, k, v = (self._shape(w, pruned) for w in self._blocks[0])
            oq, ok = self.weights.get(self._blocks[0][0]), self.weights.get(self._blocks[0][1])
            d0 = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            if q is not None and k is not None and oq is not None and ok is not None and (q != oq or k != ok):
                if self.attention == "heads":
                    ch["num_attention_heads"] = q[0] // d0
                    if getattr(cfg, "num_key_value_heads", None) is not None:
                        ch["num_key_value_heads"] = k[0] // d0
                else:
                    ch["head_dim"] = q[0] // heads
        if self._ffn and getattr(cfg, "intermediate_size", None) is not None:
            s = self._shape(self._ffn[0], pruned)
            if s is not None and s[0] != cfg.intermediate_size:
                ch["intermediate_size"] = s[0]
        if self._embed is not None:
            s = self._shape(self._embed, pruned)
            if s is not None and s[1] != cfg.hidden_size:
                ch["hidden_size"] = s[1]
        return ch

    def check(self, pruned: np.ndarray) -> str | None:
        """``None`` where the model's class, built from the pruned config, has every pruned shape; else why not."""
        ch = self._changes(pruned)
        want = {name: self._shape(name, pruned) for name in self._state if name in self.weights}
        key = (tuple(sorted(ch.items())), tuple(sorted((k, v) for k, v in want.items() if v != self._state[k])))
        if key not in self._cache:
            self._cache[key] = self._build(ch, want)
        return self._cache[key]

    def _build(self, ch: dict[str, int], want: dict[str, tuple[int, ...] | None]) -> str | None:
        cfg = copy.deepcopy(self.cfg)
        for k, v in ch.items():
            setattr(cfg, k, v)
        try:
            with torch.device("meta"):
                new = type(self.model)(cfg)
        except Exception as exc:  # noqa: BLE001 - the class's own check of the config, whatever it raises
            return f"{self.cfg_name}({', '.join(f'{k}={v}' for k, v in ch.items())}) does not build: {str(exc).splitlines()[0]}"
        state = {k: tuple(v.shape) for k, v in new.state_dict().items()}
        for name, shape in want.items():
            if shape is not None and state.get(name, shape) != shape:
                return f"{self.cfg_name} builds {name} as {state[name]}, the plan needs {shape}"
        for name, buf in new.named_buffers():
            if name not in self._persistent and name in self._buffers and tuple(buf.shape) != self._buffers[name]:
                return f"{self.cfg_name} recomputes {name} from the config ({self._buffers[name]} -> {tuple(buf.shape)})"
        return None

    # -- repair --------------------------------------------------------------------------------

    @staticmethod
    def _set_kept(g: Group, scores: np.ndarray, kept: int, pruned: np.ndarray) -> None:
        """``g`` keeps its ``kept`` best-scored classes (frozen ones always)."""
        pruned[g.classes] = False
        prunable = np.flatnonzero(~g.frozen)
        n_remove = min(len(g.classes) - kept, prunable.size)
        if n_remove <= 0:
            return
        s = np.nan_to_num(scores[g.classes[prunable]], nan=np.inf)
        pruned[g.classes[prunable[np.argsort(s, kind="stable")[:n_remove]]]] = True

    def _apply(self, scores: np.ndarray, pruned: np.ndarray, kept: dict[str, int]) -> np.ndarray:
        out = pruned.copy()
        for role in self.roles:
            for g in role.groups:
                self._set_kept(g, scores, kept[role.key], out)
        return out

    def repair(self, analysis: AnalysisResult, scores: np.ndarray, pruned: np.ndarray) -> np.ndarray:
        kept = {r.key: max(int((~pruned[g.classes]).sum()) for g in r.groups) for r in self.roles}
        out = self._apply(scores, pruned, kept)
        if self.check(out) is None:
            return out
        # role by role (widest first), the fewest kept channels the config can express with the others settled
        full = {r.key: r.size for r in self.roles}
        order = sorted(self.roles, key=lambda r: -sum(int(g.widths.sum()) for g in r.groups))
        settled = dict(full)
        for role in order:
            why = None
            for k in range(kept[role.key], role.size + 1):
                trial = {**settled, role.key: k}
                why_k = self.check(self._apply(scores, pruned, trial))
                if why_k is None:
                    settled[role.key] = k
                    break
                why = why if why is not None else why_k
            if settled[role.key] == role.size and kept[role.key] < role.size and why is not None:
                self.reasons.setdefault(role.key, why)
        return self._apply(scores, pruned, settled)

    def freeze(self, analysis: AnalysisResult, pruned: np.ndarray) -> list[dict[str, Any]]:
        """Mark the roles kept whole by the constraint as frozen (with the reason) in ``analysis``; their list."""
        frozen = []
        for role in self.roles:
            why = self.reasons.get(role.key)
            if why is None or any(pruned[g.classes].any() for g in role.groups):
                continue
            reason = f"hf_compatible: {why}"
            for g in role.groups:
                g.frozen[:] = True
                g.reasons.append(reason)
                analysis.class_frozen[g.classes] = True
                for c in g.classes.tolist():
                    analysis.class_reasons.setdefault(int(c), []).append(reason)
            frozen.append({"role": role.key, "groups": len(role.groups), "reason": why})
        return frozen
