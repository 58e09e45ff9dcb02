"""`dataprep inspect DIR`: counts, image sizes and class pixel frequencies, as tables."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from fastforec.data.manifest import Manifest

from .scan import ShardScan
from .verify import scan_all, shard_tasks

_BYTES_PER_MB = 1 << 20


def _sizes(counter: Counter) -> str:
    if not counter:
        return "-"
    (h, w), n = counter.most_common(1)[0]
    hs = [hw[0] for hw in counter]
    ws = [hw[1] for hw in counter]
    return f"{h}x{w} ({n}); H {min(hs)}..{max(hs)}, W {min(ws)}..{max(ws)}"


def split_table(manifest: Manifest, scans: list[ShardScan]) -> Table:
    table = Table(title=f"{manifest.root}: {manifest.dataset}, {manifest.num_classes} classes")
    for col in ("split", "shards", "samples", "MB", "image sizes HxW (most common; range)"):
        table.add_column(col, justify="left" if col.startswith(("split", "image")) else "right")
    for split in manifest.splits:
        mine = [s for s in scans if s.split == split]
        sizes: Counter = sum((s.image_sizes for s in mine), Counter())
        table.add_row(split, str(len(mine)), str(sum(len(s.keys) for s in mine)),
                      f"{sum(s.payload_bytes for s in mine) / _BYTES_PER_MB:.1f}", _sizes(sizes))
    return table


def class_table(manifest: Manifest, scans: list[ShardScan]) -> Table:
    labeled_splits = [s for s in manifest.splits if any(sc.split == s and sc.class_pixels.any() for sc in scans)]
    pixels = {s: sum((sc.class_pixels for sc in scans if sc.split == s), np.zeros(256, np.int64))
              for s in labeled_splits}
    table = Table(title="class pixel frequency (% of all label pixels)")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("fg")
    for s in labeled_splits:
        table.add_column(s, justify="right")
    rows = [(str(c), manifest.class_names[c], c) for c in range(manifest.num_classes)]
    rows.append((str(manifest.ignore_index), "(ignore)", manifest.ignore_index))
    for cid, name, value in rows:
        cells = []
        for s in labeled_splits:
            total = pixels[s].sum()
            cells.append(f"{100.0 * pixels[s][value] / total:.2f}" if total else "-")
        table.add_row(cid, name, "*" if value in manifest.foreground_classes else "", *cells)
    return table


def inspect_dataset(root: Path, *, workers: int, console: Console) -> None:
    manifest = Manifest.load(root)
    scans = scan_all(shard_tasks(manifest, check_hash=False, decode=True), workers=workers)
    console.print(split_table(manifest, scans))
    console.print(class_table(manifest, scans))
