"""tools/pretrained_gates.py: the pretrained-regime gates of issue 34 from study directories, by hand."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "pretrained_gates.py"


def _tool():
    spec = importlib.util.spec_from_file_location("pretrained_gates", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(study: Path, method: str, seed: int, student: float) -> None:
    run = study / "runs" / f"{method}_b24_s{seed}"
    run.mkdir(parents=True)
    models = {"student": {"miou_last": student}}
    (run / "results.json").write_text(json.dumps({"miou_last": student, "miou_best": student, "models": models}))


def test_gates_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scratch, pre, double, aux = (tmp_path / n for n in ("s", "p", "d", "a"))
    for seed, (sup, pretrained, twice, rec, forec) in enumerate([(0.30, 0.40, 0.405, 0.42, 0.43),
                                                                  (0.28, 0.36, 0.365, 0.41, 0.40),
                                                                  (0.29, 0.37, 0.38, 0.40, 0.42)]):
        _write(scratch, "supervised", seed, sup)
        _write(pre, "supervised", seed, pretrained)
        _write(double, "supervised", seed, twice)
        _write(aux, "rec", seed, rec)
        _write(aux, "forec", seed, forec)
    tool = _tool()
    rows = {name[:5]: (need, value, ok) for name, need, value, ok in tool.gates(scratch, pre, double, aux, "24")}
    # (i) +10, +8, +8: mean 8.67, sd 1.1547, t(2) 4.303 -> half width 2.87
    assert rows["(i) p"][1:] == ("+8.67 [+5.80, +11.54]", True)
    # (ii) +0.5, +0.5, +1.0: mean 0.67 < 1
    assert rows["(ii) "][2] is True and rows["(ii) "][1].startswith("+0.67")
    # (iii) +1, -1, +2: sd 1.5275 -> the smallest n with t(n-1) sd / sqrt(n) <= 1
    std = math.sqrt(((1 - 2 / 3) ** 2 + (-1 - 2 / 3) ** 2 + (2 - 2 / 3) ** 2) / 2)
    n = tool.seeds_needed(std)
    assert rows["(iii)"][0] == f"n = {n} (sd {std:.2f})" and rows["(iii)"][2] is None
    assert tool.t_critical(n - 1) * std / math.sqrt(n) <= 1.0 < tool.t_critical(n - 2) * std / math.sqrt(n - 1)
    assert tool.main(["--scratch", str(scratch), "--pretrained", str(pre), "--double", str(double),
                      "--aux", str(aux)]) == 0
    out = capsys.readouterr().out
    assert "| (i) pretrained minus scratch, supervised, 24 labels | >= +5, 95 % CI above 0 |" in out


def test_seeds_needed_grows_with_the_spread() -> None:
    tool = _tool()
    assert tool.seeds_needed(0.1) == 2
    assert tool.seeds_needed(1.0) < tool.seeds_needed(2.0) < tool.seeds_needed(3.0) <= tool.MAX_SEEDS
