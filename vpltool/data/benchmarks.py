"""The eight benchmarks of training-free open-vocabulary segmentation, read in the layouts mmseg's conversions write
and the references' dataset configs read (``configs/cfg_<name>.py`` of SCLIP, NACLIP, ClearCLIP, ...).

A benchmark is opened by prefixing its root with its name: ``voc21=/data/VOCdevkit/VOC2012`` (every command that
takes a dataset takes this form: `segment`, `eval`, `benchmark`). Its classes are vpltool's (index 0 =
'background'); a benchmark without a background class (VOC20, Context59, COCO-Stuff, Cityscapes, ADE20K) has a
'background' class 0 that its ground truth never holds, so it never counts in the mIoU. The stored label values are
mapped to vpltool's by :attr:`Benchmark.gt_map` when `eval` reads them (mmseg's ``reduce_zero_label``: 0 -> 255
ignore, ``v`` -> ``v - 1``, then + 1 for vpltool's class 0; COCO-Stuff and Cityscapes train ids ``v`` -> ``v + 1``).

========== ==================================== ===================================== ================= =========
benchmark  images (root-relative)               ground truth                          stored values     reduce 0
========== ==================================== ===================================== ================= =========
voc21      JPEGImages/<id>.jpg                  SegmentationClass/<id>.png            0..20, 255        no
voc20      (as voc21; ImageSets/Segmentation/val.txt)                                 0..20, 255        yes
context60  JPEGImages/<id>.jpg                  SegmentationClassContext/<id>.png     0..59             no
context59  (as context60; ImageSets/SegmentationContext/val.txt)                      0..59             yes
coco-object images/val2017/<id>.jpg             annotations/val2017/<id>_instanceTrainIds.png 0..80     no
coco-stuff images/val2017/<id>.jpg              annotations/val2017/<id>_labelTrainIds.png 0..170, 255  no
cityscapes leftImg8bit/val/<city>/<id>_leftImg8bit.png gtFine/val/<city>/<id>_gtFine_labelTrainIds.png 0..18, 255
ade20k     images/validation/<id>.jpg           annotations/validation/<id>.png       0..150            yes
========== ==================================== ===================================== ================= =========

Torch-free.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..config.presets import BACKGROUND, VOC_CLASSES, preset_for
from ..errors import VplError
from . import benchmark_classes as names
from .common import LAYOUT_FOLDERS, Dataset, Item, check_id, read_lines

BENCHMARK_ORDER = ("voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff", "cityscapes", "ade20k")
TITLES = {"voc21": "VOC21", "context60": "Context60", "coco-object": "Object", "voc20": "VOC20",
          "context59": "Context59", "coco-stuff": "Stuff", "cityscapes": "City", "ade20k": "ADE"}
IGNORE = 255


@dataclass(frozen=True)
class Benchmark:
    """One benchmark's layout and labels, as the references' ``cfg_<name>.py`` and mmseg's dataset class read it."""

    name: str
    hint: str  # the folder users point at
    images: str  # root-relative folder of the images (mmseg ``img_path``)
    masks: str  # root-relative folder of the ground truth (``seg_map_path``)
    image_suffix: str
    mask_suffix: str
    split_file: str | None  # ``ann_file`` (ids one a line); None: every image under ``images``, sorted
    classes: tuple[str, ...]  # the dataset's classes (no 'background' unless it is a scored class)
    reduce_zero_label: bool  # mmseg: stored 0 -> ignore, v -> v - 1
    convert: str  # what writes this layout

    @property
    def has_background(self) -> bool:
        return self.classes[0] == BACKGROUND

    @property
    def vpl_classes(self) -> tuple[str, ...]:
        """vpltool's classes: index 0 'background' (scored only when the benchmark has it)."""
        return self.classes if self.has_background else (BACKGROUND, *self.classes)

    @property
    def gt_map(self) -> tuple[int, ...]:
        """256 entries: stored ground-truth value -> vpltool label (255 = ignore; -1 = a value this benchmark never
        stores, refused by `eval`)."""
        lut = [-1] * 256
        lut[IGNORE] = IGNORE
        k = len(self.classes)
        for v in range(k + (1 if self.reduce_zero_label else 0)):
            if self.reduce_zero_label:
                lut[v] = IGNORE if v == 0 else v  # mmseg's v - 1, then + 1 for vpltool's background
            else:
                lut[v] = v if self.has_background else v + 1
        return tuple(lut)


