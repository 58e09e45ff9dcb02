"""Config loading: typed sections, key paths in every error, --set overrides with field types."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fastforec.config import (
    CONFIGS_DIR,
    AugConfig,
    Config,
    ConfigError,
    DataConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_config,
    read_config_file,
    resolve_config_path,
)
from fastforec.methods import check_config
from fastforec.models.build import check_pretrained


def _write(tmp_path: Path, data: Any, name: str = "run.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _error(tmp_path: Path, data: Any, overrides: tuple[str, ...] = ()) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_config(path, overrides)
    return str(exc.value)


# ---------------------------------------------------------------------------------------------
# loading


def test_sections_load_into_their_dataclasses(tmp_path: Path) -> None:
    path = _write(tmp_path, {
        "data": {"root": "data/x", "crop_size": 321, "aug": {"cutmix_prob": 0.25}},
        "model": {"backbone": "resnet18", "output_stride": 8},
        "method": {"base": "mean_teacher", "aux": "rec", "conf_thresh": 0.9, "fg_classes": [1, 2]},
        "optim": {"lr": 1},  # an integer where a float is expected is a number
        "train": {"epochs": 3, "max_steps": None},
        "deepspeed": {"zero_optimization": {"stage": 1}},
    })
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert isinstance(cfg.data, DataConfig) and isinstance(cfg.data.aug, AugConfig)
    assert isinstance(cfg.model, ModelConfig) and isinstance(cfg.method, MethodConfig)
    assert isinstance(cfg.optim, OptimConfig) and isinstance(cfg.train, TrainConfig)
    assert cfg.data.root == "data/x" and cfg.data.crop_size == 321
    assert cfg.data.aug.cutmix_prob == 0.25
    assert cfg.data.aug.jitter_prob == AugConfig().jitter_prob  # untouched keys keep defaults
    assert cfg.model.backbone == "resnet18" and cfg.model.output_stride == 8
    assert (cfg.method.base, cfg.method.aux) == ("mean_teacher", "rec") and cfg.method.fg_classes == [1, 2]
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and cfg.train.max_steps is None
    assert cfg.deepspeed == {"zero_optimization": {"stage": 1}}


def test_empty_file_gives_the_design_defaults(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {}))
    # docs/architecture.md section A: tau 0.95, lambda_u 1, rec weights 1.0 / 0.5, EMA 0.99, OS 16.
    assert cfg.method.conf_thresh == 0.95 and cfg.method.lambda_u == 1.0
    assert (cfg.method.rec_weight_labeled, cfg.method.rec_weight_unlabeled) == (1.0, 0.5)
    assert cfg.method.ema_decay == 0.99
    assert cfg.model.output_stride == 16
    assert cfg.optim.momentum == 0.9 and cfg.optim.poly_power == 0.9


def test_to_dict_is_json_and_reloads_to_the_same_config(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, {"method": {"base": "mean_teacher", "aux": "fgbg", "fg_classes": [3]},
                                        "train": {"max_steps": 7}}))
    resolved = cfg.to_dict()
    text = json.dumps(resolved)  # the resolved config is saved as JSON in the run directory
    assert resolved["method"]["fg_classes"] == [3] and resolved["train"]["max_steps"] == 7
    assert resolved["data"]["aug"]["cutmix_area_max"] == 0.4
    again = load_config(_write(tmp_path, json.loads(text), "resolved.json"))
    assert again == cfg


def test_method_derived_properties() -> None:
    assert MethodConfig(aux="rec").reconstruction == "rgb"
    assert MethodConfig(aux="forec").reconstruction == "rgb"
    assert MethodConfig(aux="fgbg").reconstruction == "fgbg"
    assert MethodConfig(aux="none").reconstruction is None
    assert MethodConfig(base="supervised", aux="none").reconstruction is None
    assert MethodConfig(conf_thresh=0.8).rec_thresh == 0.8  # tau_rec defaults to tau
    assert MethodConfig(conf_thresh=0.8, rec_conf_thresh=0.6).rec_thresh == 0.6


# ---------------------------------------------------------------------------------------------
# errors name the key path and what is allowed


def test_unknown_key_names_its_path_and_the_allowed_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, {"method": {"conf_tresh": 0.9}})
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "method.conf_tresh: unknown key" in msg
    assert "conf_thresh" in msg and "ema_decay" in msg  # the allowed keys are listed


def test_unknown_nested_and_top_level_keys(tmp_path: Path) -> None:
    assert "data.aug.cutmix: unknown key" in _error(tmp_path, {"data": {"aug": {"cutmix": 0.5}}})
    msg = _error(tmp_path, {"modle": {}})
    assert "modle: unknown key" in msg and "model" in msg and "deepspeed" in msg


@pytest.mark.parametrize(("data", "expected"), [
    ({"model": {"output_stride": "16"}}, "model.output_stride: must be an integer, got '16'"),
    ({"train": {"epochs": True}}, "train.epochs: must be an integer, got True"),
    ({"train": {"epochs": 2.5}}, "train.epochs: must be an integer, got 2.5"),
    ({"optim": {"lr": "0.01"}}, "optim.lr: must be a number, got '0.01'"),
    ({"model": {"sync_bn": 1}}, "model.sync_bn: must be true or false, got 1"),
    ({"data": {"root": 3}}, "data.root: must be a string, got 3"),
    ({"data": {"aug": []}}, "data.aug: must be an object, got a list"),
    ({"model": None}, "model: must be an object, got null"),
    ({"method": {"fg_classes": []}}, "method.fg_classes: must name at least one class (or be null"),
    ({"model": {"backbone": "resnet34"}}, "model.backbone: must be one of 'resnet18', 'resnet50'"),
    ({"method": {"fg_classes": [1, "car"]}}, "method.fg_classes[1]: must be an integer, got 'car'"),
    ({"method": {"fg_classes": 5}}, "method.fg_classes: must be a list of int or null, got 5"),
    ({"method": {"rec_conf_thresh": "high"}}, "method.rec_conf_thresh: must be float or null, got 'high'"),
    ({"deepspeed": [1]}, "deepspeed: must be an object, got a list"),
])
def test_wrong_types_name_the_key_and_the_expected_type(tmp_path: Path, data: dict, expected: str) -> None:
    assert expected in _error(tmp_path, data)


@pytest.mark.parametrize(("data", "expected"), [
    ({"method": {"conf_thresh": 1.5}}, "method.conf_thresh: must be a probability in [0, 1], got 1.5"),
    ({"method": {"conf_thresh": -0.1}}, "method.conf_thresh: must be a probability in [0, 1]"),
    ({"method": {"rec_conf_thresh": 2.0}}, "method.rec_conf_thresh: must be a probability in [0, 1]"),
    ({"model": {"output_stride": 32}}, "model.output_stride: must be 8 or 16, got 32"),
    ({"model": {"backbone_width": 0}}, "model.backbone_width: must be in (0, 4] (1.0 = the standard ResNet), got 0"),
    ({"method": {"ema_decay": 1.0}}, "method.ema_decay: must be in [0, 1), got 1.0"),
    ({"data": {"aug": {"cutmix_prob": 1.2}}}, "data.aug.cutmix_prob: must be a probability in [0, 1]"),
    ({"data": {"aug": {"scale_min": 2.0, "scale_max": 0.5}}}, "data.aug.scale_min/scale_max: needs"),
    ({"data": {"crop_size": 8}}, "data.crop_size: must be >= 16, got 8"),
    ({"optim": {"lr": 0}}, "optim.lr: must be > 0, got 0.0"),
    ({"train": {"name": "a/b"}}, "train.name: must be a non-empty name without '/'"),
    ({"train": {"name": ".."}}, "train.name: must be a non-empty name without '/', other than '.' and '..'"),
    ({"method": {"fg_classes": [1, -2]}}, "method.fg_classes: class ids must be >= 0"),
    ({"optim": {"lr": float("inf")}}, "optim.lr: must be a finite number, got inf"),  # JSON Infinity
    ({"method": {"lambda_u": float("nan")}}, "method.lambda_u: must be a finite number, got nan"),
    ({"optim": {"lr": 1e38}}, "optim.lr: lr x head_lr_mult = 1e+39 is beyond the float32 range"),
    # the model families: DINOv2 and DINOv3 take the DPT head, ResNets a DeepLabV3+ decoder
    ({"model": {"backbone": "dinov2_vitb14"}}, "model.decoder: 'unimatch' is a DeepLabV3+ decoder for ResNets; "
                                                "the DINOv2 backbone dinov2_vitb14 takes UniMatch V2's DPT head: set "
                                                "model.decoder=dpt"),
    ({"model": {"backbone": "dinov3_vitb16"}}, "the DINOv3 backbone dinov3_vitb16 takes UniMatch V2's DPT head"),
    ({"model": {"decoder": "dpt"}}, "model.decoder: 'dpt' is the head of the DINOv2 and DINOv3 backbones; resnet101 "
                                    "takes a DeepLabV3+ decoder (unimatch, u2pl or torchvision), or set model.backbone "
                                    "to one of dinov2_vits14 / dinov2_vitb14 / dinov2_vitl14 / dinov3_vits16 / "
                                    "dinov3_vitb16 / dinov3_vitl16"),
    ({"model": {"activation_checkpointing": True}}, "model.activation_checkpointing: is offered for the DINOv2 "
                                                    "and DINOv3 backbones only, not resnet101"),
    ({"model": {"backbone": "dinov2_vits14", "decoder": "dpt"}, "data": {"crop_size": 512}},
     "data.crop_size: is 512, but dinov2_vits14 cuts images into 14x14 patches"),
    ({"model": {"backbone": "dinov3_vits16", "decoder": "dpt"}, "data": {"crop_size": 518}},
     "data.crop_size: is 518, but dinov3_vits16 cuts images into 16x16 patches and would drop the remainder: use a "
     "multiple of 16 (UniMatch V2 on DINOv3: 512 on VOC, 800 on Cityscapes)"),
    ({"model": {"backbone": "dinov3_vits16", "decoder": "dpt"}, "data": {"crop_size": 512},
      "eval": {"size_multiple": 14}},
     "eval.size_multiple: is 14, but dinov3_vits16 cuts images into 16x16 patches: use 16 (or null)"),
    ({"optim": {"betas": [0.9, 1.0]}}, "optim.betas: must be two numbers in [0, 1)"),
    ({"method": {"comp_drop_keep": 1.5}}, "method.comp_drop_keep: must be a probability in [0, 1]"),
    ({"eval": {"size_multiple": 0}}, "eval.size_multiple: must be >= 1 (or null)"),
])
def test_out_of_range_values_say_what_is_allowed(tmp_path: Path, data: dict, expected: str) -> None:
    assert expected in _error(tmp_path, data)


def test_missing_file_bad_json_and_non_object_top_level(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json' does not exist"):
        load_config(missing)
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"backbone": "resnet18",}}')
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="the top level must be an object"):
        load_config(_write(tmp_path, [1, 2]))


def test_check_paths_names_the_missing_manifest_and_weights(tmp_path: Path) -> None:
    cfg = config_from_dict({"data": {"root": str(tmp_path / "shards")}})
    with pytest.raises(ConfigError, match=r"data.root: no manifest.json in .*run `dataprep`"):
        cfg.check_paths()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    cfg.check_paths()  # present: no error
    cfg.model.pretrained = str(tmp_path / "r101.pth")
    cfg.check_paths()  # the encoder file is the model side's check
    with pytest.raises(ConfigError, match=r"model.pretrained: file '.*r101.pth' does not exist"):
        check_pretrained(cfg.model)


# ---------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_are_parsed_with_the_field_type(tmp_path: Path) -> None:
    path = _write(tmp_path, {"train": {"max_steps": 5}, "model": {"pretrained": "w.pth"}})
    cfg = load_config(path, [
        "method.conf_thresh=0.8",
        "train.epochs=12",
        "train.max_steps=null",
        "model.sync_bn=false",
        "model.pretrained=none",
        "model.backbone=resnet50",
        "method.rec_conf_thresh=0.7",
        "method.fg_classes=1,2, 3",
        "data.aug.hue=0.1",
        "data.root=some/where=odd",  # only the first '=' splits key from value
        "deepspeed.zero_optimization.stage=2",
        "deepspeed.bf16={\"enabled\": true}",
    ])
    assert cfg.method.conf_thresh == 0.8 and isinstance(cfg.method.conf_thresh, float)
    assert cfg.train.epochs == 12 and isinstance(cfg.train.epochs, int)
    assert cfg.train.max_steps is None
    assert cfg.model.sync_bn is False
    assert cfg.model.pretrained is None
    assert cfg.model.backbone == "resnet50"
    assert cfg.method.rec_conf_thresh == 0.7 and cfg.method.rec_thresh == 0.7
    assert cfg.method.fg_classes == [1, 2, 3]
    assert cfg.data.aug.hue == 0.1
    assert cfg.data.root == "some/where=odd"
    assert cfg.deepspeed == {"zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}


def test_overrides_do_not_modify_the_input_dict() -> None:
    raw = {"method": {"conf_thresh": 0.9}}
    out = apply_overrides(raw, ["method.conf_thresh=0.5", "method.fg_classes=[4, 5]"])
    assert raw == {"method": {"conf_thresh": 0.9}}
    assert out == {"method": {"conf_thresh": 0.5, "fg_classes": [4, 5]}}


@pytest.mark.parametrize(("override", "expected"), [
    ("method.conf_thresh=high", "method.conf_thresh: must be a number, got 'high'"),
    ("train.epochs=1.5", "train.epochs: must be an integer, got '1.5'"),
    ("model.sync_bn=maybe", "model.sync_bn: must be true or false, got 'maybe'"),
    ("method.conf_tresh=0.5", "method.conf_tresh: unknown key; allowed keys here are"),
    ("methd.conf_thresh=0.5", "methd: unknown key"),
    ("method.conf_thresh", "expected key.sub=value"),
    ("method.conf_thresh=1.5", "method.conf_thresh: must be a probability in [0, 1], got 1.5"),
    ("model.output_stride=4", "model.output_stride: must be 8 or 16, got 4"),
    ("model.backbone=vgg16", "model.backbone: must be one of"),
    ("optim.lr=nan", "optim.lr: must be a finite number, got nan"),
    ("method.fg_classes=[1,2", "method.fg_classes: '[1,2' is not valid JSON"),
])
def test_bad_overrides_name_the_key(tmp_path: Path, override: str, expected: str) -> None:
    assert expected in _error(tmp_path, {}, (override,))


# ---------------------------------------------------------------------------------------------
# bare config names (`--config cityscapes_1_4.json`, as the paper-recipe commands are written)


def test_a_bare_config_name_resolves_against_the_projects_configs(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the name must find the project's
    shipped = read_config_file(CONFIGS_DIR / "forec" / "cityscapes_1_4.json")  # with what it extends
    # bare, and the path from before the recipes had a folder per source
    for name in ("cityscapes_1_4.json", "cityscapes_1_4", "configs/cityscapes_1_4.json"):
        assert resolve_config_path(name) == CONFIGS_DIR / "forec" / "cityscapes_1_4.json"
        cfg = load_config(name, ["train.epochs=3"])
        assert cfg.train.name == "cityscapes_1_4"  # the file's name
        assert cfg.data.crop_size == shipped["data"]["crop_size"] == 712 and cfg.train.epochs == 3


CPU_CONFIGS = ("synth_demo", "synth_ablation", "sslbench", "sslbench_pretrain", "sslbench_pretrained")


@pytest.mark.parametrize("stem", CPU_CONFIGS)
def test_the_cpu_configs_resolve_by_name_and_by_their_old_top_level_path(
        stem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the project's are meant
    new_path = CONFIGS_DIR / "cpu" / f"{stem}.json"
    assert new_path.is_file() and not (CONFIGS_DIR / f"{stem}.json").exists()
    # bare, with and without .json, the path from before configs/cpu/ (Makefile, docs, scripts), and
    # the path the docs write from the project's root, here from another directory
    for name in (stem, f"{stem}.json", f"configs/{stem}.json", f"configs/cpu/{stem}.json"):
        assert resolve_config_path(name) == new_path
        cfg = load_config(name)
        assert cfg.train.name == stem
        assert cfg.data.device == read_config_file(new_path)["data"]["device"] == "cpu"


def test_an_existing_path_wins_over_a_shipped_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"train": {"name": "mine"}}, "cityscapes_1_4.json")
    assert load_config("cityscapes_1_4.json").train.name == "mine"
    assert load_config("cityscapes_1_4").train.name == "cityscapes_1_4"  # no such file here: the shipped one


def test_an_unknown_config_name_lists_the_shipped_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as exc:
        load_config("cityscapes_1_3.json")
    msg = str(exc.value)
    assert "config file 'cityscapes_1_3.json' does not exist" in msg and str(CONFIGS_DIR) in msg
    listed = msg.split(" are: ")[1].split(", ")
    assert listed == sorted(p.stem for p in CONFIGS_DIR.rglob("*.json") if p.parent.name != "base")
    assert "cityscapes_1_4" in listed and "voc_classic_92" in listed and "unimatch_v2_vitb_cityscapes_1_2" in listed
    # a path with a folder is never a name, but a missing file named like a shipped config names it
    with pytest.raises(ConfigError, match=r"config file 'sub/cityscapes_1_4.json' does not exist; the shipped config "
                                          r"of that name is 'cityscapes_1_4' \(--config cityscapes_1_4, from any "
                                          r"directory\)$"):
        load_config("sub/cityscapes_1_4.json")
    # nor is a missing file in someone else's configs/ folder: never this project's recipe in its place
    with pytest.raises(ConfigError, match="the shipped config of that name is 'cityscapes_1_4'"):
        load_config(str(tmp_path / "exp" / "configs" / "cityscapes_1_4.json"))


def test_recipes_live_in_one_folder_per_source_with_unique_names() -> None:
    folders = {p.relative_to(CONFIGS_DIR).parts[0] for p in CONFIGS_DIR.rglob("*.json") if p.parent != CONFIGS_DIR}
    assert {"base", "cpu", "forec", "unimatch", "unimatch_v2"} <= folders
    assert not list(CONFIGS_DIR.glob("*.json"))  # every config in a folder, the CPU ones in configs/cpu/
    stems = [p.stem for p in CONFIGS_DIR.rglob("*.json") if p.parent.name != "base"]
    assert len(stems) == len(set(stems))  # a bare name finds one file
    for p in (CONFIGS_DIR / "unimatch_v2").glob("*.json"):
        assert p.stem.startswith("unimatch_v2_")
    for p in (CONFIGS_DIR / "unimatch").glob("*.json"):
        assert p.stem.startswith("unimatch_") and not p.stem.startswith("unimatch_v2_")


def test_two_shipped_configs_with_one_name_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fastforec.config.files as files

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _write(tmp_path / folder, {}, "same.json")
    monkeypatch.setattr(files, "CONFIGS_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"a shipped config named 'same' exists already .*must be unique"):
        resolve_config_path("same")


def test_the_documented_training_command_finds_its_config(tmp_path: Path) -> None:
    # `deepspeed fastforec/train.py --config cityscapes_1_4.json` from a directory without the
    # data: the config resolves, and the run stops on the missing shards (not on the config).
    repo = CONFIGS_DIR.parent
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(repo)
    proc = subprocess.run([sys.executable, str(repo / "fastforec" / "train.py"), "--config", "cityscapes_1_4.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "does not exist" not in proc.stderr
    assert "data.root: no manifest.json in 'data/cityscapes_744'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------
# CutMix needs a partner on the same rank (a check of what the base needs: methods.check_config,
# run by `train` and `bench` before anything starts)


@pytest.mark.parametrize("base,aux", [("mean_teacher", "none"), ("mean_teacher", "rec"), ("mean_teacher", "forec"),
                                      ("fixmatch", "fgbg"), ("unimatch", "none"), ("unimatch_v2", "forec")])
def test_cutmix_with_one_sample_per_rank_is_refused(base: str, aux: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_config(config_from_dict({"data": {"batch_size": 1}, "method": {"base": base, "aux": aux}}))
    msg = str(exc.value)
    assert msg.startswith("data.batch_size: is 1, but CutMix (data.aug.cutmix_prob=0.5)")
    assert "at least 2 per rank" in msg and "data.aug.cutmix_prob=0" in msg


def test_one_sample_per_rank_is_fine_without_cutmix_or_without_unlabeled_data() -> None:
    check_config(config_from_dict({"data": {"batch_size": 1, "aug": {"cutmix_prob": 0.0}}}))
    check_config(config_from_dict({"data": {"batch_size": 1}, "method": {"base": "supervised", "aux": "none"}}))
    check_config(config_from_dict({"data": {"batch_size": 2}}))


def test_the_multi_node_override_of_a_paper_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"data.batch_size: is 1, but CutMix"):
        check_config(load_config("voc_classic_92", ["data.batch_size=1", "deepspeed.gradient_accumulation_steps=1"]))
    cfg = load_config("voc_classic_92", ["data.batch_size=2", "deepspeed.gradient_accumulation_steps=1"])
    check_config(cfg)
    assert cfg.data.batch_size == 2
