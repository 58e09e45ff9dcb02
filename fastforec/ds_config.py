"""The ``deepspeed`` block of a run config: what the trainer fills in, and a check of its keys
against what DeepSpeed itself reads.

DeepSpeed ignores a key it does not know at the top level and in its older sections
(``--set deepspeed.zero_optimisation.stage=2`` trains with ZeRO stage 0 without a word); its
pydantic sections (``zero_optimization``, ...) refuse extra keys with a message that names no
file. :func:`check_deepspeed_keys` lets DeepSpeed parse the block through a dict that records
every key DeepSpeed asks for by name: a key nobody asked for is unknown to this DeepSpeed version,
and the message offers the closest key it did ask for. The list of known keys is DeepSpeed's own,
so it cannot drift from the installed version.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import torch

from fastforec.config import Config, ConfigError
from fastforec.precision import check_precision

ZERO_STAGES = (0, 1, 2)  # ZeRO-3 partitions the parameters; the EMA teacher and checkpoints need them whole
SECTION = "deepspeed"
NO_GRADIENT_CLIPPING = 0.0  # DeepSpeed's value for "off"


def deepspeed_config(cfg: Config, device: torch.device, *, world_size: int | None = None) -> dict[str, Any]:
    """The user's ``deepspeed`` block with what the trainer owns filled in; settings this trainer
    or ``device`` cannot run, and keys DeepSpeed does not know, are a ConfigError before DeepSpeed
    is initialised. ``world_size`` (the run's ranks, when known): one rank runs ZeRO stage 0,
    see :func:`effective_zero_stage`."""
    ds = json.loads(json.dumps(cfg.deepspeed))
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in ZERO_STAGES:
        raise ConfigError(f"deepspeed.zero_optimization.stage: {stage} is not supported; use 0, 1 or 2 (ZeRO-3 "
                          f"partitions the parameters, which the EMA teacher and the checkpoints read whole)")
    if world_size is not None and (effective := effective_zero_stage(stage, world_size)) != stage:
        ds.setdefault("zero_optimization", {})["stage"] = effective
    check_precision(ds, device)
    ds.setdefault("train_micro_batch_size_per_gpu", cfg.data.batch_size)
    if ds["train_micro_batch_size_per_gpu"] != cfg.data.batch_size:
        raise ConfigError("deepspeed.train_micro_batch_size_per_gpu must equal data.batch_size "
                          f"({ds['train_micro_batch_size_per_gpu']} != {cfg.data.batch_size}); remove it from the "
                          "deepspeed block, it is filled in from data.batch_size")
    ds.setdefault("gradient_accumulation_steps", 1)
    steps = ds["gradient_accumulation_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"deepspeed.gradient_accumulation_steps: must be an integer >= 1 (micro-batches per "
                          f"optimizer step), got {steps!r}")
    ds.pop("train_batch_size", None)  # derived: micro x accumulation x world size
    # DeepSpeed (0.19) clips the global gradient norm at 1.0 unless told otherwise; the methods we
    # reproduce (UniMatch, UniMatch V2, U2PL, the FOrec paper) do not clip at all. Found by the
    # plain-loop baseline of `bench --what step --baseline`: same gradients, 13x smaller update.
    ds.setdefault("gradient_clipping", NO_GRADIENT_CLIPPING)
    # Our SGD is not on DeepSpeed's tested list for ZeRO; it is a plain elementwise optimizer.
    ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10 ** 9)  # we log ourselves
    check_deepspeed_keys(ds)
    return ds


def effective_zero_stage(stage: int, world_size: int) -> int:
    """ZeRO 1/2 partition the optimizer state and gradients across ranks: on one rank there is
    nothing to partition, and the flat-buffer copies and per-parameter bookkeeping still cost
    9-17 % of an fp32 step (measured, docs/benchmarks.md). One rank therefore runs stage 0 whatever
    the recipe says; ZeRO applies from two ranks up, where it saves memory."""
    return 0 if world_size == 1 else stage


PROBE_KEY = "__fastforec_probe__"  # a key no DeepSpeed section has


class _Asked(dict):
    """A config dict that records the keys read from it by name (``get``, ``[]``, ``in``). A nested
    dict that is iterated whole is marked consumed. Sections DeepSpeed hands to its pydantic models
    are validated there without either; :func:`_validated_whole` finds those by probing."""

    def __init__(self, data: dict[str, Any], path: str, log: dict[str, set[str]]):
        super().__init__({k: _Asked(v, f"{path}{k}.", log) if isinstance(v, dict) else v for k, v in data.items()})
        self._path, self._log = path, log

    def _ask(self, key: Any) -> None:
        self._log["asked"].add(f"{self._path}{key}")

    def get(self, key: Any, default: Any = None) -> Any:
        self._ask(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._ask(key)
        return super().__getitem__(key)

    def __contains__(self, key: object) -> bool:
        self._ask(key)
        return super().__contains__(key)

    def _consumed(self) -> None:
        self._log["consumed"].add(self._path)

    def keys(self):  # type: ignore[override]
        self._consumed()
        return super().keys()

    def items(self):  # type: ignore[override]
        self._consumed()
        return super().items()

    def __iter__(self):
        self._consumed()
        return super().__iter__()


def _leaves(data: dict[str, Any], path: str = "") -> list[str]:
    out = []
    for key, value in data.items():
        out.append(f"{path}{key}")
        if isinstance(value, dict):
            out += _leaves(value, f"{path}{key}.")
    return out


def _suggest(key: str, asked: set[str]) -> str:
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = sorted(a for a in asked if a.startswith(parent) and "." not in a[len(parent):])
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    return f"; did you mean {SECTION}.{close[0]}?" if close else ""


def check_deepspeed_keys(ds: dict[str, Any]) -> None:
    """Raise ConfigError naming the first key of ``ds`` that DeepSpeed does not read."""
    # lazy: DeepSpeed takes seconds to import; only a run that is about to start needs it
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfig

    log: dict[str, set[str]] = {"asked": set(), "consumed": set()}
    try:
        DeepSpeedConfig(_Asked(ds, "", log))
    except pydantic.ValidationError as e:
        _raise_validation(e, ds)
    except (ValueError, AssertionError, TypeError, KeyError) as e:
        raise ConfigError(f"{SECTION}: DeepSpeed refuses this block ({type(e).__name__}: {e})") from None
    for key in _leaves(ds):
        parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
        if key in log["asked"] or any(key.startswith(c) for c in log["consumed"] if c):
            continue
        if parent and parent[:-1] not in log["asked"] and parent[:-1] in _leaves(ds):
            continue  # below a key that is itself unknown, or consumed by a section parsed whole
        if parent and _validated_whole(ds, parent[:-1]):
            continue  # a pydantic section: it accepted this key
        raise ConfigError(f"{SECTION}.{key}: DeepSpeed does not know this key (it would be ignored)"
                          f"{_suggest(key, log['asked'])}")


def _validated_whole(ds: dict[str, Any], section: str) -> bool:
    """Whether DeepSpeed validates ``section`` with a pydantic model (which refuses unknown keys):
    the block with one made-up key added there must fail with pydantic's 'extra' error."""
    import pydantic
    from deepspeed.runtime.config import DeepSpeedConfig

    probe = json.loads(json.dumps(ds))
    node = probe
    for part in section.split("."):
        node = node[part]
    node[PROBE_KEY] = 0
    try:
        DeepSpeedConfig(probe)
    except pydantic.ValidationError as e:
        return any(PROBE_KEY in map(str, err["loc"]) for err in e.errors())
    except Exception:  # noqa: BLE001 - any other refusal says nothing about the probe
        return False
    return False


def _raise_validation(e: Any, ds: dict[str, Any]) -> None:
    """A pydantic error of a DeepSpeed section as a ConfigError naming the key path."""
    err = e.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    section = next((k for k, v in ds.items() if isinstance(v, dict) and str(err["loc"][0]) in v), None)
    where = f"{SECTION}.{section}.{field}" if section else f"{SECTION}.{field}"
    fields = _model_fields(e.title)
    close = difflib.get_close_matches(str(err["loc"][-1]), fields, n=1, cutoff=0.6)
    hint = f"; did you mean {where.rsplit('.', 1)[0]}.{close[0]}?" if close else ""
    raise ConfigError(f"{where}: {err['msg']} (DeepSpeed's {e.title}){hint}") from None


def _model_fields(title: str) -> list[str]:
    """Field names and aliases of DeepSpeed's pydantic model called ``title``."""
    from deepspeed.runtime.config_utils import DeepSpeedConfigModel

    todo, seen = [DeepSpeedConfigModel], []
    while todo:
        cls = todo.pop()
        if cls.__name__ == title:
            return [n for name, f in cls.model_fields.items() for n in (name, f.alias) if n]
        todo += cls.__subclasses__()
        seen.append(cls)
    return []
