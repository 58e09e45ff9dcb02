"""The default sliding-window protocol (eval.sliding_protocol "border_aligned", fastforec.evaluate):
windows every ``stride`` with the last one moved back to end at the border, zero padding only for
an image smaller than the window, the logits of overlapping windows averaged. Checked against a
numpy restatement of that description, with a network whose windows disagree (its output depends
on the whole window, not only on the pixel), so that where windows go and how they merge shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fastforec.evaluate import predict

CLASSES = 5


class WindowDependent(nn.Module):
    """Per-pixel logits plus a term of the window's mean colour: on an image whose colours drift
    across it, the same pixel gets different logits in different windows, at different scales (so
    that averaging logits and averaging probabilities pick different classes)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.pixel = nn.Parameter(torch.randn(CLASSES, 3, generator=gen) * 4)
        self.window = nn.Parameter(torch.randn(CLASSES, 3, generator=gen) * 6)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        seg = torch.einsum("kc,bchw->bkhw", self.pixel, x) + (self.window @ x.mean((2, 3)).T).T[:, :, None, None]
        return {"seg": seg}


def image(batch: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Noise on colour ramps across the image, centred on 0 (zero padding then adds nothing)."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    ramp = torch.stack([xx, yy, 1 - xx])
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed)) - 0.5 + 2 * (ramp - 0.5)


def starts(size: int, window: int, stride: int) -> list[int]:
    """0, stride, 2 * stride, ... while the window fits, then one window ending at the border."""
    if size <= window:
        return [0]
    return list(range(0, size - window, stride)) + [size - window]


def numpy_sliding(model: nn.Module, image: np.ndarray, window: int, stride: int) -> np.ndarray:
    """(H, W) classes of a (3, H, W) image: windows of the padded image, logits summed and divided
    by the number of windows over each pixel, argmax."""
    _, h, w = image.shape
    padded = np.pad(image, ((0, 0), (0, max(0, window - h)), (0, max(0, window - w))))
    H, W = padded.shape[1:]
    total, count = None, np.zeros((H, W), np.int64)
    for y in starts(H, window, stride):
        for x in starts(W, window, stride):
            crop = torch.from_numpy(np.ascontiguousarray(padded[:, y:y + window, x:x + window]))[None]
            with torch.no_grad():
                logits = model(crop)["seg"][0].double().numpy()
            if total is None:
                total = np.zeros((logits.shape[0], H, W), np.float64)
            total[:, y:y + window, x:x + window] += logits
            count[y:y + window, x:x + window] += 1
    return (total / count)[:, :h, :w].argmax(0)


@pytest.mark.parametrize("size, window, stride", [
    ((64, 80), 48, 32),  # rows 0, 16; columns 0, 32: overlaps of two and four windows
    ((70, 130), 32, 21),  # several windows per row, the last one moved back
    ((30, 40), 48, 32),  # smaller than the window: one zero-padded window
    ((48, 100), 48, 48),  # exactly one window high; no overlap but the moved last column
])
def test_border_aligned_windows_average_the_logits(size: tuple[int, int], window: int, stride: int) -> None:
    model = WindowDependent()
    images = image(2, *size, seed=sum(size))
    got = predict(model, images, mode="sliding", num_classes=CLASSES, window=window, stride=stride)
    assert got.shape == (2, *size)
    for b in range(2):
        want = numpy_sliding(model, images[b].numpy(), window, stride)
        assert np.array_equal(got[b].numpy(), want), f"{(got[b].numpy() != want).mean():.1%} of the pixels differ"


def test_the_network_makes_windows_disagree() -> None:
    # the check above is only as strong as this: the class of a pixel depends on its window, and
    # averaging probabilities instead of logits gives other classes
    model, x = WindowDependent(), image(1, 64, 80, seed=1)
    with torch.no_grad():
        a, b = model(x[:, :, :, :48])["seg"], model(x[:, :, :, 32:])["seg"]
    overlap_a, overlap_b = a[..., 32:], b[..., :16]
    assert (overlap_a.argmax(1) != overlap_b.argmax(1)).float().mean() > 0.5
    logits = (overlap_a + overlap_b).argmax(1)
    probs = (overlap_a.softmax(1) + overlap_b.softmax(1)).argmax(1)
    assert (logits != probs).float().mean() > 0.1
    assert len(a.argmax(1).unique()) >= 3


def test_predict_in_sliding_windows_writes_the_documented_class_map(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # end to end: `fastforec predict --set eval.mode=sliding` on a checkpoint whose network (random
    # classifier weights) draws many classes, against numpy_sliding on the same network and image
    from fastforec.checkpoint_files import save_checkpoint
    from fastforec.cli import main
    from fastforec.config import Config, DataConfig, MethodConfig, ModelConfig
    from fastforec.models import build_model

    cfg = Config(data=DataConfig(crop_size=48), model=ModelConfig(backbone="resnet18", output_stride=16),
                 method=MethodConfig(base="supervised", aux="none"))
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=21, reconstruction=None).eval()
    with torch.no_grad():
        model.seg_head.classifier.weight.normal_()
        model.seg_head.classifier.bias.zero_()
    palette = [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(21)]
    save_checkpoint({"format": "fastforec-checkpoint-v1", "config": cfg.to_dict(), "student": model.state_dict(),
                     "teacher": None, "dataset": {"kind": "voc", "num_classes": 21, "palette": palette,
                                                  "class_names": [f"c{i}" for i in range(21)]}}, tmp_path / "c.pt")
    rgb = (image(1, 80, 112, seed=3)[0].permute(1, 2, 0).numpy() * 64 + 128).clip(0, 255).astype(np.uint8)
    (tmp_path / "in").mkdir()
    Image.fromarray(rgb).save(tmp_path / "in" / "a.png")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the reference's device, on any machine
    assert main(["predict", "--checkpoint", str(tmp_path / "c.pt"), "--input", str(tmp_path / "in"),
                 "--out", str(tmp_path / "out"), "--set", "eval.mode=sliding"]) == 0
    (mask,) = [m for m in map(Image.open, sorted((tmp_path / "out").rglob("*.png"))) if m.mode == "P"]
    want = numpy_sliding(model, rgb.transpose(2, 0, 1).astype(np.float32) / 255, 48, 32)
    assert len(np.unique(want)) >= 5  # a class map where the protocol shows
    got = np.asarray(mask)
    assert np.array_equal(got, want), f"{(got != want).mean():.2%} of the pixels differ"
