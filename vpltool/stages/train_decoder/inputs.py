"""What a train-decoder run reads, depends on and records, checked before any model loads: its training pairs
(a `crf` folder's masks, or the dataset's image labels for online masks), the prototypes without the held-out classes
and the prompt recipe `predict --classes` encodes new names with, the inputs by content that its checkpoints and
decoder record, and its run folder (the refusal to clobber a run, the checkpoint to resume from)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from ... import io
from ...config import MAX_TOKENS, DecoderConfig, presets
from ...data import open_dataset
from ...errors import VplError
from ...models import ModelSpec
from ...runtime.ranks import prepare_run_folder

CHECKPOINT = "checkpoints/last.safetensors"
# every file the run writes in --out, which --overwrite deletes first: each is declared to the output guard, so that
# no input of the run may be one of them (io.check_outputs)
WRITES = {"--out decoder": "decoder.safetensors", "--out log": "log.jsonl", "--out curve": "curve.png"}


# the split names of a dataset's evaluation images: a decoder trained on their masks is scored on what it learned
HELD_OUT_SPLITS = ("val", "validation", "test")


def warn_held_out(pseudo_dir: Path, dataset_id: dict[str, Any]) -> None:
    """One warning when the masks are of a split named like the evaluation's (:data:`HELD_OUT_SPLITS`): trained on
    without a word, its scores on that split would be a training score."""
    import warnings

    from ...errors import VplWarning

    split = dataset_id.get("split")
    if isinstance(split, str) and split.lower() in HELD_OUT_SPLITS:
        warnings.warn(VplWarning(f"{pseudo_dir}: pseudo masks of the dataset's {split!r} split, whose images a "
                                 f"decoder is scored on: its scores there would measure its training images; train on "
                                 "the masks of the training split (`vpltool extract --split train`, then cam and crf)"),
                      stacklevel=2)


def training_pairs(dataset, pseudo_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(id, image, mask)`` of every mask the folder's record lists (a missing one is an error, never skipped)."""
    ids = set(io.recorded_ids(pseudo_dir, io.MASK_SUFFIX))
    pairs = [(it.id, it.image, io.mask_path(pseudo_dir, it.id)) for it in dataset.items if it.id in ids]
    if not pairs:
        raise VplError(f"{pseudo_dir}: no pseudo mask matches an image of its dataset; re-run `vpltool crf`")
    return pairs


def online_dataset(path: Path, split: str | None, cfg: DecoderConfig):
    """The dataset WeCLIP's online masks train on: refused when ``path`` is a stage folder (online masks take no
    pseudo masks) or when no image has a label."""
    record = io.stage_record_path(path)
    stage = json.loads(record.read_text()).get("stage") if record.is_file() else None
    if stage is not None and stage != "make-world":  # a crf / predict / extract ... folder, not a dataset
        article = "an" if stage[:1] in "aeiou" else "a"  # "an `extract` folder"
        raise VplError(f"{path}: {article} `{stage}` folder; --recipe {cfg.recipe} makes its pseudo masks online from "
                       "image labels and takes none: give the dataset itself (the folder or manifest `extract` read)")
    dataset = open_dataset(path, split or "train")
    if not any(it.labels for it in dataset.items):
        raise VplError(f"{path}: no image of split {split or 'train'!r} has a class label; online pseudo masks need "
                       "image-level labels")
    return dataset


def prepare_out(out_dir: Path, resume: bool, overwrite: bool, rank: int, world: int) -> Path | None:
    """Refuse to clobber a finished or interrupted run; the checkpoint to resume from (None = fresh start)
    (:func:`vpltool.runtime.ranks.prepare_run_folder`)."""
    ckpt, final = out_dir / CHECKPOINT, out_dir / "decoder.safetensors"
    return prepare_run_folder(out_dir, ckpt, [
        (ckpt, "holds an interrupted run; pass --resume to continue or --overwrite"),
        (final, "holds a trained decoder; pass --overwrite or choose another --out"),
    ], [ckpt, *(out_dir / name for name in WRITES.values())], resume=resume, overwrite=overwrite, rank=rank,
        world=world)


