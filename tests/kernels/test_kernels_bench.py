"""`fastforec bench --what kernels`: runs end to end on tiny crops and writes the JSON it promises.
No timing is asserted (times go in the report); allocation sizes are deterministic and are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastforec import cli
from fastforec.bench import kernels as bench

HEADLINE_KEYS = {"fused_ms", "naive_ms", "speedup", "fused_peak_bytes", "naive_peak_bytes"}
KERNELS = {"pseudo_label", "pseudo_label_ce", "masked_mse"}


def test_cli_writes_the_json_report(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "kernels.json"
    code = cli.main(["bench", "--what", "kernels", "--crop", "8", "--batches", "1", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    assert doc["device"] == "cpu" and doc["fused_backend"] == "torch"
    assert set(doc["kernels"]) == KERNELS
    for name, entry in doc["kernels"].items():
        assert HEADLINE_KEYS <= set(entry), name
        assert entry["size"] == 8 and entry["dtype"] == "float32"
        assert entry["fused_ms"] > 0 and entry["naive_ms"] > 0 and entry["naive_peak_bytes"] > 0
    assert {(r["kernel"], r["dtype"]) for r in doc["runs"]} == {(k, d) for k in KERNELS
                                                                for d in ("float32", "bfloat16")}
    assert not list(out.parent.glob(".*tmp*"))  # written atomically, no leftovers


def test_fused_losses_allocate_less_than_half_of_the_naive_ones() -> None:
    # The benchmark's 256x256 in bf16: fp32 chunk buffers next to a bf16 gradient, the least
    # favourable dtype for the memory target.
    results = {}
    for case in bench.build_cases(size=256, dtype=bench.DTYPES[1], device=bench.torch.device("cpu"),
                                  backend="torch"):
        case.fused()
        case.naive()
        results[case.kernel] = (bench.peak_bytes(case.fused, bench.torch.device("cpu"), case.reset),
                                bench.peak_bytes(case.naive, bench.torch.device("cpu"), case.reset))
    for kernel in bench.TARGETED:
        fused, naive = results[kernel]
        assert 0 < fused <= bench.CPU_MAX_PEAK_RATIO * naive, (kernel, fused, naive)


def test_gpu_bytes_model() -> None:
    # bf16, C=21, one pixel. Gradient in forward: forward 2*21*2 + 8 + 4 + 1 = 97 bytes, backward
    # rescale 84 bytes. Gradient in backward (CUDA): forward reads 55, backward reads 55 and writes 42.
    assert bench.pseudo_label_ce_bytes(pixels=1, classes=21, elem=2, deferred=False) == 97 + 84
    assert bench.pseudo_label_ce_bytes(pixels=1, classes=21, elem=2, deferred=True) == 55 + 55 + 42
    assert bench.pseudo_label_bytes(pixels=10, classes=21, elem=2) == 10 * (42 + 13)
    assert bench.masked_mse_bytes(pixels=1, elem=2, deferred=False) == 3 * 3 * 2 + 2 + 2 * 3 * 2
    assert bench.masked_mse_bytes(pixels=1, elem=2, deferred=True) == 2 * (2 * 3 * 2 + 2) + 3 * 2


@pytest.mark.parametrize("argv", [["--crop", "0"], ["--batches", "0"]])
def test_bad_arguments_exit_non_zero(argv: list[str], tmp_path: Path) -> None:
    out = tmp_path / "k.json"
    assert cli.main(["bench", "--what", "kernels", *argv, "--json", str(out)]) != 0
    assert not out.exists()
