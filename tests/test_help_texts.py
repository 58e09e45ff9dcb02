"""Texts for people (issue #31 item 6): help without developer notes, a description for every
command, --set and bench --what explained, `fastforec recipes` as a terminal table, and no
"0 steps x 6.19 s = 0 s" estimate at the end of a short run."""

from __future__ import annotations

import re
import subprocess
import sys

from fastforec.cli import build_parser
from fastforec.config import CONFIGS_DIR, shipped_configs
from fastforec.console import Estimate

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]


def _help(*args: str) -> str:
    proc = subprocess.run(FASTFOREC + [*args, "--help"], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return " ".join(proc.stdout.split())


def test_top_level_help_has_no_developer_notes() -> None:
    text = _help()
    assert "add_arguments" not in text and "Each command is one module" not in text
    assert "UniMatch V2" in text


def test_every_command_has_a_description() -> None:
    sub = build_parser()._subparsers._group_actions[0]  # noqa: SLF001 - the parser's own subcommands
    for name, parser in sub.choices.items():
        assert parser.description, name
    assert "run directory" in _help("train")


def test_set_has_help_in_eval_predict_bench() -> None:
    for command in ("eval", "predict", "bench"):
        text = _help(command)
        after = text.split("--set KEY=VALUE", 2)[-1].strip()
        assert after and not after.startswith("--"), f"{command}: --set has no help"


def test_bench_help_says_what_each_benchmark_measures() -> None:
    text = _help("bench")
    for what in ("data:", "kernels:", "step:", "e2e:", "gpu-check:"):
        assert what in text


def test_recipes_is_a_terminal_table_and_markdown_on_request() -> None:
    # a terminal 120 columns wide (rich's TTY_COMPATIBLE: as if on one): the table fits it
    proc = subprocess.run(FASTFOREC + ["recipes"], capture_output=True, text=True, timeout=300,
                          env={"COLUMNS": "120", "TTY_COMPATIBLE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    lines = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout).splitlines()  # without the terminal's styles
    assert max(map(len, lines)) <= 120
    assert "backbone" in proc.stdout and "published" in proc.stdout and "unimatch_v2_vits_voc_classic_92" in proc.stdout
    assert not any(line.startswith("| recipe |") for line in lines)
    # into a pipe: names kept whole, whatever COLUMNS says (rich alone would wrap at it, 80 under
    # pytest-xdist, and split them)
    piped = subprocess.run(FASTFOREC + ["recipes"], capture_output=True, text=True, timeout=300,
                           env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert piped.returncode == 0, piped.stderr
    first_column = {line.split("│")[1].strip() for line in piped.stdout.splitlines() if line.startswith("│")}
    cpu_recipes = {p.stem for p in (CONFIGS_DIR / "cpu").glob("*.json")}  # the table lists the paper recipes
    assert first_column == set(shipped_configs()) - cpu_recipes
    md = subprocess.run(FASTFOREC + ["recipes", "--markdown"], capture_output=True, text=True, timeout=300)
    assert md.returncode == 0 and md.stdout.startswith("### Recipes")


def test_an_estimate_with_no_steps_left_says_so() -> None:
    text = Estimate(sec_per_step=6.19, steps_left=0, evals_left=0, sec_per_eval=None).describe()
    assert "0 steps x" not in text and "= 0 s" not in text
    assert text == "no training steps left (6.19 s per step measured)"
    one = Estimate(sec_per_step=6.19, steps_left=0, evals_left=1, sec_per_eval=30.0).describe()
    assert "1 evaluation x 30 s" in one and "(s)" not in one
