"""The built-in English sentences: disjoint sets, and a disk cache that gives the same lists."""

from __future__ import annotations

import json

import pytest

from service.models import text

pytestmark = pytest.mark.unit


def test_the_splits_are_disjoint_and_the_confirmation_half_is_the_user_guide():
    calibration, validation = text.sentence_split()
    assert (len(calibration), len(validation)) == (512, 384)
    assert not set(calibration) & set(validation)
    guide = set(text.guide_sentences())
    if len(guide) >= 192:  # odd positions: the IDLE user guide, no fit has seen it
        assert all(s in guide for s in validation[1::2])
        assert not any(s in guide for s in calibration + validation[0::2])


def test_a_cached_source_is_the_list_it_was_built_from(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMSERVE_HOME", str(tmp_path))
    built = text.stdlib_sentences.__wrapped__.__wrapped__()  # the source read afresh
    cached = text.stdlib_sentences.__wrapped__  # below lru_cache: the disk cache
    first = cached()  # written on first use...
    path = text._cache_file("stdlib_sentences")
    assert path.is_file() and json.loads(path.read_text()) == list(built)
    assert cached() == first == built  # ...and read back the same
    path.write_text("{not json")  # a damaged cache is rebuilt, not an error
    assert cached() == built
    assert json.loads(path.read_text()) == list(built)
