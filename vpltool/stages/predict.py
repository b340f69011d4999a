"""`vpltool predict`: a trained decoder -> palette PNG masks for a dataset split (WeCLIP's test protocol).

Per image (WeCLIP ``test_msc_flip_voc.py``; the inference itself is :func:`vpltool.decoder.multiscale_logits`):

1. The long side is resized to ``long_side`` (default 1.6 x the decoder's training crop: WeCLIP trains on 320
   crops and tests at 512), each side rounded up to a multiple of the patch size; the same for every scale
   ``s`` in ``scales`` at ``s x long_side``.
2. Each view and its mirror go through the frozen CLIP and the decoder; the mirror's scores are flipped back
   and the two averaged. Scores of the other scales are resized (bilinear) to the first scale's patch grid and
   averaged with it.
3. The averaged scores are resized to the image and arg-maxed; with ``crf`` the softmax first goes through a
   dense CRF with WeCLIP's test parameters on the RGB image (``crf_proc``): with ``crf_backend`` torch on the device,
   the batch at once (:func:`vpltool.ops.densecrf.crf_labels`); with pydensecrf on the writer thread, image by image.

Open vocabulary with ``--dense METHOD`` (:func:`_predict_dense`): the names are scored by the decoder's frozen CLIP
with a training-free dense last block (MaskCLIP, SCLIP, ClearCLIP, NACLIP) instead of the decoder, for names it
never trained on.

Open vocabulary (``cfg.classes``): the decoder's prototype rows are replaced by text prototypes of the given names
(and of the training's background words), encoded by the decoder's frozen CLIP with the templates its training
prototypes were made with (:func:`open_vocabulary`); the masks are over those classes, which ``_stage.json``
records, and `eval` maps them to the dataset's classes by name. Prototypes without a decoder are not supported.

Images whose views have the same sizes run as one batch (views and mirrors of every image of the batch in one forward
per scale, then each image's scores resized to its own size), through the shared pipeline of
:mod:`vpltool.runtime.batches`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .. import io
from ..config import NOT_COMPARED, CrfConfig, PredictConfig, RuntimeConfig, check_tokens, presets, to_params
from ..decoder import (
    SegDecoder,
    class_argmax,
    decoder_forward,
    decoder_head,
    input_long_side,
    multiscale_logits,
    view_size,
    weclip_views,
)
from ..decoder.stored import ViewFeatures, expected_shapes, stored_view, view_store
from ..device import resolve_device, resolve_precision, shard_from_env
from ..errors import ContractError, VplError
from ..models import ClipBackbone, DinoSpec, ModelSpec, check_model, check_tokenizer, load_model
from ..ops.densecrf import crf_labels, dense_crf, densecrf_module, image_tensor, resolve_backend, torch_unary
from ..runtime.batches import image_names, image_stage, resolve_batch_size, run_image_batches, to_device
from ..runtime.numerics import run_numerics

STAGE = "predict"


def crf_config(cfg: PredictConfig) -> CrfConfig:
    """WeCLIP's test-time CRF parameters as a :class:`CrfConfig` for :mod:`vpltool.ops.densecrf`."""
    return CrfConfig(iterations=cfg.crf_iterations, gaussian_sxy=cfg.crf_gaussian_sxy,
                     gaussian_compat=cfg.crf_gaussian_compat, bilateral_sxy=cfg.crf_bilateral_sxy,
                     bilateral_srgb=cfg.crf_bilateral_srgb, bilateral_compat=cfg.crf_bilateral_compat)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[image | image blended 50 % with the palette colours of mask]`` ``[H, 2W, 3]`` uint8."""
    palette = np.asarray(io.voc_palette(), dtype=np.uint8).reshape(256, 3)
    return np.concatenate([image, (0.5 * image + 0.5 * palette[mask]).astype(np.uint8)], axis=1)


def _check_tokens(bb: ClipBackbone, path: Path, image_size: tuple[int, int], long_side: int,
                  cfg: PredictConfig) -> None:
    """Refuse an image whose largest test view (``max(scales) x long_side``) exceeds ``cfg.max_tokens`` patch
    tokens, before its forward: one line naming the image and the ``--long-side`` that fits."""
    scale = max(cfg.scales)
    size = view_size(bb, *image_size, long_side, scale)
    grid = (size[0] // bb.patch_size, size[1] // bb.patch_size)
    check_tokens(path, size, grid, bb.patch_size, cfg.max_tokens, stage="predict", scale=scale)


def check_vocabulary(names: tuple[str, ...], prompts: dict, decoder: Path) -> None:
    """Open-vocabulary names must not be one of the decoder's background words (its training prototypes' own):
    the word would be both a class and background (what text-prototypes refuses as well)."""
    clash = presets.clashing_word(names, prompts["background_words"])
    if clash is not None:
        raise VplError(f"--classes: {clash!r} is one of the background words of {decoder} "
                       f"({', '.join(prompts['background_words'])}); a class cannot also be background: drop it")


def text_class_vectors(bb: ClipBackbone, names: list[str], prompts: dict) -> tuple[Tensor, Tensor]:
    """Text prototypes for ``names`` as `text-prototypes` makes them: per name (and per background word) the
    normalised mean of its normalised prompt embeddings over ``prompts['templates']``.

    Returns:
        ``[C + M, D]`` float32 unit rows (the C names, then the M background words) and ``[C + M]`` int64 their
        classes (1..C, 0 for background words).
    """
    classes = ["background", *names]
    preset = presets.preset_for(classes) if prompts.get("synonyms", True) else None
    words = presets.prompt_names(classes, preset) + list(prompts["background_words"])
    templates = prompts["templates"]
    emb = bb.encode_text([t.format(w) for w in words for t in templates], exact=prompts.get("parity") == "clip-es")
    mean = emb.view(len(words), len(templates), -1).mean(1)
    row_class = torch.cat([torch.arange(1, len(names) + 1), torch.zeros(len(words) - len(names), dtype=torch.long)])
    return (mean / mean.norm(dim=-1, keepdim=True)).cpu(), row_class


def recorded_prompts(f: io.TensorFile) -> dict:
    """The templates and background words a decoder's training prototypes were made with (``train-decoder``
    records them); VplError when it records none or has no background word (checked before the CLIP loads)."""
    prompts = f.meta("prompts", None)
    if not prompts:
        raise VplError(f"{f.path}: records no text templates / background words (trained by an older vpltool or on "
                       "vision prototypes whose text file is gone); retrain it to use --classes")
    if not prompts["background_words"]:
        raise VplError(f"{f.path}: trained without background words; --classes needs them to score background")
    return prompts


def open_vocabulary(model: SegDecoder, bb: ClipBackbone, names: tuple[str, ...], prompts: dict) -> list[str]:
    """Swap the decoder's rows for text prototypes of ``names`` and of the ``prompts``' background words
    (:func:`text_class_vectors`); returns the classes ``['background', *names]``."""
    try:
        vectors, row_class = text_class_vectors(bb, list(names), prompts)
    except VplError as e:  # e.g. a word the toy CLIP's tokenizer does not know
        raise VplError(f"--classes: {e}") from None
    model.set_prototypes(vectors.to(bb.device), row_class)
    return ["background", *names]


def _open_split(f: io.TensorFile, data: str | Path | None, split: str | None, check_classes: bool = True):
    """The dataset to predict: ``data`` (+ split), or the decoder's training dataset root with ``split``; its
    classes must be the decoder's unless ``check_classes`` is off (open vocabulary: eval maps them by name)."""
    from ..data import open_dataset

    if data is None:
        trained_on = f.meta("dataset", None)
        if not trained_on:
            raise VplError(f"{f.path}: records no dataset; pass --data ROOT")
        if not Path(trained_on["root"]).exists():
            raise VplError(f"{f.path}: its training dataset {trained_on['root']} is gone (moved or deleted); "
                           "pass --data with its new place")
        data = trained_on["root"]
    dataset = open_dataset(data, split)
    if check_classes and list(dataset.classes) != list(f.classes):
        raise ContractError(f"{f.path}: trained for classes {f.classes[1:4]}..., the dataset has "
                            f"{list(dataset.classes)[1:4]}...; predict on a dataset with the same classes")
    return dataset


