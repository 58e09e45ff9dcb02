"""fastforec's SyncBatchNorm2d (no host sync) on 2 gloo ranks, each with half of a batch, against
torch's BatchNorm2d on the whole batch: outputs, input gradients, the affine gradients summed over
the ranks, and the running statistics. In a world of one it is BatchNorm2d."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sync_bn_harness import fixed_inputs  # noqa: E402

from fastforec.models.sync_bn import SyncBatchNorm2d, convert_sync_batchnorm  # noqa: E402

HARNESS = Path(__file__).with_name("sync_bn_harness.py")
REPO = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _torchrun() -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def _reference() -> dict[str, torch.Tensor]:
    x, dy, bn = fixed_inputs()
    x.requires_grad_(True)
    y = bn(x)
    y.backward(dy)
    return {"y": y.detach(), "dx": x.grad, "dw": bn.weight.grad, "db": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def test_two_ranks_equal_batchnorm_over_the_whole_batch(tmp_path: Path) -> None:
    out = tmp_path / "ranks.pt"
    proc = subprocess.run(_torchrun() + [str(HARNESS), str(out)], cwd=tmp_path, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = torch.load(out, weights_only=True)
    ref = _reference()
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), ref["y"], **close)
    torch.testing.assert_close(torch.cat([r["dx"] for r in ranks]), ref["dx"], **close)
    # each rank's affine gradient is its own part (DDP / ZeRO average them like any gradient)
    torch.testing.assert_close(sum(r["dw"] for r in ranks), ref["dw"], **close)
    torch.testing.assert_close(sum(r["db"] for r in ranks), ref["db"], **close)
    for r in ranks:  # the same global statistics on every rank
        torch.testing.assert_close(r["running_mean"], ref["running_mean"], **close)
        torch.testing.assert_close(r["running_var"], ref["running_var"], **close)


def test_one_process_is_batchnorm() -> None:
    ref = _reference()
    x, dy, bn = fixed_inputs()
    model = convert_sync_batchnorm(torch.nn.Sequential(bn))
    assert type(model[0]) is SyncBatchNorm2d and set(model[0].state_dict()) == set(torch.nn.BatchNorm2d(3).state_dict())
    x.requires_grad_(True)
    y = model(x)
    y.backward(dy)
    assert torch.equal(y, ref["y"]) and torch.equal(x.grad, ref["dx"])
    assert torch.equal(bn.running_mean, ref["running_mean"]) and torch.equal(bn.running_var, ref["running_var"])
    model.eval()
    assert torch.equal(model(x), torch.nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight,
                                                                bn.bias, False, 0.0, bn.eps))
