"""What a variant directory must hold before anything is built from it.

A variant's files come from disk, a shared cache or a task directory: any of them may be
missing, truncated, flipped or valid JSON of the wrong type. :func:`verify_files` reads
``plan.json`` and ``report.json``, checks that each is an object of the expected shape, and
checks every file the plan names against its sha256 (the report's too, and the plan's own
digest, in variants saved since they were added), without building a model; anything that does
not hold is a :class:`~compression.core.errors.VariantError` naming the file and the rule.
:func:`compression.output.variant.load_variant` runs it first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from compression.core.errors import VariantError
from compression.forms.runtimes import ONNX_FILE
from compression.output.report import CompressionReport

PLAN_FILE = "plan.json"
REPORT_FILE = "report.json"
WEIGHTS_FILE = "weights.safetensors"
SMOOTHING_FILE = "smoothing.safetensors"
# 2: the structure also records every changed integer attribute (head counts, split sizes)
# and the model config's changed fields (<config>). Version 1 plans replay unchanged.
PLAN_VERSION = 2
READABLE_VERSIONS = (1, 2)
RUNTIMES = ("torch", "onnxruntime")

_NUMBER = (int, float)
# report.json: the keys the contract names, with the type each must have.
_REPORT_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str,
    "profile": str,
    "accepted": bool,
    "reason": str,
    "params_before": int,
    "params_after": int,
    "macs_before": int,
    "macs_after": int,
    "latency_ms_before": _NUMBER,
    "latency_ms_after": _NUMBER,
    "speedup": _NUMBER,
    "metric": str,
    "metric_before": _NUMBER,
    "metric_after": _NUMBER,
    "fidelity": _NUMBER,
    "budget": _NUMBER,
    "seconds": _NUMBER,
}
_REPORT_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "steps": list,
    "candidates": list,
    "timings": dict,
    "runtimes": list,
    "splits": dict,
    "task_metrics": (dict, type(None)),
    "task": (dict, type(None)),
    "neighbour_recall": (*_NUMBER, type(None)),
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def plan_digest(plan: dict) -> str:
    """sha256 of a plan's keys but its own digest, as canonical JSON (what ``plan_sha256`` holds:
    the plan vouches for every other file, this for the plan)."""
    rest = {k: v for k, v in plan.items() if k != "plan_sha256"}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(plan: dict) -> dict:
    """``plan`` with its own digest (``plan_sha256``), as :meth:`CompressedModel.save` writes it."""
    return {**plan, "plan_sha256": plan_digest(plan)}


def read_object(directory: str | Path, name: str) -> dict:
    """The JSON object in ``directory/name``; :class:`VariantError` if it is missing, not JSON,
    or JSON of another type (``[]``, ``null``, a string)."""
    path = Path(directory) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VariantError(f"{directory} is not a variant: {name} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise VariantError(f"{path} is corrupted: {err}") from None
    if not isinstance(data, dict):
        raise VariantError(f"{path} is corrupted: a JSON object expected, got {_kind(data)}")
    return data


def check_version(plan: dict, directory: str | Path) -> None:
    """Refuse a plan written by another plan format: replaying it could load wrong weights."""
    version = plan.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise VariantError(
            f"{directory}: plan.json has version {version!r}; this SlimServe reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Compress the model again with this "
            "version (slimserve compress, or POST /admin/models/{name}/compress), or load it "
            "with the SlimServe that saved it"
        )


def check_plan(plan: dict, directory: str | Path) -> None:
    """The plan's fields have the types ``load_variant`` replays (after :func:`check_version`)."""
    where = f"{Path(directory) / PLAN_FILE}"
    _typed(plan, "weights_sha256", str, where)
    _typed(plan, "dtype", str, where)
    _typed(plan, "quantization", str, where)
    structure = _typed(plan, "structure", dict, where)
    if not all(isinstance(v, dict) for v in structure.values()):
        raise VariantError(f"{where} is corrupted: 'structure' must map module names to objects")
    optional = (("sparsity", str), ("smoothing_sha256", str), ("tied", dict))
    optional += (("report_sha256", str), ("plan_sha256", str))
    for key, kind in optional:
        _typed(plan, key, kind, where, required=False)
    _typed(plan, "packed", bool, where, required=False)
    _typed(plan, "profile", (dict, type(None)), where, required=False)
    if not all(isinstance(v, str) for v in plan.get("tied", {}).values()):
        raise VariantError(f"{where} is corrupted: 'tied' must map names to names")
    runtime = plan.get("runtime", "torch")
    if runtime not in RUNTIMES:
        raise VariantError(f"{where} is corrupted: 'runtime' is {runtime!r}, not one of {RUNTIMES}")
    if runtime == "onnxruntime":
        _typed(plan, "onnx_sha256", str, where)
        _typed(plan, "onnx_inputs", list, where)


