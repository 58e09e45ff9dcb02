"""The ImageNet weight files users already have, each written here in its own naming as the
peers define it, must load into the matching backbone with every stem and stage tensor arriving.

- torchvision (and timm): 7x7 stem ``conv1`` + ``bn1``, stages ``layer1..4``.
- U2PL / UniMatch ``pretrained/resnet101.pth``: deep stem 64-64-128 as ``conv1.0`` (3x3, 3->64,
  stride 2), ``conv1.1`` BN, ``conv1.3`` (64->64), ``conv1.4`` BN, ``conv1.6`` (64->128), ``bn1``
  (128), and ``layer1.0`` taking 128 channels.
- mmseg ResNetV1c: deep stem 32-32-64 as ``stem.0/1`` (conv, BN), ``stem.3/4``, ``stem.6/7``.

The state dicts below are built from those definitions (names, shapes), not from timm's models.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from fastforec.config import ConfigError, config_from_dict
from fastforec.models import PretrainedError, ResNetBackbone
from fastforec.models.backbones import BACKBONE_LAYOUTS, BACKBONES, Layout, layout_of
from fastforec.models.build import check_pretrained

BLOCKS_101 = (3, 4, 23, 3)
EXPANSION = 4  # bottleneck output = 4 x width
STAGE_WIDTHS = (64, 128, 256, 512)


def _bn(prefix: str, channels: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.rand(channels, generator=gen) + 0.5,
            f"{prefix}.bias": torch.randn(channels, generator=gen),
            f"{prefix}.running_mean": torch.randn(channels, generator=gen),
            f"{prefix}.running_var": torch.rand(channels, generator=gen) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _conv(name: str, cout: int, cin: int, k: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": torch.randn(cout, cin, k, k, generator=gen)}


def _stages(inplanes: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """ResNet-101 bottleneck stages, torchvision naming (shared by U2PL, UniMatch and mmseg)."""
    state: dict[str, torch.Tensor] = {}
    for stage, (blocks, width) in enumerate(zip(BLOCKS_101, STAGE_WIDTHS), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            state |= _conv(f"{p}.conv1", width, inplanes, 1, gen) | _bn(f"{p}.bn1", width, gen)
            state |= _conv(f"{p}.conv2", width, width, 3, gen) | _bn(f"{p}.bn2", width, gen)
            state |= _conv(f"{p}.conv3", width * EXPANSION, width, 1, gen) | _bn(f"{p}.bn3", width * EXPANSION, gen)
            if b == 0:
                state |= _conv(f"{p}.downsample.0", width * EXPANSION, inplanes, 1, gen)
                state |= _bn(f"{p}.downsample.1", width * EXPANSION, gen)
            inplanes = width * EXPANSION
    state["fc.weight"] = torch.randn(1000, 2048, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


def torchvision_resnet101(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return _conv("conv1", 64, 3, 7, gen) | _bn("bn1", 64, gen) | _stages(64, gen)


def u2pl_resnet101(gen: torch.Generator) -> dict[str, torch.Tensor]:
    stem = (_conv("conv1.0", 64, 3, 3, gen) | _bn("conv1.1", 64, gen) | _conv("conv1.3", 64, 64, 3, gen)
            | _bn("conv1.4", 64, gen) | _conv("conv1.6", 128, 64, 3, gen) | _bn("bn1", 128, gen))
    return stem | _stages(128, gen)


def mmseg_resnet101_v1c(gen: torch.Generator) -> dict[str, torch.Tensor]:
    stem = (_conv("stem.0", 32, 3, 3, gen) | _bn("stem.1", 32, gen) | _conv("stem.3", 32, 32, 3, gen)
            | _bn("stem.4", 32, gen) | _conv("stem.6", 64, 32, 3, gen) | _bn("stem.7", 64, gen))
    return stem | _stages(64, gen)


def _mmseg_to_timm(key: str) -> str:
    if key.startswith("stem.7."):
        return "bn1." + key[len("stem.7."):]
    return "conv1." + key[len("stem."):] if key.startswith("stem.") else key


FORMATS = {  # format -> (file writer, the backbone that must take it)
    "torchvision": (torchvision_resnet101, "resnet101"),
    "u2pl_unimatch": (u2pl_resnet101, "resnet101s"),
    "mmseg_v1c": (mmseg_resnet101_v1c, "resnet101c"),
}


@pytest.fixture(scope="module")
def files(module_tmp: Path) -> dict[str, Path]:
    out = module_tmp
    paths = {}
    for seed, (fmt, (make, _)) in enumerate(FORMATS.items()):
        state = make(torch.Generator().manual_seed(seed))
        paths[fmt] = out / f"{fmt}.pth"
        if fmt == "mmseg_v1c":  # as mmseg saves it: meta + state_dict, the backbone nested under "backbone."
            torch.save({"meta": {"mmseg_version": "1.2.2"},
                        "state_dict": {f"backbone.{k}": v for k, v in state.items()}},
                       paths[fmt])
        else:
            torch.save(state, paths[fmt])
    return paths


@pytest.fixture(scope="module")
def backbones() -> dict[str, ResNetBackbone]:
    return {name: ResNetBackbone(name=name, output_stride=16) for name in ("resnet101", "resnet101s", "resnet101c")}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_loads_every_stem_and_stage_tensor(fmt: str, files: dict[str, Path],
                                                       backbones: dict[str, ResNetBackbone],
                                                       capsys: pytest.CaptureFixture) -> None:
    make, name = FORMATS[fmt]
    seed = list(FORMATS).index(fmt)
    source = make(torch.Generator().manual_seed(seed))
    backbone = backbones[name]
    missing, unexpected = backbone.load_pretrained(files[fmt])
    assert missing == [] and unexpected == []
    own = backbone.body.state_dict()
    assert {k.split(".")[0] for k in own} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    as_timm = {(_mmseg_to_timm(k) if fmt == "mmseg_v1c" else k): v for k, v in source.items()}
    for key, value in own.items():
        assert torch.equal(value, as_timm[key]), (fmt, key)
    # every tensor of the file but the classifier went somewhere
    assert len(own) == len([k for k in source if not k.startswith("fc.")])
    table = capsys.readouterr().err
    assert "tensors loaded" in table and "missing" in table and "unexpected" in table
    naming = "mmseg names (stem.*)" if fmt == "mmseg_v1c" else "torchvision/timm names"
    assert f"pretrained backbone weights: {files[fmt]} ({naming})" in table.splitlines()[0]
    assert [c.strip() for c in table.splitlines()[-2].split("│")[1:-1]] == [str(len(own)), "0", "0"]


@pytest.mark.parametrize(("fmt", "backbone", "stem_words", "advice"), [
    ("u2pl_unimatch", "resnet101", "64-64-128 deep stem", "set model.backbone=resnet101s"),
    ("u2pl_unimatch", "resnet101c", "64-64-128 deep stem", "set model.backbone=resnet101s"),
    ("torchvision", "resnet101c", "7x7 stem", "set model.backbone=resnet101"),
    ("mmseg_v1c", "resnet101s", "32-32-64 deep stem", "set model.backbone=resnet101c"),
])
def test_a_file_for_another_stem_names_the_backbone_to_use(fmt: str, backbone: str, stem_words: str, advice: str,
                                                           files: dict[str, Path],
                                                           backbones: dict[str, ResNetBackbone]) -> None:
    with pytest.raises(PretrainedError) as exc:
        backbones[backbone].load_pretrained(files[fmt], show=False)
    msg = str(exc.value)
    assert str(files[fmt]) in msg and f"holds a ResNet-101 with the {stem_words}" in msg
    assert f"the backbone '{backbone}' is a ResNet-101" in msg and msg.endswith(advice)
    assert "depth" not in msg  # the depth is right: the stem is not


def test_layout_table_matches_timms_models(backbones: dict[str, ResNetBackbone]) -> None:
    from fastforec.models.vit import VIT_SPECS

    assert set(BACKBONES) == set(BACKBONE_LAYOUTS) | set(VIT_SPECS)  # every config name is a ResNet or a DINO ViT
    for name in BACKBONE_LAYOUTS:
        body = backbones[name].body if name in backbones else ResNetBackbone(name=name, output_stride=16).body
        assert layout_of(body.state_dict()) == Layout(*BACKBONE_LAYOUTS[name]), name


def test_a_missing_stem_tensor_is_an_error_not_a_random_stem(files: dict[str, Path], tmp_path: Path,
                                                             backbones: dict[str, ResNetBackbone]) -> None:
    state = torch.load(files["u2pl_unimatch"], weights_only=True)
    del state["conv1.4.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(PretrainedError, match=r"partial.pth': the file does not match the backbone 'resnet101s' "
                                              r"\(1 tensors missing from the file, e.g. \['conv1.4.running_var'\]"):
        backbones["resnet101s"].load_pretrained(tmp_path / "partial.pth", show=False)


# ---------------------------------------------------------------------------------------------
# timm's own weights by name, from the local cache only


def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network connection was attempted")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _hf_cache(root: Path, repo: str, state: dict[str, torch.Tensor]) -> Path:
    """The Hugging Face cache layout timm's downloads leave: refs/main -> snapshots/<rev>/model.safetensors."""
    from safetensors.torch import save_file

    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text("0123abcd")
    snapshot = repo_dir / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, snapshot / "model.safetensors")
    return snapshot / "model.safetensors"


