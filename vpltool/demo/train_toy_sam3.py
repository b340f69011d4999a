"""`vpltool train-toy-sam3`: a toy SAM 3, trained as SAM 3's detector trains, on a world's train masks and class names.

``--dense sam3``, ``--dense activesam`` (and the ``sam3`` pseudo masks) for the demo world: transformers' ``Sam3Model``
at a toy configuration derived from :func:`vpltool.models.backbones.sam3_weights.tiny_config` (:func:`toy_config`:
CLIP's 49408-token vocabulary kept, so the real tokenizer serves), trained from scratch on a CPU and written in
Hugging Face's layout (:func:`~vpltool.models.backbones.sam3_files.write_hf`: ``config.json`` + ``model.safetensors``,
and the record ``model.json``), so that the existing path loads it unchanged: ``--sam3-weights
vpltool/assets/toy-sam3``. Training calls the family's own forward (:class:`vpltool.models.backbones.sam3.Sam3`'s
``prepare``, ``encode_image``, ``encode_text``, ``ground``: Meta's processor's calls, the empty geometric prompt's
token included) with gradients on, so the toy learns exactly the computation that inference runs.

The data: the train split of a `make-world` folder (the shipped toy: world seed 20's, never the demo world's scenes,
never a val split). Every image is shown with every class name as a concept prompt (the class file the world
uses, ``classes.txt``, background excluded): a class present in the image is a positive prompt whose targets are its
instances (8-connected components of the class in the exact masks, :func:`.train_toy_sam.instances`), an absent
class a negative prompt (no targets, presence 0). The ignore band (255) counts in no loss.

SAM 3's recipe, what is reproduced (facts read from Meta's ``sam3/train/matcher.py``, ``loss/loss_fns.py`` and the
fine-tuning configuration's weights):

* **Matching.** Per (image, positive prompt), queries to instances by Hungarian matching
  (``scipy.optimize.linear_sum_assignment``) on the focal-form class cost (alpha 0.25, gamma 2) x 2, the box L1 x 5
  and the negative GIoU x 2 (Meta's ``BinaryHungarianMatcherV2``, ``focal: true``; no mask cost, as Meta's).
* **Losses**, each normalised by the number of target instances in the batch: sigmoid focal loss on the query scores
  of positive prompts (matched 1, the rest 0; x 20), none on a negative prompt's queries (Meta's ``keep_loss``: its
  presence carries it); the presence head's BCE on every prompt (x 20); box L1 (x 5) and GIoU (x 2) on matched
  queries (``cx, cy, w, h`` in [0, 1]); mask sigmoid focal (x 200) + dice (x 10) on matched queries, the logits
  resized to the image as :meth:`~vpltool.models.backbones.sam3.Sam3.concepts` resizes them; the semantic head's BCE
  (x 20) + dice (x 30) against the union of the prompt's class pixels, on the positive prompts alone, normalised by
  their number (Meta's ``SemanticSegCriterion`` with ``presence_head``: on a negative prompt the presence speaks; a
  first run that also asked every negative prompt's map to be empty everywhere had that dice term dominate the loss).
* **Optimiser.** AdamW (weight decay 0.1 on matrices, none on biases and norms), gradient-norm clip 0.1, peak lr
  8e-4 (Meta's transformer lr) for every weight, linear warmup; the DETR's dropout 0.1 on (``train()`` mode). Meta
  decays by an inverse square root with a cooldown and gives the vision and text backbones smaller lrs (2.5e-4,
  5e-5, layer-wise decay): those protect pretrained backbones, which the toy has not, so it uses one lr and a cosine
  decay to 0 over its short run.

What is not, and why: no pretraining (Meta's Perception Encoder and its text tower; the toy starts from scratch as
the toy CLIP, DINO and SAM do, so its text tower only learns the world's eight words), no data engine (the world's
masks are exact and exhaustive, so there are no pseudo labels to verify, no hard-negative mining beyond "every absent
class"), no geometric or exemplar prompts (the methods here prompt with text alone), no video, no one-to-many
(``o2m``) auxiliary queries and no per-decoder-layer auxiliary losses (the transformers model returns the last
layer's heads to ``ground``), the IoU-aware BCE (``IABCEMdetr``) replaced by the plain sigmoid focal loss the matcher
itself uses, toy sizes (a 2-layer ViT of width 32 on 168 px, a 2 + 2-layer DETR, 16 queries) and a few thousand steps
on one CPU thread rather than SAM 3's hundreds of thousands on GPUs. The token table keeps CLIP's 49408 rows but only
the rows of the words trained are drawn and learnt; every other row is exactly zero (so the file compresses, and an
untrained word reads as the same zero vector rather than as noise).

Everything is seeded, runs on the CPU with a fixed thread count and reads the images in a fixed order, so the same
settings rebuild the same weights bit for bit (`make toy-sam3`; checked at test size by tests/test_toy_sam3.py).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VplError
from .config import ToySam3Config
from .train_toy_sam import IGNORE, instances, world_of

RECORD_FILE = "model.json"
FOCAL_ALPHA, FOCAL_GAMMA = 0.25, 2.0  # Meta's matcher and mask loss (RetinaNet's defaults)
KIND, RECORD_KIND = "toy-sam3", "toy-sam3-record"  # the file kinds of its weights and their record (io.marks)


# ---------------------------------------------------------------------------------------------- model
def toy_config(cfg: ToySam3Config) -> dict[str, Any]:
    """``tiny_config()`` at the toy's sizes: the ViT, FPN and DETR ``cfg.width`` wide on a ``cfg.side`` input (a
    ``g x g`` grid, ``g = side / 14``, windows of ``g / 2``, the last layer global), the text tower ``cfg.text_width``
    wide over CLIP's vocabulary, ``cfg.queries`` queries."""
    from ..models.backbones.sam3_weights import tiny_config

    out = tiny_config()
    w, g = cfg.width, cfg.side // 14
    small = {"hidden_size": w, "num_attention_heads": 2, "intermediate_size": 2 * w}
    out["vision_config"]["backbone_config"].update(small, image_size=cfg.side, window_size=g // 2,
                                                   pretrain_image_size=cfg.side)
    out["vision_config"].update(fpn_hidden_size=w, backbone_feature_sizes=[[4 * g, 4 * g], [2 * g, 2 * g], [g, g]])
    out["text_config"].update(hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
                              projection_dim=cfg.text_width, num_attention_heads=2)
    for part in ("geometry_encoder_config", "detr_encoder_config", "detr_decoder_config"):
        out[part].update(small)
    out["detr_decoder_config"].update(num_queries=cfg.queries)
    out["mask_decoder_config"].update(hidden_size=w, num_attention_heads=2)
    return out


