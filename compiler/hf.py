"""Hugging Face transformers models: the pruned model back in its own class, with an updated config.

prunec's rewrite returns a ``torch.fx.GraphModule``. For a ``transformers``
``PreTrainedModel`` this module rebuilds the model's own class from a config
whose sizes follow the pruned weights (``num_attention_heads``,
``num_key_value_heads``, ``head_dim``, ``intermediate_size``, ``hidden_size``),
loads the sliced weights into it, and checks its outputs against the pruned
graph module, so it saves with ``save_pretrained`` and reloads with
``from_pretrained``.

A config holds one size per field for all layers. Per-layer sizes it cannot
express (a threshold or global policy, or ``attention="head_dim"`` on a model
that derives the head size from ``hidden_size / num_attention_heads`` as BERT
does) raise :class:`UnsupportedModelError` naming the parameter; ``ratio=`` with
the default local scope prunes every layer alike.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn as nn

from frontends.errors import InvalidArgumentError, UnsupportedModelError, VerificationError

log = logging.getLogger(__name__)

__all__ = ["is_hf_model", "pruned_config", "to_hf", "save_pretrained"]

_Q, _K, _V = ("q_proj", "query", "q", "q_lin"), ("k_proj", "key", "k", "k_lin"), ("v_proj", "value", "v", "v_lin")  # (q_lin: DistilBERT)


def is_hf_model(model: Any) -> bool:
    """A ``transformers`` ``PreTrainedModel`` (it has a config and ``save_pretrained``)."""
    cfg = getattr(model, "config", None)
    return (
        isinstance(model, nn.Module)
        and hasattr(model, "save_pretrained")
        and type(cfg).__module__.startswith("transformers.")
    )


def _config(model: nn.Module) -> Any:
    """The model's ``transformers`` config (typed ``Any``: transformers is an optional dependency)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no config: not a Hugging Face transformers model")
    return cfg


def _graph_module(pruned: Any) -> torch.fx.GraphModule:
    if not isinstance(pruned, torch.fx.GraphModule):
        raise InvalidArgumentError(f"expected the pruned torch.fx.GraphModule that compile returned, got {type(pruned).__name__}")
    return pruned


def _child(mod: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Linear] | None:
    for n in names:
        c = getattr(mod, n, None)
        if isinstance(c, nn.Linear):
            return n, c
    return None


def _uniform(name: str, values: dict[str, int], hint: str = "prune with ratio= and scope='local' (every layer alike)") -> int:
    """The one value every layer has, or a typed error listing the layers that differ."""
    distinct = sorted(set(values.values()))
    if len(distinct) != 1:
        per = ", ".join(f"{k}: {v}" for k, v in list(values.items())[:6])
        raise UnsupportedModelError(
            f"the pruned layers have different {name} ({per}); a Hugging Face config holds one value for all "
            "layers: prune with ratio= and scope='local' (every layer alike), or keep the pruned GraphModule"
        )
    return distinct[0]


def _head_shapes(gm: torch.fx.GraphModule, inputs: tuple) -> dict[str, tuple[int, int]]:
    """(heads, head size) after the reshape that follows each linear, keyed by the linear's weight name."""
    from torch.fx.passes.shape_prop import ShapeProp

    gm = copy.deepcopy(gm)
    with torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    out: dict[str, tuple[int, int]] = {}
    for node in gm.graph.nodes:
        weight = None
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.Linear):
            weight = f"{node.target}.weight"
        elif node.op == "call_function" and "linear" in str(node.target) and len(node.args) > 1:
            w = node.args[1]
            if isinstance(w, torch.fx.Node) and w.op == "get_attr":
                weight = str(w.target)
        if weight is None:
            continue
        in_shape = tuple(node.meta["tensor_meta"].shape)
        for user in _through_scalar_ops(node):
            name = str(getattr(user.target, "__name__", user.target))
            meta = user.meta.get("tensor_meta")
            if ("view" in name or "reshape" in name) and meta is not None and hasattr(meta, "shape"):
                shape = tuple(meta.shape)
                if len(shape) == len(in_shape) + 1 and shape[-2] * shape[-1] == in_shape[-1]:
                    out[weight] = (int(shape[-2]), int(shape[-1]))
    return out