def _timm_resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    import timm

    torch.manual_seed(seed)
    net = timm.create_model("resnet18", pretrained=False)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    return net.state_dict()


def test_timm_weights_by_name_come_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    _no_network(monkeypatch)
    state = _timm_resnet18_state(3)
    default_tag = timm.models.get_pretrained_cfg("resnet18").tag
    _hf_cache(tmp_path, f"timm/resnet18.{default_tag}", state)
    for spec in ("timm", f"timm:resnet18.{default_tag}"):
        backbone = ResNetBackbone(name="resnet18", output_stride=16)
        assert backbone.load_pretrained(spec, cache_dir=tmp_path, show=False) == ([], [])
        for key, value in backbone.body.state_dict().items():
            assert torch.equal(value, state[key]), key


def test_timm_weights_in_the_torch_hub_cache_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    _no_network(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    url_name = Path(timm.models.get_pretrained_cfg("resnet18.tv_in1k").url).name
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / url_name
    hub_file.parent.mkdir(parents=True)
    state = _timm_resnet18_state(4)
    torch.save(state, hub_file)
    backbone = ResNetBackbone(name="resnet18", output_stride=16)
    backbone.load_pretrained("timm:resnet18.tv_in1k", cache_dir=tmp_path / "empty_hf", show=False)
    assert torch.equal(backbone.body.conv1.weight, state["conv1.weight"])


def test_uncached_timm_weights_say_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_network(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    backbone = ResNetBackbone(name="resnet18", output_stride=16)
    with pytest.raises(PretrainedError) as exc:
        backbone.load_pretrained("timm:resnet18.tv_in1k", cache_dir=tmp_path / "hf", show=False)
    msg = str(exc.value)
    assert "timm's weights resnet18.tv_in1k are not in the local cache" in msg and "nothing is downloaded" in msg
    assert str(tmp_path / "hf") in msg and "huggingface-cli download timm/resnet18.tv_in1k" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg

    with pytest.raises(PretrainedError, match=r"weights of timm's resnet50, but model.backbone is resnet18"):
        backbone.load_pretrained("timm:resnet50.a1_in1k", cache_dir=tmp_path / "hf", show=False)
    with pytest.raises(PretrainedError, match=r"timm has no weights named 'resnet18.nope'.*resnet18.tv_in1k"):
        backbone.load_pretrained("timm:resnet18.nope", cache_dir=tmp_path / "hf", show=False)


def test_config_check_reports_uncached_timm_weights_before_any_work(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    _no_network(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text("{}")
    cfg = config_from_dict({"data": {"root": str(tmp_path / "shards")},
                            "model": {"backbone": "resnet101s", "pretrained": "timm"}})
    with pytest.raises(ConfigError, match=r"model.pretrained 'timm': timm's weights resnet101s.gluon_in1k are not "
                                          r"in the local cache"):
        check_pretrained(cfg.model)
    _hf_cache(tmp_path / "hf", "timm/resnet101s.gluon_in1k", {"conv1.0.weight": torch.zeros(1)})
    check_pretrained(cfg.model)  # cached now: no error (the file is read when the model is built)
