"""Every method builds its losses as docs/architecture.md section A says, checked against targets computed
here independently from the same forward pass."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from equivalence_harness import make_batch, two_view_batch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from trainer_support import read_jsonl, threshold_between, tiny_config, write_config

from fastforec import methods
from fastforec.checkpoint_files import load_checkpoint
from fastforec.config import load_config
from fastforec.distributed import init_distributed
from fastforec.trainer import NonFiniteLossError, Trainer

SEED = 123


@pytest.fixture(scope="module")
def world():
    return init_distributed()


def _trainer(shards: Path, tmp_path: Path, world, method: str) -> Trainer:
    """``method``: supervised, mean_teacher, or the mean teacher's auxiliary task (rec, forec, fgbg)."""
    base = method if method in ("supervised", "mean_teacher") else "mean_teacher"
    aux = "none" if method in ("supervised", "mean_teacher") else method
    cfg = write_config(tmp_path / f"{method}.json", tiny_config(shards, method={
        "base": base, "aux": aux, "conf_thresh": 0.3, "rec_conf_thresh": 0.35}))
    return Trainer(load_config(cfg), run_dir=tmp_path / method, dist=world)


def _mixed_inputs(tr: Trainer, labeled: dict, unlabeled: dict):
    """Teacher pseudo-labels and CutMix, recomputed with plain torch ops."""
    with torch.no_grad():
        prob = tr.teacher(unlabeled["weak"])["seg"].softmax(1)
    conf, pl = prob.max(1)
    partner = torch.roll(torch.arange(pl.shape[0]), 1)
    box = unlabeled["box"]
    mix = lambda t: torch.where(box if t.dim() == 3 else box[:, None], t[partner], t)  # noqa: E731
    return mix(unlabeled["strong"]), mix(pl), mix(conf), mix(unlabeled["valid"])


def _student(tr: Trainer, x: torch.Tensor) -> dict:
    torch.manual_seed(SEED)
    return tr.engine(x)


def _losses(tr: Trainer, labeled: dict, unlabeled: dict | None) -> dict:
    torch.manual_seed(SEED)
    return {k: float(v.detach()) for k, v in tr.compute_losses(labeled, unlabeled, epoch=0).items()}


def _mse(rec, target, mask):
    return float(((rec - target) ** 2 * mask[:, None]).sum() / (3 * mask.sum()))


def _bce(logit, target, mask):
    return float((F.binary_cross_entropy_with_logits(logit[:, 0], target.float(), reduction="none") * mask).sum()
                 / mask.sum())


@pytest.mark.parametrize("method", ["rec", "forec", "fgbg"])
def test_auxiliary_targets(shards: Path, tmp_path: Path, world, method: str) -> None:
    tr = _trainer(shards, tmp_path, world, method)
    labeled, unlabeled = make_batch(0, 0, batch=2, crop=48, num_classes=tr.num_classes)
    strong, pl, conf, valid = _mixed_inputs(tr, labeled, unlabeled)
    # thresholds inside the teacher's confidence range, so both sides of each threshold occur
    m = tr.cfg.method
    m.conf_thresh, m.rec_conf_thresh = threshold_between(conf, 0.5), threshold_between(conf, 0.3)
    got = _losses(tr, labeled, unlabeled)
    x, y = labeled["image"], labeled["label"]
    with torch.no_grad():
        pred = _student(tr, torch.cat([x, strong]))
    fg_ids = torch.tensor(tr.fg_classes)
    known = y != 255
    if method == "rec":
        want = (m.rec_weight_labeled * _mse(pred["rec"][:2], x, known)
                + m.rec_weight_unlabeled * _mse(pred["rec"][2:], strong, valid))
    elif method == "forec":
        fg_l = torch.isin(y, fg_ids)
        fg_u = torch.isin(pl, fg_ids) & valid
        sure = valid & (conf > m.rec_conf_thresh)
        want = (m.rec_weight_labeled * _mse(pred["rec"][:2], x * fg_l[:, None], known)
                + m.rec_weight_unlabeled * _mse(pred["rec"][2:], strong * fg_u[:, None], sure))
    else:
        sure = valid & (conf > m.rec_conf_thresh)
        want = (m.rec_weight_labeled * _bce(pred["fgbg"][:2], torch.isin(y, fg_ids), known)
                + m.rec_weight_unlabeled * _bce(pred["fgbg"][2:], torch.isin(pl, fg_ids) & valid, sure))
    assert got["loss_rec"] == pytest.approx(want, rel=1e-4)
    ce_u = F.cross_entropy(pred["seg"][2:], pl, reduction="none")
    want_u = float((ce_u * ((conf > m.conf_thresh) & valid)).sum() / valid.sum())
    assert got["loss_u"] == pytest.approx(want_u, rel=1e-4)
    assert got["loss"] == pytest.approx(got["loss_s"] + got["loss_u"] + got["loss_rec"], rel=1e-5)