_SCALAR_OPS = ("mul", "div", "truediv", "add", "sub", "contiguous", "clone", "to", "_to_copy", "type_as")


def _through_scalar_ops(node: torch.fx.Node, depth: int = 3) -> list[torch.fx.Node]:
    """The users of ``node``, and of the ops that keep its shape by scaling it with a number or copying it on the
    way to its reshape into heads (OPT, Whisper: ``(q_proj(x) * scaling).view(...)``)."""
    out, frontier = [], [node]
    for _ in range(depth):
        nxt = []
        for n in frontier:
            for user in n.users:
                out.append(user)
                name = str(getattr(user.target, "__name__", user.target)).split(".")[0]
                others = [a for a in (*user.args[1:], *user.kwargs.values()) if isinstance(a, torch.fx.Node)]
                if name.lstrip("_").rstrip("_") in _SCALAR_OPS and user.args and user.args[0] is n and not others:
                    nxt.append(user)
        frontier = nxt
    return out


def pruned_config(model: nn.Module, pruned: nn.Module, inputs: tuple) -> Any:
    """A copy of ``model.config`` with the sizes of the pruned weights."""
    return _config_plan(model, _graph_module(pruned), inputs)[0]


def _config_plan(model: nn.Module, pruned: torch.fx.GraphModule, inputs: tuple) -> tuple[Any, dict[str, float]]:
    """The pruned config, and the layers to rescale: the query projections where the head size changed, the
    RMS norms where the hidden size changed."""
    old_cfg = _config(model)
    cfg = copy.deepcopy(old_cfg)
    sd = pruned.state_dict()
    hidden = getattr(cfg, "hidden_size", None)
    _, norm = _layer_widths(model, sd, None, hidden)
    rescale: dict[str, float] = {}
    if norm and hidden is not None:  # (norm is only filled when the config has a hidden_size)
        rescale.update(_set_hidden_size(cfg, model, norm, hidden))  # (first: a head size derived from it follows)
    one_size = all(isinstance(getattr(old_cfg, f, None), int) for f in ("hidden_size", "num_attention_heads"))
    attention = _attention_sizes(model, _head_shapes(pruned, inputs)) if one_size else _AttentionSizes()
    if attention.n_q:  # (a composite or per-stage config (CLIP, Swin) has no one head count: its shapes are checked below)
        rescale.update(_set_attention_sizes(cfg, old_cfg, attention))
    for fld, layers in ffn_layers(model, old_cfg).items():
        widths = {name: _pruned_rows(sd, f"{name}.weight", axis) // parts for name, axis, parts in layers}
        setattr(cfg, fld, _uniform(f"FFN widths ({fld})", widths))
    return cfg, rescale


@dataclass
class _AttentionSizes:
    """Per attention block of the pruned model (by qualified name): its query and key/value heads, and the
    head size of each of q, k, v (keyed ``"<block> (<role>)"``)."""

    queries: list[str] = field(default_factory=list)  # the query projections, by qualified name
    n_q: dict[str, int] = field(default_factory=dict)
    n_kv: dict[str, int] = field(default_factory=dict)
    d_head: dict[str, int] = field(default_factory=dict)


def _attention_sizes(model: nn.Module, heads: dict[str, tuple[int, int]]) -> _AttentionSizes:
    """The heads and head sizes of every module with query, key and value linears (``heads``: by weight name)."""
    sizes = _AttentionSizes()
    for name, mod in model.named_modules():
        q, k, v = _child(mod, _Q), _child(mod, _K), _child(mod, _V)
        if q is None or k is None or v is None:
            continue
        prefix = f"{name}." if name else ""
        for role, (child, _) in (("q", q), ("k", k), ("v", v)):
            hd = heads.get(f"{prefix}{child}.weight")
            if hd is None:
                raise UnsupportedModelError(f"{prefix}{child}: cannot find its reshape into heads in the pruned model")
            if role == "q":
                sizes.n_q[name] = hd[0]
                if _scales_by_head_size(mod):  # (T5 attention has no softmax scale: nothing to keep)
                    sizes.queries.append(f"{prefix}{child}")
            elif role == "k":
                sizes.n_kv[name] = hd[0]
            sizes.d_head[f"{name} ({role})"] = hd[1]
    return sizes


def _scales_by_head_size(attention: nn.Module) -> bool:
    """The attention module scales its scores by a head size (BERT, LLaMA, ViT, ...: it keeps one); T5's has none
    (its ``scaling`` is 1.0)."""
    if getattr(attention, "scaling", None) == 1.0:
        return False
    return any(hasattr(attention, a) for a in ("scaling", "scale", "head_dim", "attention_head_size", "dim_per_head", "head_size"))


def _set_attention_sizes(cfg: Any, old_cfg: Any, sizes: _AttentionSizes) -> dict[str, float]:
    """Heads, key/value heads and head size into ``cfg``; the query projections to rescale where the head size changed."""
    old_d = getattr(old_cfg, "head_dim", None) or old_cfg.hidden_size // old_cfg.num_attention_heads
    cfg.num_attention_heads = _uniform("numbers of attention heads", sizes.n_q)
    if hasattr(cfg, "num_key_value_heads") and cfg.num_key_value_heads is not None:
        cfg.num_key_value_heads = _uniform("numbers of key/value heads", sizes.n_kv)
    d = _uniform("head sizes", sizes.d_head, "query, key and value need one head size (attention='heads' keeps it)")
    heads_x_d = d * cfg.num_attention_heads
    if getattr(cfg, "head_dim", None) is not None or heads_x_d != getattr(cfg, "hidden_size", -1) or heads_x_d != old_cfg.hidden_size:
        cfg.head_dim = d
    if d != old_d:  # the pruned model keeps the original softmax scale; the rebuilt class uses head_dim ** -0.5
        return {q: (d / old_d) ** 0.5 for q in sizes.queries}
    return {}


def _pruned_rows(sd: dict[str, torch.Tensor], key: str, axis: int = 0) -> int:
    """The output dim of a pruned weight; a typed error where the pruned model has no such weight."""
    if key not in sd:
        raise UnsupportedModelError(f"{key}: not in the pruned model; keep the pruned GraphModule")
    return int(sd[key].shape[axis])


# config fields that hold an FFN width, and where a layer's path says which of two equal ones it is
_FFN_FIELDS = ("intermediate_size", "ffn_dim", "encoder_ffn_dim", "decoder_ffn_dim", "hidden_dim", "d_ff", "n_inner",
               "ffn_hidden_size", "shared_expert_intermediate_size")  # fmt: skip  (ffn_hidden_size: Falcon)
_FFN_WHERE = {"encoder_ffn_dim": "encoder", "decoder_ffn_dim": "decoder", "shared_expert_intermediate_size": "shared_expert"}


def ffn_layers(model: nn.Module, cfg: Any) -> dict[str, list[tuple[str, int, int]]]:
    """Per config field that holds an FFN width (``intermediate_size``, ``ffn_dim``, ``d_ff``, ``n_inner`` (None:
    4 x hidden), ...): the FFN up-projections whose output width it is (module path, output axis of the weight:
    0 for ``nn.Linear``, 1 for GPT-2's ``Conv1D``, and how many FFN widths the output holds: 2 for a fused
    ``gate_up_proj`` (Phi-3), else 1). A layer whose width two fields hold goes to the one its path names
    (``encoder``, ``decoder``, ``shared_expert``), else the first."""
    hidden = getattr(cfg, "hidden_size", None)
    values: dict[str, int] = {}
    for fld in _FFN_FIELDS:
        v = getattr(cfg, fld, None) if fld in vars(cfg) or hasattr(type(cfg), fld) else None
        if fld == "n_inner" and fld in vars(cfg) and v is None and hidden is not None:
            v = 4 * hidden
        if isinstance(v, int) and not isinstance(v, bool) and v != hidden:
            values[fld] = v
    out: dict[str, list[tuple[str, int, int]]] = {}
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if isinstance(mod, nn.Linear):
            width, axis = mod.out_features, 0
        elif type(mod).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2:
            width, axis = int(w.shape[1]), 1
        else:
            continue
        parts = 2 if name.rpartition(".")[2] == "gate_up_proj" else 1  # (gate and up in one linear: Phi-3)
        fields = [f for f, v in values.items() if v * parts == width]
        if not fields or "attn" in name or "attention" in name:  # (a fused q/k/v as wide as the FFN is not one)
            continue
        named = [f for f in fields if _FFN_WHERE.get(f, "\0") in name]
        plain = [f for f in fields if f not in _FFN_WHERE]
        fld = (named or plain or fields)[0]
        out.setdefault(fld, []).append((name, axis, parts))
    return out


def _layer_widths(
    model: nn.Module, sd: dict[str, torch.Tensor], inter: int | None, hidden: int | None
) -> tuple[dict[str, int], dict[str, int]]:
    """Pruned widths by layer name: of the FFN up-projections (``inter`` outputs, not ``hidden``), and of the
    norms over ``hidden`` channels."""
    ffn: dict[str, int] = {}
    norm: dict[str, int] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and inter is not None and mod.out_features == inter and mod.out_features != hidden:
            ffn[name] = _pruned_rows(sd, f"{name}.weight")
        elif (
            hidden is not None
            and isinstance(getattr(mod, "weight", None), torch.Tensor)
            and mod.weight.dim() == 1
            and mod.weight.shape[0] == hidden
            and "norm" in type(mod).__name__.lower()
        ):
            norm[name] = _pruned_rows(sd, f"{name}.weight")
    return ffn, norm


# config fields that name a width the class compares with hidden_size to build a projection between them (OPT's
# project_in/project_out where word_embed_proj_dim != hidden_size): equal before pruning, they follow it
_FOLLOW_HIDDEN = ("word_embed_proj_dim", "embedding_size")  # (embedding_size: ELECTRA)


def _set_hidden_size(cfg: Any, model: nn.Module, norm: dict[str, int], hidden: int) -> dict[str, float]:
    """The pruned hidden size into ``cfg``; where it changed on an RMSNorm model, ``rms_norm_eps`` and the RMS
    norms to rescale."""
    cfg.hidden_size = _uniform("hidden sizes", norm)
    for fld in _FOLLOW_HIDDEN:  # a width equal to the hidden size means "no projection" to the class (OPT)
        if getattr(cfg, fld, None) == hidden and cfg.hidden_size != hidden:
            setattr(cfg, fld, cfg.hidden_size)
    rescale: dict[str, float] = {}
    modules = dict(model.named_modules())
    rms = [name for name in norm if _rms_style(modules[name])]
    eps = next((f for f in ("rms_norm_eps", "layer_norm_epsilon") if getattr(cfg, f, None) is not None), None)
    if cfg.hidden_size != hidden and rms and eps is not None:
        # The pruned RMSNorm keeps the original mean (sum of squares / old width: the removed channels count as
        # zeros); the rebuilt one divides by the new width. Equal with weight * sqrt(old / new), eps * old / new.
        # (T5's T5LayerNorm is an RMS norm too; its eps is layer_norm_epsilon.)
        ratio = hidden / cfg.hidden_size
        setattr(cfg, eps, getattr(cfg, eps) * ratio)
        for name in rms:
            rescale[name] = ratio**0.5
    return rescale


def _rms_style(mod: nn.Module) -> bool:
    """An RMS norm: named so, or a weight-only norm with a ``variance_epsilon`` (T5LayerNorm and its copies)."""
    name = type(mod).__name__.lower()
    return "rms" in name or (hasattr(mod, "variance_epsilon") and getattr(mod, "bias", None) is None)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    raise UnsupportedModelError(f"cannot compare outputs of type {type(out).__name__}")


_PERIODIC = re.compile(r"(pattern|_step|_interval|_every|_period)$")  # per-layer behaviour derived from the layer index


def _kept_key(key: str, keys: set[str]) -> bool:
    """``key`` of the original model is in the pruned one (an experts module's 3-D parameter: as per-expert FFNs)."""
    base, _, leaf = key.rpartition(".")
    return key in keys or (leaf in ("gate_up_proj", "down_proj") and f"{base}.experts.0.gate_proj.weight" in keys)


def fewer_layers(model: nn.Module, pruned: torch.fx.GraphModule) -> tuple[nn.Module, torch.fx.GraphModule]:
    """Depth pruning: where whole elements of the model's layer list (the ``ModuleList`` of
    ``num_hidden_layers`` layers) are gone from ``pruned``, ``model``'s class built with the kept layers
    only (``num_hidden_layers`` and per-layer lists such as ``layer_types`` follow; the original weights of
    the kept layers, renumbered 0..n-1), and ``pruned`` with its kept layers renumbered the same way.
    Unchanged where no layer is gone. A per-layer setting the config derives from the layer index (an
    ``*_pattern`` / ``*_step`` / ``*_interval`` attribute) that the kept layers no longer follow raises
    :class:`UnsupportedModelError`: the config cannot say which layers were removed."""
    from frontends.torch.depth import reindex_layers

    cfg = _config(model)
    n = getattr(cfg, "num_hidden_layers", None)
    lists = [name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and n is not None and len(mod) == n]
    if n is None or len(lists) != 1:
        return model, pruned
    prefix = lists[0]
    keys = set(pruned.state_dict())
    kept = [i for i in range(n) if any(k.startswith(f"{prefix}.{i}.") for k in keys)]
    if len(kept) == n:
        partial = [
            i for i in range(n)
            if any(k.startswith(f"{prefix}.{i}.") and not _kept_key(k, keys) for k in model.state_dict())  # (width keeps every key)
        ]  # fmt: skip
        if partial:
            left = sorted({k.split(".")[-2] for k in model.state_dict() if k.startswith(f"{prefix}.{partial[0]}.") and k in keys})
            raise UnsupportedModelError(
                f"{prefix}.{partial[0]} lost its residual branches but keeps {', '.join(left[:4])} (a post-norm layer: the "
                f"norms after its adds stay on the stream); {type(cfg).__name__} cannot express a layer without its "
                "branches: keep the pruned GraphModule"
            )
        return model, pruned
    new_cfg = copy.deepcopy(cfg)
    new_cfg.num_hidden_layers = len(kept)
    for attr, value in vars(cfg).items():
        if isinstance(value, (list, tuple)) and len(value) == n and attr != "architectures":
            setattr(new_cfg, attr, type(value)(value[i] for i in kept))
        elif _PERIODIC.search(attr) and isinstance(value, int) and not isinstance(value, bool) and value > 1:
            if any(old % value != new % value for new, old in enumerate(kept)):
                raise UnsupportedModelError(
                    f"{type(cfg).__name__}.{attr}={value} derives per-layer behaviour from the layer index; with layers "
                    f"{[i for i in range(n) if i not in kept]} removed the kept layers no longer follow it, and the config "
                    "cannot say which were removed: keep the pruned GraphModule"
                )
    try:
        small: Any = type(model)(new_cfg).to(dtype=next(model.parameters()).dtype).eval()
    except (ValueError, AssertionError) as exc:
        raise UnsupportedModelError(f"{type(cfg).__name__} cannot express {len(kept)} of {n} layers: {exc}") from exc
    head = f"{prefix}."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(head):
            idx, _, rest = key[len(head) :].partition(".")
            if int(idx) not in kept:
                continue
            key = f"{head}{kept.index(int(idx))}.{rest}"
        state[key] = value
    small.load_state_dict(state, strict=False)
    return small, reindex_layers(pruned, prefix, kept)


def to_hf(model: nn.Module, pruned: nn.Module, inputs: tuple, rtol: float = 1e-4) -> nn.Module:
    """``model``'s own class built from the pruned config, holding the pruned weights.

    Raises :class:`UnsupportedModelError` where the config cannot express the
    pruned shapes, :class:`VerificationError` where its outputs differ from
    ``pruned``'s on ``inputs``.
    """
    if not is_hf_model(model):
        raise UnsupportedModelError(f"{type(model).__name__} is not a Hugging Face transformers model")
    model, pruned = fewer_layers(model, _graph_module(pruned))  # depth pruning: the kept layers, renumbered
    persistent = set(model.state_dict())
    pruned_buffers = dict(pruned.named_buffers())
    for key, buf in model.named_buffers():  # recomputed from the config when the class is built (rotary inv_freq)
        got = pruned_buffers.get(key)
        if key not in persistent and got is not None and tuple(got.shape) != tuple(buf.shape):
            raise UnsupportedModelError(
                f"{type(_config(model)).__name__} cannot express the pruned {key} (shape {tuple(buf.shape)} -> {tuple(got.shape)}): "
                "the class recomputes it from the config (rotary frequencies of a pruned head size); "
                "use attention='heads', or keep the pruned GraphModule"
            )
    cfg, rescale = _config_plan(model, _graph_module(pruned), inputs)
    sd = pruned.state_dict()
    sd.update(pack_experts(model, sd, cfg))  # mixtures of experts: per-expert FFNs back into the 3-D parameters
    sd.update(pack_multihead_attention(model, sd))  # nn.MultiheadAttention: q/k/v back into in_proj
    try:
        new: Any = type(model)(cfg).to(dtype=next(model.parameters()).dtype).eval()  # a transformers PreTrainedModel
    except (ValueError, AssertionError) as exc:  # the class's own checks of the config
        raise UnsupportedModelError(f"{type(cfg).__name__} cannot express the pruned sizes: {exc}") from exc
    orig = model.state_dict()
    state = {}
    for key, ref in new.state_dict().items():
        src = sd.get(key, orig.get(key))
        if src is None:
            raise UnsupportedModelError(f"{type(model).__name__}: no pruned value for {key}")
        if tuple(src.shape) != tuple(ref.shape):
            raise UnsupportedModelError(
                f"{type(cfg).__name__} cannot express the pruned {key}: pruned shape {tuple(src.shape)}, the updated "
                f"config builds {tuple(ref.shape)} (e.g. a head size derived from hidden_size / num_attention_heads); "
                "prune other dimensions, or keep the pruned GraphModule"
            )
        layer, _, kind = key.rpartition(".")
        if layer in rescale and kind in ("weight", "bias"):
            src = src * rescale[layer]
        state[key] = src
    new.load_state_dict(state, strict=False)
    if hasattr(new, "tie_weights"):
        new.tie_weights()
    with torch.no_grad():
        want = _first_tensor(pruned(*inputs)).double()
        got = _first_tensor(_call_as_pruned(new, pruned, inputs)).double()
    err = (got - want).abs().max().item() if got.shape == want.shape else float("inf")
    # both run in the model's precision along different code (the traced graph, the class): half precision rounds
    from frontends.torch.verify import DTYPE_RTOL

    dtype = next(model.parameters()).dtype
    half = DTYPE_RTOL[dtype] if dtype in (torch.float16, torch.bfloat16) else 0.0  # float32 keeps rtol
    tol = max(rtol, half) * max(1.0, want.abs().max().item())
    if not err <= tol:
        raise VerificationError(f"{type(model).__name__} rebuilt from the pruned config differs from the pruned model by {err:.3g}")
    log.info("rebuilt %s from the pruned config (max difference %.3g)", type(model).__name__, err)
    return new


def _call_as_pruned(model: nn.Module, pruned: torch.fx.GraphModule, inputs: tuple) -> Any:
    """``model`` called with ``inputs`` as the pruned module takes them: by the names of its arguments where it
    takes one tensor per argument (an example given as keyword arguments, ``model(**batch)``, need not follow
    the class's positional order: Whisper's second parameter is ``attention_mask``), else by position."""
    import inspect

    names = list(inspect.signature(pruned.forward).parameters)
    accepted = inspect.signature(model.forward).parameters
    if len(names) == len(inputs) and all(n in accepted for n in names):
        return model(**dict(zip(names, inputs, strict=True)))
    return model(*inputs)


def multihead_attention_parts(model: nn.Module) -> dict[str, list[str]]:
    """Each ``nn.MultiheadAttention`` parameter of ``model`` (by state-dict key) and the parameters of its
    decomposed form (:mod:`frontends.torch.attention`: ``q_proj``/``k_proj``/``v_proj`` linears) that it packs,
    in order: ``in_proj_weight`` is the rows of the three weights, ``in_proj_bias`` of the three biases."""
    out: dict[str, list[str]] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.MultiheadAttention):
            continue
        p = f"{name}." if name else ""
        if mod.in_proj_weight is not None:
            out[f"{p}in_proj_weight"] = [f"{p}{r}_proj.weight" for r in "qkv"]
        else:
            for r in "qkv":
                out[f"{p}{r}_proj_weight"] = [f"{p}{r}_proj.weight"]
        if mod.in_proj_bias is not None:
            out[f"{p}in_proj_bias"] = [f"{p}{r}_proj.bias" for r in "qkv"]
    return out


