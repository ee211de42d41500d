"""A compressed variant: the smaller module, its report, and save/load without pickle.

A variant directory holds::

    weights.safetensors   float weights of the pruned model (before int8 quantization); mostly
                          zero tensors (unstructured sparsity) as values + bitmask, exactly
                          (compression.forms.compact)
    smoothing.safetensors int8 variants with smoothed inputs: each smoothed Linear layer's
                          scales (compression.forms.smoothing), checksummed in the plan
    plan.json             source, structure diff, precision, the sha256 of the weights and of
                          report.json, and its own digest (plan_sha256)
    report.json           the CompressionReport (a contract other tools read: keep its keys)
    report.png            metric vs latency of every candidate the search tried

Loading takes a freshly built original from the caller (the engine knows no model catalog; the
service's catalog offers ``service.models.load(dir)``, which builds the model the plan names),
checks every file first (compression.output.checks: JSON objects of the expected shape,
checksums; anything else is a VariantError), replays the plan, loads the weights, and
re-applies the precision step. ``load_variant(..., runtime="torch")`` gives the torch form of any variant, an ONNX
Runtime one included, without importing onnxruntime (what a TorchScript export needs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from compression.core.errors import VariantError
from compression.forms import compact, precision
from compression.forms.packing import served
from compression.forms.runtimes import load_onnx, save_onnx
from compression.output import plan as plan_mod
from compression.output.checks import (
    PLAN_VERSION,
    READABLE_VERSIONS,
    SMOOTHING_FILE,
    check_version,
    read_object,
    seal,
    sha256_file,
    verify_files,
)
from compression.output.report import CompressionReport

__all__ = [
    "PLAN_VERSION",
    "READABLE_VERSIONS",
    "CompressedModel",
    "check_version",
    "load_variant",
    "read_plan",
    "sha256_file",
    "verify_files",
]


@dataclass
class CompressedModel:
    """The result of :func:`compression.compress`.

    ``module`` is a plain ``nn.Module`` called exactly like the original (for Hugging Face
    models, the pruned transformers model itself).
    """

    module: nn.Module
    report: CompressionReport
    float_module: nn.Module
    plan: dict = field(default_factory=dict)
    smoothing: dict[str, torch.Tensor] | None = None  # int8 input scales by Linear layer name

    def save(self, directory: str | Path) -> Path:
        """Write weights, plan, report.json and report.png into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.float_module.state_dict()
        tied = plan_mod.tied_names(state)  # GPT-2's lm_head is its embedding: stored once
        state = {k: v.detach().contiguous() for k, v in state.items() if k not in tied}
        weights = directory / "weights.safetensors"
        compact.save(state, weights)
        plan = dict(self.plan, weights_sha256=sha256_file(weights), version=PLAN_VERSION)
        if tied:
            plan["tied"] = tied
        if self.smoothing:
            path = directory / SMOOTHING_FILE
            save_file({k: v.contiguous() for k, v in self.smoothing.items()}, str(path))
            plan["smoothing_sha256"] = sha256_file(path)
        if plan.get("runtime") == "onnxruntime":  # the served graph beside the float weights
            plan.update(save_onnx(directory, self.module))
        _write_json(directory / "report.json", self.report.to_dict())
        plan["report_sha256"] = sha256_file(directory / "report.json")
        _write_json(directory / "plan.json", seal(plan))  # last: it vouches for the rest
        self.report.plot(directory / "report.png")
        return directory


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_plan(directory: str | Path) -> dict:
    """The plan.json of a variant directory (what ``load_variant`` replays): a JSON object,
    else :class:`VariantError`."""
    return read_object(directory, "plan.json")


# What load_variant(runtime=...) accepts: None serves the variant in the runtime its plan names.
LOAD_RUNTIMES = (None, "torch", "onnxruntime")


