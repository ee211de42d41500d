"""How a served model meets the wire: its v2 signature, request batching, and output decoding.

An adapter turns decoded request tensors into one model batch and the model's output back into
per-request arrays. Images: FP32 ``[N, 1, 8, 8]`` (or ``[N, 64]``) in, class scores out.
Text: BYTES ``[N]`` sentences in, L2-normalised mean-pooled sentence embeddings out.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from compression.core.inputs import main_output
from compression.evaluation.metrics import embed
from service.models.bundle import ModelBundle
from service.serving.v2 import ModelSignature, TensorSpec, V2Error, check_text


@dataclass
class ImageAdapter:
    """Classifier of 8x8 grey images."""

    name: str
    classes: int = 10
    input_name: str = "INPUT"
    output_name: str = "SCORES"
    labels: list[str] | None = None  # class names of a task model (metadata, /predict)

    @cached_property  # every request reads it (decode, check, encode): validated once
    def signature(self) -> ModelSignature:
        return ModelSignature(
            name=self.name,
            inputs=[TensorSpec(name=self.input_name, datatype="FP32", shape=[-1, 1, 8, 8])],
            outputs=[TensorSpec(name=self.output_name, datatype="FP32", shape=[-1, self.classes])],
            parameters={"labels": list(self.labels)} if self.labels else None,
        )

    def sample_rows(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = inputs[self.input_name]
        return x.reshape(-1, 1, 8, 8).astype(np.float32, copy=False)

    def from_json(self, data: Any) -> np.ndarray:
        """BentoML /predict: a list of 8x8 images (or 64-vectors) in [0, 1]."""
        try:
            x = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError):
            raise V2Error("inputs: expected a list of 8x8 images of numbers") from None
        if x.ndim == 2 and x.shape[1] == 64:
            x = x.reshape(-1, 1, 8, 8)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
            raise V2Error(f"inputs: expected shape [N, 8, 8] or [N, 64], got {list(x.shape)}")
        return x

    def probe_rows(self, n: int) -> np.ndarray:
        """``n`` inputs shaped like real requests (to time the model at start-up)."""
        return np.zeros((n, 1, 8, 8), dtype=np.float32)

    def collate(self, rows: list[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(rows))

    def outputs(self, out: Any, batch: torch.Tensor) -> np.ndarray:
        return main_output(out).float().cpu().numpy()

    def call(self, module: torch.nn.Module, batch: torch.Tensor) -> Any:
        return module(batch)


@dataclass
class TextAdapter:
    """Sentence encoder (BERT family): sentences in, normalised mean-pooled embeddings out.

    With ``labels`` (a task model: encoder + classification head) the output is ``SCORES``,
    one score per class, and the class names are in the model's metadata.
    """

    name: str
    bundle: ModelBundle
    dim: int
    input_name: str = "TEXT"
    output_name: str = "EMBEDDING"
    labels: list[str] | None = None

    @cached_property  # every request reads it (decode, check, encode): validated once
    def signature(self) -> ModelSignature:
        return ModelSignature(
            name=self.name,
            inputs=[TensorSpec(name=self.input_name, datatype="BYTES", shape=[-1])],
            outputs=[TensorSpec(name=self.output_name, datatype="FP32", shape=[-1, self.dim])],
            parameters={"labels": list(self.labels)} if self.labels else None,
        )

    def sample_rows(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        sentences = []
        for i, raw in enumerate(inputs[self.input_name].reshape(-1).tolist()):
            try:
                sentences.append(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
            except UnicodeDecodeError as err:  # binary BYTES data: strict UTF-8, no surrogates
                raise V2Error(
                    f"input '{self.input_name}' element {i}: expected UTF-8 text, "
                    f"byte {err.start} is not ({err.reason})"
                ) from None
        return np.array(sentences, dtype=object)

    def from_json(self, data: Any) -> np.ndarray:
        """BentoML /predict: a sentence or a non-empty list of them, checked before the
        tokenizer sees them (a lone surrogate would fail the whole micro-batch there)."""
        if isinstance(data, str):
            data = [data]
        if not isinstance(data, list) or not data or not all(isinstance(s, str) for s in data):
            raise V2Error("inputs: expected a non-empty list of sentences (strings)")
        for i, sentence in enumerate(data):
            check_text(f"inputs[{i}]", sentence)
        return np.array(data, dtype=object)

    def probe_rows(self, n: int) -> np.ndarray:
        """``n`` sentences of a typical length (to time the model at start-up)."""
        sentence = "Structured pruning removes whole channels, so the smaller model is faster."
        return np.array([sentence] * n, dtype=object)

    def collate(self, rows: list[np.ndarray]) -> dict[str, torch.Tensor]:
        sentences = [s for r in rows for s in r.tolist()]
        return self.bundle.tokenize(sentences)

    def call(self, module: torch.nn.Module, batch: dict) -> Any:
        return module(**batch)

    def outputs(self, out: Any, batch: dict) -> np.ndarray:
        if self.labels:
            return main_output(out).float().cpu().numpy()
        pooled = embed(main_output(out), batch)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()


def adapter_for(bundle: ModelBundle, module: torch.nn.Module):
    """The adapter of a bundle: text models by tokenizer, classifiers by their input shape."""
    labels = bundle.extra.get("labels")
    if bundle.is_text:
        if labels:
            return TextAdapter(
                bundle.name, bundle, len(labels), output_name="SCORES", labels=labels
            )
        return TextAdapter(bundle.name, bundle, int(module.config.hidden_size))
    shape = bundle.extra.get("input_shape")
    if shape != [1, 8, 8]:
        raise ValueError(
            f"{bundle.source}: the service serves 8x8 image classifiers and BERT-family text "
            f"encoders; this model's input shape {shape} has no adapter yet"
        )
    return ImageAdapter(
        bundle.name, len(labels) if labels else bundle.extra.get("classes", 10), labels=labels
    )
