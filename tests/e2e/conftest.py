from pathlib import Path

import pytest

from service.launch import SlimServer, share_builtin_cache


@pytest.fixture(scope="session")
def server_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("server-home")
    # Reuse the digits models the test session trained (same cache key, no retraining).
    share_builtin_cache(home)
    return home


@pytest.fixture(scope="session")
def server(server_home):
    # An accepted variant serves at once here; tests/e2e/test_liveloop.py runs the canary path.
    srv = SlimServer(server_home, SLIMSERVE_CANARY="false").start()
    yield srv
    srv.stop()
