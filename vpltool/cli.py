"""The `vpltool` command line: a thin typer layer over the library, one command per stage.

Heavy imports (torch, open_clip) happen inside the commands, so ``vpltool --help`` stays fast. User mistakes
(:class:`vpltool.errors.VplError`, and writes that fail for lack of space or permission) print one red line on
stderr and exit with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console

from . import __version__
from .config import (
    DEFAULT_MODEL, DEFAULT_PRETRAINED, CamConfig, CrfConfig, EvalConfig, ExtractConfig, LearnPrototypesConfig,
    RuntimeConfig, TextPrototypesConfig,
)
from .errors import VplError, write_error

app = typer.Typer(
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_show_locals=False, add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Weakly-supervised semantic segmentation with CLIP (CLIP-ES + VPL). One stage per command; stages "
    "exchange safetensors and palette PNGs on disk, so any stage can be swapped or re-run alone.",
)
err = Console(stderr=True)
log = logging.getLogger("vpltool")

RUNTIME, MODEL = "Runtime", "Model"

# ---- option aliases, spelled the same on every stage
OutDir = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created; finished items are skipped).")]
OutFile = Annotated[Path, typer.Option("--out", "-o", help="Output file (written atomically).")]
Device = Annotated[str, typer.Option(envvar="VPLTOOL_DEVICE", help="auto | cpu | cuda | cuda:N",
                                     rich_help_panel=RUNTIME)]
Precision = Annotated[str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16",
                                        rich_help_panel=RUNTIME)]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per batch (equal input sizes are batched).",
                                        rich_help_panel=RUNTIME)]
Workers = Annotated[int, typer.Option(min=1, help="Parallel image decoders / CRF processes.", rich_help_panel=RUNTIME)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo finished items instead of skipping them.",
                                         rich_help_panel=RUNTIME)]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.", rich_help_panel=RUNTIME)]
Split = Annotated[Optional[str], typer.Option("--split", "-s", help="Dataset split (VOC: train, train_aug, val; "
                                              "generic: splits/<name>.txt). Default: the layout's default.")]
ModelOpt = Annotated[str, typer.Option("--model", help="open_clip architecture, or local-dir:/path.",
                                       rich_help_panel=MODEL)]
PretrainedOpt = Annotated[str, typer.Option("--pretrained", help="open_clip tag (openai), a local weights file, "
                                            "or none (random).", rich_help_panel=MODEL)]
ModelConfigDir = Annotated[Optional[Path], typer.Option("--model-config-dir", envvar="VPLTOOL_MODEL_CONFIGS",
                                                        hidden=True, help="Extra open_clip JSON model configs.")]

_R = RuntimeConfig()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"vpltool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """Weakly-supervised semantic segmentation with CLIP: one stage per command, files in between."""


def friendly_errors(fn: Callable) -> Callable:
    """Turn a VplError, or a write that failed for lack of space or permission, into one red line + exit 2; keep
    tracebacks for real bugs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        verbose = kwargs.get("verbose", False)
        logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(message)s")
        os.environ.setdefault("TQDM_DISABLE", "1")
        try:
            return fn(*args, **kwargs)
        except VplError as e:
            _error_line(e)
        except OSError as e:  # one that escaped the library's own handling (its writes name their files)
            user_error = write_error(e.filename, e, action="accessing")  # it may have been a read
            if user_error is None:
                raise
            _error_line(user_error)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]: finished items are kept; re-run the same command to resume")
            raise typer.Exit(code=130) from None

    return wrapper


def _error_line(e: VplError) -> NoReturn:
    from rich.markup import escape

    # escaped: rich would take "[crf]" in "pip install 'vpltool[crf]'" for a style tag and drop it
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2) from None


