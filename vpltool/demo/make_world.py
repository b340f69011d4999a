"""`vpltool make-world`: write the demo world to disk as a dataset (generic folder or PASCAL VOC layout).

Scenes come from :mod:`.scenes` (seeded, byte-identical per seed); this module lays them out as files every
`vpltool` stage reads like a real dataset, and records the run in ``_stage.json`` (written last).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .. import io
from ..config.presets import BACKGROUND
from ..errors import VplError
from ..runtime.numerics import run_numerics
from .config import LAYOUTS, WorldConfig
from .scenes import CLASSES, Scene, SceneConfig, check_config, generate_scenes, split_seed

STAGE = "make-world"


def _save_image(path: Path, image: np.ndarray, fmt: str) -> None:
    with io.atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _write_text(path: Path, lines: Sequence[str]) -> None:
    with io.atomic_path(path) as tmp:
        tmp.write_text("".join(f"{line}\n" for line in lines))


def _voc_xml(sid: str, scene: Scene) -> str:
    """VOC annotation with one object per label; boxes are 1-based inclusive pixel bounds of the visible part."""
    h, w = scene.mask.shape
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = f"{sid}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for c in scene.labels:
        ys, xs = np.nonzero(scene.mask == c)
        box = {"xmin": xs.min() + 1, "ymin": ys.min() + 1, "xmax": xs.max() + 1, "ymax": ys.max() + 1}
        cut = box["xmin"] == 1 or box["ymin"] == 1 or box["xmax"] == w or box["ymax"] == h  # touches the frame
        obj = ET.SubElement(root, "object")
        for tag, value in (("name", CLASSES[c]), ("pose", "Unspecified"), ("truncated", int(cut)), ("difficult", 0)):
            ET.SubElement(obj, tag).text = str(value)
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in box.items():
            ET.SubElement(bndbox, tag).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def _write_item(out: Path, sid: str, scene: Scene, layout: str) -> None:
    if layout == "folder":
        _save_image(out / "images" / f"{sid}.png", scene.image, "PNG")
        io.write_mask(out / "masks" / f"{sid}.png", scene.mask)
    else:
        _save_image(out / "JPEGImages" / f"{sid}.jpg", scene.image, "JPEG")
        io.write_mask(out / "SegmentationClassAug" / f"{sid}.png", scene.mask)
        _write_text(out / "Annotations" / f"{sid}.xml", [_voc_xml(sid, scene)])


def _is_complete(out: Path, params: dict) -> bool:
    record = io.stage_record_path(out)
    if not record.is_file():
        return False
    old = io.read_record(record)
    return old["stage"] == STAGE and old["params"] == json.loads(json.dumps(params))


def write_dataset(
    out: str | Path, *, n_train: int, n_val: int, seed: int, cfg: SceneConfig = SceneConfig(),
    layout: str = "folder", overwrite: bool = False,
) -> Path:
    """Render a train and a val split to ``out`` and record the run in ``_stage.json`` (written last).

    Layouts:
        folder: ``images/<id>.png``, ``masks/<id>.png``, ``labels.csv`` (``id,labels``, names ';'-separated,
            ``background`` for a scene with no objects),
            ``splits/{train,val}.txt``.
        voc: ``JPEGImages/<id>.jpg`` (quality 95), ``Annotations/<id>.xml``, ``SegmentationClassAug/<id>.png``,
            ``ImageSets/Segmentation/{train,val}.txt``.
        Both: ``classes.txt`` (background first) and ``captions.json`` ({id: caption}). Ids: ``train_000012``.

    A folder already holding this exact run is returned untouched; one holding another run raises VplError
    unless ``overwrite``: then the new world is built while the last one waits beside it, and replaces it only once
    complete (:mod:`vpltool.io.beside`: a run that fails leaves the last world byte for byte; a user's notes in it
    move into the new one). Any other non-empty folder (a dataset of the user's) is refused by the output guard,
    ``overwrite`` or not.
    """
    if layout not in LAYOUTS:
        raise VplError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    check_config(cfg)
    # the CLI's bounds (WorldConfig) for a library caller too, before the folder and its lock exist
    WorldConfig(train=max(n_train, 1), val=n_val, seed=seed, size=cfg.size, layout=layout)
    out = Path(out)
    io.check_outputs(STAGE, {"OUT": (out, "stage")}, overwrite=overwrite)
    params = {"n_train": n_train, "n_val": n_val, "seed": seed, "layout": layout, **asdict(cfg)}
    if not overwrite and _is_complete(out, params):
        return out
    with io.StageFolder(out, STAGE, params, overwrite=overwrite, numerics=run_numerics(), shard=(0, 1)) as folder:
        captions, rows = {}, ["id,labels"]
        for split, n in (("train", n_train), ("val", n_val)):
            ids = [f"{split}_{i:06d}" for i in range(n)]
            for sid, scene in zip(ids, generate_scenes(n, split_seed(seed, split), cfg)):
                _write_item(out, sid, scene, layout)
                captions[sid] = scene.caption
                # an empty scene says so ('background' alone), so that the reader does not warn about a lost label
                rows.append(f"{sid}," + (";".join(CLASSES[c] for c in scene.labels) or BACKGROUND))
            _write_text(out / ("splits" if layout == "folder" else "ImageSets/Segmentation") / f"{split}.txt", ids)
        _write_text(out / "classes.txt", CLASSES[: cfg.n_classes + 1])
        io.write_json(out / "captions.json", captions)
        if layout == "folder":
            _write_text(out / "labels.csv", rows)
        folder.complete(inputs={}, count=n_train + n_val)  # the record last; the run record goes
    return out


