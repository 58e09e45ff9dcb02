"""Suite-wide hooks: each test's start and time limit, for tests/child_process.py."""

from __future__ import annotations

import pytest

from tests import child_process


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