def decoder_dino_weights(f, recorded: str, given: str | Path | None) -> str:
    """The DINO weights of a WeCLIP+ decoder ``f``: ``given`` (``--dino-weights``), else the ``recorded`` path (its
    training resolves a file to an absolute path and records its sha256 in ``inputs.dino_weights``). A file whose
    sha256 is not the recorded one is refused, and so is a recorded file that is not there, naming the option."""
    inputs = f.meta("inputs", None)
    ident = inputs.get("dino_weights") if isinstance(inputs, dict) else None
    if given is None:
        if recorded in ("hub", "none") or Path(recorded).is_file():
            return recorded
        raise VplError(f"{f.path}: its DINO weights {recorded} are not there (the path its training recorded); "
                       "pass --dino-weights FILE (the same file)")
    given = Path(given)
    if not given.is_file():
        raise VplError(f"--dino-weights {given}: no such file; give the DINO weights file the decoder was trained "
                       "with")
    if isinstance(ident, dict) and ident.get("sha256") and io.sha256_file(given) != ident["sha256"]:
        raise VplError(f"--dino-weights {given}: not the file {f.path} was trained with (sha256 differs from "
                       f"{ident['path']}'s); give that file")
    return str(given.resolve())


def _check_trained_with(f: io.TensorFile, key: str, weights: str) -> None:
    """A model the decoder was trained beside (its ``inputs``' ``key``, by content: :mod:`vpltool.io.inputs`) is
    loaded again only from the very bytes it was trained with: one line naming the file otherwise."""
    inputs = f.meta("inputs", None)
    recorded = inputs.get(key) if isinstance(inputs, dict) else None
    now = io.weights_identity(weights)
    if isinstance(recorded, dict) and io.by_content(recorded) != io.by_content(now):
        raise VplError(f"{weights}: not the weights {f.path} was trained with ({recorded.get('path')}, sha256 "
                       f"{str(recorded.get('sha256')).removeprefix('sha256:')[:12]}…): it changed since; restore "
                       "that file, or re-train the decoder (train-decoder --overwrite)")


