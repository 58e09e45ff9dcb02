"""`fastforec predict` and the user's files (issue 30, items 3, 4, 6, 7, 13): it never writes over
an input, gives every input its own outputs, mirrors subfolders, sees photos as displayed (EXIF
orientation), and predicts large images in bounded memory. Real images on disk, a real export
file, the real command line in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastforec.evaluate import sliding_window_logits
from fastforec.export_format import read_export
from fastforec.image_files import load_image
from fastforec.predict import LARGE_IMAGE_WINDOW
from tests.export_files import write_export

REPO = Path(__file__).resolve().parents[1]
EXIF_ORIENTATION = 0x0112
ROTATED_90_CW = 6  # stored pixels must be turned 90 degrees clockwise to be seen as meant


def _predict(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fastforec.cli", "predict", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _image(path: Path, size: tuple[int, int] = (40, 56), seed: int = 0, **save: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, **save)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def voc_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("voc") / "voc.safetensors")


@pytest.fixture(scope="module")
def city_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("city") / "city.safetensors", kind="cityscapes")


def test_out_equal_to_input_is_refused_before_anything_is_written(voc_export: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    _image(d / "a.jpg")
    _image(d / "b.png", seed=1)
    before = _tree(d)
    proc = _predict("--checkpoint", voc_export, "--input", d, "--out", d, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"--out '{d}' is the --input folder itself; choose another --out" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _tree(d) == before

    # an input where its own prediction would go (the palette folder of an earlier run): refused
    _image(d / "palette" / "c.png", seed=2)
    before = _tree(d)
    proc = _predict("--checkpoint", voc_export, "--input", d / "palette" / "c.png", "--out", d, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    c = d / "palette" / "c.png"
    assert f"--out '{d}': the prediction of '{c}' would be written to '{c}', which is the input image" in proc.stderr
    assert _tree(d) == before  # not even the overlay, whose name was free


def test_out_inside_input_is_not_read_back_as_input(voc_export: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    _image(d / "a.jpg")
    for _ in range(2):  # the second run must not predict the first run's predictions
        proc = _predict("--checkpoint", voc_export, "--input", d, "--out", d / "pred", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert sorted(_tree(d)) == ["a.jpg", "pred/overlay/a.png", "pred/palette/a.png"]


def test_an_unreadable_image_midway_says_what_is_complete(voc_export: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    _image(d / "a.jpg")
    data = _image(d / "b.jpg", seed=1).read_bytes()
    (d / "b.jpg").write_bytes(data[: len(data) // 2])  # a copy that stopped halfway
    out = tmp_path / "out"
    proc = _predict("--checkpoint", voc_export, "--input", d, "--out", out, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"cannot read image '{d / 'b.jpg'}'" in proc.stderr
    assert "the 1 image(s) before it are predicted (their files complete): replace or remove this one" in proc.stderr
    assert sorted(_tree(out)) == ["overlay/a.png", "palette/a.png"]


def test_inputs_sharing_a_stem_keep_their_extension(voc_export: Path, tmp_path: Path) -> None:
    d = tmp_path / "d"
    _image(d / "x.jpg", seed=1)
    _image(d / "x.jpeg", size=(30, 20), seed=2)
    _image(d / "y.png", seed=3)
    out = tmp_path / "out"
    proc = _predict("--checkpoint", voc_export, "--input", d, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(_tree(out)) == [f"{kind}/{name}.png" for kind in ("overlay", "palette")
                                  for name in ("x_jpeg", "x_jpg", "y")]
    assert Image.open(out / "palette" / "x_jpeg.png").size == (20, 30)
    assert Image.open(out / "palette" / "x_jpg.png").size == (56, 40)


@pytest.mark.parametrize("names", [("x.jpg", "x.jpeg", "x_jpg.png"), ("a.jpg", "a.jpeg", "a_jpeg.png")])
def test_inputs_that_would_still_share_an_output_are_named(names: tuple[str, ...], voc_export: Path,
                                                           tmp_path: Path) -> None:
    d = tmp_path / "d"
    for i, name in enumerate(names):
        _image(d / name, seed=i)
    out = tmp_path / "out"
    proc = _predict("--checkpoint", voc_export, "--input", d, "--out", out, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    first, second = (d / names[0], d / names[2]) if names[0] == "x.jpg" else (d / names[1], d / names[2])
    assert f"--input: '{first}' and '{second}' would both be predicted into" in proc.stderr, proc.stderr
    assert not out.exists()


def test_subfolders_are_mirrored_cityscapes_style(city_export: Path, tmp_path: Path) -> None:
    val = tmp_path / "leftImg8bit" / "val"
    _image(val / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png", seed=1)
    _image(val / "lindau" / "lindau_000000_000019_leftImg8bit.png", seed=2)
    _image(val / ".thumbnails" / "junk.png", seed=3)  # hidden folders are no inputs
    out = tmp_path / "pred"
    proc = _predict("--checkpoint", city_export, "--input", val, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(_tree(out)) == [f"{kind}/{city}/{city}_{frame}_leftImg8bit.png" for kind in ("labelids", "overlay",
                                                                                               "palette")
                                  for city, frame in (("frankfurt", "000000_000294"), ("lindau", "000000_000019"))]


def test_exif_orientation_is_applied_before_the_model_sees_the_photo(voc_export: Path, tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATED_90_CW
    photo = _image(tmp_path / "in" / "photo.jpg", size=(40, 56), exif=exif)  # stored 56 wide, 40 high
    shown = load_image(photo)
    assert shown.shape[-2:] == (56, 40)  # as displayed: 40 wide, 56 high
    # the same displayed pixels without an orientation tag: the model must see exactly this
    upright = tmp_path / "upright" / "photo.png"
    upright.parent.mkdir()
    Image.fromarray((shown[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(upright)
    for source in (photo.parent, upright.parent):
        proc = _predict("--checkpoint", voc_export, "--input", source, "--out", tmp_path / f"out_{source.name}",
                        cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    mask = Image.open(tmp_path / "out_in" / "palette" / "photo.png")
    assert mask.size == (40, 56)
    assert np.array_equal(np.asarray(mask), np.asarray(Image.open(tmp_path / "out_upright" / "palette" / "photo.png")))
    assert Image.open(tmp_path / "out_in" / "overlay" / "photo.png").size == (40, 56)


def test_a_large_image_is_predicted_in_windows(voc_export: Path, tmp_path: Path) -> None:
    image = _image(tmp_path / "in" / "large.png", size=(1100, 1300))
    out = tmp_path / "out"
    proc = _predict("--checkpoint", voc_export, "--input", image, "--out", out, "--whole-max-pixels", 1_000_000,
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"note: '{image}' is 1300 x 1100 (1.4 Mpx), more than --whole-max-pixels 1000000: predicted in "
            f"sliding windows of {LARGE_IMAGE_WINDOW} px") in proc.stderr
    model, cfg, _ = read_export(voc_export)
    want = sliding_window_logits(model, load_image(image), num_classes=3, window=LARGE_IMAGE_WINDOW,
                                 stride=cfg.eval.stride(LARGE_IMAGE_WINDOW)).argmax(dim=1)[0]
    assert np.array_equal(np.asarray(Image.open(out / "palette" / "large.png")), want.numpy())
    # below the threshold (the default is 2048 x 2048): whole, as before
    proc = _predict("--checkpoint", voc_export, "--input", image, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0 and "note:" not in proc.stderr, proc.stderr


class _Convolution(torch.nn.Module):
    """A network whose logits depend on the window (a term of its mean), so that where windows go
    and how they merge shows in the class map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 5, padding=2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.conv(x) * 3 + 4 * x.mean()}


