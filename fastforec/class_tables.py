"""Class tables (names, palette) by dataset kind, so that inference needs no dataset.

VOC's 21 classes and Cityscapes' 19 train ids are facts about the public datasets; fastforec.labels holds
them, dataprep writes them into every manifest it converts, and they are read from
there, never copied. A recipe says its kind (``recipe.dataset``); only a folder dataset of one's
own needs its manifest. A peer's file alone says its class count, which names the kind (21: VOC,
19: Cityscapes) and so the source's default recipe (:data:`DEFAULT_RECIPES`).
"""

from __future__ import annotations

from typing import Any

from fastforec.labels import CITYSCAPES_CLASS_NAMES, CITYSCAPES_PALETTE, VOC_CLASS_NAMES, VOC_PALETTE

VOC, CITYSCAPES = "voc", "cityscapes"  # the manifest's dataset names (dataprep/voc.py, cityscapes.py)
TABLES: dict[str, tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]] = {
    VOC: (VOC_CLASS_NAMES, VOC_PALETTE), CITYSCAPES: (CITYSCAPES_CLASS_NAMES, CITYSCAPES_PALETTE)}
# recipe.dataset -> the manifest's dataset kind
RECIPE_KINDS = {"voc_classic": VOC, "voc_blender": VOC, "cityscapes": CITYSCAPES}
# What a peer's file alone implies: the kind from its class count, then the source's recipe of
# the smallest labeled split (the settings are the source's for that dataset; the split only
# names the data the file was trained on, which inference does not read). {vit}: vits/vitb/vitl.
DEFAULT_RECIPES = {
    ("unimatch", VOC): "unimatch_voc_classic_92", ("unimatch", CITYSCAPES): "unimatch_cityscapes_1_16",
    ("u2pl", VOC): "voc_classic_92", ("u2pl", CITYSCAPES): "cityscapes_1_16",
    ("unimatch_v2", VOC): "unimatch_v2_{vit}_voc_classic_92",
    ("unimatch_v2", CITYSCAPES): "unimatch_v2_{vit}_cityscapes_1_16",
}


def table(kind: str) -> dict[str, Any]:
    """The dataset info of a fixed kind, as checkpoints carry it."""
    names, palette = TABLES[kind]
    return {"kind": kind, "num_classes": len(names), "class_names": list(names), "palette": [list(c) for c in palette]}


def kind_of_recipe(recipe_dataset: str) -> str | None:
    """The fixed kind of a recipe's ``recipe.dataset`` (None: a dataset of one's own)."""
    return RECIPE_KINDS.get(recipe_dataset)


def kind_of_class_count(num_classes: int) -> str | None:
    return next((kind for kind, (names, _) in TABLES.items() if len(names) == num_classes), None)


def default_recipe(source: str, kind: str, backbone: str) -> str:
    """The shipped recipe whose settings a peer's file alone is run with."""
    vit = backbone.split("_")[-1][:4]  # dinov2_vits14 -> vits
    return DEFAULT_RECIPES[(source, kind)].format(vit=vit)