def load_variant(
    directory: str | Path, model: nn.Module, runtime: str | None = None, threads: int | None = None
) -> CompressedModel:
    """Load a saved variant onto ``model``, a freshly built copy of the original.

    ``runtime`` picks the form of ``.module``: ``None`` the runtime the plan serves with (an
    :class:`~compression.forms.runtimes.OrtModule` for an ONNX Runtime variant), ``"torch"`` the torch
    form whatever runtime serves it (the float weights in the plan's dtype and quantization,
    ``precision.apply``; for an ONNX Runtime variant that is float32, since ONNX Runtime's int8
    lives in its graph, not in the plan), never importing onnxruntime, so a TorchScript export
    works where ONNX Runtime is not installed. ``"onnxruntime"`` insists on the ONNX graph and
    refuses a variant that torch serves. A variant served on packed tokens
    (:mod:`compression.forms.packing`) comes as a ``PackedEncoder`` with ``None`` and as the padded
    module it wraps with ``"torch"`` (the same outputs on real tokens; what TorchScript traces).
    ``threads``: ONNX Runtime's intra-op threads (a
    server passes its per-model torch budget); default the profile's.

    >>> variant = load_variant("out/", model=build_original())  # doctest: +SKIP
    >>> scriptable = load_variant("out/", model=build_original(), runtime="torch")  # doctest: +SKIP
    """
    if runtime not in LOAD_RUNTIMES:  # a caller's mistake, not a variant's
        raise ValueError(
            f"load_variant: runtime={runtime!r} is not one of None (the plan's runtime), "
            "'torch' (the torch form of any variant) or 'onnxruntime' (the variant's ONNX graph)"
        )
    if not isinstance(model, nn.Module):
        raise VariantError(
            f"load_variant needs model=, a freshly built original (nn.Module), got "
            f"{type(model).__name__}"
        )
    directory = Path(directory)
    # Every file is checked before anything is built: types, version, checksums.
    plan, report = verify_files(directory, onnx=runtime != "torch")
    served_by = plan.get("runtime", "torch")
    if runtime == "onnxruntime" and served_by != "onnxruntime":
        raise VariantError(
            f"{directory}: runtime='onnxruntime' asked for, but this variant is served by "
            f"{served_by} and has no ONNX graph; load it with runtime=None or 'torch'"
        )
    try:
        return _build(directory, plan, report, model, runtime, threads)
    except VariantError:
        raise
    except Exception as err:  # files that passed their checks and still do not build
        raise VariantError(
            f"{directory}: the variant does not load onto this model: {type(err).__name__}: "
            f"{str(err)[:300]}"
        ) from None


def _build(
    directory: Path,
    plan: dict,
    report: CompressionReport,
    model: nn.Module,
    runtime: str | None,
    threads: int | None,
) -> CompressedModel:
    """The variant built from files that passed :func:`verify_files`."""
    served_by = plan.get("runtime", "torch")
    state = compact.load(directory / "weights.safetensors")
    state |= {name: state[kept] for name, kept in plan.get("tied", {}).items()}
    float_module = plan_mod.replay(model, plan["structure"], state).eval()
    sparsity = plan.get("sparsity", "none")
    if served_by == "onnxruntime" and runtime != "torch":
        # ONNX Runtime's intra-op threads: the caller's budget (a server's per-model share),
        # else what the profile measured with.
        threads = threads or (plan.get("profile") or {}).get("threads")
        module = load_onnx(directory, plan, threads=threads)
    else:
        smoothing = load_smoothing(directory, plan)
        module = precision.apply(
            float_module, plan["dtype"], plan["quantization"], sparsity, smoothing
        ).eval()
        if plan.get("packed") and runtime is None:  # served on the real tokens only
            module = served(module)
    return CompressedModel(module=module, report=report, float_module=float_module, plan=plan)


def load_smoothing(directory: Path, plan: dict) -> dict[str, torch.Tensor] | None:
    """The int8 smoothing scales a plan names, after their checksum passes; None without."""
    expected = plan.get("smoothing_sha256")
    if expected is None:
        return None
    path = directory / SMOOTHING_FILE
    if not path.is_file():
        raise VariantError(f"{directory}: the plan smooths int8 inputs and {path.name} is missing")
    if sha256_file(path) != expected:
        raise VariantError(
            f"{path}: checksum does not match the plan's; the file was changed or truncated"
        )
    return load_file(str(path))
