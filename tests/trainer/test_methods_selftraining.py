"""FixMatch and UniMatch (with and without an auxiliary task): every loss term against one
computed here from the model's parts (encoder, heads) with plain torch ops, the pseudo-labels,
CutMix partners, dropout masks and weights written out as the UniMatch paper and code give them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from equivalence_harness import kept_ce, masked_mse, two_view_batch
from trainer_support import threshold_between, tiny_config, write_config

from fastforec.config import load_config
from fastforec.distributed import init_distributed
from fastforec.trainer import Trainer

SEED = 321
B = 2


@pytest.fixture(scope="module")
def world():
    return init_distributed()


def _trainer(shards: Path, tmp_path: Path, world, base: str, aux: str) -> Trainer:
    method = {"base": base, "aux": aux, "conf_thresh": 0.3, "rec_conf_thresh": 0.35}
    cfg = write_config(tmp_path / f"{base}_{aux}.json", tiny_config(shards, method=method))
    tr = Trainer(load_config(cfg), run_dir=tmp_path / f"{base}_{aux}", dist=world)
    tr.student.train()
    return tr


def _batch(tr: Trainer) -> tuple[dict, dict]:
    return two_view_batch(batch=B, crop=48, num_classes=tr.num_classes)


def _reference_forward(tr: Trainer, labeled: dict, unlabeled: dict, *, fp: float) -> dict:
    """[labeled ; weak] through encoder and heads by hand, dropout masks drawn in the order the
    model draws them (c1's, then c4's) from the same seed; resized with align_corners=True as
    UniMatch's model does."""
    model = tr.student
    x = torch.cat([labeled["image"], unlabeled["weak"]])
    torch.manual_seed(SEED)
    with torch.no_grad():
        c1, c4 = model.backbone((x - model.mean) / model.std)
        out = {}
        if fp > 0:
            m1 = F.dropout2d(torch.ones_like(c1[B:]), p=fp, training=True)
            m4 = F.dropout2d(torch.ones_like(c4[B:]), p=fp, training=True)
            seg = model.seg_head(torch.cat([c1, c1[B:] * m1]), torch.cat([c4, c4[B:] * m4]))
            seg = F.interpolate(seg, size=x.shape[-2:], mode="bilinear", align_corners=True)
            out["seg"], out["seg_fp"] = seg[: 2 * B], seg[2 * B:]
        else:
            out["seg"] = F.interpolate(model.seg_head(c1, c4), size=x.shape[-2:], mode="bilinear", align_corners=True)
        if model.aux_head is not None:
            out["aux"] = F.interpolate(model.aux_head(c1, c4), size=x.shape[-2:], mode="bilinear", align_corners=True)
    return out



@pytest.mark.parametrize("base,aux", [("unimatch", "none"), ("unimatch", "forec"), ("fixmatch", "none"),
                                      ("fixmatch", "rec")])
