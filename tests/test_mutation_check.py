"""tools/mutation_check.py stays usable: every mutation's pattern is still in its file, once, and
every test it runs exists (the check itself runs by hand: each mutation is a pytest run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gate_studies import load_tool

ROOT = Path(__file__).resolve().parents[1]
TOOL = load_tool("mutation_check")


@pytest.mark.parametrize("m", TOOL.MUTATIONS, ids=lambda m: m.key)
def test_each_mutation_still_applies(m) -> None:
    text = (ROOT / m.file).read_text()
    assert text.count(m.old) == 1, f"{m.key}: pattern not found exactly once in {m.file}"
    assert m.new != m.old
    for target in m.tests:
        if target.startswith("tests/"):
            file, _, name = target.partition("::")
            assert (ROOT / file).is_file(), target
            assert not name or f"def {name}(" in (ROOT / file).read_text(), target
