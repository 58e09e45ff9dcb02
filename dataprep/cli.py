"""`dataprep`: turn raw datasets into WebDataset shards + DALI indexes + manifest.json.

Subcommands: synth, voc, cityscapes, folder, splits, verify, inspect. See docs/data.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastforec.errors import EXIT_USER_ERROR, UserError, check_output_dir, output_error, report_user_error

from .errors import DataprepError

EXIT_OK = 0
EXIT_PROBLEMS = 1  # verify found problems
EXIT_BAD_INPUT = EXIT_USER_ERROR  # bad input or usage (argparse uses 2 as well)
EXIT_INTERRUPTED = 130
DEFAULT_SYNTH_TRAIN = 400
DEFAULT_SYNTH_VAL = 100


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HxW (e.g. 375x500)") from None
    return h, w


def _int_in(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high] (no upper bound when ``high`` is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {allowed}, got {text!r}")
        return value
    return parse


JPEG_QUALITY = _int_in(1, 100)  # PIL's scale; values outside it are clamped without a word


def _workers_arg(p: argparse.ArgumentParser) -> None:
    from .convert import default_workers

    p.add_argument("--workers", type=_int_in(1), default=default_workers(),
                   help="processes (default: all usable cores)")


def _conversion_args(p: argparse.ArgumentParser) -> None:
    from .convert import DEFAULT_SHARD_MB, DEFAULT_SHARD_SAMPLES

    p.add_argument("--out", type=Path, required=True, help="output directory (manifest.json, shards, indexes)")
    _workers_arg(p)
    p.add_argument("--shard-samples", type=int, default=DEFAULT_SHARD_SAMPLES, help="max samples per shard")
    p.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB, help="max payload MiB per shard")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave bad samples out and list them in OUT/rejected.json instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    _force_arg(p)


def _force_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="write into a non-empty --out that dataprep did not make (its files may be replaced)")


def build_parser() -> argparse.ArgumentParser:
    from .cityscapes import IMAGE_FORMATS
    from .sources import DEFAULT_JPEG_QUALITY
    from .synth import DEFAULT_JPEG_QUALITY as SYNTH_JPEG_QUALITY
    from .synth import LAYOUTS
    from .synth.voc_tree import VOC_PRESETS

    parser = argparse.ArgumentParser(prog="dataprep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic dataset in the official VOC/Cityscapes layout")
    p.add_argument("--layout", choices=LAYOUTS, required=True)
    p.add_argument("--out", type=Path, required=True, help="raw dataset root to create")
    _force_arg(p)
    p.add_argument("--num-train", type=int, default=DEFAULT_SYNTH_TRAIN)
    p.add_argument("--num-val", type=int, default=DEFAULT_SYNTH_VAL)
    p.add_argument("--size", type=_size, default=None, help="HxW (default: 375x500 voc, 512x1024 cityscapes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jpeg-quality", type=JPEG_QUALITY, default=SYNTH_JPEG_QUALITY, help="VOC JPEG quality (1-100)")
    p.add_argument("--preset", choices=VOC_PRESETS, default="scenes",
                   help="voc: 'scenes' (5 classes in context; demo and tests), 'sslbench' (10 classes with shared "
                        "textures, made to need unlabeled data; its labeled budgets: `dataprep splits --balanced`) or "
                        "'pretrain' (the 10 VOC classes sslbench does not use, in textures it does not use, every "
                        "image labeled: a source to pretrain sslbench's encoder on; `fastforec pretrain`)")
    _workers_arg(p)
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("voc", help="PASCAL VOC 2012 (classic or --blender) to shards")
    p.add_argument("--root", type=Path, required=True, help="VOC2012 directory (JPEGImages/, SegmentationClass/...)")
    p.add_argument("--split-dir", type=Path, required=True, help="labeled.txt + unlabeled.txt (U2PL or UniMatch)")
    p.add_argument("--blender", action="store_true", help="labels from SegmentationClassAug (SBD-augmented)")
    _conversion_args(p)

    p = sub.add_parser("cityscapes", help="Cityscapes fine (label ids -> 19 train ids) to shards")
    p.add_argument("--root", type=Path, required=True, help="directory holding leftImg8bit/ and gtFine/")
    p.add_argument("--split-dir", type=Path, required=True, help="labeled.txt + unlabeled.txt (U2PL format)")
    p.add_argument("--image-format", choices=IMAGE_FORMATS, default="png",
                   help="png keeps the original bytes; jpg re-encodes labeled/unlabeled (smaller, faster to "
                        "decode) and keeps val's PNGs, so mIoU is measured on the original pixels")
    p.add_argument("--jpeg-quality", type=JPEG_QUALITY, default=DEFAULT_JPEG_QUALITY, help="1-100")
    _conversion_args(p)

    p = sub.add_parser("folder", help="a custom dataset: images + masks (+ unlabeled images) to shards")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--masks", type=Path, required=True, help="<stem>.png per labeled image: class ids, 255 = ignore")
    p.add_argument("--unlabeled", type=Path, default=None, help="images without masks")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--class-names", nargs="+", default=None)
    p.add_argument("--foreground", type=int, nargs="*", default=None,
                   help="foreground class ids for FOrec (default: all but 0)")
    p.add_argument("--name", default="folder", help="dataset name in the manifest")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--split-dir", type=Path, help="labeled.txt [unlabeled.txt] [val.txt] of file stems")
    group.add_argument("--labeled", type=int, help="random partition: this many labeled images")
    p.add_argument("--num-val", type=int, default=None, help="random partition: val images (default 10%%)")
    p.add_argument("--seed", type=int, default=0, help="random partition seed")
    _conversion_args(p)

    p = sub.add_parser("splits", help="random partition of a raw tree, as U2PL lists")
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--layout", choices=LAYOUTS, required=True)
    p.add_argument("--labeled", type=int, required=True)
    p.add_argument("--seed", type=int, default=None, help="random partition seed (required unless --balanced)")
    p.add_argument("--blender", action="store_true", help="voc: draw labeled ids from trainaug, not train")
    p.add_argument("--balanced", action="store_true",
                   help="sslbench trees: the first --labeled ids of its class-balanced order (budgets are nested; "
                        "--labeled = all training images leaves nothing unlabeled)")
    p.add_argument("--out", type=Path, required=True, help="directory for labeled.txt and unlabeled.txt")
    _force_arg(p)

    for name, helptext in (("verify", "re-hash and decode every shard; exit 1 naming each problem"),
                           ("inspect", "counts, image sizes and class pixel frequencies")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("dir", type=Path, help="shard directory (holding manifest.json)")
        _workers_arg(p)
    return parser


def _run_options(args: argparse.Namespace):
    from .convert import RunOptions, make_caps

    return RunOptions(out=args.out, workers=args.workers,
                      caps=make_caps(shard_samples=args.shard_samples, shard_mb=args.shard_mb),
                      skip_bad=args.skip_bad, quiet=args.quiet, force=args.force)


def _cmd_synth(args: argparse.Namespace) -> int:
    from .convert import mark_output, refuse_foreign_output
    from .synth import DEFAULT_SIZE, default_ids, synthesize

    refuse_foreign_output(args.out, force=args.force)
    train_ids, val_ids = default_ids(args.layout, args.num_train, args.num_val)
    root = synthesize(args.layout, args.out, train_ids=train_ids, val_ids=val_ids,
                      size=args.size or DEFAULT_SIZE[args.layout], seed=args.seed, workers=args.workers,
                      jpeg_quality=args.jpeg_quality, quiet=args.quiet, preset=args.preset)
    mark_output(args.out)
    print(root)
    return EXIT_OK


def _check_out_apart(out: Path, inputs: dict[str, Path | None]) -> None:
    """Shards go in a folder of their own: an --out that is an input folder would mix manifest.json
    and shard files into the raw tree (a tree dataprep synthesised carries its mark, so the
    foreign-folder check alone would let it through)."""
    for option, path in inputs.items():
        if path is not None and out.resolve() == Path(path).resolve():
            raise DataprepError(f"--out '{out}' is the {option} folder; shards go in a folder of their own "
                                f"(e.g. --out '{out.resolve().parent / (out.resolve().name + '_shards')}')")


def _cmd_voc(args: argparse.Namespace) -> int:
    from .convert import run_conversion
    from .voc import voc_plan

    _check_out_apart(args.out, {"--root": args.root, "--split-dir": args.split_dir})
    options = _run_options(args)
    run_conversion(voc_plan(root=args.root, split_dir=args.split_dir, blender=args.blender, skip_bad=args.skip_bad),
                   options)
    return EXIT_OK


def _cmd_cityscapes(args: argparse.Namespace) -> int:
    from .cityscapes import cityscapes_plan
    from .convert import run_conversion

    _check_out_apart(args.out, {"--root": args.root, "--split-dir": args.split_dir})
    options = _run_options(args)
    run_conversion(cityscapes_plan(root=args.root, split_dir=args.split_dir, image_format=args.image_format,
                                   skip_bad=args.skip_bad, jpeg_quality=args.jpeg_quality), options)
    return EXIT_OK


def _cmd_folder(args: argparse.Namespace) -> int:
    from .convert import run_conversion
    from .folder import FolderClasses, FolderSplit, folder_plan

    _check_out_apart(args.out, {"--images": args.images, "--masks": args.masks, "--unlabeled": args.unlabeled,
                                "--split-dir": args.split_dir})
    options = _run_options(args)
    classes = FolderClasses(num_classes=args.num_classes,
                            class_names=tuple(args.class_names) if args.class_names else None,
                            foreground=tuple(args.foreground) if args.foreground is not None else None)
    split = FolderSplit(split_dir=args.split_dir, labeled=args.labeled, num_val=args.num_val, seed=args.seed)
    run_conversion(folder_plan(images_dir=args.images, masks_dir=args.masks, unlabeled_dir=args.unlabeled,
                               classes=classes, split=split, name=args.name, skip_bad=args.skip_bad), options)
    return EXIT_OK


def _cmd_splits(args: argparse.Namespace) -> int:
    from .convert import mark_output, refuse_foreign_output
    from .splits import balanced_partition, random_partition, write_partition

    if args.balanced:
        partition = balanced_partition(root=args.root, labeled=args.labeled)
    elif args.seed is None:
        raise DataprepError("--seed is required for a random partition (or pass --balanced on an sslbench tree)")
    else:
        partition = random_partition(root=args.root, layout=args.layout, labeled=args.labeled, seed=args.seed,
                                     blender=args.blender)
    refuse_foreign_output(args.out, force=args.force)
    out = write_partition(partition, args.out)
    mark_output(out)
    print(f"{out}: {len(partition.labeled)} labeled, {len(partition.unlabeled)} unlabeled")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify_dataset

    report = verify_dataset(args.dir, workers=args.workers)
    for problem in report.problems:
        print(f"dataprep verify: {args.dir}/{problem}", file=sys.stderr)
    if not report.ok:
        print(f"dataprep verify: {len(report.problems)} problem(s) in '{args.dir}'", file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"{args.dir}: OK ({report.num_shards} shards, {report.num_samples} samples)")
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .inspection import inspect_dataset

    inspect_dataset(args.dir, workers=args.workers, console=Console())
    return EXIT_OK


COMMANDS = {"synth": _cmd_synth, "voc": _cmd_voc, "cityscapes": _cmd_cityscapes, "folder": _cmd_folder,
            "splits": _cmd_splits, "verify": _cmd_verify, "inspect": _cmd_inspect}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out: Path | None = getattr(args, "out", None)
    prefix = f"dataprep {args.command}: "
    try:
        if out is not None:
            check_output_dir(out, "--out")
        return COMMANDS[args.command](args)
    except UserError as e:  # DataprepError, ManifestError, ...: the message names the file
        return report_user_error(e, prefix=prefix)
    except OSError as e:
        # Input files are checked and named by the planners; an OSError here is the output.
        if out is None or e.filename is None or not Path(e.filename).resolve().is_relative_to(out.resolve()):
            raise
        return report_user_error(output_error(e, out, "--out"), prefix=prefix)
    except KeyboardInterrupt:
        print(f"dataprep {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
