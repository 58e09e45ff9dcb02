"""DPT on DINOv3 (UniMatch V2's head on timm's port of Meta's DINOv3): names and shapes of every
size against Meta's weight files, Meta's files loaded strictly through timm's converter with the
features equal to timm's own model and to a functional re-statement of Meta's network, the
refusals (the other family, another size, a file timm's model would compute differently from),
timm's cache by name, and the exports (ONNX at any size, safetensors through `fastforec predict`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.models.eva import checkpoint_filter_fn

sys.path.insert(0, str(Path(__file__).parent))
import dinov3_reference as ref  # noqa: E402
import unimatch_v2_reference as v2ref  # noqa: E402

from fastforec.models import PretrainedError, dpt  # noqa: E402
from fastforec.models.vit import VIT_SPECS, DinoV3Backbone, vit_backbone  # noqa: E402
from tests.export_files import write_export  # noqa: E402

BACKBONE = {"small": "dinov3_vits16", "base": "dinov3_vitb16", "large": "dinov3_vitl16"}
TINY = {"backbone": "dinov3_vits16", "decoder": "dpt", "backbone_width": 0.25}
REPO = Path(__file__).resolve().parents[2]


def _timm_name(meta_key: str) -> str | None:
    """Meta's key -> timm's (the three renames of timm's converter); None for what it drops."""
    if meta_key in ("mask_token", "rope_embed.periods") or meta_key.endswith(("bias_mask", "qkv.bias")):
        return None
    return meta_key.replace("storage_tokens", "reg_token").replace("ls1.gamma", "gamma_1").replace(
        "ls2.gamma", "gamma_2")


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_every_size_is_timms_qkvb_port_of_metas_layout(size: str) -> None:
    dim, depth, heads, layers = ref.SIZES[size]
    with torch.device("meta"):
        backbone = vit_backbone(name=BACKBONE[size])
    assert backbone.layers == tuple(layers) and backbone.patch == 16 and backbone.num_prefix_tokens == 5
    own = {k: tuple(v.shape) for k, v in backbone.body.state_dict().items()}
    meta = ref.meta_shapes(dim, depth, heads)
    want = {_timm_name(k): v for k, v in meta.items() if _timm_name(k) is not None}
    for i in range(depth):  # Meta's qkv bias (3 dim) is timm's q and v biases; the key bias stays 0
        want[f"blocks.{i}.attn.q_bias"] = want[f"blocks.{i}.attn.v_bias"] = (dim,)
    assert own == want
    assert VIT_SPECS[BACKBONE[size]].timm_name.endswith("_qkvb")
    assert all(block.attn.fused_attn for block in backbone.body.blocks)  # SDPA
    assert backbone.body.rope.rescale_coords is None  # no train-time RoPE jitter (module doc)


@pytest.fixture(scope="module")
def meta_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    dim, depth, heads, _ = ref.SIZES["small"]
    state = ref.random_meta_state(dim, depth, heads, seed=0)
    path = tmp_path_factory.mktemp("dinov3") / VIT_SPECS["dinov3_vits16"].meta_file
    torch.save(state, path)
    return path, state


def test_metas_file_loads_strictly_with_the_table(meta_small, capsys) -> None:
    path, state = meta_small
    backbone = vit_backbone(name="dinov3_vits16")
    assert backbone.load_pretrained(path) == ([], [])
    err = capsys.readouterr().err
    assert "tensors loaded" in err and "Meta's DINOv3 names through timm's converter" in err
    own = backbone.body.state_dict()
    dim = 384
    assert torch.equal(own["reg_token"], state["storage_tokens"]) and torch.equal(own["cls_token"], state["cls_token"])
    for i in (0, 11):
        p = f"blocks.{i}."
        assert torch.equal(own[p + "attn.q_bias"], state[p + "attn.qkv.bias"][:dim])
        assert torch.equal(own[p + "attn.v_bias"], state[p + "attn.qkv.bias"][2 * dim:])
        assert torch.equal(own[p + "gamma_1"], state[p + "ls1.gamma"])
        assert torch.equal(own[p + "attn.qkv.weight"], state[p + "attn.qkv.weight"])
    # every tensor of the file arrives but mask_token, the periods and the 12 bias masks; each of
    # the 12 qkv biases becomes a q and a v bias
    assert len(own) == len(state) - 2 - 12 - 12 + 2 * 12


@pytest.mark.parametrize("hw", [(64, 80), (48, 48), (112, 64)])
def test_features_equal_timms_model_and_metas_network(meta_small, hw: tuple[int, int]) -> None:
    path, state = meta_small
    dim, depth, heads, layers = ref.SIZES["small"]
    backbone = vit_backbone(name="dinov3_vits16")
    backbone.load_pretrained(path, show=False)
    timm_model = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, num_classes=0)
    timm_model.load_state_dict(checkpoint_filter_fn(state, timm_model), strict=True)
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(hw[0]))
    backbone.train()  # train mode too: no coordinate jitter, the features are eval mode's
    with torch.no_grad():
        ours = backbone(x)
        theirs = timm_model.eval().forward_intermediates(x, indices=layers, norm=True, intermediates_only=True)
        meta = ref.intermediate_layers(state, x, layers, heads)
    for a, b, c in zip(ours, theirs, meta):
        assert a.shape == (2, dim, hw[0] // 16, hw[1] // 16)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_timms_port_without_qkvb_would_drop_the_biases(meta_small) -> None:
    """Why the _qkvb variants: the plain ones load Meta's file without an error and compute
    something else (the q/v biases are dropped)."""
    _, state = meta_small
    plain = timm.create_model("vit_small_patch16_dinov3", pretrained=False, num_classes=0).eval()
    plain.load_state_dict(checkpoint_filter_fn(state, plain), strict=True)
    x = torch.rand(1, 3, 48, 64)
    with torch.no_grad():
        got = plain.forward_intermediates(x, indices=[11], norm=True, intermediates_only=True)[0]
    want = ref.intermediate_layers(state, x, [11], 6)[0]
    assert (got - want).abs().max() > 1e-2


def test_a_narrow_dpt_trains_and_recomputes_blocks_identically() -> None:
    torch.manual_seed(3)
    plain = dpt(backbone="dinov3_vits16", num_classes=3, reconstruction="rgb", backbone_width=0.25)
    ckpt = dpt(backbone="dinov3_vits16", num_classes=3, reconstruction="rgb", backbone_width=0.25,
               activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    assert plain.backbone.embed_dim == 6 * 16  # heads of 64 x 0.25 channels (a multiple of 4: RoPE)
    x = torch.rand(2, 3, 48, 56)
    grads = []
    for model in (plain, ckpt):
        model.train()
        out = model(x, return_latent=True)
        assert out["seg"].shape == (2, 3, 48, 56) and out["latent"].shape == (2, 16, 24, 24)  # 3 x 3 patches
        (out["seg"].square().mean() + out["rec"].mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "backbone.body.reg_token" in grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# refusals


def test_a_dinov2_file_names_the_dinov2_backbone(tmp_path: Path) -> None:
    dim, depth, *_ = v2ref.SIZES["small"]
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(v2ref.random_state(v2ref.backbone_shapes(dim, depth)), path)
    with pytest.raises(PretrainedError, match=r"holds DINOv2 ViT-S/14 weights; model.backbone=dinov3_vits16 is DINOv3 "
                                              r"ViT-S/16 \(width 384, 12 blocks\): set model.backbone=dinov2_vits14, "
                                              r"or give DINOv3 ViT-S/16 weights \(Meta's "
                                              r"dinov3_vits16_pretrain_lvd1689m-08c60483.pth\)"):
        vit_backbone(name="dinov3_vits16").load_pretrained(path, show=False)


def test_a_dinov3_file_of_another_size_or_for_dinov2_names_its_backbone(meta_small) -> None:
    path, _ = meta_small
    with pytest.raises(PretrainedError, match=r"holds DINOv3 ViT-S/16 weights; model.backbone=dinov3_vitb16 is DINOv3 "
                                              r"ViT-B/16 \(width 768, 12 blocks\): set model.backbone=dinov3_vits16$"):
        vit_backbone(name="dinov3_vitb16").load_pretrained(path, show=False)
    with pytest.raises(PretrainedError, match=r"holds DINOv3 ViT-S/16 weights; model.backbone=dinov2_vits14 is DINOv2 "
                                              r"ViT-S/14 .*: set model.backbone=dinov3_vits16, or give DINOv2 ViT-S/14 "
                                              r"weights \(Meta's dinov2_vits14_pretrain.pth or UniMatch V2's "
                                              r"pretrained/dinov2_small.pth\)"):
        vit_backbone(name="dinov2_vits14").load_pretrained(path, show=False)


def _edited(meta_small, tmp_path: Path, edit) -> Path:
    state = dict(meta_small[1])
    edit(state)
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    return path


def test_files_timms_model_would_compute_differently_from_are_refused(meta_small, tmp_path: Path) -> None:
    load = lambda p: vit_backbone(name="dinov3_vits16").load_pretrained(p, show=False)  # noqa: E731

    def drop(s):
        del s["blocks.3.mlp.fc1.weight"]
    with pytest.raises(PretrainedError, match=r"in Meta's names \(1 tensors missing from the file, e.g. "
                                              r"\['blocks.3.mlp.fc1.weight'\]; 0 unknown"):
        load(_edited(meta_small, tmp_path, drop))

    def extra(s):
        s["local_cls_norm.weight"] = torch.ones(384)
    with pytest.raises(PretrainedError, match=r"1 unknown, e.g. \['local_cls_norm.weight'\]"):
        load(_edited(meta_small, tmp_path, extra))

    def unmasked(s):
        s["blocks.5.attn.qkv.bias_mask"] = torch.ones(3 * 384)
    with pytest.raises(PretrainedError, match=r"blocks.5.attn.qkv.bias_mask is not 1 on the query and value biases "
                                              r"and 0 on the key biases"):
        load(_edited(meta_small, tmp_path, unmasked))

    def other_rope(s):
        s["rope_embed.periods"] = ref.periods(64, base=10000.0)
    with pytest.raises(PretrainedError, match=r"rope_embed.periods .* are not DINOv3's RoPE periods for 64-wide "
                                              r"heads .* base 100\)"):
        load(_edited(meta_small, tmp_path, other_rope))

    def bf16_rope(s):  # how Meta's released files may hold them: accepted
        s["rope_embed.periods"] = ref.periods(64).bfloat16()
    load(_edited(meta_small, tmp_path, bf16_rope))


# ---------------------------------------------------------------------------------------------
# timm's cache by name, fastforec's own files


def test_timms_cached_weights_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a network connection was attempted")))
    torch.manual_seed(5)
    source = vit_backbone(name="dinov3_vits16")
    with torch.no_grad():
        for p in source.body.parameters():
            p.add_(torch.randn_like(p))
    cfg = timm.models.get_pretrained_cfg("vit_small_patch16_dinov3_qkvb")
    snapshot = tmp_path / f"models--{cfg.hf_hub_id.replace('/', '--')}" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in source.body.state_dict().items()}, snapshot / "model.safetensors")
    for spec in ("timm", f"timm:vit_small_patch16_dinov3_qkvb.{cfg.tag}"):
        backbone = vit_backbone(name="dinov3_vits16")
        assert backbone.load_pretrained(spec, cache_dir=tmp_path, show=False) == ([], [])
        assert all(torch.equal(v, source.body.state_dict()[k]) for k, v in backbone.body.state_dict().items())


# ---------------------------------------------------------------------------------------------
# exports


def test_onnx_export_of_a_dinov3_dpt_takes_any_size(tmp_path: Path) -> None:
    """RoPE is computed from the patch grid inside the graph: height and width stay dynamic
    (DINOv2's export fixes them at the crop)."""
    import onnxruntime as ort

    from fastforec.export_format import write_onnx

    torch.manual_seed(6)
    model = dpt(backbone="dinov3_vits16", num_classes=5, reconstruction=None, backbone_width=0.25).eval()
    assert isinstance(model.backbone, DinoV3Backbone) and not model.backbone.fixed_onnx_size
    write_onnx(model, {"k": "v"}, tmp_path / "m.onnx", vit_size=48)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [isinstance(d, str) for d in session.get_inputs()[0].shape] == [True, False, True, True]
    for shape in ((1, 3, 48, 48), (3, 3, 64, 112), (2, 3, 97, 50)):
        x = torch.rand(*shape)
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x)["seg"].numpy()
        assert got.shape == want.shape and abs(got - want).max() < 1e-4, shape


def test_predict_runs_a_dinov3_safetensors_export(tmp_path: Path) -> None:
    from fastforec.export_format import read_export

    export = write_export(tmp_path / "model.safetensors", seed=7, **TINY)
    model, cfg, _ = read_export(export)
    assert cfg.model.backbone == "dinov3_vits16" and isinstance(model.backbone, DinoV3Backbone)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    arrays = {"a.png": rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
              "b.png": rng.integers(0, 255, (37, 50, 3), dtype=np.uint8)}
    for name, array in arrays.items():
        Image.fromarray(array).save(images / name)
    out = tmp_path / "pred"
    proc = subprocess.run([sys.executable, "-m", "fastforec.cli", "predict", "--checkpoint", str(export), "--input",
                           str(images), "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, array in arrays.items():
        mask = np.asarray(Image.open(out / "palette" / name))
        assert mask.shape == array.shape[:2] and mask.max() < 3
