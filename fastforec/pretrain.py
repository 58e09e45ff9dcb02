"""`fastforec pretrain`: an encoder pretrained on a labeled source, as a file `model.pretrained` takes.

    OMP_NUM_THREADS=1 fastforec pretrain --out runs/pretrain     # data, training, encoder file
    fastforec pretrain --checkpoint runs/other_run --out runs/x  # only the encoder of a checkpoint

What ImageNet is to the paper's ResNets, ``dataprep synth --preset pretrain`` is to sslbench's
half-width ResNet-18 (issue 34; dataprep/synth/pretrain.py): the 10 VOC classes sslbench does not
use, in textures it does not use, every image labeled. The command runs, each step skipped when
done, so re-running the same command continues a stopped one:

1. data under OUT/data: ``dataprep synth --layout voc --preset pretrain`` (raw/), ``dataprep
   splits`` labeling every training image (splits/) and ``dataprep voc`` (shards/); the data's
   parameters go to OUT/data/pretrain_data.json, and another set of them is refused;
2. supervised training of the config (default ``configs/cpu/sslbench_pretrain.json``: sslbench's
   network, dense labels) on those shards in OUT/run, with ``--resume auto``: a stopped run
   (signal, kill, crash past a checkpoint) continues from its newest checkpoint;
3. the encoder file OUT/encoder.safetensors: the trained student's encoder in torchvision/timm
   names (``conv1.weight``, ``layer1.0...``: what ``model.pretrained`` reads), with the source
   checkpoint, its sha256 and the command as safetensors metadata; beside it OUT/encoder.json,
   the provenance: the file's sha256, the command, the source checkpoint and its sha256, the
   shards' identity, code, packages, CPU, and the wall time of every training attempt.

The recipe trains in fp32 on every CPU (``train.bf16_on_amx: false``, unlike the sslbench recipe
it extends): the encoder file is an input every later study names by its checksum, and the bf16
block's checkpoint holds the 16-bit copies of the weights.

Training runs in this process, on one rank; a multi-GPU pretraining is a `fastforec train` run
of the same config (with ``data.root`` at the shards), then ``fastforec pretrain --checkpoint``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastforec.config import add_override_argument, load_config
from fastforec.errors import UserError

NAME = "pretrain"
HELP = "pretrain an encoder on `dataprep synth --preset pretrain` and write it as a model.pretrained file"
DEFAULT_CONFIG = "sslbench_pretrain"
DEFAULT_NUM_TRAIN = 20000
DEFAULT_NUM_VAL = 500
DEFAULT_SIZE = (64, 64)
ENCODER_FILE = "encoder.safetensors"
PROVENANCE_FILE = "encoder.json"
ATTEMPTS_FILE = "attempts.json"  # in OUT/run: one record per training attempt (wall time, resumed, exit)
DATA_SPEC_FILE = "pretrain_data.json"
ENCODER_FORMAT = "fastforec-encoder-v1"
ENCODER_PREFIX = "backbone.body."  # where a fastforec network keeps its ResNet encoder
PRESET = "pretrain"
HASH_CHUNK = 1 << 20


class PretrainError(UserError, ValueError):
    """Bad arguments, or an output directory made with other data parameters."""


@dataclass(frozen=True)
class DataSpec:
    num_train: int
    num_val: int
    height: int
    width: int
    seed: int
    preset: str = PRESET


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not HxW (e.g. 64x64)") from None
    return h, w


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True,
                   help="directory: data/, run/, encoder.safetensors, encoder.json; the same command again continues "
                        "a stopped pretraining")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help=f"training config (a file, or a config name in configs/; default {DEFAULT_CONFIG}); "
                        "its data.root is replaced by the generated shards")
    add_override_argument(p, help="override a training config entry (repeatable), e.g. --set train.max_steps=2000")
    p.add_argument("--num-train", type=int, default=DEFAULT_NUM_TRAIN,
                   help=f"synthetic training images, all labeled (default {DEFAULT_NUM_TRAIN})")
    p.add_argument("--num-val", type=int, default=DEFAULT_NUM_VAL,
                   help=f"synthetic validation images (default {DEFAULT_NUM_VAL})")
    p.add_argument("--size", type=_size, default=DEFAULT_SIZE, help="image size HxW (default 64x64, sslbench's)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic images (default 0)")
    p.add_argument("--checkpoint", default=None,
                   help="export the encoder of this fastforec checkpoint (a file or a run directory) and do nothing "
                        "else: no data, no training")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    command = command_line(args)
    if args.checkpoint is not None:
        write_encoder(args.checkpoint, out, command=command)
        return 0
    spec = DataSpec(args.num_train, args.num_val, args.size[0], args.size[1], args.data_seed)
    if spec.num_train < 1 or spec.num_val < 1:
        raise PretrainError(f"--num-train and --num-val must be >= 1, got {spec.num_train} and {spec.num_val}")
    cfg = load_config(args.config, args.overrides)  # a bad config or --set fails before any data is made
    run_dir = out / "run"
    finished = (run_dir / "results.json").is_file()
    if finished:
        _check_same_training(cfg.to_dict(), run_dir)
    shards = prepare_data(out / "data", spec)
    if not finished:
        code = train(args.config, [*args.overrides, f"data.root={shards}"], run_dir)
        if code != 0:
            return code
    write_encoder(run_dir, out, command=command, attempts=_read_json(run_dir / ATTEMPTS_FILE, []))
    return 0


def command_line(args: argparse.Namespace) -> list[str]:
    """The command as it would be typed, every option spelled out (defaults included), so that
    the provenance says what was run whatever the defaults become."""
    if args.checkpoint is not None:
        return ["fastforec", NAME, "--checkpoint", str(args.checkpoint), "--out", str(args.out)]
    cmd = ["fastforec", NAME, "--out", str(args.out), "--config", str(args.config), "--num-train", str(args.num_train),
           "--num-val", str(args.num_val), "--size", f"{args.size[0]}x{args.size[1]}",
           "--data-seed", str(args.data_seed)]
    for item in args.overrides:
        cmd += ["--set", item]
    return cmd


# ---------------------------------------------------------------------------------------------
# 1. data


def data_commands(data: Path, spec: DataSpec) -> list[list[str]]:
    raw, splits, shards = data / "raw", data / "splits", data / "shards"
    return [["synth", "--layout", "voc", "--preset", spec.preset, "--out", str(raw), "--num-train", str(spec.num_train),
             "--num-val", str(spec.num_val), "--size", f"{spec.height}x{spec.width}", "--seed", str(spec.seed),
             "--quiet", "--force"],
            # every training image labeled: the draw of all of them is the whole list, whatever the seed
            ["splits", "--root", str(raw), "--layout", "voc", "--labeled", str(spec.num_train), "--seed", "0",
             "--out", str(splits), "--force"],
            ["voc", "--root", str(raw), "--split-dir", str(splits), "--out", str(shards), "--quiet"]]


def prepare_data(data: Path, spec: DataSpec) -> Path:
    """The shard directory, made by the dataprep commands that have not finished yet."""
    from fastforec.atomic import atomic_write_json
    from fastforec.dataprep_cli import run_dataprep

    marker = data / DATA_SPEC_FILE
    if marker.is_file():
        old = json.loads(marker.read_text())
        for key, value in asdict(spec).items():
            if old.get(key) != value:
                raise PretrainError(f"'{marker}' was made with {key}={old.get(key)!r}, this run asks for {value!r}; "
                                    f"use another --out, or the same data options to continue")
    # synth and splits get --force: OUT/data is this command's own, and a synth stopped half-way
    # leaves its --out unmarked (dataprep marks it when done); it is written again, identically
    synth, splits, convert = data_commands(data, spec)
    shards = data / "shards"
    if not marker.is_file():
        print("dataprep " + " ".join(synth), file=sys.stderr, flush=True)
        run_dataprep(synth)
        atomic_write_json(marker, asdict(spec))  # written last: the raw tree is complete
    if not (shards / "manifest.json").is_file():
        for argv in (splits, convert):
            print("dataprep " + " ".join(argv), file=sys.stderr, flush=True)
            run_dataprep(argv)
    return shards


# ---------------------------------------------------------------------------------------------
# 2. training


def train(config: str, overrides: list[str], run_dir: Path) -> int:
    """`fastforec train --config CONFIG --run-dir RUN_DIR --resume auto` in this process; the
    attempt's wall time, whether it resumed and its exit code are appended to RUN_DIR/attempts.json."""
    from fastforec import train as train_command
    from fastforec.atomic import atomic_write_json
    from fastforec.checkpoint_files import list_checkpoints
    from fastforec.provenance import code_version

    resumed = bool(list_checkpoints(run_dir / "checkpoints"))
    code = code_version()  # now: the tree may change (a commit, an edit) while the attempt trains
    start = time.time()
    exit_code = train_command.run(argparse.Namespace(config=config, overrides=overrides, run_dir=str(run_dir),
                                                     resume="auto", local_rank=None))
    if run_dir.is_dir():
        path = run_dir / ATTEMPTS_FILE
        attempts = _read_json(path, [])
        attempts.append({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(start)),
                         "seconds": round(time.time() - start, 1), "resumed": resumed, "exit_code": exit_code,
                         "code": code})
        atomic_write_json(path, attempts)
    return exit_code


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _check_same_training(wanted: dict[str, Any], run_dir: Path) -> None:
    """A finished run is not trained again: refuse a command that asks for another training
    (data.root aside: the data's identity is pretrain_data.json's to check)."""
    from fastforec.config import config_from_dict
    from fastforec.precision import PRECISION_BLOCKS, names_precision

    saved = _read_json(run_dir / "config.json", None)
    if saved is None:
        return
    # settings that did not exist when it ran read as their defaults, as a resume would read them
    try:
        saved = config_from_dict(saved).to_dict()
    except ValueError:
        pass  # not a config this version reads: compared as it is, so the first key that differs is named
    if wanted["train"]["bf16_on_amx"] and not names_precision(wanted["deepspeed"]):
        # the precision is then the machine's choice, written into config.json; the training
        # asked for is the same whichever it chose (a resume keeps the saved one)
        saved = {**saved, "deepspeed": {k: v for k, v in saved["deepspeed"].items() if k not in PRECISION_BLOCKS}}
    have, want = _flat(saved), _flat(wanted)
    for key in sorted(set(have) | set(want)):
        if key != "data.root" and have.get(key) != want.get(key):
            raise PretrainError(f"'{run_dir}' finished a training with {key}={have.get(key)!r}, this command asks "
                                f"for {want.get(key)!r}; use another --out to train again")


