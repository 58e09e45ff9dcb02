"""`fastforec` command line: train, eval, predict, export, bench, visualize, ablate.

Each subcommand lives in its own module; this file only parses arguments and dispatches, and
imports the heavy modules lazily so `fastforec --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="throughput benchmarks (side by side, as ratios)")
    p.add_argument("--what", required=True, choices=["data", "kernels", "step", "e2e", "gpu-check"])
    p.add_argument("--config", help="run config (JSON); needed for data, step, e2e")
    p.add_argument("--data", help="shard directory (overrides data.root)")
    p.add_argument("--crop", type=int, help="crop size (overrides data.crop_size)")
    p.add_argument("--threads", type=int, help="DALI threads / DataLoader workers")
    p.add_argument("--batches", type=int, default=None, help="timed batches per contender (step: 0 = count FLOPs only)")
    p.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak (else measured)")
    p.add_argument("--device", choices=["cpu", "gpu"], default=None,
                   help="data: DALI backend to benchmark (default cpu; gpu needs CUDA)")
    p.add_argument("--synthetic", choices=["scenes", "textured"], default=None,
                   help="data: what an empty or new --data directory is filled with: dataprep's synthetic "
                        "VOC scenes (default) or photo-like textured JPEGs")
    p.add_argument("--dry-run", action="store_true", help="gpu-check: the same sections on the CPU, small shapes")
    p.add_argument("--wheels", help="gpu-check: wheels to unpack when deepspeed & co. are missing "
                                    "(default build/offline_wheels, see tools/build_offline_wheels.sh)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _add_train(sub: argparse._SubParsersAction) -> None:
    from fastforec.train import add_train_arguments

    add_train_arguments(sub.add_parser("train", help="train a model (same as fastforec/train.py)"))


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="mIoU of a checkpoint on the val split")
    p.add_argument("--config", required=True, help="run config (JSON): data and evaluation settings")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run directory (its latest)")
    p.add_argument("--mode", choices=["whole", "sliding"], default=None,
                   help="whole image (VOC default) or sliding window (Cityscapes default)")
    p.add_argument("--weights", choices=["student", "teacher"], default="student")
    p.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="palette-coloured masks and overlays for images")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run directory (its latest), or a `fastforec export` .safetensors file")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", choices=["student", "teacher"], default=None,
                   help="default: the student of a checkpoint, the weights an export holds")


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="the segmentation network alone, as safetensors or ONNX")
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run directory (its latest)")
    p.add_argument("--format", required=True, choices=["safetensors", "onnx"],
                   help="safetensors (weights + config and class table as metadata) or onnx (dynamic batch and size)")
    p.add_argument("--weights", choices=["student", "teacher"], default="student")
    p.add_argument("--out", required=True, help="output file (.safetensors or .onnx, as --format)")


def _add_visualize(sub: argparse._SubParsersAction) -> None:
    from fastforec.visualize import add_arguments

    add_arguments(sub.add_parser("visualize", help="latent images (paper Fig. 1/4) and training curves"))


def _add_ablate(sub: argparse._SubParsersAction) -> None:
    from fastforec.ablate import add_arguments

    add_arguments(sub.add_parser("ablate", help="methods x label budgets x seeds study (paper Table 4/5)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastforec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_bench(sub)
    _add_visualize(sub)
    _add_ablate(sub)
    args = parser.parse_args(argv)
    from fastforec.errors import UserError, check_output_dir, output_error, report_user_error

    outputs = _outputs(args)
    try:
        for option, directory in outputs:
            check_output_dir(directory, option)
        if args.command == "train":
            from fastforec.train import run
        elif args.command == "eval":
            from fastforec.eval_cli import run
        elif args.command == "predict":
            from fastforec.predict import run
        elif args.command == "export":
            from fastforec.export import run
        elif args.command == "visualize":
            from fastforec.visualize import run
        elif args.command == "ablate":
            from fastforec.ablate import run
        else:
            from fastforec.bench import run_bench as run
        return run(args)
    except UserError as e:
        # bad input, damaged or foreign files, unwritable outputs: the message says what to change
        return report_user_error(e)
    except OSError as e:
        for option, directory in outputs:
            if e.filename is not None and Path(e.filename).resolve().is_relative_to(Path(directory).resolve()):
                return report_user_error(output_error(e, directory, option))
        raise


def _outputs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(option, directory) of every output the user chose (train checks its --run-dir itself)."""
    found = []
    if getattr(args, "json_out", None):
        found.append(("--json", Path(args.json_out).parent))
    if args.command in ("predict", "ablate"):
        found.append(("--out", Path(args.out)))
    elif args.command == "visualize" and getattr(args, "out", None):
        found.append(("--out", Path(args.out).parent))
    return found


if __name__ == "__main__":
    sys.exit(main())
