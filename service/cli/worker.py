"""``slimserve worker``: compress for a fleet, serve nothing.

A worker is a replica without the HTTP edge: it shares ``SLIMSERVE_VARIANT_CACHE`` with the
serving replicas, takes the lease of each of its models' keys (``service.serving.fleet``),
compresses and publishes; serving replicas run with ``SLIMSERVE_JOBS=false`` and adopt what it
publishes, so no compression ever takes their cores. It keeps watching (a Deployment): a
variant withdrawn from the store (rolled back on live traffic) is compressed again. With
``--once`` it exits when every model's key holds a variant or an outcome (a Kubernetes Job).
``--metrics-port`` serves its Prometheus series (the lease events, the jobs it ran).
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import threading

from service.home import slimserve_home
from service.serving.bentoml_main import metrics_dir
from service.serving.core import Core  # imports no prometheus_client (metrics.py: lazily)
from service.serving.settings import Settings


def run(args: argparse.Namespace) -> int:
    env = os.environ
    if args.model:
        env["SLIMSERVE_MODELS"] = ",".join(args.model)
    if args.profile:
        env["SLIMSERVE_PROFILE"] = args.profile
    # A worker has no live traffic: no canary, no shadow evaluation; it always runs jobs.
    env.update(SLIMSERVE_JOBS="true", SLIMSERVE_AUTO_COMPRESS="true", SLIMSERVE_CANARY="false")
    env["SLIMSERVE_SHADOW_FRACTION"] = "0"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # The metric files off the home, as `slimserve serve` keeps them (a full disk must not
    # take the process down with SIGBUS): SLIMSERVE_METRICS_DIR, else a temporary directory.
    path, temporary = metrics_dir()
    if temporary:
        atexit.register(shutil.rmtree, path, True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    env.setdefault("SLIMSERVE_HOME", str(slimserve_home()))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        settings = Settings.from_env()
    except ValueError as err:
        print(f"slimserve worker: {err}", file=sys.stderr)
        return 2
    if not settings.variant_cache:
        print(
            "slimserve worker compresses for a fleet: set SLIMSERVE_VARIANT_CACHE to the store "
            "the serving replicas share (a directory or s3://bucket/prefix)",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.metrics_port:  # first: the probe answers while the models load
        _serve_metrics(args.metrics_port)
    core = Core(settings).start()
    fleet = core.fleet
    try:
        while not stop.wait(settings.fleet_poll_s):
            settled = 0
            for name in core.plane.bundles:
                try:
                    done = bool(fleet.cache.manifest(fleet.key(name)) or fleet.outcome(name))
                except Exception as err:  # an unreadable entry, the store unreachable
                    logging.getLogger("slimserve").warning("model %s: %s", name, err)
                    continue
                if done:
                    settled += 1
                elif name not in fleet.leases and name not in fleet.waiting:
                    fleet.watch(name)  # withdrawn from the store: compress it again
            if args.once and settled == len(core.plane.bundles):
                logging.getLogger("slimserve").info("every model's key is settled; exiting")
                break
    finally:
        core.close()
    return 0


def _serve_metrics(port: int) -> None:
    """``/metrics`` on ``port`` (every process's series: this one's and its jobs'), for
    Prometheus and for the worker's liveness probe."""
    # here, once run() has set PROMETHEUS_MULTIPROC_DIR: the client reads it when imported
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, registry=registry)
    logging.getLogger("slimserve").info("metrics on :%d/metrics", port)
