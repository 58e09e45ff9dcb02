"""The dataset manifest (docs/architecture.md section B): what `dataprep` writes and every reader trusts.

``OUT/manifest.json``::

    {
      "format_version": 1,
      "dataset": "voc",                       # free-form name: voc, cityscapes, folder, ...
      "num_classes": 21,
      "class_names": ["background", ...],
      "palette": [[0, 0, 0], ...],            # one RGB triple per class
      "ignore_index": 255,
      "foreground_classes": [1, ..., 20],
      "splits": {
        "labeled":   {"num_samples": 92,  "shards": [{"file": "labeled-000000.tar",
                                                      "index": "labeled-000000.idx",
                                                      "num_samples": 92, "sha256": "...",
                                                      "size": 1234567}]},
        "unlabeled": {...},                   # image only
        "val":       {...}
      },
      "source": {...}                         # how it was made (free-form, for humans)
    }

Samples inside a shard: ``__key__`` = the image id (no dots), the image under extension
``jpg`` or ``png`` (original bytes), the label under ``label.png`` (single-channel uint8 train
ids, 255 = ignore). Unlabeled shards carry no label.

``size`` (bytes of the tar) is optional for manifests written before it existed; every count
must agree: a split's ``num_samples`` is the sum over its shards.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastforec.errors import UserError

FORMAT_VERSION = 1
SPLITS = ("labeled", "unlabeled", "val")
IMAGE_EXTS = ("jpg", "png")
LABEL_EXT = "label.png"

MANIFEST_NAME = "manifest.json"  # in every shard directory


class ManifestError(UserError, ValueError):
    """The manifest or a shard it names is missing or inconsistent."""


@dataclass(frozen=True)
class ShardInfo:
    file: str
    index: str
    num_samples: int
    sha256: str
    size: int | None = None  # bytes of the tar file


def shards_identity(splits: dict[str, list[tuple[str, int, str]]]) -> str:
    """sha256 of the (file, samples, sha256) of every shard, by split, in a canonical order."""
    canonical = json.dumps({name: sorted(map(list, shards)) for name, shards in sorted(splits.items())})
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SplitInfo:
    shards: tuple[ShardInfo, ...]

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)


@dataclass(frozen=True)
class Manifest:
    root: Path
    dataset: str
    num_classes: int
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int
    foreground_classes: tuple[int, ...]
    splits: dict[str, SplitInfo]
    source: dict[str, Any] = field(default_factory=dict)
    declared_counts: dict[str, int] = field(default_factory=dict)  # the file's split-level num_samples

    def count_problems(self) -> list[str]:
        """Split-level ``num_samples`` of the file that disagree with the sum over its shards."""
        return [f"split '{name}' says num_samples={n} but its shards hold "
                f"{self.splits[name].num_samples}; the manifest was edited or damaged: re-run dataprep"
                for name, n in self.declared_counts.items() if name in self.splits and n != self.splits[name].num_samples]

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise ManifestError(f"{self.root / 'manifest.json'}: no split '{name}' (has {sorted(self.splits)})")
        return self.splits[name]

    def shard_paths(self, name: str) -> list[Path]:
        return [self.root / s.file for s in self.split(name).shards]

    @property
    def identity(self) -> str:
        """The data's identity: a sha256 over every split's shards (name, sample count, sha256).
        Unlike the manifest file's own checksum it ignores where the data was converted from
        (``source`` holds absolute paths), so the same shards moved elsewhere keep it."""
        return shards_identity({name: [(s.file, s.num_samples, s.sha256) for s in split.shards]
                                for name, split in self.splits.items()})

    def index_paths(self, name: str) -> list[Path]:
        return [self.root / s.index for s in self.split(name).shards]

    def check_files(self, name: str) -> None:
        """Raise naming the first shard or index file of ``name`` that is missing."""
        for shard in self.split(name).shards:
            for f in (shard.file, shard.index):
                if not (self.root / f).is_file():
                    raise ManifestError(f"shard file '{self.root / f}' of split '{name}' is missing; "
                                        f"re-run dataprep for '{self.root}'")

    @classmethod
    def load(cls, root: str | Path) -> "Manifest":
        root = Path(root)
        path = root / MANIFEST_NAME
        if root.is_file():
            what = "its manifest.json" if root.name == MANIFEST_NAME else "a file"
            raise ManifestError(f"'{root}' is {what}, not a dataset directory; give the directory that holds "
                                f"{MANIFEST_NAME} (dataprep's --out)")
        if not path.is_file():
            raise ManifestError(f"'{path}' does not exist; create the dataset with `dataprep` first")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(f"'{path}' is not valid JSON ({e}); re-run the dataprep command that made "
                                f"'{root}'") from None
        return cls.from_dict(raw, root)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], root: Path) -> "Manifest":
        where = root / MANIFEST_NAME
        try:
            if raw["format_version"] != FORMAT_VERSION:
                raise ManifestError(f"{where}: format_version {raw['format_version']} is not supported "
                                    f"(this fastforec reads {FORMAT_VERSION}); re-run dataprep")
            splits = {
                name: SplitInfo(tuple(ShardInfo(file=s["file"], index=s["index"], num_samples=int(s["num_samples"]),
                                                sha256=s["sha256"],
                                                size=int(s["size"]) if s.get("size") is not None else None)
                                      for s in info["shards"]))
                for name, info in raw["splits"].items()
            }
            declared = {name: int(info["num_samples"]) for name, info in raw["splits"].items()
                        if info.get("num_samples") is not None}
            m = cls(root=root, dataset=raw["dataset"], num_classes=int(raw["num_classes"]),
                    class_names=tuple(raw["class_names"]),
                    palette=tuple(tuple(int(v) for v in c) for c in raw["palette"]),
                    ignore_index=int(raw["ignore_index"]),
                    foreground_classes=tuple(int(c) for c in raw["foreground_classes"]),
                    splits=splits, source=raw.get("source", {}), declared_counts=declared)
        except ManifestError:
            raise
        except KeyError as e:
            raise ManifestError(f"{where}: missing key {e}; re-run dataprep") from None
        except (TypeError, ValueError, AttributeError) as e:  # a value of the wrong type
            raise ManifestError(f"{where}: malformed ({type(e).__name__}: {e}); re-run dataprep") from None
        if len(m.class_names) != m.num_classes:
            raise ManifestError(f"{where}: {len(m.class_names)} class_names for num_classes={m.num_classes}")
        return m

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "foreground_classes": list(self.foreground_classes),
            "splits": {
                name: {"num_samples": info.num_samples,
                       "shards": [{"file": s.file, "index": s.index, "num_samples": s.num_samples,
                                   "sha256": s.sha256, **({"size": s.size} if s.size is not None else {})}
                                  for s in info.shards]}
                for name, info in self.splits.items()
            },
            "source": self.source,
        }
