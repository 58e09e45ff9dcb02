"""UniMatch V2: its trained checkpoints through `fastforec eval` (its protocol, against a
functional re-statement of its network and evaluate), the unimatch_v2 loss terms against an
independent computation, the EMA teacher over parameters and buffers, and a tiny-ViT
unimatch_v2 + FOrec run that resumes bit-exactly on 1 and 2 CPU ranks."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "models"))
import unimatch_v2_reference as ref  # noqa: E402
from equivalence_harness import kept_ce, masked_mse, two_view_batch  # noqa: E402
from test_distributed import torchrun  # noqa: E402
from test_peer_checkpoints import _cli, miou  # noqa: E402 (numpy mIoU, independent of fastforec.metrics)
from trainer_support import (  # noqa: E402
    CPU_ONLY,
    assert_same_end,
    resume_midway,
    run_train,
    threshold_between,
    tiny_config,
    train_records,  # noqa: E402
    write_config,
)

from fastforec.config import load_config  # noqa: E402
from fastforec.data import ValData  # noqa: E402
from fastforec.data.manifest import Manifest  # noqa: E402
from fastforec.distributed import init_distributed  # noqa: E402
from fastforec.models.segmentor import complementary_masks  # noqa: E402
from fastforec.trainer import Trainer  # noqa: E402

LAYERS, HEADS = [2, 5, 8, 11], 6  # ViT-S
TINY_VIT = {"backbone": "dinov2_vits14", "decoder": "dpt", "backbone_width": 0.25}


def _v2_checkpoint(path: Path, nclass: int) -> tuple[dict, dict]:
    """A UniMatch V2 best.pth: {'model', 'model_ema', ...} of DDP-prefixed ViT-S DPT weights."""
    torch.manual_seed(10)
    shapes = ref.model_shapes("small", nclass)
    student, ema = ref.random_state(shapes), ref.random_state(shapes)
    ddp = lambda s: {f"module.{k}": v for k, v in s.items()}  # noqa: E731
    torch.save({"model": ddp(student), "model_ema": ddp(ema), "optimizer": {"state": {}, "param_groups": []},
                "epoch": 59, "previous_best": 80.0, "previous_best_ema": 81.0}, path)
    return student, ema


def _recipe(tmp_path: Path, root: Path, **sections) -> Path:
    # a V1 recipe's settings on purpose: the V2 checkpoint brings its own network and protocol
    return write_config(tmp_path / "recipe.json", tiny_config(root, data={"crop_size": 56}, **sections))


@pytest.mark.parametrize("weights", ["teacher", "student"])
def test_eval_of_a_unimatch_v2_checkpoint_is_the_referencemiou(shards: Path, tmp_path: Path, weights: str) -> None:
    student, ema = _v2_checkpoint(tmp_path / "best.pth", 21)
    recipe = _recipe(tmp_path, shards, eval={"mode": "whole"})
    out = tmp_path / "eval.json"
    args = ["eval", "--config", str(recipe), "--checkpoint", f"unimatch_v2:{tmp_path / 'best.pth'}", "--json", str(out)]
    proc = _cli(args + (["--weights", "student"] if weights == "student" else []), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UniMatch V2" in proc.stderr and "tensors loaded" in proc.stderr and "mask token" in proc.stderr
    state = ema if weights == "teacher" else student  # its published numbers are model_ema's: the default
    cfg = load_config(recipe)
    preds, labels = [], []
    for batch in ValData(Manifest.load(shards), cfg.data, batch_size=1, rank=0, world_size=1, device="cpu"):
        assert batch["image"].shape[-2:] == (64, 80)  # not multiples of 14: resized to 70 x 84 and back
        with torch.no_grad():
            preds.append(ref.evaluate_original(state, batch["image"], layers=LAYERS, heads=HEADS)[0].numpy())
        labels.append(batch["label"][0].numpy())
    assert json.loads(out.read_text())["miou"] == pytest.approx(miou(preds, labels, 21), abs=1e-9)


def _v2_sliding(state: dict, image: torch.Tensor, grid: int, nclass: int) -> torch.Tensor:
    """UniMatch V2's evaluate(mode='sliding_window'): full windows, the last moved to the border,
    softmax summed."""
    b, _, h, w = image.shape
    final = torch.zeros(b, nclass, h, w)
    row = 0
    while row < h:
        col = 0
        while col < w:
            pred = ref.dpt_logits(state, image[:, :, row:row + grid, col:col + grid], layers=LAYERS, heads=HEADS)
            final[:, :, row:row + grid, col:col + grid] += pred.softmax(dim=1)
            if col == w - grid:
                break
            col = min(col + int(grid * 2 / 3), w - grid)
        if row == h - grid:
            break
        row = min(row + int(grid * 2 / 3), h - grid)
    return final


def test_eval_on_cityscapes_uses_unimatch_v2s_sliding_window(city_shards: Path, tmp_path: Path) -> None:
    _, ema = _v2_checkpoint(tmp_path / "best.pth", 19)
    crop = 56  # images are 64 x 128: rows 0, 8; columns 0, 37, 72
    recipe = _recipe(tmp_path, city_shards, eval={"mode": "sliding", "sliding_protocol": "unimatch"})
    out = tmp_path / "eval.json"
    proc = _cli(["eval", "--config", str(recipe), "--checkpoint", str(tmp_path / "best.pth"), "--json", str(out)],
                tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert (got["mode"], got["sliding_protocol"]) == ("sliding", "unimatch_v2")  # the source's, not the recipe's
    cfg = load_config(recipe)
    preds, labels = [], []
    for batch in ValData(Manifest.load(city_shards), cfg.data, batch_size=1, rank=0, world_size=1, device="cpu"):
        with torch.no_grad():
            preds.append(_v2_sliding(ema, batch["image"], crop, 19).argmax(1)[0].numpy())
        labels.append(batch["label"][0].numpy())
    assert got["miou"] == pytest.approx(miou(preds, labels, 19), abs=1e-9)


def test_a_crop_that_is_not_a_multiple_of_14_is_refused(shards: Path, tmp_path: Path) -> None:
    _v2_checkpoint(tmp_path / "best.pth", 21)
    recipe = write_config(tmp_path / "r.json", tiny_config(shards, data={"crop_size": 48}))
    proc = _cli(["eval", "--config", str(recipe), "--checkpoint", f"unimatch_v2:{tmp_path / 'best.pth'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "data.crop_size: is 48" in proc.stderr and "multiple of 14" in proc.stderr
    cfg = write_config(tmp_path / "t.json", tiny_config(shards, data={"crop_size": 48}, model=TINY_VIT))
    proc = run_train(["--config", str(cfg), "--run-dir", str(tmp_path / "run")], cwd=tmp_path)
    assert proc.returncode == 2 and "multiple of 14" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------
# the loss terms


@pytest.fixture(scope="module")
def world():
    return init_distributed()


B = 2


def _trainer(shards: Path, tmp_path: Path, world, aux: str, model: dict | None = None) -> Trainer:
    method = {"base": "unimatch_v2", "aux": aux, "conf_thresh": 0.3, "rec_conf_thresh": 0.35,
              "ema_decay": 0.996}
    cfg = write_config(tmp_path / f"v2_{aux}.json", tiny_config(shards, method=method, data={"crop_size": 42},
                                                                 model=model or TINY_VIT, optim={"name": "adamw"}))
    tr = Trainer(load_config(cfg), run_dir=tmp_path / f"v2_{aux}", dist=world)
    tr.student.train()
    return tr


def _batch(tr: Trainer) -> tuple[dict, dict]:
    return two_view_batch(batch=B, crop=42, num_classes=tr.num_classes)



@pytest.mark.parametrize("aux", ["none", "forec"])
def test_unimatch_v2_loss_terms(shards: Path, tmp_path: Path, world, aux: str, monkeypatch) -> None:
    tr = _trainer(shards, tmp_path, world, aux)
    assert tr.teacher is not None, "UniMatch V2 labels with an EMA teacher"
    m = tr.cfg.method
    labeled, unlabeled = _batch(tr)
    masks = complementary_masks(B, tr.student.backbone.embed_dim, keep=0.5, device=torch.device("cpu"),
                                dtype=torch.float32)
    monkeypatch.setattr("fastforec.models.segmentor.complementary_masks", lambda *a, **k: masks)
    with torch.no_grad():
        t_prob = tr.teacher.module.eval()(unlabeled["weak"])["seg"].softmax(1)
    conf, pl = t_prob.max(1)
    valid = unlabeled["valid"]
    partner = torch.arange(B - 1, -1, -1)  # UniMatch V2: img.flip(0)
    mixed = []
    for image, box in (("strong", "box"), ("strong2", "box2")):
        bx = unlabeled[box]
        mix = lambda t: torch.where(bx if t.dim() == 3 else bx[:, None], t[partner], t)  # noqa: E731
        mixed.append((mix(unlabeled[image]), mix(pl), mix(conf), mix(valid)))
    m.conf_thresh, m.rec_conf_thresh = threshold_between(conf, 0.5), threshold_between(conf, 0.3)
    with torch.no_grad():
        student = tr.student
        x_l = torch.cat([labeled["image"], unlabeled["weak"]]) if aux != "none" else labeled["image"]
        pred_l = student(x_l)
        strong = torch.cat([v[0] for v in mixed])
        # the strong views by hand: encoder maps x the complementary masks, then the head
        maps = student.encode(strong)
        seg_s = F.interpolate(student.seg_head(*[f * masks[:, :, None, None] for f in maps]), strong.shape[-2:],
                              mode="bilinear", align_corners=True).split(B)
        rec_s = student.aux_head(*maps) if aux != "none" else None

    got = {k: float(v.detach()) for k, v in tr.compute_losses(labeled, unlabeled, epoch=0).items()}
    want = {"loss_s": float(F.cross_entropy(pred_l["seg"][:B], labeled["label"], ignore_index=255))}
    for k, (v, seg) in enumerate(zip(mixed, seg_s), start=1):
        want[f"loss_u_s{k}"] = kept_ce(seg, v[1], v[2], v[3], m.conf_thresh)
    # UniMatch V2: loss = (loss_x + (loss_u_s1 + loss_u_s2) / 2) / 2
    total = (want["loss_s"] + (want["loss_u_s1"] + want["loss_u_s2"]) / 2) / 2
    if aux != "none":
        x, y = labeled["image"], labeled["label"]
        fg_ids = torch.tensor(tr.fg_classes)
        rec_s = F.interpolate(rec_s, strong.shape[-2:], mode="bilinear", align_corners=True).split(B)
        inputs = [(pred_l["rec"][B:], unlabeled["weak"], pl, conf, valid)]
        inputs += [(rec, v[0], v[1], v[2], v[3]) for rec, v in zip(rec_s, mixed)]
        lab = masked_mse(pred_l["rec"][:B], x * torch.isin(y, fg_ids)[:, None], y != 255)
        unl = [masked_mse(rec, img * (torch.isin(p, fg_ids) & val)[:, None], val & (c > m.rec_conf_thresh))
               for rec, img, p, c, val in inputs]
        want["loss_rec"] = m.rec_weight_labeled * lab + m.rec_weight_unlabeled * sum(unl) / len(unl)
        total += want["loss_rec"]
    want["loss"] = total
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert got["pl_coverage"] == pytest.approx(float(((conf > m.conf_thresh) & valid).sum() / valid.sum()), rel=1e-5)
    assert 0.0 < got["pl_coverage"] < 1.0
    assert set(got) == set(want) | {"pl_coverage", "teacher_conf"}


def test_the_ema_teacher_averages_parameters_and_buffers(shards: Path, tmp_path: Path, world) -> None:
    """On a CNN (BatchNorm buffers): after step t the teacher is a * teacher + (1 - a) * student for
    every parameter and running statistic, a = min(1 - 1/(t + 1), 0.996), as UniMatch V2 updates it."""
    tr = _trainer(shards, tmp_path, world, "none", model={"backbone": "resnet18", "decoder": "unimatch"})
    labeled, unlabeled = _batch(tr)
    for t in range(3):
        before = {k: v.clone() for k, v in tr.teacher.module.state_dict().items()}
        assert tr.train_step(labeled, unlabeled) is not None
        a = min(1 - 1 / (t + 1), 0.996)
        student = tr.student.state_dict()
        after = tr.teacher.module.state_dict()
        moved = 0
        for k, v in after.items():
            if not v.is_floating_point():
                continue
            torch.testing.assert_close(v, a * before[k] + (1 - a) * student[k], rtol=1e-5, atol=1e-6)
            moved += "running_mean" in k and not torch.equal(v, before[k])
        assert moved > 0


# ---------------------------------------------------------------------------------------------
# a run on a tiny ViT: trains, evaluates, resumes exactly

STEPS, MIDWAY = 4, 2
V2_FOREC = ["--set", "method.base=unimatch_v2", "--set", "method.aux=forec"]
LOSS_KEYS = ("loss", "loss_s", "loss_u_s1", "loss_u_s2", "loss_rec")


# The bf16 block keeps no master copy of DPT's frozen (unused) refinenet4.resConfUnit1: its EMA once
# failed with a KeyError. At stage 0 DeepSpeed wraps the optimizer in its own 16-bit optimizer.
@pytest.mark.parametrize(("ranks", "deepspeed"), [
    (1, {}), (1, {"bf16": {"enabled": True}, "zero_optimization": {"stage": 0}}),
    (2, {"bf16": {"enabled": True}, "zero_optimization": {"stage": 1}})],
    ids=["fp32-1", "bf16-stage0-1", "bf16-stage1-2"])
def test_unimatch_v2_forec_on_a_vit_resumes_exactly(shards: Path, tmp_path: Path, ranks: int, deepspeed: dict) -> None:
    cfg = write_config(tmp_path / "cfg.json", tiny_config(
        shards, data={"crop_size": 42}, model=TINY_VIT, optim={"name": "adamw", "lr": 1e-4, "weight_decay": 0.01},
        method={"conf_thresh": 0.0, "rec_conf_thresh": 0.0, "ema_decay": 0.996},
        eval={"size_multiple": 14, "model": "both"}, deepspeed=deepspeed,
        train={"max_steps": STEPS, "checkpoint_every": MIDWAY, "keep_checkpoints": 3}))
    launcher = torchrun() if ranks == 2 else None
    full = tmp_path / "full"
    proc = run_train(["--config", str(cfg), "--run-dir", str(full), *V2_FOREC], cwd=tmp_path, launcher=launcher,
                     env=CPU_ONLY)  # bit-exact on the CPU; 2 ranks even where there is one GPU
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((full / "results.json").read_text())
    assert results["method"] == "unimatch_v2+forec" and results["step"] == STEPS
    assert set(results["models"]) == {"student", "teacher"}
    records = train_records(full)
    assert sorted(records) == list(range(1, STEPS + 1))
    for r in records.values():
        assert all(math.isfinite(r[k]) for k in LOSS_KEYS), r
        assert r["loss_u_s1"] > 0 and r["loss_u_s2"] > 0 and r["loss_rec"] > 0

    part = tmp_path / "part"
    resume_midway(cfg, full, part, midway=MIDWAY, args=V2_FOREC, cwd=tmp_path, launcher=launcher, env=CPU_ONLY)
    assert_same_end(full, part, steps=STEPS, midway=MIDWAY, networks=("student", "teacher"), loss_keys=LOSS_KEYS)
