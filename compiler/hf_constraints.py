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

_Q, _K, _V = ("q_proj", "query", "q", "q_lin"), ("k_proj", "key", "k", "k_lin"), ("v_proj", "value", "v", "v_lin")  # (q_lin: DistilBERT)
_INDEX = re.compile(r"\.\d+(?=\.|$)")


def _child(mod: nn.Module, names: tuple[str, ...]) -> str | None:
    for n in names:
        if isinstance(getattr(mod, n, None), nn.Linear):
            return n
    return None


def _const_inputs(graph: Any, op_name: str) -> list[str]:
    """The constant inputs of an op, a transposed constant (Falcon's ``x @ W.T``) as the constant itself."""
    out = []
    for v in graph.ops[op_name].inputs:
        if v is None or v not in graph.values:
            continue
        if graph.values[v].is_const:
            out.append(v)
            continue
        src = graph.ops.get(graph.values[v].producer or "")
        if src is not None and src.kind == "permute" and src.inputs and graph.values[src.inputs[0]].is_const:
            out.append(src.inputs[0])
    return out


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

    def __init__(self, model: Any, analysis: AnalysisResult, attention: str) -> None:
        self.model = model
        self.cfg: Any = model.config
        self.cfg_name = type(self.cfg).__name__
        self.attention = attention
        self.analysis = analysis
        graph = analysis.graph
        self.weights = {name: tuple(v.shape) for name, v in graph.values.items() if v.is_const and v.shape is not None}
        self.roles = self._roles(analysis)
        self.reasons: dict[str, str] = {}  # role key -> why it keeps every channel
        self._cache: dict[tuple, str | None] = {}
        self._blocks = self._attention_blocks()
        from compiler.hf import ffn_layers

        hidden = getattr(self.cfg, "hidden_size", None)
        self._ffn = {fld: (f"{layers[0][0]}.weight", layers[0][1], layers[0][2]) for fld, layers in ffn_layers(model, self.cfg).items()}
        self._norm = next(  # the hidden size: read where hf.py reads it, on a norm over the residual stream
            (
                f"{n}.weight" for n, m in model.named_modules()
                if "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), torch.Tensor)
                and m.weight.dim() == 1 and m.weight.shape[0] == hidden
            ),
            None,
        )  # fmt: skip
        from compiler.hf import expert_width_field
        from frontends.torch.moe import _supported

        self._experts = [  # mixtures of experts: (module path, experts, the config field of their FFN width)
            (n, int(m.gate_up_proj.shape[0]), expert_width_field(self.cfg, int(m.down_proj.shape[2])))
            for n, m in model.named_modules() if type(m).__name__.endswith("Experts") and _supported(m)
        ]  # fmt: skip
        from compiler.hf import multihead_attention_parts

        self._mha = multihead_attention_parts(model)
        self._state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        self._buffers = {k: tuple(b.shape) for k, b in model.named_buffers()}
        self._persistent = set(self._state)

    # -- roles ---------------------------------------------------------------------------------

    def _roles(self, analysis: AnalysisResult) -> list[_Role]:
        """Groups by role; the groups of one attention block (q/k and v head dims: the config has one head_dim)
        with the same channel count are one role."""
        graph = analysis.graph
        roles: dict[str, _Role] = {}
        blocks = {w: w.rsplit(".", 2)[0] for b in self._attention_blocks() for w in b}
        for g in analysis.groups:
            if not g.prunable:
                continue
            paths = []
            for name in g.producers:
                op = graph.ops[name]
                consts = _const_inputs(graph, name)
                paths.append(_INDEX.sub(".N", consts[0]) if consts else _INDEX.sub(".N", op.label or name))
            attn = sorted({_INDEX.sub(".N", blocks[p]) for p in self._consts(g) if p in blocks})
            key = (f"attention {attn[0]}" if len(attn) == 1 else " + ".join(sorted(set(paths)))) + f" [{len(g.classes)}]"
            roles.setdefault(key, _Role(key)).groups.append(g)
        return list(roles.values())

    def _consts(self, g: Group) -> list[str]:
        return [v for name in g.producers for v in _const_inputs(self.analysis.graph, name)]

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
        for name, _, fld in self._experts[:1]:
            s = self._shape(f"{name}.experts.0.gate_proj.weight", pruned)
            if s is not None and fld is not None and s[0] != getattr(cfg, fld):
                ch[fld] = s[0]
        if self._norm is not None:
            s = self._shape(self._norm, pruned)
            if s is not None and s[0] != cfg.hidden_size:
                ch["hidden_size"] = s[0]
                from compiler.hf import _FOLLOW_HIDDEN

                ch.update({f: s[0] for f in _FOLLOW_HIDDEN if getattr(cfg, f, None) == cfg.hidden_size})
        heads = getattr(cfg, "num_attention_heads", None)
        one_size = isinstance(heads, int) and isinstance(getattr(cfg, "hidden_size", None), int)  # (not per stage: Swin)
        if self._blocks and heads and one_size:
            q, k, v = (self._shape(w, pruned) for w in self._blocks[0])
            oq, ok = self.weights.get(self._blocks[0][0]), self.weights.get(self._blocks[0][1])
            d0 = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            if q is not None and k is not None and oq is not None and ok is not None and (q != oq or k != ok):
                if self.attention == "heads":
                    ch["num_attention_heads"] = q[0] // d0
                    if getattr(cfg, "num_key_value_heads", None) is not None:
                        ch["num_key_value_heads"] = k[0] // d0
                    if getattr(cfg, "head_dim", None) is not None or not q[0] == ch.get("hidden_size", cfg.hidden_size) == cfg.hidden_size:
                        ch["head_dim"] = d0  # as compiler.hf writes it: a class that reads head_dim keeps the head size
                elif getattr(cfg, "head_dim", None) is not None or not q[0] == ch.get("hidden_size", cfg.hidden_size) == cfg.hidden_size:
                    ch["head_dim"] = q[0] // heads
        for fld, (weight, axis, parts) in self._ffn.items():
            s = self._shape(weight, pruned)
            if s is not None and s[axis] != self.weights[weight][axis]:
                ch[fld] = s[axis] // parts
        return ch

    def check(self, pruned: np.ndarray) -> str | None:
        """``None`` where the model's class, built from the pruned config, has every pruned shape; else why not."""
        ch = self._changes(pruned)
        want = {name: self._shape(name, pruned) for name in self._state if name in self.weights}
        for name, n, fld in self._experts:  # the per-expert FFNs (frontends.torch.moe) as the class's 3-D parameters
            gates = [self._shape(f"{name}.experts.{e}.gate_proj.weight", pruned) for e in range(n)]
            if any(g is None for g in gates):
                continue
            if len({g[0] for g in gates if g is not None}) != 1 or fld is None:
                return f"{self.cfg_name} holds one FFN width for all experts ({name}: {[g[0] for g in gates if g is not None]})"
            w, h = gates[0][0], gates[0][1]  # type: ignore[index]
            want[f"{name}.gate_up_proj"], want[f"{name}.down_proj"] = (n, 2 * w, h), (n, h, w)
        for packed, parts in self._mha.items():  # nn.MultiheadAttention: its packed q/k/v, decomposed in the graph
            shapes = [self._shape(p, pruned) for p in parts]
            if all(s is not None for s in shapes):
                want[packed] = (sum(s[0] for s in shapes if s is not None), *shapes[0][1:])  # type: ignore[index]
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
            for k in range(kept[role.key], role.size + 1):
                if self.check(self._apply(scores, pruned, {**settled, role.key: k})) is None:
                    settled[role.key] = k
                    break
        # roles one config field holds together (T5's encoder and decoder FFNs: d_ff) move only together: the stuck
        # roles of one width, tried at one kept count
        stuck: dict[int, list[_Role]] = {}
        for role in order:
            if settled[role.key] == role.size and kept[role.key] < role.size:
                stuck.setdefault(role.size, []).append(role)
        for size, roles in stuck.items():
            if len(roles) < 2:
                continue
            for k in range(max(kept[r.key] for r in roles), size):
                trial = {**settled, **{r.key: k for r in roles}}
                if self.check(self._apply(scores, pruned, trial)) is None:
                    settled = trial
                    break
        for role in order:
            if settled[role.key] == role.size and kept[role.key] < role.size:
                alone = self.check(self._apply(scores, pruned, {**full, role.key: kept[role.key]}))
                self.reasons.setdefault(role.key, alone or "expressible alone, not with the other pruned widths")
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
