"""``--set key.sub=value``: one definition of the option (``add_override_argument``), its parsing
with the field types, and applying it to a raw config or a loaded one."""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any, Literal, Sequence

from fastforec.config.convert import _gone, _legacy_method, config_from_dict
from fastforec.config.schema import Config, ConfigError, _check

OVERRIDE_HELP = "override a config entry, e.g. --set train.max_steps=100 (repeatable)"


def add_override_argument(p: argparse.ArgumentParser, *, help: str = OVERRIDE_HELP) -> None:
    """``--set KEY=VALUE`` (repeatable, into ``args.overrides``), the same in every command."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help)




def _parse_override_value(text: str, tp: Any, key: str) -> Any:
    """Turn the text of ``--set key=text`` into a value of the field's type."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        # a choice spelled like null wins over null: method.aux=none is the task "none"
        choices = [v for a in typing.get_args(tp) if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        if text in choices:
            return text
        if text.lower() in ("null", "none"):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _parse_override_value(text, inner[0], key) if len(inner) == 1 else _json_value(text, key)
    if tp is bool:
        low = text.lower()
        _check(low in ("true", "false", "1", "0"), key, f"must be true or false, got {text!r}")
        return low in ("true", "1")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: must be an integer, got {text!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: must be a number, got {text!r}") from None
    if origin is list:
        if text.startswith("["):
            return _json_value(text, key)
        (item,) = typing.get_args(tp)
        return [_parse_override_value(t.strip(), item, key) for t in text.split(",") if t.strip()]
    if tp is str or origin is Literal:
        return text
    try:  # free-form blocks (deepspeed): JSON when it parses, else a string
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _json_value(text: str, key: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: {text!r} is not valid JSON ({e.msg} at character {e.pos}); "
                          f"write a list as [1,2,3] or 1,2,3") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a raw config dict, parsing values with the field types."""
    data = json.loads(json.dumps(data))  # deep copy
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        key, text = item.split("=", 1)
        if key.strip() == "method.name":  # legacy: the pair the name stands for, both halves
            base, aux = _legacy_method(text)
            data = apply_overrides(data, [f"method.base={base}", f"method.aux={aux}"])
            continue
        parts = key.strip().split(".")
        cls: Any = Config
        node = data
        for i, part in enumerate(parts):
            path = ".".join(parts[: i + 1])
            tp: Any = Any
            if cls is not None:
                hints = typing.get_type_hints(cls)
                if part not in hints:
                    if _gone(path) is not None:
                        raise ConfigError(_gone(path))
                    raise ConfigError(f"{path}: unknown key; allowed keys here are {', '.join(sorted(hints))}")
                tp = hints[part]
            if i == len(parts) - 1:
                node[part] = _parse_override_value(text, tp, path)
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{path}: is not an object, cannot set {key}")
                cls = tp if dataclasses.is_dataclass(tp) else None
    return data


def with_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """``cfg`` (a checkpoint's, say) with ``--set`` overrides applied and validated again."""
    return config_from_dict(apply_overrides(cfg.to_dict(), overrides)) if overrides else cfg
