"""A compressed variant: the smaller module, its report, and save/load without pickle.

A variant directory holds::

    weights.safetensors   float weights of the pruned model (before int8 quantization); mostly
                          zero tensors (unstructured sparsity) as values + bitmask, exactly
                          (compression.forms.compact)
    smoothing.safetensors int8 variants with smoothed inputs: each smoothed Linear layer's
                          scales (compression.forms.smoothing), checksummed in the plan
    plan.json             source, structure diff, precision, and the weights' sha256
    report.json           the CompressionReport (a contract other tools read: keep its keys)
    report.png            metric vs latency of every candidate the search tried

Loading takes a freshly built original from the caller (the engine knows no model catalog; the
service's catalog offers ``service.models.load(dir)``, which builds the model the plan names),
replays the plan, loads the weights after checking their checksum, and re-applies the precision
step. ``load_variant(..., runtime="torch")`` gives the torch form of any variant, an ONNX
Runtime one included, without importing onnxruntime (what a TorchScript export needs).
"""

from __future__ import annotations

import hashlib
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
from compression.output.report import CompressionReport

# 2: the structure also records every changed integer attribute (head counts, split sizes)
# and the model config's changed fields (<config>). Version 1 plans replay unchanged.
PLAN_VERSION = 2
READABLE_VERSIONS = (1, 2)
SMOOTHING_FILE = "smoothing.safetensors"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        _write_json(directory / "plan.json", plan)
        _write_json(directory / "report.json", self.report.to_dict())
        self.report.plot(directory / "report.png")
        return directory


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_plan(directory: str | Path) -> dict:
    """The plan.json of a variant directory (what ``load_variant`` replays)."""
    path = Path(directory) / "plan.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VariantError(f"{directory} is not a variant: plan.json is missing") from None
    except json.JSONDecodeError as err:
        raise VariantError(f"{path} is corrupted: {err}") from None


def check_version(plan: dict, directory: str | Path) -> None:
    """Refuse a plan written by another plan format: replaying it could load wrong weights."""
    version = plan.get("version")
    if version not in READABLE_VERSIONS:
        raise VariantError(
            f"{directory}: plan.json has version {version!r}; this SlimServe reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Compress the model again with this "
            "version (slimserve compress, or POST /admin/models/{name}/compress), or load it "
            "with the SlimServe that saved it"
        )


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
    directory = Path(directory)
    try:
        plan = json.loads((directory / "plan.json").read_text())
        report = CompressionReport.from_dict(json.loads((directory / "report.json").read_text()))
    except FileNotFoundError as err:
        raise VariantError(
            f"{directory} is not a variant: {Path(err.filename).name} is missing"
        ) from None
    except (json.JSONDecodeError, TypeError) as err:
        raise VariantError(f"{directory}: plan.json or report.json is corrupted: {err}") from None
    check_version(plan, directory)
    served_by = plan.get("runtime", "torch")
    if runtime == "onnxruntime" and served_by != "onnxruntime":
        raise VariantError(
            f"{directory}: runtime='onnxruntime' asked for, but this variant is served by "
            f"{served_by} and has no ONNX graph; load it with runtime=None or 'torch'"
        )
    weights = directory / "weights.safetensors"
    if not weights.is_file():
        raise VariantError(f"{directory} is not a variant: weights.safetensors is missing")
    actual = sha256_file(weights)
    if actual != plan.get("weights_sha256"):
        raise VariantError(
            f"{weights}: checksum {actual[:12]}... does not match the plan's "
            f"{str(plan.get('weights_sha256'))[:12]}...; the file was changed or truncated"
        )
    if not isinstance(model, nn.Module):
        raise VariantError(
            f"load_variant needs model=, a freshly built original (nn.Module), got "
            f"{type(model).__name__}"
        )
    state = compact.load(weights)
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
