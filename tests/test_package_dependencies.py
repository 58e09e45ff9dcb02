"""The packages depend one way: dataprep may import fastforec, fastforec never imports dataprep
(it runs the dataprep command line instead, through fastforec/dataprep_cli.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import fastforec

PACKAGE = Path(fastforec.__file__).resolve().parent
FORBIDDEN = "dataprep"


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every absolute module an ``import`` or ``from ... import`` names, wherever it stands
    (module level or inside a function)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_checker_sees_in_function_imports() -> None:
    source = "def f():\n    from dataprep.synth import make_synthetic\n    import dataprep.cli as c\n"
    assert _imported_modules(ast.parse(source)) == ["dataprep.synth", "dataprep.cli"]


def test_fastforec_never_imports_dataprep() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10  # the package itself, not an installed stub
    offenders = [f"{path.relative_to(PACKAGE.parent)}: import {name}"
                 for path in files for name in _imported_modules(ast.parse(path.read_text(), filename=str(path)))
                 if name == FORBIDDEN or name.startswith(FORBIDDEN + ".")]
    assert not offenders, "fastforec must run dataprep as a command (fastforec.dataprep_cli), not import it:\n" + \
        "\n".join(offenders)
