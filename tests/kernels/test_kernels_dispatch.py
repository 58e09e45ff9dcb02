"""Backend selection, the interpreter set-up pitfalls, and the fastforec.losses entry points."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from kernel_cases import Shape, logits, needs_triton

import fastforec_kernels as kernels
from fastforec import losses
from tests import child_process

REPO = Path(__file__).resolve().parents[2]


@needs_triton  # auto picks torch wherever triton is not installed
def test_auto_picks_triton_under_the_interpreter_and_torch_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    t = torch.zeros(1)
    assert kernels.resolve_backend("auto", t) == "triton"  # conftest sets TRITON_INTERPRET=1
    monkeypatch.setenv("TRITON_INTERPRET", "true")
    assert kernels.resolve_backend("auto", t) == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert kernels.resolve_backend("auto", t) == "torch"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert kernels.resolve_backend("auto", t) == "torch"
    assert kernels.resolve_backend("torch", t) == "torch"


def test_unknown_backend_names_the_config_key() -> None:
    with pytest.raises(ValueError, match=r"one of auto, triton, torch, got 'cuda' \(config key method.kernels\)"):
        kernels.pseudo_label(torch.zeros(1, 2, 3, 3), backend="cuda")


@needs_triton  # without it the message is that triton is missing
def test_forced_triton_on_cpu_without_interpreter_says_what_to_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match=r"TRITON_INTERPRET=1.*set method.kernels to 'torch' or 'auto'"):
        kernels.masked_mse(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool),
                           torch.ones(1, 2, 2, dtype=torch.bool), backend="triton")


@pytest.mark.parametrize("backend", ["auto", pytest.param("triton", marks=needs_triton), "torch"])
def test_losses_module_dispatches_to_the_kernels(backend: str) -> None:
    shape = Shape(3, 21, 6, 7, False)
    teacher, student = logits(shape, torch.float32, 1), logits(shape, torch.float32, 2)
    fg_classes = [1, 5, 9]
    label, conf, fg = losses.pseudo_label(teacher, fg_classes, backend=backend)
    ref = losses.pseudo_label_reference(teacher, fg_classes)
    assert torch.equal(label, ref[0]) and torch.equal(fg, ref[2])
    valid = torch.ones_like(fg)
    got = losses.pseudo_label_ce(student, label, conf, valid, 0.2, backend=backend)
    torch.testing.assert_close(got, losses.pseudo_label_ce_reference(student, label, conf, valid, 0.2))
    image = torch.rand(3, 3, 6, 7)
    got = losses.masked_mse(image.flip(0), image, fg, valid, backend=backend)
    torch.testing.assert_close(got, losses.masked_mse_reference(image.flip(0), image, fg, valid))


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return child_process.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, capture_output=True,
                             text=True)


def test_kernels_work_when_triton_was_imported_before_the_interpreter_was_requested() -> None:
    # deepspeed imports triton early; triton's own tl.max/tl.sum/tl.zeros are then compiled-mode
    # functions the interpreter refuses to call. The kernels must not depend on them.
    pytest.importorskip("triton")
    code = """
        import os
        import triton  # before TRITON_INTERPRET: triton.language's helpers are defined compiled
        os.environ["TRITON_INTERPRET"] = "1"
        import torch
        import fastforec_kernels as kernels
        from fastforec.losses import pseudo_label_reference, pseudo_label_ce_reference
        x = torch.randn(2, 21, 5, 7) * 3
        label, conf, fg = kernels.pseudo_label(x, [1, 2], backend="triton")
        ref = pseudo_label_reference(x, [1, 2])
        assert torch.equal(label, ref[0]) and torch.allclose(conf, ref[1]) and torch.equal(fg, ref[2])
        valid = torch.ones_like(fg)
        loss = kernels.pseudo_label_ce(x, label, conf, valid, 0.1, backend="triton")
        assert torch.allclose(loss, pseudo_label_ce_reference(x, label, conf, valid, 0.1))
        print("ok")
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = _run_python(code, env)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