@contextmanager
def progress(description: str) -> Iterator[Callable]:
    """A rich progress bar on stderr; yields ``(on_start(total), on_item(n))`` for the library hooks."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=err, transient=False, disable=not err.is_terminal) as bar:
        task = bar.add_task(description, total=None)
        yield (lambda total: bar.update(task, total=total)), (lambda n=1: bar.advance(task, n))


def _runtime(device: str, precision: str, batch_size: int, workers: int, overwrite: bool) -> RuntimeConfig:
    return RuntimeConfig(device=device, precision=precision, batch_size=batch_size, workers=workers,
                         overwrite=overwrite)


def _shard(value: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise VplError(f"--shard {value!r}: use i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise VplError(f"--shard {value}: need 0 <= i < n")
    return index, count


def _model_spec(model: str, pretrained: str, config_dir: Path | None):
    from .backbone import ModelSpec

    return ModelSpec(model=model, pretrained=pretrained, config_dir=str(config_dir) if config_dir else None)


def _features_context(features: Path):
    """(record, model spec, classes, dataset identity) of a finished extract folder."""
    from . import io
    from .backbone import ModelSpec

    record = io.read_stage_record(features, "extract")
    return record, ModelSpec.from_identity(record["params"]["model"]), record["classes"], record["inputs"]["dataset"]


# ============================================================================================= extract
@app.command("extract")
@friendly_errors
def extract_cmd(
    data: Annotated[Path, typer.Argument(help="Dataset: a VOC root, a COCO root, a generic folder or manifest.json.")],
    out: OutDir,
    split: Split = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    image_size: Annotated[Optional[int], typer.Option(help="Fixed square input side; default: each side rounded "
                                                      "up to a multiple of the patch size (CLIP-ES).")] = None,
    max_side: Annotated[Optional[int], typer.Option(help="Shrink longer sides above this first.")] = None,
    attention_blocks: Annotated[int, typer.Option(min=1, help="Last blocks whose attention CAA averages.")] =
        ExtractConfig.attention_blocks,
    tokens: Annotated[bool, typer.Option("--tokens/--no-tokens", help="Store the last block's input + attention "
                                         "(needed by `cam`; ~2x the disk).")] = ExtractConfig.store_tokens,
    parity: Annotated[str, typer.Option(help="none | clip-es (CLIP-ES's fp16-rounded positional embedding, tokens "
                                        "cached in fp32: for `cam --parity clip-es`).")] = ExtractConfig.parity,
    shard: Annotated[str, typer.Option(help="Process shard i of n (i/n) so GPUs/machines split one dataset.")] = "0/1",
    allow_pickle: Annotated[bool, typer.Option(help="Allow an IRN-style cls_labels.npy (a pickle).")] = False,
    labels_file: Annotated[Optional[Path], typer.Option(help="Image-label file overriding the layout's own.")] = None,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    batch_size: BatchSize = _R.batch_size,
    workers: Workers = _R.workers,
    overwrite: Overwrite = False,
    model_config_dir: ModelConfigDir = None,
    verbose: Verbose = False,
) -> None:
    """Run the frozen CLIP image encoder once per image and cache what later stages need.

    [dim]Example: vpltool extract data/VOC2012 --split train -o runs/voc/features --model ViT-B-16 --pretrained openai[/]
    """
    from .data import open_dataset
    from .extract import run_extract

    dataset = open_dataset(data, split, labels_file=labels_file, allow_pickle=allow_pickle)
    cfg = ExtractConfig(image_size=image_size, max_side=max_side, attention_blocks=attention_blocks,
                        store_tokens=tokens, parity=parity)
    with progress("extract") as (on_start, on_item):
        summary = run_extract(dataset, out, _model_spec(model, pretrained, model_config_dir), cfg,
                              _runtime(device, precision, batch_size, workers, overwrite), shard=_shard(shard),
                              on_item=on_item, on_start=on_start)
    state = "complete" if summary.complete else "this shard done; other shards pending"
    err.print(f"[green]✓[/] extract: {summary.done} images ({summary.images_per_s:.1f} img/s), "
              f"{summary.skipped} already done → {out} ({state})")


# ============================================================================================= text-prototypes
@app.command("text-prototypes")
@friendly_errors
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
    classes: Annotated[Optional[str], typer.Option(help="Comma-separated class names (without background), "
                                                   "instead of an extract folder.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: Device = _R.device,
    model_config_dir: ModelConfigDir = None,
    verbose: Verbose = False,
) -> None:
    """Encode class names and background words into a prototypes file (text prototypes).

    [dim]Example: vpltool text-prototypes runs/voc/features -o runs/voc/text.safetensors --templates imagenet[/]
    """
    from .text_prototypes import run_text_prototypes

    if features is not None:
        _, spec, class_list, _ = _features_context(features)
    elif classes:
        spec = _model_spec(model, pretrained, model_config_dir)
        class_list = ["background"] + [c.strip() for c in classes.split(",") if c.strip()]
    else:
        raise VplError("give an extract folder, or --classes 'a,b,c' with --model/--pretrained")
    cfg = TextPrototypesConfig(templates=templates, background=background, synonyms=synonyms)
    protos = run_text_prototypes(class_list, out, spec, cfg, device=device)
    n_bg = int((protos.row_class == 0).sum())
    err.print(f"[green]✓[/] text-prototypes: {len(class_list) - 1} classes + {n_bg} background words, "
              f"{protos.dim}-d, {protos.params['n_templates']} template(s) → {out}")


# ============================================================================================= cam
@app.command("cam")
@friendly_errors
def cam_cmd(
    features: Annotated[Path, typer.Argument(help="An `extract` folder (labels, tokens and model come from it).")],
    prototypes: Annotated[Path, typer.Option("--prototypes", "-p", help="A prototypes file: `text-prototypes` or "
                                             "`learn-prototypes` output.")],
    out: OutDir,
    refine: Annotated[str, typer.Option(help="caa (CLIP-ES) | caa+sgc (+ SLIC superpixel smoothing) | none.")] =
        CamConfig.refine,
    box_threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="CAA box threshold x max (VOC 0.4, "
                                                 "COCO 0.7).")] = CamConfig.box_threshold,
    temperature: Annotated[Optional[float], typer.Option(help="Softmax temperature; default: the prototypes "
                                                         "file's (1/logit_scale for text, tau_I for vision).")] = None,
    parity: Annotated[str, typer.Option(help="none | clip-es (CLIP-ES's box ends; the extract folder must be made "
                                        "with --parity clip-es too).")] = CamConfig.parity,
    save_overlays: Annotated[Optional[Path], typer.Option(help="Also write heat-map-over-image PNGs here.")] = None,
    save_debug: Annotated[Optional[Path], typer.Option(help="Also write each image's raw GradCAM, softmax "
                                                       "probabilities, CAA boxes and pre-min-max refined maps here "
                                                       "(docs/file-formats.md).")] = None,
    device: Device = _R.device,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Softmax-GradCAM at the last block + class-aware attention affinity, for each image's labelled classes.

    [dim]Example: vpltool cam runs/voc/features -p runs/voc/text.safetensors -o runs/voc/cams_text[/]
    """
    from .cam import run_cam

    cfg = CamConfig(refine=refine, box_threshold=box_threshold, temperature=temperature, parity=parity)
    runtime = RuntimeConfig(device=device, overwrite=overwrite)
    with progress("cam") as (on_start, on_item):
        s = run_cam(features, prototypes, out, cfg, runtime, overlays=save_overlays, debug=save_debug,
                    on_item=on_item, on_start=on_start)
    err.print(f"[green]✓[/] cam: {s.done} images ({s.images_per_s:.1f} img/s), {s.skipped} already done → {out}")