def test_supervised_loss_is_the_labeled_cross_entropy(shards: Path, tmp_path: Path, world) -> None:
    tr = _trainer(shards, tmp_path, world, "supervised")
    assert tr.teacher is None and tr.student.aux_head is None
    labeled, unlabeled = make_batch(0, 0, batch=2, crop=48, num_classes=tr.num_classes)
    got = _losses(tr, labeled, None)
    with torch.no_grad():
        pred = _student(tr, labeled["image"])["seg"]
    want = float(F.cross_entropy(pred, labeled["label"], ignore_index=255))  # mean over labeled pixels
    assert got == pytest.approx({"loss": want, "loss_s": want}, rel=1e-5)
    # the unlabeled batch is never used: the same terms with it
    assert _losses(tr, labeled, unlabeled) == pytest.approx(got, rel=1e-6)


def test_mean_teacher_losses_and_pseudo_label_statistics(shards: Path, tmp_path: Path, world) -> None:
    tr = _trainer(shards, tmp_path, world, "mean_teacher")
    assert tr.teacher is not None and tr.student.aux_head is None
    labeled, unlabeled = make_batch(0, 0, batch=2, crop=48, num_classes=tr.num_classes)
    strong, pl, conf, valid = _mixed_inputs(tr, labeled, unlabeled)
    m = tr.cfg.method
    m.conf_thresh, m.lambda_u = threshold_between(conf, 0.5), 0.7  # both sides of tau; a weight that shows
    got = _losses(tr, labeled, unlabeled)
    with torch.no_grad():
        pred = _student(tr, torch.cat([labeled["image"], strong]))["seg"]
    loss_s = float(F.cross_entropy(pred[:2], labeled["label"], ignore_index=255))
    # CE of the confident pseudo-labels, summed, over the valid (not padding) pixels
    sure = (conf > m.conf_thresh) & valid
    loss_u = float((F.cross_entropy(pred[2:], pl, reduction="none") * sure).sum() / valid.sum())
    assert 0 < sure.sum() < valid.sum()
    want = {"loss_s": loss_s, "loss_u": 0.7 * loss_u, "loss": loss_s + 0.7 * loss_u,
            "pl_coverage": float(sure.sum() / valid.sum()), "teacher_conf": float(conf[valid].mean())}
    assert got == pytest.approx(want, rel=1e-4)


def test_nonfinite_loss_is_skipped_then_stops_with_checkpoint(shards: Path, tmp_path: Path, world) -> None:
    tr = _trainer(shards, tmp_path, world, "mean_teacher")
    labeled, unlabeled = make_batch(0, 0, batch=2, crop=48, num_classes=tr.num_classes)
    labeled["image"] = labeled["image"] * float("nan")
    before = {k: v.detach().clone() for k, v in tr.student.state_dict().items()}
    limit = tr.cfg.train.max_nonfinite
    for _ in range(limit - 1):
        assert tr.train_step(labeled, unlabeled) is None
    # weights and the BatchNorm statistics the NaN forward pass touched: a skip leaves no trace
    after = tr.student.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "a skipped step changed the state"
    with pytest.raises(NonFiniteLossError, match="5 consecutive non-finite losses at step 0") as exc:
        tr.train_step(labeled, unlabeled)
    saved = tr.ckpt_dir / "step_00000000.pt"
    assert f"saved in '{saved}'" in str(exc.value) and saved.is_file()
    assert all(torch.isfinite(v).all() for v in load_checkpoint(saved)["student"].values() if v.is_floating_point())
    assert tr.state.nonfinite_total == limit


# ---------------------------------------------------------------------------------------------
# the non-finite stop (docs/failure_modes.md, "Training"): the run saves its state positioned after the
# skipped batches and stops; --resume continues from there; metrics.jsonl counts the skips


POISONED = (1, 3, 4)  # micro-batches (from 0) whose labeled images are NaN: one skip, then two in a row
STOP_AFTER = 2  # train.max_nonfinite of the run that stops


