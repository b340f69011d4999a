"""Datasets as one currency: :class:`Dataset` (classes + items) read from VOC, COCO, a plain folder or a manifest.

Every stage consumes a :class:`Dataset`; ``open_dataset`` detects the on-disk layout, so users point vpltool at the
folder they downloaded. Layouts are described in docs/datasets.md. Torch-free.
"""


import json
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..config.presets import MAX_CLASSES
from ..errors import ContractError, VplError, VplWarning
from ..io import (
    check_image_side,
    feature_path,
    finished_shards,
    image_orientation,
    mask_size,
    read_header,
    read_record,
    record_stage,
    recorded_dataset_identity,
    sha256_file,
    stage_record_path,
)
from .benchmarks import BENCHMARKS, open_benchmark, parse_benchmark_path
from .coco import is_coco_root, open_coco
from .common import IMAGE_EXTS, LAYOUTS, MANIFEST_FORMAT, Dataset, Item, layout_folders
from .folder import open_folder
from .images import is_plain, open_images
from .manifest import open_manifest, write_manifest
from .voc import find_voc_root, open_voc

__all__ = ["IMAGE_EXTS", "LAYOUTS", "MANIFEST_FORMAT", "Dataset", "Item", "check_recorded", "check_sizes", "is_plain",
           "is_extract_folder", "open_dataset", "open_if_present", "open_source", "reopen",
           "open_recorded", "recorded_folders", "write_manifest"]


# --------------------------------------------------------------------------------------------- entry points
def open_dataset(
    path: str | os.PathLike, split: str | None = None, *, labels_file: str | os.PathLike | None = None,
    allow_pickle: bool = False,
) -> Dataset:  # fmt: skip
    """Open a manifest JSON, a VOC root, a COCO WSSS root, a generic folder, or plain photos (one image file or a
    folder of images: no labels, no ground truth; :mod:`vpltool.data.images`), detected from what is on disk.

    Args:
        path: the manifest file or the dataset folder.
        split: split name ('train', 'val', 'train_aug', ...); VOC and COCO default to 'train', a folder to all ids.
        labels_file: image-level labels from elsewhere: IRN ``cls_labels.npy`` (VOC), ``<split>.txt`` (COCO),
            ``.csv`` / ``.json`` (folder).
        allow_pickle: allow reading ``cls_labels.npy``, a pickle (loading one can run code).

    Raises:
        VplError: one line naming the file and the fix (unknown layout, missing image, unknown label, ...).
    """
    if (bench := parse_benchmark_path(path)) is not None:  # 'voc21=/data/VOC2012': one of the eight benchmarks
        if labels_file is not None:
            raise VplError(f"{path}: a benchmark is read with its own labels; drop --labels-file")
        return open_benchmark(bench[0], bench[1], split)
    path = Path(path).expanduser()
    labels_file = Path(labels_file).expanduser() if labels_file is not None else None
    if not path.exists():
        raise VplError(f"{path}: not found; pass a dataset folder or a manifest .json")
    if path.is_file() and path.suffix.lower() == ".json":
        if split is not None or labels_file is not None:
            raise VplError(f"{path}: a manifest holds one split and its labels; drop --split / --labels-file")
        dataset = open_manifest(path)
    elif (voc := find_voc_root(path)) is not None:
        dataset = open_voc(voc, split or "train", labels_file, allow_pickle)
    elif is_coco_root(path, labels_file):
        dataset = open_coco(path, split or "train", labels_file)
    elif (path / "images").is_dir():
        dataset = open_folder(path, split, labels_file)
    else:  # one photo, or a folder of photos: no labels, no layout (one line for anything else)
        if split is not None or labels_file is not None:  # the hint names what was given (eval has no --labels-file)
            given = " / ".join(flag for flag, value in (("--split", split), ("--labels-file", labels_file)) if value)
            raise VplError(f"{path}: plain photos have no splits and no labels (no dataset layout found: "
                           f"{'; '.join(LAYOUTS)}); drop {given}")
        dataset = open_images(path)
    _check_items(dataset)
    if labels_file is not None:
        dataset.sources = (labels_file,)
    return dataset


