"""The ``slimserve`` command.

    slimserve compress --model NAME|hf:DIR|py:module:factory --profile P --out DIR
                       [--calibration FILE] [--validation FILE]
                       [--task classify --train FILE|python-topics|digits-parity]
    slimserve models | profiles
    slimserve serve | worker | export ...

Text models (``minilm``, ``hf:``) read calibration/validation as plain text, one sentence per
line; other models read ``.npy`` (inputs) or ``.npz`` (arrays ``x`` and ``y``). With ``--task
classify`` the files are labelled (``label<TAB>sentence`` lines or a CSV with label and text
columns; ``.npz`` with ``x`` and ``y``), a head is trained on the model, the task model is
compressed against the labels, and ``--out`` becomes a directory ``serve --model task:DIR`` serves.
Exit status: 0 accepted, 3 compressed but rejected (over budget), 2 bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path


def _shape(text: str) -> list[int]:
    try:
        dims = [int(d) for d in text.replace("x", ",").split(",") if d.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected dims like 1,8,8, got {text!r}") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive dims like 1,8,8, got {text!r}")
    return dims


def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP and compress them in the background")
    p.add_argument(
        "--model", action="append", help="model source (repeat); default digits-cnn, minilm"
    )
    p.add_argument("--profile", default=None, help="auto, gpu, cpu, edge or a YAML file")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="Open Inference Protocol v2 over gRPC (default 8001, SLIMSERVE_GRPC_PORT; 0: off)",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--workers", type=int, default=None, help="BentoML workers (default 1)")
    p.add_argument("--no-compress", action="store_true", help="serve originals only")
    p.set_defaults(func="serve:run")


def _add_worker(sub) -> None:
    p = sub.add_parser(
        "worker",
        help="compress for a fleet sharing SLIMSERVE_VARIANT_CACHE; serve nothing",
    )
    p.add_argument("--model", action="append", help="model source (repeat); default as serve")
    p.add_argument("--profile", default=None, help="auto, gpu, cpu, edge or a YAML file")
    p.add_argument(
        "--once", action="store_true", help="exit once every model has a variant or an outcome"
    )
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve /metrics on this port (0: off)"
    )
    p.set_defaults(func="worker:run")


def _add_export(sub: argparse._SubParsersAction) -> None:
    """Register ``slimserve export`` on the main parser's subcommands."""
    p = sub.add_parser(
        "export",
        help="export a variant to a serving format (Triton model repository)",
        description="export a saved variant to a serving format (Triton model repository)",
    )
    p.add_argument("--variant", required=True, type=Path, help="a variant directory")
    p.add_argument(
        "--format",
        default="triton",
        choices=("triton", "onnx"),
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
    p.set_defaults(func="export:cmd_export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimserve", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compress", help="compress a model for a device profile")
    p.add_argument("--model", required=True, help="built-in name, hf:DIR or py:module:factory")
    p.add_argument("--profile", default="cpu", help="gpu, cpu, edge or a YAML file")
    p.add_argument("--out", required=True, type=Path, help="directory for the variant")
    p.add_argument("--calibration", help="calibration data file")
    p.add_argument("--validation", help="validation data file (labelled with --task)")
    p.add_argument(
        "--metric",
        choices=["accuracy", "f1", "cosine", "perplexity", "top1", "sequence", "iou"],
        help="what decides (default: the profile's metric; auto: labels -> accuracy, else by "
        "the outputs' kind; the report says which decided and why)",
    )
    p.add_argument("--task", help="classify: prune for a labelled task (needs --train)")
    p.add_argument(
        "--train", help="labelled training data: FILE, python-topics or digits-parity (--task)"
    )
    p.add_argument("--head", default="linear", help="task head: linear or mlp (--task)")
    p.add_argument(
        "--finetune-s",
        type=float,
        default=5.0,
        help="fine-tune each pruned candidate to the task model for this long (0: off)",
    )
    p.add_argument("--name", help="served name of the task model (default <model>-task)")
    p.set_defaults(func="compress:cmd_compress")

    sub.add_parser("models", help="list model sources").set_defaults(func="compress:cmd_models")
    sub.add_parser("profiles", help="list device profiles").set_defaults(
        func="compress:cmd_profiles"
    )
    _add_serve(sub)
    _add_worker(sub)
    _add_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The command's module loads torch and the engine: imported after parsing, so `--help` (it
    # exits in parse_args) and a mistyped option answer at once.
    module, _, name = args.func.partition(":")
    return getattr(importlib.import_module(f"service.cli.{module}"), name)(args)


if __name__ == "__main__":
    sys.exit(main())
