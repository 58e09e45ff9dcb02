"""UniMatch V2 (+ FOrec) on DINOv3: the shipped recipe trains from a weight file in Meta's names
at the recipe's path with nothing else changed but the data (a tiny crop of a tiny dataset, full
ViT-B/16 width), and a quarter-width DINOv3 run resumes bit-exactly (RoPE tables and timm's
non-persistent buffers are not state)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import dinov3_reference as ref  # noqa: E402
from trainer_support import assert_same_end, resume_midway, run_train, tiny_config, train_records, write_config  # noqa: E402

from fastforec.config import load_config  # noqa: E402

RECIPE = "unimatch_v2_forec_dinov3_vitb_voc_classic_92"
LOSS_KEYS = ("loss", "loss_s", "loss_u_s1", "loss_u_s2", "loss_rec")
CROP = 48  # 3 x 3 patches of 16: the recipe's 512 would take minutes per step on a CPU


def test_the_dinov3_recipe_trains_from_metas_vitb_file(shards: Path, tmp_path: Path) -> None:
    cfg = load_config(RECIPE)
    weights = tmp_path / cfg.model.pretrained  # pretrained/dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth
    weights.parent.mkdir(parents=True)
    dim, depth, heads, _ = ref.SIZES["base"]
    torch.save(ref.random_meta_state(dim, depth, heads, seed=1), weights)
    overrides = {"data.root": str(shards), "data.crop_size": CROP, "data.batch_size": 2, "data.num_threads": 1,
                 "deepspeed.gradient_accumulation_steps": 1, "train.max_steps": 2}
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    run = tmp_path / "run"
    proc = run_train(["--config", RECIPE, "--run-dir", str(run), *sets], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    err = " ".join(proc.stderr.split())
    assert f"pretrained backbone weights: {cfg.model.pretrained} (Meta's DINOv3 names through timm's converter" in err
    assert "│ 186 │ 0 │ 0 │" in err  # loaded / missing / unexpected
    results = json.loads((run / "results.json").read_text())
    assert results["method"] == "unimatch_v2+forec" and results["step"] == 2
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"]["backbone"], saved["model"]["backbone_width"]) == ("dinov3_vitb16", 1.0)
    for r in train_records(run).values():
        assert all(math.isfinite(r[k]) for k in LOSS_KEYS), r


STEPS, MIDWAY = 4, 2
V2_FOREC = ["--set", "method.base=unimatch_v2", "--set", "method.aux=forec"]


def test_a_dinov3_run_resumes_exactly(shards: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(
        shards, data={"crop_size": CROP}, model={"backbone": "dinov3_vits16", "decoder": "dpt", "backbone_width": 0.25},
        optim={"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        method={"conf_thresh": 0.0, "rec_conf_thresh": 0.0, "ema_decay": 0.996},
        eval={"size_multiple": 16, "model": "both"},
        train={"max_steps": STEPS, "checkpoint_every": MIDWAY, "keep_checkpoints": 3}))
    full = tmp_path / "full"
    proc = run_train(["--config", str(cfg), "--run-dir", str(full), *V2_FOREC], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    part = tmp_path / "part"
    resume_midway(cfg, full, part, midway=MIDWAY, args=V2_FOREC, cwd=tmp_path, launcher=None)
    assert_same_end(full, part, steps=STEPS, midway=MIDWAY, networks=("student", "teacher"), loss_keys=LOSS_KEYS)
