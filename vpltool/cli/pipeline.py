"""The commands of the first pass and VPL phase 1: extract, text-prototypes, learn-prototypes, crf (`cam` is
:mod:`.cam`)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    CrfConfig,
    ExtractConfig,
    LearnPrototypesConfig,
    TextPrototypesConfig,
    ignored_option,
)
from ..errors import VplError, VplWarning
from .options import (
    _R,
    BATCHED,
    RUNTIME,
    Device,
    LogFile,
    ModelConfigDir,
    ModelOpt,
    OutDir,
    OutFile,
    Overwrite,
    OverwriteFile,
    Precision,
    PretrainedOpt,
    Shard,
    Split,
    Verbose,
    file_path,
    runtime,
    warn_inert,
)
from .output import pending, progress, say
from .values import model_spec
from .values import shard as shard_of


# ============================================================================================= extract
def extract_cmd(
    data: Annotated[Path, typer.Argument(help="Dataset: a VOC root, a COCO root, a generic folder or manifest.json.")],
    out: OutDir,
    split: Split = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    image_size: Annotated[Optional[int], typer.Option(help="Fixed square input side; default: each side rounded "
                                                      "up to a multiple of the patch size (CLIP-ES).")] = None,
    max_side: Annotated[Optional[int], typer.Option(help="Shrink longer sides above this first (e.g. 1024 for "
                                                    "camera photos).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Refuse an image whose input has more patch tokens than this, "
                                            "before the forward (attention memory grows with its square).")] =
        ExtractConfig.max_tokens,
    attention_blocks: Annotated[Optional[int], typer.Option(
        help=f"Last blocks whose attention CAA averages [default: {ExtractConfig.attention_blocks} (CLIP-ES), or "
        "every block of a shallower model; a value given must be at most the model's depth].",
        show_default=False)] = None,
    cache: Annotated[str, typer.Option(help="light: dense features only (0.8 MB per 500x375 image; `cam` re-runs "
                                       "the frozen blocks) | full: + the last block's input and attention (3.1 MB; a "
                                       "fast second `cam` pass).")] = ExtractConfig.cache,
    parity: Annotated[str, typer.Option(help="none | clip-es (CLIP-ES's fp16-rounded positional embedding, tokens "
                                        "cached in fp32: for `cam --parity clip-es`).")] = ExtractConfig.parity,
    shard: Shard = None,
    allow_pickle: Annotated[bool, typer.Option(help="Allow an IRN-style cls_labels.npy (a pickle).")] = False,
    labels_file: Annotated[Optional[Path], typer.Option(help="Image-label file overriding the layout's own.")] = None,
    run: dict = BATCHED,
    model_config_dir: ModelConfigDir = None,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Run the frozen CLIP image encoder once per image and cache what later stages need.

    \b
    Example:
      vpltool extract data/VOC2012 --split train -o runs/voc/features --model ViT-B-16 --pretrained openai
    """
    from ..data import open_dataset
    from ..stages.extract import run_extract

    spec = model_spec(model, pretrained, model_config_dir)
    depth = spec.depth() if attention_blocks is not None else None
    if depth is not None and attention_blocks > depth:  # a value given is checked before the model loads
        raise VplError(f"--attention-blocks {attention_blocks}: {model} has {depth} blocks; give 1 to {depth}")
    dataset = open_dataset(data, split, labels_file=labels_file, allow_pickle=allow_pickle)
    cfg = warn_inert(ExtractConfig(image_size=image_size, max_side=max_side, max_tokens=max_tokens,
                                   attention_blocks=attention_blocks or ExtractConfig.attention_blocks,
                                   cache=cache, parity=parity))
    with progress("extract") as (on_start, on_item):
        summary = run_extract(dataset, out, spec, cfg,
                              runtime(**run), shard=shard_of(shard),
                              on_item=on_item, on_start=on_start)
    state = "complete" if summary.complete else "this shard done; other shards pending"
    say(f"[green]✓[/] extract: {summary.done} images ({summary.images_per_s:.1f} img/s), "
              f"{summary.skipped} already done → {out} ({state})")


