"""Model-family knowledge the rebuild uses: where a layer's output joins a skip connection.

(Head counts after head pruning follow through the attention layouts, :mod:`compression.structure.attention`.)
"""

from __future__ import annotations

from torch import nn


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