def run_predict(
    decoder_file: str | Path,
    data: str | Path | None,
    split: str | None,
    out: str | Path,
    cfg: PredictConfig = PredictConfig(),
    runtime: RuntimeConfig = RuntimeConfig(),
    *,
    overlays: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    dino_weights: str | Path | None = None,
    on_item: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    backbone: ClipBackbone | None = None,
    model_at: ModelSpec | None = None,
    feature_store: str | Path | None = None,
) -> io.StageSummary:
    """Masks ``<out>/<id>.png`` for every image of a split, then ``<out>/_stage.json`` (so `vpltool eval OUT` works).

    Args:
        decoder_file: a ``decoder.safetensors`` of `train-decoder`; it names the frozen CLIP and the classes.
        data: dataset root or manifest; None = the dataset the decoder was trained on (with ``split``).
        overlays: optional folder for ``<id>.png`` side-by-side previews.
        backbone: reuse an already loaded CLIP (it must be the one the decoder records).
        model_at: where the decoder's CLIP lies now (``--model local-dir:NEW``, its folder renamed since), taken
            when it holds the recorded weights (:meth:`vpltool.models.ModelSpec.from_identity`).
        feature_store: the frozen CLIP's features of the views kept here by content (:mod:`vpltool.decoder.stored`),
            read by a later run of the same CLIP, views and images (another decoder's) instead of encoding them.
    """
    out = io.check_folder_target(out)  # before the decoder and the CLIP load
    dataset = _open_split(io.read_tensors(decoder_file, kind=io.DECODER_KIND, keys=()), data, split,  # its header
                          check_classes=not cfg.classes)
    io.check_outputs(STAGE, {"--out": (out, "stage"), "--save-overlays": (overlays, "side")},
                     inputs={"the decoder": decoder_file, "the dataset": dataset.root}, protected=dataset.folders(),
                     overwrite=runtime.overwrite)
    device = resolve_device(runtime.device)
    dtype = resolve_precision(runtime.precision, device)
    numerics = run_numerics(dtype, runtime.precision, device)  # the decoder's dtype and mode: another is a warning
    io.check_numerics(numerics, (decoder_file, io.header_numerics(io.read_header(decoder_file)), "train-decoder"),
                      weights=True)
    if cfg.crf:  # the backend that runs is recorded: the two differ in float rounding
        cfg = replace(cfg, crf_backend=resolve_backend(cfg.crf_backend, device.type))
        if cfg.crf_backend == "pydensecrf":
            densecrf_module()  # one line before the decoder loads
    if cfg.dense != "none":
        if feature_store is not None:
            raise VplError(f"--feature-store {feature_store}: keeps the decoder's frozen features, which --dense "
                           f"{cfg.dense} does not run; drop one of them")
        if overlays is not None:
            raise VplError(f"--save-overlays: not made with --dense {cfg.dense}; drop one of them (vpltool report "
                           "shows the masks over the images)")
        return _predict_dense(decoder_file, dataset, out, cfg, runtime, device, dtype, shard, on_item, on_start,
                              backbone, model_at)
    decoder_id = io.file_identity(decoder_file)  # named by its bytes before they load: the record is what loads
    check_model("decoder", decoder_file)  # in the run's ledger of model files (io.reads), then held to the folder's
    io.check_folder_reads(out, runtime.overwrite and shard_from_env(shard)[0] == 0)  # before the decoder loads
    model, f = load_model("decoder", decoder_file, device)
    if model.dino_width is not None:  # WeCLIP+: its frozen DINO, checked (one line offline) before any output
        spec = DinoSpec(model.cfg.dino_model, decoder_dino_weights(f, model.cfg.dino_weights, dino_weights))
        check_model("dino", spec)
        _check_trained_with(f, "dino_weights", spec.weights)
        model.dino_backbone = load_model("dino", spec, device)
    bb, classes = backbone, list(f.classes)
    clip_spec = ModelSpec.from_identity(f.meta("model"), f.path, model_at)  # the weights it was trained on
    if cfg.classes:  # open vocabulary: encode the names (and refuse an unknown word) before any file is written
        if model.cfg.classifier == "conv":
            raise VplError(f"{f.path}: a decoder with a conv classifier (--recipe weclip) scores its own classes only; "
                           "--classes needs one trained with --classifier prototypes")
        prompts = recorded_prompts(f)
        check_vocabulary(cfg.classes, prompts, f.path)
        bb = bb or load_model("clip", clip_spec, device)
        classes = open_vocabulary(model, bb, cfg.classes, prompts)
    params = {**to_params(cfg), "decoder": decoder_id}
    shard = shard_from_env(shard)  # before anything is written: a --shard at odds with torchrun's rank is refused
    inputs = {"decoder": decoder_id["sha256"], **dataset.inputs()}

    weclip = cfg.resize == "bilinear" or (cfg.resize == "auto" and model.cfg.recipe in ("weclip", "weclip+"))
    if feature_store is not None and weclip:
        raise VplError(f"--feature-store {feature_store}: keeps the features of the bicubic test views (--resize "
                       "bicubic, a VPL decoder's); drop it for WeCLIP's bilinear ones")

    def work(items: list, sizes: list[tuple[int, int]]) -> None:  # the sizes read before the CLIP loads
        clip = bb or load_model("clip", clip_spec, device)
        stats = model.cfg.input_stats()  # WeCLIP's decoders see ImageNet's mean / std, as in training
        clip = clip.with_normalization(*stats) if stats else clip
        arch = f.meta("decoder_arch")
        if clip.width != arch["in_width"]:
            raise ContractError(f"{f.path}: trained on a CLIP of width {arch['in_width']}, got {clip.width}")
        long_side = input_long_side(cfg.long_side, f.meta("decoder_config")["crop_size"])
        for item, size in zip(items, sizes):
            _check_tokens(clip, item.image, size, long_side, cfg)
        if weclip:
            return _predict_weclip(clip, model, arch["blocks"], items, sizes, long_side, out, cfg, runtime, dtype,
                                   overlays, on_item)
        if feature_store is None:
            return _predict(clip, model, arch["blocks"], items, sizes, long_side, out, cfg, runtime, dtype, overlays,
                            on_item)
        views = [[view_size(clip, h, w, long_side, s) for s in cfg.scales] for h, w in sizes]
        identity = {"stage": STAGE, "model": f.meta("model"), "mean": list(clip.mean), "std": list(clip.std),
                    "blocks": list(arch["blocks"]), "views": views, "flip": cfg.flip, "dtype": str(dtype),
                    "numerics": numerics, "batch": resolve_batch_size(runtime.batch_size, device, 1)}
        shapes = expected_shapes(views, cfg.flip, len(arch["blocks"]), clip.patch_size, clip.width)
        with view_store(feature_store, identity, [item.image for item in items], shapes, cfg.flip) as memo:
            _predict(clip, model, arch["blocks"], items, sizes, long_side, out, cfg, runtime, dtype, overlays,
                     on_item, memo)

    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, not_compared=NOT_COMPARED, inputs=inputs,
                            shard=shard, sides={"--save-overlays": overlays}, numerics=numerics)
    return image_stage(folder, dataset, io.mask_path, runtime.loader_workers(device), work, on_start, classes=classes)


