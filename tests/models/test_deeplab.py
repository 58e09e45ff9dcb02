"""DeepLabV3+ with the reconstruction decoder: shapes, structure, parameter count, paper eq. 2."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastforec.models import Decoder, DeepLabV3Plus, deeplabv3plus

NUM_CLASSES = 5
H, W = 97, 130  # odd and not a multiple of any stride
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# DeepLabV3+ ResNet-101, OS16, 21 classes, no auxiliary decoder: the figure quoted by the
# reference implementations (~59.3M with the 48-channel low-level reduce and ASPP pooling).
R101_PARAMS = 59.3e6
R101_PARAMS_TOL = 0.1e6


def _stride4(n: int) -> int:
    """Size after the ResNet stem: the 7x7/2 conv and the 3x3/2 max-pool, both padded (ceil)."""
    return math.ceil(math.ceil(n / 2) / 2)


@pytest.fixture(scope="module")
def model() -> DeepLabV3Plus:
    torch.manual_seed(0)
    return deeplabv3plus(backbone="resnet18", num_classes=NUM_CLASSES, reconstruction="rgb")


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(("output_stride", "dilations"), [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_output_shapes_at_both_strides_with_odd_input(output_stride: int, dilations: tuple[int, ...]) -> None:
    model = deeplabv3plus(backbone="resnet18", num_classes=NUM_CLASSES, output_stride=output_stride).eval()
    aspp_3x3 = [c for c in _convs(model.seg_head.aspp) if c.kernel_size == (3, 3)]
    assert tuple(c.dilation[0] for c in aspp_3x3) == dilations
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        out = model(x, return_latent=True)
        _, c4 = model.backbone(x)
    assert set(out) == {"seg", "rec", "latent"}
    assert out["seg"].shape == (2, NUM_CLASSES, H, W)
    assert out["rec"].shape == (2, 3, H, W)
    assert out["latent"].shape == (2, 256, _stride4(H), _stride4(W))
    assert c4.shape[-2:] == (math.ceil(H / output_stride), math.ceil(W / output_stride))
    assert torch.isfinite(out["seg"]).all() and torch.isfinite(out["rec"]).all()


def test_auxiliary_head_variants() -> None:
    x = torch.rand(1, 3, 33, 41)
    plain = deeplabv3plus(backbone="resnet18", num_classes=NUM_CLASSES, reconstruction=None).eval()
    fgbg = deeplabv3plus(backbone="resnet18", num_classes=NUM_CLASSES, reconstruction="fgbg").eval()
    with torch.no_grad():
        assert set(plain(x)) == {"seg"}
        out = fgbg(x, return_latent=True)
    assert set(out) == {"seg", "fgbg", "latent"}
    assert out["fgbg"].shape == (1, 1, 33, 41)
    assert plain.aux_head is None
    with pytest.raises(ValueError, match="return_latent=True needs a model built with reconstruction="):
        plain(x, return_latent=True)


def test_decoder_structure_and_the_reconstruction_decoder_mirrors_it(model: DeepLabV3Plus) -> None:
    seg, rec = model.seg_head, model.aux_head
    assert isinstance(seg, Decoder) and isinstance(rec, Decoder) and seg is not rec
    # ASPP: 1x1 + three dilated 3x3 + image pooling, each 256 channels, projected to 256
    assert len(seg.aspp.branches) == 5
    assert all(c.out_channels == 256 for c in _convs(seg.aspp))
    assert isinstance(seg.aspp.branches[-1].conv[0], nn.Conv2d)  # pooling branch: a 1x1 conv after pooling
    # low-level reduce to 48 channels from the stride-4 map (resnet18: 64 channels)
    (reduce,) = _convs(seg.reduce)
    assert (reduce.in_channels, reduce.out_channels, reduce.kernel_size) == (64, 48, (1, 1))
    # two 3x3 fuse convs: 256 + 48 -> 256 -> 256
    fuse = _convs(seg.fuse)
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in fuse] == [
        (304, 256, (3, 3)), (256, 256, (3, 3))]
    assert (seg.classifier.kernel_size, seg.classifier.out_channels) == ((1, 1), NUM_CLASSES)
    assert (rec.classifier.kernel_size, rec.classifier.out_channels) == ((1, 1), 3)
    # identical structure apart from the last layer's channel count
    seg_shapes = {k: v.shape for k, v in seg.state_dict().items() if not k.startswith("classifier.")}
    rec_shapes = {k: v.shape for k, v in rec.state_dict().items() if not k.startswith("classifier.")}
    assert seg_shapes == rec_shapes
    # one encoder shared by both heads; head_parameters are exactly the two decoders'
    heads = {id(p) for p in model.head_parameters()}
    encoder = {id(p) for p in model.backbone.parameters()}
    assert not heads & encoder and heads | encoder == {id(p) for p in model.parameters()}


def test_resnet101_os16_21_classes_has_about_59_3M_parameters() -> None:
    model = deeplabv3plus(backbone="resnet101", num_classes=21, output_stride=16, reconstruction=None)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - R101_PARAMS) < R101_PARAMS_TOL, \
        f"DeepLabV3+ R101/OS16/21 classes has {n / 1e6:.2f}M parameters, expected about 59.3M"


def test_reconstruction_is_a_1x1_conv_of_the_latent_image(model: DeepLabV3Plus) -> None:
    """Paper eq. 2: the reconstruction is a linear (1x1) map of the latent feature image."""
    model.eval()
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        out = model(x, return_latent=True)
        # the latent is what the reconstruction decoder computes from the standardised image
        c1, c4 = model.backbone((x - IMAGENET_MEAN) / IMAGENET_STD)
        torch.testing.assert_close(out["latent"], model.aux_head.features(c1, c4))
    weight = model.aux_head.classifier.weight[:, :, 0, 0]  # (3, 256)
    bias = model.aux_head.classifier.bias
    low_res = torch.einsum("oc,bchw->bohw", weight, out["latent"]) + bias.view(1, 3, 1, 1)
    assert model.aux_head.align_corners  # UniMatch's decoder, the default, resizes with align_corners=True
    expected = F.interpolate(low_res, size=(H, W), mode="bilinear", align_corners=True)
    torch.testing.assert_close(out["rec"], expected, rtol=1e-4, atol=1e-5)
    # bilinear weights sum to 1, so the 1x1 conv of the upsampled latent is the same image
    up = F.interpolate(out["latent"], size=(H, W), mode="bilinear", align_corners=True)
    full_res = torch.einsum("oc,bchw->bohw", weight, up) + bias.view(1, 3, 1, 1)
    torch.testing.assert_close(out["rec"], full_res, rtol=1e-4, atol=1e-5)


def test_a_loss_on_rec_alone_trains_the_encoder(model: DeepLabV3Plus) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.rand(2, 3, 64, 80)  # batch 2: BN in train mode on the 1x1 pooled ASPP branch
    out = model(x)
    F.mse_loss(out["rec"], x).backward()
    encoder_grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in encoder_grads)
    # timm zero-initialises each residual branch's last BN scale, so inside a block only that
    # scale has a non-zero gradient at initialisation; the stem sees the full gradient.
    for name in ("conv1.weight", "layer1.0.bn2.weight", "layer4.1.bn2.weight"):
        grad = model.backbone.body.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert model.aux_head.classifier.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.seg_head.parameters())  # not on this loss's path
    model.zero_grad(set_to_none=True)
    model.eval()


def test_segmentation_copy_is_the_teacher_architecture(model: DeepLabV3Plus) -> None:
    copy = model.segmentation_copy()
    assert copy.aux_head is None and copy.backbone is not model.backbone
    own = model.state_dict()
    for key, value in copy.state_dict().items():
        assert torch.equal(value, own[key]), key
    model.eval()
    copy.eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(copy(x)["seg"], model(x)["seg"])


def test_builder_is_keyword_only_and_validates() -> None:
    with pytest.raises(TypeError):
        deeplabv3plus("resnet18", 21)  # type: ignore[misc]
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 32"):
        deeplabv3plus(backbone="resnet18", num_classes=21, output_stride=32)
    with pytest.raises(ValueError, match="reconstruction must be 'rgb', 'fgbg' or None, got 'depth'"):
        deeplabv3plus(backbone="resnet18", num_classes=21, reconstruction="depth")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes must be >= 1, got 0"):
        deeplabv3plus(backbone="resnet18", num_classes=0)
