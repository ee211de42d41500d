"""``python -m service.serving.bentoml_main serve ...``: BentoML's command line, with the Prometheus
multiprocess directory off the service's home.

BentoML keeps ``prometheus_client``'s memory-mapped metric files under ``BENTOML_HOME``, which
``slimserve serve`` puts in the home beside the variant store. When a compression filled that
disk, the next request's metric update touched a page the full disk could not back and the
worker died with SIGBUS, again at every restart. The directory is ``SLIMSERVE_METRICS_DIR`` (in
k8s an emptyDir of its own), else a fresh directory in ``/dev/shm`` (memory) or the temp dir,
removed when the server exits (and, if it was killed, by the next server that starts).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path


def metrics_dir(configured: str | None = None) -> tuple[Path, bool]:
    """The metrics directory and whether it is a temporary one (removed at exit)."""
    configured = configured if configured is not None else os.environ.get("SLIMSERVE_METRICS_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path, False
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
    _remove_stale(base)
    prefix = f"slimserve-metrics-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base)), True


def _remove_stale(base: Path) -> None:
    """Remove the metrics directories of servers that were killed (their pid is gone)."""
    for path in base.glob("slimserve-metrics-*-*"):
        pid = path.name.split("-")[2]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def main(argv: list[str] | None = None) -> None:
    from bentoml._internal.configuration.containers import BentoMLContainer

    path, temporary = metrics_dir()
    if temporary:
        atexit.register(shutil.rmtree, path, True)
    # BentoML reads this provider (not the environment) when it prepares the directory and
    # hands it to its workers as PROMETHEUS_MULTIPROC_DIR.
    BentoMLContainer.prometheus_multiproc_dir.set(str(path))
    from bentoml_cli.cli import cli

    cli(args=argv if argv is not None else sys.argv[1:], prog_name="bentoml")


if __name__ == "__main__":
    main()
