"""``slimserve export``: a saved variant to a serving format (Triton model repository).

    slimserve export --variant DIR --format triton|onnx --out REPO [--name NAME]
                     [--max-batch-size N] [--input-shape C,H,W]

Writes ``REPO/<NAME>/config.pbtxt`` and ``REPO/<NAME>/1/model.pt`` (TorchScript, ``triton``) or
``1/model.onnx`` (Triton's ONNX Runtime backend, ``onnx``) and prints a JSON summary. Exit
status: 0 written, 2 bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 2
FORMATS = ("triton", "onnx")


def _shape(text: str) -> list[int]:
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dims like 1,8,8, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dims like 1,8,8, got {text!r}")
    return dims


def cmd_export(args: argparse.Namespace) -> int:
    # The exporters and the engine import torch: loaded for this command, never for `--help`.
    from compression.core.errors import CompressionError
    from service.export.onnx import export_onnx
    from service.export.triton import ExportError, export_triton, read_config, tensor_specs

    if not (args.variant / "plan.json").is_file():
        print(
            f"slimserve export: error: {args.variant} is not a variant directory "
            "(expected plan.json, report.json and weights.safetensors; make one with "
            "`slimserve compress`)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    if args.max_batch_size < 1:
        print("slimserve export: error: --max-batch-size must be at least 1", file=sys.stderr)
        return EXIT_BAD_INPUT
    export = export_onnx if args.format == "onnx" else export_triton  # same arguments
    try:
        path = export(
            args.variant,
            args.out,
            model_name=args.name,
            max_batch_size=args.max_batch_size,
            input_shape=args.input_shape,
        )
    except (ExportError, CompressionError, OSError) as err:
        print(f"slimserve export: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    config = read_config(path)
    summary = {
        "format": args.format,
        "model": config.name,
        "path": str(path),
        "platform": config.platform,
        "max_batch_size": config.max_batch_size,
        "inputs": {t.name: [t.data_type, list(t.dims)] for t in tensor_specs(config.input)},
        "outputs": {t.name: [t.data_type, list(t.dims)] for t in tensor_specs(config.output)},
    }
    print(json.dumps(summary, indent=2))
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``slimserve export`` on the main parser's subcommands."""
    p = sub.add_parser(
        "export",
        help="export a variant to a serving format (Triton model repository)",
        description=__doc__.split("\n")[0],
    )
    p.add_argument("--variant", required=True, type=Path, help="a variant directory")
    p.add_argument(
        "--format",
        default="triton",
        choices=FORMATS,
        help="triton: TorchScript (libtorch backend); onnx: ONNX (onnxruntime backend)",
    )
    p.add_argument("--out", required=True, type=Path, help="the Triton model repository")
    p.add_argument("--name", help="model name in the repository (default: <source>-<profile>)")
    p.add_argument(
        "--max-batch-size", type=int, default=64, help="Triton max_batch_size (default 64)"
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        help="input dims without the batch dimension, for py: sources (e.g. 3,32,32)",
    )
    p.set_defaults(func=cmd_export)
