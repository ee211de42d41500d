"""Export a saved variant to a Triton model repository as ONNX (Triton's ONNX Runtime backend).

The second format beside TorchScript (:mod:`service.export.triton`), for fleets that serve
with ONNX Runtime::

    REPO/<name>/config.pbtxt        platform "onnxruntime_onnx", tensors, max_batch_size,
                                    dynamic_batching
    REPO/<name>/1/model.onnx        the variant as ONNX, batch (and token) axes dynamic
    REPO/<name>/slimserve.json      where it came from: source, profile, precision, check

Tensors are those of the TorchScript export: ``INPUT__0`` FP32 -> ``OUTPUT__0`` FP32 for tensor
models, ``input_ids`` / ``attention_mask`` INT64 -> ``OUTPUT__0`` (the L2-normalised sentence
embedding) for text encoders, so a client does not care which format serves. A float16 or
bfloat16 variant keeps its precision inside the graph and FP32 at its edges.

Every export is checked before it is written: ONNX Runtime runs the file on batches of other
sizes (and lengths) than it was captured with, and must answer like the variant within
:data:`CHECK_RTOL` (float32) or :data:`CHECK_RTOL_HALF` of the output's scale. int8-dynamic
variants do not export (ONNX has no operator for ``quantized::linear_dynamic``): use the
TorchScript format for them.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from service.export.triton import (
    TRITON_TYPES,
    ExportError,
    Prepared,
    TensorSpec,
    TritonModel,
    export_meta,
    prepare,
    write_model_dir,
)

PLATFORM = "onnxruntime_onnx"
MODEL_FILE = "model.onnx"
OPSET = 17
# Half precision: opset 17's fused LayerNormalization is exported with a float32 scale beside
# float16 activations, which ONNX Runtime refuses (MiniLM); opset 16 decomposes it.
OPSET_HALF = 16
CHECK_RTOL = 1e-3  # ONNX Runtime vs torch, float32: largest difference / output scale
CHECK_RTOL_HALF = 3e-2


def _dynamic_axes(prep: Prepared) -> dict[str, dict[int, str]]:
    axes = {s.name: {0: "batch"} for s in prep.inputs}
    if prep.kind == "text-embedding":
        for s in prep.inputs:
            axes[s.name][1] = "tokens"
    axes["OUTPUT__0"] = {0: "batch"}
    return axes


def _opset(prep: Prepared) -> int:
    return OPSET if prep.plan.get("dtype", "float32") == "float32" else OPSET_HALF


def to_onnx(prep: Prepared) -> bytes:
    """The wrapped variant as ONNX bytes (TorchScript-based exporter, dynamic batch axes)."""
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter; checked below
            torch.onnx.export(
                prep.wrapper,
                prep.examples[0],
                buf,
                input_names=[s.name for s in prep.inputs],
                output_names=["OUTPUT__0"],
                dynamic_axes=_dynamic_axes(prep),
                opset_version=_opset(prep),
                dynamo=False,
            )
    except Exception as err:  # noqa: BLE001 - any exporter failure is an export error here
        first = str(err).splitlines()[0] if str(err) else ""
        raise ExportError(
            f"ONNX cannot capture the variant: {type(err).__name__}: {first}"
        ) from None
    return buf.getvalue()


def _session(data: bytes, device: str) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError(
            "the ONNX export checks its file with onnxruntime, which is not installed: "
            "pip install 'slimserve[onnx]'"
        ) from None
    available = ort.get_available_providers()
    providers = [
        p
        for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
        if p in available and (device == "cuda" or p == "CPUExecutionProvider")
    ]
    try:
        return ort.InferenceSession(data, providers=providers)
    except Exception as err:  # noqa: BLE001 - e.g. no kernel for a float16 op on this provider
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ExportError(
            f"ONNX Runtime ({', '.join(providers)}) cannot run the exported file: {first}. "
            "A float16/bfloat16 variant may need the CUDA provider; the TorchScript format "
            "(--format triton) exports it on any machine"
        ) from None


def check(prep: Prepared, data: bytes) -> float:
    """Run the file in ONNX Runtime on every example; the largest difference to the variant
    relative to the output's scale. Raises ExportError beyond the tolerance."""
    session = _session(data, prep.device)
    half = prep.plan.get("dtype", "float32") != "float32"
    tol = CHECK_RTOL_HALF if half else CHECK_RTOL
    worst = 0.0
    with torch.no_grad():
        for ex in prep.examples:
            want = prep.wrapper(*ex).float().cpu()
            feed = {s.name: t.cpu().numpy() for s, t in zip(prep.inputs, ex, strict=True)}
            got = torch.from_numpy(session.run(["OUTPUT__0"], feed)[0]).float()
            if tuple(got.shape) != tuple(want.shape):
                raise ExportError(
                    f"the ONNX model answers shape {list(got.shape)} for inputs of shape "
                    f"{[list(t.shape) for t in ex]}; the variant answers {list(want.shape)}"
                )
            scale = max(1.0, float(want.abs().max()))
            worst = max(worst, float((got - want).abs().max()) / scale)
    if worst > tol:
        raise ExportError(
            f"the ONNX model differs from the variant by up to {worst:.3g} of the output's "
            f"scale (allowed {tol}); the model likely has input-dependent control flow"
        )
    return worst


def export_onnx(
    variant_dir: str | Path,
    repo_dir: str | Path,
    model_name: str | None = None,
    max_batch_size: int = 64,
    input_shape: Sequence[int] | None = None,
) -> Path:
    """Write ``repo_dir/<name>/`` (config.pbtxt, 1/model.onnx, slimserve.json) for a variant.

    Arguments as for :func:`service.export.triton.export_triton`; returns the model directory.
    """
    if max_batch_size < 1:
        raise ExportError(f"max_batch_size must be at least 1, got {max_batch_size}")
    prep = prepare(variant_dir, model_name, input_shape)
    if prep.plan.get("quantization", "none") != "none":
        raise ExportError(
            f"{prep.plan.get('quantization')} variants have no ONNX form (ONNX has no operator "
            "for torch's dynamic int8 Linear); export them with --format triton (TorchScript)"
        )
    data = to_onnx(prep)
    max_diff = check(prep, data)
    with torch.no_grad():
        out = prep.wrapper(*prep.examples[0])
    outputs = [TensorSpec("OUTPUT__0", TRITON_TYPES[out.dtype], tuple(out.shape[1:]))]
    model = TritonModel(
        name=prep.name,
        path=Path(repo_dir) / prep.name,
        kind=prep.kind,
        inputs=prep.inputs,
        outputs=outputs,
        max_batch_size=max_batch_size,
    )
    model.meta = export_meta(
        prep, PLATFORM, prep.inputs, outputs, opset=_opset(prep), export_max_rel_diff=max_diff
    )
    return write_model_dir(model, PLATFORM, lambda d: (d / MODEL_FILE).write_bytes(data))
