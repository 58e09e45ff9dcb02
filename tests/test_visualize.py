"""`fastforec visualize latent|curves`: figures are written, and the latent images shown are the
channels that recombine, through the reconstruction decoder's last 1x1 conv, into the
reconstruction (paper eq. 2)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fastforec.checkpoint_files import save_checkpoint
from fastforec.cli import main
from fastforec.config import LEGACY_METHOD_NAMES, Config, DataConfig, MethodConfig, ModelConfig
from fastforec.models import build_model, deeplabv3plus
from fastforec.visualize import curves
from fastforec.visualize.curves import read_metrics, series
from fastforec.visualize.figure import DPI, save_figure
from fastforec.visualize.latent import PANEL_INCHES

NUM_CLASSES = 6
PALETTE = [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0], [0, 200, 200]]
INPUT_SIZES = ((40, 56), (48, 48))
CHANNELS = 3


def _method(method: str) -> MethodConfig:
    """``method``: one of the old single names (forec = mean_teacher x forec)."""
    base, aux = LEGACY_METHOD_NAMES[method]
    return MethodConfig(base=base, aux=aux)


def _model(method: str, seed: int):
    torch.manual_seed(seed)
    model = deeplabv3plus(backbone="resnet18", num_classes=NUM_CLASSES, reconstruction=_method(method)
                          .reconstruction)
    # Non-trivial BN statistics, so that eval-mode outputs are not a near-constant map.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _save_checkpoint(path: Path, method: str, seed: int) -> torch.nn.Module:
    """A checkpoint in the trainer's shared-file format (student weights, config, dataset info)."""
    model = _model(method, seed)
    cfg = Config(model=ModelConfig(backbone="resnet18"), method=_method(method))
    state = {"format": "fastforec-checkpoint-v1", "config": cfg.to_dict(), "student": model.state_dict(),
             "teacher": None, "dataset": {"num_classes": NUM_CLASSES, "class_names": [f"c{i}" for i in range(6)],
                                          "palette": PALETTE}}
    save_checkpoint(state, path)
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ckpts")
    forec = _save_checkpoint(root / "forec" / "checkpoints" / "step_00000003.pt", "forec", 0)
    rec = _save_checkpoint(root / "rec_step.pt", "rec", 1)
    supervised = _save_checkpoint(root / "sup.pt", "supervised", 2)
    return {"forec_dir": root / "forec", "rec_file": root / "rec_step.pt", "sup_file": root / "sup.pt",
            "models": [forec, rec], "supervised": supervised}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(INPUT_SIZES):
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 // w, yy * 255 // h, rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
        paths.append(root / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths


def _load(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255


def test_latent_channels_recombine_into_the_reconstruction(checkpoints: dict, images: list[Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "fig.png"
    code = main(["visualize", "latent", "--checkpoint", str(checkpoints["forec_dir"]), str(checkpoints["rec_file"]),
                 "--input", *map(str, images), "--out", str(out), "--channels", str(CHANNELS)])
    assert code == 0
    # one row per input; columns: input + per checkpoint (segmentation, reconstruction, K latents)
    cols, rows = 1 + 2 * (2 + CHANNELS), len(images)
    with Image.open(out) as fig:
        assert fig.format == "PNG"
        assert fig.size == (round(cols * PANEL_INCHES * DPI), round((rows * PANEL_INCHES + 0.4) * DPI))
    arrays = np.load(out.with_suffix(".npz"))
    meta = json.loads(str(arrays["meta"]))
    assert [c["method"] for c in meta["checkpoints"]] == ["mean_teacher+forec", "mean_teacher+rec"]
    for g, model in enumerate(checkpoints["models"]):
        weight = torch.from_numpy(arrays[f"c{g}_weight"])
        bias = torch.from_numpy(arrays[f"c{g}_bias"])
        # the shown channels: largest column norms of the last conv's weights, most important first
        want = torch.argsort(weight.norm(dim=0), descending=True)[:CHANNELS].tolist()
        assert arrays[f"c{g}_channels"].tolist() == want
        assert torch.equal(weight, model.aux_head.classifier.weight.detach()[:, :, 0, 0])
        for i, path in enumerate(images):
            latent = torch.from_numpy(arrays[f"c{g}_i{i}_latent"])[None]
            image = _load(path)
            assert torch.equal(torch.from_numpy(arrays[f"input{i}"]), image[0])
            # the model's decoder (UniMatch's) resizes with align_corners=True
            recombined = F.interpolate(F.conv2d(latent, weight[:, :, None, None], bias), size=image.shape[-2:],
                                       mode="bilinear", align_corners=model.aux_head.align_corners)
            rec = torch.from_numpy(arrays[f"c{g}_i{i}_aux"])[None]
            torch.testing.assert_close(recombined, rec, atol=1e-5, rtol=1e-5)
            with torch.no_grad():  # and it is the model's own reconstruction of that input
                direct = model(image)
            torch.testing.assert_close(rec, direct["rec"], atol=1e-5, rtol=1e-5)
            assert np.array_equal(arrays[f"c{g}_i{i}_seg"], direct["seg"][0].argmax(0).numpy())


def test_latent_images_of_a_dpt_checkpoint(images: list[Path], tmp_path: Path) -> None:
    """UniMatch V2's DPT: the auxiliary head is a DPT head with 3 outputs, its latent image the map
    entering the last 1x1 conv (at 8/14 of the input)."""
    torch.manual_seed(5)
    cfg = Config(data=DataConfig(crop_size=518),
                 model=ModelConfig(backbone="dinov2_vits14", decoder="dpt", backbone_width=0.25),
                 method=MethodConfig(base="unimatch_v2", aux="forec"))
    model = build_model(cfg.model, num_classes=NUM_CLASSES, reconstruction="rgb").eval()
    save_checkpoint({"format": "fastforec-checkpoint-v1", "config": cfg.to_dict(), "student": model.state_dict(),
                     "teacher": None, "dataset": {"num_classes": NUM_CLASSES, "palette": PALETTE,
                                                  "class_names": [f"c{i}" for i in range(6)]}}, tmp_path / "v2.pt")
    out = tmp_path / "fig.png"
    assert main(["visualize", "latent", "--checkpoint", str(tmp_path / "v2.pt"), "--input", str(images[0]),
                 "--out", str(out), "--channels", str(CHANNELS)]) == 0
    arrays = np.load(out.with_suffix(".npz"))
    latent = torch.from_numpy(arrays["c0_i0_latent"])[None]
    image = _load(images[0])
    assert latent.shape[-2:] == (8 * (image.shape[-2] // 14), 8 * (image.shape[-1] // 14))
    weight, bias = torch.from_numpy(arrays["c0_weight"]), torch.from_numpy(arrays["c0_bias"])
    recombined = F.interpolate(F.conv2d(latent, weight[:, :, None, None], bias), size=image.shape[-2:],
                               mode="bilinear", align_corners=True)
    with torch.no_grad():
        torch.testing.assert_close(recombined, model(image)["rec"], atol=1e-5, rtol=1e-5)


def test_variance_selection_ranks_by_activation_variance(checkpoints: dict, images: list[Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "var.png"
    assert main(["visualize", "latent", "--checkpoint", str(checkpoints["rec_file"]), "--input", str(images[0]),
                 "--out", str(out), "--channels", "4", "--select", "variance"]) == 0
    arrays = np.load(out.with_suffix(".npz"))
    latent = arrays["c0_i0_latent"]
    var = latent.reshape(latent.shape[0], -1).var(axis=1)
    assert arrays["c0_channels"].tolist() == np.argsort(-var, kind="stable")[:4].tolist()


def test_more_channels_than_the_latent_has_shows_them_all_and_says_so(checkpoints: dict, images: list[Path],
                                                                     tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "all.png"
    assert main(["visualize", "latent", "--checkpoint", str(checkpoints["rec_file"]), "--input", str(images[0]),
                 "--out", str(out), "--channels", "100000"]) == 0
    width = np.load(out.with_suffix(".npz"))["c0_i0_latent"].shape[0]
    assert len(np.load(out.with_suffix(".npz"))["c0_channels"]) == width < 100000
    assert f"{width} latent channels by weight (--channels 100000: all the latent has)" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("supervised", "has no reconstruction decoder"),
    ("missing_input", "does-not-exist.png' does not exist"),
    ("bad_image", "cannot read image"),
    ("zero_channels", "--channels must be >= 1"),
])
def test_latent_errors_name_the_problem(case: str, message: str, checkpoints: dict, images: list[Path],
                                        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, inputs, channels = str(checkpoints["rec_file"]), [str(images[0])], "2"
    if case == "supervised":
        ckpt = str(checkpoints["sup_file"])
    elif case == "missing_input":
        inputs = [str(tmp_path / "does-not-exist.png")]
    elif case == "bad_image":
        (tmp_path / "broken.png").write_bytes(b"not a png")
        inputs = [str(tmp_path / "broken.png")]
    else:
        channels = "0"
    out = tmp_path / "fig.png"
    assert main(["visualize", "latent", "--checkpoint", ckpt, "--input", *inputs, "--out", str(out),
                 "--channels", channels]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".npz").exists()


# ---------------------------------------------------------------------------------------------
# curves


def _write_metrics(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _records(method: str) -> list[dict]:
    recs = []
    for step in range(1, 7):
        r = {"kind": "train", "step": step, "epoch": step // 3, "loss": 3.0 / step, "loss_s": 2.0 / step,
             "loss_rec": 0.5 / step, "lr": 0.01 * (1 - step / 7), "pl_coverage": step / 10, "teacher_conf": 0.5}
        if method != "supervised":
            r["loss_u"] = 0.0 if step < 3 else 0.5 / step
        recs.append(r)
        if step % 3 == 0:
            recs.append({"kind": "eval", "step": step, "epoch": step // 3 - 1, "miou": 0.1 * step})
    return recs


def _curves(fig) -> dict[tuple[str, str], tuple[list[float], list[float], str]]:
    """{(panel title, line label): (x, y, colour)} of every line drawn."""
    return {(ax.get_title(), line.get_label()): (list(line.get_xdata()), list(line.get_ydata()), line.get_color())
            for ax in fig.axes for line in ax.lines}


def test_curves_writes_a_figure_from_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_metrics(tmp_path / "forec", _records("forec"))
    _write_metrics(tmp_path / "sup", _records("supervised"))
    drawn = []
    monkeypatch.setattr(curves, "save_figure", lambda fig, out: (drawn.append(fig), save_figure(fig, out)))
    out = tmp_path / "curves.png"
    assert main(["visualize", "curves", "--run", str(tmp_path / "forec"), str(tmp_path / "sup"),
                 "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (1100, 750)  # 11 x 7.5 inches at 100 dpi
    # the figure saved holds the records' values, step by step, one colour per run
    (fig,) = drawn
    lines = _curves(fig)
    steps = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    loss, lr, pseudo, miou = (ax.get_title() for ax in fig.axes)
    want = {}
    for run, colour in (("forec", "C0"), ("sup", "C1")):
        want[loss, f"{run} loss"] = (steps, [3.0 / s for s in steps], colour)
        want[loss, f"{run} loss_s"] = (steps, [2.0 / s for s in steps], colour)
        want[loss, f"{run} loss_rec"] = (steps, [0.5 / s for s in steps], colour)
        want[lr, run] = (steps, [0.01 * (1 - s / 7) for s in steps], colour)
        want[pseudo, f"{run} pl_coverage"] = (steps, [s / 10 for s in steps], colour)
        want[pseudo, f"{run} teacher_conf"] = (steps, [0.5] * 6, colour)
        want[miou, run] = ([3.0, 6.0], [30.0, 60.0], colour)  # mIoU in %
    want[loss, "forec loss_u"] = (steps, [0.0, 0.0, 0.5 / 3, 0.5 / 4, 0.5 / 5, 0.5 / 6], "C0")  # none for sup
    assert lines.keys() == want.keys()
    for key, (x, y, colour) in want.items():
        assert lines[key][0] == x and lines[key][1] == pytest.approx(y, rel=1e-12) and lines[key][2] == colour, key
    assert fig.axes[0].get_yscale() == "symlog"  # loss_u's exact zeros have no logarithm
    records = read_metrics(tmp_path / "sup")
    assert series(records, kind="eval", key="miou") == ([3.0, 6.0], [pytest.approx(0.3), pytest.approx(0.6)])
    assert series(records, kind="train", key="loss_u") == ([], [])  # supervised: no unlabeled loss


@pytest.mark.parametrize("content, message", [
    (None, "no metrics.jsonl"),
    ('{"kind": "train", "step": 1}\n{"kind": "tra', "metrics.jsonl:2: not a JSON record"),
    ('{"kind": "train", "loss": 1.0}\n', "metrics.jsonl:1: a record needs a 'step'"),
    ("\n", "metrics.jsonl is empty"),
])
def test_curves_errors_name_the_file(content: str | None, message: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    out = tmp_path / "curves.png"
    assert main(["visualize", "curves", "--run", str(run), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