def check_crop(crop: int, patch: int | None) -> None:
    """``--crop-size``: a multiple of the CLIP's patch size, and at most ``MAX_TOKENS`` patch tokens, the rule
    extract and predict apply to an image (:func:`vpltool.config.check_tokens`: attention memory grows with its
    square; 4096 pixels at patch 16 asked for 549 GB). ``patch`` None (unknown before the model loads): no check."""
    if patch is None:
        return
    if crop % patch:
        raise VplError(f"--crop-size {crop} is not a multiple of the CLIP patch size {patch}")
    side = crop // patch
    if side * side > MAX_TOKENS:
        raise VplError(f"--crop-size {crop}: {side * side:,} patch tokens ({side}x{side} at patch {patch}), above the "
                       f"{MAX_TOKENS} the stages run the frozen CLIP on (attention memory grows with its square); give "
                       f"--crop-size {patch * math.isqrt(MAX_TOKENS)} or less")


def drop_classes(protos: io.Prototypes, held_out: tuple[str, ...]) -> io.Prototypes:
    """The prototypes without the rows of the held-out classes; the other classes renumbered 1..C' in order."""
    kept = [c for c in protos.classes if c not in held_out]
    new_index = {c: i for i, c in enumerate(kept)}
    old_to_new = torch.tensor([new_index.get(c, -1) for c in protos.classes])
    new_class = old_to_new[protos.row_class]
    keep = new_class >= 0
    names = [n for n, k in zip(protos.row_names, keep.tolist()) if k]
    return io.Prototypes(protos.vectors[keep], new_class[keep], names, classes=kept,
                         temperature=protos.temperature, source=protos.source, model=protos.model,
                         params=protos.params, path=protos.path)


def prompt_recipe(protos: io.Prototypes) -> dict[str, Any] | None:
    """The templates and background words of the text prototypes behind ``protos`` (themselves, or for vision
    prototypes the text file they were learned from, when it is still there); None when not recorded."""
    params = protos.params
    if protos.source != "text":
        path = (params.get("text_prototypes") or {}).get("path")
        if not path or not Path(path).is_file():
            return None
        params = io.read_prototypes(path).params
    spec = params.get("templates") or ""
    named = {"clip-es": [presets.CLIP_ES_TEMPLATE], "imagenet": list(presets.IMAGENET_TEMPLATES)}
    # files older than the recorded list: the named sets and a literal template can be rebuilt, a file cannot
    templates = params.get("template_list") or named.get(spec) or ([spec] if "{}" in spec else None)
    if not templates or "background_words" not in params:
        return None
    return {"templates": list(templates), "background_words": list(params["background_words"]),
            "synonyms": bool(params.get("synonyms", True)), "parity": params.get("parity", "none")}


def run_inputs(pseudo_dir: Path, pairs: list[tuple], protos: io.Prototypes, dataset, dataset_id: dict[str, Any],
            cfg: DecoderConfig) -> dict[str, Any]:
    """What the run depends on, by content (:mod:`vpltool.io.inputs`), as its checkpoints and decoder record it: the
    pseudo masks (the folder's record and every mask's bytes) or, online, the dataset's images and labels
    (:meth:`vpltool.data.Dataset.content_sha`); the prototypes; the weights of the CLIP (when a file) and of
    WeCLIP+'s DINO."""
    from ...data.common import content_sha

    if cfg.pseudo == "online":
        pseudo: Any = "online"
    else:
        masks = io.files_digest([item_id, content_sha(mask)] for item_id, _, mask in pairs)
        pseudo = {"path": str(pseudo_dir.resolve()), "sha256": io.sha256_file(io.stage_record_path(pseudo_dir)),
                  "masks": masks}
    inputs = {"pseudo": pseudo, "prototypes": io.file_identity(protos.path, source=protos.source),
              "dataset": dataset_id}
    if cfg.pseudo == "online":
        inputs["content"] = dataset.content_sha()  # every image's bytes and labels
    spec = ModelSpec.from_identity(protos.model, protos.path)
    if spec.folder is None and Path(spec.pretrained).is_file():
        inputs["clip_weights"] = io.weights_identity(spec.pretrained)
    if cfg.dino_model:
        inputs["dino_weights"] = io.weights_identity(cfg.dino_weights)
    return inputs


__all__ = ["CHECKPOINT", "WRITES", "training_pairs", "online_dataset", "prepare_out", "check_crop", "drop_classes",
           "prompt_recipe", "run_inputs"]
