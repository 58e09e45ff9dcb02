"""Where `fastforec predict` writes, decided for every input before anything is written.

- Each kind of output has its own folder under ``--out`` (``--format``): ``palette/`` (class ids
  as a palette PNG), ``overlay/`` (the coloured mask over the image), ``labelids/`` (Cityscapes'
  official label ids), so that a tool that takes a folder of predictions (cityscapesScripts, a
  test server) can be given one as it is.
- An input's files mirror its folder under ``--input``: ``--input leftImg8bit/val`` puts the
  palette prediction of ``frankfurt/x.png`` at ``OUT/palette/frankfurt/x.png``.
- An input ``x.jpg`` gives ``x.png`` in each kind's folder. When inputs of one folder share a stem
  (``x.jpg`` and ``x.jpeg``), each keeps its extension in the name instead (``x_jpg.png``,
  ``x_jpeg.png``): no prediction replaces another.
- Refused, naming the files, before any write: ``--out`` equal to the ``--input`` folder, an
  output that is an input file (``--input d/palette/b.png --out d``), and two inputs whose outputs
  still share a name (``x_jpg.png`` next to ``x.jpg`` and ``x.jpeg``).

Pure path arithmetic plus ``stat``: no torch, no image is opened.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from fastforec.errors import UserError

MASK_SUFFIX = ".png"
PALETTE, OVERLAY, LABEL_IDS = "palette", "overlay", "labelids"  # --format, and each kind's folder
FORMATS = (PALETTE, OVERLAY, LABEL_IDS)


def default_formats(*, cityscapes: bool) -> tuple[str, ...]:
    """Palette masks and overlays; on Cityscapes also the label ids its tools read."""
    return (PALETTE, OVERLAY, LABEL_IDS) if cityscapes else (PALETTE, OVERLAY)


@dataclass(frozen=True)
class Outputs:
    """The files written for one input, by kind (a subset of FORMATS)."""

    source: Path
    by_kind: dict[str, Path]

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.by_kind.values())


def plan_outputs(inputs: list[Path], *, input_root: Path, out: Path, formats: tuple[str, ...]) -> list[Outputs]:
    """The outputs of every input (``list_inputs`` of ``input_root``), or a UserError naming an
    input that would be overwritten or two inputs that would share an output."""
    base = input_root if input_root.is_dir() else input_root.parent
    if input_root.is_dir() and out.resolve() == base.resolve():
        # the kind folders would land among the images, and the next run would read them as inputs
        raise UserError(f"--out '{out}' is the --input folder itself; choose another --out (a new folder, or one "
                        f"inside --input: it is skipped when the inputs are read)")
    stems: dict[tuple[Path, str], int] = defaultdict(int)
    for path in inputs:
        stems[(path.parent, path.stem)] += 1
    planned = []
    for path in inputs:
        # a stem shared in one folder keeps the extension: x.jpg -> x_jpg, x.jpeg -> x_jpeg
        name = path.stem if stems[(path.parent, path.stem)] == 1 else f"{path.stem}_{path.suffix.lstrip('.')}"
        relative = path.parent.relative_to(base)
        planned.append(Outputs(source=path, by_kind={kind: out / kind / relative / f"{name}{MASK_SUFFIX}"
                                                     for kind in formats}))
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
