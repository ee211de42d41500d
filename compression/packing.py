"""Packed tokens: a BERT-family encoder that computes its real tokens and not the padding.

Served text arrives as micro-batches of sentences of different lengths, padded to the longest;
on the held-out English batches of 32 sentences only about half the positions are real tokens.
A padded forward spends the other half on positions whose outputs are masked away. A
:class:`PackedEncoder` runs the same modules of the same model on the real tokens alone: the
embeddings, every Linear layer, the activations and the LayerNorms see a ``[tokens, width]``
matrix; only attention, which needs a sequence per sample, scatters queries, keys and values
back to ``[samples, heads, length, head_dim]`` for attention (:func:`attention`) with a mask
of the padded keys, in length buckets (:func:`length_buckets`: samples of similar length
together, each bucket padded to its own longest). Nothing is approximated: the real tokens'
outputs equal the padded forward's (the padding positions' outputs are zeros, which mean
pooling over the mask ignores).

It is a runtime, not a pruning step: it wraps any torch form of the model (pruned, int8 or
not) because it calls the model's own modules. The search decides once, on the original
(:func:`decide`: faithful on two validation batches and measurably faster on the latency
batch), and then measures every torch candidate packed, figures and latency, as it will be
served; the packed original itself is a candidate (no pruning, the same outputs). The plan
records ``"packed": true`` and :func:`compression.variant.load_variant` wraps again.

Supported: Hugging Face encoders laid out like ``BertModel`` (``embeddings`` with word,
absolute position and token-type embeddings; ``encoder.layer[i]`` with ``attention.self``
query/key/value, ``attention.output``, ``intermediate``, ``output``), pruned heads and FFN
neurons included. Its answer is the main output (the last hidden state), what the engine and
the service read; a pooler on top is not computed. Anything else is reported as not packable
and served as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from compression.inputs import Batch, main_output, token_mask

# Largest difference on a real token between the packed and the padded forward: above it the
# model computes something this module does not (another attention or embedding scheme).
PACKED_ATOL = 1e-4
# Attention runs in length buckets (:func:`length_buckets`): at most this many, and one per this
# many samples (a bucket's fixed cost outweighs the padding it saves on smaller batches).
MAX_BUCKETS = 4
SAMPLES_PER_BUCKET = 8


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
    return None


class PackedEncoder(nn.Module):
    """``model`` (a BERT-family encoder) run on the real tokens of a padded batch.

    Called like the model (``input_ids``, ``attention_mask``, optional ``token_type_ids``);
    answers as the model does, a ``BaseModelOutput`` whose ``last_hidden_state`` is
    ``[batch, length, width]`` (zeros at padded positions).
    ``.model`` is the wrapped module (what a TorchScript or ONNX export takes).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from transformers.modeling_outputs import BaseModelOutput  # the wrapped model's answer

        from compression.precision import fused_int8

        self.model = model
        self._answer = BaseModelOutput
        # Per layer, its int8 query, key and value as one int8 layer (None: run them apart;
        # float weights are not fused here: one product over three gains little there, while
        # the calibration hooks of compression.smoothing must see each layer). A plain list, so
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
        groups = length_buckets(keep)
        grid = grid_index(groups, h.shape[0])
        for layer, qkv in zip(self.model.encoder.layer, self._qkv, strict=True):
            h = self._layer(layer, h, groups, grid, qkv)
        out = h.new_zeros(b * n, h.shape[-1])
        out[where] = h
        out = out.view(b, n, -1)
        full = attention_mask.shape[1]
        out = F.pad(out, (0, 0, 0, full - n)) if full > n else out
        return self._answer(last_hidden_state=out)

    @staticmethod
    def _layer(
        layer,
        h: torch.Tensor,
        groups: list[Bucket],
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
                out = attention(q, k, v, g.mask)  # [samples, heads, width, d]
                done.append(out.transpose(1, 2).reshape(-1, heads * d))
                start = end
            ctx = torch.cat(done).index_select(0, back)  # the real tokens' rows, packed order
        else:  # every head pruned (or no token): the attention output is its dense layer's bias
            ctx = h.new_zeros(h.shape[0], heads * d)
        out = layer.attention.output
        h = out.LayerNorm(out.dense(ctx) + h)
        inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(h))
        return layer.output.LayerNorm(layer.output.dense(inner) + h)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Softmax attention of ``q``, ``k``, ``v`` (``[samples, heads, width, head_dim]``) with the
    additive ``mask`` (``[samples, 1, 1, width]``), written out as two matrix products.

    What ``scaled_dot_product_attention`` computes, to float rounding; on the CPU its fused
    kernel spends more than twice as long on short sequences and small heads: MiniLM's
    attention over the four length buckets of a held-out batch of 32 sentences (widths 19 to
    54, 12 heads of 32), 2 cores, 2.0-2.1 ms a layer with ``scaled_dot_product_attention``,
    0.9-1.1 ms as written here.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    scores.add_(mask.to(scores.dtype))
    return torch.matmul(scores.softmax(-1), v)


