"""tools/pretrained_gates.py: the pretrained-regime gates of issue 34 from study directories, by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.gate_studies import load_tool, write_run


def test_gates_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scratch, pre, double, aux = (tmp_path / n for n in ("s", "p", "d", "a"))
    for seed, (sup, pretrained, twice, rec, forec) in enumerate([(0.30, 0.40, 0.405, 0.42, 0.43),
                                                                  (0.28, 0.36, 0.365, 0.41, 0.40),
                                                                  (0.29, 0.37, 0.38, 0.40, 0.42)]):
        write_run(scratch, "supervised", "24", seed, sup)
        write_run(pre, "supervised", "24", seed, pretrained)
        write_run(double, "supervised", "24", seed, twice)
        write_run(aux, "rec", "24", seed, rec)
        write_run(aux, "forec", "24", seed, forec)
    tool = load_tool("pretrained_gates")
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
    tool = load_tool("pretrained_gates")
    assert tool.seeds_needed(0.1) == 2
    assert tool.seeds_needed(1.0) < tool.seeds_needed(2.0) < tool.seeds_needed(3.0) <= tool.MAX_SEEDS
