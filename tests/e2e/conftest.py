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
def server(server_home, fast_profiles_dir):
    # An accepted variant serves at once here; tests/e2e/test_liveloop.py runs the canary path.
    # Jobs may ask for profile "fast" (tests/conftest.py: the cpu profile, fewer timing rounds).
    srv = SlimServer(
        server_home, SLIMSERVE_CANARY="false", SLIMSERVE_PROFILES_DIR=str(fast_profiles_dir)
    ).start()
    yield srv
    srv.stop()
