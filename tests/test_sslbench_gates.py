"""tools/sslbench_gates.py: the four pilot gates from three study directories, by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.gate_studies import load_tool, write_run


def test_gates_by_hand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    study, all_labels, double = tmp_path / "s", tmp_path / "a", tmp_path / "d"
    for seed, (sup, mt, teacher, full, twice) in enumerate([(0.30, 0.35, 0.36, 0.44, 0.305),
                                                           (0.28, 0.34, 0.34, 0.45, 0.285)]):
        write_run(study, "supervised", "24", seed, sup)
        write_run(study, "mean_teacher", "24", seed, mt, teacher)
        write_run(all_labels, "supervised", "all", seed, full)
        write_run(double, "supervised", "24", seed, twice)
    tool = load_tool("sslbench_gates")
    rows = {name[:3]: (value, ok) for name, _, value, ok in tool.gates(study, all_labels, double, "24")}
    # (a) 2x - 1x: +0.5 both seeds -> mean +0.50 with zero spread
    assert rows["(a)"] == ("+0.50 [+0.50, +0.50]", True)
    # (b) all - 24: +14, +17 -> mean 15.5, sd 2.1213, t(1) 12.706 -> half width 19.06
    assert rows["(b)"] == ("+15.50 [-3.56, +34.56]", True)
    # (c) mean teacher - supervised: +5, +6 -> mean 5.5, sd 0.7071 -> half 6.353: the interval crosses 0
    assert rows["(c)"] == ("+5.50 [-0.85, +11.85]", False)
    # (d) teacher - student: +1, 0 -> mean +0.5
    assert rows["(d)"][1] is True and rows["(d)"][0].startswith("+0.50")
    assert tool.main(["--study", str(study), "--all", str(all_labels), "--double", str(double)]) == 0
    assert "| (c) mean teacher minus supervised, 24 labels | 95 % CI above 0 |" in capsys.readouterr().out
