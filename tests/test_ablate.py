"""`fastforec ablate` on a tiny study: data prepared with dataprep, real training subprocesses,
the table, and resumption (finished runs are not redone)."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

from fastforec.ablate import (
    DataSpec,
    Run,
    baselines,
    mean_ci,
    method_label,
    paired_difference,
    parse_methods,
    plan_runs,
    t_critical,
    train_command,
)
from fastforec.ablate.method_names import aux_pair_label, aux_pairs
from fastforec.ablate.report import markdown, summary
from fastforec.cli import main
from fastforec.config import CONFIGS_DIR, LEGACY_METHOD_NAMES, load_config
from fastforec.data.manifest import Manifest
from tests.shard_sets import shard_samples

REPO = Path(__file__).resolve().parent.parent
METHODS = ("supervised", "forec")
BUDGET = 3
FAKE_MIOU = {"supervised": 0.25, "forec": 0.5}  # seed 1, "finished earlier"


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = {"data": {"root": "unused", "crop_size": 32, "batch_size": 2, "num_threads": 1, "device": "cpu"},
           "model": {"backbone": "resnet18", "output_stride": 16},
           "method": {"name": "forec", "conf_thresh": 0.5},
           "optim": {"lr": 0.01},
           "train": {"name": "x", "epochs": 1, "max_steps": 2, "log_every": 1,
                     "checkpoint_every": 1000, "keep_checkpoints": 1},
           "eval": {"every": 1000},
           "deepspeed": {}}
    path = tmp_path_factory.mktemp("ablate_cfg") / "tiny_ablation.json"
    path.write_text(json.dumps(cfg))
    return path


def _argv(config: Path, out: Path, *extra: str) -> list[str]:
    return ["ablate", "--config", str(config), "--methods", ",".join(METHODS), "--budgets", str(BUDGET),
            "--seeds", "2", "--out", str(out), "--num-train", "16", "--num-val", "3", "--size", "40x48",
            "--torch-threads", "1", *extra]


def _fake_finished(out: Path, method: str) -> None:
    run = out / "runs" / Run(method, BUDGET, 1).name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"miou_last": FAKE_MIOU[method], "miou_best": FAKE_MIOU[method],
                                                  "step": 2}))


def _git_commit() -> str | None:
    """This checkout's commit as git reports it; None outside a git checkout (or without git)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_study_writes_the_table_and_skips_finished_runs(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    figures = []
    savefig = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: (figures.append(fig), savefig(fig, *a, **kw))[1])
    out = tmp_path / "study"
    for m in METHODS:
        _fake_finished(out, m)
    # a killed attempt (history, no checkpoint) is started over without its old records
    killed = out / "runs" / Run("forec", BUDGET, 0).name
    killed.mkdir(parents=True)
    (killed / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 999}) + "\n")
    assert main(_argv(config, out)) == 0
    err = capsys.readouterr().err
    assert err.count("finished earlier, skipped") == 2  # the two seed-1 runs
    assert f"report: {out / 'ablation.md'} (above), {out / 'ablation.json'}" in err
    runs = {m: out / "runs" / Run(m, BUDGET, 0).name for m in METHODS}
    assert all(json.loads(line)["step"] != 999 for line in (killed / "metrics.jsonl").read_text().splitlines())
    for m, run in runs.items():
        config_used = json.loads((run / "config.json").read_text())
        method = config_used["method"]  # the old method name (--methods supervised,forec) as base x aux
        assert (method["base"], method["aux"]) == LEGACY_METHOD_NAMES[m] and config_used["train"]["seed"] == 0
        assert Path(config_used["data"]["root"]) == out / "data" / f"shards_{BUDGET}"
    manifest = json.loads((out / "data" / f"shards_{BUDGET}" / "manifest.json").read_text())
    assert sum(s["num_samples"] for s in manifest["splits"]["labeled"]["shards"]) == BUDGET
    assert sum(s["num_samples"] for s in manifest["splits"]["unlabeled"]["shards"]) == 16 - BUDGET

    table = (out / "ablation.md").read_text()
    report = json.loads((out / "ablation.json").read_text())
    # the figure: one bar per method at its mean with the 95 % interval as error bar, seeds as dots
    (fig,) = figures
    (ax,) = fig.axes
    bars = sorted(ax.patches, key=lambda r: r.get_x())
    assert len(bars) == len(METHODS) and [t.get_text() for t in ax.get_xticklabels()] == [f"{BUDGET} labeled"]
    caps = sorted(y for line in ax.lines if line.get_marker() == "_" for y in line.get_ydata())
    dots = {round(float(x), 6): sorted(line.get_ydata()) for line in ax.lines if line.get_marker() == "."
            for x in set(line.get_xdata())}
    want_caps = []
    for i, (m, run) in enumerate(runs.items()):
        values = [100 * json.loads((run / "results.json").read_text())["miou_last"], 100 * FAKE_MIOU[m]]
        mean, half = statistics.fmean(values), 12.706 * statistics.stdev(values) / 2 ** 0.5  # t(0.975, 1 df)
        assert f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}]" in table
        assert report["table"][m][str(BUDGET)]["student"]["n"] == 2
        centre = bars[i].get_x() + bars[i].get_width() / 2
        assert centre == pytest.approx((i - 0.5) * 0.4) and bars[i].get_height() == pytest.approx(mean, abs=1e-9)
        assert to_hex(bars[i].get_facecolor()) == to_hex(f"C{i}")
        assert dots[round(centre, 6)] == pytest.approx(sorted(values), abs=1e-9)
        want_caps += [mean - half, mean + half]
    assert caps == pytest.approx(sorted(want_caps), abs=1e-6)
    # what each run that ran here depends on: code, packages, CPU, the shards' manifest checksum
    shards_sha = Manifest.load(out / "data" / f"shards_{BUDGET}").identity
    for m, run in runs.items():
        (attempt,) = json.loads((run / "provenance.json").read_text())
        assert attempt["data"]["shards_sha256"] == shards_sha and attempt["resumed"] is False
        assert attempt["packages"]["torch"] == torch.__version__.split("+")[0] and attempt["cpu"]["model"]
        assert attempt["code"]["commit"] == _git_commit()  # None outside a git checkout
        row = next(r for r in report["table"][m][str(BUDGET)]["runs"] if r["seed"] == 0)
        assert row["provenance"] == [attempt] and row["precision"] == "fp32"
    # which precision the runs trained in (train.bf16_on_amx makes it the machine's choice); the
    # seed-1 results were written by hand, without one
    assert ("Precision: fp32 in 2 runs; not recorded in forec_b3_s1, supervised_b3_s1. Differences within a cell "
            "then mix precisions") in table
    # FOrec against supervised, paired by seed: seed 1 differs by 25 points, seed 0 by whatever ran
    diff = report["table"]["forec"][str(BUDGET)]["vs"]["supervised"]
    assert diff["seeds"] == [0, 1] and diff["n"] == 2
    # no mean teacher row above it: FOrec's row says its base ("+ FOrec" would read as supervised + FOrec)
    assert "| Supervised only |" in table and "| Mean teacher + FOrec |" in table
    with Image.open(out / "ablation.png") as png:
        assert png.format == "PNG" and png.size == (880, 495)  # 8 x 4.5 inches at 110 dpi

    logs = {m: (run / "train.log").read_text() for m, run in runs.items()}
    assert main(_argv(config, out)) == 0  # re-run: every run is finished, nothing is trained again
    assert capsys.readouterr().err.count("finished earlier, skipped") == 4
    assert {m: (run / "train.log").read_text() for m, run in runs.items()} == logs
    assert (out / "ablation.md").read_text() == table
    # the report alone needs no data option: a study's own are in its data/study.json
    (out / "ablation.md").unlink()
    assert main(["ablate", "--config", str(config), "--methods", ",".join(METHODS), "--budgets", str(BUDGET),
                 "--seeds", "2", "--out", str(out), "--report-only"]) == 0
    assert (out / "ablation.md").read_text() == table
    # a shipped config's name: resolved once, so the children and the report get its file
    assert main(["ablate", "--config", "synth_ablation", "--methods", ",".join(METHODS), "--budgets", str(BUDGET),
                 "--seeds", "2", "--out", str(out), "--report-only"]) == 0
    assert json.loads((out / "ablation.json").read_text())["config"] == str(CONFIGS_DIR / "cpu" / "synth_ablation.json")

    # the same directory with other data is refused: results of two datasets never get averaged
    assert main(_argv(config, out)[:-2] + ["--num-val", "4"]) == 2
    assert "was made with num_val=3" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (("--methods", "forec,bogus"), "unknown method(s) bogus"),
    (("--budgets", "3,99"), "--budgets: [99] not in 1..8"),
    (("--budgets", "three"), "not a comma-separated list of integers"),
    (("--seeds", "0"), "--seeds must be >= 1"),
    (("--set", "method.nope=1"), "method.nope: unknown key"),
    (("--report-only",), "--report-only: '"),  # a folder with no finished run: no report of empty cells
])
def test_bad_arguments_exit_2_before_any_work(change: tuple[str, ...], message: str, config: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    argv = _argv(config, tmp_path / "study")
    if change[0] in argv and change[0] != "--set":
        argv[argv.index(change[0]) + 1] = change[1]
    else:
        argv += list(change)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_interrupted_runs_resume_and_runs_are_seed_major(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    cmd = train_command(Run("rec", 20, 1), config=tmp_path / "c.json", run_dir=run_dir, shards=tmp_path / "s",
                        overrides=["train.max_steps=5"], resume=True)
    assert cmd[-1] == "--resume"
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    assert "method.base=mean_teacher" in sets and "method.aux=rec" in sets  # the old name "rec", as base x aux
    assert not any(s.startswith("method.name=") for s in sets)
    assert "train.seed=1" in cmd and f"data.root={tmp_path / 's'}" in cmd and "train.max_steps=5" in cmd
    order = [r.name for r in plan_runs(["a", "b"], [1, 2], 2)]
    assert order[:4] == ["a_b1_s0", "b_b1_s0", "a_b2_s0", "b_b2_s0"]  # every cell gets seed 0 first


@pytest.mark.parametrize("method, base, aux, label", [
    ("forec", "mean_teacher", "forec", "mean_teacher+forec"), ("unimatch", "unimatch", "none", "unimatch"),
    ("unimatch+forec", "unimatch", "forec", "unimatch+forec"), ("fixmatch+rec", "fixmatch", "rec", "fixmatch+rec"),
])
def test_methods_name_a_base_and_an_auxiliary_task(method: str, base: str, aux: str, label: str,
                                                  tmp_path: Path) -> None:
    """What a --methods entry means is what the child's config ends up with, whatever the study's
    config says about base and aux."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"method": {"base": "fixmatch", "aux": "fgbg"}}))
    cmd = train_command(Run(method, "24", 0), config=config, run_dir=tmp_path / "r", shards=tmp_path / "s",
                        overrides=[], resume=False)
    sets = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--set"]
    cfg = load_config(config, overrides=sets)
    assert (cfg.method.base, cfg.method.aux, cfg.method.label) == (base, aux, label)


def test_plain_bases_become_baselines() -> None:
    methods = parse_methods("supervised,unimatch,unimatch+forec")
    assert baselines(methods) == ["supervised", "unimatch"]
    assert [method_label(m) for m in methods] == ["Supervised only", "UniMatch", "UniMatch + FOrec"]
    paper = ["supervised", "mean_teacher", "rec", "forec", "fgbg"]
    assert [method_label(m, paper) for m in paper] == ["Supervised only", "Mean teacher", "+ reconstruction (rec)",
                                                       "+ FOrec", "+ fg/bg prediction"]
    assert method_label("forec", ["supervised", "forec"]) == method_label("forec") == "Mean teacher + FOrec"
    assert method_label("forec", ["mean_teacher", "rec", "forec"]) == "+ FOrec"  # rows hanging from the mean teacher
    assert method_label("forec", ["mean_teacher", "unimatch", "forec"]) == "Mean teacher + FOrec"  # not UniMatch's
    with pytest.raises(ValueError, match="unknown method.s. unimatch.bogus; .* e.g. unimatch.forec"):
        parse_methods("unimatch+bogus")


def test_auxiliary_tasks_are_compared_with_each_other_on_the_same_base() -> None:
    methods = parse_methods("supervised,mean_teacher,rec,forec,fgbg,unimatch,unimatch+forec,unimatch+rec")
    assert aux_pairs(methods) == [("forec", "rec"), ("forec", "fgbg"), ("rec", "fgbg"),
                                  ("unimatch+forec", "unimatch+rec")]
    assert aux_pair_label("forec", "fgbg") == "FOrec - fg/bg prediction (Mean teacher)"
    # FOrec and rec on 3 seeds (mIoU fractions): differences 2, 1, 4 points; mean 7/3, sample std
    # sqrt(7/3) = 1.52753, t(0.975, 2 df) = 4.303, half width 4.303 * 1.52753 / sqrt(3) = 3.79485
    found = {(m, "24"): [{"seed": s, "miou_last": v, "teacher_miou_last": None} for s, v in enumerate(values)]
             for m, values in {"forec": [0.40, 0.42, 0.45], "rec": [0.38, 0.41, 0.41]}.items()}
    table = summary(found, ["rec", "forec"], ["24"])
    diff = table["forec"]["24"]["vs_aux"]["rec"]
    assert diff["seeds"] == [0, 1, 2] and diff["mean"] == pytest.approx(7 / 3)
    assert (diff["ci_low"], diff["ci_high"]) == (pytest.approx(7 / 3 - 3.79485, abs=1e-4),
                                                 pytest.approx(7 / 3 + 3.79485, abs=1e-4))
    assert table["rec"]["24"]["vs_aux"] == {}  # each pair once, the earlier task first
    spec = DataSpec(preset="sslbench", num_train=600, num_val=1500, height=64, width=64, data_seed=0, split_seed=0)
    text = markdown(table, methods=["rec", "forec"], budgets=["24"], seeds=3, spec=spec, config=Path("c.json"),
                    commands=[], failed=[])
    assert "| FOrec - reconstruction (Mean teacher) | +2.33 [-1.46, +6.13] |" in text


def test_confidence_interval_by_hand() -> None:
    # 1, 2, 3, 4: mean 2.5, sample std sqrt(5/3) = 1.29099; t(0.975, 3 df) = 3.182 (table);
    # half width 3.182 * 1.29099 / 2 = 2.05397.
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert ci["mean"] == pytest.approx(2.5) and ci["std"] == pytest.approx(1.290994, abs=1e-6)
    assert ci["ci_low"] == pytest.approx(2.5 - 2.053972, abs=1e-5)
    assert ci["ci_high"] == pytest.approx(2.5 + 2.053972, abs=1e-5)
    assert mean_ci([7.0])["ci_low"] is None
    # paired: per-seed differences 1, 1, 4 (seed 3 only in one of them is left out): mean 2, std sqrt(3),
    # t(0.975, 2 df) = 4.303, half width 4.303 * 1.73205 / sqrt(3) = 4.303
    d = paired_difference({0: 11.0, 1: 12.0, 2: 14.0, 3: 99.0}, {0: 10.0, 1: 11.0, 2: 10.0})
    assert d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(2.0)
    assert (d["ci_low"], d["ci_high"]) == (pytest.approx(2.0 - 4.303), pytest.approx(2.0 + 4.303))
    # the computed quantile at the table's three decimals, also beyond it: t(0.975, 40 df) = 2.021
    assert t_critical(30) == 2.042 and t_critical(40) == 2.021


def test_a_failed_dataprep_command_stops_the_study_with_dataprep_s_message(config: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    (out / "data").mkdir(parents=True)
    (out / "data" / "raw").write_text("in the way of the raw tree")
    assert main(_argv(config, out)) == 2
    err = capsys.readouterr().err
    assert "`dataprep synth --layout voc --out" in err and "regular file" in err and "Traceback" not in err
    assert not (out / "data" / "study.json").exists() and not (out / "runs").exists()


def test_cityscapes_study_pairs_png_and_jpeg_shards_on_the_same_val_pixels(config: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "study"
    fake = {"png": 0.25, "jpg": 0.5}  # seed 1 "finished earlier": a 25-point difference
    for fmt, miou in fake.items():
        run = out / "runs" / Run("supervised", str(BUDGET), 1, fmt).name
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"miou_last": miou, "miou_best": miou, "step": 2}))
    argv = ["ablate", "--config", str(config), "--methods", "supervised", "--budgets", str(BUDGET), "--seeds", "2",
            "--out", str(out), "--num-train", "12", "--num-val", "3", "--size", "32x64", "--torch-threads", "1",
            "--jobs", "2",
            "--preset", "cityscapes", "--image-formats", "png,jpg", "--jpeg-quality", "90"]
    assert main(argv) == 0
    assert capsys.readouterr().err.count("finished earlier, skipped") == 2
    shards = {fmt: Manifest.load(out / "data" / f"shards_{BUDGET}_{fmt}") for fmt in fake}
    assert shards["jpg"].source["jpeg_quality"] == 90 and shards["png"].source["image_format"] == "png"
    for fmt, m in shards.items():
        run = out / "runs" / f"supervised_b{BUDGET}_{fmt}_s0"
        assert Path(json.loads((run / "config.json").read_text())["data"]["root"]) == m.root
        assert (run / "results.json").is_file()
    # the same split lists; every format is evaluated on the same PNG val bytes
    assert shard_samples(shards["png"], "val") == shard_samples(shards["jpg"], "val")
    assert all("jpg" in s for s in shard_samples(shards["jpg"], "labeled").values())
    report = json.loads((out / "ablation.json").read_text())
    diff = report["table"]["supervised"][f"{BUDGET}_jpg"]["vs_format"]["png"]
    seed0 = {fmt: 100 * json.loads((out / "runs" / f"supervised_b{BUDGET}_{fmt}_s0" / "results.json")
                                   .read_text())["miou_last"] for fmt in fake}
    assert diff["seeds"] == [0, 1]
    assert diff["mean"] == pytest.approx(statistics.fmean([seed0["jpg"] - seed0["png"], 25.0]))
    table = (out / "ablation.md").read_text()
    assert f"{BUDGET} labeled, JPEG q90" in table and "trained from PNG shards" in table
    assert "vs supervised" not in table  # one method: no table of method differences


@pytest.mark.parametrize("extra, message", [
    (("--image-formats", "png,jpg"), "--image-formats exists for --preset cityscapes only"),
    (("--preset", "cityscapes", "--image-formats", "png,gif"), "must name distinct formats from png, jpg"),
    (("--preset", "cityscapes", "--jpeg-quality", "0"), "--jpeg-quality must be in 1..100"),
])
def test_bad_format_arguments_exit_2(extra: tuple[str, ...], message: str, config: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    assert main(_argv(config, tmp_path / "study", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "study").exists()


def test_a_study_from_before_the_format_keys_continues_and_other_data_is_refused(tmp_path: Path) -> None:
    from dataclasses import asdict

    from fastforec.ablate import AblationError, DataSpec, check_study

    spec = DataSpec(preset="scenes", num_train=16, num_val=3, height=40, width=48, data_seed=0, split_seed=0)
    marker = tmp_path / "data" / "study.json"
    marker.parent.mkdir()
    old = {k: v for k, v in asdict(spec).items() if k not in ("image_formats", "jpeg_quality")}
    marker.write_text(json.dumps(old))
    check_study(tmp_path, spec)  # written before the keys existed: it had their defaults
    marker.write_text(json.dumps(old | {"jpeg_quality": 80}))
    with pytest.raises(AblationError, match="jpeg_quality=80, this run asks for 95"):
        check_study(tmp_path, spec)
    marker.write_text(json.dumps({k: v for k, v in old.items() if k != "num_train"}))
    with pytest.raises(AblationError, match="num_train=None, this run asks for 16"):
        check_study(tmp_path, spec)
