"""Models from checkpoints, for evaluation, prediction and visualisation."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch

from fastforec.checkpoint import load_trained_weights
from fastforec.checkpoint_files import CheckpointError, first_line, resolve_checkpoint
from fastforec.checkpoint_spec import split_spec
from fastforec.config import Config
from fastforec.data.manifest import Manifest
from fastforec.export_format import read_export, refuse_onnx
from fastforec.methods import eval_models
from fastforec.models import Segmentor, build_model
from fastforec.peer_checkpoints import SOURCE_NAMES, is_peer_checkpoint, load_into, peer_config, read_peer_checkpoint
from fastforec.terminal import output_console

Weights = Literal["student", "teacher"]
SAFETENSORS_SUFFIX = ".safetensors"  # `fastforec export --format safetensors`


def load_trained_model(path: str | Path, *, weights: Weights | None = "student", device: torch.device | str = "cpu",
                       config: Config | None = None, scored: bool = False) -> tuple[Segmentor, Config, dict[str, Any]]:
    """(model in eval mode, its run config, the checkpoint's dataset info) from a checkpoint, a run
    dir, a ``fastforec export`` safetensors file, or a peer's trained checkpoint
    (``unimatch:best.pth``, ``u2pl:ckpt.pth``, or such a file alone; it needs ``config``).

    The teacher has no reconstruction decoder; ``weights="student"`` keeps it. An export holds one
    set of weights (the segmentation network only): ``weights=None`` takes it, a named one must match.
    ``weights=None`` on a training checkpoint is its student, or with ``scored=True`` the model its
    run scored (``eval.model``: UniMatch V2's EMA teacher); on a peer's file, the weights its source
    publishes. The dataset info's ``"weights"`` says which were loaded.
    """
    refuse_onnx(path, "--checkpoint")  # before torch.load calls it "corrupt"
    if is_peer_checkpoint(path):
        return load_peer_model(path, weights=weights, device=device, config=config)
    if Path(path).suffix == SAFETENSORS_SUFFIX and Path(path).is_file():
        return read_export(path, weights=weights, device=device)
    trained = load_trained_weights(path)
    cfg = trained.config
    weights = weights or (scored_weights(cfg) if scored else "student")
    if weights == "teacher" and trained.teacher is None:
        raise CheckpointError(f"'{trained.path}' has no teacher (method {cfg.method.label}); use the student weights")
    model = build_model(cfg.model, num_classes=trained.dataset["num_classes"],
                        reconstruction=cfg.method.reconstruction if weights == "student" else None)
    try:
        model.load_state_dict(trained.student if weights == "student" else trained.teacher)
    except RuntimeError as e:
        raise CheckpointError(f"'{trained.path}': its {weights} weights do not fit the architecture of its own "
                              f"config ({first_line(e)})") from None
    return model.to(device).eval(), cfg, {**trained.dataset, "weights": weights}


def scored_weights(cfg: Config) -> Weights:
    """The weights a run's own evaluation scored and reported: ``eval.model`` (its headline one)."""
    return eval_models(cfg)[0]  # type: ignore[return-value]


def load_peer_model(spec: str | Path, *, weights: Weights | None, device: torch.device | str,
                    config: Config | None) -> tuple[Segmentor, Config, dict[str, Any]]:
    """A peer's checkpoint in the network its source builds (peer_checkpoints), with the recipe
    ``config`` for everything the file does not say (output stride, evaluation). Without a recipe,
    the source's default one for the dataset kind the file's class count names (21: VOC, 19:
    Cityscapes). The class table is the kind's fixed one (no dataset needed); only a recipe of a
    folder dataset reads its manifest. ``dataset["assumed"]`` says what was inferred, if anything."""
    from fastforec.class_tables import default_recipe, kind_of_class_count, kind_of_recipe, table
    from fastforec.config import load_config

    peer = read_peer_checkpoint(spec, weights=weights)
    assumed = None
    if config is None:
        kind = kind_of_class_count(peer.num_classes)
        if kind is None:
            raise CheckpointError(f"'{peer.path}' is a {SOURCE_NAMES[peer.source]} checkpoint of {peer.num_classes} "
                                  f"classes, neither VOC's 21 nor Cityscapes' 19: it carries no config or class "
                                  f"table; give --config with the recipe it was trained with and --set "
                                  f"data.root=<the dataset's shards>")
        name = default_recipe(peer.source, kind, peer.backbone)
        config = load_config(name)
        assumed = (f"settings: recipe {name}, assumed from '{peer.path}' ({SOURCE_NAMES[peer.source]}, "
                   f"{peer.num_classes} classes: {kind}, {peer.backbone}); give --config to choose another")
    cfg = peer_config(copy.deepcopy(config), peer)
    kind = kind_of_recipe(cfg.recipe.dataset)
    if kind is not None:
        dataset = table(kind)
        where = f"{cfg.recipe.dataset} (recipe.dataset)"
    else:
        manifest = Manifest.load(cfg.data.root)
        dataset = {"kind": manifest.dataset, "num_classes": manifest.num_classes,
                   "class_names": list(manifest.class_names), "palette": [list(c) for c in manifest.palette]}
        where = f"the dataset in data.root '{cfg.data.root}'"
    if peer.num_classes != dataset["num_classes"]:
        raise CheckpointError(f"'{peer.path}' predicts {peer.num_classes} classes, {where} has "
                              f"{dataset['num_classes']}; give the recipe (or point data.root at the dataset) it "
                              f"was trained on")
    dataset.update(weights=peer.weights,  # which of the file's networks (U2PL, UniMatch V2: the teacher)
                   source=peer.source)  # cfg is the given recipe with the source's network and protocol
    if assumed:
        dataset["assumed"] = assumed
    model = build_model(cfg.model, num_classes=peer.num_classes, reconstruction=None)
    table_ = load_into(model, peer)
    output_console(stderr=True).print(table_)
    return model.to(device).eval(), cfg, dataset


def segmentation_network(path: str | Path, weights: Weights | None, *, config: Config | None = None
                         ) -> tuple[Segmentor, Config, dict[str, Any], Path]:
    """(encoder + segmentation decoder in eval mode on the CPU, config, dataset info, checkpoint file)."""
    if is_peer_checkpoint(path):
        model, cfg, dataset = load_peer_model(path, weights=weights, device="cpu", config=config)
        return model, cfg, dataset, split_spec(path)[1]
    ckpt = resolve_checkpoint(path)
    model, cfg, dataset = load_trained_model(ckpt, weights=weights or "student", device="cpu")
    if model.aux_head is not None:
        model = model.segmentation_copy()
    return model.eval(), cfg, dataset, ckpt
