"""ResNet backbones: feature shapes per output stride, and loading torchvision-format weights.

torchvision's own ResNets are the independent reference: same weights, same input, the
backbone's stride-4 map must equal torchvision's layer1 output, and its last stage must equal
torchvision's dilated ResNet (``replace_stride_with_dilation``) at the same output stride.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from fastforec.models import PretrainedError, ResNetBackbone, deeplabv3plus

SMALL = (2, 3, 45, 62)  # odd sizes on purpose


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    """Give BN buffers non-default values so that copying them is actually checked."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
                m.num_batches_tracked.fill_(seed)


def _torchvision(name: str, seed: int, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = getattr(torchvision.models, name)(weights=None, **kwargs)
    _randomise_bn(net, seed)
    return net.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """torchvision resnet18 / resnet50 state dicts on disk (seeded, so rebuildable)."""
    out = tmp_path_factory.mktemp("weights")
    paths = {}
    for seed, name in enumerate(("resnet18", "resnet50"), start=1):
        paths[name] = out / f"{name}.pth"
        torch.save(_torchvision(name, seed).state_dict(), paths[name])
    return paths


def _layer1(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))


def _layer4(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.layer4(net.layer3(net.layer2(_layer1(net, x))))


@pytest.mark.parametrize(("name", "seed"), [("resnet18", 1), ("resnet50", 2)])
def test_torchvision_weights_load_exactly(weights: dict[str, Path], name: str, seed: int) -> None:
    reference = _torchvision(name, seed)
    backbone = ResNetBackbone(name=name, output_stride=16)
    missing, unexpected = backbone.load_pretrained(weights[name])
    assert missing == [] and unexpected == []  # fc.* is the unused classifier, not reported
    ref_state = reference.state_dict()
    own = backbone.body.state_dict()
    assert set(own) == {k for k in ref_state if not k.startswith("fc.")}
    for key, value in own.items():
        assert torch.equal(value, ref_state[key]), key
    backbone.eval()
    x = torch.rand(*SMALL)
    with torch.no_grad():
        c1, _ = backbone(x)
        torch.testing.assert_close(c1, _layer1(reference, x))


@pytest.mark.parametrize(("output_stride", "dilate"), [(16, [False, False, True]), (8, [False, True, True])])
def test_dilated_last_stage_matches_torchvision(weights: dict[str, Path], output_stride: int,
                                                dilate: list[bool]) -> None:
    reference = _torchvision("resnet50", 2, replace_stride_with_dilation=dilate)
    backbone = ResNetBackbone(name="resnet50", output_stride=output_stride)
    backbone.load_pretrained(weights["resnet50"])
    backbone.eval()
    x = torch.rand(1, 3, 45, 62)
    with torch.no_grad():
        c1, c4 = backbone(x)
        expected = _layer4(reference, x)
    assert c4.shape == expected.shape
    torch.testing.assert_close(c4, expected, rtol=1e-4, atol=1e-4)
    # 45x62 -> stem /4: 12x16 -> stride 8: 6x8 -> stride 16: 3x4
    assert c1.shape[-2:] == (12, 16)
    assert c4.shape[-2:] == ((6, 8) if output_stride == 8 else (3, 4))


@pytest.mark.parametrize(("name", "low", "high"), [
    ("resnet18", 64, 512), ("resnet50", 256, 2048), ("resnet101", 256, 2048), ("resnet101c", 256, 2048),
    ("resnet101s", 256, 2048),
])
def test_feature_channels_and_strides(name: str, low: int, high: int) -> None:
    backbone = ResNetBackbone(name=name, output_stride=16).eval()
    assert (backbone.low_channels, backbone.high_channels) == (low, high)
    with torch.no_grad():
        c1, c4 = backbone(torch.rand(1, 3, 64, 64))
    assert c1.shape == (1, low, 16, 16) and c4.shape == (1, high, 4, 4)
    stem = backbone.body.conv1
    deep = {"resnet101c": (32, 64), "resnet101s": (64, 128)}  # three 3x3 convs 3->w->w->2w replace the 7x7 conv
    if name in deep:
        w, out = deep[name]
        convs = [m for m in stem.modules() if isinstance(m, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
            (3, w, (3, 3)), (w, w, (3, 3)), (w, out, (3, 3))]
    else:
        assert isinstance(stem, torch.nn.Conv2d) and stem.kernel_size == (7, 7)


@pytest.mark.parametrize(("name", "width", "low", "high"), [("resnet18", 0.5, 32, 256), ("resnet50", 0.25, 64, 512)])
def test_narrow_backbone_scales_every_stage(name: str, width: float, low: int, high: int) -> None:
    backbone = ResNetBackbone(name=name, output_stride=16, width=width).eval()
    assert (backbone.low_channels, backbone.high_channels) == (low, high)
    with torch.no_grad():
        c1, c4 = backbone(torch.rand(1, 3, 64, 64))
    assert c1.shape == (1, low, 16, 16) and c4.shape == (1, high, 4, 4)
    first_block = backbone.body.layer1[0].conv1
    assert (first_block.in_channels, first_block.out_channels) == (64, round(64 * width))  # the stem stays at 64
    full = sum(p.numel() for p in ResNetBackbone(name=name, output_stride=16).parameters())
    assert sum(p.numel() for p in backbone.parameters()) < full * width  # ~width^2 of the parameters


def test_narrow_backbone_refuses_standard_weights(weights: dict[str, Path]) -> None:
    backbone = ResNetBackbone(name="resnet18", output_stride=16, width=0.5)
    with pytest.raises(PretrainedError, match="parameter 'layer1.0.conv1.weight' has shape"):
        backbone.load_pretrained(weights["resnet18"])


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="backbone 'resnet34' is not a ResNet; choose one of resnet18, resnet50"):
        ResNetBackbone(name="resnet34", output_stride=16)  # type: ignore[arg-type]


def test_builder_loads_pretrained_into_the_encoder_only(weights: dict[str, Path]) -> None:
    model = deeplabv3plus(backbone="resnet18", num_classes=3, pretrained=str(weights["resnet18"]))
    ref_state = _torchvision("resnet18", 1).state_dict()
    for key, value in model.backbone.body.state_dict().items():
        assert torch.equal(value, ref_state[key]), key


def test_a_wrapped_state_dict_is_accepted(weights: dict[str, Path], tmp_path: Path) -> None:
    state = torch.load(weights["resnet18"], weights_only=True)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 90}, path)
    backbone = ResNetBackbone(name="resnet18", output_stride=16)
    assert backbone.load_pretrained(path) == ([], [])
    assert torch.equal(backbone.body.conv1.weight, state["conv1.weight"])