def _fit_poisoned(shards: Path, tmp_path: Path, world, name: str, *, max_nonfinite: int,
                  resume: str | None = None) -> Trainer:
    """A 6-micro-batch run whose POISONED batches give a non-finite loss (their images are NaN)."""
    cfg = write_config(tmp_path / f"{name}.json", tiny_config(
        shards, method={"base": "mean_teacher", "aux": "none"}, eval={"every": 1000},
        train={"max_steps": 6, "max_nonfinite": max_nonfinite, "checkpoint_every": 1000, "tensorboard": False}))
    (tmp_path / "runs" / name).mkdir(parents=True, exist_ok=True)
    tr = Trainer(load_config(cfg), run_dir=tmp_path / "runs" / name, dist=world, resume=resume)
    next_batch = tr.train_data.next_batch

    def poisoned() -> tuple[dict, dict]:
        index = tr.state.batches  # this batch's place in the run's order of micro-batches
        labeled, unlabeled = next_batch()
        if index in POISONED:
            labeled = {**labeled, "image": labeled["image"] * float("nan")}
        return labeled, unlabeled

    tr.train_data.next_batch = poisoned
    return tr


def test_the_nonfinite_stop_saves_after_the_skipped_batches_and_resume_continues_there(
        shards: Path, tmp_path: Path, world) -> None:
    # the run that skips batch 1, then stops at the second skip in a row (batch 4)
    stopped = _fit_poisoned(shards, tmp_path, world, "run", max_nonfinite=STOP_AFTER)
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite losses at step 2") as exc:
        stopped.fit()
    stopped.train_data.close()
    saved = stopped.ckpt_dir / "step_00000002.pt"
    assert f"saved in '{saved}', positioned after the skipped batches" in str(exc.value)
    state = load_checkpoint(saved)["state"]
    # batches 0-4 are behind it: 2 steps (batches 0 and 2) and the 3 skipped ones, batch 4 included
    assert (state["step"], state["batches"], state["nonfinite_total"]) == (2, 5, 3)
    records = [r for r in read_jsonl(stopped.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    assert [(r["step"], r["nonfinite_skipped"]) for r in records] == [(1, 0), (2, 1)]

    # --resume: batch 5 trains step 3, exactly as a run that never stopped (it skips the same
    # batches and goes on) trains it
    resumed = _fit_poisoned(shards, tmp_path, world, "run", max_nonfinite=STOP_AFTER, resume=str(saved))
    assert (resumed.state.step, resumed.state.batches) == (2, 5)
    results = resumed.fit()
    resumed.train_data.close()
    reference = _fit_poisoned(shards, tmp_path, world, "reference", max_nonfinite=100)
    want = reference.fit()
    reference.train_data.close()
    assert results["step"] == want["step"] == 3
    assert results["nonfinite_skipped"] == want["nonfinite_skipped"] == 3
    # bit for bit on the CPU (README's promise); a GPU's kernels may differ in the last bits, never
    # as much as another batch makes them
    exact = world.device.type == "cpu"
    for part, a, b in (("student", resumed.student, reference.student),
                       ("teacher", resumed.teacher.module, reference.teacher.module)):
        theirs = b.state_dict()
        for k, t in a.state_dict().items():
            if exact:
                assert torch.equal(t, theirs[k]), f"{part}.{k} differs from the run that never stopped"
            else:
                torch.testing.assert_close(t, theirs[k], rtol=1e-3, atol=1e-4, msg=lambda m: f"{part}.{k}: {m}")
    keys = ("step", "nonfinite_skipped", "loss", "loss_s", "loss_u")
    got = [[r[k] for k in keys] for r in read_jsonl(resumed.run_dir / "metrics.jsonl") if r["kind"] == "train"]
    want_records = [[r[k] for k in keys] for r in read_jsonl(reference.run_dir / "metrics.jsonl")
                    if r["kind"] == "train"]
    assert got == (want_records if exact else [pytest.approx(r, rel=1e-3) for r in want_records])
    assert [g[:2] for g in got] == [[1, 0], [2, 1], [3, 3]]


def test_a_labeled_batch_without_valid_pixels_is_counted_and_warned_about(shards: Path, tmp_path: Path, world,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    tr = _trainer(shards, tmp_path, world, "forec")
    labeled, unlabeled = make_batch(0, 0, batch=2, crop=48, num_classes=tr.num_classes)
    labeled["label"] = torch.full_like(labeled["label"], 255)
    with caplog.at_level("WARNING", logger="fastforec.trainer"):
        terms = tr.train_step(labeled, unlabeled)
        tr.train_step(labeled, unlabeled)
    assert terms is not None and float(terms["loss_s"]) == 0.0  # zero, not NaN: training goes on
    assert tr.state.empty_label_batches == 2
    warnings = [r.getMessage() for r in caplog.records if "has no valid pixel" in r.getMessage()]
    assert len(warnings) == 1 and "empty_label_batches" in warnings[0]  # once, then every 100
    labeled2, _ = make_batch(1, 0, batch=2, crop=48, num_classes=tr.num_classes)
    tr.train_step(labeled2, unlabeled)
    assert tr.state.empty_label_batches == 2
    # then every 100th: from 99 such batches on, the 100th warns and the 101st does not
    tr.state.empty_label_batches = 99
    caplog.clear()
    with caplog.at_level("WARNING", logger="fastforec.trainer"):
        for _ in range(2):
            tr.train_step(labeled, unlabeled)
    warnings = [r.getMessage() for r in caplog.records if "has no valid pixel" in r.getMessage()]
    assert len(warnings) == 1 and "(100 such batches so far" in warnings[0], warnings
    # results.json counts them
    tr.run_dir.mkdir(parents=True)
    tr.run_evaluation(0)
    tr.write_results()
    assert json.loads((tr.run_dir / "results.json").read_text())["empty_label_batches"] == 101


class _WeightCasts(TorchDispatchMode):
    """Counts the fp32 -> bf16 copies made of each of ``params`` (by storage address)."""

    def __init__(self, params: set[int]):
        super().__init__()
        self.params, self.counts = params, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16
                and args[0].dtype == torch.float32 and args[0].data_ptr() in self.params):
            self.counts[args[0].data_ptr()] += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("base", ["fixmatch", "unimatch"])
def test_torch_autocast_casts_each_student_weight_once_per_micro_batch(shards: Path, tmp_path: Path, world,
                                                                     base: str) -> None:
    """FixMatch and UniMatch run the student twice per micro-batch; under bf16 torch_autocast each
    weight is cast once (precision.weight_cast_scope), not once per forward: the losses are bit for
    bit the same, and every weight gets the same gradient to bf16 rounding."""
    cfg = write_config(tmp_path / "cfg.json", tiny_config(
        shards, method={"base": base, "aux": "forec", "conf_thresh": 0.3},
        deepspeed={"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}))
    tr = Trainer(load_config(cfg), run_dir=tmp_path / "run", dist=world)
    labeled, unlabeled = two_view_batch(batch=2, crop=48, num_classes=tr.num_classes)
    trained = [p for p in tr.engine.module.parameters() if p.requires_grad]

    def step(ctx: methods.StepModels) -> tuple[Counter, dict[str, torch.Tensor], list[torch.Tensor]]:
        for p in trained:
            p.grad = None
        torch.manual_seed(SEED)  # the feature-perturbation dropout
        with _WeightCasts({p.data_ptr() for p in trained}) as casts:
            terms = methods.compute_losses(ctx, labeled, unlabeled)
        tr.engine.backward(terms["loss"])
        return casts.counts, {k: v.detach() for k, v in terms.items()}, [p.grad for p in trained]

    once, terms, grads = step(tr.step_models)
    per_forward, terms_per_forward, grads_per_forward = step(
        dataclasses.replace(tr.step_models, cast_scope=contextlib.nullcontext))
    autocast_layers = {p.data_ptr() for m in tr.engine.module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                       for p in m.parameters(recurse=False)}  # the layers autocast runs in bf16
    assert once.keys() == per_forward.keys() == autocast_layers and set(once.values()) == {1}
    assert sum(per_forward.values()) > 1.5 * len(per_forward)  # most layers are in both forwards
    assert terms.keys() == terms_per_forward.keys()
    for k in terms:
        assert torch.equal(terms[k], terms_per_forward[k]), k
    # every trained weight gets its gradient through the one cached copy; the two forwards' parts
    # now add up in bf16 before the cast back: equal to bf16 rounding of the gradient
    assert all(g is not None for g in grads) and sum(bool(g.any()) for g in grads) > len(grads) // 2
    for g, want in zip(grads, grads_per_forward):
        assert want is not None
        torch.testing.assert_close(g, want, rtol=2e-2, atol=1e-3 * float(want.abs().max()) + 1e-12)
