"""Result tables for the terminal."""

from __future__ import annotations

import math
from typing import Sequence

from rich.table import Table

from fastforec.terminal import output_console


def iou_table(class_names: Sequence[str], iou: Sequence[float | None], miou: float) -> Table:
    table = Table()
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    for name, v in zip(class_names, iou):
        absent = v is None or (isinstance(v, float) and math.isnan(v))
        table.add_row(name, "-" if absent else f"{100 * v:.2f}")
    table.add_section()
    table.add_row("[bold]mIoU", f"[bold]{100 * miou:.2f}")
    return table


def print_iou_table(class_names: Sequence[str], iou: Sequence[float | None], miou: float, *,
                    title: str = "IoU") -> None:
    # the title on a line of its own: as a table title rich wraps it to the (narrow) table's width,
    # splitting the checkpoint path it names
    console = output_console()
    console.print(title, markup=False, highlight=False, soft_wrap=True)
    console.print(iou_table(class_names, iou, miou))
