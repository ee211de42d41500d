"""Model-family fix-ups: what Torch-Pruning's surgery cannot know about a family.

Torch-Pruning resizes weights; some modules also keep the sizes as plain attributes that their
``forward`` uses. After pruning whole attention heads of a BERT-family layer, its
``num_attention_heads`` and ``all_head_size`` must follow, or ``forward`` reshapes wrongly.
Each fix-up is a named function, tested on its own.
"""

from __future__ import annotations

from torch import nn


def _is_bert_attention(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("query", "key", "value", "attention_head_size"))


def head_size_of(model: nn.Module, member_names: list[str]) -> int | None:
    """Head size when a group is a BERT attention block's query/key/value, else None."""
    for name in member_names:
        if name.endswith(".query"):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            if _is_bert_attention(parent):
                return int(parent.attention_head_size)
    return None


def fix_bert_attention_heads(model: nn.Module) -> int:
    """Set ``num_attention_heads``/``all_head_size`` from the pruned query width.

    Returns how many attention modules changed.
    """
    changed = 0
    for module in model.modules():
        if not _is_bert_attention(module):
            continue
        width = module.query.out_features
        heads = width // module.attention_head_size
        if heads * module.attention_head_size != width:
            raise ValueError(
                f"pruned query width {width} is not a multiple of head size "
                f"{module.attention_head_size}: heads must be pruned whole"
            )
        if module.num_attention_heads != heads:
            module.num_attention_heads = heads
            module.all_head_size = width
            changed += 1
    return changed


FIX_UPS = (fix_bert_attention_heads,)


def residual_parent(model: nn.Module, layer_name: str) -> str | None:
    """The module that adds a skip connection to ``layer_name``'s output, if the family has one.

    BERT's ``BertSelfOutput``/``BertOutput`` compute ``LayerNorm(dropout(dense(h)) + input_tensor)``
    with the skip as their second argument. Refitting ``dense`` to match the *sum* (not just its
    own output) also cancels the error that upstream pruning left in the skip path.
    """
    if not layer_name.endswith(".dense") or "." not in layer_name:
        return None
    parent_name = layer_name.rsplit(".", 1)[0]
    parent = model.get_submodule(parent_name)
    if isinstance(getattr(parent, "LayerNorm", None), nn.LayerNorm) and hasattr(parent, "dense"):
        return parent_name
    return None


def fix_up(model: nn.Module) -> None:
    """Run every family fix-up on a pruned model."""
    for fix in FIX_UPS:
        fix(model)
