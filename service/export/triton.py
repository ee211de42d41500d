"""Export a saved variant to a Triton Inference Server model repository (TorchScript).

For GPU fleets the accepted variant runs in Triton; this writes the repository Triton loads::

    REPO/<name>/config.pbtxt        platform "pytorch_libtorch", tensors, max_batch_size,
                                    dynamic_batching
    REPO/<name>/1/model.pt          the variant as TorchScript (traced or scripted)
    REPO/<name>/slimserve.json      where it came from: source, profile, precision, report

``config.pbtxt`` is Triton's own ``ModelConfig`` protobuf (the ``model_config_pb2`` tritonclient
ships), written and read with protobuf's ``text_format``: :func:`model_config` builds it,
:func:`read_config` parses it back as Triton would, unknown fields and enum values included.

TorchScript is the default: it handles all three built-ins, the int8-dynamic variants
(``torch.ao`` quantized Linear layers export as ``quantized::linear_dynamic``, which ONNX has
no operator for) and Hugging Face BERT, and needs nothing beyond torch. ONNX for Triton's ONNX
Runtime backend is the second format (:mod:`service.export.onnx`); both share
:func:`prepare` (load and wrap the variant) and :func:`write_model_dir` (atomic write).

Tensors (dims in config.pbtxt leave out the batch dimension):

- image / tensor models (digits-cnn, digits-mlp, ``py:`` sources): ``INPUT__0`` FP32
  ``[N, *input_shape]`` -> ``OUTPUT__0`` FP32 ``[N, *output_shape]`` (the digits models:
  ``[N, 1, 8, 8]`` -> ``[N, 10]`` class scores). The libtorch backend maps ``<name>__<index>``
  to the forward argument / returned tensor by index.
- text encoders (minilm, ``hf:`` sources): ``input_ids`` and ``attention_mask`` INT64
  ``[N, L]`` (named after the forward arguments, which the libtorch backend matches) ->
  ``OUTPUT__0`` FP32 ``[N, hidden]``: the **sentence embedding**, the mean of the last hidden
  state over real tokens, L2-normalised (how all-MiniLM-L6-v2 is used, and what
  :func:`compression.evaluation.metrics.embed` compares before normalising). ``last_hidden_state`` is not
  exported: an embedding is what a Triton client of a sentence encoder wants.

The exported model always takes and returns FP32 (INT64 for token ids): a float16/bfloat16
variant (the gpu profile) keeps its half-precision weights and casts inside the TorchScript, and
is captured on the GPU when one is present (``slimserve.json`` records ``captured_on``). Quantized int8-dynamic variants get
``instance_group [{ kind: KIND_CPU }]``, because torch's dynamic int8 kernels exist only on
CPU. Every export is checked before it is written: the TorchScript module must reproduce the
variant's outputs on batches of other sizes (and, for text, other lengths) than it was traced
with.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compression import load_variant
from compression.core.errors import CompressionError
from service.export.config import (  # noqa: F401 (the config API, re-exported here)
    PLATFORM,
    TRITON_TYPES,
    ExportError,
    ModelConfig,
    TensorSpec,
    TritonModel,
    config_pbtxt,
    model_config,
    parse_config,
    read_config,
    tensor_specs,
)
from service.models import resolve

MODEL_FILE = "model.pt"
VERSION = "1"
# Largest difference between the TorchScript module and the variant the export accepts.
CHECK_ATOL = 1e-4
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class TensorModel(nn.Module):
    """``INPUT__0`` (FP32) -> the variant -> ``OUTPUT__0`` (FP32), casting to its dtype."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.to(self.dtype)).float()