# ============================================================================================= learn-prototypes
_L = LearnPrototypesConfig()


@app.command("learn-prototypes")
@friendly_errors
def learn_prototypes_cmd(
    features: Annotated[Path, typer.Argument(help="An `extract` folder (the pixel features x).")],
    cams: Annotated[Path, typer.Option("--cams", "-c", help="A `cam` folder made with the text prototypes "
                                       "(the targets P').")],
    text: Annotated[Path, typer.Option("--text", "-t", help="The text prototypes file (initialisation Z).")],
    out: OutFile = Path("vision_prototypes.safetensors"),
    tau_i: Annotated[float, typer.Option("--tau-i", min=1e-4, help="Temperature tau_I of softmax(x.W/tau_I).")] =
        _L.tau_i,
    lr: Annotated[float, typer.Option(min=0.0, help="Step size (see docs/learn-prototypes.md for the loss "
                                      "normalisation it refers to).")] = _L.lr,
    iters: Annotated[int, typer.Option(min=0, help="Projected gradient-descent iterations T_w.")] = _L.iters,
    targets: Annotated[str, typer.Option(help="hard (Phi-thresholded seeds, the paper) | soft (CAM scores).")] =
        _L.targets,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Phi: CAM score that makes a seed.")] =
        _L.threshold,
    regularization: Annotated[str, typer.Option(help="instance (per pixel) | class (class-level, Theorem 2).")] =
        _L.regularization,
    bg_exponent: Annotated[float, typer.Option(help="Soft targets: background (1 - max CAM)^a.")] = _L.bg_exponent,
    pixel_fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of each image's patches used "
                                                  "(seeded sample); below 1 for COCO-scale data, e.g. 0.25.")] =
        _L.pixel_fraction,
    max_memory_gb: Annotated[Optional[float], typer.Option(help="Resident feature budget; above it features "
                                                           "stream from disk. Default: 60% of free memory.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Loss-curve PNG (default: OUT stem + .loss.png).")] = None,
    device: Device = _R.device,
    verbose: Verbose = False,
) -> None:
    """VPL phase 1: learn vision prototypes W from text-prototype CAMs by projected gradient descent.

    Minimises KL(P' || softmax(x.W / tau_I)) over every pixel feature x of the training set, W initialised from
    the text prototypes, rows projected onto the unit sphere after each step. Reports the modality gap.

    [dim]Example: vpltool learn-prototypes runs/voc/features -c runs/voc/cams_text -t runs/voc/text.safetensors
    -o runs/voc/vision.safetensors --tau-i 0.03 --iters 3000[/]
    """
    from .prototypes import run_learn_prototypes

    cfg = LearnPrototypesConfig(tau_i=tau_i, lr=lr, iters=iters, targets=targets, threshold=threshold,
                                regularization=regularization, bg_exponent=bg_exponent,
                                pixel_fraction=pixel_fraction, max_memory_gb=max_memory_gb)
    with progress("learn-prototypes") as (on_start, on_item):
        on_start(iters + 1)
        s = run_learn_prototypes(features, cams, text, out, cfg, RuntimeConfig(device=device),
                                 on_iter=lambda i, loss: on_item(1), plot=plot)
    gap_b, gap_a = s["gap_before"], s["gap_after"]
    err.print(f"[green]✓[/] learn-prototypes: {s['n_pixels']} pixels, loss {s['loss_curve'][0][1]:.4f} → "
              f"{s['final_loss']:.4f}, gap {_gap(gap_b)} → {_gap(gap_a)}, {s['seconds']:.1f}s → {out}")


