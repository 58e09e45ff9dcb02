"""Class tables and split-list parsing, against facts written out independently here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dataprep.errors import DataprepError
from dataprep.splitfiles import FORMAT_U2PL, FORMAT_UNIMATCH, read_split_list
from fastforec.labels import (
    CITYSCAPES_CLASS_NAMES,
    CITYSCAPES_FOREGROUND,
    CITYSCAPES_PALETTE,
    VOC_CLASS_NAMES,
    VOC_PALETTE,
    bit_palette,
    cityscapes_id_to_train_id,
    cityscapes_valid_ids,
)

# The official Cityscapes id -> trainId pairs of the 19 evaluated classes; every other id is 255.
OFFICIAL_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                      26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_voc_table() -> None:
    assert len(VOC_CLASS_NAMES) == 21 and VOC_CLASS_NAMES[0] == "background" and VOC_CLASS_NAMES[20] == "tvmonitor"
    assert VOC_PALETTE[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    assert VOC_PALETTE[15] == (192, 128, 128)  # person
    assert bit_palette()[255] == (224, 224, 192)  # the void boundary colour


def test_cityscapes_table() -> None:
    lut = cityscapes_id_to_train_id()
    for label_id in range(256):
        assert lut[label_id] == OFFICIAL_TRAIN_IDS.get(label_id, 255), label_id
    assert CITYSCAPES_CLASS_NAMES[0] == "road" and CITYSCAPES_CLASS_NAMES[18] == "bicycle"
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[13] == (0, 0, 142)
    assert CITYSCAPES_FOREGROUND == (5, 6, 7, 11, 12, 13, 14, 15, 16, 17, 18)
    valid = cityscapes_valid_ids()
    assert valid[:34].all() and valid[255] and not valid[34:255].any()


def test_u2pl_list_without_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "labeled.txt"
    path.write_text("2007_000033\n\n2007_000042")
    parsed = read_split_list(path)
    assert parsed.format == FORMAT_U2PL
    assert [e.token for e in parsed.entries] == ["2007_000033", "2007_000042"]
    assert [e.line for e in parsed.entries] == [1, 3]


def test_unimatch_list(tmp_path: Path) -> None:
    path = tmp_path / "labeled.txt"
    path.write_text("JPEGImages/a.jpg SegmentationClass/a.png\nJPEGImages/b.jpg SegmentationClass/b.png\n")
    parsed = read_split_list(path)
    assert parsed.format == FORMAT_UNIMATCH and [e.token for e in parsed.entries] == ["JPEGImages/a.jpg",
                                                                                      "JPEGImages/b.jpg"]


@pytest.mark.parametrize("text, message", [
    ("a\nJPEGImages/b.jpg SegmentationClass/b.png\n", r"labeled.txt: mixes U2PL lines .*line 1.*line 2"),
    ("a b c\n", r"labeled.txt:1: 3 fields"),
])
def test_bad_lists(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "labeled.txt"
    path.write_text(text)
    with pytest.raises(DataprepError, match=message):
        read_split_list(path)


def test_missing_list(tmp_path: Path) -> None:
    with pytest.raises(DataprepError, match=r"split list '.*nope.txt' does not exist"):
        read_split_list(tmp_path / "nope.txt")


def test_palette_is_bit_interleaving() -> None:
    # independent restatement: bit k of the index feeds channel k % 3 at bit 7 - k // 3
    for index in (1, 2, 3, 7, 8, 21, 100, 255):
        rgb = [0, 0, 0]
        for k in range(8):
            if index >> k & 1:
                rgb[k % 3] |= 1 << (7 - k // 3)
        assert bit_palette()[index] == tuple(rgb)
    assert np.array(VOC_PALETTE).shape == (21, 3)