@dataclass(frozen=True)
class Bucket:
    """Samples of similar length whose attention runs together, padded to the longest of them.

    ``rows``: their real tokens' rows in the packed ``[tokens, width]`` matrix; ``slots``: the
    same tokens' flat positions in the bucket's ``[samples * width]`` grid; ``mask``: added to
    the attention scores, 0 where a query may see the key and ``-inf`` at the padded keys,
    ``[samples, 1, 1, width]``; ``source``: the packed row each grid position reads,
    ``[samples * width]`` (a padded position reads some real row: its key is masked and its
    query's output dropped, so what it holds does not matter).
    """

    samples: int
    width: int
    rows: torch.Tensor
    slots: torch.Tensor
    mask: torch.Tensor
    source: torch.Tensor


def bucket_sizes(widths: list[int], most: int) -> list[int]:
    """How many of the ``widths`` (sorted ascending) go into each of at most ``most`` buckets:
    the split that minimises the attention work, the sum over buckets of samples x width^2
    (dynamic programming over the cut points; every bucket is padded to its last width).

    >>> bucket_sizes([10, 11, 12, 50], 2)
    [3, 1]
    """
    n = len(widths)
    most = max(1, min(most, n))
    inf = float("inf")
    # cost[k][i]: least work for the first i widths in k buckets; cut[k][i]: where the last starts
    cost = [[inf] * (n + 1) for _ in range(most + 1)]
    cut = [[0] * (n + 1) for _ in range(most + 1)]
    cost[0][0] = 0.0
    for k in range(1, most + 1):
        for i in range(1, n + 1):
            for j in range(k - 1, i):
                c = cost[k - 1][j] + (i - j) * widths[i - 1] ** 2
                if c < cost[k][i]:
                    cost[k][i], cut[k][i] = c, j
    k = min(range(1, most + 1), key=lambda k: cost[k][n])
    sizes, i = [], n
    while k > 0:
        j = cut[k][i]
        sizes.append(i - j)
        i, k = j, k - 1
    return sizes[::-1]


def length_buckets(keep: torch.Tensor) -> list[Bucket]:
    """The batch's samples grouped by length for attention (``keep``: ``[batch, length]``, which
    positions are real tokens).

    Attention is the one step that needs a sequence per sample, and padded to the batch's
    longest it spends batch x longest^2 on a batch whose lengths spread (served micro-batches:
    on 32 held-out English sentences, 13 to 54 tokens). Samples sorted by length and split in
    up to :data:`MAX_BUCKETS` buckets (one per :data:`SAMPLES_PER_BUCKET` samples), each padded
    to its own longest, give the same outputs for less: MiniLM's attention on that batch, 2
    cores, 4.3 ms per layer in one bucket, 2.5-3.0 ms in four.
    """
    b, n = keep.shape
    rows = torch.full((b, n), -1, dtype=torch.long, device=keep.device)
    rows[keep] = torch.arange(int(keep.sum()), device=keep.device)  # packed row of each token
    last = torch.where(keep, torch.arange(1, n + 1, device=keep.device), 0).amax(1)
    widths, order = torch.sort(last.clamp(min=1))
    most = min(MAX_BUCKETS, max(1, b // SAMPLES_PER_BUCKET))
    out, start = [], 0
    for size in bucket_sizes(widths.tolist(), most):
        members = order[start : start + size]
        start += size
        width = int(widths[start - 1])
        sub = keep[members, :width]
        out.append(
            Bucket(
                samples=size,
                width=width,
                rows=rows[members, :width][sub],
                slots=sub.reshape(-1).nonzero().squeeze(1),
                mask=torch.zeros(sub.shape).masked_fill_(~sub, float("-inf"))[:, None, None, :],
                source=rows[members, :width].reshape(-1).clamp(min=0),
            )
        )
    return out


def grid_index(groups: list[Bucket], tokens: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The two gathers between the packed rows and the buckets' grids, laid end to end: which
    packed row each grid position reads, and which grid position holds each packed row's
    attention output. None for a batch without a real token (nothing to attend to).

    One gather in and one out per layer, where scattering each bucket on its own took two of
    each per bucket: MiniLM's attention over the four buckets of a held-out batch of 32
    sentences, gathers included, 2.6-2.7 ms a layer against 2.9-3.5 ms (2 cores, same process).
    """
    if tokens == 0:
        return None
    source = torch.cat([g.source for g in groups])
    back = torch.empty(tokens, dtype=torch.long, device=source.device)
    start = 0
    for g in groups:
        back[g.rows] = start + g.slots
        start += g.samples * g.width
    return source, back


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
    from compression.precision import HalfPrecision
    from compression.runtimes import OrtModule

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


def decide(ctx, base) -> tuple[bool, float | None, str]:
    """Whether the search measures and serves every torch candidate packed: when the packed
    original reproduces the padded one (:func:`check`) and is >= 5 % faster on the latency
    batch; the packed original's latency (ms) when measured; a line for the report.

    ``base`` is the original measured like a candidate (its padded latency).
    """
    from compression.measure import latency_ms
    from compression.search import SCREEN_SECONDS

    profile = ctx.profile
    ok, note = ctx.pack_check or faithful(ctx.original, profile, [x for x, _ in ctx.validation[:2]])
    if not ok:
        return False, None, note
    ms = latency_ms(
        served(ctx.original),
        ctx.latency_batch,
        profile.device,
        profile.latency_repeats,
        1,
        max_seconds=SCREEN_SECONDS,
    )
    padded = base.candidate.latency_ms
    faster = ms < 0.95 * padded
    verdict = "every torch candidate is measured and served packed" if faster else "not used"
    return faster, ms, f"{note}; original {padded:.1f} ms padded, {ms:.1f} ms packed: {verdict}"
