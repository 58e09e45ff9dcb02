"""Training entry point.

    deepspeed fastforec/train.py --config configs/forec/cityscapes_1_4.json
    torchrun --nproc_per_node 2 fastforec/train.py --config ...
    python fastforec/train.py --config configs/cpu/synth_demo.json --set train.max_steps=100
    fastforec train --config ...

Config errors are reported before any process group or data work starts; every user error (see
fastforec/errors.py) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__" and sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    # Run as a script, Python puts fastforec/ itself first on sys.path, where our config.py,
    # losses.py, ... would shadow top-level modules of the same name.
    sys.path.pop(0)

from fastforec.atomic import atomic_write_json  # noqa: E402
from fastforec.config import Config, ConfigError, add_override_argument, load_config  # noqa: E402
from fastforec.errors import UserError, check_output_dir, output_error, report_user_error  # noqa: E402
from fastforec.run_lock import refuse_foreign_run_dir  # noqa: E402

NAME = "train"
HELP = "train a model (same as fastforec/train.py)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="run config (JSON)")
    add_override_argument(p)
    p.add_argument("--run-dir", help="run directory (default runs/<train.name>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the newest intact checkpoint of the run directory, or from the given path; "
                        "--resume auto continues when the run directory has a checkpoint and starts afresh when "
                        "not (one command for a job a scheduler may requeue)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def prepare(args: argparse.Namespace) -> tuple[Config, Path]:
    """Everything that can fail on user input without writing to the filesystem or the network."""
    cfg = load_config(args.config, args.overrides)
    cfg.check_paths()
    # lazy (here and in _train): torch, DeepSpeed and DALI; keeps `fastforec --help` and config
    # errors instant
    import torch

    from fastforec.checkpoint_files import list_checkpoints
    from fastforec.ds_config import deepspeed_config
    from fastforec.methods import check_config
    from fastforec.models.build import check_pretrained

    check_config(cfg)  # what the method's base needs (a teacher to score, two samples to CutMix)
    check_pretrained(cfg.model)
    # precision, ZeRO stage, batch keys, and every key against what DeepSpeed reads
    deepspeed_config(cfg, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / cfg.train.name
    check_output_dir(run_dir, "--run-dir")
    if args.resume == "auto":
        args.resume = "latest" if list_checkpoints(run_dir / "checkpoints") else None
        if args.resume is None and os.environ.get("RANK", "0") == "0":
            print(f"--resume auto: no checkpoint in '{run_dir / 'checkpoints'}', so this is a new run", file=sys.stderr,
                  flush=True)
    if args.resume is None and list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"run directory '{run_dir}' already holds checkpoints; pass --resume to continue it, "
                          f"or choose another --run-dir / train.name")
    if args.resume not in (None, "latest") and not Path(args.resume).is_file():
        raise ConfigError(f"--resume: checkpoint '{args.resume}' does not exist")
    if args.resume is None:
        refuse_foreign_run_dir(run_dir)
    return cfg, run_dir


def run(args: argparse.Namespace) -> int:
    """Train; a UserError anywhere (config, data, checkpoint, divergence, unwritable run
    directory) is printed as one line and exits with 2."""
    from fastforec.preemption import Stopped, StopSignals

    run_dir = None
    try:
        # SIGTERM / SIGINT / SIGUSR1: see fastforec/preemption.py (at once during start-up, after
        # the current step once training runs)
        with StopSignals() as stop:
            cfg, run_dir = prepare(args)
            return _train(args, cfg, run_dir, stop)
    except Stopped as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(e.describe(), file=sys.stderr, flush=True)
        return e.exit_code
    except UserError as e:
        return report_user_error(e)
    except OSError as e:
        if run_dir is None or e.filename is None or not _is_under(Path(e.filename), run_dir):
            raise  # not the output the user chose: a bug or a system problem, keep the traceback
        return report_user_error(output_error(e, run_dir, "--run-dir"))


def _is_under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _train(args: argparse.Namespace, cfg: Config, run_dir: Path, stop: Any) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # DeepSpeed's import loads torch's C++-extension helper, which warns "No CUDA runtime is found"
    # on every machine without the CUDA toolkit: noise before the run's own lines (and before the
    # one-line error of a bad setting found after it), never something to act on
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from fastforec.distributed import all_ranks_true, init_distributed
    from fastforec.run_lock import RunDirectoryBusy, RunLock

    dist = init_distributed(args.local_rank)
    # One run per directory: rank 0 holds the lock until this process ends; every rank learns
    # whether it got it, so a refused run stops on all ranks instead of hanging in a collective.
    lock, busy = RunLock(run_dir), None
    if dist.is_main:
        try:
            lock.acquire()
        except RunDirectoryBusy as e:
            busy = e
    if not all_ranks_true(busy is None, dist.device):
        raise busy or RunDirectoryBusy(f"run directory '{run_dir}' is in use by another run (see rank 0's message)")
    try:
        return _fit(args, cfg, run_dir, dist, stop)
    finally:
        lock.release()


def _fit(args: argparse.Namespace, cfg: Config, run_dir: Path, dist: Any, stop: Any) -> int:
    from fastforec.report import print_iou_table
    from fastforec.trainer import Trainer

    trainer = Trainer(cfg, run_dir=run_dir, dist=dist, resume=args.resume, stop=stop)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        # the trainer's: train.bf16_on_amx is resolved there into an explicit precision block
        atomic_write_json(run_dir / "config.json", trainer.cfg.to_dict())
    results = trainer.fit()
    if dist.is_main:
        print_iou_table(results["class_names"], list(results["per_class_iou"].values()), results["miou_last"],
                        title=f"{cfg.train.name} ({results['scored']}): last epoch {results['last_epoch']}")
        for name, r in results["models"].items():
            print(f"{name}: miou_last={r['miou_last']:.4f} miou_best={r['miou_best']:.4f} (epoch {r['best_epoch']})")
        print(f"scored: {results['scored']} -> {run_dir / 'results.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastforec train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
