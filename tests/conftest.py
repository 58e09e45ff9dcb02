"""Suite-wide hooks: each test's start and time limit, for tests/child_process.py, and the
``slow`` mark of the test files that run whole trainings, launchers or benchmarks (`make
test-fast` = ``pytest -m "not slow"`` leaves them out; CI runs everything)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import child_process

# Files whose tests start training runs, several ranks or benchmarks: minutes, not seconds.
SLOW = ("trainer/", "bench/test_gpu_check.py", "bench/test_step_e2e.py", "bench/test_step_baseline.py",
        "test_ablate.py", "models/test_sync_bn.py", "models/test_dinov3.py", "test_predict_files.py",
        "test_wrong_files.py", "data/test_data_bench.py", "test_visualize.py", "dataprep/test_dataprep_resume.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath / "tests"
    for item in items:
        relative = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if relative.startswith(SLOW):
            item.add_marker(pytest.mark.slow)


def _time_limit(item: pytest.Item) -> float | None:
    try:  # pytest-timeout's own reading of the ini setting, PYTEST_TIMEOUT, --timeout and markers
        from pytest_timeout import _get_item_settings
    except ImportError:
        return None
    try:
        return _get_item_settings(item).timeout
    except AttributeError:  # the plugin is installed but disabled (-p no:timeout)
        return None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    child_process.mark_test_start(_time_limit(item))


@pytest.fixture(scope="module")
def module_tmp(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory shared by one test file's tests, removed when the file is done.

    Runs, checkpoints and exported weights are hundreds of MB each; a whole suite's worth kept to
    the end of the session filled a CI machine's disk (17-22 GB). Passed tests' own ``tmp_path``
    goes at teardown (``tmp_path_retention_policy = "failed"`` in pyproject.toml); this is the
    same for a module's fixtures, kept only when one of the file's tests failed."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)
