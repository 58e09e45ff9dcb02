"""Every kind of bad input stops the run with a message naming the file and the problem, a
non-zero exit code and no manifest; --skip-bad records them in rejected.json instead."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from fastforec.data.manifest import Manifest
from tests.dataprep.conftest import VOC_LABELED, VOC_TRAIN, VOC_VAL, CliRunner, lines

Damage = Callable[[Path, Path], list[str]]  # (root, split dir) -> substrings the error must contain


def _first(split_dir: Path, name: str) -> str:
    return lines(split_dir / name)[0]


def _write_label(path: Path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint8)).save(path)


def no_image(root: Path, split: Path) -> list[str]:
    key = _first(split, "labeled.txt")
    (root / "JPEGImages" / f"{key}.jpg").unlink()
    return [f"JPEGImages/{key}.jpg", "image does not exist", "labeled.txt:1"]


def no_label(root: Path, split: Path) -> list[str]:
    key = _first(split, "labeled.txt")
    (root / "SegmentationClass" / f"{key}.png").unlink()
    return [f"SegmentationClass/{key}.png", "label does not exist"]


def truncated_image(root: Path, split: Path) -> list[str]:
    key = _first(split, "unlabeled.txt")
    path = root / "JPEGImages" / f"{key}.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return [f"JPEGImages/{key}.jpg", "unreadable or truncated image"]


def truncated_label(root: Path, split: Path) -> list[str]:
    key = _first(split, "labeled.txt")
    path = root / "SegmentationClass" / f"{key}.png"
    path.write_bytes(path.read_bytes()[:60])
    return [f"SegmentationClass/{key}.png", "unreadable or truncated label"]


def size_mismatch(root: Path, split: Path) -> list[str]:
    key = _first(split, "labeled.txt")
    _write_label(root / "SegmentationClass" / f"{key}.png", np.zeros((10, 12)))
    return [f"SegmentationClass/{key}.png", "label is 12x10 (WxH) but its image is 56x40"]


def bad_value(root: Path, split: Path) -> list[str]:
    key = lines(root / "ImageSets/Segmentation/val.txt")[1]
    path = root / "SegmentationClass" / f"{key}.png"
    values = np.asarray(Image.open(path)).copy()
    values[0, 0] = 30
    _write_label(path, values)
    return [f"SegmentationClass/{key}.png", "label value(s) [30] are neither a class id nor 255"]


def duplicate_id(root: Path, split: Path) -> list[str]:
    ids = lines(split / "labeled.txt")
    (split / "labeled.txt").write_text("\n".join(ids + [ids[1]]))
    return [f"labeled.txt:{len(ids) + 1}", f"duplicate id '{ids[1]}' (first listed at", "labeled.txt:2"]


def labeled_and_unlabeled(root: Path, split: Path) -> list[str]:
    key = _first(split, "labeled.txt")
    with open(split / "unlabeled.txt", "a") as f:
        f.write(f"{key}\n")
    return [f"id '{key}' is both labeled", "and unlabeled; the splits must be disjoint"]


def not_an_image(root: Path, split: Path) -> list[str]:
    key = _first(split, "unlabeled.txt")
    (root / "JPEGImages" / f"{key}.jpg").write_bytes(b"this is not a jpeg")
    return [f"JPEGImages/{key}.jpg", "unreadable or truncated image (not a recognisable image (18 bytes"]


def empty_image(root: Path, split: Path) -> list[str]:
    key = _first(split, "labeled.txt")
    (root / "JPEGImages" / f"{key}.jpg").write_bytes(b"")
    return [f"JPEGImages/{key}.jpg", "the file is empty (0 bytes)"]


CASES = [no_image, no_label, truncated_image, truncated_label, size_mismatch, bad_value, duplicate_id,
         labeled_and_unlabeled, not_an_image, empty_image]


@pytest.mark.parametrize("damage", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input_stops_without_manifest(damage: Damage, voc_raw: Path, voc_split: Path, tmp_path: Path,
                                          cli: CliRunner) -> None:
    expected = damage(voc_raw, voc_split)
    out = tmp_path / "out"
    result = cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", out, "--workers", 1, "--quiet")
    assert result.code == 2
    for text in expected:
        assert text in result.err, f"{text!r} not in {result.err!r}"
    assert "BytesIO" not in result.err and "object at 0x" not in result.err  # the file, not PIL's buffer
    assert "--skip-bad" in result.err
    assert not (out / "manifest.json").exists()
    assert not list(out.glob(".*.tmp-*")) and not list(out.glob("*.tmp-*"))


@pytest.mark.parametrize("what", ["--root", "--split-dir"])
def test_missing_directories(what: str, voc_raw: Path, voc_split: Path, tmp_path: Path, cli: CliRunner) -> None:
    args = {"--root": voc_raw, "--split-dir": voc_split}
    args[what] = tmp_path / "nowhere"
    result = cli("voc", "--root", args["--root"], "--split-dir", args["--split-dir"], "--out", tmp_path / "out")
    assert result.code == 2
    assert f"{what} '{tmp_path / 'nowhere'}' does not exist" in result.err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_failed_rerun_withdraws_the_old_manifest(voc_raw: Path, voc_split: Path, tmp_path: Path,
                                                 cli: CliRunner) -> None:
    out = tmp_path / "out"
    assert cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", out, "--workers", 1, "--quiet").code == 0
    truncated_image(voc_raw, voc_split)
    assert cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", out, "--workers", 1, "--quiet").code == 2
    assert not (out / "manifest.json").exists()


def test_skip_bad_records_rejections(voc_raw: Path, voc_split: Path, tmp_path: Path, cli: CliRunner) -> None:
    labeled = lines(voc_split / "labeled.txt")
    unlabeled = lines(voc_split / "unlabeled.txt")
    val = lines(voc_raw / "ImageSets/Segmentation/val.txt")
    no_image(voc_raw, voc_split)  # labeled[0]
    truncated_image(voc_raw, voc_split)  # unlabeled[0]
    bad_value(voc_raw, voc_split)  # val[1]
    duplicate_id(voc_raw, voc_split)  # labeled[1] listed twice: the copy goes
    out = tmp_path / "out"
    result = cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", out, "--workers", 2, "--skip-bad",
                 "--shard-samples", 2, "--quiet")
    assert result.code == 0, result.err
    rejected = json.loads((out / "rejected.json").read_text())
    assert {(r["split"], r["key"]) for r in rejected} == {("labeled", labeled[0]), ("unlabeled", unlabeled[0]),
                                                          ("val", val[1]), ("labeled", labeled[1])}
    assert all(r["file"] and r["problem"] for r in rejected)
    m = Manifest.load(out)
    assert m.source["rejected"] == 4
    assert (m.split("labeled").num_samples, m.split("unlabeled").num_samples, m.split("val").num_samples) == \
        (VOC_LABELED - 1, VOC_TRAIN - VOC_LABELED - 1, VOC_VAL - 1)
    assert cli("verify", out, "--workers", 1).code == 0
    # a re-run reuses every shard and reports the same rejections
    shutil.copy(out / "rejected.json", tmp_path / "first.json")
    again = cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", out, "--workers", 1, "--skip-bad",
                "--shard-samples", 2)
    assert again.code == 0 and "0 image(s) converted" in again.err
    assert (out / "rejected.json").read_bytes() == (tmp_path / "first.json").read_bytes()


def test_out_under_a_regular_file_is_named_before_any_work(voc_raw: Path, voc_split: Path, tmp_path: Path,
                                                           cli: CliRunner) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    out = blocker / "out"
    result = cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", out, "--workers", 1, "--quiet")
    assert result.code == 2
    assert f"--out '{out}' lies under '{blocker}', which is a regular file" in result.err
    assert blocker.read_text() == "keep me"


def test_out_that_is_the_raw_tree_is_refused(voc_raw: Path, voc_split: Path, cli: CliRunner) -> None:
    # a synthesised tree carries dataprep's mark, so only this check keeps shards out of it
    before = sorted(p.relative_to(voc_raw) for p in voc_raw.rglob("*"))
    result = cli("voc", "--root", voc_raw, "--split-dir", voc_split, "--out", voc_raw, "--workers", 1, "--quiet")
    assert result.code == 2
    assert f"--out '{voc_raw}' is the --root folder; shards go in a folder of their own" in result.err
    assert sorted(p.relative_to(voc_raw) for p in voc_raw.rglob("*")) == before
