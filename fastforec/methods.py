"""Loss assembly per base method (supervised, mean teacher, FixMatch, UniMatch) with the auxiliary
task (none, rec, forec, fgbg) on top: ``compute_losses`` is one micro-batch's loss terms.

Mean teacher (docs/architecture.md, section A): the EMA teacher labels the weak view; the student sees
[labeled ; CutMix-ed strong view]; loss = L_s + lambda_u L_u (+ the auxiliary loss).

FixMatch and UniMatch, as in UniMatch (Yang et al., CVPR 2023, "Revisiting weak-to-strong
consistency") and its code (LiheYoung/UniMatch, ``fixmatch.py`` / ``unimatch.py``):

* the pseudo-labels are the student's own prediction on the weak view, from the same training-mode
  forward pass as the labeled images, detached (no EMA teacher, no gradient through them);
* each strong view is CutMix-ed with its own box; the pasted region takes the partner's strong view
  of the same stream and the partner's weak pseudo-label, confidence and ignore mask;
* UniMatch adds a second strong view (its own photometric and CutMix draws) and the feature
  perturbation stream: ``nn.Dropout2d(0.5)`` on the encoder features c1 and c4 of the weak view,
  decoded by the same segmentation head, trained on the (unmixed) weak pseudo-labels;
* losses: FixMatch ``(L_s + L_u) / 2``; UniMatch ``(L_s + 0.25 L_s1 + 0.25 L_s2 + 0.5 L_fp) / 2``
  (so the supervised term is 1/2 of the total, each strong view 1/8, the feature stream 1/4);
* every unlabeled term is CE summed over pixels with a confident pseudo-label, divided by the
  number of valid (not padding) pixels. UniMatch keeps ``conf >= conf_thresh``; the fused kernel
  here keeps ``conf > conf_thresh`` (kernels.pseudo_label_ce), which differs only for a
  confidence exactly equal to the threshold, a set of measure zero for softmax outputs.

UniMatch V2 (Yang et al., TPAMI 2025, "UniMatch V2"; LiheYoung/UniMatch-V2 ``unimatch_v2.py``):

* the pseudo-labels come from an EMA teacher over parameters *and* buffers, in eval mode, on the
  weak view (the student never sees the weak view);
* the labeled images have their own forward pass; the two CutMix-ed strong views go through one
  forward with complementary channel dropout on the encoder features (models/segmentor.py);
* the CutMix partner of sample i is sample n-1-i (its ``flip(0)``);
* loss ``(L_x + (L_s1 + L_s2) / 2) / 2``, each unlabeled term as in UniMatch.

With an auxiliary task the weak view is a reconstruction input here too: it joins the labeled
forward (its segmentation output is unused; with BatchNorm it joins the labeled statistics), and
the FOrec masks come from the teacher's pseudo-labels.

Two deliberate differences from UniMatch's code, both for one DALI batch per step and exact
resume: the CutMix partner of sample i is sample i - 1 of the same unlabeled batch (sample 0's is
the last; UniMatch draws a second
unlabeled batch from another pass of its loader and labels it in eval mode under no_grad), and the
feature dropout perturbs the unlabeled samples only (UniMatch drops the labeled features too and
discards their output).

With an auxiliary task, every unlabeled image the student sees is a reconstruction input: the weak
view (FixMatch/UniMatch) and each CutMix-ed strong view, with FOrec/fgbg masks from the weak
pseudo-labels mixed with that view's box. ``rec_weight_unlabeled`` applies to their mean, so it
means the same whatever the number of views; the auxiliary loss is added outside UniMatch's /2.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

from fastforec import losses
from fastforec.config import Config, ConfigError, MethodConfig

# Fraction of the total each term gets, as the UniMatch code weighs them (see the module docstring);
# lambda_u scales the unlabeled ones (1 = the paper).
FIXMATCH_WEIGHTS = {"loss_s": 0.5, "loss_u": 0.5}
UNIMATCH_WEIGHTS = {"loss_s": 0.5, "loss_u_s1": 0.125, "loss_u_s2": 0.125, "loss_u_fp": 0.25}
UNIMATCH_V2_WEIGHTS = {"loss_s": 0.5, "loss_u_s1": 0.25, "loss_u_s2": 0.25}
CUTMIX_SHIFT = 1  # CutMix partner of sample i: sample i - 1 of the batch (a fixed permutation keeps resume exact)
# The unlabeled batch's strong views and their CutMix boxes, in stream order.
STRONG_VIEWS = (("strong", "box"), ("strong2", "box2"))


class View(NamedTuple):
    """One unlabeled input the student sees and what its losses need, aligned pixel for pixel: the
    weak view with its pseudo-labels, or a strong view CutMix-ed together with them."""

    image: torch.Tensor
    label: torch.Tensor  # pseudo-label
    conf: torch.Tensor  # its confidence
    fg: torch.Tensor  # the pseudo-label is a foreground class
    valid: torch.Tensor  # not padding


def mixed_view(weak: View, image: torch.Tensor, box: torch.Tensor, perm: torch.Tensor) -> View:
    """``image`` (a strong view of ``weak``) and ``weak``'s pseudo-labels, CutMix-ed with ``box``."""
    return View(*losses.cutmix_batch(box, perm, image, weak.label, weak.conf, weak.fg, weak.valid))


