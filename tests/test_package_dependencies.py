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


# ---------------------------------------------------------------------------------------------
# the kernels' import name

REPO = PACKAGE.parent
KERNELS_FOLDER, KERNELS_IMPORT = "kernels", "fastforec_kernels"


def test_nothing_imports_the_kernels_by_their_folder_name() -> None:
    """`kernels` is also a PyPI package (Hugging Face's): an import of it would get whichever comes
    first on the path. The kernels themselves import each other relatively."""
    files = [p for d in ("fastforec", "dataprep", "kernels", "tools", "tests")
             for p in sorted((REPO / d).rglob("*.py"))]
    offenders = [f"{path.relative_to(REPO)}: import {name}"
                 for path in files for name in _imported_modules(ast.parse(path.read_text(), filename=str(path)))
                 if name == KERNELS_FOLDER or name.startswith(KERNELS_FOLDER + ".")]
    assert not offenders, f"import the kernels as {KERNELS_IMPORT}:\n" + "\n".join(offenders)


def test_the_package_list_names_every_package_folder() -> None:
    """pyproject.toml lists the packages by hand (the kernels folder installs under another
    name); a new subpackage missing from that list would be left out of every install."""
    import tomllib

    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"] == {KERNELS_IMPORT: KERNELS_FOLDER}
    folders = {".".join(init.parent.relative_to(REPO).parts) for d in ("fastforec", "dataprep", KERNELS_FOLDER)
               for init in (REPO / d).rglob("__init__.py")}
    listed = {tool["package-dir"].get(name, name) for name in tool["packages"]}
    assert listed == folders


def test_the_kernels_install_under_their_own_name(tmp_path: Path) -> None:
    """The wheel holds fastforec_kernels/ (and no top-level kernels/), and it imports from there."""
    import shutil
    import sys
    import zipfile

    from tests import child_process

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for d in ("fastforec", "dataprep", KERNELS_FOLDER):
        shutil.copytree(REPO / d, src / d, ignore=shutil.ignore_patterns("__pycache__"))
    child_process.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                       str(tmp_path), str(src)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("fastforec-*.whl"))
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {"fastforec", "dataprep", KERNELS_IMPORT} <= tops and KERNELS_FOLDER not in tops
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import fastforec_kernels, torch; x = torch.randn(1, 3, 2, 2); "
             "print(fastforec_kernels.__file__); print(tuple(fastforec_kernels.pseudo_label(x, [1])[0].shape))")
    out = child_process.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert Path(out[0]).is_relative_to(site) and out[1:] == ["(1,", "2,", "2)"]


# ---------------------------------------------------------------------------------------------
# the config at the bottom of the house

CONFIG = PACKAGE / "config"
# what the config package may import of fastforec: its own modules, the error base, the JSON
# reader, and (inside check_paths, lazily) the dataset manifest
CONFIG_MAY_IMPORT = ("fastforec.config", "fastforec.errors", "fastforec.json_keys", "fastforec.data.manifest")


def test_the_config_imports_nothing_of_the_models_methods_or_torch() -> None:
    files = sorted(CONFIG.rglob("*.py"))
    assert len(files) >= 4
    names = {f"{path.name}: {name}" for path in files
             for name in _imported_modules(ast.parse(path.read_text(), filename=str(path)))
             if name.split(".")[0] in ("fastforec", "torch", "timm", "deepspeed", "nvidia")}
    offenders = [n for n in names if not n.split(": ")[1].startswith(CONFIG_MAY_IMPORT)]
    assert not offenders, "fastforec.config is a leaf: " + ", ".join(sorted(offenders))
