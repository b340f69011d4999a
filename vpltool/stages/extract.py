"""`vpltool extract`: one frozen CLIP pass per image, cached so no later stage re-runs the frozen blocks.

Per image ``<out>/<id>.safetensors`` (kind ``features``):

* ``dense``            ``[h, w, D]`` float16 — patch tokens after the last block, ``ln_post`` then ``proj``
  (the joint image-text space; *not* normalised: their mean is CLIP-ES's image embedding).
* ``last_block_input`` ``[1 + h*w, width]`` float16 — tokens entering the last block (token 0 = CLS); `cam`
  re-runs only that block with autograd for GradCAM.            (``--cache full`` only)
* ``attention``        ``[h*w, h*w]`` float16 — mean over the ``attention_blocks - 1`` blocks before the last
  of the head-averaged attention with the CLS row/column removed; `cam` adds the last block's own map to get
  CLIP-ES's mean over the last ``attention_blocks``.           (``--cache full`` only)
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..config import CPU_BATCH, NOT_COMPARED, ExtractConfig, RuntimeConfig, check_tokens, to_params
from ..data import Dataset, Item, check_sizes
from ..device import autocast, resolve_device, resolve_precision, shard_from_env
from ..errors import ContractError, VplError, VplWarning
from ..models import ClipBackbone, ModelSpec, load_model
from ..runtime.batches import image_names, image_stage, run_image_batches
from ..runtime.numerics import run_numerics

STAGE = "extract"


ExtractSummary = io.StageSummary  # its ``complete``: every item of the whole dataset (all shards) is present


@torch.no_grad()
def encode_batch(bb: ClipBackbone, pixels: torch.Tensor, cfg: ExtractConfig, dtype: torch.dtype
                 ) -> dict[str, torch.Tensor]:
    """Frozen forward of ``[B, 3, H, W]`` pixels (``cfg.parity == 'clip-es'``: positional embedding rounded to fp16).

    Returns:
        ``dense`` [B, h, w, D], and with ``cfg.store_tokens`` also ``last_block_input`` [B, 1+hw, width] and
        ``attention`` [B, hw, hw] (see module docstring); all float32 on the model's device.
    """
    with autocast(bb.device, dtype):
        exact = cfg.parity == "clip-es"
        if cfg.store_tokens:
            tokens, attention, grid = bb.frozen_pass(pixels, cfg.attention_blocks, fp16_pos=exact, keep_maps=exact)
        else:  # the light cache keeps no attention: no map is made (nor a [B, hw, hw] buffer of zeros)
            encoded = bb.encode(pixels, stop=bb.n_blocks - 1, fp16_pos=exact)
            tokens, grid = encoded.tokens, encoded.grid
        dense = bb.dense(bb.block(bb.n_blocks - 1, tokens, grid)[0])
    out = {"dense": dense.float().reshape(len(pixels), *grid, -1)}
    if cfg.store_tokens:
        out["last_block_input"], out["attention"] = tokens.float(), attention
    return out


def extract_metadata(bb: ClipBackbone, cfg: ExtractConfig, n_attn: int) -> dict[str, Any]:
    return {"model": bb.spec.identity(), "patch_size": bb.patch_size, "width": bb.width,
            "embed_dim": bb.embed_dim, "logit_scale": bb.logit_scale, "attention_blocks": n_attn}


def run_extract(
    dataset: Dataset,
    out: str | Path,
    spec: ModelSpec,
    cfg: ExtractConfig = ExtractConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    shard: tuple[int, int] | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
) -> ExtractSummary:
    """Extract features for every item of ``dataset`` (or of one shard of it) into ``out``.

    Finished items are skipped unless ``runtime.overwrite``; ``_stage.json`` is written once every item of the
    whole dataset is present (by whichever shard finishes last). ``backbone`` reuses an already loaded model
    (it must match ``spec``).
    """
    out = Path(out)
    index, count = shard_from_env(shard)
    io.check_outputs(STAGE, {"--out": (out, "stage")}, inputs={"the dataset": dataset.root},
                     protected=dataset.folders(), overwrite=runtime.overwrite)
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    params = {**to_params(cfg), "model": spec.identity()}
    # a resume compares the dataset, not its item digest: a finished item is checked on its own (its image and
    # labels, :func:`_refuse_stale`), so that repairing an image not yet extracted does not void the others
    inputs = {"dataset": dataset.identity()}
    mine = dataset.shard(index, count).items  # (a shard out of range is refused here)
    if not runtime.overwrite:  # before the folder is touched: a refused run leaves it as it was
        _refuse_stale(out, [it for it in mine if io.feature_path(out, it.id).is_file()])

    def work(todo: list[Item], sizes: list[tuple[int, int]]) -> None:  # the sizes read before the model loads
        check_sizes(todo, sizes, runtime.loader_workers(device))
        bb = backbone or load_model("clip", spec, device)
        check_for_model(bb, cfg)
        _extract(bb, dataset, todo, sizes, out, cfg, runtime, dtype, params, on_item)

    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, shard=(index, count),
                            not_compared=NOT_COMPARED, inputs=inputs,
                            numerics=run_numerics(dtype, runtime.precision, device))
    return image_stage(folder, dataset, io.feature_path, runtime.loader_workers(device), work, on_start,
                       inputs=dataset.inputs(), classes=list(dataset.classes))


def check_for_model(bb: ClipBackbone, cfg: ExtractConfig) -> None:
    """What only the loaded model can tell: ``--attention-blocks`` above its depth is refused (it was averaged over
    every block and recorded as asked; the default, CLIP-ES's 8, means "up to 8" on a shallower model), and an
    ``--image-size`` that is not a multiple of the patch size is said to round up."""
    if cfg.attention_blocks > bb.n_blocks and cfg.attention_blocks != ExtractConfig.attention_blocks:
        raise VplError(f"--attention-blocks {cfg.attention_blocks}: {bb.spec.model} has {bb.n_blocks} blocks; give 1 "
                       f"to {bb.n_blocks}")
    if cfg.image_size and cfg.image_size % bb.patch_size:
        side = bb.input_size(cfg.image_size, cfg.image_size, cfg.image_size)[0]
        warnings.warn(VplWarning(f"--image-size {cfg.image_size} is not a multiple of {bb.spec.model}'s patch size "
                                 f"{bb.patch_size}: every input is {side}x{side} pixels"), stacklevel=2)


def _refuse_stale(out: Path, done: list[Item]) -> None:
    """Refuse to resume over finished items whose image was replaced or whose labels changed since (their file
    records both): skipping them would certify stale features. Files of older versions record no image stamp."""
    stale = []
    for item in done:
        head = io.read_header(io.feature_path(out, item.id))
        stamp = json.loads(head.get("vpltool.image_stamp", "null"))
        if (stamp is not None and stamp != item.stamp()) or json.loads(head.get("vpltool.labels", "[]")) != list(
                item.labels):
            stale.append(item)
    if stale:
        raise VplError(f"{out}: {len(stale)} finished item(s) were made from another image or other labels (first: "
                       f"{stale[0].image}): the dataset changed since; pass --overwrite to redo every item, or choose "
                       "another --out")


def _extract(bb: ClipBackbone, dataset: Dataset, todo: list[Item], sizes: list[tuple[int, int]], out: Path,
             cfg: ExtractConfig, runtime: RuntimeConfig, dtype: torch.dtype, params: dict, on_item) -> None:
    """Every image checked, then on the shared loop (:func:`vpltool.runtime.batches.run_image_batches`): same-size
    batches decoded ahead, encoded (halving on out-of-memory), cast and checked on the device, written behind."""
    meta = extract_metadata(bb, cfg, min(cfg.attention_blocks, bb.n_blocks) - 1)
    inputs = [bb.input_size(h, w, cfg.image_size, cfg.max_side) for h, w in sizes]
    for item, (h, w), (input_h, input_w) in zip(todo, sizes, inputs):  # every image, before the first forward
        check_tokens(item.image, (h, w), (input_h // bb.patch_size, input_w // bb.patch_size), bb.patch_size,
                     cfg.max_tokens)
    pre = bb.preprocessor

    def load(i: int) -> dict:  # in a loading worker: the uint8 image (resized here or on the device), nothing else
        image = io.load_image(todo[i].image)
        if tuple(image.shape[:2]) != tuple(sizes[i]):
            raise ContractError(f"{todo[i].image}: decoded to {image.shape[0]}x{image.shape[1]}, but its header said "
                                f"{sizes[i][0]}x{sizes[i][1]}; the file changed during the run: run again")
        return {"pixels": pre.loaded(image, inputs[i])}

    stored = {"dense": torch.float16, "last_block_input": io.token_dtype(cfg.parity),
              "attention": io.token_dtype(cfg.parity)}

    def run(batch: dict) -> Callable[[slice], dict]:  # on the device: a chunk of the batch -> its tensors as stored
        pixels = bb.pixels(batch["pixels"], inputs[batch["index"][0]])

        def chunk(part: slice) -> dict:
            tensors = {k: v.to(stored[k]) for k, v in encode_batch(bb, pixels[part], cfg, dtype).items()}
            # one finiteness flag per image, on the device: NaN from broken weights, inf from an fp16 overflow
            finite = torch.stack([torch.isfinite(v).flatten(1).all(1) for v in tensors.values()]).all(0)
            return {**tensors, "finite": finite}

        return chunk

    write = _writer(out, dataset, todo, sizes, inputs, params, meta)
    run_image_batches(inputs, load, run, write, bb.device, runtime, image_names(todo, sizes), on_item=on_item,
                      cpu_default=CPU_BATCH)


def _writer(out: Path, dataset: Dataset, items: list[Item], image_sizes: list[tuple[int, int]],
            input_sizes: list[tuple[int, int]], params: dict, meta: dict) -> Callable[[list[int], dict], None]:
    """Writes a chunk's files on a writer thread, ``write(index, tensors)`` for the images ``index`` of ``items``:
    every image's tensors were cast and checked on the device."""

    def write(index: list[int], tensors: dict[str, torch.Tensor]) -> None:
        for b, i in enumerate(index):
            item = items[i]
            if not bool(tensors["finite"][b]):
                raise ContractError(f"{item.image}: CLIP features contain NaN/inf (broken weights or fp16 overflow); "
                                    "try --precision fp32")
            one = {k: v[b] for k, v in tensors.items() if k != "finite"}
            io.write_features(io.feature_path(out, item.id), one, dtypes={k: v.dtype for k, v in one.items()},
                              classes=dataset.classes, params=params, checked=True, id=item.id,
                              image_size=list(image_sizes[i]), input_size=list(input_sizes[i]),
                              grid=list(one["dense"].shape[:2]), labels=list(item.labels), image_stamp=item.stamp(),
                              **meta)

    return write
