"""Triton's model configuration: what ``config.pbtxt`` holds, written and read as Triton does.

``config.pbtxt`` is Triton's own ``ModelConfig`` protobuf (the ``model_config_pb2`` tritonclient
ships), written and read with protobuf's ``text_format``: :func:`model_config` builds it from a
:class:`TritonModel`, :func:`read_config` parses it back as Triton would, unknown fields and enum
values included. Shared by the TorchScript (:mod:`service.export.triton`) and ONNX
(:mod:`service.export.onnx`) exports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

PLATFORM = "pytorch_libtorch"
TRITON_TYPES = {
    torch.float32: "TYPE_FP32",
    torch.float16: "TYPE_FP16",
    torch.bfloat16: "TYPE_BF16",
    torch.int64: "TYPE_INT64",
    torch.int32: "TYPE_INT32",
}
# Triton's own config schema (the protobuf tritonclient ships), read and written as text.
ModelConfig = pb.ModelConfig


class ExportError(ValueError):
    """A variant that cannot be exported, or an export that does not reproduce the variant."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the Triton model; ``dims`` leave out the batch dimension."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass
class TritonModel:
    """What :func:`export_triton` wrote."""

    name: str
    path: Path
    kind: str  # "tensor" | "text-embedding"
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    instance_kind: str | None = None
    meta: dict = field(default_factory=dict)


def model_config(model: TritonModel, platform: str = PLATFORM) -> ModelConfig:
    """The model's Triton ``ModelConfig`` protobuf (what ``config.pbtxt`` holds)."""
    config = ModelConfig(name=model.name, platform=platform, max_batch_size=model.max_batch_size)
    for specs, tensors in ((model.inputs, config.input), (model.outputs, config.output)):
        for s in specs:
            tensors.add(name=s.name, data_type=pb.DataType.Value(s.data_type), dims=s.dims)
    config.dynamic_batching.SetInParent()  # present and empty: Triton's defaults
    if model.instance_kind:
        kind = pb.ModelInstanceGroup.Kind.Value(model.instance_kind)
        config.instance_group.add(count=1, kind=kind)
    if platform == PLATFORM:
        # Serve under torch.inference_mode (the libtorch backend's INFERENCE_MODE parameter).
        config.parameters["INFERENCE_MODE"].string_value = "true"
    return config


def config_pbtxt(model: TritonModel, platform: str = PLATFORM) -> str:
    """The model's ``config.pbtxt``: :func:`model_config` in protobuf text format."""
    return text_format.MessageToString(model_config(model, platform))


# -- reading config.pbtxt back (the CLI's summary, tests, deploy/triton/serve_variant.py) --


def parse_config(text: str) -> ModelConfig:
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig``, as Triton itself would.

    >>> parse_config('name: "m" max_batch_size: 8').max_batch_size
    8
    """
    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as err:
        raise ExportError(f"config.pbtxt: {err}") from None


def read_config(model_dir: str | Path) -> ModelConfig:
    """``parse_config`` of ``model_dir/config.pbtxt``."""
    return parse_config((Path(model_dir) / "config.pbtxt").read_text())


def tensor_specs(tensors: Iterable[Any]) -> list[TensorSpec]:
    """A config's ``input`` or ``output`` tensors as :class:`TensorSpec` (type names, dims)."""
    return [TensorSpec(t.name, pb.DataType.Name(t.data_type), tuple(t.dims)) for t in tensors]
