"""Packed tokens: a BERT-family encoder that computes its real tokens and not the padding.

Served text arrives as micro-batches of sentences of different lengths, padded to the longest,
so a large share of the positions are padding. A padded forward spends that share on positions
whose outputs are masked away. A
:class:`PackedEncoder` runs the same modules of the same model on the real tokens alone: the
embeddings, every Linear layer, the activations and the LayerNorms see a ``[tokens, width]``
matrix; only attention, which needs a sequence per sample, scatters queries, keys and values
back to ``[samples, heads, length, head_dim]`` for attention with a mask
of the padded keys, in length buckets (:mod:`compression.forms.buckets`: samples of similar length
together, each bucket padded to its own longest). Nothing is approximated: the real tokens'
outputs equal the padded forward's (the padding positions' outputs are zeros, which mean
pooling over the mask ignores).

It is a runtime, not a pruning step: it wraps any torch form of the model (pruned, int8 or
not) because it calls the model's own modules. The search decides once, on the original
(:func:`decide`: faithful on two validation batches and measurably faster on the latency
batch), and then measures every torch candidate packed, figures and latency, as it will be
served; the packed original itself is a candidate (no pruning, the same outputs). The plan
records ``"packed": true`` and :func:`compression.output.variant.load_variant` wraps again.

Supported: Hugging Face encoders laid out like ``BertModel`` (``embeddings`` with word,
absolute position and token-type embeddings; ``encoder.layer[i]`` with ``attention.self``
query/key/value, ``attention.output``, ``intermediate``, ``output``), pruned heads and FFN
neurons included. It answers as the model does (the same output type, the last hidden state
and, where the model has one, its pooler's output). Anything else is reported as not packable
and served as it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from compression.core import outputs
from compression.core.inputs import Batch, main_output, token_mask
from compression.forms import buckets
from compression.forms.precision import HalfPrecision, fused_int8
from compression.forms.runtimes import OrtModule

# Largest difference on a real token between the packed and the padded forward: above it the
# model computes something this module does not (another attention or embedding scheme).
PACKED_ATOL = 1e-4


def why_not(model: nn.Module, example: Batch) -> str | None:
    """None when :class:`PackedEncoder` can run ``model`` on batches like ``example``; else why."""
    if not isinstance(example, dict) or token_mask(example) is None or "input_ids" not in example:
        return "inputs are not token batches with an attention_mask"
    extra = set(example) - {"input_ids", "attention_mask", "token_type_ids"}
    if extra:
        return f"inputs {sorted(extra)} are not packed"
    emb = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if emb is None or layers is None:
        return f"{type(model).__name__} is not laid out like a BERT encoder"
    for part in ("word_embeddings", "position_embeddings", "LayerNorm"):
        if not hasattr(emb, part):
            return f"{type(model).__name__}.embeddings has no {part}"
    if getattr(emb, "position_embedding_type", "absolute") != "absolute":
        return "position embeddings are not absolute"
    for i, layer in enumerate(layers):
        att = getattr(getattr(layer, "attention", None), "self", None)
        if att is None or not all(hasattr(att, n) for n in ("query", "key", "value")):
            return f"encoder.layer.{i} has no attention.self query/key/value"
        if not hasattr(att, "attention_head_size"):
            return f"encoder.layer.{i}.attention.self has no attention_head_size"
        if not all(hasattr(layer, n) for n in ("intermediate", "output")):
            return f"encoder.layer.{i} has no intermediate/output"
    extra = set(answer_fields(model)) - set(PACKED_FIELDS)
    if extra:
        return (
            f"{type(model).__name__} answers with {sorted(extra)}, which packing does not compute"
        )
    return None


# What a packed forward computes, in the order a BERT encoder's tuple answer holds them.
PACKED_FIELDS = ("last_hidden_state", "pooler_output")


def answer_spec(model: nn.Module) -> outputs.Spec:
    """The structure of ``model``'s answer (:mod:`compression.core.outputs`), from one forward
    on two tokens."""
    weight = model.embeddings.word_embeddings.weight
    ids = torch.zeros(1, 2, dtype=torch.long, device=weight.device)
    with torch.inference_mode():
        return outputs.describe(model(input_ids=ids, attention_mask=torch.ones_like(ids)))


def answer_fields(model: nn.Module) -> list[str]:
    """The fields of ``model``'s answer (a tuple's by :data:`PACKED_FIELDS` order)."""
    spec = answer_spec(model)
    if spec["kind"] in ("model_output", "dict"):
        return list(spec["fields"])
    if spec["kind"] in ("tuple", "list"):
        return [f"output {i}" if i >= 2 else PACKED_FIELDS[i] for i in range(len(spec["items"]))]
    return [PACKED_FIELDS[0]]


class PackedEncoder(nn.Module):
    """``model`` (a BERT-family encoder) run on the real tokens of a padded batch.

    Called like the model (``input_ids``, ``attention_mask``, optional ``token_type_ids``);
    answers as the model does (its output type; ``last_hidden_state`` is
    ``[batch, length, width]``, zeros at padded positions, and ``pooler_output`` is the model's
    pooler on it where the model answers with one).
    ``.model`` is the wrapped module (what a TorchScript or ONNX export takes).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._spec = answer_spec(model)
        # Per layer, its int8 query, key and value as one int8 layer (None: run them apart;
        # float weights are not fused here: one product over three gains little there, while
        # the calibration hooks of compression.forms.smoothing must see each layer). A plain list, so
        # the copies are not saved or counted with the model's own weights.
        self._qkv = [
            fused_int8([a.query, a.key, a.value])
            for a in (layer.attention.self for layer in model.encoder.layer)
        ]

    @property
    def config(self):
        """The wrapped model's config (what an adapter reads, e.g. ``hidden_size``)."""
        return self.model.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **_,
    ):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()
        width = int(keep.any(0).nonzero().max()) + 1 if keep.any() else 1
        keep, input_ids = keep[:, :width], input_ids[:, :width]  # trailing all-pad columns
        b, n = keep.shape
        where = keep.reshape(-1).nonzero().squeeze(1)  # flat positions of the real tokens
        emb = self.model.embeddings
        positions = torch.arange(n, device=input_ids.device).repeat(b)[where]
        h = emb.word_embeddings(input_ids.reshape(-1)[where]) + emb.position_embeddings(positions)
        if hasattr(emb, "token_type_embeddings"):
            types = (
                token_type_ids[:, :width].reshape(-1)[where]
                if token_type_ids is not None
                else torch.zeros_like(positions)
            )
            h = h + emb.token_type_embeddings(types)
        h = emb.LayerNorm(h)
        groups = buckets.length_buckets(keep)
        grid = buckets.grid_index(groups, h.shape[0])
        for layer, qkv in zip(self.model.encoder.layer, self._qkv, strict=True):
            h = self._layer(layer, h, groups, grid, qkv)
        out = h.new_zeros(b * n, h.shape[-1])
        out[where] = h
        out = out.view(b, n, -1)
        full = attention_mask.shape[1]
        out = F.pad(out, (0, 0, 0, full - n)) if full > n else out
        return self._answer(out)

    def _answer(self, hidden: torch.Tensor):
        """``hidden`` (and the pooler's output on it) in the wrapped model's output type."""
        spec = self._spec
        names = list(spec["fields"]) if spec["kind"] in ("model_output", "dict") else None
        wanted = names or PACKED_FIELDS[: outputs.count(spec)]
        values = {PACKED_FIELDS[0]: hidden}
        if PACKED_FIELDS[1] in wanted:
            values[PACKED_FIELDS[1]] = self.model.pooler(hidden)
        return outputs.rebuild(spec, [values[n] for n in wanted])

    @staticmethod
    def _layer(
        layer,
        h: torch.Tensor,
        groups: list[buckets.Bucket],
        grid: tuple[torch.Tensor, torch.Tensor] | None,
        qkv: nn.Module | None = None,
    ) -> torch.Tensor:
        att = layer.attention.self
        d = att.attention_head_size
        heads = att.query.out_features // d if d else 0
        if heads and grid is not None:
            # queries, keys and values: one [tokens, 3 * heads * d] product when the three are
            # fused, else three [tokens, heads * d]
            parts = [qkv(h)] if qkv is not None else [att.query(h), att.key(h), att.value(h)]
            source, back = grid
            cells = [x.index_select(0, source) for x in parts]  # every bucket's grid, one gather
            done, start = [], 0
            for g in groups:  # attention per length bucket, each padded to its own longest
                end = start + g.samples * g.width
                per_head = [
                    c[start:end].view(g.samples, g.width, -1, d).transpose(1, 2) for c in cells
                ]
                q, k, v = per_head[0].split(heads, 1) if len(per_head) == 1 else per_head
                out = buckets.attention(q, k, v, g.mask)  # [samples, heads, width, d]
                done.append(out.transpose(1, 2).reshape(-1, heads * d))
                start = end
            ctx = torch.cat(done).index_select(0, back)  # the real tokens' rows, packed order
        else:  # every head pruned (or no token): the attention output is its dense layer's bias
            ctx = h.new_zeros(h.shape[0], heads * d)
        out = layer.attention.output
        h = out.LayerNorm(out.dense(ctx) + h)
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(h))
        return layer.output.LayerNorm(layer.output.dense(inner) + h)


