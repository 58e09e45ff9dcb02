"""`fastforec eval`: mIoU of a checkpoint on the val split, on one process or many.

Plain torch: no DeepSpeed engine or import, no process group for one process. Several processes
(one per GPU) evaluate only when a launcher starts them (``torchrun --nproc_per_node N -m
fastforec.cli eval ...``); they then join a torch process group and sum their confusion matrices.
"""

from __future__ import annotations

import argparse
import sys

from fastforec.atomic import atomic_write_json
from fastforec.checkpoint_spec import PEER_SPEC_FORMS, check_exists
from fastforec.config import ConfigError, add_override_argument, load_config, with_overrides
from fastforec.data.manifest import Manifest

NAME = "eval"
HELP = "mIoU of a checkpoint on the val split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="a run config or recipe whose data and evaluation settings to use (default: the checkpoint's "
                        "own; needed for a peer's checkpoint)")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint file, a run directory (its latest), or a peer's trained checkpoint: "
                        f"{PEER_SPEC_FORMS} (or the file alone, recognised by its keys)")
    p.add_argument("--mode", choices=["whole", "sliding"], default=None,
                   help="whole image (VOC default) or sliding window (Cityscapes default)")
    p.add_argument("--weights", choices=["student", "teacher"], default=None,
                   help="default: what the run scored (its config's eval.model: the EMA teacher for UniMatch V2 "
                        "recipes, else the student); for a peer's file the weights its source publishes (U2PL's "
                        "and UniMatch V2's teacher)")
    p.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    add_override_argument(p, help="change one setting of the config (repeatable), e.g. --set data.root=data/voc_val "
                        "--set eval.mode=sliding")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def settings_source(config: str | None, overrides: list[str]) -> str:
    """The line that says which settings a command used."""
    where = f"--config {config}" if config else "the checkpoint's own config"
    return f"settings: {where}" + (f" with --set {' '.join(overrides)}" if overrides else "")


def run(args: argparse.Namespace) -> int:
    """Config, checkpoint and manifest errors propagate to `fastforec.cli.main`, which prints
    them and exits with 2."""
    given = load_config(args.config, args.overrides) if args.config else None
    if given is not None:
        given.model.pretrained = None  # every weight comes from the checkpoint
        given.check_paths()
    check_exists(args.checkpoint)  # before the heavy imports: a typo is an instant error
    # lazy: torch, DALI and rich; keeps `fastforec --help` and config errors instant
    from fastforec.data import ValData, resolve_device
    from fastforec.distributed import init_inference
    from fastforec.evaluate import evaluate, resolve_eval_mode
    from fastforec.inference import load_trained_model
    from fastforec.metrics import nan_to_none
    from fastforec.precision import autocast_context, cpu_precision_block, precision_mode
    from fastforec.report import print_iou_table

    dist = init_inference(args.local_rank)
    model, own, dataset = load_trained_model(args.checkpoint, weights=args.weights, device=dist.device, config=given,
                                             scored=True)
    weights = dataset.get("weights") or args.weights or "student"
    # a peer's checkpoint comes with the given recipe plus its source's network and protocol
    cfg = own if dataset.get("source") else given or with_overrides(own, args.overrides)
    if given is None:
        cfg.model.pretrained = None
        cfg.check_paths()
    if dist.is_main:
        print(dataset.get("assumed") or settings_source(args.config, args.overrides), file=sys.stderr)
        print(f"weights: {weights}" + ("" if args.weights else " (what the run scored; --weights to change)"),
              file=sys.stderr)
    manifest = Manifest.load(cfg.data.root)
    if dataset["num_classes"] != manifest.num_classes:
        raise ConfigError(f"data.root: checkpoint has {dataset['num_classes']} classes, dataset "
                          f"'{cfg.data.root}' has {manifest.num_classes}")
    mode = resolve_eval_mode(args.mode or cfg.eval.mode, manifest.dataset)
    val = ValData(manifest, cfg.data, batch_size=cfg.eval.batch_size, rank=dist.rank, world_size=dist.world_size,
                  device=resolve_device(cfg.data.device))
    crop = cfg.data.crop_size
    # the precision the checkpoint trained and was scored in, where train.bf16_on_amx chose it
    ds = cpu_precision_block(cfg.deepspeed, bf16_on_amx=cfg.train.bf16_on_amx, device=dist.device,
                             started_with=own.deepspeed)
    result = evaluate(model, val, num_classes=manifest.num_classes, ignore_index=manifest.ignore_index, mode=mode,
                      window=crop, stride=cfg.eval.stride(crop), device=dist.device,
                      protocol=cfg.eval.sliding_protocol, size_multiple=cfg.eval.size_multiple,
                      autocast=autocast_context(ds, dist.device))
    if dist.is_main:
        protocol = f", {cfg.eval.sliding_protocol} windows" if mode == "sliding" else ""
        precision = precision_mode(ds)  # the deepspeed block the evaluation's autocast follows
        print_iou_table(manifest.class_names, result["iou"], result["miou"],
                        title=f"{args.checkpoint} ({weights}, {mode}{protocol}, {precision})")
        if args.json_out:
            atomic_write_json(args.json_out, {"miou": result["miou"], "pixel_acc": result["pixel_acc"], "mode": mode,
                                              "sliding_protocol": (cfg.eval.sliding_protocol if mode == "sliding"
                                                                   else None),
                                              "per_class_iou": {n: nan_to_none(v) for n, v in
                                                                zip(manifest.class_names, result["iou"])},
                                              "checkpoint": str(args.checkpoint), "weights": weights,
                                              "precision": precision})
    return 0
