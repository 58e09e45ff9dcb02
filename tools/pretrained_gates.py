"""The pretrained-regime gates of issue 34 (docs/results.md), from finished `fastforec ablate` studies.

    python tools/pretrained_gates.py --scratch runs/ptpilot/scratch --pretrained runs/ptpilot/pre \\
        --double runs/ptpilot/pre_2x [--aux runs/ptpilot/pre_aux]

--scratch:    supervised at the small budget from scratch (configs/cpu/sslbench.json);
--pretrained: supervised at the small budget from the pretrained encoder, same seeds;
--double:     as --pretrained with twice the steps, same seeds;
--aux:        rec and forec at the small budget from the pretrained encoder, same seeds (gate iii).

Gates, fixed before the study (the reasons are in docs/results.md):
(i)   pretrained minus scratch, supervised: mean >= +5 points and the 95 % interval above 0;
(ii)  pretrained supervised has plateaued: 2x steps minus 1x < +1 point;
(iii) the study's seed count: the smallest n whose expected 95 % interval of FOrec - rec, with the
      pilot's standard deviation of that paired difference, is at most +-1 point wide on each side
      (so +2.0, the paper's gain, has an interval excluding 0, and 0 one excluding +2.0).
Every number is mIoU % of the last evaluation (student); differences are paired by seed. Prints a
Markdown table; exits 1 when a study has no finished run.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from fastforec.ablate import fmt_stat, last_miou, mean_ci, paired_difference, t_critical

PRETRAINED_GAIN = 5.0  # (i): more than the mean teacher's gain over supervised from scratch (+4.9)
PLATEAU_GAIN = 1.0  # (ii): as the from-scratch gate (a)
HALF_WIDTH = 1.0  # (iii): half of the paper's FOrec - rec (+2.0)
MAX_SEEDS = 100



def seeds_needed(std: float, half_width: float = HALF_WIDTH) -> int:
    """The smallest n >= 2 with t(n-1) * std / sqrt(n) <= half_width."""
    for n in range(2, MAX_SEEDS + 1):
        if t_critical(n - 1) * std / math.sqrt(n) <= half_width:
            return n
    return MAX_SEEDS


def gates(scratch: Path, pretrained: Path, double: Path, aux: Path | None,
          budget: str) -> list[tuple[str, str, str, bool | None]]:
    sup, pre, pre2 = (last_miou(d, "supervised", budget) for d in (scratch, pretrained, double))
    if not all((sup, pre, pre2)):
        sys.exit("a study has no finished runs: run the ablate commands of docs/results.md first")
    rows: list[tuple[str, str, str, bool | None]] = []
    i = paired_difference(pre, sup)
    rows.append((f"(i) pretrained minus scratch, supervised, {budget} labels",
                 f">= +{PRETRAINED_GAIN:g}, 95 % CI above 0", fmt_stat(i, signed=True),
                 i is not None and i["mean"] >= PRETRAINED_GAIN and i["ci_low"] is not None and i["ci_low"] > 0))
    ii = paired_difference(pre2, pre)
    rows.append((f"(ii) pretrained supervised, {budget} labels, has plateaued: 2x steps minus 1x",
                 f"< +{PLATEAU_GAIN:g}", fmt_stat(ii, signed=True), ii is not None and ii["mean"] < PLATEAU_GAIN))
    refs: list[tuple[str, dict[int, float]]] = [("supervised, scratch", sup), ("supervised, pretrained", pre),
                                                ("supervised, pretrained, 2x steps", pre2)]
    if aux is not None:
        rec, forec = last_miou(aux, "rec", budget), last_miou(aux, "forec", budget)
        iii = paired_difference(forec, rec)
        if iii is None or iii["std"] is None:
            sys.exit(f"'{aux}' needs rec and forec runs of at least two common seeds")
        n = seeds_needed(iii["std"])
        rows.append((f"(iii) FOrec minus rec, pretrained, {budget} labels: seeds for a 95 % CI of +-{HALF_WIDTH:g}",
                     f"n = {n} (sd {iii['std']:.2f})", fmt_stat(iii, signed=True), None))
        refs += [("rec, pretrained", rec), ("FOrec, pretrained", forec)]
    for label, values in refs:
        rows.append((f"reference: {label}", "", fmt_stat(mean_ci(list(values.values()))), None))
    return rows


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else "met" if ok else "NOT met"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--scratch", type=Path, required=True)
    p.add_argument("--pretrained", type=Path, required=True)
    p.add_argument("--double", type=Path, required=True)
    p.add_argument("--aux", type=Path, default=None)
    p.add_argument("--budget", default="24")
    args = p.parse_args(argv)
    rows: list[Any] = gates(args.scratch, args.pretrained, args.double, args.aux, args.budget)
    print("| gate | needs | measured, mean [95 % CI] | |\n|---|---|---:|---|")
    for name, need, value, ok in rows:
        print(f"| {name} | {need} | {value} | {_verdict(ok)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