_VOC_CONVERT = "the VOC2012 download as is (VOCdevkit/VOC2012)"
_CONTEXT_CONVERT = ("mmseg's tools/dataset_converters/pascal_context.py (VOC2010 + trainval_merged.json -> "
                    "SegmentationClassContext/, ImageSets/SegmentationContext/)")
_STUFF_CONVERT = ("mmseg's tools/dataset_converters/coco_stuff164k.py (stuffthingmaps_trainval2017 -> "
                  "*_labelTrainIds.png)")
BENCHMARKS: dict[str, Benchmark] = {
    "voc21": Benchmark("voc21", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                       "ImageSets/Segmentation/val.txt", (BACKGROUND, *VOC_CLASSES), False, _VOC_CONVERT),
    "voc20": Benchmark("voc20", "VOCdevkit/VOC2012", "JPEGImages", "SegmentationClass", ".jpg", ".png",
                       "ImageSets/Segmentation/val.txt", names.VOC20, True, _VOC_CONVERT),
    "context60": Benchmark("context60", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                           "ImageSets/SegmentationContext/val.txt", names.CONTEXT60, False, _CONTEXT_CONVERT),
    "context59": Benchmark("context59", "VOCdevkit/VOC2010", "JPEGImages", "SegmentationClassContext", ".jpg", ".png",
                           "ImageSets/SegmentationContext/val.txt", names.CONTEXT59, True, _CONTEXT_CONVERT),
    "coco-object": Benchmark("coco-object", "coco_stuff164k", "images/val2017", "annotations/val2017", ".jpg",
                             "_instanceTrainIds.png", None, names.COCO_OBJECT, False,
                             "the references' datasets/cvt_coco_object.py, after " + _STUFF_CONVERT),
    "coco-stuff": Benchmark("coco-stuff", "coco_stuff164k", "images/val2017", "annotations/val2017", ".jpg",
                            "_labelTrainIds.png", None, names.COCO_STUFF, False, _STUFF_CONVERT),
    "cityscapes": Benchmark("cityscapes", "cityscapes", "leftImg8bit/val", "gtFine/val", "_leftImg8bit.png",
                            "_gtFine_labelTrainIds.png", None, names.CITYSCAPES, False,
                            "mmseg's tools/dataset_converters/cityscapes.py (*_gtFine_labelTrainIds.png)"),
    "ade20k": Benchmark("ade20k", "ADEChallengeData2016", "images/validation", "annotations/validation", ".jpg",
                        ".png", None, names.ADE20K, True, "the ADEChallengeData2016 download as is"),
}
_PREFIXED = re.compile(r"^([a-z0-9-]+)=(.+)$")


def parse_benchmark_path(path: str | os.PathLike) -> tuple[str, Path] | None:
    """``'voc21=/data/VOC2012'`` -> ``('voc21', Path('/data/VOC2012'))``; None for a plain path (or a path that
    exists as written). An unknown name before ``=`` is one line."""
    text = os.fspath(path)
    m = _PREFIXED.match(text)
    if m is None or Path(text).exists():
        return None
    if m.group(1) not in BENCHMARKS:
        raise VplError(f"{text}: unknown benchmark {m.group(1)!r}; give NAME=ROOT with NAME one of "
                       f"{', '.join(BENCHMARK_ORDER)}")
    return m.group(1), Path(m.group(2)).expanduser()


def layout_problem(bench: Benchmark, root: Path) -> str | None:
    """What a root lacks to be ``bench``'s layout (one phrase), or None."""
    needed = [bench.images, bench.masks] + ([bench.split_file] if bench.split_file else [])
    missing = [p for p in needed if not (root / p).exists()]
    if not missing:
        return None
    return (f"not a {bench.name} root ({bench.hint}): no {', '.join(missing)}; it is written by {bench.convert}")


