"""Training entry point.

    deepspeed fastforec/train.py --config configs/cityscapes_1_4.json
    torchrun --nproc_per_node 2 fastforec/train.py --config ...
    python fastforec/train.py --config configs/synth_demo.json --set train.max_steps=100
    fastforec train --config ...

Config errors are reported before any process group or data work starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a script, Python puts fastforec/ itself first on sys.path, where our config.py,
    # losses.py, ... would shadow top-level modules of the same name.
    sys.path.pop(0)

from fastforec.checkpoint import CheckpointError, list_checkpoints  # noqa: E402
from fastforec.config import Config, ConfigError, load_config  # noqa: E402


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config (JSON)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--run-dir", help="run directory (default runs/<train.name>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest checkpoint of the run directory, or from the given path")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def prepare(args: argparse.Namespace) -> tuple[Config, Path]:
    """Everything that can fail on user input without touching the filesystem or the network."""
    cfg = load_config(args.config, args.overrides)
    cfg.check_paths()
    import torch

    from fastforec.precision import check_precision

    check_precision(cfg.deepspeed, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.train.name
    if args.resume is None and list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"run directory '{run_dir}' already holds checkpoints; pass --resume to continue it, "
                          f"or choose another --run-dir / train.name")
    if args.resume not in (None, "latest") and not Path(args.resume).is_file():
        raise ConfigError(f"--resume: checkpoint '{args.resume}' does not exist")
    return cfg, run_dir


def run(args: argparse.Namespace) -> int:
    try:
        cfg, run_dir = prepare(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fastforec.atomic import atomic_write_json
    from fastforec.distributed import LaunchError, init_distributed
    from fastforec.report import print_iou_table
    from fastforec.trainer import Trainer

    try:
        dist = init_distributed(args.local_rank)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trainer = Trainer(cfg, run_dir=run_dir, dist=dist)
    if args.resume is not None:
        try:
            trainer.restore(trainer.find_resume(args.resume))
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
    results = trainer.fit()
    if dist.is_main:
        print_iou_table(results["class_names"], list(results["per_class_iou"].values()), results["miou_last"],
                        title=f"{cfg.train.name}: last epoch {results['last_epoch']}")
        print(f"miou_last={results['miou_last']:.4f} miou_best={results['miou_best']:.4f} "
              f"(epoch {results['best_epoch']}) -> {run_dir / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastforec train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
