"""Serve SlimServe variants from a real Triton Inference Server (PyTriton), for checks and demos.

Run it with .venv-triton's python (``bash deploy/triton/install-venv.sh`` makes it)::

    .venv-triton/bin/python deploy/triton/serve_variant.py --repo REPO \\
        --http-port 8000 --grpc-port 8001 --metrics-port 8002
    .venv-triton/bin/python deploy/triton/serve_variant.py --variant DIR [--name NAME] ...

``--repo`` serves every model of a Triton model repository written by ``slimserve export
--format triton``: each ``config.pbtxt`` is read with Triton's own ModelConfig protobuf (so a
malformed one fails here as it would in Triton) and its ``1/model.pt`` TorchScript answers
under the same name, inputs, outputs, dtypes, dims and ``max_batch_size``, with dynamic
batching. ``--variant`` exports the variant into a temporary repository first
(:func:`service.export.triton.export_triton`, which loads it with ``load_variant``), then
serves that.

The pip wheel ships Triton with the Python backend only, so Triton's C++ libtorch backend does
not run here: PyTriton's Python backend hands each batch to this process, which runs the same
TorchScript file the libtorch backend would load on a GPU node.

Prints one line ``SLIMSERVE-TRITON READY http=<port> grpc=<port> metrics=<port> models=<a,b>``
once every model is loaded; stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import sysconfig
import tempfile
from pathlib import Path

READY = "SLIMSERVE-TRITON READY"


def _fix_library_path() -> None:
    """tritonserver links libpython: a pyenv/self-built interpreter keeps it off the default
    search path, so put the interpreter's LIBDIR on LD_LIBRARY_PATH (PyTriton copies the
    environment into the server process)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def _read_config(model_dir: Path):
    """Triton's ModelConfig protobuf, parsed by the exporter's own reader (text_format)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root
    from service.export.triton import read_config

    return read_config(model_dir)


def _numpy_dtype(data_type: int):
    import numpy as np
    from tritonclient.grpc import model_config_pb2 as pb

    table = {
        pb.TYPE_FP32: np.float32,
        pb.TYPE_FP16: np.float16,
        pb.TYPE_FP64: np.float64,
        pb.TYPE_INT64: np.int64,
        pb.TYPE_INT32: np.int32,
        pb.TYPE_BOOL: np.bool_,
    }
    if data_type not in table:
        raise SystemExit(f"serve_variant: unsupported tensor type {pb.DataType.Name(data_type)}")
    return table[data_type]


def _infer_func(module, input_names: list[str], output_names: list[str]):
    import torch
    from pytriton.decorators import batch

    @batch
    def infer(**inputs):
        args = [torch.from_numpy(inputs[name]) for name in input_names]
        with torch.inference_mode():
            out = module(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        return {name: t.cpu().numpy() for name, t in zip(output_names, outs, strict=True)}

    return infer


def bind_repo(triton, repo: Path) -> list[str]:
    """Bind every model directory of ``repo`` (config.pbtxt + 1/model.pt); their names."""
    import torch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    names = []
    for model_dir in sorted(p for p in repo.iterdir() if (p / "config.pbtxt").is_file()):
        config = _read_config(model_dir)
        if config.platform not in ("pytorch_libtorch", "") and config.backend != "pytorch":
            raise SystemExit(f"serve_variant: {model_dir.name}: platform {config.platform!r}")
        versions = sorted(
            (p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        if not versions or not (versions[-1] / "model.pt").is_file():
            raise SystemExit(f"serve_variant: {model_dir} has no <version>/model.pt")
        module = torch.jit.load(str(versions[-1] / "model.pt"), map_location="cpu").eval()

        def tensors(specs):
            return [
                Tensor(name=s.name, dtype=_numpy_dtype(s.data_type), shape=tuple(s.dims))
                for s in specs
            ]

        input_names = [s.name for s in config.input]
        output_names = [s.name for s in config.output]
        triton.bind(
            model_name=config.name or model_dir.name,
            infer_func=_infer_func(module, input_names, output_names),
            inputs=tensors(config.input),
            outputs=tensors(config.output),
            config=ModelConfig(
                max_batch_size=config.max_batch_size,
                batcher=DynamicBatcher() if config.HasField("dynamic_batching") else None,
            ),
            strict=True,
        )
        names.append(config.name or model_dir.name)
    if not names:
        raise SystemExit(f"serve_variant: {repo} holds no model directory with a config.pbtxt")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--repo", type=Path, help="a Triton model repository (slimserve export)")
    what.add_argument("--variant", type=Path, help="a variant directory (slimserve compress)")
    parser.add_argument("--name", help="model name for --variant (default <source>-<profile>)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="for --variant")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)

    _fix_library_path()
    logging.basicConfig(level=logging.INFO if args.log_verbose else logging.WARNING)
    import torch
    from pytriton.triton import Triton, TritonConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="slimserve-triton-") as tmp:
        repo = args.repo
        if args.variant is not None:
            sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project root
            from service.export.triton import export_triton

            repo = Path(tmp) / "repo"
            export_triton(args.variant, repo, args.name, max_batch_size=args.max_batch_size)
        config = TritonConfig(
            http_address=args.host,
            http_port=args.http_port,
            grpc_address=args.host,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            log_verbose=args.log_verbose,
            exit_on_error=True,
        )

        def stop(signum, _frame):  # serve() turns KeyboardInterrupt into a clean stop
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        with Triton(config=config, workspace=Path(tmp) / "workspace") as triton:
            names = bind_repo(triton, repo)
            print(
                f"{READY} http={args.http_port} grpc={args.grpc_port} "
                f"metrics={args.metrics_port} models={','.join(names)}",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):  # a signal before serve() began
                triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
