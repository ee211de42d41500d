"""Issue 29, item 3: a task directory whose shipped variant is corrupted starts and serves the
original task model; the variant is refused with one log line and
``slimserve_store_refusals_total{reason="shipped_corrupted"}`` and never stored (so never
labelled accepted), and every later start says so again.

A real task directory (digits-mlp, digits-parity, compressed once per module with a fast
profile), copied and corrupted per case; a real core on ``task:DIR`` with its own model store.
"""

from __future__ import annotations

import logging
import shutil

import pytest

from service.serving.core import Core
from service.serving.registry import ORIGINAL
from service.serving.settings import Settings

from .corruption import ALL_CASES, corrupt
from .harness import TOKEN, isolated_model_store, refusals
from .test_variant_faults import FAST

pytestmark = pytest.mark.unit
NAME = "digits-mlp-task"


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """``slimserve compress --task classify`` with a fast profile, in process."""
    from compression.profiles import profile_from_dict
    from compression.task import compress_task, fit_head
    from service.models.sources import resolve
    from service.models.tasks import make_task, write_task_dir

    bundle = resolve("digits-mlp")
    task, validation, train, held_out = make_task(bundle, "digits-parity", None)
    task_model, _ = fit_head(bundle.factory(), task)
    profile = profile_from_dict({**FAST, "max_drop": 1.0})
    variant = compress_task(task_model, profile, task, validation=validation, source=bundle.source)
    assert variant.report.accepted, variant.report.reason
    out = variant.save(tmp_path_factory.mktemp("task") / "parity")
    write_task_dir(out, bundle, task_model, task.labels, train, held_out, name=NAME)
    return out


@pytest.fixture
def start(tmp_path):
    """Start a core serving ``task:DIR`` on its own home and model store; close it after."""
    made: list[Core] = []

    def run(directory) -> Core:
        for core in made:
            core.close()
        settings = Settings(home=tmp_path / "home", models=[f"task:{directory}"],
                            auto_compress=False, admin_token=TOKEN)  # fmt: skip
        made.append(Core(settings).start())
        return made[-1]

    with isolated_model_store(tmp_path / "models"):
        yield run
        for core in made:
            core.close()


def _stored(core: Core) -> list[str]:
    return [v["id"] for v in core.registry.variants(NAME) if v["id"] != ORIGINAL]


def test_an_intact_task_directory_serves_its_variant(task_dir, start):
    core = start(task_dir)
    vid = core.plane.served(NAME).active.variant
    assert vid != ORIGINAL and _stored(core) == [vid]


@pytest.mark.parametrize(("name", "kind"), ALL_CASES)
def test_a_corrupted_shipped_variant_is_refused_and_the_original_serves(
    name, kind, task_dir, start, tmp_path, caplog
):
    if not (task_dir / name).is_file():
        pytest.skip(f"this variant has no {name}")
    copy = shutil.copytree(task_dir, tmp_path / "task")
    corrupt(copy, name, kind)
    ships = not (name == "plan.json" and kind == "missing")  # no plan: no variant shipped
    for _ in range(2):  # every start says it again; nothing was stored the first time
        counted = refusals(NAME, "shipped_corrupted")
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="slimserve"):
            core = start(copy)
        assert core.ready and core.plane.served(NAME).active.variant == ORIGINAL
        assert _stored(core) == []
        assert refusals(NAME, "shipped_corrupted") == counted + ships, (name, kind)
        lines = [r.getMessage() for r in caplog.records if "[shipped_corrupted]" in r.getMessage()]
        assert len(lines) == ships, lines
