import pytest
import torch

from compression.structure import families

from .tiny import tiny_bert

pytestmark = pytest.mark.unit


def test_residual_parent_names_bert_output_blocks():
    model = tiny_bert()
    assert (
        families.residual_parent(model, "encoder.layer.0.output.dense") == "encoder.layer.0.output"
    )
    assert families.residual_parent(model, "encoder.layer.0.intermediate.dense") is None
    assert isinstance(model, torch.nn.Module)
