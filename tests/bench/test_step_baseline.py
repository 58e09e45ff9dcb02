"""`bench --what step --baseline`: the plain loop does the trainer's work, no more and no less.

Same network and initial weights, the same forward passes with the same images per pass (student
and teacher), the same loss terms at step 0 on the same inputs, and after one step the same
weights up to the optimizer implementation's rounding; then the bench itself reports the keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastforec.bench.baseline import PlainLoop
from fastforec.config import config_from_dict
from fastforec.data.memory import InMemoryData, MemoryTrainData, memory_manifest, synthetic_batch
from fastforec.distributed import init_distributed
from fastforec.methods import base_of
from fastforec.trainer import Trainer

NUM_CLASSES, CROP, BATCH = 5, 32, 2
TINY_VIT = {"backbone": "dinov2_vits14", "decoder": "dpt", "backbone_width": 0.25}
CASES = {  # base x aux, model
    "mean_teacher+forec": ({"base": "mean_teacher", "aux": "forec"}, {}),
    "unimatch+forec": ({"base": "unimatch", "aux": "forec"}, {}),
    "unimatch_v2": ({"base": "unimatch_v2", "aux": "none", "ema_decay": 0.996}, TINY_VIT),
}


@pytest.fixture(scope="module")
def world():
    return init_distributed()


def _sizes(module: torch.nn.Module, into: list[int]):
    return module.register_forward_pre_hook(lambda _m, args: into.append(int(args[0].shape[0])))


@pytest.mark.parametrize("case", list(CASES))
def test_the_plain_loop_does_the_trainers_work(case: str, world, tmp_path: Path) -> None:
    method, model = CASES[case]
    crop = 28 if model else CROP  # a ViT wants a multiple of its patch (14)
    cfg = config_from_dict({
        "data": {"root": "memory", "crop_size": crop, "batch_size": BATCH},
        "model": {"backbone": "resnet18", "output_stride": 16, "decoder_channels": 16, "sync_bn": False,
                  "pretrained": None, **model},
        "method": {**method, "conf_thresh": 0.0},  # every unlabeled pixel counts: all loss terms active
        "optim": {"name": "adamw", "lr": 1e-4} if model else {"lr": 0.01},
        "train": {"name": "baseline", "max_steps": 10}, "deepspeed": {}})
    views = base_of(cfg.method).strong_views
    batch = synthetic_batch(BATCH, crop, NUM_CLASSES, device=world.device, seed=0, strong_views=views)
    data = InMemoryData(manifest=memory_manifest(NUM_CLASSES), train=MemoryTrainData([batch]))
    trainer = Trainer(cfg, run_dir=tmp_path / "run", dist=world, data=data)
    plain = PlainLoop(cfg, num_classes=NUM_CLASSES, fg_classes=trainer.fg_classes, device=world.device,
                      max_steps=trainer.total_steps)
    ours = trainer.student.state_dict()
    for name, t in plain.model.state_dict().items():
        assert torch.equal(t, ours[name]), name

    passes: dict[str, list[int]] = {k: [] for k in ("student", "teacher", "plain_student", "plain_teacher")}
    handles = [_sizes(trainer.student, passes["student"]), _sizes(plain.model, passes["plain_student"])]
    if trainer.teacher is not None:
        handles += [_sizes(trainer.teacher.module, passes["teacher"]), _sizes(plain.teacher, passes["plain_teacher"])]
    # the same random draws on both sides (UniMatch's feature dropout; its stream shares the decoder's
    # BatchNorm batch with the labeled images, so even loss_s depends on them)
    torch.manual_seed(1)
    terms = trainer.train_step(*batch)
    torch.manual_seed(1)
    plain_terms = plain.train_step(*batch)
    for h in handles:
        h.remove()

    assert passes["student"] == passes["plain_student"] and passes["teacher"] == passes["plain_teacher"]
    expected = {"mean_teacher+forec": [2 * BATCH], "unimatch+forec": [2 * BATCH, 2 * BATCH],
                "unimatch_v2": [BATCH, 2 * BATCH]}[case]
    assert passes["student"] == expected
    assert passes["teacher"] == ([] if case.startswith("unimatch+") else [BATCH])
    assert terms is not None and set(terms) == set(plain_terms)
    for key, value in terms.items():
        torch.testing.assert_close(plain_terms[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert terms["loss"] > 0 and all(terms[k] > 0 for k in terms if k.startswith("loss_u"))
    # one optimizer step later: the same weights, to the optimizer implementation's rounding
    after = trainer.student.state_dict()
    for name, t in plain.model.state_dict().items():
        torch.testing.assert_close(t, after[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bench_step_baseline_reports_both_sides(tmp_path: Path) -> None:
    from fastforec.cli import main
    from fastforec.provenance import cpu
    from tests.shard_sets import make_shards

    shards = make_shards(tmp_path / "shards", layout="voc", num_train=8, num_labeled=4, num_val=2, size=(48, 64),
                         seed=0)
    out = tmp_path / "step.json"
    assert main(["bench", "--what", "step", "--config", "configs/cpu/synth_demo.json", "--data", str(shards),
                 "--crop", "32", "--batches", "1", "--baseline", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    # the demo recipe trains in the bf16 block on a CPU with AMX-BF16 (train.bf16_on_amx), the plain loop in fp32
    want = "bf16" if "amx_bf16" in cpu()["flags"] else "fp32"
    assert r["baseline_samples_per_s"] > 0 and r["precision"] == want and r["baseline_precision"] == "fp32"
    assert abs(r["ratio_vs_baseline"] - r["samples_per_s_per_device"] / r["baseline_samples_per_s"]) < 1e-9
    assert len(r["baseline_per_round_samples_per_s"]) == r["rounds"]


def test_the_plain_loop_accumulates_as_the_trainer_does(world, tmp_path: Path) -> None:
    # a recipe's gradient_accumulation_steps (UniMatch V2's 4): the optimizer step and the EMA once
    # per `accum` micro-batches on both sides, each micro-batch's loss divided by the count
    accum = 2
    cfg = config_from_dict({
        "data": {"root": "memory", "crop_size": CROP, "batch_size": BATCH},
        "model": {"backbone": "resnet18", "output_stride": 16, "decoder_channels": 16, "sync_bn": False,
                  "pretrained": None},
        "method": {"base": "mean_teacher", "aux": "forec", "conf_thresh": 0.0}, "optim": {"lr": 0.01},
        "train": {"name": "baseline", "max_steps": 10},
        "deepspeed": {"gradient_accumulation_steps": accum}})
    batches = [synthetic_batch(BATCH, CROP, NUM_CLASSES, device=world.device, seed=s) for s in (0, 1)]
    data = InMemoryData(manifest=memory_manifest(NUM_CLASSES), train=MemoryTrainData(batches))
    trainer = Trainer(cfg, run_dir=tmp_path / "run", dist=world, data=data)
    plain = PlainLoop(cfg, num_classes=NUM_CLASSES, fg_classes=trainer.fg_classes, device=world.device,
                      max_steps=trainer.total_steps, accum=trainer.accum)
    assert trainer.accum == accum
    before = {k: v.clone() for k, v in plain.model.state_dict().items()}
    trainer.train_step(*batches[0])
    plain.train_step(*batches[0])
    assert plain.step == trainer.state.step == 0  # no optimizer step after the first micro-batch
    for name, t in plain.model.named_parameters():
        assert torch.equal(t, before[name]), name
    trainer.train_step(*batches[1])
    plain.train_step(*batches[1])
    assert plain.step == trainer.state.step == 1
    after = trainer.student.state_dict()
    moved = 0
    for name, t in plain.model.state_dict().items():
        torch.testing.assert_close(t, after[name], rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(t, before[name])
    assert moved > 0
    teacher = trainer.teacher.module.state_dict()
    for name, t in plain.teacher.state_dict().items():
        torch.testing.assert_close(t, teacher[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_bench_window_holds_whole_optimizer_steps() -> None:
    from fastforec.bench.step import whole_steps

    assert [whole_steps(n, 4) for n in (1, 3, 4, 5, 8)] == [4, 4, 4, 8, 8]
    assert whole_steps(3, 1) == 3
