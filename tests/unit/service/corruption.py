"""The corruption matrix: every file of a variant directory, each way it can go bad.

``cases(directory)`` lists ``(file, kind)`` for the files a variant holds (weights, plan, report,
and the smoothing scales or ONNX graph where present); ``corrupt(directory, file, kind)`` does
it to a copy. Shared by the engine's and the service's matrix tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

FILES = (
    "weights.safetensors",
    "plan.json",
    "report.json",
    "smoothing.safetensors",
    "model.onnx",
)
BYTE_KINDS = ("missing", "truncated", "flipped")
# Valid JSON of the wrong type (or the right type, empty).
JSON_KINDS = {"list": "[]", "null": "null", "string": '"x"', "empty": "{}"}


# Every (file, kind) there is; a test skips those whose file its variant does not hold.
ALL_CASES = [
    (name, kind)
    for name in FILES
    for kind in (*BYTE_KINDS, *(JSON_KINDS if name.endswith(".json") else ()))
]


def cases(directory: Path) -> list[tuple[str, str]]:
    """Every (file, kind) that applies to the variant in ``directory``."""
    out = []
    for name in FILES:
        if not (Path(directory) / name).is_file():
            continue
        out += [(name, kind) for kind in BYTE_KINDS]
        if name.endswith(".json"):
            out += [(name, kind) for kind in JSON_KINDS]
    return out


def corrupt(directory: Path, name: str, kind: str) -> None:
    """Do ``kind`` to ``directory/name`` in place."""
    path = Path(directory) / name
    if kind == "missing":
        path.unlink()
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "flipped":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01  # one bit of one byte
        path.write_bytes(bytes(data))
    else:
        path.write_text(JSON_KINDS[kind])


def corrupted_copy(source: Path, target: Path, name: str, kind: str) -> Path:
    """A copy of the variant ``source`` at ``target`` with ``name`` corrupted by ``kind``."""
    shutil.copytree(source, target)
    corrupt(target, name, kind)
    return target