def open_benchmark(name: str, root: Path, split: str | None = None) -> Dataset:
    """The val split of benchmark ``name`` under ``root`` as a :class:`Dataset` (``kind`` = the name, ``gt_map``
    set); every image must have its ground truth.

    Raises:
        VplError: a root of another layout (one line naming what is missing and what writes it), another split, an
            image without its ground truth.
    """
    bench = BENCHMARKS[name]
    if split not in (None, "val"):
        raise VplError(f"{name}={root}: the benchmarks are scored on their val split; drop --split {split}")
    if not root.is_dir():
        raise VplError(f"{root}: not found; pass {name}=ROOT with ROOT the {bench.hint} folder")
    problem = layout_problem(bench, root)
    if problem is not None:
        raise VplError(f"{root}: {problem}")
    image_dir, mask_dir = root / bench.images, root / bench.masks
    if bench.split_file:
        listing = root / bench.split_file
        pairs = [(i, image_dir / f"{i}{bench.image_suffix}", mask_dir / f"{i}{bench.mask_suffix}")
                 for i in (check_id(i, listing) for i in read_lines(listing))]
    else:
        # mmseg lists img_path recursively (Cityscapes: one folder per city), sorted; the id drops the suffix
        found = sorted(p for p in image_dir.rglob(f"*{bench.image_suffix}") if p.is_file())
        pairs = [(p.name[: -len(bench.image_suffix)], p,
                  mask_dir / p.parent.relative_to(image_dir) / (p.name[: -len(bench.image_suffix)] + bench.mask_suffix))
                 for p in found]
        listing = image_dir
    if not pairs:
        raise VplError(f"{listing}: no {bench.name} images ({bench.image_suffix}); check the root")
    items = []
    for item_id, image, gt in pairs:
        if not image.is_file():
            raise VplError(f"{image}: image {item_id!r} of {listing} not found; restore it or use the full download")
        if not gt.is_file():
            raise VplError(f"{gt}: ground truth of {item_id!r} not found; it is written by {bench.convert}")
        items.append(Item(item_id, image, (), gt))
    classes = bench.vpl_classes
    return Dataset(name, root, "val", classes, items, preset_for(classes), gt_map=bench.gt_map)


# COCO-Stuff-164k's stuffthingmaps store a pixel's COCO id - 1 (0..181, 255 unlabelled); these 11 values are COCO
# thing ids no image uses, which have no train id
COCO_STUFF_UNUSED = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})


def coco_stuff_train_ids() -> tuple[int, ...]:
    """256 entries: stuffthingmaps value -> COCO-Stuff-164k train id (0..170; 255 stays 255), as mmseg's
    ``coco_stuff164k.py`` converts; a value it does not list (the unused ids, 182..254) is kept as it is, as there."""
    lut = list(range(256))
    used = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
    for train_id, v in enumerate(used):
        lut[v] = train_id
    return tuple(lut)


def coco_object_ids() -> tuple[int, ...]:
    """256 entries: stuffthingmaps value -> COCO-Object label, as the references' ``cvt_coco_object.py`` converts:
    the 80 thing classes (values up to 90) their train id + 1, every stuff class (values above 90) and the
    unlabelled 255 background 0, any other value kept."""
    stuff = coco_stuff_train_ids()
    lut = list(range(256))
    for v in [*(v for v in range(182) if v not in COCO_STUFF_UNUSED), 255]:
        lut[v] = stuff[v] + 1 if v <= 90 else 0
    return tuple(lut)


def convert_coco_stuff(raw_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> int:
    """Write ``<id>_labelTrainIds.png`` (COCO-Stuff) and ``<id>_instanceTrainIds.png`` (COCO-Object) next to each
    stuffthingmaps ``<id>.png`` of ``raw_dir`` (or in ``out_dir``); returns the number of maps converted. The
    layouts ``coco-stuff`` and ``coco-object`` read, made as mmseg's and the references' scripts make them."""
    import numpy as np
    from PIL import Image

    raw_dir = Path(raw_dir)
    out = Path(out_dir) if out_dir is not None else raw_dir
    out.mkdir(parents=True, exist_ok=True)
    stuff, objects = np.asarray(coco_stuff_train_ids(), np.uint8), np.asarray(coco_object_ids(), np.uint8)
    maps = sorted(p for p in raw_dir.glob("*.png") if "TrainIds" not in p.name)
    for path in maps:
        with Image.open(path) as img:
            raw = np.asarray(img)
        Image.fromarray(stuff[raw]).save(out / f"{path.stem}_labelTrainIds.png")
        Image.fromarray(objects[raw]).save(out / f"{path.stem}_instanceTrainIds.png")
    return len(maps)


def benchmark_folders(name: str, root: Path) -> list[Path]:
    """The data folders of a benchmark root (protected from outputs)."""
    bench = BENCHMARKS[name]
    return [root / bench.images, root / bench.masks]


for _name in BENCHMARKS:  # where no output may go (Dataset.folders)
    LAYOUT_FOLDERS[_name] = lambda root, name=_name: benchmark_folders(name, root)

__all__ = ["BENCHMARKS", "BENCHMARK_ORDER", "TITLES", "Benchmark", "open_benchmark", "parse_benchmark_path",
           "layout_problem", "benchmark_folders", "coco_stuff_train_ids", "coco_object_ids", "convert_coco_stuff",
           "COCO_STUFF_UNUSED"]
