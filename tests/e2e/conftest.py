import os
from pathlib import Path

import pytest

from .server import Server


@pytest.fixture(scope="session")
def server_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("server-home")
    # Reuse the digits models the test session trained (same cache key, no retraining).
    shared = Path(os.environ["SLIMSERVE_HOME"]) / "builtin"
    shared.mkdir(parents=True, exist_ok=True)
    (home / "builtin").symlink_to(shared, target_is_directory=True)
    return home


@pytest.fixture(scope="session")
def server(server_home):
    srv = Server(server_home).start()
    yield srv
    srv.stop()
