"""The sslbench pilot gates (docs/results.md) from three finished `fastforec ablate` studies.

    python tools/sslbench_gates.py --study runs/sslbench --all runs/sslbench_all --double runs/sslbench_2x

--study: supervised and mean_teacher at the small budget (the study's own runs);
--all:   supervised on every label (budget "all"), same seeds;
--double: supervised at the small budget with twice the steps, same seeds.
Every number is mIoU % of the last evaluation; differences are paired by seed, with the t-based
95 % interval of `fastforec ablate`. Prints a Markdown table; exits 1 when a run is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fastforec.ablate import fmt_stat, last_miou, mean_ci, paired_difference

PLATEAU_GAIN = 1.0  # (a) doubling the steps gains less than this
LABEL_GAP = 10.0  # (b) all labels at least this far above the small budget



def gates(study: Path, all_labels: Path, double: Path, budget: str) -> list[tuple[str, str, str, bool]]:
    sup = last_miou(study, "supervised", budget)
    mt, mt_teacher = last_miou(study, "mean_teacher", budget), last_miou(study, "mean_teacher", budget, "teacher")
    sup_all, sup_double = last_miou(all_labels, "supervised", "all"), last_miou(double, "supervised", budget)
    if not all((sup, mt, mt_teacher, sup_all, sup_double)):
        sys.exit("a study has no finished runs: run the three ablate commands of docs/results.md first")
    rows: list[tuple[str, str, str, bool]] = []

    def add(name: str, need: str, diff: dict[str, Any] | None, ok: bool) -> None:
        rows.append((name, need, fmt_stat(diff, signed=True), ok))

    a = paired_difference(sup_double, sup)
    add(f"(a) supervised on {budget} labels has plateaued: 2x steps minus 1x", f"< +{PLATEAU_GAIN:g}", a,
        a is not None and a["mean"] < PLATEAU_GAIN)
    b = paired_difference(sup_all, sup)
    add(f"(b) all labels minus {budget} labels, supervised", f">= +{LABEL_GAP:g}", b,
        b is not None and b["mean"] >= LABEL_GAP)
    c = paired_difference(mt, sup)
    add(f"(c) mean teacher minus supervised, {budget} labels", "95 % CI above 0", c,
        c is not None and c["ci_low"] is not None and c["ci_low"] > 0)
    d = paired_difference(mt_teacher, mt)
    add(f"(d) mean teacher's teacher minus its student, {budget} labels", ">= 0", d,
        d is not None and d["mean"] >= 0)
    for label, values in (("supervised", sup), ("supervised, 2x steps", sup_double),
                          ("supervised, all labels", sup_all),
                          ("mean teacher (student)", mt), ("mean teacher (teacher)", mt_teacher)):
        rows.append((f"reference: {label}", "", fmt_stat(mean_ci(list(values.values()))), True))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", type=Path, required=True)
    p.add_argument("--all", dest="all_labels", type=Path, required=True)
    p.add_argument("--double", type=Path, required=True)
    p.add_argument("--budget", default="24")
    args = p.parse_args(argv)
    rows = gates(args.study, args.all_labels, args.double, args.budget)
    print("| gate | needs | measured, mean [95 % CI] | |\n|---|---|---:|---|")
    for name, need, value, ok in rows:
        print(f"| {name} | {need} | {value} | {('met' if ok else 'NOT met') if need else ''} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
