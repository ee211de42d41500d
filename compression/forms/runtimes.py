"""The runtime as one more measured step: ONNX Runtime beside torch, chosen by measurement.

After pruning and rebuild, the most pruned candidate within budget is exported to ONNX
(``torch.onnx.export``, dynamic batch and sequence axes) and measured under ONNX Runtime in
fp32 and int8 (dynamic quantization, per-channel weights) on the profile's threads, exactly
like every other candidate: latency on the same batch, the metric on the same validation data.
The search then serves the fastest candidate within budget, whatever runtime it needs.

:class:`OrtModule` is an ``nn.Module`` whose forward runs an ONNX Runtime session, so the
service, the batching and the swap do not care which runtime serves. A variant saves its ONNX
graph as ``model.onnx`` with a sha256 in the plan; :func:`load_onnx` refuses a changed file.
Without ``onnx``/``onnxruntime`` installed (the ``onnx`` extra) the step is skipped and the
report says so; a model the exporter cannot capture faithfully (data-dependent control flow,
shapes baked in at export) falls back to torch with the reason in the report.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from compression.core import outputs
from compression.core.errors import VariantError
from compression.core.inputs import Batch, batch_size, call, index, main_output
from compression.core.quiet import captured

RUNTIMES = ("torch", "onnxruntime")
ONNX_FILE = "model.onnx"
# Largest difference between ONNX Runtime fp32 and torch on a batch of another shape than the
# one exported with: above it the export is not faithful (shapes or branches baked in).
EXPORT_ATOL = 1e-3


def available() -> str | None:
    """None when ONNX export and ONNX Runtime can run here, else why not."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as err:
        return f"onnxruntime not installed ({err.name}); `pip install slimserve[onnx]`"
    return None


class _Positional(nn.Module):
    """A model called with positional tensors (what export takes), answering with the tensors
    of its answer in :func:`compression.core.outputs.leaves` order."""

    def __init__(self, model: nn.Module, names: list[str] | None, spec: outputs.Spec) -> None:
        super().__init__()
        self.model, self.names, self.spec = model, names, spec

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = self.names is not None
        out = self.model(**dict(zip(self.names, tensors, strict=True))) if named else None
        out = out if named else self.model(*tensors)
        return tuple(outputs.leaves(out, self.spec))


def _names(batch: Batch) -> list[str]:
    if isinstance(batch, dict):
        return list(batch)
    if isinstance(batch, tuple | list):
        return [f"input_{i}" for i in range(len(batch))]
    return ["input"]


def _tensors(batch: Batch) -> tuple[torch.Tensor, ...]:
    if isinstance(batch, dict):
        return tuple(batch.values())
    if isinstance(batch, tuple | list):
        return tuple(batch)
    return (batch,)


def output_names(spec: outputs.Spec) -> list[str]:
    """The graph's output names: ``output`` for the main answer (what a plan of one output
    called it), ``output_<i>`` for the answer's other tensors."""
    main = outputs.main_leaf(spec)
    return ["output" if i == main else f"output_{i}" for i in range(outputs.count(spec))]


def export(model: nn.Module, example: Batch) -> tuple[bytes, outputs.Spec]:
    """The ONNX graph of ``model`` and the structure of its answer
    (:mod:`compression.core.outputs`): every tensor of the answer is an output of the graph
    (opset 17; inputs and outputs have dynamic axes 0 and 1 where they have them). Attention
    runs in its eager form for export: the fused kernel's masks would be traced with the
    example's sequence length."""
    model = copy.deepcopy(model).eval().cpu()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "_attn_implementation"):
        config._attn_implementation = "eager"
    names = _names(example)
    tensors = tuple(t.cpu() for t in _tensors(example))
    with torch.no_grad():
        spec = outputs.describe(call(model, example))
    wrapped = _Positional(model, names if isinstance(example, dict) else None, spec)
    dynamic = {
        n: {d: f"{n}_{d}" for d in range(min(t.dim(), 2))}
        for n, t in zip(names, tensors, strict=True)
    }
    with torch.no_grad():
        answer = wrapped(*tensors)
    out_names = output_names(spec)
    for n, t in zip(out_names, answer, strict=True):
        dynamic[n] = {d: f"{n}_{d}" for d in range(min(t.dim(), 2))}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            tensors,
            buf,
            input_names=names,
            output_names=out_names,
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue(), spec


