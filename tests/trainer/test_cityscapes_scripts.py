"""cityscapesScripts' own evaluation of `fastforec predict`'s label-id folder equals
`fastforec eval` on the same model and images: the output format, the id mapping and the
protocol are the benchmark's (the `cityscapesscripts` package is a dev dependency)."""

from __future__ import annotations

import glob
import json
import sys
from pathlib import Path

import pytest
from trainer_support import clean_env, run_train, tiny_config, write_config

from tests import child_process

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]


def _cli(args: list[str], cwd: Path):
    return child_process.run(FASTFOREC + args, cwd=cwd, env=clean_env(), capture_output=True, text=True)


def _cityscapes_scripts_miou(raw: Path, predictions: Path, export_dir: Path) -> float:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev

    args = ev.args  # the module's own settings object, as its command line fills it
    args.cityscapesPath = str(raw)
    args.groundTruthSearch = str(raw / "gtFine" / "val" / "*" / "*_gtFine_labelIds.png")
    args.predictionPath, args.predictionWalk = str(predictions), None
    args.evalInstLevelScore = False  # the synthetic tree has no *_instanceIds.png
    args.exportFile = str(export_dir / "result.json")
    args.quiet, args.JSONOutput = True, False
    ground_truth = sorted(glob.glob(args.groundTruthSearch))
    assert ground_truth
    predicted = [ev.getPrediction(args, gt) for gt in ground_truth]  # refuses two predictions for one image
    return ev.evaluateImgLists(predicted, ground_truth, args)["averageScoreClasses"]


def test_cityscapes_scripts_score_predict_output_as_fastforec_eval(city_shards: Path, tmp_path: Path) -> None:
    pytest.importorskip("cityscapesscripts")
    cfg = write_config(tmp_path / "cfg.json", tiny_config(city_shards, train={"max_steps": 2}))
    run_dir = tmp_path / "run"
    proc = run_train(["--config", str(cfg), "--run-dir", str(run_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = city_shards.parent / "raw"
    out = tmp_path / "pred"
    proc = _cli(["predict", "--checkpoint", str(run_dir), "--input", str(raw / "leftImg8bit" / "val"),
                 "--out", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["labelids", "overlay", "palette"]
    theirs = _cityscapes_scripts_miou(raw, out / "labelids", tmp_path)

    result = tmp_path / "eval.json"
    proc = _cli(["eval", "--checkpoint", str(run_dir), "--weights", "student", "--json", str(result)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads(result.read_text())
    assert ours["mode"] == "sliding"  # Cityscapes' protocol, in predict and eval alike
    assert theirs == pytest.approx(ours["miou"], abs=1e-12)