def _predict_dense(decoder_file, dataset, out: Path, cfg: PredictConfig, runtime: RuntimeConfig, device, dtype,
                   shard, on_item, on_start, backbone, model_at=None) -> io.StageSummary:
    """``--classes`` with ``--dense METHOD``: the names scored by the decoder's frozen CLIP with that training-free
    dense last block (:mod:`vpltool.models.dense.segmentor`, the method's settings), the decoder's own text templates
    and background words as queries; the decoder itself is not run (names it never trained on)."""
    from ..models.dense.method import resolve_method
    from ..models.dense.segmentor import settings_params
    from ._masks import DenseJob, dense_mask_stage

    f = io.read_tensors(decoder_file, kind=io.DECODER_KIND, keys=())
    prompts = recorded_prompts(f)
    check_vocabulary(cfg.classes, prompts, f.path)
    method = resolve_method(cfg.segment_config())  # the method resolved once: its own check, then its per-image
    method.hooks.check_items(dataset.items)  # inputs' check, both before any model loads (as segment's)
    settings = method.settings
    classes = ["background", *cfg.classes]
    decoder_id = io.file_identity(f.path)
    params = {**to_params(cfg), "decoder": decoder_id,
              "settings": settings_params(settings), **method.hooks.record()}
    inputs = {"decoder": decoder_id["sha256"], **dataset.inputs()}
    model = ModelSpec.from_identity(f.meta("model"), f.path, model_at)
    method.check_backbone(model)  # its CLIP takes the method (a timm tower: the mixing presets), before it loads
    if not method.hooks.own_backbone:
        check_tokenizer(model)  # the names are encoded: the CLIP's tokenizer is made here (SigLIP 2's: the hub's)
    synonyms = [[n.replace("_", " ")] for n in cfg.classes]
    folder = io.StageFolder(out, STAGE, params, overwrite=runtime.overwrite, not_compared=NOT_COMPARED, inputs=inputs,
                            shard=shard_from_env(shard), numerics=run_numerics(dtype, runtime.precision, device),
                            older=method.hooks.older_record)
    job = DenseJob(cfg.dense, classes, settings, dtype, lambda: method.load(model, device, backbone, dtype),
                   (synonyms, prompts["templates"], prompts["background_words"]), "--classes")
    return dense_mask_stage(folder, dataset, job, runtime, device, on_start, on_item)


