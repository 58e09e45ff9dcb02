"""Peers' trained checkpoints (UniMatch, U2PL) through `fastforec eval` / `predict`.

Each source's network is re-stated here as plain functional code over a state dict with the
source's own parameter names and shapes (from its model files, facts only): the deep-stem ResNet
(U2PL's with a ceil-mode max-pool), the decoder, the resizes with align_corners=True. Random
weights in those names, saved the way the source saves them, must give through fastforec the
same logits as the reference, and `fastforec eval` the mIoU of the reference's predictions with
the source's protocol (UniMatch's sliding window on Cityscapes: windows at multiples of 2/3 crop
cut short at the border, softmax summed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainer_support import clean_env, tiny_config, write_config

from fastforec.config import load_config
from fastforec.data import ValData
from fastforec.data.manifest import Manifest
from fastforec.inference import load_trained_model
from tests import child_process

FASTFOREC = [sys.executable, "-m", "fastforec.cli"]
BLOCKS = (3, 4, 6, 3)  # ResNet-50: both sources build it with the same deep stem as their ResNet-101
WIDTHS = (64, 128, 256, 512)
EXPANSION = 4
STEM = (64, 64, 128)
ASPP = 256  # both sources: 2048 // 8 (UniMatch), inner_planes 256 (U2PL)
EPS = 1e-5


# ---------------------------------------------------------------------------------------------
# random weights in the sources' names


def _conv(state: dict, name: str, cout: int, cin: int, k: int, bias: bool = False) -> None:
    state[f"{name}.weight"] = torch.randn(cout, cin, k, k) * (1.0 / (cin * k * k)) ** 0.5
    if bias:
        state[f"{name}.bias"] = torch.randn(cout) * 0.1


def _bn(state: dict, name: str, c: int) -> None:
    state[f"{name}.weight"] = torch.rand(c) * 0.5 + 0.5
    state[f"{name}.bias"] = torch.randn(c) * 0.1
    state[f"{name}.running_mean"] = torch.randn(c) * 0.1
    state[f"{name}.running_var"] = torch.rand(c) * 0.5 + 0.75
    state[f"{name}.num_batches_tracked"] = torch.tensor(100)


def _resnet_state(prefix: str) -> dict:
    s: dict = {}
    _conv(s, f"{prefix}conv1.0", STEM[0], 3, 3)
    _bn(s, f"{prefix}conv1.1", STEM[0])
    _conv(s, f"{prefix}conv1.3", STEM[1], STEM[0], 3)
    _bn(s, f"{prefix}conv1.4", STEM[1])
    _conv(s, f"{prefix}conv1.6", STEM[2], STEM[1], 3)
    _bn(s, f"{prefix}bn1", STEM[2])
    cin = STEM[2]
    for stage, (n, w) in enumerate(zip(BLOCKS, WIDTHS), start=1):
        for b in range(n):
            p = f"{prefix}layer{stage}.{b}."
            _conv(s, p + "conv1", w, cin, 1)
            _bn(s, p + "bn1", w)
            _conv(s, p + "conv2", w, w, 3)
            _bn(s, p + "bn2", w)
            _conv(s, p + "conv3", w * EXPANSION, w, 1)
            _bn(s, p + "bn3", w * EXPANSION)
            if b == 0:
                _conv(s, p + "downsample.0", w * EXPANSION, cin, 1)
                _bn(s, p + "downsample.1", w * EXPANSION)
            cin = w * EXPANSION
    return s


def unimatch_state(num_classes: int) -> dict:
    """UniMatch's DeepLabV3Plus (model/semseg/deeplabv3plus.py) parameter names and shapes."""
    s = _resnet_state("backbone.")
    for i in range(4):
        _conv(s, f"head.b{i}.0", ASPP, 2048, 1 if i == 0 else 3)
        _bn(s, f"head.b{i}.1", ASPP)
    _conv(s, "head.b4.gap.1", ASPP, 2048, 1)
    _bn(s, "head.b4.gap.2", ASPP)
    _conv(s, "head.project.0", ASPP, 5 * ASPP, 1)
    _bn(s, "head.project.1", ASPP)
    _conv(s, "reduce.0", 48, 256, 1)
    _bn(s, "reduce.1", 48)
    _conv(s, "fuse.0", 256, ASPP + 48, 3)
    _bn(s, "fuse.1", 256)
    _conv(s, "fuse.3", 256, 256, 3)
    _bn(s, "fuse.4", 256)
    _conv(s, "classifier", num_classes, 256, 1, bias=True)
    return s


