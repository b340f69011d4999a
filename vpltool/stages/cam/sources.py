"""Where `cam` gets each image's tokens: an `extract` folder's cache, or a dataset and a frozen pass here.

* :class:`FromFeatures`: an `extract` folder. ``--cache full`` holds the last block's input and the mean attention
  of the blocks before it; ``--cache light`` holds only the dense features, so the frozen blocks run again here
  (batched, from pixels the loading workers make) and are rounded as the full cache stores them, so both give the
  same maps.
* :class:`FromDataset`: a dataset given straight to `cam`: one process, one frozen pass per image, nothing cached.

Both plan from headers alone (every image or features file is checked before the model loads) and load one image
in a DataLoader worker (:meth:`FromFeatures.load`), for the shared pipeline of :mod:`vpltool.runtime.batches`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ... import io
from ...config import CAM_ATTENTION_BLOCKS, CamConfig, ExtractConfig, check_tokens, from_params
from ...data import Dataset, open_if_present, open_recorded, recorded_folders
from ...device import autocast
from ...errors import ContractError, VplError
from ...models import ClipBackbone, ModelSpec
from ...runtime.batches import header_sizes
from .caa import needs_image
from .gradcam import ImageTokens


def cached_tokens(bb: ClipBackbone, path: Path, classes, image: np.ndarray | None,
                  extract_cfg: ExtractConfig) -> ImageTokens:
    """One image's tokens from its `extract` file; a light cache is completed from the image."""
    feats = io.read_features(path, classes=classes)
    check_tokens(path, feats.image_size, feats.grid, bb.patch_size, extract_cfg.max_tokens, stage="cam")
    if feats.last_block_input is None:  # a light cache: run the frozen blocks here
        if image is None:
            raise VplError(f"{path}: no cached tokens and image '{feats.id}' not found; restore the dataset or "
                           "re-run extract with --cache full")
        bb.fill_tokens(feats, image, extract_cfg.attention_blocks, extract_cfg.parity)
    n_prev = int(feats.file.meta("attention_blocks", 0))
    if feats.attention is not None and feats.attention.shape[-1] != feats.grid[0] * feats.grid[1]:
        raise ContractError(f"{path}: attention does not match the patch grid; re-run extract")
    return ImageTokens(feats.id, tuple(int(c) for c in feats.labels), feats.image_size, feats.grid,
                       feats.last_block_input, feats.attention, n_prev, str(path))