def _predict(bb: ClipBackbone, model, blocks, items: list, sizes: list[tuple[int, int]], long_side: int, out: Path,
             cfg: PredictConfig, runtime: RuntimeConfig, dtype, overlays, on_item, memo: ViewFeatures | None = None
             ) -> None:
    """Images batched by their views' sizes (the view grid, not the raw size: VOC's many photo sizes share a few
    grids): every view and mirror in one forward per scale, each image's scores resized to its own size and
    arg-maxed on the device, the masks (and the CRF, when asked) written behind. ``memo``: the feature store's
    (:mod:`vpltool.decoder.stored`): the frozen features kept (a miss) or read instead of the views (a hit)."""
    pre = bb.preprocessor
    keep_image = cfg.crf or overlays is not None
    crf_on_device = cfg.crf and cfg.crf_backend == "torch"
    views = [tuple(view_size(bb, h, w, long_side, s) for s in cfg.scales) for h, w in sizes]
    hit = memo is not None and memo.stored is not None
    forward = decoder_forward(bb, model, blocks, dtype, None if memo is None else memo.features)
    head = decoder_head(model, bb.device, dtype)

    def load(i: int) -> dict:  # in a loading worker: each view, uint8 (resized here or on the device); the image
        image = io.load_image(items[i].image) if keep_image or not hit else None  # only for the CRF/overlays
        resized = {} if hit else {f"view{j}": pre.loaded(image, size) for j, size in enumerate(views[i])}
        return {**resized, **({"image": image} if keep_image else {})}

    def run(batch: dict) -> Callable[[slice], dict]:  # on the device: a chunk of the batch -> its scores
        index = batch["index"]
        pixels = [] if hit else [bb.pixels(batch[f"view{j}"], views[index[0]][j]) for j in range(len(cfg.scales))]

        def chunk(part: slice) -> dict:
            if hit:  # the stored features of each scale, the decoder alone
                feats = [memo.batch(index[part], j, bb.device) for j in range(len(cfg.scales))]
                grid = multiscale_logits(head, feats, cfg.flip, stored_view)
            else:
                if memo is not None:
                    memo.at(index[part])
                grid = multiscale_logits(forward, [p[part] for p in pixels], cfg.flip)  # [b, C+1, h0, w0]
            scores = [_image_scores(grid[b : b + 1], sizes[index[part.start + b]], cfg.crf)
                      for b in range(part.stop - part.start)]
            images = batch["image"][part] if keep_image else [None] * len(scores)
            return {"scores": _crf_masks(scores, images, cfg) if crf_on_device else scores, "image": images}

        return chunk

    write = _writer(out, [item.id for item in items], cfg, overlays)
    run_image_batches(views, load, run, write, bb.device, runtime, image_names(items, sizes),
                      "pass a smaller --long-side or --scales, or a smaller --batch-size", on_item,
                      workers=0 if hit and not keep_image else None)  # a hit loads nothing: no loading processes