def quantize_int8(onnx_bytes: bytes) -> tuple[bytes, str | None]:
    """ONNX Runtime dynamic int8 quantization (per-channel weights) of an ONNX graph; and the
    one-line summary of what the quantizer said (:mod:`compression.core.quiet`), if anything."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="slimserve-ort-") as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(onnx_bytes)
        with captured("onnxruntime int8") as said:
            quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8)
        return dst.read_bytes(), said.summary()


class OrtModule(nn.Module):
    """An ONNX graph served by ONNX Runtime, called like the torch model it was exported from
    and answering like it: ``spec`` (:func:`compression.core.outputs.describe` of the model's
    answer) rebuilds the graph's outputs into the model's type (a ``ModelOutput`` with the
    same fields, a tuple, a tensor); None, a graph of one output, answers with that tensor.
    ``threads``: ONNX Runtime's intra-op threads (the profile's, like torch's).
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        input_names: list[str],
        threads: int | None = None,
        spec: outputs.Spec | None = None,
    ):
        super().__init__()
        import onnxruntime as ort  # an optional dependency (the onnx extra)

        self.onnx_bytes = onnx_bytes
        self.input_names = list(input_names)
        self.spec = spec
        options = ort.SessionOptions()
        self.threads = threads or torch.get_num_threads()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No spin-waiting: ONNX Runtime's threads otherwise spin after each run, taking the cores
        # from whatever runs next (torch, another session, the server). Timed side by side on
        # digits-cnn, a session run right after another was clearly slower with spinning and one
        # run alone was no faster with it, so spinning only costs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])

    def forward(self, *args, **kwargs):
        tensors = list(args) + [kwargs[n] for n in self.input_names[len(args) :] if n in kwargs]
        feeds = {
            n: t.detach().cpu().numpy() for n, t in zip(self.input_names, tensors, strict=False)
        }
        if self.spec is None:
            (out,) = self.session.run(["output"], feeds)
            return torch.from_numpy(out)
        found = self.session.run(output_names(self.spec), feeds)
        return outputs.rebuild(self.spec, [torch.from_numpy(t) for t in found])

    def __deepcopy__(self, memo) -> OrtModule:  # sessions do not copy; a new one does
        return OrtModule(self.onnx_bytes, self.input_names, self.threads, self.spec)


def faithful(module: nn.Module, ort_module: OrtModule, batches: list[Batch]) -> float:
    """Largest absolute difference between torch and ONNX Runtime on ``batches``."""
    worst = 0.0
    with torch.inference_mode():
        for b in batches:
            a = main_output(call(module, b)).float().cpu()
            c = main_output(call(ort_module, b))
            if a.shape != c.shape:
                return float("inf")
            worst = max(worst, float((a - c).abs().max()))
    return worst


def candidates(
    module: nn.Module, example: Batch, checks: list[Batch], threads: int | None, int8: bool = True
):
    """``[(precision, OrtModule)]`` for ONNX Runtime fp32 and (``int8``) int8, and notes of what
    was skipped.

    ``checks`` are batches of other shapes than ``example``: the fp32 graph must reproduce
    torch on them within :data:`EXPORT_ATOL`, or no ONNX candidate is offered.
    """
    reason = available()
    if reason is not None:
        return [], [reason]
    start = time.perf_counter()
    with captured("onnx export") as said:
        try:
            graph, spec = export(module, example)
        except Exception as err:  # an exporter failure is a fallback, never a failed compression
            graph, failed = None, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    notes = [said.summary()] if said.summary() else []
    if graph is None:
        return [], [f"onnx export failed, torch serves: {failed}", *notes]
    names = _names(example)
    fp32 = OrtModule(graph, names, threads, spec)
    diff = faithful(module, fp32, checks)
    notes.insert(
        0, f"exported in {time.perf_counter() - start:.1f} s; max |ort - torch| {diff:.2e}"
    )
    if not diff <= EXPORT_ATOL:
        notes.append(
            f"onnx export is not faithful on other input shapes (max difference {diff:.3g} > "
            f"{EXPORT_ATOL}): data-dependent shapes or branches; torch serves"
        )
        return [], notes
    out = [("onnxruntime-fp32", fp32)]
    if not int8:
        return out, notes
    try:
        int8_graph, said = quantize_int8(graph)
        out.append(("onnxruntime-int8", OrtModule(int8_graph, names, threads, spec)))
        notes += [said] if said else []
    except Exception as err:
        notes.append(f"onnxruntime int8 quantization failed: {type(err).__name__}: {err}")
    return out, notes


def check_batches(validation: list, example: Batch) -> list[Batch]:
    """A few rows of up to two validation batches, in shapes other than the example's (export
    checks: a batch size and sequence length baked into the graph show up on any other)."""
    rows = 3 if batch_size(example) != 3 else 2
    out = [index(x, slice(0, min(rows, batch_size(x)))) for x, _ in validation[:2]]
    return out or [example]


# ---- saving and loading -----------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_onnx(directory: Path, module: OrtModule) -> dict:
    """Write ``model.onnx``; the plan entries that load it back."""
    path = Path(directory) / ONNX_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(module.onnx_bytes)
    os.replace(tmp, path)
    return {
        "onnx_sha256": sha256(module.onnx_bytes),
        "onnx_inputs": module.input_names,
        "onnx_outputs": module.spec,
    }


def load_onnx(directory: Path, plan: dict, threads: int | None = None) -> OrtModule:
    """The plan's ONNX Runtime module, after its checksum passes."""
    path = Path(directory) / ONNX_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VariantError(
            f"{directory}: the plan serves ONNX Runtime and {ONNX_FILE} is missing"
        ) from None
    if sha256(data) != plan.get("onnx_sha256"):
        raise VariantError(
            f"{path}: checksum does not match the plan's; the file was changed or truncated"
        )
    reason = available()
    if reason is not None:
        raise VariantError(f"{directory} is served by ONNX Runtime: {reason}")
    return OrtModule(data, plan["onnx_inputs"], threads, plan.get("onnx_outputs"))