def read_report(directory: str | Path) -> CompressionReport:
    """``report.json`` as a :class:`CompressionReport`, after its keys' types are checked."""
    data = read_object(directory, REPORT_FILE)
    where = f"{Path(directory) / REPORT_FILE}"
    for key, kind in _REPORT_TYPES.items():
        _typed(data, key, kind, where)
    for key, kind in _REPORT_OPTIONAL.items():
        _typed(data, key, kind, where, required=False)
    if not all(isinstance(c, dict) for c in data.get("candidates", [])):
        raise VariantError(f"{where} is corrupted: 'candidates' must be a list of objects")
    try:
        return CompressionReport.from_dict(data)
    except (TypeError, ValueError) as err:  # a candidate with unknown or missing fields
        raise VariantError(f"{where} is corrupted: {err}") from None


def verify_files(directory: str | Path, onnx: bool = True) -> tuple[dict, CompressionReport]:
    """The plan and report of a variant directory whose files all pass their checks.

    Builds no model: plan and report are objects of the expected shape, the plan's version is
    readable, and the weights (and the smoothing scales and ONNX graph where the plan names
    them) match the plan's sha256. ``onnx=False``: the ONNX graph is not needed (the torch
    form of an ONNX Runtime variant) and not checked.
    """
    directory = Path(directory)
    plan = read_object(directory, PLAN_FILE)
    check_version(plan, directory)
    check_plan(plan, directory)
    # Plans saved before these digests existed have neither: their JSON and types are checked.
    if "plan_sha256" in plan and plan["plan_sha256"] != plan_digest(plan):
        raise VariantError(
            f"{directory / PLAN_FILE}: its digest does not match its content; the file was changed"
        )
    if "report_sha256" in plan:
        _check_sum(directory, REPORT_FILE, plan["report_sha256"])
    report = read_report(directory)
    _check_sum(directory, WEIGHTS_FILE, plan["weights_sha256"])
    if plan.get("smoothing_sha256") is not None:
        _check_sum(directory, SMOOTHING_FILE, plan["smoothing_sha256"])
    if onnx and plan.get("runtime") == "onnxruntime":
        _check_sum(directory, ONNX_FILE, plan["onnx_sha256"])
    return plan, report


def _check_sum(directory: Path, name: str, expected: str) -> None:
    path = directory / name
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise VariantError(f"{directory} is not a variant: {name} is missing") from None
    except OSError as err:
        raise VariantError(f"{path} cannot be read: {err.strerror or err}") from None
    if actual != expected:
        raise VariantError(
            f"{path}: checksum {actual[:12]}... does not match the plan's {expected[:12]}...; "
            "the file was changed or truncated"
        )


def _typed(data: dict, key: str, kind, where: str, required: bool = True):
    if key not in data:
        if required:
            raise VariantError(f"{where} is corrupted: '{key}' is missing")
        return None
    value = data[key]
    wrong_bool = isinstance(value, bool) and kind in (int, _NUMBER)
    if wrong_bool or not isinstance(value, kind):
        raise VariantError(f"{where} is corrupted: '{key}' is {_kind(value)}")
    return value


def _kind(value: object) -> str:
    return "null" if value is None else f"a JSON {type(value).__name__} ({str(value)[:40]!r})"
