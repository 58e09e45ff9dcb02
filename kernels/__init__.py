"""Fused kernels for pseudo-labelling and the masked losses.

Placeholder dispatch until the Triton issue lands: every backend runs the PyTorch reference.
"""

from __future__ import annotations


def pseudo_label(teacher_logits, fg_classes=None, *, backend="auto"):
    from fastforec.losses import pseudo_label_reference

    return pseudo_label_reference(teacher_logits, fg_classes)


def pseudo_label_ce(student_logits, label, conf, valid, conf_thresh, *, backend="auto"):
    from fastforec.losses import pseudo_label_ce_reference

    return pseudo_label_ce_reference(student_logits, label, conf, valid, conf_thresh)


def masked_mse(rec, image, fg, mask, *, backend="auto"):
    from fastforec.losses import masked_mse_reference

    return masked_mse_reference(rec, image, fg, mask)
