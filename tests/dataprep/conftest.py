"""Fixtures for the dataprep tests: tiny synthetic raw trees (built once per session by the
real `dataprep synth` code) and an in-process CLI runner."""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from dataprep.cli import main
from dataprep.splits import random_partition, write_partition
from dataprep.synth import make_synthetic

SIZE = (40, 56)  # (H, W): tiny, so the whole suite stays within its time budget
VOC_TRAIN, VOC_VAL, VOC_LABELED = 12, 4, 4
CITY_TRAIN, CITY_VAL, CITY_LABELED = 6, 3, 2
U2PL_DIR = Path(__file__).parent / "u2pl"


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


CliRunner = Callable[..., CliResult]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture) -> CliRunner:
    def run(*args: object) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return run


@pytest.fixture(scope="session")
def voc_raw_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic("voc", tmp_path_factory.mktemp("voc") / "VOC2012", num_train=VOC_TRAIN,
                          num_val=VOC_VAL, size=SIZE, seed=0)


@pytest.fixture(scope="session")
def voc_split_session(voc_raw_session: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    partition = random_partition(root=voc_raw_session, layout="voc", labeled=VOC_LABELED, seed=0)
    return write_partition(partition, tmp_path_factory.mktemp("voc_split"))


@pytest.fixture(scope="session")
def city_raw_session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic("cityscapes", tmp_path_factory.mktemp("city") / "cityscapes", num_train=CITY_TRAIN,
                          num_val=CITY_VAL, size=SIZE, seed=0)


@pytest.fixture(scope="session")
def city_split_session(city_raw_session: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    partition = random_partition(root=city_raw_session, layout="cityscapes", labeled=CITY_LABELED, seed=0)
    return write_partition(partition, tmp_path_factory.mktemp("city_split"))


@pytest.fixture
def voc_raw(voc_raw_session: Path, tmp_path: Path) -> Path:
    """A private copy, for tests that damage the input."""
    return Path(shutil.copytree(voc_raw_session, tmp_path / "VOC2012"))


@pytest.fixture
def voc_split(voc_split_session: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(voc_split_session, tmp_path / "split"))


def read_png(data: bytes | Path) -> np.ndarray:
    raw = data.read_bytes() if isinstance(data, Path) else data
    return np.asarray(Image.open(io.BytesIO(raw)))


def lines(path: Path) -> list[str]:
    return path.read_text().split()