# ============================================================================================= text-prototypes
def text_prototypes_cmd(
    features: Annotated[Optional[Path], typer.Argument(help="An `extract` folder: classes and CLIP model come from "
                                                       "it. Omit to give --classes and --model instead.")] = None,
    out: OutFile = Path("text_prototypes.safetensors"),
    templates: Annotated[str, typer.Option(help="clip-es ('a clean origami {}.') | imagenet (80-prompt ensemble) | "
                                           "a template with {} | a file, one template per line.")] =
        TextPrototypesConfig.templates,
    background: Annotated[str, typer.Option(help="Background words: auto | voc | coco | none | a file | "
                                            "'w1,w2,...'.")] = TextPrototypesConfig.background,
    synonyms: Annotated[bool, typer.Option("--synonyms/--no-synonyms", help="CLIP-ES synonym names for VOC/COCO.")] =
        TextPrototypesConfig.synonyms,
    parity: Annotated[str, typer.Option(help="none | clip-es (CLIP-ES's text arithmetic: one prompt at a time, the "
                                        "full context; slower, the same embeddings up to rounding).")] =
        TextPrototypesConfig.parity,
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names (without background), "
                                                   "instead of an extract folder.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: Device = _R.device,
    model_config_dir: ModelConfigDir = None,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Encode class names and background words into a prototypes file (text prototypes).

    With an extract folder, its classes and its CLIP are used; --model / --pretrained then say where that CLIP lies
    now (its local-dir: folder renamed, its weights file moved), taken when it holds the recorded weights.

    \b
    Example:
      vpltool text-prototypes runs/voc/features -o runs/voc/text.safetensors --templates imagenet
    """
    from ..stages.text_prototypes import extract_context, run_text_prototypes

    if features is not None:
        if classes is not None:  # the extract folder names its classes
            warnings.warn(VplWarning(ignored_option("--classes", classes, f"with an extract folder ({features} names "
                                                                          "the classes)")), stacklevel=2)
        # and its CLIP: --model / --pretrained given say where it lies now (a folder renamed), checked by its bytes
        at = model_spec(model, pretrained, model_config_dir) \
            if model != DEFAULT_MODEL or pretrained != DEFAULT_PRETRAINED else None
        _, spec, class_list, _ = extract_context(features, at)
    elif classes:
        spec = model_spec(model, pretrained, model_config_dir)
        class_list = ["background"] + [c.strip() for c in classes.split(",") if c.strip()]
    else:
        raise VplError("give an extract folder, or --classes 'a,b,c' with --model/--pretrained")
    cfg = TextPrototypesConfig(templates=templates, background=background, synonyms=synonyms, parity=parity)
    protos = run_text_prototypes(class_list, out, spec, cfg, device=device, source=features, overwrite=overwrite)
    n_bg = int((protos.row_class == 0).sum())
    say(f"[green]✓[/] text-prototypes: {len(class_list) - 1} classes + {n_bg} background words, "
              f"{protos.dim}-d, {protos.params['n_templates']} template(s) → {out}")


# ============================================================================================= learn-prototypes
_L = LearnPrototypesConfig()


def learn_prototypes_cmd(
    features: Annotated[Path, typer.Argument(help="An `extract` folder (the pixel features x).")],
    cams: Annotated[Path, typer.Option("--cams", "-c", help="A `cam` folder made with the text prototypes "
                                       "(the targets P').")],
    text: Annotated[Path, typer.Option("--text", "-t", help="The text prototypes file (initialisation Z).")],
    out: OutFile = Path("vision_prototypes.safetensors"),
    tau_i: Annotated[float, typer.Option("--tau-i", help="Temperature tau_I of softmax(x.W/tau_I).")] =
        _L.tau_i,
    lr: Annotated[float, typer.Option(help="Step size in logit units (see docs/learn-prototypes.md for the loss "
                                      "normalisation it refers to).")] = _L.lr,
    iters: Annotated[int, typer.Option(help="Projected gradient-descent iterations T_w.")] = _L.iters,
    targets: Annotated[str, typer.Option(help="hard (Phi-thresholded seeds, the paper) | soft (CAM scores).")] =
        _L.targets,
    threshold: Annotated[float, typer.Option(help="Phi: CAM score that makes a seed.")] =
        _L.threshold,
    regularization: Annotated[str, typer.Option(help="instance (per pixel) | class (class-level, Theorem 2).")] =
        _L.regularization,
    bg_exponent: Annotated[float, typer.Option(help="Soft targets: background (1 - max CAM)^a.")] = _L.bg_exponent,
    pixel_fraction: Annotated[float, typer.Option(help="Share of each image's patches used "
                                                  "(seeded sample); below 1 for COCO-scale data, e.g. 0.25.")] =
        _L.pixel_fraction,
    max_memory_gb: Annotated[Optional[float], typer.Option(help="Resident feature budget; above it features "
                                                           "stream from disk [default: 60% of free memory].")] =
        _L.max_memory_gb,
    plot: Annotated[Optional[Path], typer.Option(help="Loss-curve PNG (default: OUT stem + .loss.png).",
                                                 parser=file_path, metavar="<path>")] = None,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """VPL phase 1: learn vision prototypes W from text-prototype CAMs by projected gradient descent.

    Minimises KL(P' || softmax(x.W / tau_I)) over every pixel feature x of the training set, W initialised from
    the text prototypes, rows projected onto the unit sphere after each step. Reports the modality gap.

    \b
    Example:
      vpltool learn-prototypes runs/voc/features -c runs/voc/cams_text -t runs/voc/text.safetensors \\
          -o runs/voc/vision.safetensors --tau-i 0.03 --iters 3000
    """
    from ..stages.learn_prototypes import run_learn_prototypes

    cfg = warn_inert(LearnPrototypesConfig(tau_i=tau_i, lr=lr, iters=iters, targets=targets, threshold=threshold,
                                           regularization=regularization, bg_exponent=bg_exponent,
                                           pixel_fraction=pixel_fraction, max_memory_gb=max_memory_gb))
    with progress("learn-prototypes", unit="iterations") as (on_start, on_item):
        s = run_learn_prototypes(features, cams, text, out, cfg, runtime(device, precision), on_start=on_start,
                                 on_iter=lambda i, loss: on_item(1), plot=plot, overwrite=overwrite)
    before, after = s["gap_before"], s["gap_after"]
    region = f"{before['region']:.3f} → {after['region']:.3f}" if math.isfinite(before["region"]) else \
        f"n/a (no pixel reached --threshold {threshold:g})"
    say(f"[green]✓[/] learn-prototypes: {s['n_pixels']} pixels, {iters} iterations in {s['seconds']:.1f}s; "
        f"mean cross-entropy {s['loss_curve'][0][1]:.4f} → {s['final_loss']:.4f} nats; prototype-to-region "
        f"distance {region}; distance to the text prototypes "
        f"||Z - W||_F {after['frobenius']:.3f} → {out}")


# ============================================================================================= crf
_C = CrfConfig()
CRF_IGNORED_WARNING = 0.5  # share of 255 pixels from which crf warns: the decoder would learn from a minority


def crf_cmd(
    cams: Annotated[Path, typer.Argument(help="A `cam` folder (text- or vision-prototype CAMs).")],
    out: OutDir,
    iterations: Annotated[int, typer.Option(help="Mean-field iterations.")] = _C.iterations,
    gaussian_sxy: Annotated[float, typer.Option(help="Gaussian kernel spatial std.")] = _C.gaussian_sxy,
    gaussian_compat: Annotated[float, typer.Option(help="Gaussian kernel weight.")] = _C.gaussian_compat,
    bilateral_sxy: Annotated[float, typer.Option(help="Bilateral kernel spatial std.")] = _C.bilateral_sxy,
    bilateral_srgb: Annotated[float, typer.Option(help="Bilateral kernel colour std.")] = _C.bilateral_srgb,
    bilateral_compat: Annotated[float, typer.Option(help="Bilateral kernel weight.")] = _C.bilateral_compat,
    confidence: Annotated[float, typer.Option(help="Pixels whose CRF probability is below this become 255 "
                                              "(ignore); 0 keeps every pixel (CLIP-ES's --eval_only masks).")] =
        _C.confidence,
    bg_exponent: Annotated[float, typer.Option(help="Background score (1 - max CAM)^a.")] = _C.bg_exponent,
    parity: Annotated[str, typer.Option(help="none (RGB photo) | clip-es (wrapped mean-subtracted BGR, as "
                                        "CLIP-ES feeds its CRF).")] = _C.parity,
    no_crf: Annotated[bool, typer.Option("--no-crf", help="Thresholded argmax instead of the CRF (paper "
                                         "ablation).")] = False,
    backend: Annotated[str, typer.Option(help="auto (torch on CUDA; pydensecrf on a CPU and with --parity "
                                         "clip-es) | pydensecrf (CPU processes) | torch (batched on --device; the "
                                         "same model, float rounding aside).")] = _C.backend,
    device: Device = _R.device,
    batch_size: Annotated[Optional[int], typer.Option(help="--backend torch: images per batch [default: auto: 32 on "
                                                      "CUDA, halved on out-of-memory; 1 on a CPU].",
                                                      show_default=False, rich_help_panel=RUNTIME)] = None,
    workers: Annotated[int, typer.Option(help="CRF processes (pydensecrf) or image loaders (torch); 0 = one per "
                                         "CPU core; results do not depend on it.", rich_help_panel=RUNTIME)] = 0,
    with_cams: Annotated[Optional[Path], typer.Option(help="Another `cam` folder of the same images (another "
                                                      "refinement's CAMs), refined by the same processes into "
                                                      "--with-out, each image's CRF pairwise terms built once for "
                                                      "both; the same masks and records as its own run.",
                                                      show_default=False)] = None,
    with_out: Annotated[Optional[Path], typer.Option(help="The output folder of --with-cams's masks.",
                                                     show_default=False)] = None,
    start_out: Annotated[Optional[Path], typer.Option(help="Also write the same CRF's labels without ignore pixels "
                                                      "into this folder (the masks and records of --confidence 0), "
                                                      "for `sam-pseudo --start FOLDER`, which then runs no CRF of "
                                                      "its own; pydensecrf (auto picks it).",
                                                      show_default=False)] = None,
    with_start_out: Annotated[Optional[Path], typer.Option(help="--start-out for --with-cams's CAMs.",
                                                           show_default=False)] = None,
    shard: Shard = None,
    overwrite: Overwrite = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Dense-CRF pseudo masks (palette PNGs, 255 = low confidence) from CAMs and their images.

    \b
    Example:
      vpltool crf runs/voc/cams_vision -o runs/voc/pseudo --workers 8
      vpltool crf runs/voc/cams_vision -o runs/voc/pseudo --backend torch --device cuda
    """
    from ..stages.crf import run_crf

    if (with_cams is None) != (with_out is None):
        given, missing = ("--with-cams", "--with-out") if with_out is None else ("--with-out", "--with-cams")
        raise VplError(f"{given} {with_cams or with_out}: needs {missing} too (the other CAM folder and its masks' "
                       "folder)")
    cfg = warn_inert(CrfConfig(iterations=iterations, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                               bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb,
                               bilateral_compat=bilateral_compat, confidence=confidence, bg_exponent=bg_exponent,
                               parity=parity, no_crf=no_crf, backend=backend))
    with progress("crf") as (on_start, on_item):
        s = run_crf(cams, out, cfg, runtime(device=device, batch_size=batch_size, workers=workers,
                                            overwrite=overwrite), shard=shard_of(shard), on_item=on_item,
                      on_start=on_start, with_cams=None if with_cams is None else (with_cams, with_out),
                      start_out=start_out, with_start_out=with_start_out)
    whose = f"the {s.done + s.skipped} masks' pixels" if s.skipped else "their pixels"  # a resume: the whole folder
    ignored = "" if s.ignored is None else f", {100 * s.ignored:.1f}% of {whose} ignored (255)"
    if s.ignored is not None and s.ignored >= CRF_IGNORED_WARNING:
        say(f"[yellow]warning:[/] {100 * s.ignored:.1f}% of the pixels of these masks are 255 (CRF probability below "
            f"--confidence {confidence:g}): train-decoder learns from the other {100 * (1 - s.ignored):.1f}% only; "
            f"lower --confidence (default {_C.confidence:g})")
    also = "" if with_out is None else f" (and --with-cams's → {with_out}{pending(with_out)})"
    also += "".join(f"; start labels (--confidence 0) → {folder}{pending(folder)}"
                    for folder in (start_out, with_start_out) if folder is not None)
    say(f"[green]✓[/] crf ({s.backend}): {s.done} masks ({s.images_per_s:.1f} img/s){ignored}, {s.skipped} already "
        f"done → {out}{pending(out)}{also}")
