"""Recipes: config inheritance, every shipped recipe against its source, and docs/reproduce.md
against the files (the two cannot drift)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fastforec import recipes
from fastforec.config import ConfigError, load_config, shipped_configs
from tests.config_files import leaves, resolved, shipped

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reproduce.md"
# The published numbers, as the sources print them (FOrec paper tables; UniMatch README @ 0324f3d).
FOREC = {"voc_classic_92": 71.0, "voc_classic_183": 74.7, "voc_classic_366": 77.5, "voc_classic_732": 78.7,
         "voc_classic_1464": 81.1, "voc_blender_662": 78.84, "voc_blender_1323": 80.52, "voc_blender_2646": 80.92,
         "voc_blender_5291": 80.99, "cityscapes_1_16": 72.42, "cityscapes_1_8": 75.76, "cityscapes_1_4": 77.65,
         "cityscapes_1_2": 79.18}
UNIMATCH = {"unimatch_voc_classic_92": 75.2, "unimatch_voc_classic_183": 77.2, "unimatch_voc_classic_366": 78.8,
            "unimatch_voc_classic_732": 79.9, "unimatch_voc_classic_1464": 81.2, "unimatch_cityscapes_1_16": 76.6,
            "unimatch_cityscapes_1_8": 77.9, "unimatch_cityscapes_1_4": 79.2, "unimatch_cityscapes_1_2": 79.5}
# UniMatch V2's README @ 12469da (DINOv2-Base; it reports no other size)
UNIMATCH_V2 = {"unimatch_v2_vitb_voc_classic_92": 86.3, "unimatch_v2_vitb_voc_classic_183": 87.9,
               "unimatch_v2_vitb_voc_classic_366": 88.9, "unimatch_v2_vitb_voc_classic_732": 90.0,
               "unimatch_v2_vitb_voc_classic_1464": 90.8, "unimatch_v2_vitb_cityscapes_1_16": 83.6,
               "unimatch_v2_vitb_cityscapes_1_8": 84.3, "unimatch_v2_vitb_cityscapes_1_4": 84.5,
               "unimatch_v2_vitb_cityscapes_1_2": 85.1}
CITYSCAPES_LABELED = {"1_30": 100, "1_16": 186, "1_8": 372, "1_4": 744, "1_2": 1488}
VOC_BLENDER_LABELED = {"1_16": 662, "1_8": 1323, "1_4": 2646}


def test_docs_tables_are_generated_from_the_configs() -> None:
    proc = subprocess.run([sys.executable, "-m", "fastforec.cli", "recipes", "--check", str(DOC)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert recipes.markdown() in DOC.read_text()


def test_every_recipe_names_its_source_split_and_number() -> None:
    found = recipes.recipes()
    assert set(FOREC) | set(UNIMATCH) | set(UNIMATCH_V2) <= set(found)
    for name, cfg in found.items():
        assert cfg.train.name == name  # a run directory per recipe, named after its file
        assert cfg.recipe.dataset in recipes.PREPARE, name
        assert (REPO / cfg.recipe.split / "labeled.txt").is_file(), name
        assert cfg.recipe.published_miou == {**FOREC, **UNIMATCH, **UNIMATCH_V2}.get(
            name.replace("unimatch_forec_", "-").replace("unimatch_v2_forec_", "-")), name
        # the number of labeled images the name promises is what the split holds
        suffix = name.rsplit("_", 2)
        count = recipes.labeled_count(cfg.recipe.split)
        if suffix[-1].isdigit() and not suffix[-2].isdigit():
            assert count == int(suffix[-1]), name
        elif "cityscapes" in name:
            assert count == CITYSCAPES_LABELED[f"{suffix[-2]}_{suffix[-1]}"], name
        else:
            assert count == VOC_BLENDER_LABELED[f"{suffix[-2]}_{suffix[-1]}"], name


def test_unimatch_recipes_are_unimatchs_settings() -> None:
    for name, cfg in recipes.recipes().items():
        if not name.startswith("unimatch_") or name.startswith("unimatch_v2_"):
            continue
        assert (cfg.method.base, cfg.model.decoder, cfg.model.output_stride) == ("unimatch", "unimatch", 16)
        assert (cfg.optim.weight_decay, cfg.optim.poly_power, cfg.method.fp_dropout) == (1e-4, 0.9, 0.5)
        assert cfg.recipe.source.startswith("LiheYoung/UniMatch @ 0324f3d")
        if "cityscapes" in name:
            # its README: threshold 0 and output stride 16 (arXiv v1: 0.95 and 8); configs/cityscapes.yaml
            assert cfg.method.conf_thresh == 0.0
            assert (cfg.loss.labeled, cfg.loss.ohem_thresh, cfg.loss.ohem_min_kept) == ("ohem", 0.7, 200000)
            assert (cfg.data.crop_size, cfg.optim.lr, cfg.optim.head_lr_mult, cfg.train.epochs) == (801, 5e-3, 1, 240)
            assert (cfg.eval.mode, cfg.eval.sliding_protocol, cfg.eval.every) == ("sliding", "unimatch", 1)
            assert cfg.recipe.split.startswith("splits/unimatch/cityscapes/")
            # images per forward = UniMatch's per-GPU batch (OHEM's min_kept counts per forward), x 4 GPUs
            assert cfg.data.batch_size * cfg.deepspeed["gradient_accumulation_steps"] == 2 * 4
        else:
            assert (cfg.method.conf_thresh, cfg.loss.labeled, cfg.eval.mode) == (0.95, "ce", "whole")
            assert (cfg.optim.lr, cfg.optim.head_lr_mult, cfg.train.epochs) == (1e-3, 10, 80)
            # crop 321 on UniMatch's own lists, 513 on U2PL's blended ones
            assert cfg.data.crop_size == (513 if re.search(r"blender_\d+$", name) else 321), name
        assert cfg.method.aux == ("forec" if name.startswith("unimatch_forec_") else "none")


V2_SIZES = {"vits": ("dinov2_vits14", "dinov2_small.pth"), "vitb": ("dinov2_vitb14", "dinov2_base.pth"),
            "vitl": ("dinov2_vitl14", "dinov2_large.pth")}


def test_unimatch_v2_recipes_are_unimatch_v2s_settings() -> None:
    found = {n: c for n, c in recipes.recipes().items() if n.startswith("unimatch_v2_") and "_dinov3_" not in n}
    # every size on every split, with and without FOrec: 3 x (5 VOC + 4 Cityscapes) x 2
    assert len(found) == 54
    for name, cfg in found.items():
        m, o = cfg.method, cfg.optim
        size = re.search(r"_(vit[sbl])_", name)[1]
        assert (cfg.model.backbone, cfg.model.decoder, cfg.model.pretrained) == (
            V2_SIZES[size][0], "dpt", f"pretrained/{V2_SIZES[size][1]}")
        assert (m.base, m.conf_thresh, m.ema_decay, m.comp_drop_keep, m.lambda_u) == ("unimatch_v2", 0.95, 0.996,
                                                                                          0.5, 1.0)
        assert (o.name, o.lr, o.head_lr_mult, o.betas, o.weight_decay, o.poly_power) == (
            "adamw", 5e-6, 40, [0.9, 0.999], 0.01, 0.9)
        assert (cfg.eval.model, cfg.eval.size_multiple) == ("teacher", 14)  # the published numbers are the EMA's
        assert cfg.recipe.source.startswith("LiheYoung/UniMatch-V2 @ 70fe066")
        assert m.aux == ("forec" if "_forec_" in name else "none")
        ga = cfg.deepspeed["gradient_accumulation_steps"]
        if "cityscapes" in name:
            assert (cfg.data.crop_size, cfg.data.batch_size * ga, cfg.train.epochs) == (798, 2 * 4, 180)
            assert (cfg.loss.labeled, cfg.loss.ohem_thresh, cfg.loss.ohem_min_kept) == ("ohem", 0.7, 200000)
            assert (cfg.eval.mode, cfg.eval.sliding_protocol) == ("sliding", "unimatch_v2")
            assert cfg.recipe.split.startswith("splits/unimatch/cityscapes/")
        else:
            assert (cfg.data.crop_size, cfg.data.batch_size * ga, cfg.train.epochs) == (518, 4 * 4, 60)
            assert (cfg.loss.labeled, cfg.eval.mode) == ("ce", "whole")
            assert cfg.recipe.split.startswith("splits/u2pl/pascal/")


DINOV3_FILES = {"vits": ("dinov3_vits16", "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
                "vitb": ("dinov3_vitb16", "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
                "vitl": ("dinov3_vitl16", "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth")}


def test_unimatch_v2_dinov3_recipes_are_unimatch_v2s_but_the_backbone_and_crop() -> None:
    """Every DINOv3 recipe is its DINOv2 twin (same size, split, FOrec or not) but for the
    backbone, Meta's weight file, the multiples of 16 (crop, whole-image size), the source and
    its notes; none claims a published number."""
    found = {n: c for n, c in recipes.recipes().items() if "_dinov3_" in n}
    assert len(found) == 54  # 3 sizes x (5 VOC + 4 Cityscapes) x with and without FOrec
    for name, cfg in found.items():
        size = re.search(r"_dinov3_(vit[sbl])_", name)[1]
        twin = load_config(name.replace("_dinov3_", "_"))
        assert (cfg.model.backbone, cfg.model.pretrained) == (DINOV3_FILES[size][0],
                                                              f"pretrained/{DINOV3_FILES[size][1]}")
        assert cfg.data.crop_size == (800 if "cityscapes" in name else 512)  # nearest multiples of 16 to 798 / 518
        assert cfg.eval.size_multiple == 16
        assert cfg.recipe.source.startswith("UniMatch V2 recipe on DINOv3 (no published number)")
        assert cfg.recipe.published_miou is None
        assert {"dinov3_backbone", "dinov3_rope"} <= set(cfg.recipe.notes)
        differ = {"model.backbone", "model.pretrained", "data.crop_size", "eval.size_multiple", "train.name"}
        got, want = leaves(cfg.to_dict()), leaves(twin.to_dict())
        assert {k: v for k, v in got.items() if k not in differ and not k.startswith("recipe.")} == \
            {k: v for k, v in want.items() if k not in differ and not k.startswith("recipe.")}, name
        assert cfg.recipe.split == twin.recipe.split and cfg.recipe.dataset == twin.recipe.dataset


def test_forec_recipes_are_the_papers_settings() -> None:
    for name in FOREC:
        cfg = load_config(name)
        assert (cfg.method.base, cfg.method.aux, cfg.method.conf_thresh) == ("mean_teacher", "forec", 0.95)
        got = (cfg.method.rec_weight_labeled, cfg.method.rec_weight_unlabeled, cfg.model.decoder)
        assert got == (1, 0.5, "unimatch")
        assert cfg.data.batch_size * cfg.deepspeed["gradient_accumulation_steps"] == 16
        voc = name.startswith("voc")
        assert (cfg.data.crop_size, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.head_lr_mult, cfg.train.epochs) == \
            ((512, 1e-3, 1e-4, 10, 80) if voc else (712, 1e-2, 5e-4, 1, 200))
        assert cfg.recipe.split.startswith("splits/u2pl/")


def _write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_extends_merges_objects_in_order_and_the_file_wins(tmp_path: Path) -> None:
    _write(tmp_path / "base" / "a.json", {"data": {"crop_size": 100, "batch_size": 3}, "deepspeed": {"x": {"y": 1}},
                                          "recipe": {"notes": {"k1": "one"}}})
    _write(tmp_path / "base" / "b.json", {"extends": "a.json", "data": {"crop_size": 200},
                                          "deepspeed": {"x": {"z": 2}}, "recipe": {"notes": {"k2": "two"}}})
    leaf = _write(tmp_path / "leaf.json", {"extends": ["base/b.json"], "data": {"batch_size": 5}})
    cfg = load_config(leaf)
    assert (cfg.data.crop_size, cfg.data.batch_size) == (200, 5)
    assert cfg.deepspeed == {"x": {"y": 1, "z": 2}}
    assert cfg.recipe.notes == {"k1": "one", "k2": "two"}
    assert cfg.train.name == "leaf"
    assert load_config(leaf, ["data.crop_size=64", "train.name=other"]).data.crop_size == 64
    assert load_config(leaf, ["train.name=other"]).train.name == "other"


def test_extends_errors_name_the_file(tmp_path: Path) -> None:
    _write(tmp_path / "x.json", {"extends": "y.json"})
    _write(tmp_path / "y.json", {"extends": "x.json"})
    with pytest.raises(ConfigError, match=r"'extends' forms a cycle \(x.json -> y.json -> x.json\)"):
        load_config(tmp_path / "x.json")
    missing = _write(tmp_path / "m.json", {"extends": "nope.json"})
    with pytest.raises(ConfigError, match="'extends' names 'nope.json', which does not exist"):
        load_config(missing)
    bad = _write(tmp_path / "b.json", {"extends": 3})
    with pytest.raises(ConfigError, match="'extends' must be a file name or a list of them, got 3"):
        load_config(bad)
    binary = tmp_path / "bin.json"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match="bin.json: not a text file"):
        load_config(binary)


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_every_shipped_config_resolves() -> None:
    # every setting a file writes or inherits (merged here without fastforec.config) is the loaded
    # config's value; train.name is the file's name unless written
    assert [p.stem for p in shipped()] == shipped_configs()
    for path in shipped():
        got = leaves(load_config(path.stem).to_dict())
        want = {"train.name": path.stem, **leaves(resolved(path))}
        assert {k: _plain(got.get(k, "<missing>")) for k in want} == want, path.name
