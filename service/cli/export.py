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

from compression.core.errors import CompressionError
from service.export.onnx import export_onnx
from service.export.triton import ExportError, export_triton, read_config, tensor_specs

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def cmd_export(args: argparse.Namespace) -> int:
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