def _gap(gap) -> str:
    if isinstance(gap, dict):
        return ", ".join(f"{k} {v:.3f}" for k, v in gap.items() if isinstance(v, (int, float)))
    return f"{gap:.3f}"


# ============================================================================================= crf
_C = CrfConfig()


@app.command("crf")
@friendly_errors
def crf_cmd(
    cams: Annotated[Path, typer.Argument(help="A `cam` folder (text- or vision-prototype CAMs).")],
    out: OutDir,
    iterations: Annotated[int, typer.Option(min=1, help="Mean-field iterations.")] = _C.iterations,
    gaussian_sxy: Annotated[float, typer.Option(help="Gaussian kernel spatial std.")] = _C.gaussian_sxy,
    gaussian_compat: Annotated[float, typer.Option(help="Gaussian kernel weight.")] = _C.gaussian_compat,
    bilateral_sxy: Annotated[float, typer.Option(help="Bilateral kernel spatial std.")] = _C.bilateral_sxy,
    bilateral_srgb: Annotated[float, typer.Option(help="Bilateral kernel colour std.")] = _C.bilateral_srgb,
    bilateral_compat: Annotated[float, typer.Option(help="Bilateral kernel weight.")] = _C.bilateral_compat,
    confidence: Annotated[float, typer.Option(min=0.0, max=1.0, help="Pixels whose CRF probability is below this "
                                              "become 255 (ignore); 0 keeps every pixel.")] = _C.confidence,
    bg_exponent: Annotated[float, typer.Option(help="Background score (1 - max CAM)^a.")] = _C.bg_exponent,
    parity: Annotated[str, typer.Option(help="none (RGB photo) | clip-es (wrapped mean-subtracted BGR, as "
                                        "CLIP-ES feeds its CRF).")] = _C.parity,
    no_crf: Annotated[bool, typer.Option("--no-crf", help="Thresholded argmax instead of the CRF (paper "
                                         "ablation).")] = False,
    workers: Annotated[int, typer.Option(help="CRF processes (0 = one per core); results do not depend on it.",
                                         rich_help_panel=RUNTIME)] = 0,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Dense-CRF pseudo masks (palette PNGs, 255 = low confidence) from CAMs and their images.

    [dim]Example: vpltool crf runs/voc/cams_vision -o runs/voc/pseudo --workers 8[/]
    """
    from .crf import run_crf

    cfg = CrfConfig(iterations=iterations, gaussian_sxy=gaussian_sxy, gaussian_compat=gaussian_compat,
                    bilateral_sxy=bilateral_sxy, bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat,
                    confidence=confidence, bg_exponent=bg_exponent, parity=parity, no_crf=no_crf)
    with progress("crf") as (on_start, on_item):
        s = run_crf(cams, out, cfg, RuntimeConfig(workers=workers, overwrite=overwrite), on_item=on_item,
                    on_start=on_start)
    err.print(f"[green]✓[/] crf: {s.done} masks, {s.skipped} already done → {out}")


# ============================================================================================= train-decoder / predict
@app.command("train-decoder")
@friendly_errors
def train_decoder_cmd(
    pseudo: Annotated[Path, typer.Argument(help="A `crf` folder of pseudo masks (255 = ignored).")],
    prototypes: Annotated[Path, typer.Option("--prototypes", "-p", help="Vision (or text) prototypes W; also "
                                             "names the frozen CLIP.")],
    out: OutDir,
    recipe: Annotated[str, typer.Option(help="vpl (paper: SGD 0.9, wd 1e-4, batch 6) | weclip (AdamW, balanced "
                                        "CE).")] = "vpl",
    iters: Annotated[Optional[int], typer.Option(min=1, help="Iterations [default: 30000].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Images per process [default: recipe's].")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate [default: recipe's].")] = None,
    lambda_rsc: Annotated[Optional[float], typer.Option(help="RSC loss weight; 0 = ablation without RSC "
                                                        "[default: 1].")] = None,
    rsc_temperature: Annotated[Optional[float], typer.Option(help="tau of the RSC InfoNCE [default: 0.07].")] = None,
    loss: Annotated[Optional[str], typer.Option(help="ce | balanced [default: recipe's].")] = None,
    dim: Annotated[Optional[int], typer.Option(help="Decoder width [default: 256].")] = None,
    layers: Annotated[Optional[int], typer.Option(help="Decoder transformer layers [default: 3].")] = None,
    heads: Annotated[Optional[int], typer.Option(help="Attention heads [default: 8].")] = None,
    crop_size: Annotated[Optional[int], typer.Option(help="Training crop, a patch multiple [default: 320].")] = None,
    train_prototypes: Annotated[Optional[bool], typer.Option("--train-prototypes/--freeze-prototypes",
                                                             help="Fine-tune W [default: frozen].")] = None,
    cache_features: Annotated[Optional[bool], typer.Option("--cache-features/--no-cache-features",
                                                           help="Precompute frozen features of a fixed view "
                                                           "(no rescale/crop; flip kept).")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(help="Checkpoint period [default: 1000].")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Validate on this split of the same dataset.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/checkpoints/last.safetensors.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Seed [default: 0].")] = None,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    workers: Workers = _R.workers,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """VPL phase 2: a decoder on the frozen CLIP trained with CE on pseudo masks + regional semantic contrast.

    Multi-GPU: [bold]torchrun --nproc-per-node 4 -m vpltool train-decoder ...[/] (DDP; the batch is per process).

    [dim]Example: vpltool train-decoder runs/voc/pseudo -p runs/voc/vision.safetensors -o runs/voc/decoder[/]
    """
    from .config import decoder_recipe
    from .train import run_train_decoder

    cfg = decoder_recipe(recipe, iters=iters, batch_size=batch_size, lr=lr, lambda_rsc=lambda_rsc,
                         rsc_temperature=rsc_temperature, loss=loss, dim=dim, layers=layers, heads=heads,
                         crop_size=crop_size, train_prototypes=train_prototypes, cache_features=cache_features,
                         checkpoint_every=checkpoint_every, seed=seed)
    runtime = RuntimeConfig(device=device, precision=precision, workers=workers, overwrite=overwrite)
    with progress("train-decoder") as (on_start, on_item):
        on_start(cfg.iters)
        s = run_train_decoder(pseudo, prototypes, out, cfg, runtime, resume=resume, val_split=val_split,
                              on_iter=lambda i, rec: on_item(1))
    val = f", val mIoU {100 * s.val_miou:.1f}" if s.val_miou is not None else ""
    err.print(f"[green]✓[/] train-decoder: {s.iterations} iterations ({s.iters_per_s:.2f} it/s), loss "
              f"{s.loss:.4f}{val} → {s.decoder}")


@app.command("predict")
@friendly_errors
def predict_cmd(
    decoder: Annotated[Path, typer.Argument(help="A decoder file from `train-decoder`.")],
    out: OutDir,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset root; default: the one the decoder "
                                                 "was trained on.")] = None,
    split: Split = None,
    scales: Annotated[str, typer.Option(help="Comma-separated test scales (averaged logits).")] = "1.0,0.75",
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Average with the mirrored image.")] = True,
    long_side: Annotated[Optional[int], typer.Option(help="Input long side [default: 1.6 x training crop].")] = None,
    crf: Annotated[bool, typer.Option("--crf", help="Test-time dense CRF (WeCLIP's parameters).")] = False,
    save_overlays: Annotated[Optional[Path], typer.Option(help="Also write mask-over-image PNGs here.")] = None,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Segment a dataset split with a trained decoder: multi-scale + flip averaging, optional CRF.

    [dim]Example: vpltool predict runs/voc/decoder/decoder.safetensors --split val -o runs/voc/pred_val[/]
    """
    from .config import PredictConfig
    from .predict import run_predict

    cfg = PredictConfig(scales=tuple(float(v) for v in scales.split(",")), flip=flip, long_side=long_side, crf=crf)
    runtime = RuntimeConfig(device=device, precision=precision, overwrite=overwrite)
    with progress("predict") as (on_start, on_item):
        s = run_predict(decoder, data, split, out, cfg, runtime, overlays=save_overlays, on_item=on_item,
                        on_start=on_start)
    err.print(f"[green]✓[/] predict: {s.done} masks, {s.skipped} already done → {out}")


# ============================================================================================= eval
@app.command("eval")
@friendly_errors
def eval_cmd(
    predictions: Annotated[Path, typer.Argument(help="A folder of mask PNGs (crf/predict) or CAM files (cam).")],
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Dataset with ground truth; default: the one "
                                                 "recorded by the stage that made the predictions.")] = None,
    split: Split = None,
    bg_exponents: Annotated[str, typer.Option(help="CAM folders: background = (1-max)^a, best a of these.")] =
        ",".join(f"{a:g}" for a in EvalConfig.bg_exponents),
    parity: Annotated[Optional[str], typer.Option(help="CAM folders: none | clip-es (CLIP-ES's float16 background "
                                                  "score) [default: the CAM folder's --parity].")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full result as JSON here.")] = None,
    verbose: Verbose = False,
) -> None:
    """Score predicted masks or CAMs against ground truth: per-class IoU and mIoU (VOC/COCO convention).

    [dim]Example: vpltool eval runs/voc/cams --split train --json runs/voc/cam_metrics.json[/]
    """
    from rich.console import Console

    from .metrics import format_table, run_eval

    exps = tuple(float(a) for a in bg_exponents.split(","))
    result, classes = run_eval(predictions, data=data, split=split, cfg=EvalConfig(bg_exponents=exps, parity=parity),
                               json_out=json_out)
    Console().print(format_table(result, classes))
    extra = f" (bg exponent {result['bg_exponent']:g})" if "bg_exponent" in result else ""
    err.print(f"[green]✓[/] eval: mIoU {100 * result['miou']:.2f} over {result['n_images']} images{extra}")


