"""A manifest JSON (``vpltool.manifest/1``): one split with explicit paths, labels and masks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import IGNORE_INDEX
from ..config.presets import BACKGROUND, preset_for
from ..errors import ContractError
from ..io import files, read_json
from .common import MANIFEST_FORMAT, Dataset, Item, check_id, missing_image, warn_unlabelled


# --------------------------------------------------------------------------------------------- manifest
def open_manifest(path: Path) -> Dataset:
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ContractError(f"{path}: not a vpltool manifest (format {found!r}, expected {MANIFEST_FORMAT!r})")
    classes = data.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or classes[0] != BACKGROUND or \
            not all(isinstance(c, str) for c in classes):
        raise ContractError(f"{path}: 'classes' must list 'background' first, then the classes")
    if BACKGROUND in classes[1:] or len(set(classes)) != len(classes):  # two rows, or two classes, of one name
        raise ContractError(f"{path}: 'classes' names a class twice or 'background' after the first entry; keep "
                            "each name once, 'background' first")
    items = [_manifest_item(path, raw, len(classes)) for raw in data.get("items", [])]
    warn_unlabelled(items, path)
    return Dataset("manifest", path, data.get("split"), tuple(classes), items, preset_for(classes))


def _manifest_item(path: Path, raw: Any, n_classes: int) -> Item:
    try:
        image_id, image, labels = str(raw["id"]), path.parent / raw["image"], raw["labels"]
        gt = path.parent / raw["gt"] if raw.get("gt") else None
    except (KeyError, TypeError, ValueError) as e:
        raise ContractError(f"{path}: bad item {str(raw)[:80]} ({e!r}); items need id, image, labels") from None
    # a string is iterable: "12" once became the labels [1, 2]; a float or a bool is not a class index either
    if not isinstance(labels, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in labels):
        raise ContractError(f"{path}: item {image_id!r} has 'labels' {json.dumps(labels)[:40]}; it must be a list "
                            "of class indices (ints), e.g. [1, 3]")
    labels = tuple(labels)
    check_id(image_id, path)
    if any(not 1 <= i < n_classes for i in labels):
        raise ContractError(f"{path}: item {image_id!r} has labels {list(labels)} outside 1..{n_classes - 1}")
    if not image.is_file():
        raise missing_image(path, image_id, image.parent)
    return Item(image_id, image, labels, gt)


def write_manifest(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write ``dataset`` as a manifest JSON (paths relative to the manifest's folder), atomically.

    One item per line, so a diff of two manifests shows which images changed.
    """
    path = Path(path)
    base = path.parent.resolve()

    def rel(p: Path) -> str:
        return Path(os.path.relpath(Path(p).resolve(), base)).as_posix()

    head = {"format": MANIFEST_FORMAT, "classes": list(dataset.classes), "ignore_index": IGNORE_INDEX,
            "split": dataset.split}  # fmt: skip
    rows = [{"id": it.id, "image": rel(it.image), "labels": list(it.labels), **({"gt": rel(it.gt)} if it.gt else {})}
            for it in dataset.items]  # fmt: skip
    items = ",\n".join("    " + json.dumps(row) for row in rows)
    text = json.dumps(head, indent=2)[:-2] + f',\n  "items": [\n{items}\n  ]\n}}\n'
    with files.atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


