"""A raw config dict (JSON, a checkpoint's) -> the typed Config, with key paths in the errors, and the
keys that moved, were removed or were renamed (old method.name) over the project's history."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal

from fastforec.config.schema import AUX_TASKS, BASES, LEGACY_METHOD_NAMES, Config, ConfigError, _check


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "an object"
    return getattr(tp, "__name__", str(tp))


def _json_name(value: Any) -> str:
    """What a JSON value is, in JSON's words (a config is JSON, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    return {str: "a string", list: "a list", int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"must be an object, got {_json_name(value)}")
        return _from_dict(tp, value, key)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(tp)
        if value is None:
            _check(type(None) in args, key, f"must be {_type_name(tp)}, got null")
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                if not str(e).startswith(f"{key}:"):
                    raise  # an error deeper inside (a list item, a nested key) is the precise one
        raise ConfigError(f"{key}: must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        _check(value in allowed, key, f"must be {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        _check(isinstance(value, list), key, f"must be {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _check(isinstance(value, dict), key, f"must be an object, got {_json_name(value)}")
        return dict(value)
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        # JSON accepts Infinity/NaN and float() accepts "inf": no setting means anything with them
        _check(math.isfinite(value), key, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} at {key}")


# Keys that moved to another section: their old place gets an error that says where they went.
MOVED_KEYS = {"data.eval_mode": "eval.mode", "data.eval_batch_size": "eval.batch_size",
              "data.eval_stride_ratio": "eval.stride_ratio", "train.eval_every": "eval.every"}


# Keys that were accepted once and did nothing: their error says why they are gone.
REMOVED_KEYS = {
    "data.shuffle_buffer": "the sample order is a seeded permutation of the whole split, so there is no shuffle "
                           "buffer to size; delete the key",
}


def _gone(key: str) -> str | None:
    """The message for a key that moved or was removed, else None."""
    if key in MOVED_KEYS:
        return f"{key}: this setting moved; write it as {MOVED_KEYS[key]}"
    if key in REMOVED_KEYS:
        return f"{key}: this setting was removed: {REMOVED_KEYS[key]}"
    return None


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        gone = _gone(f"{where}{unknown[0]}")
        if gone is not None:
            raise ConfigError(gone)
        raise ConfigError(f"{where}{unknown[0]}: unknown key; allowed keys here are {', '.join(sorted(names))}")
    kwargs = {name: _convert(v, hints[name], f"{prefix}.{name}" if prefix else name) for name, v in data.items()}
    return cls(**kwargs)


def _legacy_method(name: Any) -> tuple[str, str]:
    _check(name in LEGACY_METHOD_NAMES, "method.name",
           f"{name!r} is not one of the old method names ({', '.join(LEGACY_METHOD_NAMES)}); a method is "
           f"method.base ({', '.join(BASES)}) x method.aux ({', '.join(AUX_TASKS)}): set those two instead")
    return LEGACY_METHOD_NAMES[name]


def upgrade_legacy_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with a legacy ``method.name`` turned into ``method.base``/``method.aux``: each half
    the name stands for, unless the same object sets that half itself (as it did before)."""
    method = data.get("method")
    if not isinstance(method, dict) or "name" not in method:
        return data
    method = dict(method)
    base, aux = _legacy_method(method.pop("name"))
    method["base"] = method.get("base") or base  # null: the name's half, as before
    method["aux"] = method.get("aux") or aux
    return {**data, "method": method}


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = _from_dict(Config, upgrade_legacy_keys(data), "")
    cfg.validate()
    return cfg
