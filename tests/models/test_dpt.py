"""DPT on DINOv2 (UniMatch V2's network): names and shapes of every size against UniMatch V2's
documented layout, outputs against a functional re-statement of its code, DINOv2's position
embedding interpolation, complementary channel dropout, pretrained weight files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
import unimatch_v2_reference as ref  # noqa: E402

from fastforec.models import PretrainedError, dpt  # noqa: E402
from fastforec.models.segmentor import complementary_masks  # noqa: E402
from fastforec.models.vit import interpolate_pos_embed  # noqa: E402

BACKBONE = {"small": "dinov2_vits14", "base": "dinov2_vitb14", "large": "dinov2_vitl14"}


def _ours_in_v2_names(model) -> dict[str, tuple[int, ...]]:
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone.body."):
            out["backbone." + k[len("backbone.body."):]] = tuple(v.shape)
        elif k.startswith("seg_head."):
            out["head." + k[len("seg_head."):]] = tuple(v.shape)
    return out


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_every_size_has_unimatch_v2s_names_and_shapes(size: str) -> None:
    with torch.device("meta"):
        model = dpt(backbone=BACKBONE[size], num_classes=21, reconstruction=None)
    want = ref.model_shapes(size, 21)
    del want["backbone.mask_token"]  # DINOv2's masked-modelling token: not part of the network
    assert _ours_in_v2_names(model) == want


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return ref.random_state(ref.model_shapes("small", 5))


def _load(state: dict, *, reconstruction=None):
    model = dpt(backbone="dinov2_vits14", num_classes=5, reconstruction=reconstruction)
    own = {("backbone.body." + k[9:] if k.startswith("backbone.") else "seg_head." + k[5:]): v
           for k, v in state.items() if k != "backbone.mask_token"}
    model.load_state_dict(own, strict=reconstruction is None)
    return model.eval()


@pytest.mark.parametrize("hw", [(70, 84), (518, 518), (56, 126)])
def test_logits_equal_unimatch_v2s_network(small_state: dict, hw: tuple[int, int]) -> None:
    """At 518 x 518 the position embeddings are used as they are, elsewhere interpolated."""
    model = _load(small_state)
    x = torch.rand(1 if hw[0] == 518 else 2, 3, *hw)
    with torch.no_grad():
        got = model(x)["seg"]
        want = ref.dpt_logits(small_state, x, layers=[2, 5, 8, 11], heads=6)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_output_size_for_crops_that_are_and_are_not_multiples_of_14(small_state: dict) -> None:
    model = _load(small_state, reconstruction="rgb")
    for hw in ((70, 84), (75, 100), (64, 80)):
        with torch.no_grad():
            out = model(torch.rand(1, 3, *hw), return_latent=True)
        assert out["seg"].shape == (1, 5, *hw) and out["rec"].shape == (1, 3, *hw)
        grid = (hw[0] // 14, hw[1] // 14)
        assert out["latent"].shape == (1, 64, 8 * grid[0], 8 * grid[1])  # the DPT head's last map: 8/14 of the grid
    # a side that is not a multiple of 14 loses its remainder (DINOv2's patch embedding), and the
    # head's output is resized to the input size (UniMatch V2 would return the 70 x 98 grid's size)
    x = torch.rand(1, 3, 75, 100)
    with torch.no_grad():
        got = model(x)["seg"]
        want = ref.dpt_logits(small_state, x[..., :70, :98], layers=[2, 5, 8, 11], heads=6, size=(75, 100))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_position_embeddings_follow_dinov2_not_timm() -> None:
    torch.manual_seed(1)
    pos = torch.randn(1, 37 * 37 + 1, 8)
    for grid in ((7, 9), (23, 34), (37, 37), (40, 40)):
        torch.testing.assert_close(interpolate_pos_embed(pos, grid), ref.pos_embed(pos, *grid), rtol=0, atol=0)
    # timm's resampling (to the target size) is what DINOv2's weights were not made with
    from timm.layers import resample_abs_pos_embed

    timm_pos = resample_abs_pos_embed(pos, new_size=(23, 34), old_size=(37, 37), num_prefix_tokens=1)
    assert (timm_pos - ref.pos_embed(pos, 23, 34)).abs().max() > 1e-3


def test_complementary_masks() -> None:
    torch.manual_seed(2)
    pairs, channels = 64, 96
    m = complementary_masks(pairs, channels, keep=0.5, device=torch.device("cpu"), dtype=torch.float32)
    first, second = m[:pairs], m[pairs:]
    undropped = (first == 1).all(1)
    assert int(undropped.sum()) == pairs // 2  # int(n * 0.5) pairs left alone ...
    assert torch.equal(second[undropped], first[undropped])  # ... in both views
    dropped_first, dropped_second = first[~undropped], second[~undropped]
    assert set(dropped_first.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(dropped_first + dropped_second, torch.full_like(dropped_first, 2.0))  # complementary
    assert abs(float(m.mean()) - 1.0) < 0.02  # mean 1: no rescaling at test time
    assert abs(float((dropped_first == 0).float().mean()) - 0.5) < 0.05
    odd = complementary_masks(5, 4, keep=0.5, device=torch.device("cpu"), dtype=torch.float32)
    assert int((odd[:5] == 1).all(1).sum()) == 2  # int(5 * 0.5)


def test_comp_drop_forward_equals_unimatch_v2s_with_the_same_masks(small_state: dict, monkeypatch) -> None:
    model = _load(small_state)
    masks = complementary_masks(2, 384, keep=0.5, device=torch.device("cpu"), dtype=torch.float32)
    monkeypatch.setattr("fastforec.models.segmentor.complementary_masks", lambda *a, **k: masks)
    x = torch.rand(4, 3, 56, 70)
    with torch.no_grad():
        got = model(x, comp_drop_keep=0.5)["seg"]
        want = ref.dpt_logits(small_state, x, layers=[2, 5, 8, 11], heads=6, channel_mask=masks)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(3)
    plain = dpt(backbone="dinov2_vits14", num_classes=3, reconstruction=None, backbone_width=0.25)
    ckpt = dpt(backbone="dinov2_vits14", num_classes=3, reconstruction=None, backbone_width=0.25,
               activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 42, 56)
    grads = []
    for model in (plain, ckpt):
        model.train()
        model(x)["seg"].square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)
    # refinenet4's first unit is never used: frozen, so no optimizer moves it (UniMatch V2's is never updated)
    assert not any(n.startswith("seg_head.scratch.refinenet4.resConfUnit1") for n in grads[0])


# ---------------------------------------------------------------------------------------------
# pretrained weight files


@pytest.fixture(scope="module")
def meta_small(tmp_path_factory) -> Path:
    torch.manual_seed(4)
    dim, depth, *_ = ref.SIZES["small"]
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(ref.random_state(ref.backbone_shapes(dim, depth)), path)
    return path


def test_meta_and_unimatch_v2_backbone_files_load_exactly(meta_small: Path, tmp_path: Path, capsys) -> None:
    state = torch.load(meta_small)
    # UniMatch V2's pretrained/dinov2_small.pth: the same keys; its whole trained checkpoint: backbone.*
    v2_ckpt = tmp_path / "latest.pth"
    torch.save({"model": {f"module.backbone.{k}": v for k, v in state.items()}, "epoch": 3}, v2_ckpt)
    for path in (meta_small, v2_ckpt):
        model = dpt(backbone="dinov2_vits14", num_classes=3, reconstruction=None, pretrained=path)
        own = model.backbone.body.state_dict()
        assert set(own) == set(state) - {"mask_token"}
        assert all(torch.equal(own[k], state[k]) for k in own)
    err = capsys.readouterr().err
    assert "tensors loaded" in err and "DINOv2" in err


def test_a_file_of_another_size_names_the_backbone_it_is_for(meta_small: Path) -> None:
    with pytest.raises(PretrainedError, match=r"ViT-S/14 weights; model.backbone=dinov2_vitb14 .* set "
                                              r"model.backbone=dinov2_vits14"):
        dpt(backbone="dinov2_vitb14", num_classes=3, reconstruction=None, pretrained=meta_small)


def test_incomplete_or_register_files_are_refused(meta_small: Path, tmp_path: Path) -> None:
    state = torch.load(meta_small)
    partial = dict(state)
    del partial["blocks.3.mlp.fc1.weight"]
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(PretrainedError, match=r"1 tensors missing from the file.*blocks.3.mlp.fc1.weight"):
        dpt(backbone="dinov2_vits14", num_classes=3, reconstruction=None, pretrained=tmp_path / "partial.pth")
    torch.save({**state, "register_tokens": torch.zeros(1, 4, 384)}, tmp_path / "reg.pth")
    with pytest.raises(PretrainedError, match="with registers"):
        dpt(backbone="dinov2_vits14", num_classes=3, reconstruction=None, pretrained=tmp_path / "reg.pth")


def test_timm_blocks_use_scaled_dot_product_attention() -> None:
    model = dpt(backbone="dinov2_vits14", num_classes=3, reconstruction=None, backbone_width=0.25)
    assert all(block.attn.fused_attn for block in model.backbone.body.blocks)
    assert timm.layers.use_fused_attn()


def test_parameter_counts_are_the_ones_unimatch_v2_logs() -> None:
    """Its training log for DINOv2-Base on Pascal prints 'Total params: 97.5M', 'Encoder params:
    86.6M', 'Decoder params: 10.9M' (count_params in millions, one decimal; its encoder also
    holds the 768 values of the unused mask token)."""
    with torch.device("meta"):
        model = dpt(backbone="dinov2_vitb14", num_classes=21, reconstruction=None)
    millions = lambda m: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)  # noqa: E731
    assert (millions(model), millions(model.backbone), millions(model.seg_head)) == (97.5, 86.6, 10.9)


def test_onnx_export_of_a_dpt_takes_the_crop_size(tmp_path: Path) -> None:
    """Dynamic batch; the image size is the crop's (the position embeddings are resampled per
    patch grid, which the exporter fixes at the traced size)."""
    import onnxruntime as ort

    from fastforec.export_format import fixed_onnx_size, write_onnx

    torch.manual_seed(6)
    model = dpt(backbone="dinov2_vits14", num_classes=5, reconstruction=None, backbone_width=0.25).eval()
    assert fixed_onnx_size(model)  # what `fastforec export` tells the user, naming the size
    write_onnx(model, {"k": "v"}, tmp_path / "m.onnx", vit_size=56)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    for batch in (1, 3):
        x = torch.rand(batch, 3, 56, 56)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            assert abs(got - model(x)["seg"].numpy()).max() < 1e-4
    with pytest.raises(ValueError, match="multiple of 14"):
        write_onnx(model, {}, tmp_path / "x.onnx", vit_size=64)
