"""The CUDA paths, run by the suite itself where a GPU is present (`pytest -m gpu` on the lent
machine; skipped elsewhere): compiled Triton kernels against the PyTorch path, the fused optimizer
step, fp16 loss scaling and the bf16 block in real runs that checkpoint and resume, and
SyncBatchNorm2d's synchronised path against BatchNorm2d. None of this has run on a GPU yet: the
first GPU session runs `pytest -m gpu tests` beside `bench --what gpu-check`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from trainer_support import run_train, tiny_config, train_records, write_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


def _logits(batch: int, classes: int, h: int, w: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (3.0 * torch.randn(batch, classes, h, w, generator=gen)).to(CUDA)


def test_compiled_triton_kernels_match_the_pytorch_path() -> None:
    pytest.importorskip("triton")
    import fastforec_kernels as kernels

    teacher, student = _logits(2, 21, 97, 131, seed=0), _logits(2, 21, 97, 131, seed=1)
    label, conf, fg = kernels.pseudo_label(teacher, [1, 2, 3], backend="triton")
    ref_label, ref_conf, ref_fg = kernels.pseudo_label(teacher, [1, 2, 3], backend="torch")
    assert torch.equal(label, ref_label) and torch.equal(fg, ref_fg)
    torch.testing.assert_close(conf, ref_conf, rtol=1e-6, atol=1e-7)

    valid = torch.rand(2, 97, 131, device=CUDA) > 0.1
    grads = []
    for backend in ("triton", "torch"):
        x = student.clone().requires_grad_(True)
        loss = kernels.pseudo_label_ce(x, label, conf, valid, 0.5, backend=backend)
        loss.backward()
        grads.append((loss.detach(), x.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-4, atol=1e-7)

    rec = torch.rand(2, 3, 97, 131, device=CUDA)
    image = torch.rand(2, 3, 97, 131, device=CUDA)
    out = []
    for backend in ("triton", "torch"):
        r = rec.clone().requires_grad_(True)
        loss = kernels.masked_mse(r, image, fg, valid, backend=backend)
        loss.backward()
        out.append((loss.detach(), r.grad))
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("block", [{"fp16": {"enabled": True}}, {"bf16": {"enabled": True}},
                                   {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}],
                         ids=["fp16", "bf16", "autocast"])
def test_a_16bit_run_on_the_gpu_trains_checkpoints_and_resumes(shards: Path, tmp_path: Path, block: dict) -> None:
    # fp16: DeepSpeed's loss scaler in a real run; resumed on a GPU the values follow the
    # uninterrupted run closely, not to the bit (atomics in backward kernels: README)
    cfg = write_config(tmp_path / "cfg.json", tiny_config(shards, method={"conf_thresh": 0.0},
                                                          train={"max_steps": 4, "checkpoint_every": 2},
                                                          deepspeed=block))
    full = tmp_path / "full"
    proc = run_train(["--config", str(cfg), "--run-dir", str(full)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = train_records(full)
    assert sorted(records) == [1, 2, 3, 4] and all(math.isfinite(r["loss"]) for r in records.values())

    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    for f in (full / "checkpoints").glob("step_00000002*.pt"):
        (part / "checkpoints" / f.name).write_bytes(f.read_bytes())
    proc = run_train(["--config", str(cfg), "--run-dir", str(part), "--resume"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = train_records(part)
    for step in (3, 4):
        assert resumed[step]["loss"] == pytest.approx(records[step]["loss"], rel=2e-2), step


def test_sync_batchnorm_path_on_one_gpu_is_batchnorm() -> None:
    import torch.distributed as dist

    from fastforec.distributed import init_distributed
    from fastforec.models.sync_bn import SyncBatchNorm2d

    init_distributed()  # a world of one over NCCL
    assert dist.is_initialized()
    torch.manual_seed(0)
    x = (2.0 + torch.randn(4, 8, 9, 11, device=CUDA)).requires_grad_(True)
    dy = torch.randn(4, 8, 9, 11, device=CUDA)
    ref = torch.nn.BatchNorm2d(8).to(CUDA)
    bn = torch.nn.BatchNorm2d(8).to(CUDA)
    bn.__class__ = SyncBatchNorm2d
    bn.min_world_size = 1  # the synchronised path (one all-reduce of sums) on one rank
    y_ref = ref(x)
    y_ref.backward(dy)
    dx_ref, x.grad = x.grad, None
    y = bn(x)
    y.backward(dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, dx_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-5, atol=1e-6)
