"""`fastforec ablate`: the paper's Table 4/5 comparison, on a synthetic dataset, in one command.

    fastforec ablate --config configs/cpu/sslbench.json --preset sslbench \\
        --methods supervised,mean_teacher,rec,forec,fgbg --budgets 24,96 --seeds 4 --jobs 2 --out runs/sslbench
    # what JPEG q95 training shards cost against PNG ones (Cityscapes layout), paired by seed:
    fastforec ablate --config configs/cpu/sslbench.json --preset cityscapes --image-formats png,jpg \\
        --jpeg-quality 95 --methods mean_teacher --budgets 24 --seeds 12 --jobs 2 --torch-threads 1 \\
        --num-train 200 --num-val 40 --size 96x192 --out runs/format_study

1. Data (once per output directory), by running the ``dataprep`` command line (``data.py``):
   - preset ``sslbench``: ``dataprep synth --preset sslbench --budgets ...`` writes the raw tree
     with nested, class-balanced labeled budgets (``all`` labels every training image), and
     ``dataprep voc`` converts each budget's partition to shards;
   - preset ``scenes``: ``dataprep synth`` writes the raw tree; per budget B, ``dataprep splits``
     draws B labeled ids from its classic train list and ``dataprep voc`` converts it;
   - preset ``cityscapes``: ``dataprep synth --layout cityscapes`` writes PNG street scenes; per
     budget B, ``dataprep splits`` draws B labeled ids and ``dataprep cityscapes`` converts them
     once per ``--image-formats`` entry (``png`` keeps the PNGs, ``jpg`` re-encodes the training
     splits at ``--jpeg-quality``; val stays PNG in both, so every format is evaluated on the
     same pixels and the format's cost is a paired difference).
   One partition per budget, shared by all methods and seeds: seeds vary the training (init,
   order, augmentation), not the split.
2. Runs (``plan.py`` says which, ``pool.py`` runs them): ``fastforec/train.py`` as a subprocess per
   (method, budget, format, seed), ``--jobs`` at a time, with the method's ``--set method.*``
   (``method_names.py``), ``--set train.seed=S --set data.root=<shards of B>``: every method
   of a budget gets the same seeds, so differences between methods are paired by seed. A run
   whose ``results.json`` exists is skipped; one with checkpoints but no results is resumed. A
   failed run is reported (its log is ``train.log`` in its run directory) and the study goes on.
3. Report (``report.py``, statistics in ``stats.py``): ``ablation.md`` (per method and budget the
   mean of the last evaluation's mIoU, student and teacher; the paired difference against
   supervised and against mean teacher with a t-based 95 % confidence interval; every seed),
   ``ablation.json`` and ``ablation.png``.

The study's data parameters are stored in ``OUT/data/study.json``; re-running into the same
directory with different ones is refused (results of two datasets must not be averaged), and a
data option left out takes the study's own value (``--report-only`` needs none of them).

The command (``NAME``, ``HELP``, ``add_arguments``, ``run``) is ``cli.py``; the names below are
this package's public interface (tests and ``tools/sslbench_gates.py`` import them from here).
"""

from __future__ import annotations

from fastforec.ablate.cli import HELP, NAME, add_arguments, run, validate
from fastforec.ablate.data import check_study, data_commands, data_dirs, prepare_data
from fastforec.ablate.method_names import (
    baselines,
    method_config,
    method_label,
    method_overrides,
    method_parts,
    parse_methods,
)
from fastforec.ablate.plan import AblationError, DataSpec, Run, parse_budgets, parse_formats, plan_runs, variant
from fastforec.ablate.pool import Outcome, child_env, execute, run_all, train_command
from fastforec.ablate.report import collect, figure, fmt_stat, last_miou, markdown, summary, write_report
from fastforec.ablate.stats import mean_ci, paired_difference, student_t_quantile, t_critical

__all__ = [
    "HELP", "NAME", "AblationError", "DataSpec", "Outcome", "Run", "add_arguments", "baselines", "check_study",
    "child_env", "collect", "data_commands", "data_dirs", "execute", "figure", "fmt_stat", "last_miou", "markdown",
    "mean_ci",
    "method_config", "method_label", "method_overrides", "method_parts", "paired_difference", "parse_budgets",
    "parse_formats", "parse_methods", "plan_runs", "prepare_data", "run", "run_all", "student_t_quantile",
    "summary", "t_critical", "train_command", "validate", "variant", "write_report",
]
