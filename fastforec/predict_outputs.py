"""Where `fastforec predict` writes, decided for every input before anything is written.

- An input's files mirror its folder under ``--input``: ``--input leftImg8bit/val`` puts the
  prediction of ``frankfurt/x.png`` at ``OUT/frankfurt/x.png`` (Cityscapes' city folders).
- An input ``x.jpg`` gives ``x.png``, ``x_overlay.png`` (and ``x_labelIds.png`` on Cityscapes).
  When inputs of one folder share a stem (``x.jpg`` and ``x.jpeg``), each keeps its extension in
  the name instead (``x_jpg.png``, ``x_jpeg.png``, ...): no prediction replaces another.
- Refused, naming the files, before any write: an output that is an input file (``--out`` equal
  to ``--input``, or ``--input d/b.png --out d``: the mask would replace the image), and two
  inputs whose outputs still share a name (``x_jpg.png`` next to ``x.jpg`` and ``x.jpeg``).

Pure path arithmetic plus ``stat``: no torch, no image is opened.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fastforec.errors import UserError

MASK_SUFFIX = ".png"
OVERLAY = "_overlay"
LABEL_IDS = "_labelIds"  # cityscapesScripts' name for a label-id prediction


@dataclass(frozen=True)
class Outputs:
    """The files written for one input."""

    source: Path
    mask: Path
    overlay: Path
    label_ids: Path | None  # Cityscapes only

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.mask, self.overlay) + ((self.label_ids,) if self.label_ids is not None else ())


def plan_outputs(inputs: list[Path], *, input_root: Path, out: Path, label_ids: bool) -> list[Outputs]:
    """The outputs of every input (``list_inputs`` of ``input_root``), or a UserError naming an
    input that would be overwritten or two inputs that would share an output."""
    base = input_root if input_root.is_dir() else input_root.parent
    stems: dict[tuple[Path, str], int] = defaultdict(int)
    for path in inputs:
        stems[(path.parent, path.stem)] += 1
    planned = []
    for path in inputs:
        # a stem shared in one folder keeps the extension: x.jpg -> x_jpg, x.jpeg -> x_jpeg
        name = path.stem if stems[(path.parent, path.stem)] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
        folder = out / path.parent.relative_to(base)
        planned.append(Outputs(source=path, mask=folder / f"{name}{MASK_SUFFIX}",
                               overlay=folder / f"{name}{OVERLAY}{MASK_SUFFIX}",
                               label_ids=folder / f"{name}{LABEL_IDS}{MASK_SUFFIX}" if label_ids else None))
    _refuse_shared_outputs(planned)
    _refuse_overwriting_inputs(planned, out)
    return planned


def _refuse_shared_outputs(planned: list[Outputs]) -> None:
    owner: dict[Path, Path] = {}
    for outputs in planned:
        for file in outputs.files:
            if file in owner:
                raise UserError(f"--input: '{owner[file]}' and '{outputs.source}' would both be predicted into "
                                f"'{file}'; rename one of them")
            owner[file] = outputs.source


def _refuse_overwriting_inputs(planned: list[Outputs], out: Path) -> None:
    # by inode, not by name: a link, or a case-insensitive file system, can make two names one file
    inputs = {_identity(o.source): o.source for o in planned}
    for outputs in planned:
        for file in outputs.files:
            victim = inputs.get(_identity(file)) if file.exists() else None
            if victim is not None:
                raise UserError(f"--out '{out}': the prediction of '{outputs.source}' would be written to "
                                f"'{file}', which is the input image '{victim}'; predict never writes over its "
                                f"inputs: choose an --out outside --input")


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino
