"""Both split-list formats, with the first lines of the real U2PL lists, against synthetic
trees named with exactly those ids."""

from __future__ import annotations

import shutil
from pathlib import Path

from dataprep.synth import synthesize
from fastforec.data.manifest import Manifest
from tests.dataprep.conftest import SIZE, U2PL_DIR, CliRunner, lines

PASCAL = U2PL_DIR / "pascal"
CITY = U2PL_DIR / "cityscapes"


def _voc_tree(tmp_path: Path) -> tuple[Path, list[str], list[str], list[str]]:
    labeled, unlabeled = lines(PASCAL / "92/labeled.txt"), lines(PASCAL / "92/unlabeled.txt")
    val = lines(PASCAL / "val.txt")
    root = synthesize("voc", tmp_path / "VOC2012", train_ids=labeled + unlabeled, val_ids=val, size=SIZE, seed=0,
                      classic_ids=labeled)  # U2PL's classic labeled ids all have SegmentationClass masks
    return root, labeled, unlabeled, val


def test_u2pl_and_unimatch_lists_give_the_same_shards(tmp_path: Path, cli: CliRunner) -> None:
    root, labeled, unlabeled, val = _voc_tree(tmp_path)
    assert not (PASCAL / "92/labeled.txt").read_text().endswith("\n")  # upstream quirk, kept in the copy
    u2pl = tmp_path / "u2pl"
    u2pl.mkdir()
    shutil.copy(PASCAL / "92/labeled.txt", u2pl)
    shutil.copy(PASCAL / "92/unlabeled.txt", u2pl)
    unimatch = tmp_path / "unimatch"
    unimatch.mkdir()
    for name, ids in (("labeled.txt", labeled), ("unlabeled.txt", unlabeled)):
        (unimatch / name).write_text("\n".join(f"JPEGImages/{i}.jpg SegmentationClass/{i}.png" for i in ids))
    manifests = {}
    for fmt, split_dir in (("u2pl", u2pl), ("unimatch", unimatch)):
        out = tmp_path / f"out_{fmt}"
        result = cli("voc", "--root", root, "--split-dir", split_dir, "--out", out, "--workers", 1, "--quiet")
        assert result.code == 0, result.err
        manifests[fmt] = Manifest.load(out)
        assert manifests[fmt].source["list_formats"]["labeled"] == fmt
    a, b = manifests["u2pl"], manifests["unimatch"]
    assert a.splits == b.splits  # same files, counts and sha256
    assert (a.split("labeled").num_samples, a.split("unlabeled").num_samples, a.split("val").num_samples) == \
        (len(labeled), len(unlabeled), len(val))


def test_val_list_in_split_dir_wins(tmp_path: Path, cli: CliRunner) -> None:
    root, labeled, unlabeled, val = _voc_tree(tmp_path)
    split_dir = tmp_path / "split"
    split_dir.mkdir()
    shutil.copy(PASCAL / "92/labeled.txt", split_dir)
    shutil.copy(PASCAL / "92/unlabeled.txt", split_dir)
    (split_dir / "val.txt").write_text("\n".join(val[:2]))
    assert cli("voc", "--root", root, "--split-dir", split_dir, "--out", tmp_path / "out", "--workers", 1,
               "--quiet").code == 0
    assert Manifest.load(tmp_path / "out").split("val").num_samples == 2


def test_cityscapes_u2pl_lists(tmp_path: Path, cli: CliRunner) -> None:
    def key(path: str) -> str:
        return path.rsplit("/", 1)[-1].removesuffix("_leftImg8bit.png")

    train = [key(p) for p in lines(CITY / "186/labeled.txt") + lines(CITY / "186/unlabeled.txt")]
    val = [key(p) for p in lines(CITY / "val.txt")]
    root = synthesize("cityscapes", tmp_path / "cityscapes", train_ids=train, val_ids=val, size=SIZE, seed=0)
    out = tmp_path / "out"
    result = cli("cityscapes", "--root", root, "--split-dir", CITY / "186", "--out", out, "--workers", 1, "--quiet")
    assert result.code == 0, result.err
    m = Manifest.load(out)
    assert m.split("labeled").num_samples == len(lines(CITY / "186/labeled.txt"))
    assert m.split("unlabeled").num_samples == len(lines(CITY / "186/unlabeled.txt"))
    assert m.split("val").num_samples == len(val)  # no val.txt in the split dir: all of leftImg8bit/val
    assert m.source["val_list"] == "leftImg8bit/val (all)"