def is_extract_folder(path: str | os.PathLike) -> bool:
    """An `extract` output folder, finished or not (its completion record, the record of a run under way, or a
    finished shard's record), rather than a dataset: a half-made one then gets `extract`'s own message."""
    path = Path(path)
    if record_stage(path) == "extract":
        return True
    return bool(finished_shards(path)) if path.is_dir() else False


def open_source(source: str | os.PathLike | Dataset, split: str | None = None) -> tuple[Path, Dataset]:
    """A stage's source as ``(its path, its dataset)``: a :class:`Dataset` already opened (the command line opens
    it before torch loads, so a typo is answered at once), the dataset an `extract` folder was made from, or a
    dataset's path opened with ``split``."""
    if isinstance(source, Dataset):
        if split is not None and split != source.split:
            raise VplError(f"{source.root}: opened as split {source.split!r}, asked for {split!r}; open the "
                           "dataset with the split wanted")
        return Path(source.root), source
    path = Path(source)
    return path, (open_recorded(path, split) if is_extract_folder(path) else open_dataset(path, split))


def open_recorded(folder: str | os.PathLike, split: str | None = None) -> Dataset:
    """The dataset a stage folder was made from (``inputs.dataset`` of its ``_stage.json``).

    Args:
        folder: a finished stage folder.
        split: another split of the same dataset (e.g. ``val`` next to the recorded ``train``); None = recorded.

    Raises:
        VplError: no record, or the recorded dataset is gone (moved or deleted): one line saying which.
    """
    ident = recorded_dataset_identity(folder)
    record = stage_record_path(folder)
    if ident is None:
        if record.is_file():
            raise ContractError(f"{record}: names no dataset; re-run the stage that wrote {folder}")
        raise VplError(f"{folder}: no {record.name} naming its dataset; finish the stage that writes this folder")
    if not Path(ident["root"]).exists():
        raise VplError(f"{record}: its dataset {ident['root']} is gone (moved or deleted); put it back there, or "
                       "re-run the pipeline from `extract` on its new place")
    return check_recorded(folder, reopen(ident, split))


def reopen(ident: dict, split: str | None = None) -> Dataset:
    """The dataset a record's identity names (``inputs.dataset``), opened again; ``split``: another split of it
    (None = the recorded one). The recorded split is read with the label file it was read with (``--labels-file``:
    the very file, by its sha256; a pickle the user allowed then is allowed again), another split with its own."""
    split = split or ident.get("split")
    if ident.get("kind") in BENCHMARKS:
        return open_dataset(f"{ident['kind']}={ident['root']}", split)
    labels = ident.get("labels_file") if split == ident.get("split") else None
    if not isinstance(labels, dict):
        return open_dataset(ident["root"], split)
    path = Path(str(labels.get("path")))
    if not path.is_file() or sha256_file(path) != labels.get("sha256"):
        raise ContractError(f"{path}: dataset {ident['root']} was read with this label file (`vpltool extract "
                            "--labels-file`), which is gone or changed since; restore it, or re-run `vpltool extract` "
                            "and the stages after it")
    return open_dataset(ident["root"], split, labels_file=path, allow_pickle=path.suffix.lower() == ".npy")


def open_if_present(folder: str | os.PathLike) -> Dataset | None:
    """:func:`open_recorded` (the dataset checked against the folder's record) when the recorded dataset is still
    in its place, else None: for a stage that can do without the dataset (`cam` on a full cache, `learn-prototypes`)
    but must not go on from a folder whose dataset changed since."""
    ident = recorded_dataset_identity(folder) if Path(folder).is_dir() else None
    if not isinstance(ident, dict) or not Path(ident["root"]).exists():
        return None
    return open_recorded(folder)