def u2pl_state(num_classes: int) -> dict:
    """U2PL's ModelBuilder with dec_deeplabv3_plus (u2pl/models/decoder.py, base.py) names and shapes,
    its representation head and deep-supervision module included."""
    s = _resnet_state("encoder.")
    _conv(s, "decoder.low_conv.0", 256, 256, 1, bias=True)
    _bn(s, "decoder.low_conv.1", 256)
    _conv(s, "decoder.aspp.conv1.1", ASPP, 2048, 1)
    _bn(s, "decoder.aspp.conv1.2", ASPP)
    for i in range(2, 6):
        _conv(s, f"decoder.aspp.conv{i}.0", ASPP, 2048, 1 if i == 2 else 3)
        _bn(s, f"decoder.aspp.conv{i}.1", ASPP)
    _conv(s, "decoder.head.0", 256, 5 * ASPP, 3)
    _bn(s, "decoder.head.1", 256)
    for head in ("classifier", "representation"):
        _conv(s, f"decoder.{head}.0", 256, 512, 3, bias=True)
        _bn(s, f"decoder.{head}.1", 256)
        _conv(s, f"decoder.{head}.4", 256, 256, 3, bias=True)
        _bn(s, f"decoder.{head}.5", 256)
        _conv(s, f"decoder.{head}.8", num_classes if head == "classifier" else 256, 256, 1, bias=True)
    _conv(s, "auxor.aux.0", 256, 1024, 3, bias=True)
    _bn(s, "auxor.aux.1", 256)
    _conv(s, "auxor.aux.4", num_classes, 256, 1, bias=True)
    return s


# ---------------------------------------------------------------------------------------------
# the sources' forward passes, restated functionally


def _bn_f(x, s, name):
    return F.batch_norm(x, s[f"{name}.running_mean"], s[f"{name}.running_var"], s[f"{name}.weight"],
                        s[f"{name}.bias"], False, 0.0, EPS)


