"""Mutation check (issue 35): break a promise in the code under test, run the tests that guard it,
expect a failure, restore the file. From the repository root, with no edits in progress:

    .venv/bin/python tools/mutation_check.py [M1 M7 ...]

Each line says CAUGHT (naming the failing test) or NOT CAUGHT (a promise without a guard). Every
file is restored whatever happens; never run it while editing the files it mutates.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1500


@dataclass(frozen=True)
class Mutation:
    key: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("M1", "sliding window averages probabilities, not logits (border_aligned)", "fastforec/evaluate.py",
             'softmax, average = protocol != "border_aligned", protocol != "unimatch"',
             'softmax, average = True, protocol != "unimatch"', ("tests/test_sliding_window.py",)),
    Mutation("M2", "sliding window: one window start too few (the border window missing)", "fastforec/evaluate.py",
             "    n = math.ceil((size - window) / stride) + 1", "    n = math.ceil((size - window) / stride)",
             ("tests/test_sliding_window.py",)),
    Mutation("M3", "optimizer: decoders at the backbone's learning rate (head_lr_mult ignored)", "fastforec/optim.py",
             '"lr": cfg.lr * cfg.head_lr_mult, "name": "heads"', '"lr": cfg.lr, "name": "heads"',
             ("tests/test_optim.py",)),
    Mutation("M4", "optimizer: AdamW without weight decay", "fastforec/optim.py",
             "betas=tuple(cfg.betas), weight_decay=cfg.weight_decay", "betas=tuple(cfg.betas), weight_decay=0.0",
             ("tests/test_optim.py",)),
    Mutation("M5", "poly schedule: power off by 0.1", "fastforec/optim.py", "** self.power", "** (self.power + 0.1)",
             ("tests/test_optim.py",)),
    Mutation("M6", "non-finite stop: position off by one (a skipped batch not counted)", "fastforec/trainer.py",
             "        self.state.nonfinite_total += 1\n",
             "        self.state.nonfinite_total += 1\n        self.state.batches -= 1\n",
             ("tests/trainer/test_methods.py::test_the_nonfinite_stop_saves_after_the_skipped_batches_and_resume_"
              "continues_there",)),
    Mutation("M7", "EMA: teacher and student weights swapped (lerp by alpha)", "fastforec/teacher.py",
             "torch._foreach_lerp_(t_params, src, 1.0 - alpha)", "torch._foreach_lerp_(t_params, src, alpha)",
             ("tests/test_teacher.py",)),
    Mutation("M8", "mIoU: absent classes counted as 0", "fastforec/metrics.py", "miou = float(iou[present].mean())",
             "miou = float(torch.nan_to_num(iou).mean())", ("tests/test_metrics.py",)),
    Mutation("M9", "pseudo-label CE: confidence threshold ignored", "fastforec/losses.py",
             "keep = (conf > conf_thresh) & valid", "keep = valid", ("tests/test_losses.py",)),
    Mutation("M10", "CutMix partner: sample i - 2 instead of i - 1", "fastforec/methods.py", "CUTMIX_SHIFT = 1 ",
             "CUTMIX_SHIFT = 2 ", ("tests/test_losses.py",)),
    Mutation("M11", "the trainer's optimizer back to torch's CPU loop (no fused step)", "fastforec/optim.py",
             'FUSED_DEVICES = frozenset({"cuda", "cpu"})', 'FUSED_DEVICES = frozenset({"cuda"})',
             ("tests/test_optim.py",)),
    Mutation("M12", "bench baseline: accumulation ignored (an optimizer step every micro-batch)",
             "fastforec/bench/baseline.py", "        if self.micro < self.accum:\n            return terms\n", "",
             ("tests/bench/test_step_baseline.py", "-k", "accumulates")),
)


def check(m: Mutation) -> bool:
    """True when a test caught the mutation."""
    path = ROOT / m.file
    text = path.read_text()
    if m.old not in text:
        raise SystemExit(f"{m.key}: its pattern is no longer in {m.file}; update the mutation")
    path.write_text(text.replace(m.old, m.new, 1))
    start = time.time()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                           cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        path.write_text(text)
    lines = r.stdout.strip().splitlines()
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    caught = r.returncode != 0
    print(f"{m.key} {m.what}: {'CAUGHT' if caught else 'NOT CAUGHT'} in {time.time() - start:.0f} s"
          + (f" by {failed[0].split(' - ')[0].split(' ', 1)[1]}" if failed else ""), flush=True)
    return caught


def main(argv: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not argv or m.key in argv]
    return 0 if all([check(m) for m in chosen]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
