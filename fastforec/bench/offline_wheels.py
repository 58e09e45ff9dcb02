"""Packages for an offline GPU node, from wheels built beforehand.

An offline GPU node may have PyTorch and Triton but not DeepSpeed, its dependencies, webdataset
or fastforec installed: ``tools/build_offline_wheels.sh`` builds those wheels (on a machine with
the package registry) into ``build/offline_wheels``, and ``ensure_offline_packages`` unpacks them
into a temporary prefix, placed *after* the node's own packages on ``sys.path``, when an import
fails. Standard library only: it runs before anything it provides can be imported.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_WHEELS = REPO / "build" / "offline_wheels"
# What `fastforec bench --what gpu-check` imports that an offline GPU node may lack (module names), from
# the wheels. fastforec_kernels: the folder kernels/ installs under that name, so an uninstalled
# tree needs fastforec's own wheel (built from this tree by the same script).
OFFLINE_MODULES = ("deepspeed", "hjson", "pydantic", "rich", "webdataset", "fastforec_kernels")


def ensure_offline_packages(wheels: Path, modules: tuple[str, ...] = OFFLINE_MODULES) -> dict[str, Any]:
    """Make ``modules`` importable: when one is missing, unpack every wheel of ``wheels`` into a
    temporary prefix appended to ``sys.path`` (and PYTHONPATH, for child processes). Appended,
    not prepended: a package the node has (torch, numpy, typing_extensions) is never shadowed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    report: dict[str, Any] = {"missing": missing, "prefix": None, "wheels": []}
    if not missing:
        return report
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        report["error"] = (f"{', '.join(missing)} not importable and no wheels in '{wheels}'; build them with "
                           "tools/build_offline_wheels.sh on a machine with the package registry")
        return report
    prefix = Path(tempfile.mkdtemp(prefix="fastforec-wheels-"))
    for wheel in found:
        with zipfile.ZipFile(wheel) as z:  # a wheel is a zip of the installed tree
            z.extractall(prefix)
    sys.path.append(str(prefix))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(prefix)) if p)
    importlib.invalidate_caches()
    report.update(prefix=str(prefix), wheels=[w.name for w in found],
                  still_missing=[m for m in missing if importlib.util.find_spec(m) is None])
    return report
