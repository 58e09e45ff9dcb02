"""`fastforec` command line: train, eval, predict, export, bench, visualize, ablate, pretrain, recipes.

Each command is one module with its NAME, HELP, ``add_arguments(parser)`` and ``run(args)``;
this file only builds the parser from them and dispatches. Command modules import their heavy
implementation (torch, DALI, DeepSpeed) inside ``run``, so `fastforec --help` and argument
errors are instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastforec import ablate, bench, eval_cli, export, predict, pretrain, recipes, train, visualize
from fastforec.errors import UserError, check_output_dir, check_output_file, output_error, report_user_error

COMMANDS = (train, eval_cli, predict, export, bench, visualize, ablate, pretrain, recipes)
# The smallest value of `bench`'s numeric options, checked before any benchmark starts: its
# benchmarks read a 0 as "not given" (--crop 0 ran at the config's crop) and did not check the
# sign (--batches -1 timed nothing and printed negative rates). (option, minimum, what it counts);
# --batches 0 means "count FLOPs only" where a benchmark has that mode (step, e2e).
BENCH_MINIMUMS = (("crop", 1, "a crop side in pixels"), ("threads", 1, "data-loading threads"),
                  ("batches", 1, "timed batches per round"))
FLOPS_ONLY_BENCHMARKS = ("step", "e2e")
# What `fastforec --help` says (the module docstring above is for developers).
DESCRIPTION = ("Semi-supervised semantic segmentation (FOrec, UniMatch, UniMatch V2, U2PL-style) on DeepSpeed "
               "and DALI: train a recipe, then evaluate, predict, export or visualise its checkpoints (or a "
               "peer's released UniMatch / U2PL / UniMatch V2 checkpoint). `fastforec COMMAND --help` for each.")
# Descriptions of `fastforec COMMAND --help` longer than the command's one-line HELP.
DESCRIPTIONS = {
    "train": "Train a model from a run config or shipped recipe (`fastforec recipes` lists them), on one process "
             "or under a launcher (`deepspeed fastforec/train.py ...`, `torchrun --nproc_per_node N "
             "fastforec/train.py ...`). Checkpoints, metrics and the final scores go to the run directory "
             "(default runs/<train.name>); --resume continues a stopped run exactly.",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastforec", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        # a sentence from the one-line help; "mIoU ..." keeps its case
        first = command.HELP[:1] if command.HELP[1:2].isupper() else command.HELP[:1].upper()
        description = DESCRIPTIONS.get(command.NAME, first + command.HELP[1:] + ".")
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP, description=description))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Looked up by name rather than stored in args: a command may have an option called --run.
    command = next(c for c in COMMANDS if c.NAME == args.command)
    outputs = _outputs(args)
    try:
        for option, path in _output_files(args):
            check_output_file(path, option)
        for option, directory in outputs:
            check_output_dir(directory, option)
        if args.command == bench.NAME:
            _check_bench_numbers(args)
        return command.run(args)
    except UserError as e:
        # bad input, damaged or foreign files, unwritable outputs: the message says what to change
        return report_user_error(e)
    except OSError as e:
        for option, directory in outputs:
            if e.filename is not None and Path(e.filename).resolve().is_relative_to(Path(directory).resolve()):
                return report_user_error(output_error(e, directory, option))
        raise


def _check_bench_numbers(args: argparse.Namespace) -> None:
    for name, minimum, meaning in BENCH_MINIMUMS:
        value = getattr(args, name)
        if name == "batches" and args.what in FLOPS_ONLY_BENCHMARKS:
            minimum, meaning = 0, f"{meaning}, or 0 to count FLOPs only"
        if value is not None and value < minimum:
            raise UserError(f"--{name} must be >= {minimum} ({meaning}), got {value}")


def _output_files(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(option, path) of every single-file output the user chose."""
    found = []
    if getattr(args, "json_out", None):
        found.append(("--json", Path(args.json_out)))
    if args.command in ("visualize", "export") and getattr(args, "out", None):
        found.append(("--out", Path(args.out)))
    return found


def _outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(option, directory) of every output the user chose (train checks its --run-dir itself)."""
    found = [(option, path.parent) for option, path in _output_files(args)]
    if args.command in ("predict", "ablate", "pretrain"):
        found.append(("--out", Path(args.out)))
    return found


if __name__ == "__main__":
    sys.exit(main())