def difference(model: nn.Module, packed: nn.Module, batches: list[Batch]) -> float:
    """Largest absolute difference on real tokens between ``model`` and its packed form."""
    worst = 0.0
    with torch.inference_mode():
        for b in batches:
            mask = token_mask(b).bool()
            a = main_output(model(**b)).float()[mask]
            c = main_output(packed(**b)).float()[mask]
            if a.shape != c.shape:
                return float("inf")
            worst = max(worst, float((a - c).abs().max()) if a.numel() else 0.0)
    return worst


def check(model: nn.Module, checks: list[Batch]) -> tuple[bool, str]:
    """Whether the packed form of ``model`` (a float module) reproduces its padded forward on
    ``checks`` within :data:`PACKED_ATOL`; and a line for the report.

    Checked on the float form: an int8 module quantizes its activations with one scale per
    tensor, which the padding enters, so its packed form differs from its padded form by
    design and is measured like any other candidate instead.
    """
    reason = why_not(model, checks[0]) if checks else "no batch to check packing on"
    if reason is not None:
        return False, f"packed tokens: not offered ({reason})"
    try:
        diff = difference(model, PackedEncoder(model).eval(), checks)
    except Exception as err:  # a layout this module misreads: served padded, as before
        return False, f"packed tokens: not offered ({type(err).__name__}: {str(err)[:160]})"
    if not diff <= PACKED_ATOL:
        return False, (
            f"packed tokens: not offered (max |packed - padded| {diff:.3g} > {PACKED_ATOL} on "
            "real tokens: the model computes something packing does not)"
        )
    return True, f"packed tokens: max |packed - padded| {diff:.1e} on real tokens"


