"""EMA teacher: a = min(1 - 1/(step+1), ema_decay); float tensors lerp, integer buffers copy."""

from __future__ import annotations

import pytest
import torch

from fastforec.models import deeplabv3plus
from fastforec.teacher import EmaTeacher, ema_alpha

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def student() -> torch.nn.Module:
    return deeplabv3plus(backbone="resnet18", num_classes=NUM_CLASSES, reconstruction="rgb")


def _fill(module: torch.nn.Module, value: float, step_count: int) -> None:
    """Every float parameter and (persistent) buffer := value; every integer buffer := step_count.

    The non-persistent input normalisation constants are not model state and keep their values.
    """
    with torch.no_grad():
        for t in module.state_dict().values():
            t.fill_(value if t.is_floating_point() else step_count)


def _max_error(t: torch.Tensor, expected: float) -> float:
    return float((t - expected).abs().max())


def _teacher_names(teacher: EmaTeacher) -> set[str]:
    return {n for n, _ in teacher.module.named_parameters()} | {n for n, _ in teacher.module.named_buffers()}


@pytest.mark.parametrize(("step", "decay", "alpha"), [
    (0, 0.99, 0.0), (1, 0.99, 0.5), (3, 0.99, 0.75), (99, 0.99, 0.99), (10_000, 0.99, 0.99), (5, 0.5, 0.5),
])
def test_ema_alpha(step: int, decay: float, alpha: float) -> None:
    assert ema_alpha(step, decay) == pytest.approx(alpha, abs=1e-15)


def test_teacher_is_a_frozen_eval_copy_of_encoder_and_seg_decoder(student: torch.nn.Module) -> None:
    teacher = EmaTeacher(student, ema_decay=0.99)
    assert teacher.module.aux_head is None
    assert not any(n.startswith("aux_head") for n in _teacher_names(teacher))
    s_state, t_state = student.state_dict(), teacher.module.state_dict()
    for name, value in t_state.items():
        assert torch.equal(value, s_state[name]), name
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.module.training  # BN statistics, no dropout
    # The copy is independent: changing the student does not change the teacher.
    p_student = student.seg_head.classifier.bias
    p_teacher = teacher.module.seg_head.classifier.bias
    with torch.no_grad():
        p_student.add_(1.0)
    assert not torch.equal(p_student, p_teacher)
    with torch.no_grad():
        p_student.sub_(1.0)


def test_step_zero_makes_the_teacher_equal_the_student(student: torch.nn.Module) -> None:
    teacher = EmaTeacher(student, ema_decay=0.99)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        for b in student.buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=gen))
            else:
                b.fill_(7)
    teacher.update(student, step=0)
    s_state = student.state_dict()
    for name, value in teacher.module.state_dict().items():
        assert torch.equal(value, s_state[name]), name


def test_exact_values_after_a_few_updates() -> None:
    student = deeplabv3plus(backbone="resnet18", num_classes=NUM_CLASSES, reconstruction="rgb")
    _fill(student, 0.0, 0)
    teacher = EmaTeacher(student, ema_decay=0.7)
    # Student values per step; the teacher follows t = a*t + (1-a)*s with a = min(1 - 1/(step+1), 0.7).
    # step 1: a = 1/2 -> t = 0.5*0 + 0.5*1 = 0.5
    # step 2: a = 2/3 -> t = 2/3*0.5 + 1/3*4 = 1/3 + 4/3 = 5/3
    # step 3: a = min(3/4, 0.7) = 0.7 -> t = 0.7*5/3 + 0.3*(-2) = 7/6 - 0.6 = 17/30
    schedule = [(1, 1.0, 0.5), (2, 4.0, 5.0 / 3.0), (3, -2.0, 17.0 / 30.0)]
    for step, value, expected in schedule:
        _fill(student, value, step_count=10 * step)
        teacher.update(student, step=step)
        for name, t in teacher.module.state_dict().items():
            if t.is_floating_point():  # parameters and BN running mean/var alike
                assert _max_error(t, expected) < 1e-6, (name, step)
            else:  # num_batches_tracked: copied
                assert t.dtype == torch.int64 and bool(torch.all(t == 10 * step)), (name, step)
    # the input normalisation constants are not averaged towards anything
    torch.testing.assert_close(teacher.module.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_fp32_param_getter_is_the_source_of_the_update(student: torch.nn.Module) -> None:
    # Under DeepSpeed the master copy (not the module's low-precision tensor) must be read.
    teacher = EmaTeacher(student, ema_decay=0.99)
    seen: list[torch.Size] = []

    def master(p: torch.nn.Parameter) -> torch.Tensor:
        seen.append(p.shape)
        return torch.full(p.shape, 3.0, dtype=torch.float32)

    teacher.update(student, step=0, fp32_param=master)
    assert len(seen) == len(list(teacher.module.parameters()))
    assert all(bool((p == 3.0).all()) for p in teacher.module.parameters())


def test_forward_has_no_graph_and_only_segmentation(student: torch.nn.Module) -> None:
    teacher = EmaTeacher(student, ema_decay=0.99)
    x = torch.rand(1, 3, 33, 47, requires_grad=True)
    out = teacher(x)
    assert set(out) == {"seg"} and out["seg"].shape == (1, NUM_CLASSES, 33, 47)
    assert not out["seg"].requires_grad
