"""Typed run configuration.

A run config is a JSON file with one section per component::

    {"data": {...}, "model": {...}, "method": {...}, "loss": {...}, "optim": {...}, "train": {...},
     "eval": {...}, "deepspeed": {...}}

Each section loads into its own dataclass and each component receives only its own section.
The ``deepspeed`` block stays a plain dict: it is DeepSpeed's own schema and is handed to
``deepspeed.initialize`` after the trainer fills in the batch sizes.

Errors name the key path (``method.conf_thresh``) and say what is allowed, so a user can fix
the file without reading this package.

The package is the bottom of the house: it imports nothing of fastforec but ``errors`` and
``json_keys`` (and, lazily, the dataset manifest for ``check_paths``), and no torch.

* ``schema``    the dataclasses, the accepted names, each value's checks
* ``convert``   raw dict -> Config, keys that moved or were renamed
* ``overrides`` ``--set key.sub=value``: the option, its parsing, applying it
* ``files``     shipped recipes by bare name, ``extends``, ``load_config``
"""

from fastforec.config.convert import config_from_dict, upgrade_legacy_keys
from fastforec.config.files import (
    CONFIG_SUFFIX,
    CONFIGS_DIR,
    EXTENDS_KEY,
    load_config,
    merge_config,
    read_config_file,
    resolve_config_path,
    shipped_config_paths,
    shipped_configs,
)
from fastforec.config.overrides import add_override_argument, apply_overrides, with_overrides
from fastforec.config.schema import (
    AUX_TASKS,
    BACKBONES,
    BASES,
    DECODERS,
    DINOV2,
    DPT_DECODER,
    FLOAT32_MAX,
    LEGACY_DECODER,
    LEGACY_METHOD_NAMES,
    VIT_FAMILIES,
    AugConfig,
    AuxName,
    BackboneName,
    BaseName,
    Config,
    ConfigError,
    DataConfig,
    DecoderName,
    EvalConfig,
    LossConfig,
    MethodConfig,
    ModelConfig,
    OptimConfig,
    RecipeConfig,
    TrainConfig,
    VitFamily,
    vit_family,
)

__all__ = [
    "AUX_TASKS", "BACKBONES", "BASES", "CONFIGS_DIR", "CONFIG_SUFFIX", "DECODERS", "DINOV2", "DPT_DECODER",
    "EXTENDS_KEY", "FLOAT32_MAX", "LEGACY_DECODER", "LEGACY_METHOD_NAMES", "VIT_FAMILIES",
    "AugConfig", "AuxName", "BackboneName", "BaseName", "Config", "ConfigError", "DataConfig", "DecoderName",
    "EvalConfig", "LossConfig", "MethodConfig", "ModelConfig", "OptimConfig", "RecipeConfig", "TrainConfig",
    "VitFamily", "add_override_argument", "apply_overrides", "config_from_dict", "load_config", "merge_config",
    "read_config_file", "resolve_config_path", "shipped_config_paths", "shipped_configs", "upgrade_legacy_keys",
    "vit_family", "with_overrides",
]
