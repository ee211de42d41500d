"""The in-process HTTP harness: a started Core and ``create_app(core)`` through httpx.

Shared by the HTTP tests of this folder (the 4xx matrix, the fuzz tests, the fault tests).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from service.serving.core import Core
from service.serving.settings import Settings

TOKEN = "s3cret"
# A compression of digits-cnn in seconds: one amount, BatchNorm recalibration only, a loose
# budget. For tests of what the service does with a job's variant, not of the engine.
QUICK_PROFILE = {
    "name": "fast",
    "ratios": [0.3],
    "allocation": "uniform",
    "rebuild": ["bn"],
    "importance": "magnitude",
    "calibration_size": 64,
    "latency_repeats": 3,
    "max_drop": 0.5,
}


@contextlib.contextmanager
def started_core(home: Path, **settings) -> Iterator[Core]:
    """A started Core on ``home`` with the admin token, no background compression and the cpu
    profile (``settings`` override or add :class:`Settings` fields); closed afterwards."""
    base = {"profile": "cpu", "auto_compress": False, "admin_token": TOKEN}
    core = Core(Settings(home=home, **{**base, **settings})).start()
    try:
        yield core
    finally:
        core.close()


class Client:
    """A sync face over an ``httpx.AsyncClient`` on one event loop (the runtime's queues live
    on the loop that first used them)."""

    def __init__(self, app) -> None:
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def request(self, method: str, path: str, **kw) -> httpx.Response:
        return self.run(self.http.request(method, path, **kw))

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.request("POST", path, **kw)

    def admin(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {TOKEN}", **kw.pop("headers", {})}
        return self.request(method, "/admin" + path, headers=headers, **kw)

    def close(self) -> None:
        self.run(self.http.aclose())
        self.loop.close()


@contextlib.contextmanager
def isolated_model_store(root: Path) -> Iterator[None]:
    """Point BentoML's model store at ``root`` (a server does so with its own BENTOML_HOME):
    variants stored by one test module are invisible to the others."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    root.mkdir(parents=True, exist_ok=True)
    BentoMLContainer.model_store.set(ModelStore(root))
    try:
        yield
    finally:
        BentoMLContainer.model_store.reset()


def refusals(model: str, reason: str) -> float:
    """``slimserve_store_refusals_total{model, reason}`` in this process (0 before the first)."""
    from prometheus_client import REGISTRY

    labels = {"model": model, "reason": reason}
    return REGISTRY.get_sample_value("slimserve_store_refusals_total", labels) or 0.0
