"""`fastforec bench --what gpu-check`: the --dry-run on the CPU (every section, small shapes) and
the unpacking of offline wheels (fastforec/bench/offline_wheels.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from fastforec.bench import offline_wheels

REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS + ("TRITON_INTERPRET",)}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastforec.cli", "bench", "--what", "gpu-check", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=580)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run checks the CPU's reporting; with a CUDA GPU run "
                    "`fastforec bench --what gpu-check` itself")
def test_dry_run_covers_every_section(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    proc = _cli(["--dry-run", "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["dry_run"] is True and r["ok"] is True
    assert r["ceilings"]["bf16_matmul_tflops"] > 0 and r["ceilings"]["copy_gbps"] > 0

    rows = r["kernels"]["rows"]
    assert {(x["kernel"], x["dtype"]) for x in rows} == {(k, d) for k in ("pseudo_label", "pseudo_label_ce",
                                                                         "masked_mse")
                                                         for d in ("float32", "bfloat16")}
    assert {x["channels_last"] for x in rows} == {False, True}
    for x in rows:  # errors against fp64 within the stated tolerances, and small for real
        assert x["ok"], x
        errs = x["errors"]
        assert errs.get("label_mismatch", 0) == 0
        assert errs.get("loss_rel", 0) < 1e-5 and errs.get("grad_rel_l2", 0) < 1e-2
    assert any("2^31" in n and "skipped" in n for n in r["kernels"]["notes"])

    step = r["step"]
    names = [x["variant"] for x in step["rows"]]
    assert names[0] == "eager, all switches off" and "+ channels_last" in names
    assert "ZeRO-2, torch_autocast block" in names and "ZeRO-2, bf16 block" in names
    for x in step["rows"]:
        assert x["samples_per_s"] > 0 and x["flops_per_sample"] > 0 and x["skipped_steps"] == 0
        # on the CPU: no host syncs or CUDA launches to count, the ATen operators a step dispatches
        assert x["host_syncs_per_step"] is None and x["kernel_launches_per_step"] is None
        assert x["aten_ops_per_step"] > 100
        # against the research repos' loop on the same network and batches (issue #29: the first GPU
        # run measures the speed-up users would see)
        assert x["ratio_vs_baseline"] == x["samples_per_s"] / step["baseline"]["samples_per_s"]
    assert step["baseline"]["precision"] == "fp32" and step["baseline"]["samples_per_s"] > 0
    assert any(n.startswith("compile: skipped") for n in step["notes"])
    assert any(n.startswith("cudnn_benchmark: skipped") for n in step["notes"])
    assert any(n.startswith("SyncBatchNorm's path: skipped on the CPU") for n in step["notes"])

    # UniMatch V2 on a (quarter-width) DINOv2 and DINOv3, with and without activation checkpointing,
    # DINOv3 at the multiple of its 16-pixel patch nearest to DINOv2's crop
    vit = r["vit_step"]
    assert [(x["backbone"], x["activation_checkpointing"], x["crop"]) for x in vit["rows"]] == [
        ("dinov2_vits14", False, 28), ("dinov2_vits14", True, 28), ("dinov3_vits16", False, 32),
        ("dinov3_vits16", True, 32)]
    for x in vit["rows"]:
        assert x["samples_per_s"] > 0 and x["flops_per_sample"] > 0 and x["skipped_steps"] == 0
        assert x["aten_ops_per_step"] > 100 and x["kernel_launches_per_step"] is None
    # recomputing the blocks adds forward FLOPs the counter does not see: the counted FLOPs are the same
    assert vit["rows"][0]["flops_per_sample"] == vit["rows"][1]["flops_per_sample"]
    assert vit["rows"][2]["flops_per_sample"] == vit["rows"][3]["flops_per_sample"]
    assert "crop 28 / 32" in " ".join(proc.stdout.split())

    dali = r["dali"]  # DALI is a dependency of this project: its section must run, not skip
    assert "skipped" not in dali and dali["samples_per_s"] > 0 and dali["device"] == "cpu"
    assert set(r["section_seconds"]) == {"ceilings", "kernels", "step", "vit_step", "dali"}
    assert "Triton kernels vs fp64" in proc.stdout and "ZeRO-2, bf16 block" in proc.stdout
    assert "launches/step" in proc.stdout and "ATen ops/step" in proc.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a CUDA GPU the full check runs (bench --what gpu-check)")
def test_without_a_gpu_the_full_check_says_what_to_do(tmp_path: Path) -> None:
    proc = _cli(["--json", str(tmp_path / "x.json")], tmp_path)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "--dry-run" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x.json").exists()


def _wheel(path: Path, module: str) -> Path:
    """A minimal real wheel: one module and its dist-info."""
    whl = path / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{module}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
        z.writestr(f"{module}-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{module}-1.0.dist-info/RECORD", "")
    return whl


def test_missing_packages_are_unpacked_after_the_existing_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "fastforec_offline_probe")
    report = offline_wheels.ensure_offline_packages(wheels, modules=("json", "fastforec_offline_probe"))
    assert report["missing"] == ["fastforec_offline_probe"] and report["still_missing"] == []
    assert sys.path[-1] == report["prefix"]  # appended: never shadows what the node has
    import fastforec_offline_probe

    assert fastforec_offline_probe.VALUE == 42
    assert os.environ["PYTHONPATH"].endswith(report["prefix"])

    nothing = offline_wheels.ensure_offline_packages(tmp_path / "none", modules=("fastforec_offline_absent",))
    assert "tools/build_offline_wheels.sh" in nothing["error"] and "fastforec_offline_absent" in nothing["error"]
