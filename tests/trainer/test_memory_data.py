"""The trainer on batches from memory (fastforec.data.memory) imports and trains without DALI or
webdataset: what an offline GPU node without them runs (gpu-check)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from trainer_support import clean_env

from tests import child_process

SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys, tempfile
    from pathlib import Path

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("webdataset",) or name.startswith("nvidia.dali"):
                raise ImportError(f"blocked for the test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    import torch
    from fastforec.config import config_from_dict
    from fastforec.data.memory import InMemoryData, MemoryTrainData, memory_manifest, synthetic_batch
    from fastforec.distributed import init_distributed
    from fastforec.trainer import Trainer

    cfg = config_from_dict({
        "data": {"root": "memory", "crop_size": 32, "batch_size": 2},
        "model": {"backbone": "resnet18", "decoder_channels": 16},
        "method": {"base": "mean_teacher", "aux": "forec", "conf_thresh": 0.0},
        "train": {"max_steps": 10, "channels_last": True},
        "deepspeed": {"torch_autocast": {"enabled": True, "dtype": "bfloat16"}}})
    dist = init_distributed(None)
    batches = [synthetic_batch(2, 32, 5, device=dist.device, seed=s) for s in range(2)]
    data = InMemoryData(manifest=memory_manifest(5), train=MemoryTrainData(batches))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, run_dir=Path(tmp), dist=dist, data=data)
        losses = []
        for _ in range(3):
            terms = trainer.train_step(*data.train.next_batch())
            losses.append({k: float(v) for k, v in terms.items()})
    print(json.dumps({"losses": losses, "step": trainer.state.step, "position": data.train.position,
                      "dali": any(m.startswith("nvidia.dali") for m in sys.modules),
                      "webdataset": "webdataset" in sys.modules}))
""")


def test_trainer_runs_from_memory_without_dali(tmp_path: Path) -> None:
    proc = child_process.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=clean_env(), capture_output=True,
                             text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dali"] is False and out["webdataset"] is False
    assert out["step"] == 3 and out["position"] == 3
    for terms in out["losses"]:
        assert set(terms) >= {"loss", "loss_s", "loss_u", "loss_rec"}
        assert all(v == v for v in terms.values()) and terms["loss_u"] > 0
