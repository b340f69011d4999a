"""Miniature copies of the eight benchmarks' layouts: a few tiny random images and label maps in each real layout
(the folders, file names, suffixes, split files and stored label values mmseg's conversions write), for tests and
for trying `vpltool benchmark` without the downloads. Seeded; torch-free.

The stored values are drawn from what each layout stores (VOC: 0..20 and 255 borders; Context: 0..59; ADE20K:
0..150 with 0 = 'other'; Cityscapes: train ids and 255), so each benchmark's label mapping
(:attr:`vpltool.data.benchmarks.Benchmark.gt_map`) is exercised. COCO's are raw stuffthingmaps converted to both
layouts by :func:`vpltool.data.benchmarks.convert_coco_stuff`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .benchmarks import BENCHMARK_ORDER, BENCHMARKS, COCO_STUFF_UNUSED, convert_coco_stuff

# the ids each miniature holds (the real datasets' id forms: VOC's year_number, COCO's 12 digits, Cityscapes' city_)
_IDS = {
    "voc": ["2007_000033", "2007_000042", "2007_000061"],
    "context": ["2008_000002", "2008_000007", "2008_000008"],
    "coco": ["000000000139", "000000000285", "000000000632"],
    "cityscapes": [("frankfurt", "frankfurt_000000_000294"), ("frankfurt", "frankfurt_000000_000576"),
                   ("lindau", "lindau_000000_000019")],
    "ade20k": ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"],
}
_ROOTS = {"voc21": "VOC2012", "voc20": "VOC2012", "context60": "VOC2010", "context59": "VOC2010",
          "coco-object": "coco_stuff164k", "coco-stuff": "coco_stuff164k", "cityscapes": "cityscapes",
          "ade20k": "ADEChallengeData2016"}


def _stored_values(name: str) -> tuple[list[int], bool]:
    """The values a stored label map of ``name`` may hold, and whether 255 (ignore) is among them."""
    bench = BENCHMARKS[name]
    k = len(bench.classes)
    if name in ("voc21", "voc20"):
        return list(range(21)), True
    if name in ("context60", "context59"):
        return list(range(60)), False
    if name == "ade20k":
        return list(range(151)), False
    return list(range(k)), name != "coco-object"  # coco-object: cvt_coco_object.py maps 255 to 0


def _label_map(rng: np.random.Generator, size: tuple[int, int], values: list[int], ignore: bool) -> np.ndarray:
    """Blocks of random stored values (a few classes an image, as real scenes), a 255 border when ``ignore``."""
    h, w = size
    picks = rng.choice(values, size=4, replace=False) if len(values) > 4 else np.asarray(values)
    out = np.empty((h, w), dtype=np.uint8)
    out[: h // 2, : w // 2], out[: h // 2, w // 2 :] = picks[0], picks[1]
    out[h // 2 :, : w // 2], out[h // 2 :, w // 2 :] = picks[2], picks[3]
    if ignore:
        out[0, :] = 255
    return out


def _image(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))


def make_miniature(name: str, parent: str | Path, *, seed: int = 0, size: tuple[int, int] = (40, 56)) -> Path:
    """Write benchmark ``name``'s miniature under ``parent`` (its root folder as the real one is named; two
    benchmarks that share a dataset share the root: VOC21/VOC20, Context60/59, COCO-Object/Stuff) and return the
    root. Existing files are overwritten."""
    bench = BENCHMARKS[name]
    rng = np.random.default_rng([seed, BENCHMARK_ORDER.index(name)])
    root = Path(parent) / _ROOTS[name]
    values, ignore = _stored_values(name)
    if name.startswith("coco"):
        return _coco(root, rng, size)
    family = ("voc" if name.startswith("voc") else "context" if name.startswith("context") else
              "coco" if name.startswith("coco") else name)
    ids = _IDS[family]
    (root / bench.images).mkdir(parents=True, exist_ok=True)
    (root / bench.masks).mkdir(parents=True, exist_ok=True)
    for n, entry in enumerate(ids):
        sub, item_id = entry if isinstance(entry, tuple) else ("", entry)
        shape = (size[0] + 8 * n, size[1]) if n % 2 else size  # portrait and landscape sizes
        (root / bench.images / sub).mkdir(parents=True, exist_ok=True)
        (root / bench.masks / sub).mkdir(parents=True, exist_ok=True)
        image_path = root / bench.images / sub / f"{item_id}{bench.image_suffix}"
        if not image_path.is_file():  # a shared root keeps the first benchmark's images
            _image(rng, shape).save(image_path)
        mask_path = root / bench.masks / sub / f"{item_id}{bench.mask_suffix}"
        if not mask_path.is_file():
            with Image.open(image_path) as img:
                hw = (img.height, img.width)
            Image.fromarray(_label_map(rng, hw, values, ignore)).save(mask_path)
    if bench.split_file:
        listing = root / bench.split_file
        listing.parent.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{i}\n" for i in ids))
    return root


def _coco(root: Path, rng: np.random.Generator, size: tuple[int, int]) -> Path:
    """COCO-Stuff-164k's raw stuffthingmaps ``annotations/val2017/<id>.png`` (values 0..181 that COCO uses, 255
    unlabelled), converted as mmseg's and the references' scripts convert them (:func:`convert_coco_stuff`)."""
    images, masks = root / "images" / "val2017", root / "annotations" / "val2017"
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    values = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    for n, item_id in enumerate(_IDS["coco"]):
        if (images / f"{item_id}.jpg").is_file():
            continue  # made with the other COCO benchmark
        shape = (size[0] + 8 * n, size[1]) if n % 2 else size
        _image(rng, shape).save(images / f"{item_id}.jpg")
        # a thing (<= 90) and a stuff (> 90) value at least, and the unlabelled 255 border
        picks = [int(rng.choice(values[:80])), int(rng.choice(values[80:])), *rng.choice(values, 2).tolist()]
        Image.fromarray(_label_map(rng, shape, picks, True)).save(masks / f"{item_id}.png")
    convert_coco_stuff(masks)
    return root


def make_miniatures(parent: str | Path, *, seed: int = 0) -> dict[str, Path]:
    """All eight miniatures under ``parent``: ``{benchmark: root}`` (the ``--root NAME=ROOT`` pairs)."""
    return {name: make_miniature(name, parent, seed=seed) for name in BENCHMARK_ORDER}


__all__ = ["make_miniature", "make_miniatures"]
