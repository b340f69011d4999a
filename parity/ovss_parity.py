"""vpltool's newer training-free ``--dense`` methods against each method's OWN public code; prints ONE JSON object.

    python parity/ovss_parity.py --ref DIR [--work DIR] [--images 12] [--threads 1]
    python parity/ovss_parity.py --quick      # plumbing only: no clone, vpltool against itself (Δ = 0)

The harness is ``dense_parity.py``'s (its module docstring says what is compared and how: the same random
ViT-B/16 weights, the 12 parity photos through mmseg's VOC21 test pipeline restated, fp32 on the CPU, the clone run
in its own process through ``dense_ref_runner.py`` with stubbed OpenMMLab imports), with this file's variants
(:data:`VARIANTS`). ``--ref DIR`` holds clones named as :data:`CLONES` (any case), at the commits
``docs/open-vocabulary.md`` names; a missing one is reported, not compared.

* ``sc-clip``: SuleBai/SC-CLIP's ``SCCLIPForSegmentation`` as ``configs/cfg_voc21.py`` runs it (LOF outlier repair
  at block 10, the layer-8 similarity prior and aggregations, multi-level fusion of blocks 3..9, ``res_cls`` 0.3;
  logit scale 50, threshold 0.15, area filter 0.1, slide 224/112, short side 336) against ``--dense sc-clip``;
* ``proxyclip``: mc-lan/ProxyCLIP's ``ProxyCLIPSegmentation`` (``vfm_model='dino'``: its ``torch.hub`` DINO ViT-B/8
  built from a clone of facebookresearch/dino with random weights, seed 0, :func:`proxy_weights`; its fp16 casts
  are identities; logit scale 40, threshold 0.2, slide 336/112 padded to 56, short side 336) against
  ``--dense proxyclip`` with the same weights loaded through ``load_model('dino', DinoSpec(
  'vit_base_patch8_224.dino', FILE))``;
* ``cass``: MICV-yonsei/CASS's ``CASS_segmentor`` as ``eval.py --config configs/cfg_voc21.py`` (``--pamr off``)
  runs it (its ``dataset`` the config's path; spectral key-graph matching with its own ``dino/`` copy of DINO
  ViT-B/8, the same random weights, which it fetches by URL: here from the file; the object-presence text shift
  with global weight 0.1, shift 0.03, Ward cut 0.10; logit scale 40, threshold 0.1, the whole image at short side
  336) against ``--dense cass``. Its ``.half()`` of DINO's keys is the identity as the other fp16 casts (fp32
  parity); its randomised SVD draws from torch's global generator, seeded 0 before each forward on both sides.
  On the seed-0 weights CASS's head matching has tied optima on every input; ``cass_weights.py --out W2`` makes a
  work folder whose last key projections are shaped so that it has one (``--work W2`` here then runs on it; the
  JSON's ``weights`` says so).

* ``trident`` (``--methods trident``, run alone: :func:`run_trident`): YuHengsss/Trident's ``Trident`` as
  ``eval.py --config configs/cfg_voc21.py`` runs it without ``--sam_refine`` (ProxyCLIP's proxy attention per
  336/224 window with its ``torch.hub`` DINO ViT-B/16, built from the facebookresearch/dino clone with random
  weights; the windows spliced; SAM ViT-B's last global attention from its own ``segment_anything`` copy with
  random weights, seed 0, its zero-initialised positional and relative-position tables given seeded noise so that
  they count; logit scale 40, threshold 0.2, short side 448) against ``--dense trident`` with the same weights
  through ``load_model('dino', ...)`` and ``load_model('sam', ...)``, through ``parity/trident_ref_runner.py``.
  Both sides read each photo again for SAM with OpenCV, as Trident does.

With ``--shared-matching`` the CASS variant is compared a second time with the reference's Hungarian matchings of
its heads replayed on vpltool's side (``dense_ref_runner.py`` records them), beside each matching's ambiguity on
vpltool's own costs (:func:`ambiguity`): whether a difference is the matching's tie alone.

Point a's inputs are the first photo's 224x224 crop and its top-left square (both references reshape their grids
as if square: their whole-image forward on a non-square photo fails or misplaces tokens).

The headline ``methods`` is each method's max |Δ| over its patch and seg logits (the bar: <= 1e-4, fp32, CPU) and
its share of equal labels after the method's post-processing (the bar: >= 99.9 %).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "bench")]
import dense_parity as dp  # noqa: E402

_vpltool_outputs = dp.vpltool_outputs  # the uncached computation (harness() may swap the module's for a cache)

import benchlib  # noqa: E402

BAR = dp.BAR
LABELS_BAR = 0.999
QUICK = dp.QUICK
# name -> (clone, module, class, the segmentor's overrides, vpltool's --dense, vpltool's settings of, their overrides)
VARIANTS: dict[str, tuple[str, str, str, dict, str, str, dict]] = {
    "sc-clip": ("SC-CLIP", "scclip_segmentor", "SCCLIPForSegmentation", {}, "sc-clip", "sc-clip", {}),
    "proxyclip": ("ProxyCLIP", "proxyclip_segmentor", "ProxyCLIPSegmentation", {}, "proxyclip", "proxyclip", {}),
    "cass": ("CASS", "cass_segmentor", "CASS_segmentor", {}, "cass", "cass", {}),
}
CLONES = ("SC-CLIP", "ProxyCLIP", "CASS")
# the references' whole-image forwards fail or misplace tokens on a non-square grid (SC-CLIP's outlier positions
# i // h, i % h; ProxyCLIP's (w, h) reshapes): a square instead
PATCH_INPUTS = {"sc-clip": ["crop224", "square"], "proxyclip": ["crop224", "square"],
                "cass": ["crop224", "whole"]}  # CASS reshapes its grid as (rows, columns): a whole photo works
PROXY_MODEL = "vit_base_patch8_224.dino"  # timm's name of the DINO ViT-B/8 the references load as dino_vitb8
MAIN = ("sc-clip", "cass")  # every photo; ProxyCLIP (a DINO ViT-B/8 per window) on --proxy-images
METHODS = {"sc-clip": ("sc-clip",), "proxyclip": ("proxyclip",), "cass": ("cass",)}


def redrawn_positions(state: dict, std: float) -> dict:
    """A random DINO's state dict with its ``pos_embed`` redrawn N(0, ``std``) from its own generator, seed 2 (in
    place; returned): positions of the order of the patch embeddings, so that a smooth photo's tokens do not
    collapse (:data:`TRIDENT_FINDINGS`). Trident's and ProxyCLIP's parity weights both take it."""
    import torch

    g = torch.Generator().manual_seed(2)
    state["pos_embed"] = std * torch.randn(state["pos_embed"].shape, generator=g)
    return state


def proxy_weights(work: Path, pos_std: float | None = None) -> Path:
    """Random DINO ViT-B/8 weights (seed 0; timm's init, DINO's tensor names) as ``work/dino_vitb8.pth``, made once.
    CASS's free run uses a copy whose last key projection (and CLIP's) ``cass_weights.py`` shaped; it leaves it in
    its work folder, where this then finds it.

    ``pos_std`` (``--proxy-pos-std``): the same weights with ``pos_embed`` redrawn N(0, pos_std), seed 2, as
    ``work/dino_vitb8_pos{pos_std:g}.pth``: ProxyCLIP's proxy attention masks ``S - beta mean S < 0`` as Trident's
    does (:data:`TRIDENT_FINDINGS`), so with timm's 0.02 positions the tokens of a smooth photo collapse and every
    row of it is ``-inf`` on both sides (:data:`PROXYCLIP_FINDINGS`)."""
    import torch

    path = work / "dino_vitb8.pth"
    if not path.is_file():
        import timm

        torch.manual_seed(0)
        model = timm.create_model(PROXY_MODEL, pretrained=False, num_classes=0)
        torch.save(model.state_dict(), path)
    if pos_std is None:
        return path
    moved = work / f"dino_vitb8_pos{pos_std:g}.pth"
    if not moved.is_file():
        torch.save(redrawn_positions(torch.load(path, map_location="cpu"), pos_std), moved)
    return moved


# the ProxyCLIP run before --proxy-pos-std (timm's DINO init; main at b7cc17c)
PROXYCLIP_FINDINGS = [
    "Before: DINO ViT-B/8 with timm's init (pos_embed std 0.02). img_003, img_006, img_008: logits NaN on both "
    "sides, so the headline max |d| was NaN and the bar not met (an earlier run's headline, 9.7e-8, had skipped "
    "them: Python's max passes over NaN; dense_parity.worst now lets NaN win); the 9 other photos: dense logits "
    "1.1e-7, probabilities 2.3e-7 or less, labels 100 % equal.",
    "Cause: ProxyCLIP's proxy attention is Trident's, (S - beta mean S) gamma with the negatives -inf (beta 1.2): "
    "on those photos the random DINO's tokens collapse (TRIDENT_FINDINGS, the same three photos) and every row is "
    "masked. Fix: --proxy-pos-std 1, DINO's pos_embed redrawn N(0, 1), seed 2, both sides loading the file.",
]


class Vpltool(dp.Vpltool):
    """dense_parity's vpltool side, with the proxy model (``load_model('dino', ...)``) for ProxyCLIP."""

    def __init__(self, model: str, weights: Path, config_dir: Path, proxy: Path | None = None):
        super().__init__(model, weights, config_dir)
        self.proxy, self._proxy_path = None, proxy

    def backbone(self, method: str):
        from vpltool.config.dense import PROXY_METHODS
        from vpltool.models.backbones.dino import DinoSpec
        from vpltool.models.registry import load_model

        if method not in PROXY_METHODS:
            return self.base.with_dense(method)
        if self.proxy is None:
            spec = DinoSpec(PROXY_MODEL, str(self._proxy_path)) if self._proxy_path else DinoSpec(
                "test_vit", str(Path(__file__).resolve().parents[1] / "vpltool/assets/toy-dino/model.safetensors"))
            self.proxy = load_model("dino", spec, "cpu")
        return self.base.with_dense(method, proxy=self.proxy)


