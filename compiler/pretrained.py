"""Pruning a transformers checkpoint folder disk to disk, shard by shard: ``compile_pretrained(IN_DIR, OUT_DIR)``.

The model is never whole in memory. The stages:

1. **analysis**: the model's own class is built from ``config.json`` with the same widths but two decoder layers
   and a vocabulary of a few thousand rows (a *skeleton*, weights left uninitialized and zeroed), traced and
   analysed by prunec's usual passes (``frontends.torch`` + ``passes.channel_analysis``). The two layers must be
   alike (the same coupling, renamed); then every coupled group of layer 0 stands for the same group of every
   layer of the checkpoint, and the groups that touch anything outside the layers (the residual stream: the
   embeddings, every ``o_proj`` / ``down_proj``, the norms) are one group over the whole model. These are the
   *virtual* groups of the full model (:class:`Structure`).
2. **scoring**: one pass over the shards, one tensor at a time: the ``l2`` (or ``l1``) norm of every unit of every
   scored layer, normalized per layer and equalized per channel exactly as :class:`passes.saliency.Saliency` does.
3. **selection**: :class:`passes.selection.GroupPlanner` on the virtual groups, then the ``hf_compatible`` repair
   of :mod:`compiler.hf_constraints` (one width per role in every layer; the model's class, built from the pruned
   config, decides what the config can express), checked on the skeleton.
4. **writing**: a second pass writes each output shard (same file names, same dtypes) by slicing each tensor by
   name, plus the index, the new ``config.json`` (:mod:`compiler.hf`'s config plan: heads, key/value heads, head
   size, FFN width, hidden size, and the RMS-norm rescale where the hidden size changes) and ``prunec_plan.json``
   (the removed channels, so a folder can be verified again: :func:`verify_pretrained`). Every output shape is
   checked against the class built (on the meta device) from the new config before anything is written.
5. **verification**, streamed block by block: for each layer, a one-layer skeleton holds that layer's original
   tensors (and the embedding rows, head rows and final norm it needs), the same one-layer skeleton built from the
   *written* config holds the *written* tensors, and :class:`frontends.torch.verify.VerifyFX` compares the two in
   float64 with the removed channels zeroed in the original. The head keeps more rows than the hidden size, so
   the logits pin down the block's output. Where the hidden size shrinks, an RMS norm's weight is written times
   ``sqrt(old / new)`` and rounded to the checkpoint's dtype; the reference holds that rounded value divided back
   (in float32), so the check stays at :data:`RTOL` for bf16 too, and the report gives the rounding
   (``settings["rescale_rounding"]``: the largest relative change rounding made to a rescaled weight).

The output folder is staged in a temporary folder beside it and renamed into place only when everything is
written and verified; ``in_dir`` is only read.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from compiler.report import GroupReport, Report
from compiler.safetensors_io import ShardReader, ShardWriter
from frontends.errors import InternalError, InvalidArgumentError, UnsupportedModelError, VerificationError
from frontends.graph import ChannelGraph
from passes.channel_analysis import AnalysisResult, Group
from passes.saliency import EQUALIZATIONS, NORMALIZERS, equalize

log = logging.getLogger(__name__)

__all__ = ["compile_pretrained", "verify_pretrained", "PLAN_FILE", "RTOL"]

PLAN_FILE = "prunec_plan.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# relative tolerance of the streamed verification (a float64 comparison, whatever the checkpoint's dtype: the
# reference holds the original weights in float32, and a rescaled norm weight as written, divided back)
RTOL = 1e-5
_WEIGHT_FILES = re.compile(r"\.(safetensors|bin|pt|pth|ckpt|h5|msgpack|gguf|onnx)$|\.index\.json$")
_SEQ = 16  # tokens of the verification input


# ---------------------------------------------------------------------------------------------------------------
# the checkpoint folder


class Checkpoint:
    """A transformers model folder: ``config.json`` and safetensors shards (an index, or one ``model.safetensors``)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = os.fspath(folder)
        if not os.path.isdir(self.folder):
            raise InvalidArgumentError(f"{self.folder}: not a directory")
        cfg_path = os.path.join(self.folder, "config.json")
        if not os.path.isfile(cfg_path):
            raise InvalidArgumentError(f"{self.folder}: no config.json (expected a transformers model folder)")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                self.config_dict: dict[str, Any] = json.load(f)
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(f"{cfg_path}: cannot read it as JSON ({exc})") from None
        if not isinstance(self.config_dict, dict):
            raise InvalidArgumentError(f"{cfg_path}: not a JSON object")
        self.config = _load_config(self.folder, self.config_dict)
        self.cls = _model_class(self.config, cfg_path)
        index = os.path.join(self.folder, INDEX_FILE)
        if os.path.isfile(index):
            try:
                with open(index, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
                files = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise InvalidArgumentError(f"{index}: not a safetensors index ({exc})") from None
        elif os.path.isfile(os.path.join(self.folder, SINGLE_FILE)):
            weight_map, files = None, [SINGLE_FILE]
        else:
            raise InvalidArgumentError(
                f"{self.folder}: no {SINGLE_FILE} and no {INDEX_FILE} (prunec reads safetensors checkpoints; "
                "save with save_pretrained(..., safe_serialization=True))"
            )
        self.sharded = weight_map is not None
        self.files = files
        self.readers: dict[str, ShardReader] = {}
        for name in files:
            path = os.path.join(self.folder, name)
            if os.path.basename(name) != name or not os.path.isfile(path):
                raise InvalidArgumentError(f"{path}: shard missing (named in {INDEX_FILE})")
            self.readers[name] = ShardReader(path)
        self.where: dict[str, str] = {}
        for name, reader in self.readers.items():
            for info in reader.infos:
                self.where[info.name] = name
        if weight_map is not None:
            for tensor, shard in weight_map.items():
                if self.where.get(tensor) != shard:
                    raise InvalidArgumentError(f"{os.path.join(self.folder, shard)}: has no tensor {tensor} (named in {INDEX_FILE})")
        floats: dict[torch.dtype, int] = defaultdict(int)
        for reader in self.readers.values():
            for info in reader.infos:
                if info.torch_dtype.is_floating_point:
                    floats[info.torch_dtype] += info.nbytes
        if not floats:
            raise InvalidArgumentError(f"{self.folder}: the checkpoint holds no floating-point tensors")
        self.dtype = max(floats, key=lambda d: floats[d])
        self.nbytes = sum(i.nbytes for r in self.readers.values() for i in r.infos)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.readers[self.where[name]].by_name[name].shape

    def read(self, name: str) -> torch.Tensor:
        return self.readers[self.where[name]].read(name)

    def read_rows(self, name: str, stop: int) -> torch.Tensor:
        return self.readers[self.where[name]].read_rows(name, 0, stop)


def _load_config(folder: str, raw: dict[str, Any]) -> Any:
    try:
        from transformers import AutoConfig
    except ImportError as exc:  # pragma: no cover - an optional dependency
        raise UnsupportedModelError("pruning a checkpoint folder needs the transformers package") from exc
    if raw.get("auto_map"):
        raise UnsupportedModelError(f"{folder}/config.json: a model with custom code (auto_map) is not supported")
    try:
        return AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UnsupportedModelError(f"{folder}/config.json: transformers cannot read it: {first}") from None


def _model_class(config: Any, where: str) -> type[nn.Module]:
    import transformers

    archs = getattr(config, "architectures", None) or []
    if not archs:
        raise UnsupportedModelError(f"{where}: names no architectures (e.g. \"architectures\": [\"LlamaForCausalLM\"])")
    cls = getattr(transformers, str(archs[0]), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise UnsupportedModelError(f"{where}: architecture {archs[0]!r} is not a transformers model class")
    if getattr(config, "num_hidden_layers", None) is None or getattr(config, "vocab_size", None) is None:
        raise UnsupportedModelError(f"{where}: {archs[0]} has no num_hidden_layers / vocab_size (a decoder language model is expected)")
    return cls


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """Model construction without the (slow, here useless) random initialization."""
    import importlib.util

    for where in ("transformers.initialization", "transformers.modeling_utils"):  # (transformers 5, then 4)
        no_init = getattr(importlib.import_module(where), "no_init_weights", None) if importlib.util.find_spec(where) else None
        if no_init is not None:
            with no_init():
                yield
            return
    yield


def small_config(config: Any, n_layers: int, vocab: int) -> Any:
    """``config`` with ``n_layers`` layers (per-layer lists cut to them) and a vocabulary of ``vocab`` tokens."""
    cfg = copy.deepcopy(config)
    n = cfg.num_hidden_layers
    for attr, value in list(vars(cfg).items()):
        if isinstance(value, (list, tuple)) and len(value) == n and attr != "architectures":
            setattr(cfg, attr, type(value)(value[:n_layers]))
    cfg.num_hidden_layers = n_layers
    cfg.vocab_size = vocab
    for tok in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = getattr(cfg, tok, None)
        if isinstance(v, int) and v >= vocab:
            setattr(cfg, tok, None)
    return cfg


def build(cls: type[nn.Module], config: Any, dtype: torch.dtype) -> nn.Module:
    """``cls(config)`` in ``dtype`` with zeroed weights (no random initialization), in eval mode."""
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with _no_init():
            model = cls(config)
    except (ValueError, AssertionError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise UnsupportedModelError(f"{cls.__name__} cannot be built from this config: {first}") from None
    finally:
        torch.set_default_dtype(old)
    tie = getattr(model, "tie_weights", None)  # (no_init_weights skips it with the initialization)
    if callable(tie):
        tie()
    persistent = set(model.state_dict())
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name in persistent and t.is_floating_point():
                t.zero_()
    return model.eval()


def _layer_list(model: nn.Module, n: int) -> str:
    """The path of the model's one list of ``n`` decoder layers."""
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n and any(True for _ in m.parameters())]
    if len(lists) != 1:
        raise UnsupportedModelError(f"{type(model).__name__}: cannot find its one list of decoder layers (found {lists or 'none'})")
    return lists[0]


def split_name(name: str, prefix: str) -> tuple[int | None, str]:
    """``prefix.<i>.rest`` -> (i, rest); any other name -> (None, name)."""
    if name.startswith(prefix + "."):
        idx, _, rest = name[len(prefix) + 1 :].partition(".")
        if idx.isdigit():
            return int(idx), rest
    return None, name


# ---------------------------------------------------------------------------------------------------------------
# the structure: the skeleton's groups as groups of the full model


@dataclass
class ClassMap:
    """Per class of one skeleton analysis: its virtual base id (-1: not on any weight), whether it belongs to a
    layer (then the virtual id is ``base + layer * n_local``) and the skeleton slot it lives in (-1: global)."""

    base: np.ndarray
    local: np.ndarray
    slot: np.ndarray

    def virtual(self, classes: np.ndarray, layers: list[int], n_local: int) -> np.ndarray:
        slot = self.slot[classes]
        layer = np.asarray(layers, dtype=np.int64)[np.maximum(slot, 0)] if len(layers) else np.zeros(len(classes), np.int64)
        return self.base[classes] + np.where(self.local[classes], layer * n_local, 0)


@dataclass
class VProducer:
    """A scored layer of the full model: its weight (checkpoint name), unit axis, the virtual class per unit."""

    weight: str
    axis: int
    classes: np.ndarray


@dataclass
class Structure:
    """What the two-layer skeleton's analysis says about the full model (:func:`analyse`)."""

    prefix: str  # the decoder layers' list, e.g. "model.layers"
    n_layers: int
    n_global: int
    n_local: int
    dims: dict[str, list[np.ndarray | None]]  # skeleton weight name (layer 0 or global) -> per dim: skeleton classes
    cmap: ClassMap  # of the skeleton analysis
    groups: list[Group]  # virtual
    roles: list[int]  # per virtual group: the skeleton group it comes from
    producers: list[VProducer]
    frozen: np.ndarray  # per virtual class
    reasons: dict[int, list[str]] = field(default_factory=dict)
    twins: dict[int, int] = field(default_factory=dict)  # skeleton group of layer 1 -> its twin of layer 0

    @property
    def n_virtual(self) -> int:
        return self.n_global + self.n_layers * self.n_local

    def skeleton_name(self, name: str) -> tuple[int | None, str]:
        layer, rest = split_name(name, self.prefix)
        return (layer, name) if layer is None else (layer, f"{self.prefix}.0.{rest}")

    def virtual_dims(self, name: str) -> list[np.ndarray | None] | None:
        """Per dim of checkpoint tensor ``name``: its virtual classes (None: a dim no channel runs along);
        None for a tensor the analysis does not track."""
        layer, skel = self.skeleton_name(name)
        dims = self.dims.get(skel)
        if dims is None:
            return None
        layers = [layer or 0]
        return [None if d is None else self.cmap.virtual(d, layers, self.n_local) for d in dims]

    def class_map(self, analysis: AnalysisResult, consts: set[str]) -> ClassMap:
        """The classes of another skeleton's analysis (same class, fewer or as many layers) as virtual ids."""
        n = analysis.n_classes
        base, local, slot = np.full(n, -1, np.int64), np.zeros(n, bool), np.full(n, -1, np.int64)
        for name in consts:
            lab = analysis.labels.get(name)
            if not lab:
                continue
            s, rest = split_name(name, self.prefix)
            ref = self.dims.get(name if s is None else f"{self.prefix}.0.{rest}")
            if ref is None or len(ref) != len(lab):
                raise UnsupportedModelError(f"{name}: the skeletons disagree about this tensor")
            for d, dl in enumerate(lab):
                if dl is None or ref[d] is None:
                    if (dl is None) != (ref[d] is None):
                        raise UnsupportedModelError(f"{name}: the skeletons disagree about dim {d}")
                    continue
                mine, theirs = analysis.atom_class[dl], ref[d]
                assert theirs is not None
                if len(mine) != len(theirs):
                    raise UnsupportedModelError(f"{name}: the skeletons disagree about the width of dim {d}")
                b, lo = self.cmap.base[theirs], self.cmap.local[theirs]
                seen = base[mine] >= 0
                if (base[mine][seen] != b[seen]).any():
                    raise UnsupportedModelError(f"{name}: dim {d} couples channels differently in a skeleton of another depth")
                base[mine], local[mine] = b, lo
                slot[mine] = np.where(lo, -1 if s is None else s, -1)
        return ClassMap(base, local, slot)


def _consts(model: nn.Module, analysis: AnalysisResult) -> dict[str, list[np.ndarray | None]]:
    """Per state-dict tensor of ``model`` the graph tracks: the classes of each dim (tied tensors under every name)."""
    ties = tied_names(model)
    out = {}
    for name, val in analysis.graph.values.items():
        lab = analysis.labels.get(name)
        if val.is_const and name in ties and lab:
            for alias in ties[name]:
                out[alias] = [None if dl is None else analysis.atom_class[dl] for dl in lab]
    return out


def analyse(model: nn.Module, analysis: AnalysisResult, n_layers: int) -> Structure:
    """The full model's virtual groups and scored layers from a two-layer skeleton's analysis."""
    from passes.selection import split_cells

    prefix = _layer_list(model, 2)
    if split_cells(analysis)[0].any():  # the selection here runs without the graph, so without balanced_scores
        raise UnsupportedModelError(f"{type(model).__name__}: a split cuts a coupled group into pieces (a fused projection); "
                                    "not supported for checkpoint folders yet")  # fmt: skip
    consts = _consts(model, analysis)
    where: dict[int, set[int]] = defaultdict(set)  # class -> slots of the tensors on it (-1: outside the layers)
    for name, dims in consts.items():
        s, _ = split_name(name, prefix)
        for d in dims:
            if d is not None:
                for c in np.unique(d).tolist():
                    where[c].add(-1 if s is None else s)
    local = [sorted(c for c, s in where.items() if s == {k}) for k in (0, 1)]
    sets = [set(x) for x in local]
    m01: dict[int, int] = {}

    def differ(what: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"{type(model).__name__}: decoder layers 0 and 1 differ ({what}); prunec prunes checkpoints "
                                     "of models whose layers are all alike")  # fmt: skip

    for name, dims0 in consts.items():
        s, rest = split_name(name, prefix)
        if s is None:
            continue
        other = f"{prefix}.{1 - s}.{rest}"
        dims1 = consts.get(other)
        if dims1 is None or len(dims1) != len(dims0):
            raise differ(f"{name} has no counterpart {other}")
        if s == 1:
            continue
        for a, b in zip(dims0, dims1, strict=True):
            if (a is None) != (b is None) or (a is not None and b is not None and a.shape != b.shape):
                raise differ(f"{name}: its channels")
            if a is None or b is None:
                continue
            for x, y in zip(a.tolist(), b.tolist(), strict=True):
                if x in sets[0]:
                    if y not in sets[1] or m01.setdefault(x, y) != y:
                        raise differ(f"{name}: its coupling")
                elif x != y:
                    raise differ(f"{name}: its coupling to the residual stream")
    if len(m01) != len(local[0]) or set(m01.values()) != sets[1]:
        raise differ("their coupling groups")
    n = analysis.n_classes
    glob = [c for c in range(n) if c not in sets[0] and c not in sets[1]]
    base, is_local, slot = np.full(n, -1, np.int64), np.zeros(n, bool), np.full(n, -1, np.int64)
    base[glob] = np.arange(len(glob))
    base[local[0]] = len(glob) + np.arange(len(local[0]))
    base[[m01[c] for c in local[0]]] = base[local[0]]
    is_local[local[0] + local[1]] = True
    slot[local[0]], slot[local[1]] = 0, 1
    cmap = ClassMap(base, is_local, slot)
    n_g, n_l = len(glob), len(local[0])
    st = Structure(prefix, n_layers, n_g, n_l, {k: v for k, v in consts.items() if split_name(k, prefix)[0] != 1}, cmap, [], [], [],
                   np.zeros(n_g + n_layers * n_l, bool))  # fmt: skip
    for c in np.flatnonzero(analysis.class_frozen).tolist():
        layers = range(n_layers) if is_local[c] else [0]
        for i in layers:
            v = int(cmap.virtual(np.array([c]), [i, i], n_l)[0])
            st.frozen[v] = True
            st.reasons[v] = list(analysis.class_reasons.get(c, []))
    _virtual_groups(st, analysis, prefix, differ)
    for p in analysis.producers:
        s, rest = split_name(p.weight, prefix)
        classes = analysis.atom_class[p.atoms]
        if s == 1 or analysis.class_frozen[classes].all():
            continue
        for i in range(n_layers) if s == 0 else [0]:
            name = p.weight if s is None else f"{prefix}.{i}.{rest}"
            st.producers.append(VProducer(name, p.axis, cmap.virtual(classes, [i, i], n_l)))
    return st


def _virtual_groups(st: Structure, analysis: AnalysisResult, prefix: str, differ: Callable[[str], Exception]) -> None:
    weight_of = {p.op: p.weight for p in analysis.producers}
    first: dict[tuple[int, ...], int] = {}
    for g in sorted(analysis.groups, key=lambda g: int(st.cmap.slot[g.classes].max()) if g.classes.size else 0):
        slots = set(st.cmap.slot[g.classes].tolist())
        locals_ = set(st.cmap.local[g.classes].tolist())
        if len(locals_) != 1 or len(slots) != 1:
            raise differ(f"group {g.producers[:3]} spans a layer and the rest of the model")
        key = tuple(sorted(st.cmap.base[g.classes].tolist()))
        if slots == {1}:
            if key not in first:
                raise differ(f"group {g.producers[:3]} of layer 1 has no twin in layer 0")
            st.twins[g.id] = first[key]
            continue
        first[key] = g.id
        weights = [weight_of.get(op, op) for op in g.producers]
        for i in range(st.n_layers) if locals_ == {True} else [0]:
            members = [str(w).replace(f"{prefix}.0.", f"{prefix}.{i}.") for w in weights]
            classes = st.cmap.virtual(g.classes, [i, i], st.n_local)
            st.groups.append(Group(len(st.groups), members, classes, g.widths.copy(), g.frozen.copy(), list(g.reasons)))
            st.roles.append(g.id)


# ---------------------------------------------------------------------------------------------------------------
# scoring and selection


def unit_norms(t: torch.Tensor, axis: int, p: int, chunk: int = 1 << 22) -> np.ndarray:
    """L1/L2 norm of each unit (slices along ``axis``) of ``t``, summed in float64 a chunk at a time."""
    axis %= t.dim()
    n = t.shape[axis]
    last = axis == t.dim() - 1 and axis > 0
    flat = t.reshape(-1, n) if last else t.movedim(axis, 0).reshape(n, -1)  # (a view unless a middle axis)
    acc = torch.zeros(n, dtype=torch.float64)
    rows = max(1, chunk // max(flat.shape[1], 1))
    # bf16 / fp16 squares are exact in float32 (8 / 11 mantissa bits): square there, sum in float64
    work = torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else torch.float64
    for a in range(0, flat.shape[0], rows):
        x = flat[a : a + rows].to(work, copy=True)
        s = x.abs_() if p == 1 else x.square_()
        if last:
            acc += s.sum(0, dtype=torch.float64)
        else:
            acc[a : a + rows] = s.sum(1, dtype=torch.float64)
    out = acc.numpy()
    return out if p == 1 else np.sqrt(out)


def _normalize(s: np.ndarray, normalizer: str) -> np.ndarray:
    """As :class:`passes.saliency.Saliency` normalizes a layer's unit scores."""
    if normalizer == "none" or s.size == 0 or np.all(np.isnan(s)):
        return s
    norm = np.nanmax(s) if normalizer == "max" else np.nanmean(s)
    return s / norm if norm > 0 else np.zeros_like(s)


def virtual_analysis(st: Structure) -> AnalysisResult:
    """The virtual groups as an :class:`AnalysisResult` the selection pass runs on (no graph: no splits)."""
    reasons = {k: v for k, v in st.reasons.items() if v}
    return AnalysisResult(ChannelGraph("torch"), {}, [], np.zeros(0, np.int64), st.frozen.copy(), reasons, st.groups, [])


def _set_kept(g: Group, scores: np.ndarray, kept: int, pruned: np.ndarray) -> None:
    """``g`` keeps its ``kept`` best-scored classes (frozen ones always)."""
    pruned[g.classes] = False
    prunable = np.flatnonzero(~g.frozen)
    n_remove = min(len(g.classes) - kept, prunable.size)
    if n_remove > 0:
        s = np.nan_to_num(scores[g.classes[prunable]], nan=np.inf)
        pruned[g.classes[prunable[np.argsort(s, kind="stable")[:n_remove]]]] = True


# ---------------------------------------------------------------------------------------------------------------
# the pipeline


@dataclass
class _Settings:
    ratio: float | None
    target_macs: float | None
    attention: str
    importance: str
    equalization: str
    normalizer: str
    granularity: int
    min_channels: int
    scope: str
    verify: bool

    def validate(self) -> None:
        from passes.importance import CRITERIA

        if self.importance not in ("l1", "l2"):
            if self.importance in CRITERIA and CRITERIA[self.importance].runs_model:
                raise InvalidArgumentError(
                    f"importance={self.importance!r} needs calibration data; a checkpoint folder is pruned from its "
                    "weights alone: use importance='l2' or 'l1'"
                )
            raise InvalidArgumentError(f"importance={self.importance!r}: a checkpoint folder is scored with 'l2' or 'l1'")
        if (self.ratio is None) == (self.target_macs is None):
            raise InvalidArgumentError("give one of ratio= and target_macs=")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0.0 <= self.ratio < 1.0):
            raise InvalidArgumentError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.target_macs is not None and not (isinstance(self.target_macs, (int, float)) and self.target_macs > 0):
            raise InvalidArgumentError(f"target_macs must be > 0 (a fraction <= 1, or a count), got {self.target_macs!r}")
        if self.attention != "heads":  # (a smaller head size changes the rotary tables the class computes: not mapped yet)
            raise InvalidArgumentError(f"a checkpoint folder is pruned with attention='heads' (whole heads), got {self.attention!r}")
        if self.equalization not in EQUALIZATIONS:
            raise InvalidArgumentError(f"equalization={self.equalization!r}; choose from {', '.join(EQUALIZATIONS)}")
        if self.normalizer not in NORMALIZERS:
            raise InvalidArgumentError(f"normalizer={self.normalizer!r}; choose from {', '.join(NORMALIZERS)}")
        if self.scope not in ("local", "global"):
            raise InvalidArgumentError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if not (isinstance(self.granularity, int) and self.granularity >= 1):
            raise InvalidArgumentError(f"granularity must be an integer >= 1, got {self.granularity!r}")
        if not (isinstance(self.min_channels, int) and self.min_channels >= 1):
            raise InvalidArgumentError(f"min_channels must be an integer >= 1, got {self.min_channels!r}")


class _Timer:
    def __init__(self, progress: Callable[[str], None] | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    def say(self, msg: str) -> None:
        log.info("%s", msg)
        if self.progress is not None:
            self.progress(msg)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.say(f"{name} ...")
        t = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t, 3)
        self.say(f"{name} done in {self.timings[name]:.2f}s")


class _Skeleton:
    """A skeleton of the checkpoint's class: ``n`` layers, a vocabulary of ``vocab``, traced and analysed."""

    def __init__(self, ckpt: Checkpoint, config: Any, n: int, vocab: int, attention: str, dtype: torch.dtype | None = None) -> None:
        from frontends.torch.trace import load_torch
        from passes.channel_analysis import ChannelAnalysis

        self.config = small_config(config, n, vocab)
        self.model = build(ckpt.cls, self.config, dtype or ckpt.dtype)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, vocab, (1, _SEQ), generator=gen)
        self.traced = load_torch(self.model, (ids,))
        self.analysis = ChannelAnalysis((), {"attention": attention}).call(self.traced.graph)
        self.inputs = tuple(self.traced.example_inputs)


def _vocab(config: Any) -> int:
    """Rows of the embedding and the head kept in the skeletons: more than the hidden size, so that the head's
    outputs pin down the hidden state in verification."""
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    return int(min(config.vocab_size, max(64, hidden + 64)))


@dataclass
class _Plan:
    pruned: np.ndarray  # per virtual class
    scores: np.ndarray
    config: dict[str, Any]  # the output config.json
    rescale: dict[str, float]  # checkpoint module name -> factor on its weight (and bias)
    hf: dict[str, Any]
    rounding: float = 0.0  # the largest relative change rounding made to a rescaled weight


def compile_pretrained(
    in_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    ratio: float | None = None,
    target_macs: float | None = None,
    attention: str = "heads",
    importance: str = "l2",
    equalization: str = "arithmetic_mean",
    normalizer: str = "max",
    granularity: int = 8,
    min_channels: int = 1,
    scope: str = "local",
    verify: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Prune the transformers checkpoint folder ``in_dir`` into ``out_dir`` (a new or empty folder), shard by shard.

    ``ratio`` (default 0.5 when no policy is given) or ``target_macs`` (a fraction of the original per-token MACs
    of the linear layers when <= 1, else a count) as in :func:`compiler.compile`, always ``hf_compatible`` (one width
    per role in every layer), with a weight criterion (``l2`` or ``l1``). ``out_dir`` loads with
    ``from_pretrained``; it appears only when complete and verified (``verify=True``: every decoder layer against
    the original with the removed channels zeroed, :func:`verify_pretrained`). Returns the report;
    ``report.timings`` has the time of each stage, ``report.verification["layers"]`` the error of each layer.
    """
    if ratio is None and target_macs is None:
        ratio = 0.5
    opts = _Settings(ratio, target_macs, attention, importance, equalization, normalizer, granularity, min_channels, scope, verify)
    opts.validate()
    in_dir, out_dir = os.fspath(in_dir), os.fspath(out_dir)
    ckpt = Checkpoint(in_dir)
    _check_out_dir(in_dir, out_dir)
    timer = _Timer(progress)
    with timer.stage("analysis"):
        skel = _Skeleton(ckpt, ckpt.config, 2, _vocab(ckpt.config), attention)
        st = analyse(skel.model, skel.analysis, int(ckpt.config.num_hidden_layers))
        _check_tensors(ckpt, skel.model, st)
    with timer.stage("scoring"):
        scores = _score(ckpt, st, opts, timer)
    with timer.stage("selection"):
        plan = _select(ckpt, skel, st, scores, opts)
        del skel
        gc.collect()  # the skeleton's graph holds float32 copies of its weights: gone before the writing pass
    parent = os.path.dirname(os.path.abspath(out_dir))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.prunec-", suffix=".tmp", dir=parent)
    try:
        with timer.stage("writing"):
            sizes = _write(ckpt, st, plan, opts, tmp, timer)
        verification = None
        if verify:
            with timer.stage("verification"):
                verification = _verify(ckpt, st, plan.pruned, plan.rescale, tmp, attention, timer)
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _report(ckpt, st, plan, opts, sizes, verification, timer.timings)


def _check_out_dir(in_dir: str, out_dir: str) -> None:
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise InvalidArgumentError(f"{out_dir}: exists and is not a directory")
        if os.listdir(out_dir):
            raise InvalidArgumentError(f"{out_dir}: exists and is not empty; give a new or empty folder")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise InvalidArgumentError(f"{out_dir}: its parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidArgumentError(f"{out_dir}: cannot write to {parent}")
    a, b = os.path.realpath(in_dir), os.path.realpath(out_dir)
    if a == b or b.startswith(a + os.sep):
        raise InvalidArgumentError(f"{out_dir}: is inside the input folder {in_dir}; the input is never modified")


def _check_tensors(ckpt: Checkpoint, skeleton: nn.Module, st: Structure) -> None:
    """Every checkpoint tensor is a tensor of the class (renamed to layer 0), with the shape the config implies."""
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    k_rows, vocab = _vocab(ckpt.config), int(ckpt.config.vocab_size)
    for name in ckpt.where:
        layer, skel = st.skeleton_name(name)
        if layer is not None and layer >= st.n_layers:
            raise UnsupportedModelError(f"{name}: layer {layer}, but config.json says num_hidden_layers={st.n_layers}")
        if skel not in shapes:
            raise UnsupportedModelError(f"{name}: not a tensor of {ckpt.cls.__name__} built from config.json")
        got, want = ckpt.shape(name), shapes[skel]
        if want and want[0] == k_rows and got[1:] == want[1:] and got[0] == vocab:
            want = got  # (the skeleton keeps the first rows of the vocabulary)
        if got != want:
            raise UnsupportedModelError(f"{name}: shape {got}, but config.json builds {want}")
    ties = tied_names(skeleton)
    for p in st.producers:
        if p.weight not in ckpt.where:  # a tied tensor, stored under its other name
            layer, skel = st.skeleton_name(p.weight)
            names = [n.replace(f"{st.prefix}.0.", f"{st.prefix}.{layer}.") if layer is not None else n for n in ties.get(skel, [])]
            have = [n for n in names if n in ckpt.where]
            if not have:
                raise InvalidArgumentError(f"{ckpt.folder}: the checkpoint has no tensor {p.weight}")
            p.weight = have[0]


def _score(ckpt: Checkpoint, st: Structure, opts: _Settings, timer: _Timer) -> np.ndarray:
    """Pass 1: per virtual class, the saliency :class:`passes.saliency.Saliency` gives the full model."""
    by_weight: dict[str, list[int]] = defaultdict(list)
    for k, p in enumerate(st.producers):
        by_weight[p.weight].append(k)
    raw: dict[int, np.ndarray] = {}
    power = 1 if opts.importance == "l1" else 2
    for n, (fname, reader) in enumerate(ckpt.readers.items()):
        for info in reader.infos:
            if info.name not in by_weight:
                continue
            t = reader.read(info.name)
            for k in by_weight[info.name]:
                raw[k] = unit_norms(t, st.producers[k].axis, power)
            del t
        timer.say(f"scored shard {n + 1}/{len(ckpt.readers)} {fname}")
    cls, layer, val = [], [], []
    for k, p in enumerate(st.producers):
        s = _normalize(raw[k], opts.normalizer)
        if s.size != p.classes.size:
            raise UnsupportedModelError(f"{p.weight}: {s.size} units along dim {p.axis}, the analysis expected {p.classes.size}")
        cls.append(p.classes)
        layer.append(np.full(s.size, k))
        val.append(s)
    if not cls:
        return np.full(st.n_virtual, np.nan)
    return equalize(np.concatenate(cls), np.concatenate(layer), np.concatenate(val), st.n_virtual, opts.equalization)


def _skeleton_mask(st: Structure, cmap: ClassMap, pruned: np.ndarray, layers: list[int]) -> np.ndarray:
    """The skeleton's pruned classes when its slots hold ``layers`` of the full model."""
    ok = cmap.base >= 0
    out = np.zeros(len(cmap.base), bool)
    idx = np.flatnonzero(ok)
    out[idx] = pruned[cmap.virtual(idx, layers, st.n_local)]
    return out


class _Constrained:
    """The plan for a ratio: :class:`GroupPlanner`, one kept width per role, then the config oracle of
    :class:`compiler.hf_constraints.HfConstraint` on the skeleton (the counts it settles apply to every layer)."""

    def __init__(self, skel: _Skeleton, st: Structure, scores: np.ndarray, opts: _Settings) -> None:
        from compiler.hf_constraints import HfConstraint
        from passes.selection import GroupPlanner

        self.skel, self.st, self.scores, self.opts = skel, st, scores, opts
        self.virtual = virtual_analysis(st)
        self.planner = GroupPlanner(opts.granularity, opts.min_channels)
        self.hc = HfConstraint(skel.model, skel.analysis, opts.attention)
        self.layers = [0, min(1, st.n_layers - 1)]

    def __call__(self, ratio: float) -> np.ndarray:
        st = self.st
        pruned = self.planner.by_ratio(self.virtual, self.scores, ratio, self.opts.scope)
        kept: dict[int, int] = defaultdict(int)
        for g, role in zip(st.groups, st.roles, strict=True):
            kept[role] = max(kept[role], int((~pruned[g.classes]).sum()))
        sk = _skeleton_mask(st, st.cmap, pruned, self.layers)
        sk_scores = np.zeros(len(sk))
        mine = st.cmap.base >= 0
        sk_scores[mine] = self.scores[st.cmap.virtual(np.flatnonzero(mine), self.layers, st.n_local)]
        for g in self.skel.analysis.groups:  # every role at its widest in the skeleton too
            role = st.twins.get(g.id, g.id)
            if role in kept:
                _set_kept(g, sk_scores, kept[role], sk)
        repaired = self.hc.repair(self.skel.analysis, sk_scores, sk)
        groups = {g.id: g for g in self.skel.analysis.groups}
        for g, role in zip(st.groups, st.roles, strict=True):
            _set_kept(g, self.scores, int((~repaired[groups[role].classes]).sum()), pruned)
        self.last_skeleton = repaired
        return pruned


def linear_weights(model: nn.Module) -> list[str]:
    """The weights of the model's ``nn.Linear`` layers (their per-token MACs are their sizes)."""
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _macs(st: Structure, shapes: dict[str, tuple[int, ...]], linears: list[str], pruned: np.ndarray) -> int:
    total = 0
    for name in linears:
        total += math.prod(pruned_shape(shapes[name], st.virtual_dims(name), pruned))
    return total


def _meta_shapes(cls: type[nn.Module], config: Any) -> tuple[dict[str, tuple[int, ...]], list[str], int]:
    """State-dict shapes, linear weights and parameter count of ``cls(config)``, built on the meta device."""
    with torch.device("meta"), _no_init():
        try:
            m = cls(config)
        except (ValueError, AssertionError, TypeError) as exc:
            raise UnsupportedModelError(f"{cls.__name__} cannot be built from the pruned config: {exc}") from None
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    return shapes, linear_weights(m), sum(p.numel() for p in m.parameters())


def _select(ckpt: Checkpoint, skel: _Skeleton, st: Structure, scores: np.ndarray, opts: _Settings) -> _Plan:
    plan_for = _Constrained(skel, st, scores, opts)
    if opts.ratio is not None:
        pruned = plan_for(opts.ratio)
    else:
        assert opts.target_macs is not None
        shapes, linears, _ = _meta_shapes(ckpt.cls, ckpt.config)
        base = _macs(st, shapes, linears, np.zeros(st.n_virtual, bool))
        target = opts.target_macs * base if opts.target_macs <= 1.0 else opts.target_macs
        lo, hi = 0.0, 0.999
        pruned = plan_for(hi)
        if _macs(st, shapes, linears, pruned) > target:
            log.warning("target_macs %.3g not reachable: at most %.3g", target, _macs(st, shapes, linears, pruned))
        else:
            for _ in range(20):
                mid = (lo + hi) / 2
                p = plan_for(mid)
                if _macs(st, shapes, linears, p) <= target:
                    hi, pruned = mid, p
                else:
                    lo = mid
            pruned = plan_for(hi)
    frozen = plan_for.hc.freeze(skel.analysis, plan_for.last_skeleton)
    config, rescale = _pruned_config(ckpt, skel, st, plan_for.last_skeleton)
    hf = {"config": type(ckpt.config).__name__, "frozen": frozen}
    return _Plan(pruned, scores, config, rescale, hf)


def _pruned_config(ckpt: Checkpoint, skel: _Skeleton, st: Structure, sk_pruned: np.ndarray) -> tuple[dict[str, Any], dict[str, float]]:
    """The output ``config.json`` (the input's, with the fields the pruned sizes change) and the rescaled modules."""
    # (compiler.hf's config plan: the one place that knows which config fields hold which pruned sizes)
    from compiler.hf import _config_plan
    from frontends.torch.rewrite import RewriteFX

    gm = RewriteFX().call(skel.traced, skel.analysis, sk_pruned).module
    cfg, rescale = _config_plan(skel.model, gm, skel.inputs)
    del gm
    old, new, full = skel.config.to_dict(), cfg.to_dict(), ckpt.config.to_dict()
    skip = {"num_hidden_layers", "vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "transformers_version"}
    per_layer = {k for k, v in full.items() if isinstance(v, (list, tuple)) and len(v) == st.n_layers}
    out = dict(ckpt.config_dict)
    for k, v in new.items():
        if k not in skip and k not in per_layer and old.get(k, object()) != v:
            out[k] = v
    factors: dict[str, float] = {}
    for module, f in rescale.items():
        s, rest = split_name(module, st.prefix)
        if s == 1:
            continue
        for i in range(st.n_layers) if s == 0 else [0]:
            factors[module if s is None else f"{st.prefix}.{i}.{rest}"] = float(f)
    return out, factors


# ---------------------------------------------------------------------------------------------------------------
# writing


def _out_tensor(st: Structure, plan: _Plan, name: str, t: torch.Tensor) -> torch.Tensor:
    """Checkpoint tensor ``name`` with the removed channels sliced out (and rescaled where the config plan says)."""
    dims = st.virtual_dims(name)
    for d, cls in enumerate(dims or []):
        if cls is None:
            continue
        keep = ~plan.pruned[cls]
        if keep.all():
            continue
        if t.shape[d] != keep.size:
            raise InternalError(f"{name}: dim {d} has {t.shape[d]} channels, the plan {keep.size}")
        t = t.index_select(d, torch.from_numpy(np.flatnonzero(keep)))
    module, _, kind = name.rpartition(".")
    if module in plan.rescale and kind in ("weight", "bias"):
        plan.rounding = max(plan.rounding, rescale_rounding(t, plan.rescale[module]))
        t = t * plan.rescale[module]
    return t


def _out_shape(st: Structure, plan: _Plan, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    dims = st.virtual_dims(name)
    if dims is None:
        return shape
    return pruned_shape(shape, dims, plan.pruned)


def pruned_shape(shape: tuple[int, ...], dims: list[np.ndarray | None] | None, pruned: np.ndarray) -> tuple[int, ...]:
    """``shape`` less the removed channels (a dim that loses none keeps its size: the skeleton's vocabulary is
    shorter than the checkpoint's)."""
    if dims is None:
        return shape
    out = []
    for n, d in zip(shape, dims, strict=True):
        if d is None or not pruned[d].any():
            out.append(n)
        elif d.size != n:
            raise InternalError(f"a dim of {n} channels has {d.size} in the plan")
        else:
            out.append(int((~pruned[d]).sum()))
    return tuple(out)


def _write(ckpt: Checkpoint, st: Structure, plan: _Plan, opts: _Settings, out: str, timer: _Timer) -> dict[str, int]:
    """Pass 2: the pruned shards, the index, config.json, the plan file and the other (non-weight) files."""
    new_cfg = type(ckpt.config).from_dict(plan.config)
    shapes, _, _ = _meta_shapes(ckpt.cls, new_cfg)
    for name in ckpt.where:  # every shape checked before anything is written
        got = _out_shape(st, plan, name, ckpt.shape(name))
        if name not in shapes or shapes[name] != got:
            raise UnsupportedModelError(f"{name}: pruned to {got}, but {ckpt.cls.__name__} builds {shapes.get(name)} from the pruned config")
    weight_map: dict[str, str] = {}
    total = 0
    for n, (fname, reader) in enumerate(ckpt.readers.items()):
        entries = [(i.name, i.torch_dtype, _out_shape(st, plan, i.name, i.shape)) for i in reader.infos]
        with open(os.path.join(out, fname), "wb") as f:
            writer = ShardWriter(f, entries, reader.metadata or None)
            for info in reader.infos:
                writer.write(info.name, _out_tensor(st, plan, info.name, reader.read(info.name)))
                weight_map[info.name] = fname
            writer.close()
            f.flush()
            os.fsync(f.fileno())
        total += writer.total
        timer.say(f"wrote shard {n + 1}/{len(ckpt.readers)} {fname}")
    files = {"config.json": json.dumps(plan.config, indent=2, sort_keys=True) + "\n"}
    if ckpt.sharded:
        files[INDEX_FILE] = json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n"
    files[PLAN_FILE] = json.dumps({
        "format": 1, "settings": _settings(opts), "n_virtual": st.n_virtual, "n_layers": st.n_layers,
        "removed": np.flatnonzero(plan.pruned).tolist(), "rescale": plan.rescale,
    }) + "\n"  # fmt: skip
    for fname, text in files.items():
        with open(os.path.join(out, fname), "w", encoding="utf-8") as f:
            f.write(text)
    for entry in sorted(os.listdir(ckpt.folder)):  # tokenizer, generation config, ...: as they are
        src = os.path.join(ckpt.folder, entry)
        if os.path.isfile(src) and entry not in files and not _WEIGHT_FILES.search(entry):
            shutil.copy2(src, os.path.join(out, entry))
    return {"bytes_before": ckpt.nbytes, "bytes_after": total}


def _settings(opts: _Settings) -> dict[str, Any]:
    return {k: v for k, v in vars(opts).items()}


# ---------------------------------------------------------------------------------------------------------------
# verification


def _load_layer(model: nn.Module, names: dict[str, str], read: Callable[[str, tuple[int, ...]], torch.Tensor]) -> None:
    """``model``'s tensors (``names``: its name -> the checkpoint's) from ``read(name, shape)``."""
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for mine, theirs in names.items():
            t = state[mine]
            t.copy_(read(theirs, tuple(t.shape)))


def _reader(ckpt: Checkpoint) -> Callable[[str, tuple[int, ...]], torch.Tensor]:
    def read(name: str, shape: tuple[int, ...]) -> torch.Tensor:
        full = ckpt.shape(name)
        return ckpt.read_rows(name, shape[0]) if full != shape and full[1:] == shape[1:] else ckpt.read(name)

    return read


def tied_names(model: nn.Module) -> dict[str, list[str]]:
    """Per state-dict name of ``model``: every name of the same tensor (tied embeddings: both)."""
    by_id: dict[int, list[str]] = defaultdict(list)
    for name, t in model.state_dict(keep_vars=True).items():
        by_id[id(t)].append(name)
    return {n: names for names in by_id.values() for n in names}


def _names(model: nn.Module, prefix: str, layer: int, available: set[str], ties: dict[str, list[str]]) -> dict[str, str]:
    """The skeleton's persistent tensors -> the checkpoint's names for ``layer`` (a tied tensor: from the name the
    checkpoint has)."""

    def theirs(name: str) -> str:
        s, rest = split_name(name, prefix)
        return name if s is None else f"{prefix}.{layer}.{rest}"

    out = {}
    for name in model.state_dict():
        have = [theirs(n) for n in ties.get(name, [name]) if theirs(n) in available]
        if not have:
            raise InvalidArgumentError(f"the checkpoint has no tensor {theirs(name)}")
        out[name] = have[0]
    return out


def _verify(
    ckpt: Checkpoint, st: Structure, pruned: np.ndarray, rescale: dict[str, float], out: str, attention: str, timer: _Timer
) -> dict[str, Any]:
    """Every decoder layer of the written folder ``out`` against the original with the removed channels zeroed."""
    from frontends.torch.verify import VerifyFX

    written = Checkpoint(out)
    vocab = _vocab(ckpt.config)
    wide = torch.float32 if ckpt.dtype in (torch.bfloat16, torch.float16) else ckpt.dtype  # holds the checkpoint's values exactly
    ref = _Skeleton(ckpt, ckpt.config, 1, vocab, attention, wide)
    consts = set(_consts(ref.model, ref.analysis))
    cmap = st.class_map(ref.analysis, consts)
    new = build(written.cls, small_config(written.config, 1, vocab), ckpt.dtype)
    ties = tied_names(ref.model)  # (the traced module keeps the model's names; torch.export may untie the tensors)
    rtol = RTOL
    verifier = VerifyFX(rtol=rtol)
    layers: list[dict[str, Any]] = []
    worst: dict[str, Any] = {}
    for i in range(st.n_layers):
        names = _names(ref.traced.gm, st.prefix, i, set(ckpt.where), ties)
        _load_layer(ref.traced.gm, names, _reader(ckpt))
        _as_written(ref.traced.gm, names, rescale, ckpt.dtype)
        _load_layer(new, _names(new, st.prefix, i, set(written.where), tied_names(new)), _reader(written))
        tie = getattr(new, "tie_weights", None)
        if callable(tie):
            tie()
        mask = _skeleton_mask(st, cmap, pruned, [i])
        try:
            res = verifier.call(ref.traced, ref.analysis, mask, new, ref.inputs)
        except VerificationError as exc:
            raise VerificationError(f"{out}: layer {i} ({st.prefix}.{i}): {exc}", exc.max_abs_error) from None
        row = {"layer": i, "max_abs_error": res.max_abs_error, "tolerance": res.tolerance, "reference_scale": res.reference_scale}
        layers.append(row)
        if not worst or res.max_abs_error / max(res.tolerance, 1e-30) > worst["max_abs_error"] / max(worst["tolerance"], 1e-30):
            worst = {**row, "dtype": res.dtype}
        timer.say(f"verified layer {i + 1}/{st.n_layers}: max abs error {res.max_abs_error:.2e} (tolerance {res.tolerance:.1e})")
    return {
        "passed": True,
        "max_abs_error": max(r["max_abs_error"] for r in layers),
        "reference_scale": worst.get("reference_scale", 0.0),
        "tolerance": worst.get("tolerance", 0.0),
        "rtol": rtol,
        "dtype": worst.get("dtype", "float64"),
        "basis": (f"outputs of a one-layer skeleton per decoder layer ({vocab} head rows > hidden size), the written "
                  "tensors against the original's with removed channels zeroed (rescaled norm weights as rounded when written)"),
        "layers": layers,
    }  # fmt: skip


def _as_written(gm: nn.Module, names: dict[str, str], rescale: dict[str, float], dtype: torch.dtype) -> None:
    """The reference's rescaled weights as written (``w * f`` rounded to ``dtype``), divided back by ``f``."""
    state = gm.state_dict(keep_vars=True)
    with torch.no_grad():
        for mine, theirs in names.items():
            module, _, kind = theirs.rpartition(".")
            f = rescale.get(module)
            if f is not None and kind in ("weight", "bias"):
                t = state[mine]
                t.copy_((t.to(dtype) * f).to(torch.float64) / f)


def rescale_rounding(t: torch.Tensor, f: float) -> float:
    """The largest relative change rounding ``t * f`` to ``t``'s dtype makes."""
    exact = t.to(torch.float64) * f
    got = (t * f).to(torch.float64)
    return float(((got - exact).abs() / exact.abs().clamp_min(1e-30)).max()) if t.numel() else 0.0


def verify_pretrained(
    in_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Verify a folder :func:`compile_pretrained` wrote (its ``prunec_plan.json`` says what was removed) against
    ``in_dir``, layer by layer; raises :class:`VerificationError` naming the first layer that differs."""
    ckpt = Checkpoint(os.fspath(in_dir))
    plan_path = os.path.join(os.fspath(out_dir), PLAN_FILE)
    try:
        with open(plan_path, encoding="utf-8") as f:
            saved = json.load(f)
        attention = saved["settings"]["attention"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{plan_path}: cannot read the plan ({exc})") from None
    timer = _Timer(progress)
    skel = _Skeleton(ckpt, ckpt.config, 2, _vocab(ckpt.config), attention)
    st = analyse(skel.model, skel.analysis, int(ckpt.config.num_hidden_layers))
    del skel
    if saved.get("n_virtual") != st.n_virtual:
        raise InvalidArgumentError(f"{plan_path}: the plan is for another model ({saved.get('n_virtual')} channels, this one has {st.n_virtual})")
    pruned = np.zeros(st.n_virtual, bool)
    pruned[np.asarray(saved["removed"], dtype=np.int64)] = True
    rescale = {str(k): float(v) for k, v in saved.get("rescale", {}).items()}
    return _verify(ckpt, st, pruned, rescale, os.fspath(out_dir), attention, timer)


# ---------------------------------------------------------------------------------------------------------------
# the report


def _report(
    ckpt: Checkpoint, st: Structure, plan: _Plan, opts: _Settings, sizes: dict[str, int], verification: dict[str, Any] | None,
    timings: dict[str, float],
) -> Report:  # fmt: skip
    shapes, linears, params_before = _meta_shapes(ckpt.cls, ckpt.config)
    new_shapes, new_linears, params_after = _meta_shapes(ckpt.cls, type(ckpt.config).from_dict(plan.config))
    macs_before = sum(math.prod(shapes[n]) for n in linears)
    macs_after = sum(math.prod(new_shapes[n]) for n in new_linears)
    groups = []
    for g in st.groups:
        kept = ~plan.pruned[g.classes]
        sal_all = plan.scores[g.classes]
        sal = sal_all[~np.isnan(sal_all)]
        stats = (float(sal.min()), float(np.median(sal)), float(sal.max())) if sal.size else None
        groups.append(GroupReport(
            g.id, g.producers, int(g.widths.sum()), int(g.widths[kept].sum()), int(g.widths[g.frozen].sum()), list(g.reasons), stats,
            opts.equalization if len(g.producers) > 1 else "none", [None if np.isnan(s) else float(f"{s:.4g}") for s in sal_all.tolist()],
            np.flatnonzero(~kept).tolist(), np.flatnonzero(g.frozen).tolist(),
        ))  # fmt: skip
    settings: dict[str, Any] = {
        **_settings(opts), "hf_compatible": True, "hf_constraint": plan.hf, "checkpoint": ckpt.folder,
        "dtype": str(ckpt.dtype).replace("torch.", ""), "layers": st.n_layers, "shards": len(ckpt.files),
        "macs_basis": "per token, the linear layers (attention scores not counted)", **sizes,
        "rescaled": len(plan.rescale), "rescale_rounding": plan.rounding,
        "config_changes": {k: v for k, v in plan.config.items() if ckpt.config_dict.get(k, object()) != v},
    }  # fmt: skip
    return Report(ckpt.cls.__name__, "torch", "two-layer skeleton (checkpoint streamed)", params_before, params_after,
                  macs_before, macs_after, settings, [], groups, [], verification, timings)  # fmt: skip