def test_missing_bn_counters_are_reported_not_fatal(weights: dict[str, Path], tmp_path: Path) -> None:
    # torchvision's published ImageNet weights predate BN's num_batches_tracked
    state = {k: v for k, v in torch.load(weights["resnet18"], weights_only=True).items()
             if not k.endswith("num_batches_tracked")}
    path = tmp_path / "old.pth"
    torch.save(state, path)
    missing, unexpected = ResNetBackbone(name="resnet18", output_stride=16).load_pretrained(path)
    assert missing and all(k.endswith("num_batches_tracked") for k in missing)
    assert unexpected == []


# ---------------------------------------------------------------------------------------------
# bad files


def test_truncated_file_is_a_clear_error(weights: dict[str, Path], tmp_path: Path) -> None:
    data = weights["resnet18"].read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(PretrainedError, match=r"pretrained weights '.*truncated.pth' cannot be read"):
        ResNetBackbone(name="resnet18", output_stride=16).load_pretrained(path)


@pytest.mark.parametrize(("file", "backbone"), [("resnet50", "resnet18"), ("resnet18", "resnet50")])
def test_wrong_depth_with_other_shapes_names_the_depth_of_the_file(weights: dict[str, Path], file: str,
                                                                    backbone: str) -> None:
    with pytest.raises(PretrainedError) as exc:
        ResNetBackbone(name=backbone, output_stride=16).load_pretrained(weights[file])
    msg = str(exc.value)
    depth = {"resnet18": 18, "resnet50": 50}
    assert f"{file}.pth' holds a ResNet-{depth[file]} with the 7x7 stem" in msg
    assert f"the backbone '{backbone}' is a ResNet-{depth[backbone]}" in msg and msg.endswith(f"model.backbone={file}")


