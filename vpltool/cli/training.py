"""The commands of VPL phase 2 and scoring: train-decoder, predict, eval."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import DECODER_RECIPES, DecoderConfig, EvalConfig, PredictConfig
from ..config.dense import PLAIN_METHODS
from ..errors import VplError, install_extra
from .errors import all_ranks
from .options import (
    _R,
    BATCHED,
    DenseCrop,
    DenseSide,
    DenseStride,
    Device,
    JsonFile,
    LogFile,
    OutDir,
    Overwrite,
    OverwriteFile,
    Precision,
    Resume,
    Shard,
    Split,
    Verbose,
    Workers,
    runtime,
    warn_inert,
)
from .output import pending, progress, say
from .values import clip_folder, floats_text, parse_floats
from .values import shard as shard_of

_D = DecoderConfig()
_P = PredictConfig()


def _recipe_default(name: str) -> str:
    """``[default: 0.01 (vpl), 0.002 (weclip), ...]``: a decoder default per recipe, read from config."""
    values: dict[Any, list[str]] = {}
    for recipe, changes in DECODER_RECIPES.items():
        values.setdefault(changes.get(name, getattr(_D, name)), []).append(recipe)
    if len(values) == 1:
        return f"[default: {next(iter(values))}]"
    return "[default: " + ", ".join(f"{v} ({'/'.join(r)})" for v, r in values.items()) + "]"


def _opt(help_text: str, name: str, **kw) -> Any:
    return typer.Option(help=f"{help_text} {_recipe_default(name)}", show_default=False, **kw)


@all_ranks
def train_decoder_cmd(
    pseudo: Annotated[Path, typer.Argument(help="A `crf` folder of pseudo masks (255 = ignored); with --recipe "
                                           "weclip the dataset itself (image labels only: WeCLIP makes its masks "
                                           "online, per crop and iteration).")],
    prototypes: Annotated[Path, typer.Option("--prototypes", "-p", help="Vision (or text) prototypes W; also "
                                             "names the frozen CLIP. With --recipe weclip the text prototypes "
                                             "GradCAM scores (WeCLIP: text-prototypes --templates clip-es, \"a clean "
                                             "origami {}.\", with background words).")],
    out: OutDir,
    recipe: Annotated[Optional[str], typer.Option(
        help="vpl (the paper: SGD 0.9, wd 1e-4, batch 6, 30k iterations at crop 320: GPU hours) | weclip (WeCLIP's "
        "code: online pseudo masks by GradCAM, attention propagation with RFM after half the iterations and PAR; a "
        "1x1 conv classifier; balanced CE + 0.1 x affinity loss; AdamW; ImageNet mean/std; no RSC) | cpu "
        "(minutes on a CPU: cached features, small decoder and crops; for trying the pipeline, "
        f"not for the paper's numbers) [default: {_D.recipe}; on a CPU without --iters, a warning with the time it "
        "will take].",
        show_default=False)] = None,
    iters: Annotated[Optional[int], _opt("Iterations.", "iters")] = None,
    batch_size: Annotated[Optional[int], _opt("Images per process.", "batch_size")] = None,
    lr: Annotated[Optional[float], _opt("Learning rate.", "lr")] = None,
    lambda_rsc: Annotated[Optional[float], _opt("RSC loss weight; 0 = the ablation without RSC.", "lambda_rsc")] =
        None,
    rsc_temperature: Annotated[Optional[float], _opt("tau of the RSC InfoNCE.", "rsc_temperature")] = None,
    lambda_proto: Annotated[Optional[float], _opt("CMPA loss weight (SSR's cross-modal prototype alignment; SSR "
                                                  "uses 0.1); 0 = off.", "lambda_proto")] = None,
    proto_temperature: Annotated[Optional[float], _opt("Initial value of CMPA's learnable temperature.",
                                                       "proto_temperature")] = None,
    proto_clusters: Annotated[Optional[int], _opt("CMPA: K-means image prototypes per class.", "proto_clusters")] =
        None,
    proto_every: Annotated[Optional[int], typer.Option(help="CMPA: rebuild the image-prototype bank every N "
                                                       "iterations [default: iters / 6, SSR's 5,000 of 30,000].",
                                                       show_default=False)] = None,
    ignore_classes: Annotated[Optional[str], typer.Option(help="Comma-separated classes held out of training "
                                                          "(their pixels ignored, their row dropped): for "
                                                          "open-vocabulary tests with predict --classes.")] = None,
    loss: Annotated[Optional[str], _opt("ce | balanced.", "loss")] = None,
    classifier: Annotated[Optional[str], _opt("prototypes (cosine to W, VPL) | conv (a free 1x1 conv to the classes, "
                                              "WeCLIP; needs --lambda-rsc 0).", "classifier")] = None,
    lambda_aff: Annotated[Optional[float], _opt("WeCLIP's affinity loss weight (sigmoid(F^T F) of the fused features "
                                                "against equal pseudo labels within 8 patches); needs --classifier "
                                                "conv.", "lambda_aff")] = None,
    dino_model: Annotated[Optional[str], typer.Option(help="With --recipe weclip+: the frozen DINO beside the CLIP, a "
                                                      "timm ViT [default: vit_small_patch14_dinov2.lvd142m, "
                                                      "WeCLIP+'s DINOv2 ViT-S/14].", show_default=False)] = None,
    dino_weights: Annotated[Optional[str], typer.Option(help="Its weights: hub (timm's, from the local cache "
                                                        "offline) | FILE | none (random) [default: hub].",
                                                        show_default=False)] = None,
    rfm_start: Annotated[Optional[int], typer.Option(help="With --recipe weclip: RFM (the decoder's affinity "
                                                     "filters the attention that propagates the CAMs) from this "
                                                     "iteration on [default: iters / 2, WeCLIP's 15,000 of "
                                                     "30,000].", show_default=False)] = None,
    dim: Annotated[Optional[int], _opt("Decoder width.", "dim")] = None,
    layers: Annotated[Optional[int], _opt("Decoder transformer layers.", "layers")] = None,
    heads: Annotated[Optional[int], _opt("Attention heads.", "heads")] = None,
    crop_size: Annotated[Optional[int], _opt("Training crop, a multiple of the patch size.", "crop_size")] = None,
    dropout: Annotated[Optional[float], _opt("Dropout2d on the fused features; 0 = off (then DDP over N processes "
                                             "gives one process's weights at N times the batch, up to float "
                                             "rounding: its masks are drawn per rank).", "dropout")] = None,
    train_prototypes: Annotated[Optional[bool], typer.Option("--train-prototypes/--freeze-prototypes",
                                                             show_default=False,
                                                             help="Fine-tune W [default: frozen].")] = None,
    cache_features: Annotated[Optional[bool], typer.Option("--cache-features/--no-cache-features",
                                                           show_default=False,
                                                           help="Precompute frozen features of a fixed view (no "
                                                           "rescale/crop; flip kept) "
                                                           f"{_recipe_default('cache_features')}.")] = None,
    feature_store: Annotated[Optional[Path], typer.Option(help="With --cache-features: keep the cached features in "
                                                          "this folder, named by their content (CLIP, images, view, "
                                                          "numerics), so that a decoder trained on the same images "
                                                          "(another refinement's masks) reads them instead of "
                                                          "running the CLIP again.")] = None,
    checkpoint_every: Annotated[Optional[int], _opt("Checkpoint period.", "checkpoint_every")] = None,
    compile: Annotated[Optional[str], _opt("torch.compile each iteration (frozen forward, decoder, losses): "
                                           "none | default (fused kernels) | "
                                           "reduce-overhead (also CUDA graphs); minutes of compiling, for long GPU "
                                           "runs.", "compile")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Validate on this split of the same dataset.")] = None,
    split: Annotated[Optional[str], typer.Option("--split", "-s", help="With --recipe weclip: the dataset split to "
                                                 "train on [default: train].", show_default=False)] = None,
    resume: Resume = False,
    tensorboard: Annotated[Optional[Path], typer.Option(
        help="Also write TensorBoard event files here: each loss, lr, it/s, memory, and previews of a few fixed "
        f"images with their prediction ({install_extra('tensorboard')}).")] = None,
    seed: Annotated[Optional[int], _opt("Seed.", "seed")] = None,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    workers: Workers = _R.workers,
    overwrite: Overwrite = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """VPL phase 2: a decoder on the frozen CLIP trained with CE on pseudo masks + regional semantic contrast.

    On a CPU pass --recipe cpu (the paper's recipe would take days). Multi-GPU: torchrun
    --nproc-per-node 4 -m vpltool train-decoder ... (DDP; the batch is per process).

    \b
    Example:
      vpltool train-decoder runs/voc/pseudo -p runs/voc/vision.safetensors -o runs/voc/decoder
    """
    from ..config import decoder_recipe
    from ..stages.train_decoder import run_train_decoder

    timer = _slow_recipe_timer(device) if recipe is None and iters is None else None
    recipe = recipe or _D.recipe
    cfg = decoder_recipe(recipe, iters=iters, batch_size=batch_size, lr=lr, lambda_rsc=lambda_rsc,
                         rsc_temperature=rsc_temperature, lambda_proto=lambda_proto,
                         proto_temperature=proto_temperature, proto_clusters=proto_clusters, proto_every=proto_every,
                         ignore_classes=None if ignore_classes is None else tuple(
                             c.strip() for c in ignore_classes.split(",") if c.strip()),
                         loss=loss, classifier=classifier, lambda_aff=lambda_aff, rfm_start=rfm_start,
                         dino_model=dino_model, dino_weights=dino_weights,
                         dim=dim, layers=layers, heads=heads,
                         crop_size=crop_size, dropout=dropout, train_prototypes=train_prototypes,
                         cache_features=cache_features,
                         checkpoint_every=checkpoint_every, seed=seed, compile=compile)
    warn_inert(cfg, decoder_recipe(recipe))
    if feature_store is not None:  # before anything loads
        if not cfg.cache_features:
            raise VplError(f"--feature-store {feature_store}: keeps the features of --cache-features; add "
                           "--cache-features or drop --feature-store")
        from .. import io

        io.check_folder_target(feature_store)  # a file in the way: one line now, not after the CLIP loads
    with progress("train-decoder", unit="iterations") as (on_start, on_item):
        s = run_train_decoder(pseudo, prototypes, out, cfg, runtime(device, precision, workers=workers,
                                                                    overwrite=overwrite),
                              resume=resume, val_split=val_split, on_start=on_start, tensorboard=tensorboard,
                              split=split, feature_store=feature_store,
                              on_iter=lambda i, rec: (on_item(1), timer and timer(i, cfg.iters)))
    done = f"{s.iterations} iterations" if not s.start else f"iterations {s.start} → {s.iterations} (resumed)"
    terms = "CE" + (" + RSC" if cfg.lambda_rsc > 0 else "") + (" + CMPA" if cfg.lambda_proto > 0 else "") + \
        (" + affinity" if cfg.lambda_aff > 0 else "") + (" + Dice + cross-branch" if cfg.dino_model else "")
    loss = "" if s.loss is None else \
        f", training loss ({terms}) {s.first_loss:.4f} → {s.loss:.4f} (first → last logged iteration)"
    val = f", validation mIoU {100 * s.val_miou:.1f}%" if s.val_miou is not None else ""
    written = s.decoder if s.decoder is not None else f"{out} (rank 0 writes the files)"  # on the other ranks
    say(f"[green]✓[/] train-decoder: {done} ({s.iters_per_s:.2f} it/s){loss}{val} → {written}")


ESTIMATE_AFTER = 3  # iterations: the first carries the warm-up (and a feature cache), the next ones the pace


def _slow_recipe_timer(device: str):
    """No ``--recipe`` (nor ``--iters``) on a CPU: the paper's GPU recipe would run for hours to days unawares. Say
    so at once, and, once the pace is known (iterations 2 to :data:`ESTIMATE_AFTER`), the time the whole run will
    take; returns the ``(iteration, total)`` hook that says it (None off a CPU)."""
    import time

    from ..device import resolve_device

    if resolve_device(device).type != "cpu":
        return None
    say(f"[yellow]warning:[/] no --recipe: the paper's recipe ({_D.recipe}) is for GPUs; on this CPU pass --recipe cpu "
        "to try the pipeline in minutes (the time this run takes follows after its first iterations)")
    marks: dict[int, float] = {}

    def hook(iteration: int, total: int) -> None:
        marks.setdefault(iteration, time.perf_counter())
        first = min(marks)
        if iteration == first + ESTIMATE_AFTER - 1 and iteration < total:
            pace = (marks[iteration] - marks[first]) / (iteration - first)
            say(f"[yellow]warning:[/] {_D.recipe} recipe on a CPU: {pace:.2f} s per iteration, so its {total:,} "
                f"iterations take about {_hours(pace * (total - first))}; pass --recipe cpu to try the pipeline in "
                "minutes")

    return hook


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"


def predict_cmd(
    decoder: Annotated[Path, typer.Argument(help="A decoder file from `train-decoder`.")],
    out: OutDir,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset root; default: the one the decoder "
                                                 "was trained on.")] = None,
    split: Split = None,
    scales: Annotated[str, typer.Option(help="Comma-separated test scales (averaged logits).")] =
        floats_text(_P.scales),
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Average with the mirrored image.")] = _P.flip,
    long_side: Annotated[Optional[int], typer.Option(help="Input long side [default: 1.6 x training crop].",
                                                     show_default=False)] = _P.long_side,
    resize: Annotated[str, typer.Option(help="Test views: auto (bilinear for a decoder of --recipe weclip or "
                                        "weclip+, else bicubic) | bicubic (the image, sides rounded up to the "
                                        "patch) | bilinear (WeCLIP's test_msc_flip_voc.py: the normalised tensor, "
                                        "sides truncated, the patch grid floored).")] = _P.resize,
    crf: Annotated[bool, typer.Option("--crf", help="Test-time dense CRF (WeCLIP's parameters; WeCLIP's paper: "
                                      "76.4 VOC val mIoU with it, 74.9 without, with --resize bilinear and the "
                                      "default scales 1,0.75 + flip at long side 512).")] = _P.crf,
    crf_backend: Annotated[str, typer.Option(help="--crf: auto (torch on CUDA, pydensecrf on a CPU) | pydensecrf "
                                             "(on the writer thread, image by image) | torch (batched on --device)."
                                             )] = _P.crf_backend,
    max_tokens: Annotated[int, typer.Option(help="Refuse an image whose largest test view has more patch tokens "
                                            "than this, before its forward.")] = _P.max_tokens,
    save_overlays: Annotated[Optional[Path], typer.Option(help="Also write mask-over-image PNGs here.")] = None,
    classes: Annotated[Optional[str], typer.Option(help="Open vocabulary: a file with one class name per line, or "
                                                   "a,b,c; the masks are over these classes, scored with text "
                                                   "prototypes from the decoder's CLIP (its training templates and "
                                                   "background words) [default: the decoder's classes].",
                                                   show_default=False)] = None,
    dense: Annotated[str, typer.Option("--dense", help="With --classes: none (the decoder scores the names) | "
                                       + " | ".join(PLAIN_METHODS[1:]) + " (the decoder's frozen CLIP with that "
                                       "training-free dense last block scores them instead, with the method's "
                                       "segmentor settings: for names the decoder never trained on).")] = _P.dense,
    dense_side: DenseSide = None,
    dense_threshold: Annotated[Optional[float], typer.Option(help="--dense: a pixel whose top probability is below "
                                                             "this is background [default: the method's].",
                                                             show_default=False)] = None,
    dense_crop: DenseCrop = None,
    dense_stride: DenseStride = None,
    dino_weights: Annotated[Optional[Path], typer.Option(
        "--dino-weights", help="A WeCLIP+ decoder's DINO weights file, where it is not at the path its training "
        "recorded (another machine or folder); it must be the very file (its sha256 is checked) [default: the "
        "recorded path].", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="local-dir:DIR: the decoder's CLIP folder, where it is not at the path its training "
        "recorded (renamed or copied since); it must hold the very weights (their sha256 is checked) [default: "
        "the recorded folder].", show_default=False)] = None,
    feature_store: Annotated[Optional[Path], typer.Option(help="Keep the frozen CLIP's features of the test views in "
                                                          "this folder, named by their content (CLIP, images, views, "
                                                          "numerics), so that a decoder on the same CLIP and images "
                                                          "(another refinement's) reads them instead of running the "
                                                          "CLIP again; the masks are the same.")] = None,
    shard: Shard = None,
    run: dict = BATCHED,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Segment a dataset split with a trained decoder: multi-scale + flip averaging, optional CRF.

    \b
    Example:
      vpltool predict runs/voc/decoder/decoder.safetensors --split val -o runs/voc/pred_val
    """
    from ..data.class_files import parse_class_names
    from ..stages.predict import run_predict

    model_at = clip_folder(model)
    if feature_store is not None:  # a file in the way: one line now, not after the CLIP loads
        from .. import io

        io.check_folder_target(feature_store)

    cfg = warn_inert(PredictConfig(scales=parse_floats(scales, "--scales", floats_text(_P.scales)), flip=flip,
                                   long_side=long_side, resize=resize, crf=crf, crf_backend=crf_backend,
                                   max_tokens=max_tokens,
                                   classes=None if classes is None else parse_class_names(classes), dense=dense,
                                   dense_side=dense_side, dense_threshold=dense_threshold, dense_crop=dense_crop,
                                   dense_stride=dense_stride))
    with progress("predict") as (on_start, on_item):
        s = run_predict(decoder, data, split, out, cfg, runtime(**run), overlays=save_overlays,
                        shard=shard_of(shard), dino_weights=dino_weights, on_item=on_item, on_start=on_start,
                        model_at=model_at, feature_store=feature_store)
    say(f"[green]✓[/] predict: {s.done} masks ({s.images_per_s:.1f} img/s), {s.skipped} already done → {out}"
        f"{pending(out)}")


def eval_cmd(
    predictions: Annotated[Path, typer.Argument(help="A folder of mask PNGs (crf/predict) or CAM files (cam).")],
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset with ground truth; default: the one "
                                                 "recorded by the stage that made the predictions.")] = None,
    split: Split = None,
    bg_exponents: Annotated[str, typer.Option(help="CAM folders: background = (1-max)^a, best a of these.")] =
        floats_text(EvalConfig.bg_exponents),
    parity: Annotated[Optional[str], typer.Option(help="CAM folders: none | clip-es (CLIP-ES's float16 background "
                                                  "score) [default: the CAM folder's --parity].",
                                                  show_default=False)] = EvalConfig.parity,
    json_out: JsonFile = None,
    per_image: Annotated[Optional[Path], typer.Option("--per-image", help="Also write each image's mIoU and "
                                                      "per-class IoU as JSON here (CAM folders: at the best "
                                                      "exponent).")] = None,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Score predicted masks or CAMs against ground truth: per-class IoU and mIoU (VOC/COCO convention).

    Predicted 255 (a pseudo mask's low-confidence pixels) counts as wrong; to score pseudo masks like CLIP-ES's
    --eval_only, make them with crf --confidence 0.

    \b
    Example:
      vpltool eval runs/voc/cams --split train --json runs/voc/cam_metrics.json
    """
    from rich.console import Console

    from ..stages.eval import format_table, run_eval

    cfg = EvalConfig(bg_exponents=parse_floats(bg_exponents, "--bg-exponents"), parity=parity)
    result, classes = run_eval(predictions, data=data, split=split, cfg=cfg, json_out=json_out,
                               per_image_out=per_image, overwrite=overwrite)
    Console(width=None if typer.get_text_stream("stdout").isatty() else 100).print(format_table(result, classes))
    extra = f" (bg exponent {result['bg_exponent']:g})" if "bg_exponent" in result else ""
    say(f"[green]✓[/] eval: mIoU {100 * result['miou']:.2f} over {result['n_images']} images{extra}")


def diagnose_cmd(
    features: Annotated[Path, typer.Argument(help="An `extract` folder of a split with ground-truth masks.")],
    prototypes: Annotated[list[Path], typer.Option("--prototypes", "-p", help="Prototypes file(s) to diagnose "
                                                   "(e.g. the learned vision prototypes); repeat for several.")],
    text: Annotated[Optional[Path], typer.Option("--text", "-t", help="The text prototypes: diagnosed too, and the "
                                                 "reference of the row-to-text figures.")] = None,
    bg_exponents: Annotated[str, typer.Option(help="GradCAM maps: background = (1-max)^a, best a of these.")] =
        floats_text(EvalConfig.bg_exponents),
    json_out: JsonFile = None,
    device: Device = _R.device,
    overwrite: OverwriteFile = False,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Did learn-prototypes do its job? Pixel-classifier and GradCAM mIoU per layer, and the modality gap.

    Run it on a labelled split (e.g. val) before spending GPU hours on the decoder: if the vision prototypes win as
    a pixel classifier but lose as GradCAM at the last block's input, phase 1 fitted the pixels but GradCAM does not
    carry its directions back (docs/learn-prototypes.md).

    \b
    Example:
      vpltool diagnose runs/voc/features_val -p runs/voc/vision.safetensors -t runs/voc/text.safetensors
    """
    from rich.console import Console

    from ..stages.diagnose import format_result, run_diagnose

    cfg = EvalConfig(bg_exponents=parse_floats(bg_exponents, "--bg-exponents"))
    with progress("diagnose") as (on_start, on_item):
        result = run_diagnose(features, prototypes, text, runtime(device), cfg=cfg, json_out=json_out,
                              on_start=on_start, on_item=on_item, overwrite=overwrite)
    Console(width=None if typer.get_text_stream("stdout").isatty() else 140).print(format_result(result))
    say(f"[green]✓[/] diagnose: {result['images']} images, {len(result['rows'])} prototypes file(s)"
        + (f" → {json_out}" if json_out else ""))
