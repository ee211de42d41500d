"""``slimserve serve``: start the BentoML service with the given models and profile."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from service.home import slimserve_home
from service.serving.settings import Settings


def run(args: argparse.Namespace) -> int:
    env = os.environ
    if args.model:
        env["SLIMSERVE_MODELS"] = ",".join(args.model)
    if args.profile:
        env["SLIMSERVE_PROFILE"] = args.profile
    if args.no_compress:
        env["SLIMSERVE_AUTO_COMPRESS"] = "false"
    if args.grpc_port is not None:
        env["SLIMSERVE_GRPC_PORT"] = str(args.grpc_port)
    home = slimserve_home()
    env["SLIMSERVE_HOME"] = str(home)
    env.setdefault("BENTOML_HOME", str(home / "bentoml"))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    home.mkdir(parents=True, exist_ok=True)
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
