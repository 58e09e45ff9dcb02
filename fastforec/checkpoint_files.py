"""Checkpoint files: atomic writes, verified safe loads, keep the last k.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), written with
``torch.save`` to a temporary name, fsync-ed and renamed: a crash leaves the previous checkpoint
intact. Loading uses ``torch.load(weights_only=True)``, which refuses arbitrary objects.

Every file carries a SHA-256 of its content (under :data:`CHECKSUM_KEY`) that loading verifies:
torch's zip reader does not check its CRCs, so a flipped byte inside a tensor would otherwise
load silently and be saved again into every later checkpoint. The digest covers the values, not
the file bytes, so it is computed from the state being saved (no second pass over the file).
"""

from __future__ import annotations

import hashlib
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from fastforec.atomic import atomic_path, remove_temporaries
from fastforec.errors import UserError, quote_names

CHECKPOINT_GLOB = "step_*.pt"
CHECKSUM_KEY = "checksum_sha256"
_STEP_RE = re.compile(r"step_(\d+)(?:\.rank\d+)?\.pt$")
_RANK_FILE_RE = re.compile(r"^(step_\d+)\.rank(\d+)\.pt$")
# The message torch.load(weights_only=True) raises when a file holds other Python objects; it
# goes on to suggest weights_only=False, which is exactly what must never be done with it.
_REFUSED_PICKLE = "Weights only load failed"
# Its reason when the pickle names a Python class or function, in every torch's spelling (2.6:
# "Unsupported global: GLOBAL x.y was not an allowed global"; 2.14: "Trying to load unsupported
# GLOBAL posix.system whose module posix is blocked"), so compared in lower case.
_UNSUPPORTED_GLOBAL = "unsupported global"
_GLOBAL_NAME = re.compile(r"GLOBAL\s+([\w.]+)", re.IGNORECASE)
# A file written by pickle.dump rather than torch.save stops torch's loader before any global is
# seen: "Unsupported operand 149" (protocol 4 and 5: the FRAME opcode) or "Invalid magic number"
# (protocol 2: torch's legacy format starts with a pickled magic number). Its opcodes are then
# listed with pickletools, which executes nothing, to tell pickled objects from tensors.
_NOT_TORCH_PICKLE = ("unsupported operand", "invalid magic number")
_PICKLE_PROTO = b"\x80"  # the first byte of every pickle of protocol 2 or later
_IMPORTING_OPCODES = ("GLOBAL", "INST")  # "module name" in the argument; STACK_GLOBAL takes two strings
_STACK_GLOBAL = "STACK_GLOBAL"
# what a pickle of tensors imports (torch's rebuild functions and storages, OrderedDict state dicts)
TENSOR_MODULES = ("torch", "collections")
# torch warns before refusing such a file ("Detected pickle protocol 4 in the checkpoint ..."):
# noise on top of the one line that says what the file is
_PROTOCOL_WARNING = "Detected pickle protocol"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, damaged, from another run, or not a fastforec checkpoint."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a shared or per-rank checkpoint file, from its name."""
    m = _STEP_RE.search(Path(path).name)
    return int(m.group(1)) if m else None