@contextlib.contextmanager
def harness(cache: Path | None = None):
    """``dense_parity``'s functions with this file's variant tables (they read their module's globals); with
    ``cache``, vpltool's logits of a photo are read from there when :func:`precompute` left them (same method,
    input tensor and text rows), else computed."""
    saved = dp.VARIANTS, dp.MAIN, dp.METHODS, dp.PATCH_INPUTS, dp.RUNNER_ARGS, dp.vpltool_outputs
    dp.VARIANTS, dp.MAIN, dp.METHODS, dp.PATCH_INPUTS, dp.RUNNER_ARGS = VARIANTS, MAIN, METHODS, PATCH_INPUTS, {}
    if cache is not None:
        dp.vpltool_outputs = cached_outputs(cache, saved[-1])
    try:
        yield
    finally:
        dp.VARIANTS, dp.MAIN, dp.METHODS, dp.PATCH_INPUTS, dp.RUNNER_ARGS, dp.vpltool_outputs = saved


def _key(name: str, x, text) -> str:
    import hashlib

    h = hashlib.sha256(name.encode())
    for t in (x, text):
        h.update(t.detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def cached_outputs(cache: Path, compute):
    """``dense_parity.vpltool_outputs`` reading the logits :func:`precompute` wrote (the probabilities and labels
    are made from them as there); a photo not in ``cache`` is computed."""

    def outputs(vt, name, x, text, query_idx, n_classes, ori, renorm):
        import torch

        from vpltool.models.dense.segmentor import dense_probabilities

        path = cache / f"{_key(name, x, text)}.pt"
        if not path.is_file():
            return compute(vt, name, x, text, query_idx, n_classes, ori, renorm)
        logits = torch.load(path)
        settings = dp.settings_for(name)
        probs, labels = dense_probabilities(logits, query_idx, n_classes, settings.logit_scale,
                                            settings.prob_threshold, settings.area_threshold)
        if renorm:
            probs = probs / probs.sum(0, keepdim=True)
        return logits, probs, labels

    return outputs


def precompute(work: Path, args) -> None:
    """vpltool's logits of every photo of ``--methods`` into ``work/vpltool_cache`` while a reference runs (its own
    process: on a shared machine the two sides then run at once). The queries are the clone's VOC21 class file read
    as its ``get_cls_idx`` reads it, the inputs mmseg's test pipeline with the SCLIP-family preprocessor; a photo
    whose input or rows differ from the reference's is simply computed again by the comparison."""
    import torch
    from dense_ref_runner import mmseg_input

    from vpltool.models.dense.segmentor import segment_logits

    cache = work / "vpltool_cache"
    cache.mkdir(parents=True, exist_ok=True)
    with harness():
        model, config_dir = dp.model_config(work, args.model, args.text_layers)
        _, st, photos = dp.setup(work, model, config_dir, args.images, 1.0)
        vt = Vpltool(model, st, config_dir, proxy_weights(work, args.proxy_pos_std))
        clones = find_clones(args.ref)
        pre = {"mean": [122.771, 116.746, 104.094], "std": [68.501, 66.632, 70.323], "rgb_to_bgr": True}
        for name in args.methods.split(","):
            lines = (clones[VARIANTS[name][0]] / "configs" / "cls_voc21.txt").read_text().splitlines(keepends=True)
            words = [w.replace("\n", "") for line in lines for w in line.split(", ")]
            text = vt.rows(words)
            settings = dp.settings_for(name)
            bb = vt.backbone(VARIANTS[name][4])
            for path in sorted(photos.glob("*.jpg"))[: args.images]:
                x, ori = mmseg_input(path, (2048, settings.short_side), pre)
                out = cache / f"{_key(name, x, text)}.pt"
                if not out.is_file():
                    with torch.no_grad():
                        torch.save(segment_logits(bb, x, text, settings, [tuple(ori)])[0], out)
                print(f"{name} {path.name}: cached", file=sys.stderr, flush=True)


TRIDENT_DINO = "vit_base_patch16_224.dino"  # timm's name of torch.hub's dino_vitb16
# Trident's own pre-processor (trident.py: SegDataPreProcessor), the RGB swap of mmseg's bgr_to_rgb
TRIDENT_PRE = {"mean": [122.771, 116.746, 104.094], "std": [68.501, 66.632, 70.323], "bgr_to_rgb": True}


# Random DINO ViT-B/16 whose patch tokens do not collapse (see trident_weights): its positional embedding's std.
# timm draws it with std 0.02, 1/26 to 1/40 of the random patch embedding's RMS on the photos; a trained ViT's
# positions are of the order of its patch embeddings, which is what this restores
TRIDENT_DINO_POS_STD = 1.0
# Random SAM mask decoder: its IoU head's output bias moved by Trident's sam_iou_thresh (configs/base_config.py),
# so that the random decoder's scores straddle it and both of sam_refinement's branches (kept, failed) run
TRIDENT_SAM_IOU_SHIFT = 0.8


# the run before TRIDENT_DINO_POS_STD (timm's pos_embed std 0.02; SAM's decoder not shifted; main at aa9dde3)
TRIDENT_FINDINGS = [
    "Before: DINO with timm's init (pos_embed std 0.02). img_003, img_006, img_008: logits NaN everywhere on both "
    "sides (at the same pixels), so the headline max |d| was NaN and the bar not met; the 9 other photos: dense "
    "logits 8.9e-8, probabilities 2.1e-7, labels 100 % equal, every photo labelled one class by both sides "
    "(aa9dde3's parity/results/ovss_parity_trident.json).",
    "Cause: the pooled mean cosine of DINO's final tokens over the photo's windows exceeded 1 / beta = 1 / 1.2 on "
    "exactly those photos (ovss_parity.py --dino-collapse: parity/results/trident_dino_collapse.json), so "
    "S - 1.2 mean S < 0 everywhere, the diagonal included: every proxy-attention row all -inf, softmax NaN, spread "
    "over the photo by SAM's aggregation. A random conv patch embedding answers mostly a patch's mean colour (a "
    "smooth photo's tokens near-parallel before any block) and the random blocks' near-uniform attention adds one "
    "vector to every token; timm's 0.02 positional embedding is too small to tell the tokens apart.",
    "Fix (both sides load the same file): pos_embed redrawn N(0, 1), seed 2 (TRIDENT_DINO_POS_STD); SAM's IoU head "
    "output bias + 0.8 (TRIDENT_SAM_IOU_SHIFT), meant to put the refinement's IoUs near its 0.8 threshold; they came "
    "out below it on the photos (refinement.photos[].scale_150.prompts), so every prompt fails at 0.8 and the "
    "variant 150:0.5 (sam_iou_thresh 0.5) is the one where SAM's masks are kept.",
    "Logit scale 150 beside the config's 40 for the post-processing and the refinement: with random CLIP the "
    "queries' cosines differ little (reference_query_spread per photo), so at 40 no pixel reaches the 0.2 "
    "threshold (reference_probs_max: every label background, coarse_thresh met nowhere, the refinement has "
    "nothing to prompt); at 150 it does.",
]


def trident_weights(work: Path) -> tuple[Path, Path]:
    """Random DINO ViT-B/16 and SAM ViT-B (the whole Sam, as SAM's released files) as
    ``work/dino_vitb16_pos1.pth`` and ``work/sam_vit_b_iou.pth``, made once.

    DINO: timm's init (seed 0, DINO's tensor names), its ``pos_embed`` redrawn N(0, :data:`TRIDENT_DINO_POS_STD`)
    (seed 2). With timm's std 0.02 the tokens of a smooth photo collapse: a random conv patch embedding answers
    mostly a patch's mean colour (img_006: mean token cosine 0.93 before any block), the random blocks' near-uniform
    attention adds one vector to every token (0.96 after them), and once the pooled mean cosine exceeds 1 / beta
    (1 / 1.2) Trident's ``S - beta mean S`` is negative everywhere, the diagonal included: every softmax row is
    all ``-inf``, the logits NaN on both sides (img_003, img_006, img_008 with std 0.02: pooled means 0.862,
    0.958, 0.931; ``studies``-free diagnostic in docs/open-vocabulary.md). Both sides load this file.

    SAM: ``sam_model_registry['vit_b']``, seed 0; the encoder's zero-initialised ``pos_embed`` and ``rel_pos_*``
    tables given seeded noise of std 0.02 (seed 1), so that the parity exercises them; the mask decoder's IoU head
    output bias plus :data:`TRIDENT_SAM_IOU_SHIFT`.
    """
    import torch

    dino, sam = work / "dino_vitb16_pos1.pth", work / "sam_vit_b_iou.pth"
    if not dino.is_file():
        import timm

        torch.manual_seed(0)
        state = timm.create_model(TRIDENT_DINO, pretrained=False, num_classes=0).state_dict()
        torch.save(redrawn_positions(state, TRIDENT_DINO_POS_STD), dino)
    if not sam.is_file():
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        state = sam_model_registry["vit_b"]().state_dict()
        g = torch.Generator().manual_seed(1)
        for k in sorted(state):
            if k.startswith("image_encoder.") and (k.endswith("pos_embed") or ".rel_pos_" in k):
                state[k] = state[k] + 0.02 * torch.randn(state[k].shape, generator=g)
        last = "mask_decoder.iou_prediction_head.layers.2.bias"
        state[last] = state[last] + TRIDENT_SAM_IOU_SHIFT
        torch.save(state, sam)
    return dino, sam


def dino_collapse(work: Path, args) -> dict:
    """Why Trident's logits were NaN with timm's init (:func:`trident_weights`): per photo, the pooled mean cosine of
    DINO ViT-B/16's final patch tokens over the photo's windows (Trident's ``torch.mean(similarity)``, on the input
    vpltool's ``--dense trident`` gives DINO), with timm's ``pos_embed`` std 0.02 and with
    :data:`TRIDENT_DINO_POS_STD`. Above ``1 / beta`` (1 / 1.2) every cosine, the diagonal's 1 included, is below
    ``beta`` times the mean: every proxy-attention row is masked and its softmax NaN."""
    import timm
    import torch
    import torch.nn.functional as F
    from dense_ref_runner import mmseg_input

    from vpltool.config.dense import DENSE_SEGMENTORS
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.dense.segmentor import window_starts
    from vpltool.models.dense.trident import trident_input
    from vpltool.models.registry import load_model

    model, config_dir = dp.model_config(work, args.model, args.text_layers)
    _, _, photos_dir = dp.setup(work, model, config_dir, args.images, 1.0)
    photos = sorted(photos_dir.glob("*.jpg"))[: args.images]
    dino, _ = trident_weights(work)
    old = work / "dino_vitb16_timm.pth"
    if not old.is_file():
        torch.manual_seed(0)
        torch.save(timm.create_model(TRIDENT_DINO, pretrained=False, num_classes=0).state_dict(), old)
    s = DENSE_SEGMENTORS["trident"]
    clip_mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    clip_std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    out = {"threshold": 1 / 1.2, "pos_embed_std": {"timm": 0.02, "parity": TRIDENT_DINO_POS_STD}, "photos": []}
    models = {"timm": load_model("dino", DinoSpec(TRIDENT_DINO, str(old)), "cpu"),
              "parity": load_model("dino", DinoSpec(TRIDENT_DINO, str(dino)), "cpu")}
    for path in photos:
        x, _ = mmseg_input(path, (2048, s.short_side), TRIDENT_PRE)
        x = trident_input(x, 16, s.slide_crop)
        h, w = x.shape[-2:]
        windows = torch.cat([x[:, :, a:b, c:e] for a, b in window_starts(h, s.slide_crop, s.slide_stride)
                             for c, e in window_starts(w, s.slide_crop, s.slide_stride)])
        raw = windows * clip_std + clip_mean
        row = {"file": path.name}
        for name, d in models.items():
            mean, std = torch.tensor(d.mean).view(1, 3, 1, 1), torch.tensor(d.std).view(1, 3, 1, 1)
            with torch.no_grad():
                tokens, _ = d.final_tokens((raw - mean) / std)
            unit = F.normalize(tokens, dim=-1)
            row[name] = round(float((unit @ unit.transpose(1, 2)).mean()), 4)
        out["photos"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    out["nan_photos"] = {k: [r["file"] for r in out["photos"] if r[k] > out["threshold"]] for k in models}
    return out


def trident_vpltool(work: Path, vt, photos: list[Path], words: list[str], dino: Path, sam: Path,
                    first: Sequence[int] = ()) -> Path:
    """vpltool's logits of ``--dense trident`` on each photo (mmseg's test input at short side 448, Trident's
    pre-processor; SAM's input the photo read with OpenCV) into ``work/vpltool_trident/photo_NNN.pt``; a photo
    already there is kept."""
    import cv2
    import torch
    from dense_ref_runner import mmseg_input

    from vpltool.config.dense import DENSE_SEGMENTORS
    from vpltool.models.backbones.dino import DinoSpec
    from vpltool.models.backbones.sam import SamSpec
    from vpltool.models.dense.segmentor import segment_logits
    from vpltool.models.dense.trident import sam_image
    from vpltool.models.registry import load_model

    out = work / "vpltool_trident"
    out.mkdir(parents=True, exist_ok=True)
    settings = DENSE_SEGMENTORS["trident"]
    bb = vt.base.with_dense("trident", proxy=load_model("dino", DinoSpec(TRIDENT_DINO, str(dino)), "cpu"),
                            sam=load_model("sam", SamSpec("vit_b", str(sam)), "cpu"))
    text = vt.rows(words)
    head = [i for i in first if 0 <= i < len(photos)]  # trident_ref_runner.run_order
    for i in head + [i for i in range(len(photos)) if i not in head]:
        path = photos[i]
        target = out / f"photo_{i:03d}.pt"
        if target.is_file():
            continue
        x, ori = mmseg_input(path, (2048, settings.short_side), TRIDENT_PRE)
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        tic = time.perf_counter()
        with torch.no_grad():
            logits = segment_logits(bb, x, text, settings, [tuple(ori)], [{"sam": sam_image(image)}])[0]
        torch.save({"input": x, "logits": logits, "seconds": time.perf_counter() - tic}, target)
        print(f"vpltool trident {path.name}: {time.perf_counter() - tic:.1f} s", file=sys.stderr, flush=True)
    return out


def compare_refinement(ref: Path, ours: Path, photos: list[Path], indices: list[int], query_idx, n_classes: int,
                       settings, sam: Path, scales: Sequence[float]) -> dict:
    """Trident's post-processing at each logit scale of ``scales``, without and with its SAM refinement
    (``eval.py --sam_refine``), as the reference's runner recorded it (``scale_S`` in its photo files), against
    vpltool's on vpltool's own logits: :func:`~vpltool.models.dense.segmentor.dense_probabilities`, then
    :func:`~vpltool.models.dense.sam_refine.refine` with SAM's encoding of
    :func:`~vpltool.models.dense.trident.sam_image` (the same pass as the aggregation's,
    :func:`~vpltool.models.dense.trident.sam_attention` with ``features``) and SAM's prompt encoder and mask decoder
    loaded through ``load_model('sam', SamSpec(..., prompt=True))``."""
    import cv2
    import torch

    from vpltool.models.backbones.sam import SamSpec
    from vpltool.models.dense.sam_refine import refine
    from vpltool.models.dense.segmentor import dense_probabilities
    from vpltool.models.dense.trident import sam_attention, sam_image
    from vpltool.models.registry import load_model

    out: dict = {"scales": {}, "photos": []}
    from trident_ref_runner import variant_key

    todo = [i for i in indices if variant_key(scales[0]) in torch.load(ref / f"photo_{i:03d}.pt")] if scales else []
    if not todo:
        return out
    model = load_model("sam", SamSpec("vit_b", str(sam), prompt=True), "cpu")
    for i in todo:
        theirs, mine = torch.load(ref / f"photo_{i:03d}.pt"), torch.load(ours / f"photo_{i:03d}.pt")
        image = sam_image(cv2.cvtColor(cv2.imread(str(photos[i])), cv2.COLOR_BGR2RGB))
        cached = ours / f"sam_{i:03d}.pt"  # SAM's encoding (a compare run again reuses it: same SAM file)
        tic = time.perf_counter()
        if cached.is_file() and torch.load(cached)["sam"] == dp.file_digest(sam):
            features = torch.load(cached)["features"]
        else:
            features = sam_attention(model, image, features=True)[2]
            torch.save({"sam": dp.file_digest(sam), "features": features}, cached)
        row: dict = {"file": photos[i].name, "seconds_sam": round(time.perf_counter() - tic, 1)}
        for spec in scales:
            if variant_key(spec) not in theirs:  # a variant added after this photo's reference ran
                continue
            t = theirs[variant_key(spec)]
            scale, _, iou = spec.partition(":")
            probs, labels = dense_probabilities(mine["logits"], query_idx, n_classes, float(scale),
                                                settings.prob_threshold, settings.area_threshold)
            seen: dict = {}
            scores, refined = refine(probs, labels, model, features, image.shape[:2], settings.coarse_threshold,
                                     settings.minimal_area, float(iou) if iou else settings.sam_iou_threshold,
                                     settings.sam_mask_coeff, stats=seen)
            row[variant_key(spec)] = {
                "probs": dp.max_abs(probs, t["probs"]),
                "labels_equal": float((labels == t["pred"][0]).double().mean()),
                "refined_scores": dp.max_abs(scores, t["refined_probs"]),
                "refined_labels_equal": float((refined == t["refined_pred"][0]).double().mean()),
                # how much the refinement moved the reference's own labels (0: nothing was refined)
                "reference_changed": float((t["refined_pred"] != t["pred"]).double().mean()),
                "reference_probs_max": float(t["probs"].max()),
                "reference_classes": {"coarse": int(t["pred"].unique().numel()),
                                      "refined": int(t["refined_pred"].unique().numel())},
                # vpltool's prompts: how many SAM kept (IoU above the threshold) and the IoUs' range
                "prompts": seen}
        out["photos"].append(row)
    for spec in scales:
        rows = [r[variant_key(spec)] for r in out["photos"] if variant_key(spec) in r]
        if not rows:
            continue
        out["scales"][spec] = {
            "photos": len(rows), "probs_max_abs_diff": dp.worst(r["probs"] for r in rows),
            "labels_equal_min": min(r["labels_equal"] for r in rows),
            "refined_scores_max_abs_diff": dp.worst(r["refined_scores"] for r in rows),
            "refined_labels_equal_min": min(r["refined_labels_equal"] for r in rows),
            "refined_labels_bar_met": min(r["refined_labels_equal"] for r in rows) >= LABELS_BAR,
            "photos_the_reference_refined": sum(r["reference_changed"] > 0 for r in rows),
            "reference_changed_mean": sum(r["reference_changed"] for r in rows) / len(rows)}
    return out


def run_trident(work: Path, args) -> dict:
    """``--methods trident``: the reference (``trident_ref_runner.py``, its own process) and vpltool at once on the
    photos, then per photo the logits, the probabilities after Trident's post-processing and the labels compared."""
    import subprocess

    import torch

    from vpltool.config.dense import DENSE_SEGMENTORS
    from vpltool.config.presets import IMAGENET_TEMPLATES
    from vpltool.models.dense.segmentor import dense_probabilities

    start = time.perf_counter()
    clone = next((p for p in args.ref.iterdir() if p.name.lower() == "trident"), None) if args.ref else None
    dino_clone = args.dino_clone or next((p for p in args.ref.iterdir() if p.name.lower() == "dino"), None)
    if clone is None or dino_clone is None:
        raise SystemExit("--methods trident needs --ref DIR holding Trident/ and dino/ (facebookresearch/dino)")
    model, config_dir = dp.model_config(work, args.model, args.text_layers)
    pt, st, photos_dir = dp.setup(work, model, config_dir, args.images, 1.0)
    photos = sorted(photos_dir.glob("*.jpg"))[: args.images]
    dino, sam = trident_weights(work)
    ref = work / "ref" / "trident"
    stamp = {"commit": dp.commit_of(clone), "weights": dp.file_digest(pt), "sam": dp.file_digest(sam),
             "dino": dp.file_digest(dino), "images": len(photos), "refine_scales": args.refine_scales}
    proc = None
    if args.compare_only:
        pass
    elif not ((ref / "meta.json").is_file() and (ref / "stamp.json").is_file()
            and json.loads((ref / "stamp.json").read_text()) == stamp):
        import shutil

        if not args.keep_ref:
            shutil.rmtree(ref, ignore_errors=True)
        ref.mkdir(parents=True, exist_ok=True)
        cmd = [args.ref_python, str(Path(__file__).parent / "trident_ref_runner.py"), "--clone", str(clone),
               "--weights", str(pt), "--dino-clone", str(dino_clone), "--dino-weights", str(dino), "--sam-weights",
               str(sam), "--photos", str(photos_dir), "--images", str(len(photos)), "--out", str(ref), "--threads",
               str(args.threads), "--first", ",".join(map(str, args.first)),
               "--refine-scales", ",".join(args.refine_scales)] + (["--skip-done"] if args.keep_ref
                                                                                      else [])
        log = open(work / "ref" / "trident.log", "w")
        proc = subprocess.Popen(cmd, env=dp._env(args.threads), stdout=log, stderr=log)
    vt = Vpltool(model, st, config_dir)
    words, owners = [], []
    for c, line in enumerate((clone / "configs" / "cls_voc21.txt").read_text().splitlines(keepends=True)):
        names = [w.replace("\n", "") for w in line.split("; ")]  # Trident's get_cls_idx
        words, owners = words + names, owners + [c] * len(names)
    ours = work / "vpltool_trident"
    if not args.compare_only:
        trident_vpltool(work, vt, photos, words, dino, sam, args.first)
        if proc is not None:
            code = proc.wait()
            if code:
                raise SystemExit(f"trident_ref_runner.py failed ({code}):\n"
                                 + (work / "ref" / "trident.log").read_text()[-3000:])
            (ref / "stamp.json").write_text(json.dumps(stamp))
    elif proc is not None:
        raise SystemExit("--compare-only: the reference's outputs in --work are not of these weights and photos")
    # --compare-only on a run cut short: the photos both sides finished (the reference's meta.json, written at its
    # end, may be missing: its query classes are then read from the class file as its get_cls_idx reads them)
    meta_path = ref / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {
        "query_idx": owners, "config": "configs/cfg_voc21.py", "effective": {}, "resize_scale": [2048, 448],
        "photos": [{"file": p.name, "index": i} for i, p in enumerate(photos)
                   if (ref / f"photo_{i:03d}.pt").is_file() and (ours / f"photo_{i:03d}.pt").is_file()],
        "notes": ["the reference's run was stopped before its end (no meta.json): only the photos both sides "
                  "finished are compared, its effective settings are not recorded"]}
    query_idx = torch.tensor(meta["query_idx"])
    n_classes = int(query_idx.max()) + 1
    settings = DENSE_SEGMENTORS["trident"]
    rows, indices = [], []
    for i, shape in enumerate(meta["photos"]):
        i = shape.pop("index", i)
        indices.append(i)
        theirs, mine = torch.load(ref / f"photo_{i:03d}.pt"), torch.load(ours / f"photo_{i:03d}.pt")
        shape = {"input_shape": list(theirs["input"].shape[-2:]), "ori_shape": list(theirs["pred"].shape[-2:]),
                 **shape}
        probs, labels = dense_probabilities(mine["logits"], query_idx, n_classes, settings.logit_scale,
                                            settings.prob_threshold, settings.area_threshold)
        same = labels.shape == theirs["pred"][0].shape
        nan_mine, nan_theirs = torch.isnan(mine["logits"]), torch.isnan(theirs["logits"][0])
        rows.append({"nan_share": {"vpltool": float(nan_mine.double().mean()),
                                   "reference": float(nan_theirs.double().mean())},
                     "nan_where_equal": bool(torch.equal(nan_mine, nan_theirs)) if same else None,
                     "file": shape["file"], "input_shape": shape["input_shape"], "ori_shape": shape["ori_shape"],
                     "input": dp.max_abs(mine["input"], theirs["input"]),
                     "logits": dp.max_abs(mine["logits"], theirs["logits"][0]),
                     "probs": dp.max_abs(probs, theirs["probs"]),
                     "labels_equal": float((labels == theirs["pred"][0]).double().mean()) if same else None,
                     "reference_label_classes": int(theirs["pred"].unique().numel()),
                     # random CLIP: the mean over pixels of the queries' cosine range (max - min)
                     "reference_query_spread": float((theirs["logits"][0].max(0).values
                                                      - theirs["logits"][0].min(0).values).mean()),
                     "seconds": {"vpltool": round(float(mine["seconds"]), 1), "reference": shape.get("seconds")}})
    refinement = compare_refinement(ref, ours, photos, indices, query_idx, n_classes, settings, sam,
                                    args.refine_scales)
    eff = meta["effective"]
    ours_settings = {"logit_scale": settings.logit_scale, "prob_thd": settings.prob_threshold,
                     "slide_crop": settings.slide_crop, "slide_stride": settings.slide_stride,
                     "short_side": settings.short_side, "beta": 1.2, "gamma": 3.0, "cos_fac": 1.2,
                     "refine_neg_cos": True, "sam_refine": False}
    theirs_settings = {**eff, "short_side": min(meta["resize_scale"])} if eff else {}
    variant = {
        "reference": f"Trident trident.Trident {meta['config']} (eval.py without --sam_refine)",
        "vpltool": "--dense trident, its VOC21 settings", "queries": len(words), "classes": n_classes,
        "text_rows_max_abs_diff": dp.max_abs(vt.rows(words), torch.load(ref / "text.pt")["query_features"]),
        "templates_equal": list(IMAGENET_TEMPLATES) == meta.get("templates"),
        "patch_logits": {},
        "seg_logits_max_abs_diff": dp.worst(r["logits"] for r in rows),
        # random weights: a window whose every proxy similarity is below 1.2x the mean masks whole rows (softmax of
        # -inf: NaN), and SAM's aggregation spreads it over the photo; such photos are listed, and the worst figure
        # of the others is given beside the headline (which stays NaN: the bar is not claimed over them)
        "photos_nan_on_both_sides": [r["file"] for r in rows if r["nan_where_equal"] and r["logits"] != r["logits"]],
        "seg_logits_max_abs_diff_finite_photos": dp.worst(r["logits"] for r in rows if r["logits"] == r["logits"]),
        "probs_max_abs_diff": dp.worst(r["probs"] for r in rows),
        "labels_equal_min": None if any(r["labels_equal"] is None for r in rows)
        else min(r["labels_equal"] for r in rows),
        "reference_label_classes_max": max((r["reference_label_classes"] for r in rows), default=0),
        "settings_mismatched": {k: {"vpltool": v, "reference": theirs_settings.get(k)}
                                for k, v in ours_settings.items() if eff and theirs_settings.get(k) != v},
        "reference_settings": theirs_settings, "photos": rows, "notes": meta.get("notes", []),
        "refinement": refinement,
    }
    return {
        "benchmark": "ovss-parity", "machine": benchlib.machine("cpu"), "model": model,
        "text_layers": args.text_layers, "weights": "random (seed 0, fp16-exact values; DINO and SAM seed 0)",
        "precision": "fp32", "device": "cpu", "threads": args.threads, "photos": {"trident": len(rows)},
        "argv": sys.argv[1:],
        "bar": f"max abs difference of the dense logits <= {BAR:g} and equal labels >= {LABELS_BAR:.1%} (fp32, CPU)",
        "reference": {"clones": {"Trident": {"path": str(clone), "commit": stamp["commit"],
                                             "seconds": meta.get("seconds")}},
                      "dino_clone": str(dino_clone), "missing": []},
        "methods": dp.summary({"trident": variant}, {"trident": ("trident",)}, LABELS_BAR),
        "variants": {"trident": variant}, "seconds": round(time.perf_counter() - start, 1),
        "findings": TRIDENT_FINDINGS,
    }


@contextlib.contextmanager
def replayed_matchings(calls: list):
    """vpltool's Hungarian matching of CASS's heads (its ``scipy.optimize.linear_sum_assignment`` call in
    ``spectral_key_attention``) replaced by the reference's recorded ones, in call order (``calls``: the
    ``matchings`` ``dense_ref_runner.py`` saved, consumed). vpltool still solves its own cost matrix; each call
    appends to the yielded list: whether its own matching differs, and the gap ``Σ own cost of the reference's
    matching - Σ own cost of its own`` (float64, >= 0; 0: the reference's matching is optimal for vpltool's costs
    too, a tie), and the max |Δ| of the two cost matrices. Everything else (the DINO keys, the randomised SVD, the
    blend, the text shift) is vpltool's own arithmetic. The patch is process-wide: run with the CASS variant
    alone."""
    import numpy as np
    import scipy.optimize

    solve = scipy.optimize.linear_sum_assignment
    seen: list = []

    def replay(cost):
        rows, own = solve(cost)
        if not calls:
            raise SystemExit("the reference recorded fewer CASS matchings than vpltool makes")
        ref = calls.pop(0)
        cols = ref["cols"].numpy()
        c = np.asarray(cost, dtype=np.float64)
        seen.append({"differs": bool((cols != own).any()), "gap": float(c[rows, cols].sum() - c[rows, own].sum()),
                     "cost_max_abs_diff": float(np.abs(c - ref["cost"].numpy().astype(np.float64)).max()),
                     **ambiguity(c, solve)})
        return rows, cols

    scipy.optimize.linear_sum_assignment = replay
    try:
        yield seen
    finally:
        scipy.optimize.linear_sum_assignment = solve


def ambiguity(cost, solve) -> dict:
    """How unique the optimal matching of a ``[heads, heads]`` cost (float64) is: ``margin`` the extra total cost of
    the best assignment that leaves out one of the optimum's pairs (0: another optimum exists), ``tied_swaps`` how
    many of the optimum's 2-swaps change its total cost by less than 1e-9, and ``separable`` the largest
    ``|c[i, j] - c[i, 0] - c[0, j] + c[0, 0]|`` (0 would make every assignment cost the same: CASS's cost
    ``1 - Σ|sorted spectrum_D - sorted spectrum_K|`` is additive wherever, at every sorted position, the DINO
    values lie on one side of the CLIP values)."""
    import numpy as np

    rows, cols = solve(cost)
    best = cost[rows, cols].sum()
    margin = np.inf
    for i in range(len(rows)):
        c = cost.copy()
        c[i, cols[i]] = 1e9
        r2, c2 = solve(c)
        margin = min(margin, c[r2, c2].sum() - best)
    n = len(rows)
    swaps = sum(abs(cost[a, cols[a]] + cost[b, cols[b]] - cost[a, cols[b]] - cost[b, cols[a]]) < 1e-9
                for a in range(n) for b in range(a + 1, n))
    sep = cost - cost[:, :1] - cost[:1, :] + cost[0, 0]
    return {"margin": float(margin), "tied_swaps": int(swaps), "swaps": n * (n - 1) // 2,
            "separable": float(np.abs(sep).max())}


def shared_matching(vt: Vpltool, ref: Path, only: list[int] | None = None) -> dict:
    """CASS with the reference's head matchings (:func:`replayed_matchings`): the patch logits of each point-a input
    and the 12 photos' logits, probabilities and labels compared as ``dense_parity.compare_variant`` does; per input
    whether vpltool's own matching differed and its tie gap. Proves (or not) that the free comparison's difference is
    the matching alone."""
    import torch

    from vpltool.models.dense.segmentor import grid_logits

    meta = json.loads((ref / "meta.json").read_text())
    words, query_idx = meta["query_words"], torch.tensor(meta["query_idx"])
    n_classes = int(query_idx.max()) + 1
    text = vt.rows(words)
    bb = vt.backbone("cass")
    out: dict = {"patch_logits": {}, "photos": []}

    def matched(calls):
        return {"matchings": len(calls), "own_matching_differs": sum(c["differs"] for c in calls),
                "tie_gap_max": max((c["gap"] for c in calls), default=None),
                "cost_max_abs_diff": max((c["cost_max_abs_diff"] for c in calls), default=None),
                "margin_min": min((c["margin"] for c in calls), default=None),
                "tied_swaps": [c["tied_swaps"] for c in calls]}

    for key, item in (torch.load(ref / "patch.pt").items() if only is None else []):
        with replayed_matchings(list(item["matchings"])) as calls, torch.no_grad():
            torch.manual_seed(0)
            ours = grid_logits(bb, item["input"], text)
        out["patch_logits"][key] = {"input_shape": list(item["input"].shape[-2:]),
                                    "max_abs_diff": dp.max_abs(ours, item["patch_logits"]), **matched(calls)}
    for i, shape in enumerate(meta["photos"]):
        if only is not None and i not in only:
            continue
        saved = torch.load(ref / f"photo_{i:03d}.pt")
        with replayed_matchings(list(saved["matchings"])) as calls:
            logits, probs, labels = _vpltool_outputs(vt, "cass", saved["input"], text, query_idx, n_classes,
                                                     shape["ori_shape"], False)
        out["photos"].append({"file": shape["file"], "logits": dp.max_abs(logits, saved["logits"][0]),
                              "probs": dp.max_abs(probs, saved["probs"]),
                              "labels_equal": float((labels == saved["pred"][0]).double().mean()), **matched(calls)})
    photos = out["photos"]
    out.update({"seg_logits_max_abs_diff": dp.worst(p["logits"] for p in photos),
                "probs_max_abs_diff": dp.worst(p["probs"] for p in photos),
                "labels_equal_min": min(p["labels_equal"] for p in photos),
                "own_matching_differs": sum(p["own_matching_differs"] for p in photos),
                "tie_gap_max": max(p["tie_gap_max"] for p in photos),
                "margin_max": max(p["margin_min"] for p in photos)})
    return out


def shared_only(args) -> dict:
    """``--shared-only``: :func:`shared_matching` of a few photos against ``--work``'s reference outputs (a finished
    run's), for a change of vpltool's side made after that run."""
    import subprocess

    only = [int(i) for i in args.shared_only.split(",")]
    with harness():
        model, config_dir = dp.model_config(args.work, args.model, args.text_layers)
        vt = Vpltool(model, args.work / "weights.safetensors", config_dir, args.work / "dino_vitb8.pth")
        out = shared_matching(vt, args.work / "ref" / "cass", only)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent).stdout.strip()
    return {"benchmark": "ovss-parity-shared-only", "machine": benchlib.machine("cpu"), "vpltool_commit": commit,
            "argv": sys.argv[1:], "photos": only, "shared_matching": out}


def find_clones(ref: Path) -> dict[str, Path]:
    """:data:`CLONES` -> the clone in ``ref`` (a folder of that name, any case)."""
    children = {p.name.lower(): p for p in ref.iterdir() if p.is_dir()} if ref.is_dir() else {}
    return {name: children[name.lower()] for name in CLONES if name.lower() in children}


def summary(variants: dict) -> dict:
    """Per method: the worst max |Δ| of its patch and seg logits, the fewest equal labels, and both bars."""
    return dp.summary(variants, METHODS, LABELS_BAR)


def merge(files: list[Path]) -> dict:
    """Several runs' JSON (e.g. one per method, run apart on a shared machine) as one: their methods, variants and
    clones side by side, each run's own header kept under ``runs``."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    out = {"benchmark": "ovss-parity", "merged": [str(f) for f in files], "bar": runs[0]["bar"], "methods": {},
           "variants": {}, "reference": {"clones": {}, "missing": []}, "runs": []}
    for r in runs:
        out["methods"].update(r["methods"])
        out["variants"].update(r["variants"])
        if isinstance(r["reference"], dict):
            out["reference"]["clones"].update(r["reference"]["clones"])
        out["runs"].append({k: v for k, v in r.items() if k not in ("methods", "variants", "reference")})
    return out


def weights_of(work: Path) -> str:
    """What the random weights in ``work`` are: the seed-0 init, or the copy ``cass_weights.py --out`` shaped for
    CASS (its ``cass_weights.json`` says how)."""
    shaped = work / "cass_weights.json"
    return json.loads(shaped.read_text())["weights"] if shaped.is_file() else "random (seed 0, fp16-exact values)"


def run(work: Path, args, argv: list[str] | None = None) -> dict:
    start = time.perf_counter()
    cache = work / "vpltool_cache"
    with harness(cache if cache.is_dir() and not args.quick else None):
        model, config_dir = dp.model_config(work, args.model, None if args.quick else args.text_layers)
        pt, st, photos = dp.setup(work, model, config_dir, args.images, 0.25 if args.quick else 1.0)
        procs: dict = {}
        if args.ref and not args.quick:
            selected = args.methods.split(",")
            clones = {c: path for c, path in find_clones(args.ref).items()
                      if any(v[0] == c and n in selected for n, v in VARIANTS.items())}
            dino = proxy_weights(work, args.proxy_pos_std)
            vt = Vpltool(model, st, config_dir, dino)
            dino_clone = args.dino_clone or next((p for p in args.ref.iterdir() if p.name.lower() == "dino"), None)
            if "ProxyCLIP" in clones and "proxyclip" in selected and dino_clone is None:
                raise SystemExit("ProxyCLIP needs a clone of facebookresearch/dino: --dino-clone DIR (or DIR/dino)")
            dp.RUNNER_ARGS["ProxyCLIP"] = ["--proxy-clone", str(dino_clone), "--proxy-weights", str(dino)]
            dp.RUNNER_ARGS["CASS"] = ["--proxy-weights", str(dino)]  # its own dino/ copy loads them
            reference, procs = dp.start_references(clones, work, pt, photos, args.images, args.proxy_images,
                                                   args.threads, args.ref_python)
            names = [n for n, v in VARIANTS.items() if v[0] in clones and n in selected]
            source = {"clones": reference, "missing": [c for c in CLONES if c not in clones]}
        else:
            vt = Vpltool(model, st, config_dir)  # the toy DINO as the proxy
            dp.write_self_reference(vt, work, photos, args.images)
            names, source = list(VARIANTS), "self: vpltool against itself (no --ref): the comparison's plumbing only"
        variants = dp.compare_all(vt, names, work, procs, args.jobs)
        if procs:
            dp.finish_references(procs, source["clones"], work)
        if "cass" in variants and args.ref and not args.quick and args.shared_matching:
            variants["cass"]["shared_matching"] = shared_matching(vt, work / "ref" / "cass")
    return {
        "benchmark": "ovss-parity", "quick": args.quick, "machine": benchlib.machine("cpu"), "model": model,
        "text_layers": None if args.quick else args.text_layers,
        "weights": weights_of(work), "precision": "fp32", "device": "cpu",
        "proxy_weights": ("DINO ViT-B/8, timm's init (seed 0)" if args.proxy_pos_std is None else
                          f"DINO ViT-B/8, timm's init (seed 0), pos_embed N(0, {args.proxy_pos_std:g}) (seed 2)"),
        **({"findings": PROXYCLIP_FINDINGS} if args.proxy_pos_std is not None and "proxyclip" in args.methods
           else {}),
        "threads": args.threads, "photos": {n: len(v["photos"]) for n, v in variants.items()},
        "argv": sys.argv[1:] if argv is None else argv,
        "bar": f"max abs difference of the dense logits <= {BAR:g} and equal labels >= {LABELS_BAR:.1%} (fp32, CPU)",
        "reference": source, "methods": summary(variants), "variants": variants,
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, help=f"a folder holding clones {', '.join(CLONES)} (without it, or with "
                                             "--quick: vpltool against itself, the comparison's plumbing only)")
    ap.add_argument("--work", type=Path, help="keep the weights, photos and the clones' outputs here (reused)")
    ap.add_argument("--images", type=int, default=12, help="photos of SC-CLIP")
    ap.add_argument("--proxy-images", type=int, default=12, help="photos of ProxyCLIP (its DINO ViT-B/8 costs ~10x "
                                                                  "CLIP's forward per window)")
    ap.add_argument("--merge", type=Path, nargs="+", help="print the merge of these runs' JSON files and exit")
    ap.add_argument("--precompute", action="store_true", help="only vpltool's logits of the photos, into "
                    "--work's vpltool_cache (run beside a comparison that waits for its reference; it reads them)")
    ap.add_argument("--text-layers", type=int, default=1,
                    help="text blocks of the random model (0: the model's own 12); the image tower is ViT-B/16's")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (and per clone)")
    ap.add_argument("--jobs", type=int, default=2, help="variants compared at once (threads) on vpltool's side")
    ap.add_argument("--model", default="ViT-B-16-quickgelu")
    ap.add_argument("--proxy-pos-std", type=float, help="the proxy DINO's pos_embed redrawn N(0, S), seed 2, on both "
                    "sides (ProxyCLIP: with timm's 0.02 its proxy attention is all -inf on smooth photos; default: "
                    "timm's init)")
    ap.add_argument("--dino-clone", type=Path, help="a clone of facebookresearch/dino for ProxyCLIP's torch.hub "
                                                    "model [default: --ref's dino folder]")
    ap.add_argument("--methods", default=",".join(VARIANTS), help="the variants to run, comma-separated; or trident "
                    "alone (run_trident)")
    ap.add_argument("--first", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                    help="--methods trident: photo indices both sides run first (a run stopped early has them)")
    ap.add_argument("--refine-scales", type=lambda v: [x for x in v.split(",") if x], default=["40", "150", "150:0.5"],
                    help="--methods trident: the logit scales (SCALE, or SCALE:SAM_IOU_THRESH) at which Trident's "
                    "post-processing is also compared without and with its SAM refinement (eval.py --sam_refine)")
    ap.add_argument("--dino-collapse", action="store_true", help="only the pooled mean DINO cosine per photo with "
                    "timm's pos_embed and the parity's (why --methods trident was NaN), as JSON")
    ap.add_argument("--keep-ref", action="store_true", help="--methods trident: resume the reference's run in "
                    "--work (its finished photos kept; the caller vouches they are of the same weights and commit)")
    ap.add_argument("--compare-only", action="store_true", help="--methods trident: compare the photos both sides "
                    "left in --work (a run cut short), run nothing")
    ap.add_argument("--shared-matching", action="store_true",
                    help="CASS: also compare with the reference's recorded head matchings replayed on vpltool's side "
                         "(shared_matching in its variant: is the difference the tied matching alone?)")
    ap.add_argument("--shared-only", help="CASS: only the --shared-matching comparison of these photos (indices, "
                                          "comma-separated) against --work's reference outputs, at this commit")
    ap.add_argument("--ref-python", default=sys.executable, help="a Python with torch, ftfy, regex, OpenCV")
    benchlib.add_common_args(ap, f"{QUICK['images']} small photo, the tiny random test ViT, no clone",
                             "ignored: both sides run fp32 on the CPU")
    args = benchlib.apply_quick(ap.parse_args(argv), QUICK)
    if args.merge:
        print(json.dumps(merge(args.merge)))
        return
    if args.shared_only:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(shared_only(args)))
        return
    if args.precompute:
        import torch

        torch.set_num_threads(args.threads)
        precompute(args.work, args)
        return
    if args.quick:
        args.proxy_images = args.images
    import torch

    torch.set_num_threads(args.threads)
    if args.dino_collapse:
        work = args.work or Path(tempfile.mkdtemp(prefix="ovss_parity_"))
        print(json.dumps(dino_collapse(work, args)))
        return
    if args.methods == "trident":
        with tempfile.TemporaryDirectory(prefix="ovss_parity_") as tmp:
            work = args.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            print(json.dumps(run_trident(work, args)))
        return
    with tempfile.TemporaryDirectory(prefix="ovss_parity_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(json.dumps(run(work, args, argv)))


if __name__ == "__main__":
    main()
