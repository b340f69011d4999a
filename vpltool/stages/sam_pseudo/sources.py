"""Where `sam-pseudo`'s masks come from: a folder as segment-anything's ``scripts/amg.py`` writes it, an automatic
mask generator (SAM, SAM 2), or SAM 3 prompted with the labels' names. Each is checked before anything is written
(``check``: one line, nothing loaded) and names itself by content for the folder's record."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import io
from ...config import SamPseudoConfig
from ...errors import VplError

FOLDER_FORMAT = ("one folder per image, named by its id, holding one PNG per mask of the image's size (255 inside "
                 "the mask, 0 outside), as segment-anything's scripts/amg.py writes them")


# --------------------------------------------------------------------------------------------- amg.py's folders
def _check_mask_png(path: Path, shape: tuple[int, int]) -> None:
    """A mask file's header: a PNG of ``shape``; one line otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            size, fmt = im.size, im.format
    except (OSError, UnidentifiedImageError, ValueError):
        raise VplError(f"{path}: not a readable PNG mask; write {FOLDER_FORMAT}") from None
    if fmt != "PNG" or (size[1], size[0]) != tuple(shape):
        what = f"a {fmt} file" if fmt != "PNG" else f"a {size[1]}x{size[0]} mask"
        raise VplError(f"{path}: {what} for a {shape[0]}x{shape[1]} image; write {FOLDER_FORMAT}")