def rank_file(path: str | Path, rank: int) -> Path:
    """The per-rank companion of a checkpoint (optimizer partition, DeepSpeed counters, RNG)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}.pt")


def shared_file_of(path: str | Path) -> tuple[Path, int] | None:
    """(the shared checkpoint, the rank) when ``path`` is named as a per-rank companion file."""
    m = _RANK_FILE_RE.match(Path(path).name)
    return (Path(path).with_name(f"{m.group(1)}.pt"), int(m.group(2))) if m else None


# ---------------------------------------------------------------------------------------------
# content digest


def state_digest(state: Any) -> str:
    """SHA-256 over a nested structure of dicts, lists, tensors and plain values: every dtype,
    shape, byte, key and value, in order."""
    h = hashlib.sha256()
    _feed(h, state)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # raw bytes of any dtype (bf16 included)
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)};".encode())
        for v in obj:
            _feed(h, v)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        text = repr(obj).encode()
        h.update(f"{type(obj).__name__}{len(text)};".encode() + text)
    else:
        raise TypeError(f"checkpoint values must be tensors, containers or plain values, got {type(obj).__name__}")


def _to_cpu(obj: Any) -> Any:
    # One device-to-host copy shared by the digest and torch.save (each would copy otherwise).
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return type(obj)((k, _to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


# ---------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    state = _to_cpu(state)
    payload = {**state, CHECKSUM_KEY: state_digest(state)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def earlier_checkpoint_hint(path: str | Path) -> str:
    """'use the earlier checkpoint X' (the newest one before ``path`` in its directory), or a
    sentence saying there is none."""
    step = checkpoint_step(path)
    earlier = [p for p in list_checkpoints(Path(path).parent) if step is None or (checkpoint_step(p) or 0) < step]
    if earlier:
        return f"{EARLIER_HINT} '{earlier[-1]}' (e.g. --resume {earlier[-1]})"
    return NO_EARLIER_HINT


EARLIER_HINT = "use the earlier checkpoint"
NO_EARLIER_HINT = "no earlier checkpoint exists in that directory"


def without_hint(message: str) -> str:
    """A damaged-checkpoint message without its advice to use an earlier one (for a summary in
    which every checkpoint is damaged, where that advice would point at another damaged file)."""
    for hint in (f"; {EARLIER_HINT} ", f"; {NO_EARLIER_HINT}"):
        if hint in message:
            message = message[:message.index(hint)]
    return message


def torch_load(path: str | Path, **kwargs: Any) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, without torch's pickle-protocol
    warning (the error that follows it is reported by :func:`refusal`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_PROTOCOL_WARNING, category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


def refusal(error: Exception, path: str | Path) -> str | None:
    """What the file is, when ``torch.load(weights_only=True)`` refused it for holding Python
    objects (a pickled class or function, possibly code) or for being a ``pickle.dump`` file; None
    for a stream that is just broken (truncated, or not a pickle at all)."""
    text = str(error)
    if _REFUSED_PICKLE in text and _UNSUPPORTED_GLOBAL in text.lower():
        name = _GLOBAL_NAME.search(text)
        return f"{NOT_TENSORS} (its pickle imports {name.group(1) if name else 'a Python object'})"
    if any(reason in text.lower() for reason in _NOT_TORCH_PICKLE) and _starts_as_pickle(Path(path)):
        name = foreign_import(Path(path))
        return f"{NOT_TENSORS} (its pickle imports {name})" if name else PLAIN_PICKLE
    return _foreign_zip(Path(path))


def _foreign_zip(path: Path) -> str | None:
    """A complete zip archive that is not torch.save's (no ``data.pkl`` inside), e.g. NumPy's .npz:
    not a damaged checkpoint, another kind of file. None for anything else."""
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return None
    npz = " (a NumPy .npz)" if names and all(n.endswith(".npy") for n in names) else ""
    return (f"is a zip archive of other files ({quote_names(names)}){npz}, not a checkpoint written by torch.save or a "
            f"safetensors file; give a fastforec checkpoint, a run directory or an export")


def _starts_as_pickle(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(1) == _PICKLE_PROTO
    except OSError:
        return False


def foreign_import(path: Path) -> str | None:
    """The first Python global (``module.name``) a pickle file imports from outside
    :data:`TENSOR_MODULES`; None when there is none or the stream breaks off first. Read opcode by
    opcode with pickletools: nothing is unpickled."""
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for opcode, arg, _ in pickletools.genops(f):
                if opcode.name in _IMPORTING_OPCODES:
                    name = str(arg).replace(" ", ".")
                elif opcode.name == _STACK_GLOBAL:
                    name = ".".join(strings[-2:])
                else:
                    if isinstance(arg, str):
                        strings.append(arg)
                    continue
                if name.split(".")[0] not in TENSOR_MODULES:
                    return name
    except (ValueError, EOFError, OSError, pickle.UnpicklingError):
        return None  # a broken stream: not evidence of anything
    return None


def first_line(error: Exception) -> str:
    """``Type: what went wrong``, without the advice torch appends (which, for a refused load,
    is to retry with weights_only=False: never to be passed on)."""
    text = str(error)
    if _REFUSED_PICKLE in text:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
        text = detail.group(1) if detail else "not a valid torch file"
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


NOT_TENSORS = ("holds Python objects other than tensors and plain values, so it is not a fastforec checkpoint "
               "or weight file; fastforec never unpickles such files")
PLAIN_PICKLE = ("is a plain Python pickle (written by pickle.dump, not torch.save or safetensors), which fastforec "
                "never unpickles; save the weights with torch.save(state_dict, FILE) or as safetensors")


def safe_load(path: Path, *, damaged: Callable[[], str] = lambda: "") -> Any:
    """``torch.load(weights_only=True)`` of an existing file; a pickled object or a broken stream
    is a :class:`CheckpointError` naming the file (``damaged()`` ends the message of the latter)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch_load(path)
    except Exception as e:  # zip/pickle/EOF errors all mean the same thing to the user
        if (what := refusal(e, path)) is not None:
            raise CheckpointError(f"'{path}' {what}") from None
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({first_line(e)}){damaged()}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify one checkpoint file; :class:`CheckpointError` names the file and what
    to use instead when it is missing, damaged or foreign."""
    path = Path(path)
    state = safe_load(path, damaged=lambda: f"; {earlier_checkpoint_hint(path)}")
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' is not a fastforec checkpoint (top level is {type(state).__name__})")
    stored = state.pop(CHECKSUM_KEY, None)
    if stored is None:
        raise CheckpointError(f"'{path}' has no checksum: it is not a checkpoint written by this version of "
                              f"fastforec")
    try:
        actual = state_digest(state)
    except TypeError as e:
        raise CheckpointError(f"'{path}' is not a fastforec checkpoint ({e})") from None
    if actual != stored:
        raise CheckpointError(f"checkpoint '{path}' is corrupt: its content does not match its checksum (a byte "
                              f"changed on disk or in a copy); {earlier_checkpoint_hint(path)}")
    if map_location != "cpu":
        state = _to_device(state, torch.device(map_location))
    return state


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return type(obj)((k, _to_device(v, device)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# a run's checkpoint directory


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Shared checkpoint files in ``directory``, oldest first (by step number)."""
    found = [(s, p) for p in Path(directory).glob(CHECKPOINT_GLOB)
             if ".rank" not in p.name and (s := checkpoint_step(p)) is not None]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its ``checkpoints/`` latest, or its own latest)."""
    path = Path(path)
    if path.is_dir():
        for d in (path / "checkpoints", path):
            if (latest := latest_checkpoint(d)) is not None:
                return latest
        raise CheckpointError(f"no checkpoint ({CHECKPOINT_GLOB}) in '{path}'")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    return path


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints; returns the deleted paths."""
    old = list_checkpoints(directory)[:-keep] if keep > 0 else []
    for p in old:
        # the shared file first: without it the rank files are never read
        p.unlink(missing_ok=True)
        for companion in p.parent.glob(f"{p.stem}.rank*.pt"):
            companion.unlink(missing_ok=True)
    return old


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Temporaries of checkpoint writes killed mid-way (``.step_*.pt.tmp-PID``); a run calls
    this at its start, before any of its processes writes a checkpoint."""
    return remove_temporaries(directory, CHECKPOINT_GLOB)


def check_same_settings(saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...], *,
                        path: str | Path) -> None:
    """Raise naming the first dotted config key of ``keys`` whose value differs between the
    checkpoint's config and the current one."""
    def get(cfg: dict[str, Any], key: str) -> Any:
        node: Any = cfg
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    for key in keys:
        was, now = get(saved, key), get(current, key)
        if was != now:
            raise CheckpointError(f"checkpoint '{path}' was trained with {key}={_show(was)}, the config says "
                                  f"{_show(now)}; resume with the checkpoint's setting (--set {key}={_show(was)}) "
                                  f"or start a new run")


def _show(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