# ============================================================================================= demo world
DEMO = "Demo world"


@app.command("make-world", rich_help_panel=DEMO)
@friendly_errors
def make_world_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset into.")],
    train: Annotated[int, typer.Option(min=1, help="Training scenes.")] = 500,
    val: Annotated[int, typer.Option(min=1, help="Validation scenes (rendered from another seed).")] = 200,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives byte-identical files.")] = 0,
    size: Annotated[int, typer.Option(min=32, help="Scene side in pixels.")] = 96,
    layout: Annotated[str, typer.Option(help="folder (generic layout) | voc (PASCAL VOC layout).")] = "folder",
    distractors: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability of a same-colour, "
                                               "other-shape distractor per scene.")] = 0.0,
    overwrite: Overwrite = False,
    verbose: Verbose = False,
) -> None:
    """Render the synthetic demo world: shapes on textured backgrounds, exact masks, captions, labels.

    [dim]Example: vpltool make-world runs/demo/world --train 500 --val 200 --layout voc[/]
    """
    from .demo.scenes import SceneConfig, write_dataset

    cfg = SceneConfig(size=size, distractors=distractors)
    write_dataset(out, n_train=train, n_val=val, seed=seed, cfg=cfg, layout=layout, overwrite=overwrite)
    err.print(f"[green]✓[/] make-world: {train} train + {val} val scenes ({layout} layout) → {out}")