def test_wrong_depth_with_the_same_shapes_is_a_clear_error(weights: dict[str, Path]) -> None:
    # ResNet-50 weights fit every ResNet-101 shape; only layer3's block count differs.
    with pytest.raises(PretrainedError) as exc:
        ResNetBackbone(name="resnet101", output_stride=16).load_pretrained(weights["resnet50"])
    msg = str(exc.value)
    assert "resnet50.pth' holds a ResNet-50" in msg and msg.endswith("set model.backbone=resnet50")


def test_a_file_without_a_recognisable_layout_fails_on_its_shapes(weights: dict[str, Path], tmp_path: Path) -> None:
    # no stage 4: the layout is unknown, the shape check still names the tensor and the likely cause
    state = {k: v for k, v in torch.load(weights["resnet50"], weights_only=True).items() if not k.startswith("layer4")}
    torch.save(state, tmp_path / "cut.pth")
    with pytest.raises(PretrainedError) as exc:
        ResNetBackbone(name="resnet18", output_stride=16).load_pretrained(tmp_path / "cut.pth")
    msg = str(exc.value)
    assert "cut.pth" in msg and "layer1.0.conv1.weight" in msg and "is it the right ResNet depth?" in msg


def test_other_bad_files(tmp_path: Path) -> None:
    backbone = ResNetBackbone(name="resnet18", output_stride=16)
    with pytest.raises(PretrainedError, match="'.*nothing.pth' do not exist"):
        backbone.load_pretrained(tmp_path / "nothing.pth")
    torch.save({"conv1.weight": [1, 2]}, tmp_path / "lists.pth")
    with pytest.raises(PretrainedError, match="is not a state dict of tensors"):
        backbone.load_pretrained(tmp_path / "lists.pth")
    # an unknown prefix: nothing matches, and the message shows the expected names
    torch.save({"net.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "prefixed.pth")
    with pytest.raises(PretrainedError, match="no parameter name matches the backbone.*'conv1.weight'"):
        backbone.load_pretrained(tmp_path / "prefixed.pth")
    # DDP's "module." prefix is understood (peers save that way); an incomplete file is still refused
    torch.save({"module.conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "ddp.pth")
    with pytest.raises(PretrainedError, match="does not match the backbone 'resnet18' \\(99 tensors missing"):
        backbone.load_pretrained(tmp_path / "ddp.pth")
    # a whole pickled module is refused by weights_only loading
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(PretrainedError, match="module.pth' holds Python objects other than tensors.*never unpickles"):
        backbone.load_pretrained(tmp_path / "module.pth")


def test_encoder_of_a_fastforec_checkpoint_as_pretrained_weights(tmp_path: Path) -> None:
    # pretraining on other data: a training checkpoint's student encoder initialises a new model
    torch.manual_seed(3)
    donor = deeplabv3plus(backbone="resnet18", num_classes=6, output_stride=16, reconstruction="rgb",
                          decoder_channels=16)
    _randomise_bn(donor, 5)
    path = tmp_path / "step_000010.pt"
    torch.save({"format": "fastforec-checkpoint-v1", "student": donor.state_dict(), "teacher": None}, path)
    torch.manual_seed(4)
    model = deeplabv3plus(backbone="resnet18", num_classes=11, output_stride=16, pretrained=str(path),
                          decoder_channels=16)
    got, want = model.backbone.body.state_dict(), donor.backbone.body.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # the heads are not taken (other classes): the new model's classifier has its own shape
    assert model.seg_head.classifier.weight.shape[0] == 11