def check_recorded(folder: str | os.PathLike, dataset: Dataset, option: str | None = None) -> Dataset:
    """``dataset`` if it is the dataset, as it was, that ``folder``'s record names; else one line and exit 2.

    Every stage that reads an earlier folder (and with it the dataset: its images, labels, masks) calls this, through
    :func:`open_recorded` or directly (``eval --data``), so that no folder is ever made from, or scored against, a
    dataset that changed since the folder was made. Compared with the record's ``inputs``
    (:meth:`Dataset.inputs`; a stage reading a folder records them again in its own):

    * the class list (``classes_sha``), always, even for another split of the dataset;
    * for the same split: the number of items, and each item's id, labels and image by name and size (``files``:
      what a moved or copied dataset keeps; the ground-truth masks are what `eval` scores against, not an input);
    * each image's bytes (``content``, a sha256 per image, computed once per process): a copy with the same ids,
      names and byte sizes but other pixels (every image flipped) is another dataset;
    * for a copy elsewhere (``eval --data``): each ground-truth mask's bytes too (``masks``): a copy whose masks
      alone differ would be scored against other ground truth;
    * at the recorded place: each image's modification time too (``items``). Digests a record of an older vpltool
      lacks are not compared.

    Args:
        option: the option that gave ``dataset`` (``--data``) when the user named it, for the message.
    """
    path = stage_record_path(folder)
    if not path.is_file():
        return dataset
    record = read_record(path)
    inputs, found = record["inputs"], dataset.inputs()
    now = found["dataset"]
    ident = inputs.get("dataset")
    if not isinstance(ident, dict):
        return dataset
    problem = _dataset_change(inputs, ident, now, found)
    if problem is None:
        return dataset
    if option is not None and ident.get("root") != now["root"]:
        raise ContractError(f"{option} {dataset.root}: not the dataset {folder} was made from ({ident.get('root')}, "
                            f"its {path.name} says): {problem}; pass that dataset or an identical copy")
    changed = _first_changed(folder, record, dataset)
    first = f" (first: {changed})" if changed is not None else ""
    raise ContractError(f"{folder}: made from {dataset.root} as it was before a change: {problem}{first}; "
                        f"{_remake(record)}, or restore the dataset")


# the inputs by which a record names an earlier stage's folder: its items were made from that folder, not from the
# dataset itself, so the fix starts where the dataset was read
_EARLIER_FOLDERS = ("features", "cams", "pseudo")


def _remake(record: dict) -> str:
    """The command that makes a folder again from the changed dataset: its own stage when it read the dataset
    itself (`segment` or `predict` of photos, `cam` on a dataset, `extract`), else `extract` and the ones after."""
    stage = record.get("stage")
    if isinstance(stage, str) and not any(k in record["inputs"] for k in _EARLIER_FOLDERS):
        return f"re-run `vpltool {stage}` and the stages after it with --overwrite"
    return "re-run `vpltool extract` and the stages after it with --overwrite"


def _dataset_change(inputs: dict, ident: dict, now: dict, found: dict) -> str | None:
    """What differs between a record's dataset ``inputs`` and ``found`` (the dataset's, :meth:`Dataset.inputs`; see
    :func:`check_recorded`), or None."""
    if ident.get("classes_sha") not in (None, now["classes_sha"]):
        return "another class list"
    if ident.get("split") != now["split"] and "manifest" not in (ident.get("kind"), now["kind"]):
        return None  # another split of the same dataset (a val split next to train): its classes alone
    if isinstance(ident.get("n_items"), int) and ident["n_items"] != now["n_items"]:
        return f"{now['n_items']} images where the record counts {ident['n_items']}"
    if "files" in inputs and inputs["files"] != found["files"]:
        return "an image's name or size, or its labels, differ under the same id"
    if "content" in inputs and inputs["content"] != found["content"]:
        return "an image's content differs under the same id, name and byte size"
    if ident.get("root") != now["root"] and "masks" in inputs and inputs["masks"] != found["masks"]:
        # a copy in its place must be identical, its ground truth too (at the recorded place, corrected masks are
        # what `eval` scores, as they are)
        return "a ground-truth mask differs under the same id"
    if ident.get("root") == now["root"] and "items" in inputs and inputs["items"] != found["items"]:
        return "an image was replaced or touched since (its modification time differs)"
    return None


def _first_changed(folder: str | os.PathLike, record: dict, dataset: Dataset) -> Path | None:
    """The first image whose stamp differs from the one its features file records (an `extract` folder: each
    file keeps its image's name, size and time); None elsewhere."""
    if record.get("stage") != "extract":
        return None
    for item in dataset.items:
        path = feature_path(folder, item.id)
        try:
            stamp = json.loads(read_header(path).get("vpltool.image_stamp", "null"))
        except (VplError, ValueError):
            continue
        if stamp is not None and stamp != item.stamp():
            return item.image
    return None