@dataclass
class StepModels:
    """What the loss assembly needs from the trainer."""

    student: Callable[..., dict[str, torch.Tensor]]  # the DeepSpeed engine (forward = the student's)
    teacher: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None  # EMA teacher: mean teacher, UniMatch V2
    method: MethodConfig
    fg_classes: Sequence[int]
    input_dtype: torch.dtype
    autocast: Callable[[], object]
    device: torch.device
    # around a micro-batch's forwards: each weight cast to bf16 once, not per forward (precision.weight_cast_scope)
    cast_scope: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    memory_format: torch.memory_format = torch.contiguous_format  # train.channels_last
    # the labeled images' loss (logits, labels) -> scalar: CE, or OHEM (losses.labeled_loss)
    labeled_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = losses.supervised_ce

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        # the dtype DeepSpeed gave the weights (bf16/fp16 blocks) and the configured memory format
        return x.to(self.input_dtype, memory_format=self.memory_format)


def cutmix_partner(n: int, device: torch.device, *, reverse: bool = False) -> torch.Tensor:
    """Whose content sample i's CutMix box takes: the reversed batch (UniMatch V2), else sample i - 1."""
    if reverse:
        return torch.arange(n - 1, -1, -1, device=device)
    return torch.roll(torch.arange(n, device=device), CUTMIX_SHIFT)


