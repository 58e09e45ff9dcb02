"""Kernel tests run the Triton kernels on the CPU through the interpreter.

``TRITON_INTERPRET=1`` must be in the environment before ``kernels._triton_impl`` is imported
(its ``@triton.jit`` functions are defined in interpreter mode only then) and while a kernel
launches. It is set for each test of this directory rather than at import time: pytest imports
every conftest during collection, so an import-time setting would reach the other test
directories too, and their backend "auto" would pick the slow interpreter.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
