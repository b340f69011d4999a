"""Plain images: one photo, or a folder of photos with no labels, no masks and no layout (``segment``'s input).

A source like the others: :func:`open_images` gives a :class:`~vpltool.data.common.Dataset` whose classes are
background alone (the class names come from ``--classes``) and whose items have no labels and no ground truth, so
`segment` reads it as it reads a VOC root, `eval` says it cannot be scored and `report` shows its images and masks.
Only the folder's own files are read (not its sub-folders); the photos are never written (the folder is protected
like a dataset's root; a single photo, the file alone). Torch-free.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..config.presets import BACKGROUND
from ..errors import VplError, VplWarning
from ..io import note_source
from .common import IMAGE_EXTS, LAYOUT_FOLDERS, LAYOUTS, Dataset, Item, index_files

IMAGE = "image"  # Dataset.kind of one photo (its root is the file)
IMAGES = "images"  # Dataset.kind of a folder of photos (its root is the folder)
PLAIN = (IMAGE, IMAGES)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTS


def open_images(path: Path) -> Dataset:
    """One image file, or the image files directly inside a folder (by name; the id is the file stem).

    Raises:
        VplError: one line naming ``path`` and the fix: a file that is no image by its extension, a folder with no
            image in it (the image extensions vpltool reads: ``IMAGE_EXTS``), two files of one stem.
    """
    if path.is_file():
        if not is_image_file(path):
            raise VplError(f"{path}: not an image (vpltool reads {', '.join(IMAGE_EXTS)}) and not a manifest .json; "
                           "pass a photo, a folder of photos or a dataset")
        note_source(path, "pass another photo")  # a fix about it: not "remove it from the split"
        return Dataset(IMAGE, path, None, (BACKGROUND,), [Item(path.stem, path, ())], None)
    images = index_files(path, IMAGE_EXTS, strict=True)
    if not images:
        entries = sorted((e.name, e.is_dir()) for e in os.scandir(path) if not e.name.startswith("."))
        folders, others = [n for n, d in entries if d], [n for n, d in entries if not d]
        held = [_listed(folders, "sub-folder"), _listed(others, "other file")]
        what = f"holds {' and '.join(h for h in held if h)}" if entries else "is empty"
        fix = "its sub-folders are not read: pass the one that holds the photos" if folders else \
            "pass a folder of photos"
        raise VplError(f"{path}: {what}: no image ({', '.join(IMAGE_EXTS)}) and no dataset layout; {fix}, or "
                       f"{'; '.join(LAYOUTS)}")
    note_source(path, "move it out of the folder")
    _warn_skipped(path, images)
    items = [Item(stem, images[stem], ()) for stem in sorted(images)]
    return Dataset(IMAGES, path, None, (BACKGROUND,), items, None)


def _warn_skipped(path: Path, images: dict[str, Path]) -> None:
    """A warning naming the folder's other files (no image by their extension: a .heic, a .txt), so that "2 masks"
    for a folder of 3 files says why."""
    kept = {p.name for p in images.values()}
    others = sorted(e.name for e in os.scandir(path)
                    if not e.name.startswith(".") and e.name not in kept and e.is_file())
    if others:
        one = len(others) == 1
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        warnings.warn(VplWarning(f"{path}: {len(others)} file{'' if one else 's'} skipped ({shown}), not an image "
                                 f"vpltool reads ({', '.join(IMAGE_EXTS)}); convert {'it' if one else 'them'} to one "
                                 f"of these to segment {'it' if one else 'them'} too"), stacklevel=2)


def _listed(names: list[str], what: str) -> str:
    """``2 sub-folders (a, b)``: how many ``names`` of ``what`` and the first three; empty for none."""
    if not names:
        return ""
    more = ", ..." if len(names) > 3 else ""
    return f"{len(names)} {what}{'s' if len(names) != 1 else ''} ({', '.join(names[:3])}{more})"


def is_plain(dataset: Dataset) -> bool:
    """Photos alone (:func:`open_images`): no class list of their own and no ground truth."""
    return dataset.kind in PLAIN


# a photo's folder is not a dataset's: outputs may lie beside it (only the file itself is protected)
LAYOUT_FOLDERS[IMAGE] = lambda root: []
LAYOUT_FOLDERS[IMAGES] = lambda root: []

__all__ = ["IMAGE", "IMAGES", "PLAIN", "is_image_file", "is_plain", "open_images"]
