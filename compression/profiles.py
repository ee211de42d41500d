"""Device profiles: what "compressed for this device" means.

A profile is validated once, when it is loaded; unknown keys and bad values are errors that
name the key. The allowed importance criteria, rebuild steps and precisions are the names
registered in their modules (:mod:`compression.core.registry`), so a new one needs no edit here.
Built-ins live as YAML beside this module (``profiles/*.yaml``) and load through the same
validation as a user's file::

    >>> from compression.profiles import get_profile
    >>> get_profile("cpu").quantization
    'int8-dynamic'
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Literal

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from compression.core.errors import ProfileError
from compression.forms import precision
from compression.recovery.rebuild import STEPS
from compression.structure.importance import CRITERIA

_BUILTIN_DIR = Path(__file__).parent / "profiles"

# Sanity ranges that hold on any machine (a server narrows threads and device to its own).
MAX_THREADS = 1024
MAX_ROUND_TO = 1024
MAX_RATIOS = 32
MAX_CALIBRATION = 65536
MAX_LATENCY_BATCH = 4096
MAX_SECONDS = 7 * 24 * 3600.0


def _scalar_types(annotation) -> set:
    """The scalar types an annotation admits: ``int | None`` -> {int, None}, ``list[float]``
    -> {float}."""
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    if typing.get_origin(annotation) in (list, tuple):
        return set().union(*(_scalar_types(a) for a in args if a is not Ellipsis))
    return set().union(*(_scalar_types(a) for a in args))


class DeviceProfile(BaseModel):
    """How to compress for one kind of device. Every field can be set from YAML."""

    # NaN and infinity are no profile value: every number below has a finite range.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(
        min_length=1,
        max_length=128,
        description="Profile name, shown in reports, metrics and the admin API.",
    )
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where latency is measured.")
    dtype: str = Field(
        "float32",
        description="Weight/activation dtype of the served variant: float32, float16 or "
        "bfloat16 (precision modes registered in compression.forms.precision that name a dtype).",
    )
    quantization: str = Field(
        "none",
        description="none, or a quantizing precision mode registered in compression.forms.precision: "
        "int8-dynamic (int8 Linear weights via torch's dynamic quantization), kept only when it "
        "measurably speeds up the variant and stays within budget.",
    )
    sparsity: Literal["none", "2:4", "unstructured"] = Field(
        "none",
        description="Weight sparsity after pruning: 2:4 (CUDA sparse tensor cores, kept only when "
        "measurably faster) or unstructured (magnitude, to meet target_size_ratio in stored "
        "bytes: nonzero values + bitmask).",
    )
    round_to: int = Field(
        1, ge=1, le=MAX_ROUND_TO, description="Kept channel counts are multiples of this."
    )
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="torch threads while measuring."
    )
    target_speedup: float | None = Field(
        None, gt=1.0, le=1000.0, description="Measured latency speed-up the search aims for."
    )
    target_size_ratio: float | None = Field(
        None, gt=0.0, lt=1.0, description="Aim for params_after <= ratio * params_before."
    )
    max_drop: float = Field(
        0.01, ge=0.0, le=1.0, description="Largest allowed drop of a labelled metric (0.01 = 1 pt)."
    )
    min_fidelity: float = Field(
        0.95,
        ge=-1.0,
        le=1.0,
        description="Smallest allowed fidelity when there are no labels: cosine, top-1 or "
        "sequence agreement, or IoU, by the metric (the claim, a lower bound, can be under 0 "
        "on a few samples; -1 accepts any).",
    )
    metric: Literal["auto", "accuracy", "f1", "cosine", "perplexity", "top1", "sequence", "iou"] = (
        Field(
            "auto",
            description="What decides without a metric named by the caller: auto (labels: "
            "accuracy; else by the outputs' kind: top1 for class scores, sequence for class scores "
            "per step of one answer, iou for maps, cosine for embeddings), or one of accuracy, f1, "
            "cosine, perplexity, top1, sequence, iou.",
        )
    )
    max_perplexity_increase: float = Field(
        0.05,
        ge=0.0,
        le=100.0,
        description="Causal language models (metric perplexity): largest allowed relative rise "
        "of next-token perplexity on the validation text (0.05 = at most +5%).",
    )
    min_neighbour_recall: float | None = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="Cosine metric only: smallest allowed overlap of each validation sample's "
        "10 nearest neighbours with the original's (embedding retrieval); null to skip.",
    )
    importance: str = Field(
        "lsq",
        description="Channel importance, a criterion registered in compression.structure.importance: "
        "magnitude, taylor (sensitivity), activation (activation-aware), or lsq "
        "(activation-aware cost left after the least-squares refit; measured best).",
    )
    ratios: list[float] = Field(
        default_factory=lambda: [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        min_length=1,
        max_length=MAX_RATIOS,
        description="Candidate pruning amounts (fraction of channels removed), tried in order.",
    )
    allocation: Literal["uniform", "global", "search"] = Field(
        "search",
        description="How the amount is split across layers; search cuts both at the first "
        "amount and goes on with the one whose cut loses less.",
    )
    rebuild: list[str] = Field(
        default_factory=lambda: ["bn", "bias", "refit"],
        max_length=16,
        description="Rebuild ladder steps registered in compression.recovery.rebuild (bn, bias, refit, "
        "distill), cheapest first; each is kept only if it helps.",
    )
    ridge: float = Field(1e-2, ge=0.0, le=1e3, description="Relative ridge strength of the refit.")
    distill_seconds: float = Field(
        0.0,
        ge=0.0,
        le=MAX_SECONDS,
        description="Time box of the distillation step (within time_limit_s).",
    )
    calibration_size: int = Field(
        256, ge=8, le=MAX_CALIBRATION, description="Calibration samples used."
    )
    latency_batch: int = Field(
        8, ge=1, le=MAX_LATENCY_BATCH, description="Batch size of latency measurements."
    )
    latency_repeats: int = Field(
        15, ge=3, le=1000, description="Timed repeats (median is reported)."
    )
    time_limit_s: float = Field(
        300.0, gt=0, le=MAX_SECONDS, description="Wall-clock limit of one compression."
    )
    trace_time_limit_s: float = Field(
        60.0,
        gt=0,
        le=MAX_SECONDS,
        description="Time limit of tracing the model into Torch-Pruning's dependency graph; past "
        "it the model is treated as unprunable (precision step only) with the module it stopped at.",
    )
    runtimes: list[Literal["torch", "onnxruntime"]] = Field(
        default_factory=lambda: ["torch", "onnxruntime"],
        max_length=2,
        description="Runtimes the search may serve a variant with, each measured like an amount "
        "(compression.forms.runtimes); ONNX Runtime only on CPU, skipped where it is not installed.",
    )

    cpu_bfloat16: bool = Field(
        True,
        description="A quantizing CPU profile also tries bfloat16 (every layer, float32 in and "
        "out) where the CPU computes it natively (AVX512-BF16 or AMX), kept only when measured "
        "faster and within budget; false to try int8 alone.",
    )
    smoothing: bool = Field(
        True,
        description="int8: smooth each Linear layer's input channels into its weights, at the "
        "strength (none included) that keeps the most fidelity on the selection split "
        "(compression.forms.smoothing); false for plain int8.",
    )

    packed_tokens: bool = Field(
        True,
        description="Offer packed-token twins of BERT-family encoder candidates (the real tokens "
        "of a padded batch only; lossless in float32, compression.forms.packing), measured like any "
        "candidate; CPU profiles only.",
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value, info):
        # pydantic reads true as 1 for a number field; a profile that says `threads: true`
        # meant something else, and is refused rather than run on one thread.
        items = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, bool) for v in items) and bool not in _scalar_types(
            cls.model_fields[info.field_name].annotation
        ):
            raise ValueError(f"{value!r}: a boolean where a number or a name is expected")
        return value

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in precision.DTYPES or value not in precision.MODES:
            raise ValueError(
                f"unknown dtype {value!r}; expected one of "
                f"{[m for m in precision.MODES if m in precision.DTYPES]}"
            )
        return value

    @field_validator("quantization")
    @classmethod
    def _known_quantization(cls, value: str) -> str:
        if value != "none" and value not in precision.quantizations():
            raise ValueError(
                f"unknown quantization {value!r}; expected one of "
                f"{['none', *precision.quantizations()]}"
            )
        return value

    @field_validator("importance")
    @classmethod
    def _known_criterion(cls, value: str) -> str:
        CRITERIA.get(value)  # the error lists the registered criteria
        return value

    @field_validator("rebuild")
    @classmethod
    def _known_steps(cls, value: list[str]) -> list[str]:
        for step in value:
            STEPS.get(step)
        return value

    @model_validator(mode="after")
    def _check(self) -> DeviceProfile:
        if any(not 0.0 < r < 1.0 for r in self.ratios) or not self.ratios:
            raise ValueError(f"ratios must be fractions in (0, 1); got {self.ratios}")
        if "distill" in self.rebuild and self.distill_seconds <= 0:
            raise ValueError("rebuild lists 'distill' but distill_seconds is 0; set it > 0")
        if self.distill_seconds > self.time_limit_s:
            raise ValueError(
                f"distill_seconds: {self.distill_seconds:g} is over time_limit_s "
                f"({self.time_limit_s:g}); allowed range [0, {self.time_limit_s:g}]"
            )
        return self


# Pydantic error types of a value outside its field's range, or a list of the wrong length.
_RANGE_ERRORS = {
    "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
    "too_long", "too_short", "string_too_long", "string_too_short",
}  # fmt: skip


def allowed_range(key: str) -> str | None:
    """The range a profile key's value must lie in, as text, or None when it has none.

    >>> allowed_range("threads"), allowed_range("ratios"), allowed_range("importance")
    ('[1, 1024]', '1 to 32 items', None)
    """
    field = DeviceProfile.model_fields.get(key)
    if field is None:
        return None
    low, high, items = "", "", False
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge | annotated_types.Gt):
            low = f"[{m.ge:g}" if isinstance(m, annotated_types.Ge) else f"({m.gt:g}"
        elif isinstance(m, annotated_types.Le | annotated_types.Lt):
            high = f"{m.le:g}]" if isinstance(m, annotated_types.Le) else f"{m.lt:g})"
        elif isinstance(m, annotated_types.MaxLen):
            items, high = True, str(m.max_length)
        elif isinstance(m, annotated_types.MinLen):
            items, low = True, str(m.min_length)
    if items:
        noun = "characters" if field.annotation is str else "items"
        return f"{low or 0} to {high} {noun}" if high else f"at least {low} {noun}"
    if not low and not high:
        return None
    return f"{low or '(-inf'}, {high or 'inf)'}"


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "profile"
        got = repr(e.get("input"))
        got = got if len(got) <= 120 else got[:117] + "..."
        if e["type"] == "extra_forbidden":
            known = ", ".join(DeviceProfile.model_fields)
            parts.append(f"unknown key {where!r} (known keys: {known})")
        elif not e["loc"]:  # a rule across keys (a model validator): its message names them
            parts.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] in _RANGE_ERRORS and (rng := allowed_range(str(e["loc"][0]))):
            parts.append(f"{where}: {e['msg']}; allowed range {rng} (got {got})")
        else:
            parts.append(f"{where}: {e['msg']} (got {got})")
    return "; ".join(parts)


def profile_from_dict(data: dict, source: str = "profile") -> DeviceProfile:
    """Validate a mapping into a profile; errors name the bad key or value."""
    if not isinstance(data, dict):
        raise ProfileError(
            f"{source}: expected a mapping of profile keys, got {type(data).__name__}"
        )
    try:
        return DeviceProfile(**data)
    except ValidationError as err:
        raise ProfileError(f"{source}: {_describe(err)}") from None


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Load and validate one profile YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ProfileError(f"cannot read profile file {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ProfileError(f"{path} is not valid YAML: {err}") from None
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return profile_from_dict(data, source=str(path))


def builtin_profiles() -> dict[str, DeviceProfile]:
    """The built-in profiles, by name."""
    return {p.stem: load_profile_file(p) for p in sorted(_BUILTIN_DIR.glob("*.yaml"))}


PROFILES: dict[str, DeviceProfile] = builtin_profiles()


def get_profile(spec: str | Path | DeviceProfile) -> DeviceProfile:
    """A profile from a built-in name, a YAML path, or a profile (returned as is)."""
    if isinstance(spec, DeviceProfile):
        return spec
    text = str(spec)
    if text in PROFILES:
        return PROFILES[text]
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return load_profile_file(text)
    raise ProfileError(
        f"unknown profile {text!r}: expected one of {sorted(PROFILES)} or a path to a YAML file"
    )
