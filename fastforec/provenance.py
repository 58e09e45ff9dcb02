"""What a result depends on, recorded beside it.

A CPU run is bit-exact on one machine, but another CPU model (other SIMD kernels, other summation
orders in oneDNN/OpenBLAS) moves its mIoU about as much as another seed does. A listed result is
therefore only comparable with its code, its packages, its machine and its data: each run of a
study records them here, and a claim rests on seed means with intervals, not on single runs.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "timm", "numpy", "deepspeed", "nvidia-dali-cuda130", "triton", "webdataset")
# The CPU features that select different compute kernels in torch/oneDNN (and so change the last bits).
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")
REPO_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """The commit of this source tree and whether tracked files differ from it."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu() -> dict[str, Any]:
    """CPU model and the kernel-selecting flags (Linux /proc/cpuinfo; elsewhere platform's word)."""
    model, flags = platform.processor() or platform.machine(), set()
    if CPUINFO.is_file():
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    info: dict[str, Any] = {"model": model, "flags": [f for f in CPU_FLAGS if f in flags], "cores": os.cpu_count()}
    info["threads"] = os.environ.get("OMP_NUM_THREADS")
    return info


def provenance(*, data_root: Path | None = None) -> dict[str, Any]:
    """Code, packages, Python, CPU and (given its shard directory) the identity of its shards
    (``Manifest.identity``: a sha256 over every shard's sha256, independent of paths)."""
    record: dict[str, Any] = {"code": code_version(), "python": platform.python_version(),
                              "packages": package_versions(), "cpu": cpu()}
    if data_root is not None:
        from fastforec.data.manifest import Manifest, ManifestError  # lazy: a run's record only

        try:
            identity = Manifest.load(data_root).identity
        except ManifestError:
            identity = None
        record["data"] = {"root": str(data_root), "shards_sha256": identity}
    return record