@pytest.mark.parametrize("protocol", ["border_aligned", "unimatch_v2", "unimatch"])
@pytest.mark.parametrize("size, window, stride", [((37, 53), 32, 21), ((101, 47), 40, 13), ((20, 90), 24, 24)])
def test_row_by_row_windows_give_the_class_map_of_the_whole_score_map(protocol: str, size: tuple[int, int],
                                                                      window: int, stride: int) -> None:
    # the bounded-memory sliding window against the functions that hold every pixel's scores
    from fastforec.evaluate import sliding_window_classes, sliding_window_unimatch

    model, image = _Convolution(), torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(1))
    if protocol == "unimatch":
        scores = sliding_window_unimatch(model, image, num_classes=5, window=window, stride=stride)
    else:
        scores = sliding_window_logits(model, image, num_classes=5, window=window, stride=stride,
                                       softmax=protocol == "unimatch_v2")
    got = sliding_window_classes(model, image, num_classes=5, window=window, stride=stride, protocol=protocol)
    assert torch.equal(got, scores.argmax(dim=1))
    pixels = (image * 255).round().to(torch.uint8)  # an 8-bit image: each window scaled on its own
    assert torch.equal(sliding_window_classes(model, pixels, num_classes=5, window=window, stride=stride,
                                              protocol=protocol, dtype=torch.uint8),
                       sliding_window_classes(model, pixels.float() / 255, num_classes=5, window=window,
                                              stride=stride, protocol=protocol).to(torch.uint8))


def _peak_rss_mib(*args: object, cwd: Path) -> float:
    """Peak resident memory of a `fastforec predict` child (the largest of the children so far:
    each call runs in a fresh grandchild so that the number is its own)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "fastforec.cli", "predict",
                           *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1]) / 1024  # Linux reports KiB


def test_the_windowed_path_bounds_peak_memory(voc_export: Path, tmp_path: Path) -> None:
    # what the image adds to the process's peak (torch alone takes about a GiB): the windowed
    # path a small fraction of the whole-image pass (measured: 0.13 on a 3000 x 3000 image)
    small = _image(tmp_path / "small" / "photo.png")
    image = _image(tmp_path / "in" / "photo.png", size=(3000, 3000))
    base = _peak_rss_mib("--checkpoint", voc_export, "--input", small, "--out", tmp_path / "small_out", cwd=tmp_path)
    common = ("--checkpoint", voc_export, "--input", image)
    whole = _peak_rss_mib(*common, "--out", tmp_path / "whole", "--whole-max-pixels", 10**9, cwd=tmp_path)
    windows = _peak_rss_mib(*common, "--out", tmp_path / "windows", cwd=tmp_path)
    assert windows - base < 0.35 * (whole - base), (base, windows, whole)