# ---- the search's use -------------------------------------------------------------------------


def served(module: nn.Module) -> nn.Module:
    """``module`` in its packed form (a :class:`PackedEncoder`; an ONNX Runtime graph and a
    module already packed as they are). A half-precision module is packed inside its casts, so
    it still answers in float32."""
    if isinstance(module, PackedEncoder | OrtModule):
        return module
    if isinstance(module, HalfPrecision):
        if isinstance(module.module, PackedEncoder):
            return module
        return HalfPrecision(
            PackedEncoder(module.module), module.half_dtype, module.sparsity
        ).eval()
    return PackedEncoder(module).eval()


def is_packed(module: nn.Module) -> bool:
    """Whether ``module`` runs on packed tokens (a :class:`PackedEncoder`, maybe inside casts)."""
    return isinstance(module, PackedEncoder) or isinstance(
        getattr(module, "module", None), PackedEncoder
    )


def faithful(model: nn.Module, profile, checks: list[Batch]) -> tuple[bool, str]:
    """Whether ``model`` may run packed under ``profile`` (a CPU profile with packed tokens on)
    and its packed form reproduces it on ``checks`` (:func:`check`); and a line for the report.
    """
    if not profile.packed_tokens:
        return False, "packed tokens: off in the profile"
    if profile.device != "cpu":
        return False, f"packed tokens: cpu profiles only (this one: {profile.device})"
    return check(model, checks)
