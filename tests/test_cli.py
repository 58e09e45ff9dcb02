"""`fastforec`: every command's arguments come from its own module, and the command line stays
light: help and argument errors do not import torch, DeepSpeed, DALI or matplotlib."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from fastforec.cli import COMMANDS, build_parser

HEAVY = ("torch", "deepspeed", "nvidia.dali", "matplotlib", "triton")

# Runs in a fresh interpreter: the test process itself has torch loaded already.
PROBE = """
import contextlib, io, json, sys
from fastforec.cli import main
codes = {}
for argv in %r:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    codes[" ".join(argv)] = [code, err.getvalue()]
print(json.dumps({"codes": codes, "loaded": [m for m in %r if m in sys.modules]}))
"""


def test_every_command_is_a_subcommand_with_its_module_name() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == [c.NAME for c in COMMANDS]
    assert list(sub.choices) == ["train", "eval", "predict", "export", "bench", "visualize", "ablate", "pretrain",
                                 "recipes"]


def test_help_and_argument_errors_import_nothing_heavy(tmp_path: Path) -> None:
    argvs = [["--help"], *([c.NAME, "--help"] for c in COMMANDS), ["visualize", "curves", "--help"],
             ["eval", "--checkpoint", "run"],
             ["export", "--checkpoint", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "m.safetensors")]]
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", PROBE % (argvs, HEAVY)], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    codes = report["codes"]
    assert all(codes[" ".join(a)][0] == 0 for a in argvs if a[-1] == "--help")
    eval_code, eval_err = codes["eval --checkpoint run"]
    # no --config is needed (the checkpoint's settings are used): the missing checkpoint is the error
    assert eval_code == 2 and "checkpoint 'run' does not exist" in eval_err
    export_code, export_err = codes[" ".join(argvs[-1])]
    assert export_code == 2 and "--out" in export_err and "must end with '.onnx'" in export_err
    assert "Traceback" not in export_err
    assert report["loaded"] == []


def test_checkpoint_help_names_every_peer_source() -> None:
    from fastforec.checkpoint_spec import PEER_SOURCES

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("eval", "predict", "export"):
        help_text = " ".join(subparsers.choices[name].format_help().split())
        assert all(f"{source}:FILE" in help_text for source in PEER_SOURCES), name
