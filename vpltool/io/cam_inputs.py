"""What `crf` and `sam-pseudo` read of a `cam` folder: its items checked against its dataset, and each image with its
CAMs at the image's size."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import ContractError
from .images import load_image
from .kinds import CamMaps, cam_path, item_ids, read_cam


def cam_items(cams_dir: str | os.PathLike, dataset) -> tuple[list[str], dict[str, Any]]:
    """The ids of a `cam` folder's files and its dataset's items by id (:meth:`vpltool.data.Dataset.by_id`); a file
    of an image the dataset lacks is one line (the dataset changed after `cam`)."""
    ids, items = item_ids(cams_dir), dataset.by_id()
    unknown = [i for i in ids if i not in items]
    if unknown:
        raise ContractError(f"{cam_path(cams_dir, unknown[0])}: image '{unknown[0]}' is not in dataset "
                            f"{dataset.root} (split {dataset.split}); was the dataset changed after `cam`?")
    return ids, items


def read_cam_item(cams_dir: str | os.PathLike, item_id: str, image_path: str | os.PathLike, labels: Sequence[int],
                  classes: Sequence[str]) -> tuple[np.ndarray, CamMaps]:
    """One image (``[H, W, 3]`` uint8 RGB) and its CAMs (:func:`read_cam`; ``labels``: the item's image-level
    labels, which the file's must be), as `crf` and `sam-pseudo` read them; ContractError when they or the sizes
    differ."""
    maps = read_cam(cam_path(cams_dir, item_id), classes, labels)
    image = load_image(image_path)
    if image.shape[:2] != maps.cams.shape[1:]:
        raise ContractError(
            f"{maps.file.path}: CAMs are for a {maps.cams.shape[1]}x{maps.cams.shape[2]} image but {image_path} is "
            f"{image.shape[0]}x{image.shape[1]}; the image changed after `cam`: re-run `vpltool cam`"
        )
    return image, maps


__all__ = ["cam_items", "read_cam_item"]