def _predict_weclip(bb: ClipBackbone, model, blocks, items: list, sizes: list[tuple[int, int]], long_side: int,
                    out: Path, cfg: PredictConfig, runtime: RuntimeConfig, dtype, overlays, on_item) -> None:
    """WeCLIP's test views (:func:`vpltool.decoder.weclip_views`: bilinear on the normalised tensor, sizes
    truncated), on the shared loop with one image a batch (each image's views have their own sizes), decoded ahead;
    scores, CRF and writing as :func:`_predict`."""
    keep_image = cfg.crf or overlays is not None
    forward = decoder_forward(bb, model, blocks, dtype)

    def run(batch: dict) -> Callable[[slice], dict]:  # on the device: the batch's one image -> its scores
        image, size = batch["image"][0], sizes[batch["index"][0]]

        def chunk(part: slice) -> dict:
            grid = multiscale_logits(forward, weclip_views(bb, image, long_side, cfg.scales), cfg.flip)
            scores = [_image_scores(grid, size, cfg.crf)]
            if cfg.crf and cfg.crf_backend == "torch":
                scores = _crf_masks(scores, [image], cfg)
            return {"scores": scores, "image": [image if keep_image else None]}

        return chunk

    run_image_batches(sizes, lambda i: {"image": io.load_image(items[i].image)}, run,
                      _writer(out, [item.id for item in items], cfg, overlays), bb.device, runtime,
                      image_names(items, sizes), "pass a smaller --long-side or --scales", on_item, batch_size=1)


def _image_scores(logits: torch.Tensor, size: tuple[int, int], crf: bool) -> torch.Tensor:
    """One image's ``[1, C+1, h0, w0]`` view-grid scores resized to its ``size`` (bilinear, as WeCLIP): the mask
    ``[H0, W0]`` uint8, or with ``crf`` the softmax ``[C+1, H0, W0]`` the CRF starts from (on the device)."""
    full = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[0]
    return full.softmax(0) if crf else class_argmax(full).to(torch.uint8)


def _crf_masks(probs: list[torch.Tensor], images: list[np.ndarray], cfg: PredictConfig) -> list[torch.Tensor]:
    """B ``[C, H_b, W_b]`` softmax scores -> B ``[H_b, W_b]`` uint8 masks after the dense CRF on their device (the
    torch backend), nothing waiting for the device."""
    pictures = [to_device(image_tensor(image), probs[0].device) for image in images]
    return crf_labels(pictures, [torch_unary(p) for p in probs], [range(p.shape[0]) for p in probs],
                      crf_config(cfg), None)


def _writer(out: Path, ids: list[str], cfg: PredictConfig, overlays) -> Callable[[list[int], dict], None]:
    """Writes a chunk's masks, on a writer thread: ``write(index, t)`` for the images ``index`` of ``ids``, ``t``'s
    ``scores`` the masks, or with ``cfg.crf`` and pydensecrf the probabilities the CRF runs on here, and its
    ``image`` the decoded images (None unless the CRF or the overlays need them)."""

    def write(index: list[int], t: dict) -> None:
        for i, image, scores in zip(index, t["image"], t["scores"]):
            if cfg.crf and cfg.crf_backend == "pydensecrf":
                mask = dense_crf(image, scores.float().numpy(), crf_config(cfg)).argmax(0).astype(np.uint8)
            else:
                mask = scores.numpy()
            io.write_mask(io.mask_path(out, ids[i]), mask, ids[i])
            if overlays is not None:
                io.write_png(io.mask_path(overlays, ids[i]), overlay(image, mask))

    return write
