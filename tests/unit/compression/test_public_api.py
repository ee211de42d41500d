import pytest

import compression

pytestmark = pytest.mark.unit


def test_public_names_are_pinned():
    assert sorted(compression.__all__) == sorted(
        ["compress", "load_variant", "PROFILES", "DeviceProfile", "CompressedModel"]
    )
    for name in compression.__all__:
        assert hasattr(compression, name)