def pack_multihead_attention(model: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The packed ``nn.MultiheadAttention`` parameters of ``model`` from the pruned decomposed projections in
    ``sd`` (SigLIP's pooling head): without them the rebuilt class would keep the original, unpruned weights."""
    return {
        key: torch.cat([sd[p] for p in parts])
        for key, parts in multihead_attention_parts(model).items()
        if all(p in sd for p in parts)
    }


def expert_width_field(cfg: Any, width: int) -> str | None:
    """The config field that holds the experts' FFN width (``width``, unpruned): Qwen2-MoE's
    ``moe_intermediate_size``, else Mixtral's ``intermediate_size``."""
    for name in ("moe_intermediate_size", "intermediate_size"):
        if getattr(cfg, name, None) == width:
            return name
    return None


def pack_experts(model: nn.Module, sd: dict[str, torch.Tensor], cfg: Any) -> dict[str, torch.Tensor]:
    """The 3-D ``gate_up_proj`` / ``down_proj`` of each experts module of ``model``, from the per-expert FFNs of the
    pruned model (:mod:`frontends.torch.moe`), with the experts' width written into ``cfg``; a typed error where
    the experts or layers have different widths (one config field holds them all)."""
    from frontends.torch.moe import _supported

    out: dict[str, torch.Tensor] = {}
    widths: dict[str, int] = {}
    field_name = None
    for name, mod in model.named_modules():
        if not (type(mod).__name__.endswith("Experts") and _supported(mod)) or f"{name}.experts.0.gate_proj.weight" not in sd:
            continue
        n = mod.gate_up_proj.shape[0]
        field_name = field_name or expert_width_field(_config(model), mod.down_proj.shape[2])
        gates = [sd[f"{name}.experts.{e}.gate_proj.weight"] for e in range(n)]
        for e, g in enumerate(gates):
            widths[f"{name}.experts.{e}"] = int(g.shape[0])
        if len({int(g.shape[0]) for g in gates}) != 1:
            continue  # (reported by _uniform below)
        ups = [sd[f"{name}.experts.{e}.up_proj.weight"] for e in range(n)]
        out[f"{name}.gate_up_proj"] = torch.stack([torch.cat([g, u]) for g, u in zip(gates, ups, strict=True)])
        out[f"{name}.down_proj"] = torch.stack([sd[f"{name}.experts.{e}.down_proj.weight"] for e in range(n)])
    if widths:
        if field_name is None:
            raise UnsupportedModelError(f"{type(cfg).__name__}: no config field holds the experts' FFN width")
        setattr(cfg, field_name, _uniform("expert FFN widths", widths))
    return out


def save_pretrained(model: nn.Module, pruned: nn.Module, inputs: tuple, directory: str, **kwargs: Any) -> nn.Module:
    """Rebuild (:func:`to_hf`) and ``save_pretrained(directory)``; returns the rebuilt model."""
    new: Any = to_hf(model, pruned, inputs)
    new.save_pretrained(directory, **kwargs)
    return new