def _cbr(x, s, conv, bn, *, stride=1, dilation=1, relu=True):
    w = s[f"{conv}.weight"]
    pad = dilation * (w.shape[-1] // 2)
    y = _bn_f(F.conv2d(x, w, s.get(f"{conv}.bias"), stride=stride, padding=pad, dilation=dilation), s, bn)
    return F.relu(y) if relu else y


def resnet_forward(x, s, prefix: str, *, ceil_pool: bool):
    """(c1, c4) of the deep-stem ResNet at output stride 16: layer4 has stride 1, its first block
    dilation 1 and the others 2 (torchvision's replace_stride_with_dilation convention)."""
    p = prefix
    x = _cbr(x, s, p + "conv1.0", p + "conv1.1", stride=2)
    x = _cbr(x, s, p + "conv1.3", p + "conv1.4")
    x = _cbr(x, s, p + "conv1.6", p + "bn1")
    x = F.max_pool2d(x, 3, 2, 1, ceil_mode=ceil_pool)
    feats = []
    for stage, n in enumerate(BLOCKS, start=1):
        for b in range(n):
            q = f"{p}layer{stage}.{b}."
            stride = 2 if b == 0 and stage in (2, 3) else 1
            dilation = 2 if stage == 4 and b > 0 else 1
            out = _cbr(x, s, q + "conv1", q + "bn1")
            out = _cbr(out, s, q + "conv2", q + "bn2", stride=stride, dilation=dilation)
            out = _cbr(out, s, q + "conv3", q + "bn3", relu=False)
            idn = _cbr(x, s, q + "downsample.0", q + "downsample.1", stride=stride, relu=False) if b == 0 else x
            x = F.relu(out + idn)
        feats.append(x)
    return feats[0], feats[3]


def _up(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def unimatch_forward(s, x):
    """UniMatch: normalised input -> logits at the input size."""
    c1, c4 = resnet_forward(x, s, "backbone.", ceil_pool=False)
    dil = (6, 12, 18)
    branches = [_cbr(c4, s, "head.b0.0", "head.b0.1")]
    branches += [_cbr(c4, s, f"head.b{i}.0", f"head.b{i}.1", dilation=dil[i - 1]) for i in (1, 2, 3)]
    pool = _cbr(F.adaptive_avg_pool2d(c4, 1), s, "head.b4.gap.1", "head.b4.gap.2")
    branches.append(_up(pool, c4.shape[-2:]))
    high = _cbr(torch.cat(branches, 1), s, "head.project.0", "head.project.1")
    high = _up(high, c1.shape[-2:])
    low = _cbr(c1, s, "reduce.0", "reduce.1")
    f = _cbr(torch.cat([low, high], 1), s, "fuse.0", "fuse.1")
    f = _cbr(f, s, "fuse.3", "fuse.4")
    return _up(F.conv2d(f, s["classifier.weight"], s["classifier.bias"]), x.shape[-2:])


def u2pl_forward(s, x):
    """U2PL (dec_deeplabv3_plus, eval mode: dropout off)."""
    c1, c4 = resnet_forward(x, s, "encoder.", ceil_pool=True)
    dil = (6, 12, 18)
    pool = _up(_cbr(F.adaptive_avg_pool2d(c4, 1), s, "decoder.aspp.conv1.1", "decoder.aspp.conv1.2"), c4.shape[-2:])
    branches = [pool, _cbr(c4, s, "decoder.aspp.conv2.0", "decoder.aspp.conv2.1")]
    branches += [_cbr(c4, s, f"decoder.aspp.conv{i}.0", f"decoder.aspp.conv{i}.1", dilation=dil[i - 3])
                 for i in (3, 4, 5)]
    high = _cbr(torch.cat(branches, 1), s, "decoder.head.0", "decoder.head.1")
    low = _cbr(c1, s, "decoder.low_conv.0", "decoder.low_conv.1")
    f = torch.cat([low, _up(high, low.shape[-2:])], 1)
    f = _cbr(f, s, "decoder.classifier.0", "decoder.classifier.1")
    f = _cbr(f, s, "decoder.classifier.4", "decoder.classifier.5")
    out = F.conv2d(f, s["decoder.classifier.8.weight"], s["decoder.classifier.8.bias"])
    return _up(out, x.shape[-2:])


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
FORWARD = {"unimatch": unimatch_forward, "u2pl": u2pl_forward}


def reference_logits(source: str, s: dict, image: torch.Tensor) -> torch.Tensor:
    return FORWARD[source](s, (image - MEAN) / STD)


def unimatch_sliding(source: str, s: dict, image: torch.Tensor, crop: int, num_classes: int) -> torch.Tensor:
    """UniMatch's evaluate(..., 'sliding_window'): rows and columns advance by int(crop * 2 / 3)
    while inside the image; each window is cut at the border; softmax probabilities are summed."""
    b, _, h, w = image.shape
    final = torch.zeros(b, num_classes, h, w)
    row = 0
    while row < h:
        col = 0
        while col < w:
            win = image[:, :, row: min(h, row + crop), col: min(w, col + crop)]
            final[:, :, row: min(h, row + crop), col: min(w, col + crop)] += \
                reference_logits(source, s, win).softmax(dim=1)
            col += int(crop * 2 / 3)
        row += int(crop * 2 / 3)
    return final


def miou(preds: list[np.ndarray], labels: list[np.ndarray], num_classes: int) -> float:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, y in zip(preds, labels):
        keep = y != 255
        cm += np.bincount(y[keep] * num_classes + p[keep], minlength=num_classes ** 2).reshape(num_classes, -1)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


# ---------------------------------------------------------------------------------------------
# fixtures


def _save(path: Path, source: str, state: dict, *, ddp: bool = True, container: bool = True) -> Path:
    named = {("module." if ddp else "") + k: v for k, v in state.items()}
    if not container:
        torch.save(named, path)
    elif source == "unimatch":
        torch.save({"model": named, "optimizer": {"state": {}, "param_groups": []}, "epoch": 79,
                    "previous_best": 75.2}, path)
    else:
        student = {k: v + 1.0 if v.is_floating_point() else v for k, v in named.items()}
        torch.save({"model_state": student, "teacher_state": named, "epoch": 80, "best_miou": 0.7}, path)
    return path


def _config(tmp_path: Path, shards: Path, **sections) -> Path:
    return write_config(tmp_path / "recipe.json", tiny_config(shards, **sections))


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return child_process.run(FASTFOREC + args, cwd=cwd, env=clean_env(), capture_output=True, text=True)


# ---------------------------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("source", ["unimatch", "u2pl"])
def test_logits_match_the_source_network_from_its_own_parameter_names(source: str, shards: Path,
                                                                       tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = unimatch_state(21) if source == "unimatch" else u2pl_state(21)
    ckpt = _save(tmp_path / "best.pth", source, state)
    cfg = load_config(_config(tmp_path, shards, model={"backbone": "resnet18", "decoder": "torchvision",
                                                       "decoder_channels": 16}))
    # the file alone is recognised by its keys; the prefix form names the source
    for spec in (str(ckpt), f"{source}:{ckpt}"):
        model, used, _ = load_trained_model(spec, weights=None, config=cfg)
        assert (used.model.decoder, used.model.backbone, used.model.decoder_channels) == (source, "resnet50s", 256)
        x = torch.rand(2, 3, 64, 96)  # an even stem output (32 x 48): U2PL's ceil-mode pool gives a larger c1
        with torch.no_grad():
            got = model(x)["seg"]
            want = reference_logits(source, state, x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_eval_of_a_unimatch_checkpoint_is_the_reference_miou_whole_image(shards: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = unimatch_state(21)
    ckpt = _save(tmp_path / "best.pth", "unimatch", state)
    recipe = _config(tmp_path, shards, eval={"mode": "whole"})
    out = tmp_path / "eval.json"
    proc = _cli(["eval", "--config", str(recipe), "--checkpoint", f"unimatch:{ckpt}", "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "UniMatch" in proc.stderr and "tensors loaded" in proc.stderr  # the load table
    cfg = load_config(recipe)
    manifest = Manifest.load(shards)
    preds, labels = [], []
    for batch in ValData(manifest, cfg.data, batch_size=1, rank=0, world_size=1, device="cpu"):
        with torch.no_grad():
            preds.append(reference_logits("unimatch", state, batch["image"]).argmax(1)[0].numpy())
        labels.append(batch["label"][0].numpy())
    assert json.loads(out.read_text())["miou"] == pytest.approx(miou(preds, labels, 21), abs=1e-9)


def test_eval_on_cityscapes_uses_unimatchs_sliding_window(city_shards: Path, tmp_path: Path) -> None:
    torch.manual_seed(2)
    state = unimatch_state(19)
    ckpt = _save(tmp_path / "best.pth", "unimatch", state, ddp=False, container=False)  # its first release's form
    crop = 48  # images are 64 x 128: windows at rows 0, 32 and columns 0, 32, 64, 96, the last ones cut short
    recipe = _config(tmp_path, city_shards, data={"crop_size": crop},
                     eval={"mode": "sliding", "sliding_protocol": "unimatch"})
    out = tmp_path / "eval.json"
    proc = _cli(["eval", "--config", str(recipe), "--checkpoint", str(ckpt), "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = load_config(recipe)
    manifest = Manifest.load(city_shards)
    preds, labels = [], []
    for batch in ValData(manifest, cfg.data, batch_size=1, rank=0, world_size=1, device="cpu"):
        with torch.no_grad():
            preds.append(unimatch_sliding("unimatch", state, batch["image"], crop, 19).argmax(1)[0].numpy())
        labels.append(batch["label"][0].numpy())
    got = json.loads(out.read_text())
    assert (got["mode"], got["sliding_protocol"]) == ("sliding", "unimatch")
    assert got["miou"] == pytest.approx(miou(preds, labels, 19), abs=1e-9)

    # predict writes the benchmark's label-id PNGs from the same predictions
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    raw = sorted((city_shards.parent / "raw" / "leftImg8bit" / "val").rglob("*.png"))[0]
    (image_dir / raw.name).write_bytes(raw.read_bytes())
    proc = _cli(["predict", "--config", str(recipe), "--checkpoint", f"unimatch:{ckpt}", "--input", str(image_dir),
                 "--out", str(tmp_path / "pred")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image

    train_ids = np.asarray(Image.open(tmp_path / "pred" / "palette" / raw.name))
    label_ids = np.asarray(Image.open(tmp_path / "pred" / "labelids" / raw.name))
    from fastforec.labels import cityscapes_id_to_train_id

    assert np.array_equal(cityscapes_id_to_train_id()[label_ids], train_ids)  # the official table, inverted


def test_u2pl_reports_its_teacher_and_lists_the_heads_it_does_not_use(shards: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    state = u2pl_state(21)
    ckpt = _save(tmp_path / "ckpt.pth", "u2pl", state)  # teacher_state = state, model_state = state + 1
    cfg = load_config(_config(tmp_path, shards))
    x = torch.rand(1, 3, 64, 64)
    teacher, _, _ = load_trained_model(f"u2pl:{ckpt}", weights=None, config=cfg)
    student, _, _ = load_trained_model(f"u2pl:{ckpt}", weights="student", config=cfg)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x)["seg"], reference_logits("u2pl", state, x), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(student(x)["seg"], teacher(x)["seg"])
    proc = _cli(["eval", "--config", str(_config(tmp_path, shards)), "--checkpoint", f"u2pl:{ckpt}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not used" in proc.stderr and "contrastive representation head" in proc.stderr


def test_refusals_name_the_file_and_what_to_change(shards: Path, tmp_path: Path) -> None:
    from fastforec.checkpoint_files import CheckpointError

    torch.manual_seed(4)
    cfg = load_config(_config(tmp_path, shards))
    state = unimatch_state(21)
    ckpt = _save(tmp_path / "best.pth", "unimatch", state)
    # a class count that is neither VOC's (21) nor Cityscapes' (19) names no recipe to assume
    odd = _save(tmp_path / "odd.pth", "unimatch", unimatch_state(5))
    with pytest.raises(CheckpointError, match="give --config"):
        load_trained_model(f"unimatch:{odd}", weights=None, config=None)
    with pytest.raises(CheckpointError, match="saves no teacher weights .* use --weights student"):
        load_trained_model(f"unimatch:{ckpt}", weights="teacher", config=cfg)
    with pytest.raises(CheckpointError, match="holds a UniMatch .* write --checkpoint unimatch:"):
        load_trained_model(f"u2pl:{ckpt}", weights=None, config=cfg)
    lacking = dict(state)
    del lacking["fuse.4.running_var"]
    lacking["head.extra.weight"] = torch.zeros(1)
    bad = _save(tmp_path / "lacking.pth", "unimatch", lacking)
    with pytest.raises(CheckpointError, match=r"1 missing, 1 unexpected, 0 of the wrong shape; missing: "
                                              r"seg_head.fuse.4.running_var; unexpected: head.extra.weight"):
        load_trained_model(f"unimatch:{bad}", weights=None, config=cfg)
    city = _save(tmp_path / "city.pth", "unimatch", unimatch_state(19))
    with pytest.raises(CheckpointError, match="predicts 19 classes, the dataset in data.root .* has 21"):
        load_trained_model(f"unimatch:{city}", weights=None, config=cfg)
    proc = _cli(["eval", "--config", str(_config(tmp_path, shards)), "--checkpoint", f"unimatch:{city}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "predicts 19 classes" in proc.stderr


@pytest.mark.parametrize("source", ["unimatch", "u2pl"])
def test_model_pretrained_takes_the_encoder_of_a_peers_checkpoint(source: str, shards: Path, tmp_path: Path) -> None:
    """Fine-tuning from a peer's trained network: its encoder is the backbone's starting point."""
    from fastforec.models import build_model

    torch.manual_seed(5)
    state = unimatch_state(21) if source == "unimatch" else u2pl_state(21)
    ckpt = _save(tmp_path / "best.pth", source, state)
    cfg = load_config(_config(tmp_path, shards, model={"backbone": "resnet50s", "pretrained": str(ckpt)}))
    model = build_model(cfg.model, num_classes=5, reconstruction="rgb", with_pretrained=True, show_pretrained=False)
    prefix = "backbone." if source == "unimatch" else "encoder."
    own = model.backbone.body.state_dict()
    for key, value in state.items():
        if key.startswith(prefix):
            assert torch.equal(own[key[len(prefix):]], value), key