def recorded_folders(folder: str | os.PathLike) -> list[Path]:
    """The data folders of the dataset a stage folder records (:meth:`Dataset.folders`), for the output guard;
    from the layout alone (no file read) except for a manifest; empty when nothing is recorded or it is gone."""
    ident = recorded_dataset_identity(folder) if Path(folder).is_dir() else None
    if not isinstance(ident, dict) or not ident.get("root") or not Path(ident["root"]).exists():
        return []
    root = Path(ident["root"])
    labels = ident.get("labels_file")
    source = [Path(str(labels["path"]))] if isinstance(labels, dict) and labels.get("path") else []  # --labels-file
    if ident.get("kind") != "manifest":
        return [root, *layout_folders(str(ident.get("kind")), root), *source]
    try:
        return open_manifest(root).folders()
    except VplError:
        return []


def _check_items(dataset: Dataset) -> None:
    where = f"{dataset.root}" + (f" (split {dataset.split!r})" if dataset.split else "")
    if not dataset.items:
        raise VplError(f"{where}: the dataset is empty; check the split / labels file")
    if len(dataset.classes) - 1 > MAX_CLASSES:  # a uint8 mask holds 1..254 (0 background, 255 ignore)
        raise VplError(f"{where}: {len(dataset.classes) - 1} classes, more than the {MAX_CLASSES} a uint8 mask holds "
                       "(0 = background, 255 = ignore); split the class list")
    ids = Counter(item.id for item in dataset.items)
    if (dup := next((i for i, n in ids.items() if n > 1), None)) is not None:
        raise VplError(f"{where}: duplicate id {dup!r}; ids (file stems) must be unique, rename or drop one")


def check_sizes(items: Sequence[Item], sizes: Sequence[tuple[int, int]], workers: int = 1) -> None:
    """What a stage checks from the headers before it loads a model (a bad image fails in a second, not mid-run).

    Args:
        items: the images about to be processed.
        sizes: ``(H, W)`` of each item's image, as :func:`vpltool.io.image_size` reads it.
        workers: threads reading the ground-truth masks' headers.

    Raises:
        VplError: an image smaller than ``MIN_IMAGE_SIDE`` on a side (a 1x1 thumbnail: its CAM would say nothing),
            or a ground-truth mask of another size than its image (once caught only by `eval`, the last stage).
    """
    for item, (h, w) in zip(items, sizes):
        check_image_side(item.image, h, w)
    with_gt = [(item, tuple(size)) for item, size in zip(items, sizes) if item.gt is not None and item.gt.is_file()]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        gt_sizes = list(pool.map(lambda pair: mask_size(pair[0].gt), with_gt))
        turned = list(pool.map(lambda pair: image_orientation(pair[0].image), with_gt))
    for (item, size), gt, orientation in zip(with_gt, gt_sizes, turned):
        if gt != size and orientation != 1 and gt == size[::-1]:
            raise ContractError(f"{item.image}: its EXIF orientation ({orientation}) turns it to {size[0]}x{size[1]} "
                                f"when decoded, but its ground truth {item.gt} is {gt[0]}x{gt[1]}, the image as "
                                "stored: a mask carries no orientation, so it cannot be turned with it; save the "
                                "image upright (without its orientation tag), or turn the mask")
        if gt != size:
            raise ContractError(f"{item.gt}: ground truth of image {item.id!r} is {gt[0]}x{gt[1]} but the image is "
                                f"{size[0]}x{size[1]}; a GT mask must have its image's size: fix or remove the mask")
    # a mask of a turned non-square image whose size is the image's as shown was drawn on it as shown; otherwise
    # (a square image, a flip or a half turn) the sizes cannot tell
    oriented = [item for (item, size), orientation in zip(with_gt, turned)
                if orientation != 1 and (orientation not in (5, 6, 7, 8) or size[0] == size[1])]
    if oriented:
        more = f" (and {len(oriented) - 1} more)" if len(oriented) > 1 else ""
        warnings.warn(VplWarning(f"{oriented[0].image}{more}: an EXIF orientation flips or turns it when decoded, "
                                 f"while its ground truth {oriented[0].gt} carries none and is used as stored; if the "
                                 "mask was drawn on the image as stored, save the image upright (without its "
                                 "orientation tag)"), stacklevel=2)
