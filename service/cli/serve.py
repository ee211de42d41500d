"""``slimserve serve``: start the BentoML service with the given models and profile."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve models over HTTP and compress them in the background")
    p.add_argument(
        "--model", action="append", help="model source (repeat); default digits-cnn, minilm"
    )
    p.add_argument("--profile", default=None, help="auto, gpu, cpu, edge or a YAML file")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--workers", type=int, default=None, help="BentoML workers (default 1)")
    p.add_argument("--no-compress", action="store_true", help="serve originals only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    env = os.environ
    if args.model:
        env["SLIMSERVE_MODELS"] = ",".join(args.model)
    if args.profile:
        env["SLIMSERVE_PROFILE"] = args.profile
    if args.no_compress:
        env["SLIMSERVE_AUTO_COMPRESS"] = "false"
    home = Path(env.get("SLIMSERVE_HOME") or Path.home() / ".cache" / "slimserve")
    env["SLIMSERVE_HOME"] = str(home)
    env.setdefault("BENTOML_HOME", str(home / "bentoml"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    home.mkdir(parents=True, exist_ok=True)
    from service.serving.settings import Settings  # pydantic: loaded for `serve`, not `--help`

    Settings.from_env()  # fail here, with the variable's name, rather than inside a worker
    cmd = [
        sys.executable,
        "-m",
        "service.serving.bentoml_main",  # bentoml's CLI, metrics directory off the home
        "serve",
        "service.serving.app:SlimServe",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--working-dir",
        str(Path(__file__).resolve().parents[2]),
    ]
    if args.workers:
        env["SLIMSERVE_WORKERS"] = str(args.workers)
    os.execve(sys.executable, cmd, env)
    return 0