def build(cfg: ToySam3Config, words: list[str] | None):
    """A freshly initialised (torch's seed) :class:`~vpltool.models.backbones.sam3.Sam3` of :func:`toy_config`,
    trainable, with every token-table row but those of ``words``' tokens set to zero (None: the table as drawn)."""
    from ..models.backbones.sam3 import Sam3, import_transformers
    from ..models.backbones.sam3_weights import sam3_config

    model = import_transformers()(sam3_config(copy.deepcopy(toy_config(cfg))))
    sam = Sam3(model, torch.device("cpu"))
    sam.model.train().requires_grad_(True)
    if words is None:
        return sam
    table = sam.model.text_encoder.text_model.embeddings.token_embedding.weight
    with torch.no_grad():
        keep = torch.zeros(len(table), dtype=torch.bool)
        keep[trained_tokens(sam, words)] = True
        table[~keep] = 0.0
    return sam


def trained_tokens(sam, words: list[str]) -> list[int]:
    """The token ids ``words``' prompts hold (start, the words' BPE tokens, end; not the padding 0), sorted."""
    ids = sam.tokenize(words)
    return sorted(set(ids[ids != 0].tolist()))


# ---------------------------------------------------------------------------------------------- data
@dataclass
class WorldConcepts:
    """The train split as SAM 3 sees it.

    Attributes:
        words: the K class names (the concept prompts, background excluded), class ``k + 1`` of the masks.
        pixels: ``[N, 3, S, S]`` float32, each image as ``Sam3.prepare`` makes it.
        masks: per image and class, ``[n, H, W]`` bool its instances (n may be 0: a negative prompt).
        boxes: the same, ``[n, 4]`` float32 ``(cx, cy, w, h)`` in [0, 1] of the image.
        union: ``[N, K, H, W]`` bool each class's pixels (the semantic head's target).
        valid: ``[N, H, W]`` bool, not the ignore band.
    """

    words: list[str]
    pixels: torch.Tensor
    masks: list[list[torch.Tensor]]
    boxes: list[list[torch.Tensor]]
    union: torch.Tensor
    valid: torch.Tensor


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[n, H, W]`` bool (each non-empty) -> ``[n, 4]`` float32 ``(cx, cy, w, h)`` in [0, 1]: the box around each
    mask's pixels, pixel edges included (a one-pixel mask is ``1 / W`` wide)."""
    h, w = masks.shape[-2:]
    out = torch.zeros(len(masks), 4)
    for k, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        x0, x1, y0, y1 = float(xs.min()), float(xs.max()) + 1, float(ys.min()), float(ys.max()) + 1
        out[k] = torch.tensor([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
    return out


def train_split(data_dir: str | Path) -> tuple[list[str], list, list[np.ndarray]]:
    """The train split of a `make-world` folder, checked before any model is built: its class names (background
    excluded), its items with masks and their images (``[H, W, 3]`` uint8, one size)."""
    from ..data import open_dataset
    from ..io import load_image

    if not (Path(data_dir) / "images").is_dir():  # before open_dataset, whose line would name a --split it lacks
        raise VplError(f"{data_dir}: no images/ folder; pass a folder written by make-world")
    dataset = open_dataset(Path(data_dir), "train")
    items = [it for it in dataset.items if it.gt is not None]
    if not items:
        raise VplError(f"{data_dir}: no train images with masks; pass a folder written by make-world")
    images = [load_image(it.image) for it in items]
    if len({im.shape for im in images}) != 1:
        raise VplError(f"{data_dir}: train images of different sizes; the toy SAM 3 needs one size (make-world)")
    return list(dataset.classes[1:]), items, images


def world_concepts(split: tuple[list[str], list, list[np.ndarray]], sam, min_area: int) -> WorldConcepts:
    """The train split (:func:`train_split`) as SAM 3 sees it: its images in SAM 3's input (``sam``'s
    ``prepare``), per class its instances (:func:`.train_toy_sam.instances` of the class alone) and pixels; the
    captions and the val split unread."""
    from ..io import read_mask

    words, items, images = split
    pixels = torch.cat([sam.prepare(im) for im in images])
    gts = [read_mask(it.gt) for it in items]
    masks = [[torch.from_numpy(instances((g == c).astype(np.uint8), min_area)) for c in range(1, len(words) + 1)]
             for g in gts]
    boxes = [[mask_boxes(m) for m in per] for per in masks]
    union = torch.from_numpy(np.stack([np.stack([g == c for c in range(1, len(words) + 1)]) for g in gts]))
    return WorldConcepts(words, pixels, masks, boxes, union, torch.from_numpy(np.stack([g != IGNORE for g in gts])))


# ---------------------------------------------------------------------------------------------- matching, losses
def _xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def match(logits: torch.Tensor, boxes: torch.Tensor, target: torch.Tensor, cfg: ToySam3Config
          ) -> tuple[np.ndarray, np.ndarray]:
    """Meta's ``BinaryHungarianMatcherV2`` (focal) for one prompt: ``logits`` ``[Q]``, ``boxes`` ``[Q, 4]``,
    ``target`` ``[n, 4]`` (``cx, cy, w, h``) -> the matched query and target indices (n pairs)."""
    from scipy.optimize import linear_sum_assignment
    from torchvision.ops import generalized_box_iou

    with torch.no_grad():
        p = logits.sigmoid()
        neg = (1 - FOCAL_ALPHA) * p ** FOCAL_GAMMA * -(1 - p + 1e-8).log()
        pos = FOCAL_ALPHA * (1 - p) ** FOCAL_GAMMA * -(p + 1e-8).log()
        cost = (cfg.cost_class * (pos - neg)[:, None] + cfg.cost_bbox * torch.cdist(boxes, target, p=1)
                - cfg.cost_giou * generalized_box_iou(_xyxy(boxes), _xyxy(target)))
    rows, cols = linear_sum_assignment(cost.numpy())
    return rows, cols


def focal(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sigmoid focal loss per element (alpha 0.25, gamma 2; torchvision's)."""
    from torchvision.ops import sigmoid_focal_loss

    return sigmoid_focal_loss(logits, target, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA, reduction="none")


def dice(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` over the valid pixels of ``[n, H, W]`` -> ``[n]``."""
    p, t = prob * valid, target * valid
    return 1 - (2 * (p * t).sum((-2, -1)) + 1) / (p.sum((-2, -1)) + t.sum((-2, -1)) + 1)


def batch_loss(sam, data: WorldConcepts, batch: list[int], text, cfg: ToySam3Config
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM 3's detector loss on ``batch``'s images, each with all K prompts (positive and negative): the weighted
    sum of the terms (module docstring), each normalised by the batch's target count. Returns the loss and its terms.
    """
    from torchvision.ops import generalized_box_iou

    from ..models.backbones.sam3 import Sam3

    k = len(data.words)
    image = Sam3.encode_image.__wrapped__(sam, data.pixels[batch])  # the family's forward, gradients on
    out = Sam3.ground.__wrapped__(sam, image, text.select(torch.arange(k).repeat(len(batch))),
                                  index=torch.arange(len(batch)).repeat_interleave(k))
    h, w = data.valid.shape[-2:]
    valid = data.valid[batch].float()  # [B, H, W]
    n_targets = max(sum(len(data.boxes[i][c]) for i in batch for c in range(k)), 1)
    score_target = torch.zeros_like(out.pred_logits)
    positive = torch.zeros(len(out.pred_logits), dtype=torch.bool)
    rows, queries, masks, boxes = [], [], [], []
    for j, i in enumerate(batch):
        for c in range(k):
            target = data.boxes[i][c]
            if not len(target):
                continue
            r = j * k + c
            positive[r] = True
            q, t = match(out.pred_logits[r].detach(), out.pred_boxes[r].detach(), target, cfg)
            score_target[r, q] = 1.0
            rows += [r] * len(q)
            queries += q.tolist()
            masks.append(data.masks[i][c][t])
            boxes.append(target[t])
    terms = {"ce": (focal(out.pred_logits, score_target)[positive]).sum() / n_targets,
             "presence": F.binary_cross_entropy_with_logits(out.presence_logits, positive.float())}
    rows_t, queries_t = torch.tensor(rows, dtype=torch.long), torch.tensor(queries, dtype=torch.long)
    if len(rows):
        pred, target = out.pred_boxes[rows_t, queries_t], torch.cat(boxes)
        terms["bbox"] = F.l1_loss(pred, target, reduction="sum") / n_targets
        terms["giou"] = (1 - torch.diag(generalized_box_iou(_xyxy(pred), _xyxy(target)))).sum() / n_targets
        logits = F.interpolate(out.pred_masks[rows_t, queries_t][:, None], (h, w), mode="bilinear",
                               align_corners=False)[:, 0]
        t, v = torch.cat(masks).float(), valid[rows_t // k]
        terms["mask"] = ((focal(logits, t) * v).sum((-2, -1)) / v.sum((-2, -1)).clamp_min(1)).sum() / n_targets
        terms["dice"] = dice(logits.sigmoid(), t, v).sum() / n_targets
    # the semantic head on the positive prompts alone (Meta's SemanticSegCriterion with its presence head: "skipping
    # the negative ones"; the presence loss says a class is absent), each prompt's BCE a mean over its pixels
    semantic = F.interpolate(out.semantic_seg[positive], (h, w), mode="bilinear", align_corners=False)[:, 0]
    union = data.union[batch].reshape(-1, h, w)[positive].float()
    v = valid.repeat_interleave(k, 0)[positive]
    n_positive = max(int(positive.sum()), 1)
    bce = F.binary_cross_entropy_with_logits(semantic, union, reduction="none")
    terms["semantic"] = ((bce * v).sum((-2, -1)) / v.sum((-2, -1)).clamp_min(1)).sum() / n_positive
    terms["semantic_dice"] = dice(semantic.sigmoid(), union, v).sum() / n_positive
    weights = {"ce": cfg.loss_ce, "presence": cfg.loss_presence, "bbox": cfg.loss_bbox, "giou": cfg.loss_giou,
               "mask": cfg.loss_mask, "dice": cfg.loss_dice, "semantic": cfg.loss_semantic,
               "semantic_dice": cfg.loss_semantic_dice}
    loss = sum(weights[name] * term for name, term in terms.items())
    return loss, {name: float(term.detach()) for name, term in terms.items()}


# ---------------------------------------------------------------------------------------------- training
def _lr(cfg: ToySam3Config, step: int, total: int) -> float:
    """Linear warmup over ``cfg.warmup`` steps, then cosine decay to 0 at the last step."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(total - cfg.warmup, 1)))


def train_toy_sam3(out: str | Path, data_dir: str | Path, cfg: ToySam3Config = ToySam3Config(),
                   on_start: Callable[[int], None] | None = None,
                   on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train the toy SAM 3 on ``data_dir``'s train masks and class names and write the folder ``out``
    (``config.json`` + ``model.safetensors`` in Hugging Face's layout, float32; the record ``model.json``).

    Returns:
        the record: recipe, world, ``words``, ``tokens`` (the token-table rows trained), ``images``,
        ``instances``, ``steps``, ``first_loss`` / ``final_loss`` (mean of the first / last 10 steps), ``terms``
        (the last epoch's mean of each loss term, unweighted), ``seconds``, ``cpu``; and ``path``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise VplError(f"{out}: exists and is not a folder; choose a folder for the model")
    split = train_split(data_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            return _train(out, data_dir, split, cfg, on_start, on_step)
    finally:
        torch.set_num_threads(previous)


def _train(out: Path, data_dir: str | Path, split, cfg: ToySam3Config, on_start, on_step) -> dict[str, Any]:
    from ..models.backbones.sam3 import Sam3

    probe = build(cfg, None)  # its prepare only
    data = world_concepts(split, probe, cfg.min_area)
    del probe
    torch.manual_seed(cfg.seed)  # the weights drawn the same whatever the probe drew
    sam = build(cfg, data.words)
    n = len(data.pixels)
    per_epoch = -(-n // cfg.batch_size)
    total = cfg.epochs * per_epoch
    if on_start is not None:
        on_start(total)
    params = [p for p in sam.model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=cfg.lr)
    table = sam.model.text_encoder.text_model.embeddings.token_embedding.weight
    frozen = torch.ones(len(table), dtype=torch.bool)
    frozen[trained_tokens(sam, data.words)] = False
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, last_terms, step = [], [], 0
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen).tolist()
        for b in range(per_epoch):
            batch = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr(cfg, step, total)
            text = Sam3.encode_text.__wrapped__(sam, data.words)
            loss, terms = batch_loss(sam, data, batch, text, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
            with torch.no_grad():
                table[frozen] = 0.0  # AdamW's decay keeps a zero row zero; this says so whatever the optimiser
            losses.append(loss.item())
            if epoch == cfg.epochs - 1:
                last_terms.append(terms)
            step += 1
            if on_step is not None:
                on_step(step, losses[-1])
    seconds = time.perf_counter() - start
    record = {"model": "toy-sam3", "recipe": asdict(cfg), "data": str(Path(data_dir)), "world": world_of(data_dir),
              "split": "train", "words": data.words, "tokens": trained_tokens(sam, data.words), "images": n,
              "instances": int(sum(len(b) for per in data.boxes for b in per)), "steps": total,
              "first_loss": round(float(np.mean(losses[:10])), 4), "final_loss": round(float(np.mean(losses[-10:])), 4),
              "terms": {k: round(float(np.mean([t.get(k, 0.0) for t in last_terms])), 4) for k in last_terms[-1]},
              "seconds": round(seconds, 1), "cpu": cpu_name(), "threads": cfg.threads}
    write_toy_sam3(out, sam, cfg, record)
    return {**record, "path": str(out)}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), for the record."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_toy_sam3(out: Path, sam, cfg: ToySam3Config, record: dict[str, Any]) -> None:
    """``out`` in Hugging Face's layout (:func:`~vpltool.models.backbones.sam3_files.write_hf`) plus its record
    ``model.json`` (written whole or not at all)."""
    from ..io import atomic_path
    from ..io.marks import marked
    from ..models.backbones.sam3_files import write_hf

    state = {k: v.detach().contiguous() for k, v in sam.model.state_dict().items()}
    write_hf(out, toy_config(cfg), state, metadata={"vpltool.kind": KIND})
    with atomic_path(out / RECORD_FILE) as tmp:
        Path(tmp).write_text(json.dumps(marked(record, RECORD_KIND), indent=1) + "\n")
    for path in out.iterdir():
        path.chmod(0o644)  # the package ships these