def test_self_training_loss_terms(shards: Path, tmp_path: Path, world, base: str, aux: str) -> None:
    tr = _trainer(shards, tmp_path, world, base, aux)
    assert tr.teacher is None, "FixMatch/UniMatch label with the student: no EMA teacher"
    m = tr.cfg.method
    labeled, unlabeled = _batch(tr)
    unimatch = base == "unimatch"
    ref = _reference_forward(tr, labeled, unlabeled, fp=0.5 if unimatch else 0.0)
    prob = ref["seg"][B:].softmax(1)
    conf, pl = prob.max(1)
    valid = unlabeled["valid"]
    partner = torch.tensor([B - 1] + list(range(B - 1)))  # sample i pastes from sample i - 1
    views = [("strong", "box"), ("strong2", "box2")] if unimatch else [("strong", "box")]
    mixed = []
    for image, box in views:
        bx = unlabeled[box]
        mix = lambda t: torch.where(bx if t.dim() == 3 else bx[:, None], t[partner], t)  # noqa: E731
        mixed.append((mix(unlabeled[image]), mix(pl), mix(conf), mix(valid)))
    # the strong views' forward pass continues the random stream of the first one (the backbone
    # draws from it), as in the step
    with torch.no_grad():
        pred_s = tr.engine(torch.cat([v[0] for v in mixed]))
    seg_s = pred_s["seg"].split(B)
    # thresholds inside the confidence range, so both sides of each threshold occur
    m.conf_thresh, m.rec_conf_thresh = threshold_between(conf, 0.5), threshold_between(conf, 0.3)

    torch.manual_seed(SEED)
    got = {k: float(v.detach()) for k, v in tr.compute_losses(labeled, unlabeled, epoch=0).items()}

    want = {"loss_s": float(F.cross_entropy(ref["seg"][:B], labeled["label"], ignore_index=255))}
    if unimatch:
        for k, (v, seg) in enumerate(zip(mixed, seg_s), start=1):
            want[f"loss_u_s{k}"] = kept_ce(seg, v[1], v[2], v[3], m.conf_thresh)
        want["loss_u_fp"] = kept_ce(ref["seg_fp"], pl, conf, valid, m.conf_thresh)
        # UniMatch: loss = (loss_x + 0.25 loss_u_s1 + 0.25 loss_u_s2 + 0.5 loss_u_w_fp) / 2
        total = (want["loss_s"] + 0.25 * want["loss_u_s1"] + 0.25 * want["loss_u_s2"] + 0.5 * want["loss_u_fp"]) / 2
    else:
        v = mixed[0]
        want["loss_u"] = kept_ce(seg_s[0], v[1], v[2], v[3], m.conf_thresh)
        total = (want["loss_s"] + want["loss_u"]) / 2  # FixMatch: (loss_x + loss_u_s) / 2
    if aux != "none":
        x, y = labeled["image"], labeled["label"]
        known = y != 255
        fg_ids = torch.tensor(tr.fg_classes)
        rec_l, rec_w = ref["aux"][:B], ref["aux"][B:]
        inputs = [(rec_w, unlabeled["weak"], pl, conf, valid)]
        inputs += [(rec, v[0], v[1], v[2], v[3]) for rec, v in zip(pred_s["rec"].split(B), mixed)]
        if aux == "rec":
            lab = masked_mse(rec_l, x, known)
            unl = [masked_mse(rec, img, val) for rec, img, _, _, val in inputs]
        else:  # forec: foreground of the (mixed) weak pseudo-label, confident pixels only
            lab = masked_mse(rec_l, x * torch.isin(y, fg_ids)[:, None], known)
            unl = [masked_mse(rec, img * (torch.isin(p, fg_ids) & val)[:, None], val & (c > m.rec_conf_thresh))
                   for rec, img, p, c, val in inputs]
        want["loss_rec"] = m.rec_weight_labeled * lab + m.rec_weight_unlabeled * sum(unl) / len(unl)
        total += want["loss_rec"]
    want["loss"] = total
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-7), key
    assert got["pl_coverage"] == pytest.approx(float(((conf > m.conf_thresh) & valid).sum() / valid.sum()), rel=1e-5)
    assert got["pl_conf"] == pytest.approx(float((conf * valid).sum() / valid.sum()), rel=1e-5)
    assert 0.0 < got["pl_coverage"] < 1.0
    assert set(got) == set(want) | {"pl_coverage", "pl_conf"}


def test_unimatch_step_trains_without_a_teacher(shards: Path, tmp_path: Path, world) -> None:
    tr = _trainer(shards, tmp_path, world, "unimatch", "forec")
    labeled, unlabeled = _batch(tr)
    before = [p.detach().clone() for p in tr.student.parameters()]
    assert tr.train_step(labeled, unlabeled)
    assert all(not torch.equal(a, b) for a, b in zip(before, tr.student.parameters()) if a.dim() > 1)
    assert tr.state.step == 1


def test_warmup_is_supervised_only(shards: Path, tmp_path: Path, world) -> None:
    tr = _trainer(shards, tmp_path, world, "unimatch", "none")
    tr.cfg.method.warmup_epochs = 1
    labeled, unlabeled = _batch(tr)
    torch.manual_seed(SEED)
    got = tr.compute_losses(labeled, unlabeled, epoch=0)
    assert set(got) == {"loss", "loss_s"}
