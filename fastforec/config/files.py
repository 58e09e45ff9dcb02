"""Config files: the shipped recipes by bare name, ``extends`` chains, and ``load_config`` (file ->
merged dict -> ``--set`` overrides -> typed, validated Config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from fastforec.config.convert import config_from_dict
from fastforec.config.overrides import apply_overrides
from fastforec.config.schema import Config, ConfigError
from fastforec.json_keys import DuplicateKey, loads_unique

# The configs shipped with the project, one folder per source (configs/forec/, configs/unimatch/,
# configs/unimatch_v2/, configs/cpu/; configs/base/ holds what they extend). `--config
# cityscapes_1_4.json` (or `cityscapes_1_4`) names one by its file name, as the paper-recipe
# commands are written: the names are unique across the folders (a test keeps them so).
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIG_SUFFIX = ".json"
BASES_SUBDIR = "base"  # building blocks, not runnable on their own


def shipped_config_paths() -> dict[str, Path]:
    """The shipped configs by name (the file name without ``.json``), whatever their folder."""
    if not CONFIGS_DIR.is_dir():
        return {}
    paths = sorted(p for p in CONFIGS_DIR.rglob(f"*{CONFIG_SUFFIX}")
                   if p.relative_to(CONFIGS_DIR).parts[0] != BASES_SUBDIR)
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise ConfigError(f"{path}: a shipped config named '{path.stem}' exists already ({found[path.stem]}); "
                              f"bare names must be unique across {CONFIGS_DIR}: rename one of them")
        found[path.stem] = path
    return found


def shipped_configs() -> list[str]:
    """Names (without ``.json``) of the configs in the project's ``configs/`` folders."""
    return sorted(shipped_config_paths())


def resolve_config_path(path: str | Path) -> Path:
    """An existing file as given; else a shipped config: its path in the project as the docs write
    it (``configs/cpu/synth_demo.json``, from any directory), its bare name (``cityscapes_1_4.json``
    or ``cityscapes_1_4``), or its path from before the recipes had folders
    (``configs/cityscapes_1_4.json``, ``configs/synth_demo.json``: now under configs/forec/ and
    configs/cpu/). Raises ConfigError naming the shipped config of the same name, or listing them all."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"config file '{path}' is a directory; --config takes a .json config file (or the name of "
                          f"a shipped config: `fastforec recipes` lists them)")
    if not path.is_absolute() and path.parts[:1] == (CONFIGS_DIR.name,) and (CONFIGS_DIR.parent / path).is_file():
        return CONFIGS_DIR.parent / path  # the docs' paths (configs/cpu/synth_demo.json) from any directory
    name = path.name[: -len(CONFIG_SUFFIX)] if path.suffix == CONFIG_SUFFIX else path.name
    shipped = shipped_config_paths().get(name)
    if shipped is not None and path.parts in ((path.name,), (CONFIGS_DIR.name, path.name)):
        return shipped  # bare, or configs/<name>.json from before the recipes had folders
    if shipped is not None:
        raise ConfigError(f"config file '{path}' does not exist; the shipped config of that name is '{name}' "
                          f"(--config {name}, from any directory)")
    names = shipped_configs()
    listing = f"the configs in {CONFIGS_DIR} are: {', '.join(names)}" if names else f"{CONFIGS_DIR} holds no config"
    raise ConfigError(f"config file '{path}' does not exist, and it is not the name of a shipped config; {listing}")


# A config may build on others: ``"extends": "base/unimatch_voc.json"`` (or a list, applied in
# order), paths relative to the file. Objects merge key by key, anything else is replaced, and the
# file's own keys come last. A recipe file so holds only what differs from what it builds on.
EXTENDS_KEY = "extends"


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = loads_unique(path.read_text(encoding="utf-8"))
    except DuplicateKey as e:
        raise ConfigError(f"{path}: {e}; JSON would keep the last one silently (a whole section, for a "
                          f"section given twice): keep one of them") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a JSON run config is expected)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be an object with sections data/model/method/optim/train/eval")
    return data


def merge_config(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: objects merge recursively, other values replace."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge_config(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with everything it extends merged in (``extends`` resolved away)."""
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' forms a cycle ({cycle}); remove one of them")
    data = _read_json_object(path)
    parents = data.pop(EXTENDS_KEY, [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ConfigError(f"{path}: '{EXTENDS_KEY}' must be a file name or a list of them, got {parents!r}")
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = path.parent / parent
        if parent_path.is_dir():
            raise ConfigError(f"{path}: '{EXTENDS_KEY}' names '{parent}', which is a directory ({parent_path}); it "
                              f"takes config files")
        if not parent_path.is_file():
            raise ConfigError(f"{path}: '{EXTENDS_KEY}' names '{parent}', which does not exist (looked for "
                              f"{parent_path}); paths are relative to the file that extends them")
        merged = merge_config(merged, read_config_file(parent_path, (*_chain, path)))
    return merge_config(merged, data)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Load a JSON run config (with what it extends), apply ``--set`` overrides, validate.
    Raises ConfigError. ``train.name`` defaults to the file's name.

    ``path`` is a file, or the bare name of a config in the project's ``configs/``."""
    path = resolve_config_path(path)
    data = read_config_file(path)
    data = merge_config({"train": {"name": path.stem}}, data)
    try:
        return config_from_dict(apply_overrides(data, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
