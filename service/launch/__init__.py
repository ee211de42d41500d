"""Start real SlimServe, fleet worker, Triton and S3 processes on free ports and wait for them.

For tests, benchmarks and local runs: one way to start ``slimserve serve`` and a real Triton
Inference Server (PyTriton, ``deploy/triton/serve_variant.py`` run by ``.venv-triton``'s python;
both live in a source checkout, not in an installed package)::

    with SlimServer(home, "digits-cnn").start() as slim:
        job = slim.compress("digits-cnn", "cpu")        # admin calls that raise on 4xx/5xx
        r = slim.admin("POST", "/models/digits-cnn/rollback")   # or the response, any status
        slim.activate("digits-cnn", job["variant"])
        with TritonServer(home / "triton.log", variant=slim.variant_dir(...)).start() as triton:
            client = triton.client()                    # tritonclient.http

Each server runs in its own session (process group) with its output in a log file, is ready
only when it answers, and is stopped with SIGTERM, then SIGKILL to that group only if it does
not exit. A server that exits or does not come up raises with the tail of its log.
"""

from service.launch.metrics_text import metric_samples, metric_value
from service.launch.process import ROOT, Process, free_ports, share_builtin_cache
from service.launch.s3 import S3Server
from service.launch.slimserve import ADMIN_TOKEN, AdminError, FleetWorker, SlimServer, start_all
from service.launch.triton import TRITON_PYTHON, TRITON_READY, TRITON_SERVE, TritonServer

__all__ = [
    "ADMIN_TOKEN", "ROOT", "TRITON_PYTHON", "TRITON_READY", "TRITON_SERVE", "AdminError",
    "FleetWorker", "Process", "S3Server", "SlimServer", "TritonServer", "free_ports",
    "metric_samples", "metric_value", "share_builtin_cache", "start_all",
]  # fmt: skip
