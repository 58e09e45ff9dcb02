"""Every method builds its losses as docs/architecture.md section A says, checked against targets computed
here independently from the same forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer_support import threshold_between, tiny_config, write_config
from equivalence_harness import make_batch
from fastforec.checkpoint_files import load_checkpoint
from fastforec.config import load_config
from fastforec.distributed import init_distributed
from fastforec.trainer import NonFiniteLossError, Trainer

SEED = 123


@pytest.fixture(scope="module")
def world():
    return init_distributed()


def _trainer(shards: Path, tmp_path: Path, world, method: str) -> Trainer:
    cfg = write_config(tmp_path / f"{method}.json",
                       tiny_config(shards, method={"name": method, "conf_thresh": 0.3, "rec_conf_thresh": 0.35}))
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


@pytest.mark.parametrize("method,keys", [("supervised", {"loss", "loss_s"}),
                                         ("mean_teacher", {"loss", "loss_s", "loss_u", "pl_coverage", "teacher_conf"})])
def test_methods_without_reconstruction(shards: Path, tmp_path: Path, world, method: str, keys: set) -> None:
    tr = _trainer(shards, tmp_path, world, method)
    assert (tr.teacher is None) == (method == "supervised")
    assert tr.student.aux_head is None
    labeled, unlabeled = make_batch(0, 0, batch=2, crop=48, num_classes=tr.num_classes)
    got = _losses(tr, labeled, unlabeled if method != "supervised" else None)
    assert set(got) == keys
    assert all(torch.isfinite(torch.tensor(v)) for v in got.values())
    # and a full step changes the weights
    before = [p.detach().clone() for p in tr.student.parameters()]
    assert tr.train_step(labeled, unlabeled if method != "supervised" else None)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.student.parameters()))


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
