"""Attention layouts: where an attention module keeps its heads, so heads are cut whole.

A layout names the projections that make the attention *context* (one head per ``head_dim``
channels of the query width) and what else is indexed by head. Cutting a head removes its
query rows, its key/value rows (grouped-query attention: a whole key/value group with all its
query heads, so ``num_key_value_groups`` stays right), its columns of the per-head parameters
(Swin's relative position bias table), and afterwards every head-count attribute ``forward``
reads follows (:meth:`HeadLayout.fix`). The consumer of the context (the output projection)
loses the same columns: Torch-Pruning's dependency graph finds it (:mod:`compression.structure.graph`
turns each layout into one customised layer of its graph).

Layouts register by attention class name in :data:`LAYOUTS`; a class not registered goes
through the same functions by introspection (child names such as ``q_proj``/``query``/``q_lin``,
head size from ``head_dim``/``attention_head_size`` or the model config), first match wins:

- :func:`separate_qkv`   BERT, RoBERTa, DistilBERT (``q_lin``), ViT, Swin
- :func:`fused_qkv`      one projection ``[q | k | v]`` (GPT-2's ``c_attn``, a transformers ``Conv1D``)
- :func:`grouped_query`  Llama, Mistral, Qwen2: fewer key/value heads than query heads
- :func:`window_attention` separate q/k/v plus Swin's per-head relative position bias table
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from compression.core.registry import Registry
from compression.structure import layers

Q_NAMES = ("query", "q_proj", "q_lin", "q", "wq", "to_q")
K_NAMES = ("key", "k_proj", "k_lin", "k", "wk", "to_k")
V_NAMES = ("value", "v_proj", "v_lin", "v", "wv", "to_v")
FUSED_NAMES = ("c_attn", "qkv", "qkv_proj", "Wqkv")  # laid out as [q | k | v]
OUT_NAMES = ("o_proj", "out_proj", "out_lin", "c_proj", "wo", "to_out", "proj")
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "d_head")
HEADS_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head")
KV_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
WIDTH_ATTRS = ("all_head_size", "split_size", "inner_dim")  # query width = heads * head_dim


@dataclass
class Cut:
    """One tensor cut by a head removal: ``rows`` of projection ``path`` (its output features),
    or slices along ``dim`` of parameter ``path``. Paths are relative to the attention module."""

    path: str
    idxs: list[int]
    dim: int | None = None  # None: output features of a Linear/Conv1D; else a parameter's dim


@dataclass
class HeadLayout:
    """The heads of one attention module (see the module docstring)."""

    layout: str  # the layout function's name
    heads: int
    kv_heads: int
    head_dim: int
    q: str | None = None
    k: str | None = None
    v: str | None = None
    qkv: str | None = None  # fused [q | k | v] projection
    context: str | None = None  # child whose input is the context; None: the module's output
    per_head: list[tuple[str, int]] = field(default_factory=list)  # (parameter path, head dim)

    @property
    def group(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.heads // self.kv_heads

    @property
    def granule(self) -> int:
        """Context channels removed together: one head, or one key/value group."""
        return self.group * self.head_dim

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    def cuts(self, idxs: list[int]) -> tuple[list[Cut], int, int]:
        """Tensors to cut for removing context channels ``idxs`` (whole granules), and the heads
        and key/value heads left."""
        d = self.head_dim
        groups = sorted({i // self.granule for i in idxs})
        if sorted(idxs) != [g * self.granule + j for g in groups for j in range(self.granule)]:
            raise ValueError(
                f"{self.layout}: heads must be cut whole: {len(idxs)} channels are not whole "
                f"groups of {self.granule} (head size {d}, {self.group} query heads per kv head)"
            )
        heads = [g * self.group + h for g in groups for h in range(self.group)]
        q_idx = [h * d + j for h in heads for j in range(d)]
        kv_idx = [g * d + j for g in groups for j in range(d)]
        out = []
        if self.qkv is not None:
            kv_width = self.kv_heads * d
            fused = q_idx + [self.width + i for i in kv_idx]
            fused += [self.width + kv_width + i for i in kv_idx]
            out.append(Cut(self.qkv, fused))
        else:
            out += [Cut(self.q, q_idx), Cut(self.k, kv_idx), Cut(self.v, kv_idx)]
        out += [Cut(path, heads, dim) for path, dim in self.per_head]
        return out, self.heads - len(heads), self.kv_heads - len(groups)

    def fix(self, module: nn.Module, heads: int, kv_heads: int) -> dict[str, int]:
        """Set the head-count attributes ``forward`` reads; returns what changed."""
        changed = {}
        values = {a: heads for a in HEADS_ATTRS}
        values |= {a: kv_heads for a in KV_ATTRS}
        values |= {a: heads * self.head_dim for a in WIDTH_ATTRS}
        values["num_key_value_groups"] = heads // max(kv_heads, 1)
        for attr, value in values.items():
            if isinstance(module.__dict__.get(attr), int) and module.__dict__[attr] != value:
                setattr(module, attr, value)
                changed[attr] = value
        self.heads, self.kv_heads = heads, kv_heads
        return changed


LayoutFn = Callable[[nn.Module, object], "HeadLayout | None"]
# Attention layouts by attention module class name (see the module docstring).
LAYOUTS: Registry[LayoutFn] = Registry("attention layout")


def _child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    children = dict(module.named_children())
    for name in names:
        if name in children and layers.kind(children[name]) in ("linear", "conv1d_t"):
            return name
    return None


def _int_attr(obj: object, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _head_dim(module: nn.Module, config: object, q_width: int) -> int | None:
    """Head size from the module, else its head count, else the model config."""
    d = _int_attr(module, HEAD_DIM_ATTRS)
    if d is None and (h := _int_attr(module, HEADS_ATTRS)):
        d = q_width // h
    if d is None and config is not None:
        d = _int_attr(config, ("head_dim",))
        if d is None and (h := _int_attr(config, HEADS_ATTRS)):
            d = _int_attr(config, ("hidden_size", "n_embd", "dim", "d_model")) // h
    return d if d and q_width % d == 0 else None


def _context(module: nn.Module) -> str | None:
    return _child(module, OUT_NAMES)


def separate_qkv(module: nn.Module, config: object) -> HeadLayout | None:
    """Query, key and value projections of equal width (multi-head attention)."""
    q, k, v = _child(module, Q_NAMES), _child(module, K_NAMES), _child(module, V_NAMES)
    if not (q and k and v):
        return None
    width = layers.out_features(getattr(module, q))
    if any(layers.out_features(getattr(module, n)) != width for n in (k, v)):
        return None
    d = _head_dim(module, config, width)
    if d is None:
        return None
    heads = width // d
    return HeadLayout("separate_qkv", heads, heads, d, q, k, v, context=_context(module))


def grouped_query(module: nn.Module, config: object) -> HeadLayout | None:
    """Separate projections with fewer key/value heads than query heads (GQA)."""
    q, k, v = _child(module, Q_NAMES), _child(module, K_NAMES), _child(module, V_NAMES)
    if not (q and k and v):
        return None
    width, kv_width = (layers.out_features(getattr(module, n)) for n in (q, k))
    d = _head_dim(module, config, width)
    if d is None or kv_width % d or layers.out_features(getattr(module, v)) != kv_width:
        return None
    heads, kv_heads = width // d, kv_width // d
    if heads % kv_heads:
        return None
    layout = HeadLayout("grouped_query", heads, kv_heads, d, q, k, v, context=_context(module))
    layout.per_head = _per_head_parameters(module, heads, {q, k, v, layout.context})
    return layout


def fused_qkv(module: nn.Module, config: object) -> HeadLayout | None:
    """One projection producing ``[q | k | v]`` (GPT-2's ``c_attn``)."""
    qkv = _child(module, FUSED_NAMES)
    if qkv is None:
        return None
    total = layers.out_features(getattr(module, qkv))
    if total % 3:
        return None
    d = _head_dim(module, config, total // 3)
    if d is None:
        return None
    heads = total // 3 // d
    return HeadLayout("fused_qkv", heads, heads, d, qkv=qkv, context=_context(module))


def _per_head_parameters(module: nn.Module, heads: int, skip: set[str]) -> list[tuple[str, int]]:
    """Parameters outside the projections with one dimension of size ``heads``."""
    found = []
    for name, p in module.named_parameters():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner in skip or name.split(".")[0] in skip or heads < 2:
            continue
        dims = [i for i, s in enumerate(p.shape) if s == heads]
        if len(dims) == 1 and p.dim() >= 2:
            found.append((name, dims[0]))
    return found


def window_attention(module: nn.Module, config: object) -> HeadLayout | None:
    """Separate q/k/v with per-head parameters (Swin's relative position bias table)."""
    layout = separate_qkv(module, config)
    if layout is not None:
        layout.layout = "window_attention"
        skip = {layout.q, layout.k, layout.v, layout.context}
        layout.per_head = _per_head_parameters(module, layout.heads, skip)
    return layout


for _name in (
    "BertSelfAttention",
    "RobertaSelfAttention",
    "DistilBertSelfAttention",
    "ViTAttention",
    "ViTSelfAttention",
):
    LAYOUTS.register(_name)(separate_qkv)
for _name in ("LlamaAttention", "MistralAttention", "Qwen2Attention"):
    LAYOUTS.register(_name)(grouped_query)
LAYOUTS.register("GPT2Attention")(fused_qkv)
LAYOUTS.register("SwinAttention")(window_attention)
LAYOUTS.register("SwinSelfAttention")(window_attention)

# The introspection fallback for classes not registered: most specific first.
FALLBACK: tuple[LayoutFn, ...] = (window_attention, grouped_query, fused_qkv)


def layout_of(module: nn.Module, config: object = None) -> HeadLayout | None:
    """The head layout of ``module`` if it is an attention module, else None."""
    name = type(module).__name__
    if name in LAYOUTS:
        return LAYOUTS.get(name)(module, config)
    for fn in FALLBACK:
        layout = fn(module, config)
        if layout is not None:
            if layout.layout == "window_attention" and not layout.per_head:
                layout.layout = "separate_qkv"
            if layout.layout == "grouped_query" and layout.group == 1:
                layout.layout = "separate_qkv"
            return layout
    return None


def find_layouts(model: nn.Module) -> dict[str, HeadLayout]:
    """Every attention module of ``model`` with its layout, by module name."""
    config = getattr(model, "config", None)
    found = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{n}.") for n in found):
            continue  # inside an attention module already found
        layout = layout_of(module, config)
        if layout is not None:
            found[name] = layout
    return found


CONFIG_HEADS = ("num_attention_heads", "n_head", "n_heads")
CONFIG_KV_HEADS = ("num_key_value_heads",)


def sync_config(model: nn.Module, layouts: list[HeadLayout]) -> dict[str, int]:
    """Set the model config's head counts when every attention module has the same ones.

    A config holds one head count for all layers; where layers differ after a global cut it is
    left as it was (each module carries its own counts, which is what ``forward`` reads).
    """
    config = getattr(model, "config", None)
    if config is None or not layouts:
        return {}
    heads = {layout.heads for layout in layouts}
    kv_heads = {layout.kv_heads for layout in layouts}
    changed = {}
    for names, values in ((CONFIG_HEADS, heads), (CONFIG_KV_HEADS, kv_heads)):
        if len(values) != 1:
            continue
        value = values.pop()
        for name in names:
            current = getattr(config, name, None)
            if isinstance(current, int) and current != value:
                setattr(config, name, value)
                changed[name] = value
    return changed
