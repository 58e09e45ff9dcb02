"""`fastforec` command line: train, eval, predict, bench, visualize, ablate.

Each subcommand lives in its own module; this file only parses arguments and dispatches, and
imports the heavy modules lazily so `fastforec --help` is instant.
"""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--checkpoint", required=True, help="a checkpoint file, or a run directory (its latest)")
    p.add_argument("--input", required=True, help="an image file or a directory of images")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--weights", choices=["student", "teacher"], default="student")


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
    _add_bench(sub)
    _add_visualize(sub)
    _add_ablate(sub)
    args = parser.parse_args(argv)
    from fastforec.checkpoint import CheckpointError
    from fastforec.config import ConfigError
    from fastforec.data.manifest import ManifestError
    from fastforec.distributed import LaunchError
    from fastforec.models import PretrainedError

    try:
        if args.command == "train":
            from fastforec.train import run
        elif args.command == "eval":
            from fastforec.eval_cli import run
        elif args.command == "predict":
            from fastforec.predict import run
        elif args.command == "visualize":
            from fastforec.visualize import run
        elif args.command == "ablate":
            from fastforec.ablate import run
        else:
            from fastforec.bench import run_bench as run
        return run(args)
    except (ConfigError, CheckpointError, ManifestError, PretrainedError, LaunchError, FileNotFoundError) as e:
        # user-facing failures (bad paths, corrupt files) carry their own message: no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