class SentenceEmbedding(nn.Module):
    """A BERT-family encoder as ``(input_ids, attention_mask) -> L2-normalised mean pooling``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0].float()
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return F.normalize(pooled, p=2.0, dim=1)


def _is_text_model(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return config is not None and hasattr(config, "vocab_size") and hasattr(config, "hidden_size")


def _default_name(plan: dict, variant_dir: Path) -> str:
    source = str(plan.get("source") or variant_dir.name)
    if source.startswith(("hf:", "py:")):
        source = source.rstrip("/").replace(":", "-").split("/")[-1]
    profile = (plan.get("profile") or {}).get("name")
    name = f"{source}-{profile}" if profile else source
    return re.sub(r"[^A-Za-z0-9_.-]", "-", name)


def _text_examples(bundle: Any, module: nn.Module) -> list[tuple[torch.Tensor, ...]]:
    """Token batches: one padded batch to trace with, then other batch sizes and lengths."""
    if bundle is not None and getattr(bundle, "tokenizer", None) is not None:
        sentences = [
            "Triton serves the compressed variant.",
            "A short one.",
            "Structured pruning removes whole attention heads and feed-forward channels, then "
            "a least-squares refit rebuilds what the next layer sees.",
            "Sentence embeddings are mean-pooled over the real tokens.",
        ]
        batches = [
            bundle.tokenize(sentences[:3]),  # padded: the mask path is traced
            bundle.tokenize(sentences[1:2]),  # one sentence, no padding
            bundle.tokenize(sentences),
        ]
        return [(b["input_ids"], b["attention_mask"]) for b in batches]
    gen = torch.Generator().manual_seed(0)
    vocab = int(module.config.vocab_size)
    out = []
    for n, length in ((3, 12), (1, 5), (4, 20)):
        ids = torch.randint(1000 if vocab > 2000 else 1, vocab, (n, length), generator=gen)
        mask = torch.ones(n, length, dtype=torch.int64)
        if n > 1:
            mask[1:, length // 2 :] = 0
        out.append((ids, mask))
    return out


def _tensor_examples(bundle: Any, input_shape: Sequence[int] | None) -> list[tuple[torch.Tensor]]:
    example = getattr(bundle, "example_inputs", None) if bundle is not None else None
    if input_shape is None and isinstance(example, torch.Tensor):
        input_shape = tuple(example.shape[1:])
    if input_shape is None:
        raise ExportError(
            "cannot tell the model's input shape: its source ships no example inputs; pass "
            "input_shape (CLI: --input-shape C,H,W without the batch dimension)"
        )
    shape = tuple(int(d) for d in input_shape)
    if isinstance(example, torch.Tensor) and tuple(example.shape[1:]) == shape:
        base = example.float()
    else:
        base = torch.rand((8, *shape), generator=torch.Generator().manual_seed(0))
    return [(base[:4],), (base[:1],), (torch.cat([base, base.flip(0)])[:11],)]


def _to_torchscript(
    wrapper: nn.Module, examples: list[tuple[torch.Tensor, ...]]
) -> tuple[Any, str]:
    """Script the wrapper when TorchScript can; otherwise trace it on the first example."""
    errors = []
    with torch.no_grad():
        if isinstance(wrapper, TensorModel):
            try:
                return torch.jit.script(wrapper), "script"
            except Exception as err:  # noqa: BLE001 - many model codes do not script; trace then
                errors.append(f"script: {type(err).__name__}: {str(err).splitlines()[0]}")
        try:
            with warnings.catch_warnings():
                # Shape-dependent Python branches get frozen; _check() below proves the trace
                # right on other batch sizes and lengths instead of warning about it.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(wrapper, examples[0], strict=False, check_trace=False)
            return traced, "trace"
        except Exception as err:  # noqa: BLE001
            errors.append(f"trace: {type(err).__name__}: {str(err).splitlines()[0]}")
    raise ExportError("TorchScript cannot capture the variant: " + "; ".join(errors))


def _check(wrapper: nn.Module, scripted: Any, examples: list[tuple[torch.Tensor, ...]]) -> float:
    worst = 0.0
    with torch.no_grad():
        for ex in examples:
            want, got = wrapper(*ex), scripted(*ex)
            if want.shape != got.shape:
                raise ExportError(
                    f"the TorchScript model answers shape {list(got.shape)} for inputs of shape "
                    f"{[list(t.shape) for t in ex]}; the variant answers {list(want.shape)}"
                )
            worst = max(worst, (want - got).abs().max().item())
    if worst > CHECK_ATOL:
        raise ExportError(
            f"the TorchScript model differs from the variant by up to {worst:.3g} "
            f"(allowed {CHECK_ATOL}); the model likely has input-dependent control flow"
        )
    return worst


@dataclass
class Prepared:
    """A variant loaded and wrapped for export, with the examples that check the export."""

    name: str
    variant_dir: Path
    plan: dict
    variant: Any
    kind: str  # "tensor" | "text-embedding"
    wrapper: nn.Module
    examples: list[tuple[torch.Tensor, ...]]
    inputs: list[TensorSpec]
    device: str  # where the wrapper runs while it is captured (cuda for a gpu variant)


def prepare(
    variant_dir: str | Path, model_name: str | None, input_shape: Sequence[int] | None
) -> Prepared:
    """Load a variant and wrap it as the exported model sees it (shared by every format).

    A variant compressed for a CUDA profile is captured on the GPU where one is present, so
    device constants a trace records (Hugging Face's mask tensors) are the ones it serves on.
    """
    variant_dir = Path(variant_dir)
    try:
        plan = json.loads((variant_dir / "plan.json").read_text())
    except FileNotFoundError:
        raise ExportError(f"{variant_dir} is not a variant: plan.json is missing") from None
    except json.JSONDecodeError as err:
        raise ExportError(f"{variant_dir}/plan.json is corrupted: {err}") from None
    name = model_name or _default_name(plan, variant_dir)
    if not _NAME_RE.match(name):
        raise ExportError(f"model name {name!r}: use letters, digits, '_', '-' and '.' only")

    try:
        bundle = resolve(plan["source"]) if plan.get("source") else None
        if bundle is None:
            raise CompressionError(
                f"{variant_dir}: the plan records no model source, so the model cannot be built"
            )
        # The torch form, whichever runtime serves the variant (an ONNX Runtime variant's float
        # weights in the plan's precision): never imports onnxruntime, which Triton's
        # environment may lack.
        variant = load_variant(variant_dir, model=bundle.factory(), runtime="torch")
    except CompressionError as err:
        raise ExportError(str(err)) from None
    module = variant.module
    dtype = _DTYPES.get(plan.get("dtype", "float32"), torch.float32)
    gpu = (plan.get("profile") or {}).get("device") == "cuda" and torch.cuda.is_available()
    device = "cuda" if gpu and plan.get("quantization", "none") == "none" else "cpu"

    if _is_text_model(module):
        kind = "text-embedding"
        wrapper: nn.Module = SentenceEmbedding(module).eval()
        examples = _text_examples(bundle, module)
        inputs = [
            TensorSpec("input_ids", "TYPE_INT64", (-1,)),
            TensorSpec("attention_mask", "TYPE_INT64", (-1,)),
        ]
    else:
        kind = "tensor"
        wrapper = TensorModel(module, dtype).eval()
        examples = _tensor_examples(bundle, input_shape)
        inputs = [TensorSpec("INPUT__0", "TYPE_FP32", tuple(examples[0][0].shape[1:]))]
    wrapper.to(device)
    examples = [tuple(t.to(device) for t in ex) for ex in examples]
    return Prepared(name, variant_dir, plan, variant, kind, wrapper, examples, inputs, device)


def export_meta(prep: Prepared, platform: str, inputs, outputs, **extra) -> dict:
    """``slimserve.json``: where an exported model came from and how it was checked."""
    report = prep.variant.report.to_dict()
    plan = prep.plan
    return {
        "format": "triton",
        "platform": platform,
        "kind": prep.kind,
        "variant_dir": str(prep.variant_dir.resolve()),
        "source": plan.get("source"),
        "profile": (plan.get("profile") or {}).get("name"),
        "dtype": plan.get("dtype"),
        "quantization": plan.get("quantization"),
        "sparsity": plan.get("sparsity", "none"),
        "weights_sha256": plan.get("weights_sha256"),
        "torch": torch.__version__,
        "captured_on": prep.device,
        "inputs": [asdict(s) | {"dims": list(s.dims)} for s in inputs],
        "outputs": [asdict(s) | {"dims": list(s.dims)} for s in outputs],
        "output_meaning": (
            "L2-normalised mean-pooled sentence embedding"
            if prep.kind == "text-embedding"
            else "the variant's output (class scores for classifiers)"
        ),
        "report": {k: report.get(k) for k in ("accepted", "speedup", "metric", "metric_after")},
        # SlimServe serves a packed variant on its real tokens only (compression.forms.packing); Triton
        # gets the padded module it wraps: the same outputs in float32, while int8's activation
        # scales also see the padding, so an int8 export differs within quantization error.
        "packed_tokens_in_slimserve": bool(plan.get("packed", False)),
        **extra,
    }


def write_model_dir(model: TritonModel, platform: str, write_version: Any) -> Path:
    """Write ``model.path`` (config.pbtxt, slimserve.json, and ``write_version(dir_1)``'s files)
    into a temporary directory beside it, then move it into place, so a Triton polling the
    repository never sees half a model. An existing model directory is replaced whole."""
    repo_dir = model.path.parent
    repo_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.name}.", dir=repo_dir))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it 0700; Triton may run as another user
        (tmp / VERSION).mkdir()
        write_version(tmp / VERSION)
        (tmp / "config.pbtxt").write_text(config_pbtxt(model, platform))
        (tmp / "slimserve.json").write_text(json.dumps(model.meta, indent=2, sort_keys=True))
        if model.path.exists():
            shutil.rmtree(model.path)
        tmp.rename(model.path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model.path


def export_triton(
    variant_dir: str | Path,
    repo_dir: str | Path,
    model_name: str | None = None,
    max_batch_size: int = 64,
    input_shape: Sequence[int] | None = None,
) -> Path:
    """Write ``repo_dir/<name>/`` (config.pbtxt, 1/model.pt, slimserve.json) for a variant.

    ``model_name`` defaults to ``<source>-<profile>`` (e.g. ``digits-cnn-cpu``). Returns the
    model's directory. An existing model directory of that name is replaced whole. A float16
    or bfloat16 variant (the gpu profile) is exported in that precision, FP32 at its edges.
    """
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size must be at least 1, got {max_batch_size}")
    prep = prepare(variant_dir, model_name, input_shape)
    scripted, how = _to_torchscript(prep.wrapper, prep.examples)
    max_diff = _check(prep.wrapper, scripted, prep.examples)
    with torch.no_grad():
        out = prep.wrapper(*prep.examples[0])
    outputs = [TensorSpec("OUTPUT__0", TRITON_TYPES[out.dtype], tuple(out.shape[1:]))]
    quantized = prep.plan.get("quantization", "none") != "none"
    model = TritonModel(
        name=prep.name,
        path=Path(repo_dir) / prep.name,
        kind=prep.kind,
        inputs=prep.inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
        instance_kind="KIND_CPU" if quantized else None,
    )
    model.meta = export_meta(
        prep, PLATFORM, prep.inputs, outputs, torchscript=how, export_max_abs_diff=max_diff
    )
    return write_model_dir(model, PLATFORM, lambda d: torch.jit.save(scripted, str(d / MODEL_FILE)))