@app.command("train-toy-clip", rich_help_panel=DEMO)
@friendly_errors
def train_toy_clip_cmd(
    out: Annotated[Path, typer.Argument(help="Model folder to write (open_clip local-dir + vpltool.json).")] =
        Path("vpltool/assets/toy-clip"),
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = 400,
    batch_size: Annotated[int, typer.Option(min=2, help="Scenes per step.")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    crop_prob: Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of scenes replaced by a re-captioned "
                                             "random crop.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed; the defaults reproduce the shipped checkpoint.")] = 0,
    verbose: Verbose = False,
) -> None:
    """Train the demo world's toy CLIP from scratch on rendered scenes and captions (CPU, about 10 min on 2 cores).

    [dim]Example: vpltool train-toy-clip /tmp/toy-clip && vpltool extract WORLD -o F --model local-dir:/tmp/toy-clip[/]
    """
    from .demo.toyclip import train_toy_clip

    with progress("train-toy-clip") as (on_start, on_item):
        on_start(steps)
        metrics = train_toy_clip(out, steps=steps, batch_size=batch_size, lr=lr, crop_prob=crop_prob, seed=seed,
                                 on_step=lambda step, loss: on_item(1))
    err.print(f"[green]✓[/] train-toy-clip: loss {metrics['final_loss']:.3f}, label-set accuracy "
              f"{metrics['label_set_accuracy']:.2f}, GradCAM mIoU {metrics['gradcam_miou']:.3f} → {out}")


@app.command("demo-report", rich_help_panel=DEMO)
@friendly_errors
def demo_report_cmd(
    run: Annotated[Path, typer.Argument(help="A demo run folder (the Makefile's RUN).")] = Path("runs/demo"),
    verbose: Verbose = False,
) -> None:
    """Table of mIoU per stage next to chance; writes RUN/metrics.json and RUN/contact_sheet.png."""
    from rich.console import Console

    from .demo.report import format_report, run_demo_report

    report = run_demo_report(run)
    Console().print(format_report(report))
    err.print(f"[green]✓[/] demo-report → {run / 'metrics.json'}, {report['contact_sheet']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