def compute_losses(ctx: StepModels, labeled: dict[str, torch.Tensor],
                   unlabeled: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """All loss terms (fp32 scalars, ``loss`` their weighted total) and pseudo-label statistics.
    ``unlabeled`` None: the supervised part only (base supervised, or during the warm-up)."""
    x_l = labeled["image"].to(ctx.device, non_blocking=True)
    y_l = labeled["label"].to(ctx.device, non_blocking=True)
    with ctx.cast_scope():
        if unlabeled is None:
            return _supervised(ctx, x_l, y_l)
        u = {k: v.to(ctx.device, non_blocking=True) for k, v in unlabeled.items()}
        return BASES[ctx.method.base].loss(ctx, x_l, y_l, u)


def aux_loss(ctx: StepModels, pred: dict[str, torch.Tensor], image: torch.Tensor, fg: torch.Tensor,
             mask: torch.Tensor) -> torch.Tensor:
    """The auxiliary head's loss on one input: masked MSE of the reconstruction, or fg/bg BCE."""
    if "rec" in pred:
        return losses.masked_mse(pred["rec"], image, fg, mask, backend=ctx.method.kernels)
    return losses.fgbg_loss(pred["fgbg"], fg, mask)


def _aux_parts(pred: dict[str, torch.Tensor], sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    """The auxiliary outputs of a forward pass over a concatenated batch, split per input."""
    keys = [k for k in pred if k in ("rec", "fgbg")]
    parts = [dict(zip(keys, chunk)) for chunk in zip(*[pred[k].split(sizes) for k in keys])]
    return parts


def _supervised(ctx: StepModels, x_l: torch.Tensor, y_l: torch.Tensor) -> dict[str, torch.Tensor]:
    m = ctx.method
    pred = ctx.student(ctx.model_input(x_l))
    out = {"loss_s": ctx.labeled_loss(pred["seg"], y_l)}
    if m.reconstruction is not None:
        fg, mask = losses.rec_targets_labeled(y_l, method=m.aux, fg_classes=ctx.fg_classes)
        out["loss_rec"] = m.rec_weight_labeled * aux_loss(ctx, pred, x_l, fg, mask)
    out["loss"] = sum(out.values())
    return out


def _teacher_view(ctx: StepModels, u: dict[str, torch.Tensor]) -> View:
    """The weak view with the EMA teacher's pseudo-labels (mean teacher, UniMatch V2)."""
    assert ctx.teacher is not None
    with ctx.autocast():
        t_logits = ctx.teacher(u["weak"].contiguous(memory_format=ctx.memory_format))["seg"]
    return View(u["weak"], *losses.pseudo_label(t_logits, ctx.fg_classes, backend=ctx.method.kernels), u["valid"])


def _mean_teacher(ctx: StepModels, x_l: torch.Tensor, y_l: torch.Tensor,
                  u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    m = ctx.method
    weak = _teacher_view(ctx, u)
    perm = cutmix_partner(weak.image.shape[0], ctx.device)
    strong = mixed_view(weak, u["strong"], u["box"], perm)

    b, n = x_l.shape[0], strong.image.shape[0]
    pred = ctx.student(ctx.model_input(torch.cat([x_l, strong.image])))
    seg_l, seg_u = pred["seg"].split([b, n])
    out = {"loss_s": ctx.labeled_loss(seg_l, y_l), "loss_u": m.lambda_u * _unlabeled_ce(ctx, seg_u, strong)}
    if m.reconstruction is not None:
        lab, unl = _aux_parts(pred, [b, n])
        out["loss_rec"] = _rec_loss(ctx, lab, x_l, y_l, [(unl, strong)])
    out["loss"] = sum(out.values())
    out.update(_pl_stats(strong.conf, strong.valid, m.conf_thresh, conf_key="teacher_conf"))
    return out


def _unimatch_v2(ctx: StepModels, x_l: torch.Tensor, y_l: torch.Tensor,
                 u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    m = ctx.method
    weak = _teacher_view(ctx, u)
    b, n = x_l.shape[0], weak.image.shape[0]
    perm = cutmix_partner(n, ctx.device, reverse=True)
    mixed = [mixed_view(weak, u[image], u[box], perm) for image, box in STRONG_VIEWS]

    aux = m.reconstruction is not None
    pred_l = ctx.student(ctx.model_input(torch.cat([x_l, weak.image]) if aux else x_l))
    pred_s = ctx.student(ctx.model_input(torch.cat([v.image for v in mixed])), comp_drop_keep=m.comp_drop_keep)
    out = {"loss_s": ctx.labeled_loss(pred_l["seg"][:b], y_l)}
    for name, view, seg in zip(("loss_u_s1", "loss_u_s2"), mixed, pred_s["seg"].split(n)):
        out[name] = _unlabeled_ce(ctx, seg, view)
    total = sum(w * (1.0 if k == "loss_s" else m.lambda_u) * out[k] for k, w in BASES[m.base].weights.items())
    if aux:
        lab, weak_aux = _aux_parts(pred_l, [b, n])
        views = [(weak_aux, weak), *zip(_aux_parts(pred_s, [n, n]), mixed)]
        out["loss_rec"] = _rec_loss(ctx, lab, x_l, y_l, views)
        total = total + out["loss_rec"]
    out["loss"] = total
    out.update(_pl_stats(weak.conf, weak.valid, m.conf_thresh, conf_key="teacher_conf"))
    return out


def _unlabeled_ce(ctx: StepModels, seg: torch.Tensor, view: View) -> torch.Tensor:
    """CE of the student's logits on ``view`` against its confident pseudo-labels."""
    return losses.pseudo_label_ce(seg, view.label, view.conf, view.valid, ctx.method.conf_thresh,
                                  backend=ctx.method.kernels)


def _rec_loss(ctx: StepModels, labeled: dict[str, torch.Tensor], x_l: torch.Tensor, y_l: torch.Tensor,
              unlabeled: list[tuple[dict[str, torch.Tensor], View]]) -> torch.Tensor:
    """The auxiliary loss: labeled term + ``rec_weight_unlabeled`` x the mean over the unlabeled
    inputs, each given as (its aux outputs, its view). The mean of one input is that input's loss
    exactly (the mean teacher's case)."""
    m = ctx.method
    fg_l, mask_l = losses.rec_targets_labeled(y_l, method=m.aux, fg_classes=ctx.fg_classes)
    rec_u = []
    for part, view in unlabeled:
        fg_u, mask_u = losses.rec_targets_unlabeled(view.fg, view.conf, view.valid, method=m.aux,
                                                    rec_thresh=m.rec_thresh)
        rec_u.append(aux_loss(ctx, part, view.image, fg_u, mask_u))
    return m.rec_weight_labeled * aux_loss(ctx, labeled, x_l, fg_l, mask_l) + m.rec_weight_unlabeled * torch.stack(
        rec_u).mean()


def _self_training(ctx: StepModels, x_l: torch.Tensor, y_l: torch.Tensor,
                   u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FixMatch (one strong view) and UniMatch (two, plus the feature-perturbation stream)."""
    m = ctx.method
    unimatch = m.base == "unimatch"
    views = STRONG_VIEWS[: BASES[m.base].strong_views]
    b, n = x_l.shape[0], u["weak"].shape[0]
    # Labeled and weak images in one forward pass (one BatchNorm batch, as UniMatch does); the
    # perturbed stream comes out of the same pass.
    pred_lw = ctx.student(ctx.model_input(torch.cat([x_l, u["weak"]])),
                          fp_dropout=m.fp_dropout if unimatch else 0.0, fp_from=b)
    seg_l, seg_w = pred_lw["seg"].split([b, n])
    with torch.no_grad():
        weak = View(u["weak"], *losses.pseudo_label(seg_w.detach(), ctx.fg_classes, backend=m.kernels), u["valid"])
    perm = cutmix_partner(n, ctx.device)
    mixed = [mixed_view(weak, u[image], u[box], perm) for image, box in views]
    pred_s = ctx.student(ctx.model_input(torch.cat([v.image for v in mixed])))

    out = {"loss_s": ctx.labeled_loss(seg_l, y_l)}
    names = ["loss_u_s1", "loss_u_s2"] if unimatch else ["loss_u"]
    for name, view, seg in zip(names, mixed, pred_s["seg"].split(n)):
        out[name] = _unlabeled_ce(ctx, seg, view)
    if unimatch:
        out["loss_u_fp"] = _unlabeled_ce(ctx, pred_lw["seg_fp"], weak)
    weights = BASES[m.base].weights
    total = sum(weights[k] * (1.0 if k == "loss_s" else m.lambda_u) * out[k] for k in weights)
    if m.reconstruction is not None:
        lab, weak_aux = _aux_parts(pred_lw, [b, n])
        unl = [(weak_aux, weak), *zip(_aux_parts(pred_s, [n] * len(views)), mixed)]
        out["loss_rec"] = _rec_loss(ctx, lab, x_l, y_l, unl)
        total = total + out["loss_rec"]
    out["loss"] = total
    out.update(_pl_stats(weak.conf, weak.valid, m.conf_thresh, conf_key="pl_conf"))
    return out


def _pl_stats(conf: torch.Tensor, valid: torch.Tensor, thresh: float, *, conf_key: str) -> dict[str, torch.Tensor]:
    """Share of valid pixels with a confident pseudo-label, and their mean confidence."""
    n_valid = valid.sum().clamp_min(1)
    return {"pl_coverage": ((conf > thresh) & valid).sum() / n_valid, conf_key: (conf * valid).sum() / n_valid}


UnlabeledLoss = Callable[[StepModels, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Base:
    """What a base method needs from the data and the trainer, and its loss on a step with unlabeled
    images (every base's supervised-only step, and the warm-up's, is ``_supervised``)."""

    loss: UnlabeledLoss | None  # None: the base reads no unlabeled images
    teacher: bool  # keeps an EMA teacher (the pseudo-labeller); else the student labels its own weak view
    strong_views: int = 1  # strong views per unlabeled image the data pipeline makes
    weights: dict[str, float] | None = None  # fraction of the total per term (the peer's code); None: their sum

    @property
    def unlabeled(self) -> bool:
        return self.loss is not None


# The bases (config.BaseName spells the same names; tests/test_config_base_aux.py keeps them equal).
# Adding a base: one entry here and its loss function above.
BASES: dict[str, Base] = {
    "supervised": Base(loss=None, teacher=False),
    "mean_teacher": Base(loss=_mean_teacher, teacher=True),
    "fixmatch": Base(loss=_self_training, teacher=False, weights=FIXMATCH_WEIGHTS),
    "unimatch": Base(loss=_self_training, teacher=False, strong_views=2, weights=UNIMATCH_WEIGHTS),
    "unimatch_v2": Base(loss=_unimatch_v2, teacher=True, strong_views=2, weights=UNIMATCH_V2_WEIGHTS),
}


def base_of(method: MethodConfig) -> Base:
    return BASES[method.base]


def eval_models(cfg: Config) -> tuple[str, ...]:
    """The models training evaluates, the scored (headline) one first."""
    if cfg.eval.model == "teacher":
        return ("teacher",)
    if cfg.eval.model == "both" and base_of(cfg.method).teacher:
        return ("student", "teacher")
    return ("student",)


def check_config(cfg: Config) -> None:
    """The settings that depend on what the base needs (config.py checks each value on its own;
    it knows the bases' names, not their needs). Raises ConfigError naming the key."""
    m, base = cfg.method, base_of(cfg.method)
    if cfg.eval.model == "teacher" and not base.teacher:
        raise ConfigError(f"eval.model: method '{m.label}' trains no teacher; use 'student' (or 'both')")
    if m.warmup_reset_teacher and not base.teacher:
        raise ConfigError(f"method.warmup_reset_teacher: is true, but base '{m.base}' trains no EMA teacher to "
                          f"reset; remove it or use base mean_teacher")
    # CutMix pastes a box from another sample of the same rank's unlabeled batch: with one
    # sample per rank that partner is the image itself and CutMix silently does nothing.
    cutmix = cfg.data.aug.cutmix_prob
    if base.unlabeled and cutmix > 0 and cfg.data.batch_size < 2:
        raise ConfigError(
            f"data.batch_size: is {cfg.data.batch_size}, but CutMix (data.aug.cutmix_prob={cutmix}) mixes each "
            "unlabeled image with another sample of the same rank's batch, so it needs at least 2 per rank; raise "
            "data.batch_size (lower deepspeed.gradient_accumulation_steps or use fewer ranks to keep the global "
            "batch), or set data.aug.cutmix_prob=0 to train without CutMix")
