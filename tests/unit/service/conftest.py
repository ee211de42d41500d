"""The in-process HTTP client over the module's ``core`` fixture (see ``harness.py``)."""

from __future__ import annotations

import pytest

from service.serving.app import create_app

from .harness import Client


@pytest.fixture(scope="module")
def client(core):
    c = Client(create_app(core))
    yield c
    c.close()