@torch.no_grad()
def image_tokens(bb: ClipBackbone, item, image: np.ndarray, cfg: CamConfig, dtype: torch.dtype) -> ImageTokens:
    """One image's tokens by running the frozen blocks now (a dataset given to `cam` directly; nothing cached).

    Sizes follow CLIP-ES (each side rounded up to the patch size); fp32, or ``dtype`` autocast (bf16 where it pays).
    """
    size = bb.input_size(*image.shape[:2])
    check_tokens(item.image, image.shape[:2], (size[0] // bb.patch_size, size[1] // bb.patch_size), bb.patch_size,
                 ExtractConfig.max_tokens, stage="cam")
    with autocast(bb.device, dtype):
        exact = cfg.parity == "clip-es"
        blocks = cfg.attention_blocks or CAM_ATTENTION_BLOCKS
        tokens, attention, grid = bb.frozen_pass(bb.preprocess(image, size)[None], blocks, fp16_pos=exact,
                                                 keep_maps=exact)
    n_prev = min(blocks, bb.n_blocks) - 1
    return ImageTokens(item.id, tuple(item.labels), tuple(image.shape[:2]), grid, tokens[0].float(),
                       attention[0].float() if n_prev else None, n_prev, str(item.image))



def attention_blocks_for(cfg: CamConfig, extract_cfg: ExtractConfig, features: Path) -> int:
    """The blocks CAA averages on an `extract` folder: the folder's own (``--attention-blocks`` of extract, in its
    record) unless cam asks for 1 (the last block's map alone, which needs no cache); any other value cannot be
    served from the cache, so it is refused with the fix before the model loads."""
    made = extract_cfg.attention_blocks
    wanted = cfg.attention_blocks
    if wanted is None or wanted in (1, made):
        return made if wanted is None else wanted
    raise VplError(f"cam --attention-blocks {wanted}: {features} was extracted with --attention-blocks {made}, so CAA "
                   f"can average {made} blocks (drop the option) or 1 (the last block alone); for {wanted}, re-run "
                   f"extract with --attention-blocks {wanted}")


class FromFeatures:
    """`cam` on an `extract` folder: labels, tokens (or the light cache's dense only) and model come from it."""

    def __init__(self, features: Path, prototypes, cfg: CamConfig, at: ModelSpec | None = None):
        self.record = io.read_stage_record(features, "extract")
        self.features, self.classes = features, self.record["classes"]
        self.model = io.recorded_model(self.record, features)
        self.protos = io.read_prototypes(prototypes, classes=self.classes, model=self.model)
        # its weights are still those it recorded (where they lie now: ``at``, a renamed folder given, or the
        # prototypes' place, made after the rename with text-prototypes --model)
        self.spec = ModelSpec.from_identity(self.model, features, at, also=[self.protos.model])
        self.extract_cfg = from_params(ExtractConfig, self.record["params"], io.stage_record_path(features))
        if cfg.parity == "clip-es" and self.extract_cfg.parity != "clip-es":
            raise VplError(f"{features}: extracted without --parity clip-es, so `cam --parity clip-es` cannot match "
                           "CLIP-ES; re-run extract with --parity clip-es")
        self.ids = io.item_ids(features)
        self.need_images = needs_image(cfg) or not self.extract_cfg.store_tokens
        self.data = open_if_present(features)  # a dataset changed since extract is refused, needed or not
        self.inputs = {"features": io.sha256_file(io.stage_record_path(features)), **io.dataset_inputs(self.record)}

    def dataset(self):
        return self.data if self.data is not None else open_recorded(self.features)

    def made_from(self) -> list[tuple]:
        """``(path, numerics, command)`` of the inputs, for :func:`vpltool.io.check_numerics`."""
        return [*io.folder_made(self.features, self.record, "extract"), self.protos.made()]  # each file's own too

    def folders(self):
        return recorded_folders(self.features)

    def tokens(self, bb, item_id, item, image, dtype) -> ImageTokens:
        return cached_tokens(bb, io.feature_path(self.features, item_id), self.classes, image, self.extract_cfg)

    def plan(self, bb: ClipBackbone, ids: list[str], items: dict, workers: int) -> list[dict]:
        """Per image, from its file's header alone: the grid (the batch key), sizes and labels."""
        out = []
        for item_id in ids:
            path = io.feature_path(self.features, item_id)
            head = io.features_meta(path)
            check_tokens(path, head["image_size"], head["grid"], bb.patch_size, self.extract_cfg.max_tokens,
                         stage="cam")
            out.append({**head, "id": item_id, "path": path, "item": items.get(item_id)})
        return out

    def load(self, entry: dict, pre, need_image: bool, batched: bool) -> dict:
        """What the pass needs of one image, and nothing more (every byte crosses from a loading worker): the cached
        tokens as stored (fp16; the device makes them float32), or (light cache) the image, uint8, resized here or
        on the device (:meth:`Preprocess.loaded`), to recompute them; and the image itself where the refinement or
        the overlays need it."""
        light = batched and not self.extract_cfg.store_tokens
        image = _image_of(entry, need_image or light)
        out = {"image": image} if need_image else {}
        if not batched:
            return out
        if light:
            out["pixels"] = pre.loaded(image, entry["input_size"])
        else:
            f = io.read_feature_tensors(entry["path"], self.classes, ("last_block_input", "attention"),
                                        need_tokens=True)
            out.update(tokens=f["last_block_input"], attention=f["attention"])
        return out


class FromDataset:
    """`cam` straight from a dataset: one process, one frozen pass per image, no cache written."""

    def __init__(self, root: Path | Dataset, split: str | None, prototypes, cfg: CamConfig,
                 at: ModelSpec | None = None):
        from ...data import open_source

        _, self.data = open_source(root, split)  # a Dataset given is taken as it is
        self.classes = list(self.data.classes)
        self.protos = io.read_prototypes(prototypes, classes=self.classes)
        self.model = self.protos.model
        self.spec = ModelSpec.from_identity(self.model, self.protos.path, at)
        self.ids = [it.id for it in self.data.items]
        self.need_images, self.cfg = True, cfg
        self.inputs = self.data.inputs()

    def dataset(self):
        return self.data

    def made_from(self) -> list[tuple]:
        return [self.protos.made()]

    def folders(self):
        return self.data.folders()

    def tokens(self, bb, item_id, item, image, dtype) -> ImageTokens:
        return image_tokens(bb, item, image, self.cfg, dtype)

    def plan(self, bb: ClipBackbone, ids: list[str], items: dict, workers: int) -> list[dict]:
        """Per image, from its header alone (every image checked before the first forward): sizes and labels."""
        out = []
        sizes = header_sizes([items[i].image for i in ids], workers)
        for item_id, size in zip(ids, sizes):
            item = items[item_id]
            input_size = bb.input_size(*size)
            grid = (input_size[0] // bb.patch_size, input_size[1] // bb.patch_size)
            check_tokens(item.image, size, grid, bb.patch_size, ExtractConfig.max_tokens, stage="cam")
            out.append({"id": item_id, "item": item, "labels": tuple(item.labels), "image_size": size,
                        "input_size": input_size, "grid": grid, "n_prev": min(self.cfg.attention_blocks,
                                                                               bb.n_blocks) - 1})
        return out

    def load(self, entry: dict, pre, need_image: bool, batched: bool) -> dict:
        """The image resized, uint8 (batched), and the image itself where the stage needs it."""
        image = _image_of(entry, True)
        return {**({"image": image} if need_image else {}),
                **({"pixels": pre.loaded(image, entry["input_size"])} if batched else {})}


def _image_of(entry: dict, need: bool) -> np.ndarray | None:
    if not need:
        return None
    if entry["item"] is None:
        raise VplError(f"{entry.get('path', entry['id'])}: no cached tokens and image '{entry['id']}' not found; "
                       "restore the dataset or re-run extract with --cache full")
    image = io.load_image(entry["item"].image)
    if tuple(image.shape[:2]) != tuple(entry["image_size"]):
        raise ContractError(f"{entry['item'].image}: is {image.shape[0]}x{image.shape[1]}, but its features were "
                            f"made from a {entry['image_size'][0]}x{entry['image_size'][1]} image; the dataset "
                            "changed since extract: re-run extract")
    return image



@torch.no_grad()
def frozen_tokens(bb: ClipBackbone, pixels: torch.Tensor, src, cfg: CamConfig, dtype: torch.dtype):
    """``(last_block_input [B, 1+hw, width], attention [B, hw, hw], n_prev)`` for a batch of pixels: from a light
    cache rounded as `extract`'s full cache stores them (the same maps with and without cached tokens)."""
    cached = isinstance(src, FromFeatures)
    blocks = src.extract_cfg.attention_blocks if cached else cfg.attention_blocks
    with autocast(bb.device, dtype):
        tokens, attention, _ = bb.frozen_pass(pixels, blocks)
    tokens, attention = tokens.float(), attention.float()
    if cached:
        kind = io.token_dtype(src.extract_cfg.parity)
        tokens, attention = tokens.to(kind).float(), attention.to(kind).float()
    return tokens, attention, min(blocks, bb.n_blocks) - 1