def read_mask_png(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """One mask file -> ``[H, W]`` bool (255 inside, as SAM_WSSS reads ``== 255``); a file of other values than 0
    and 255, of another size, or unreadable is one line."""
    from PIL import Image, UnidentifiedImageError

    _check_mask_png(path, shape)
    try:
        with Image.open(path) as im:
            values = np.asarray(im)
    except (OSError, UnidentifiedImageError, ValueError):
        raise VplError(f"{path}: not a readable PNG mask; write {FOLDER_FORMAT}") from None
    if values.ndim != 2 or not np.isin(values, (0, 255)).all():
        raise VplError(f"{path}: holds {'colour' if values.ndim != 2 else 'values other than 0 and 255'}, not a "
                       f"binary mask; write {FOLDER_FORMAT}")
    return values == 255


@dataclass
class FolderMasks:
    """Precomputed masks: ``folder/<image id>/*.png`` (:data:`FOLDER_FORMAT`), read by the loading processes."""

    folder: Path
    in_loader = True

    def files(self, item_id: str) -> list[Path]:
        """The image's mask files, ``<id>/*.png`` sorted, a hidden dot-file (``.1.png``) skipped. An entry named
        like a mask that is no regular file (a folder, a symlink loop, a FIFO, a link to /dev/zero) is one line, as
        the photo readers say it: hashing a FIFO or /dev/zero never ends."""
        from ...data.common import is_file, refuse_special

        found = []
        with os.scandir(Path(self.folder) / item_id) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.name.lower().endswith(".png"):
                    continue
                if not is_file(entry, "mask"):
                    refuse_special(entry, "mask")
                found.append(Path(entry.path))
        return sorted(found)

    def check(self, items: Sequence[tuple[str, tuple[int, int]]]) -> dict[str, Any]:
        """Every image's folder there and every mask file read (a binary PNG of the image's size), before a model
        loads or a mask is written; returns the folder's identity by content (a digest of its files' names and
        bytes)."""
        if not Path(self.folder).is_dir():
            raise VplError(f"--masks {self.folder}: not a folder, nor sam, sam2[:CONFIG] or sam3; give "
                           f"{FOLDER_FORMAT}")
        h = hashlib.sha256()
        for item_id, shape in items:
            sub = Path(self.folder) / item_id
            if not sub.is_dir():
                raise VplError(f"{sub}: no mask folder for image '{item_id}'; --masks needs {FOLDER_FORMAT}")
            for path in self.files(item_id):
                digest = io.sha256_file(path)  # first: the read below is of these bytes
                read_mask_png(path, shape)
                h.update(f"{item_id}/{path.name}:{digest}\n".encode())
        return {"generator": "folder", "path": str(Path(self.folder).resolve()), "sha256": h.hexdigest()}

    def masks(self, item_id: str, shape: tuple[int, int]) -> np.ndarray:
        files = self.files(item_id)
        if not files:
            return np.zeros((0, *shape), bool)
        return np.stack([read_mask_png(p, shape) for p in files])


# --------------------------------------------------------------------------------------------- models
def _need_weights(cfg: SamPseudoConfig) -> str:
    if cfg.sam_weights is None:
        raise VplError(f"--masks {cfg.masks} needs the model's weights: pass --sam-weights "
                       + ("SAM 3's (a folder of Hugging Face's layout, or Meta's sam3.pt)" if cfg.prompted else
                          "FILE (SAM's released checkpoint, e.g. sam_vit_h_4b8939.pth with --sam-model vit_h; SAM "
                          "2's with sam2)"))
    return cfg.sam_weights


class AutomaticMasks:
    """SAM's or SAM 2's automatic mask generator (:func:`vpltool.models.dense.corrclip.regions.region_source`),
    run on the device by the main process: every mask it keeps, ``[N, H, W]`` bool."""

    in_loader = False

    def __init__(self, cfg: SamPseudoConfig):
        self.cfg, self.generator = cfg, None

    def _source(self, load: bool, device: str = "cpu"):
        from ...models.dense.corrclip.regions import region_source

        return region_source(self.cfg.masks, self.cfg.sam_model, _need_weights(self.cfg), load=load,
                             settings=self.cfg.settings(), method="sam-pseudo", device=device)

    def check(self, items: Sequence[tuple[str, tuple[int, int]]]) -> dict[str, Any]:
        from ...models.dense.corrclip.regions import source_record

        self._source(load=False)  # the package and the weights file's kind, before anything is written
        return source_record(self.cfg.masks, self.cfg.sam_model, self.cfg.sam_weights, self.cfg.settings())

    def load(self, device) -> None:
        self.generator = self._source(load=True, device=str(device))

    def masks(self, image: np.ndarray, labels: Sequence[int]) -> np.ndarray:
        return self.generator.masks(image)


class Sam3Masks:
    """SAM 3 (the ``sam3`` family) prompted with each image-level label's name: per label ``(k, probs)``, the mask
    probabilities ``[n, H, W]`` of the instances it keeps (above ``cfg.sam3_threshold``). Every class name is
    encoded once; an image's labels are grounded together (Meta's processor, :meth:`Sam3.ground`)."""

    in_loader = False

    def __init__(self, cfg: SamPseudoConfig, classes: Sequence[str]):
        from ...config.presets import spoken_names

        self.cfg, self.model, self.text = cfg, None, None
        self.names = ["background", *spoken_names(classes)]  # SAM 3's prompt for class id k: names[k]

    def _spec(self):
        from ...models.backbones.sam3 import Sam3Spec

        return Sam3Spec(_need_weights(self.cfg))

    def check(self, items: Sequence[tuple[str, tuple[int, int]]]) -> dict[str, Any]:
        from ...models.registry import check_model

        check_model("sam3", self._spec())
        return {"generator": "sam3", "prompts": self.names[1:]}

    def weights(self) -> dict[str, Any]:
        """SAM 3's weights by content (their files' names and digests, their layout) and where they were read: the
        record's ``sam_weights`` input, so that a resume with the same bytes by another path is the same run, and
        one whose bytes changed is named as such (not as other parameters, nor as other masks)."""
        from ...models.backbones.sam3 import sam3_identity

        return {**sam3_identity(self._spec()), "path": str(Path(_need_weights(self.cfg)).expanduser().resolve())}

    def load(self, device) -> None:
        from ...models.registry import load_model

        self.model = load_model("sam3", self._spec(), device)
        self.text = self.model.encode_text(self.names[1:])

    def masks(self, image: np.ndarray, labels: Sequence[int]) -> list[tuple[int, np.ndarray]]:
        from ...models.backbones.sam3 import BUCKET

        if not labels:
            return []
        h, w = image.shape[:2]
        encoded = self.model.encode_image(self.model.prepare(image))
        concepts = []
        for start in range(0, len(labels), BUCKET):
            rows = [k - 1 for k in labels[start:start + BUCKET]]
            grounding = self.model.ground(encoded, self.text.select(rows))
            concepts += self.model.concepts(grounding, (h, w), self.cfg.sam3_threshold)
        return [(int(k), c.masks.float().cpu().numpy()) for k, c in zip(labels, concepts)]


def mask_source(cfg: SamPseudoConfig, classes: Sequence[str]):
    """The source ``cfg.masks`` names: :class:`Sam3Masks`, :class:`AutomaticMasks` or :class:`FolderMasks`."""
    if cfg.prompted:
        return Sam3Masks(cfg, classes)
    if cfg.generator():
        return AutomaticMasks(cfg)
    return FolderMasks(Path(cfg.masks).expanduser())


__all__ = ["FOLDER_FORMAT", "read_mask_png", "FolderMasks", "AutomaticMasks", "Sam3Masks", "mask_source"]