# ---------------------------------------------------------------------------------------------
# 3. the encoder file


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tensors_sha256(state: dict[str, Any]) -> str:
    """A sha256 over the tensors alone (names, dtypes, shapes, bytes, in name order): two encoder
    files with the same weights agree here even when their metadata (paths, checksums of their
    source checkpoints) differ."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def encoder_state(student: dict[str, Any], source: Path) -> dict[str, Any]:
    """The encoder's tensors of a fastforec network's state dict, in torchvision/timm names."""
    state = {k[len(ENCODER_PREFIX):]: v.detach().contiguous() for k, v in student.items()
             if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise PretrainError(f"'{source}': its network has no ResNet encoder ('{ENCODER_PREFIX}*' tensors); "
                            f"`fastforec pretrain` exports the encoders of DeepLabV3+ runs")
    return state


def write_encoder(checkpoint: str | Path, out: Path, *, command: list[str],
                  attempts: list[dict[str, Any]] | None = None) -> Path:
    """OUT/encoder.safetensors (the student's encoder of ``checkpoint``: a file or a run directory)
    and OUT/encoder.json (its provenance); returns the encoder file."""
    from safetensors.torch import save_file

    from fastforec.atomic import atomic_path, atomic_write_json
    from fastforec.checkpoint import load_trained_weights
    from fastforec.checkpoint_files import checkpoint_step
    from fastforec.provenance import provenance

    weights = load_trained_weights(checkpoint)
    state = encoder_state(weights.student, weights.path)
    cfg = weights.config
    source_sha = sha256_file(weights.path)
    data_root = Path(cfg.data.root)
    record = provenance(data_root=data_root if (data_root / "manifest.json").is_file() else None)
    results = _read_json(weights.path.parent.parent / "results.json", None)
    meta = {"format": ENCODER_FORMAT, "backbone": cfg.model.backbone, "backbone_width": str(cfg.model.backbone_width),
            "source_checkpoint": str(weights.path), "source_sha256": source_sha,
            "source_step": str(checkpoint_step(weights.path)), "command": json.dumps(command),
            "dataset": json.dumps({k: weights.dataset.get(k) for k in ("kind", "num_classes", "class_names")}),
            "config": json.dumps(cfg.to_dict())}
    out.mkdir(parents=True, exist_ok=True)
    encoder = out / ENCODER_FILE
    with atomic_path(encoder) as tmp:
        save_file(state, str(tmp), metadata=meta)
    training = None
    if attempts:
        training = {"attempts": attempts, "seconds": round(sum(a["seconds"] for a in attempts), 1)}
        # the code that trained the encoder (each attempt's, read when it started), not the tree's
        # state when the file is written; export_code is the latter
        record["export_code"] = record["code"]
        record["code"] = attempts[-1].get("code", record["code"])
    atomic_write_json(out / PROVENANCE_FILE, {
        "file": ENCODER_FILE, "sha256": sha256_file(encoder), "tensors_sha256": tensors_sha256(state),
        "format": ENCODER_FORMAT,
        "use": f"--set model.pretrained={encoder} (model.backbone={cfg.model.backbone}, "
               f"model.backbone_width={cfg.model.backbone_width})",
        "command": command, "tensors": len(state),
        "parameters": int(sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))),
        "source": {"checkpoint": str(weights.path), "sha256": source_sha, "step": checkpoint_step(weights.path),
                   "val_miou_last": None if results is None else results.get("miou_last")},
        "training": training, "config": cfg.to_dict(), "dataset": json.loads(meta["dataset"]),
        **record})
    print(f"{weights.path} (step {checkpoint_step(weights.path)}, {len(state)} encoder tensors) -> {encoder}; "
          f"provenance {out / PROVENANCE_FILE}")
    print(f"use it with: --set model.pretrained={encoder}")
    return encoder


def _read_json(path: Path, default: Any) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default
