"""The `benchmark` command: one training-free method on the eight open-vocabulary benchmarks, each with its preset."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..config.benchmarks import BENCHMARK_NAMES, BENCHMARK_PRESETS
from .common import (
    _R,
    AttentionOpt,
    BatchSize,
    ClassFileOpt,
    ClusterCutOpt,
    CoarseThresholdOpt,
    CosFacOpt,
    Device,
    GlobalWeightOpt,
    LogFile,
    MinimalAreaOpt,
    ModelConfigDir,
    ModelOpt,
    Overwrite,
    Precision,
    PretrainedOpt,
    ProxyModelOpt,
    RefineNegCosOpt,
    ResidualOpt,
    SamHalvesOpt,
    SamRefineOpt,
    SamWeightsOpt,
    Shard,
    ShiftWeightOpt,
    StretchOpt,
    Verbose,
    WindowGlobalOpt,
    Workers,
    friendly_errors,
    runtime,
    say,
)
from .root import app
from .values import model_spec
from .values import shard as shard_of

_PRESET = "[default: the method's preset for each benchmark; `--presets` lists them]"


@app.command("benchmark")
@friendly_errors
def benchmark_cmd(
    method: Annotated[Optional[str], typer.Argument(
        help=f"The method, or several comma-separated (one row each, in <out>/<method>/): "
             f"{' | '.join(BENCHMARK_PRESETS)} (those not in this vpltool's --dense list are listed by --presets "
             "only).", show_default=False)] = None,
    root: Annotated[Optional[list[str]], typer.Option(
        "--root", help=f"NAME=ROOT, once per benchmark (NAME: {', '.join(BENCHMARK_NAMES)}); e.g. "
        "voc21=data/VOCdevkit/VOC2012 (docs/benchmarks.md: the layouts).", show_default=False)] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder: <benchmark>/ masks, "
                                               "<benchmark>.json scores, table.json.", show_default=False)] = None,
    presets: Annotated[bool, typer.Option("--presets", help="List every method's per-benchmark settings and where "
                                          "each comes from (file:line of its config), then exit.")] = False,
    logit_scale: Annotated[Optional[float], typer.Option(help="softmax(scale * cosine). " + _PRESET,
                                                         show_default=False)] = None,
    prob_threshold: Annotated[Optional[float], typer.Option(help="Background below this top probability. " + _PRESET,
                                                            show_default=False)] = None,
    area_threshold: Annotated[Optional[float], typer.Option(help="SCLIP's area filter (0 = off). " + _PRESET,
                                                            show_default=False)] = None,
    short_side: Annotated[Optional[int], typer.Option(help="Short side of the resize. " + _PRESET,
                                                      show_default=False)] = None,
    slide_crop: Annotated[Optional[int], typer.Option(help="Window side (0 = whole image). " + _PRESET,
                                                      show_default=False)] = None,
    slide_stride: Annotated[Optional[int], typer.Option(help="Window stride. " + _PRESET, show_default=False)] = None,
    pamr_steps: Annotated[Optional[int], typer.Option(help="PAMR steps (0 = off). " + _PRESET,
                                                      show_default=False)] = None,
    class_file: ClassFileOpt = None,
    attention: AttentionOpt = None,
    residual: ResidualOpt = None,
    global_weight: GlobalWeightOpt = None,
    shift_weight: ShiftWeightOpt = None,
    cluster_cut: ClusterCutOpt = None,
    stretch: StretchOpt = None,
    window_global: WindowGlobalOpt = None,
    cos_fac: CosFacOpt = None,
    refine_neg_cos: RefineNegCosOpt = None,
    sam_halves: SamHalvesOpt = None,
    sam_refine: SamRefineOpt = None,
    coarse_threshold: CoarseThresholdOpt = None,
    minimal_area: MinimalAreaOpt = None,
    proxy_model: ProxyModelOpt = None,
    proxy_weights: Annotated[Optional[str], typer.Option(
        "--proxy-weights", help="The proxy model's weights: hub (timm's local cache) | a local file | none (random, "
        "seeded: tests) [default: hub].",
        show_default=False)] = None,
    sam_model: Annotated[Optional[str], typer.Option(
        "--sam-model", help="--dense trident's SAM image encoder: vit_b | vit_l | vit_h | toy [default: vit_b, "
        "Trident's].", show_default=False)] = None,
    sam_weights: SamWeightsOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    shard: Shard = None,
    device: Device = _R.device,
    precision: Precision = _R.precision,
    batch_size: BatchSize = _R.batch_size,
    workers: Workers = _R.workers,
    overwrite: Overwrite = False,
    model_config_dir: ModelConfigDir = None,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Run a training-free method on the eight open-vocabulary benchmarks (VOC21, Context60, COCO-Object, VOC20,
    Context59, COCO-Stuff, Cityscapes, ADE20K) with the settings its own config uses for each, score each, and print
    the table with its mean. Resumable; under torchrun each rank segments its share.

    \b
    Example:
      vpltool benchmark naclip --root voc21=data/VOCdevkit/VOC2012 --root ade20k=data/ADEChallengeData2016 -o runs/b
      vpltool benchmark naclip,sclip,clearclip --root voc20=data/VOCdevkit/VOC2012 -o runs/b
      vpltool benchmark --presets
    """
    from ..config.benchmarks import presets_table
    from ..errors import VplError
    from ..stages.benchmark import format_row, run_benchmarks

    if presets:
        for row in presets_table(method):
            s = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
            extra = (" [" + ", ".join(f"{k}={v}" for k, v in row["extra"].items()) + "]") if row["extra"] else ""
            typer.echo(f"{row['method']:<10} {row['benchmark']:<12} {s}{extra}\n{'':<23}from {row['repo']}: "
                       f"{row['source']}")
        return
    if method is None or out is None:
        raise VplError("benchmark: give METHOD and --out (or --presets to list the presets)")
    roots = {}
    for entry in root or []:
        name, sep, path = entry.partition("=")
        if not sep or not path:
            raise VplError(f"--root {entry}: give NAME=ROOT, e.g. --root voc21=data/VOCdevkit/VOC2012")
        if name in roots:
            raise VplError(f"--root {name}=...: given twice; give each benchmark once")
        roots[name] = path
    overrides = {"logit_scale": logit_scale, "prob_threshold": prob_threshold, "area_threshold": area_threshold,
                 "short_side": short_side, "slide_crop": slide_crop, "slide_stride": slide_stride,
                 "pamr_steps": pamr_steps, "class_file": class_file, "attention": attention, "residual": residual,
                 "global_weight": global_weight, "shift_weight": shift_weight, "cluster_cut": cluster_cut,
                 "stretch": stretch, "window_global": window_global, "cos_fac": cos_fac,
                 "refine_neg_cos": refine_neg_cos, "sam_halves": sam_halves, "sam_refine": sam_refine,
                 "coarse_threshold": coarse_threshold, "minimal_area": minimal_area, "sam_model": sam_model,
                 "proxy_model": proxy_model,
                 "proxy_weights": proxy_weights,
                 "sam_weights": sam_weights}
    methods = [m.strip() for m in method.split(",") if m.strip()]
    tables = run_benchmarks(methods, roots, out, model_spec(model, pretrained, model_config_dir), overrides,
                            runtime(device, precision, batch_size, workers, overwrite), shard=shard_of(shard),
                            on_benchmark=lambda m, n: say(f"benchmark {m}: {n}"))
    lines = [format_row(t) for t in tables]
    typer.echo(lines[0][0])
    for line in lines:
        typer.echo(line[1])
    if any(t["mean"] is None for t in tables):
        say("[yellow]some benchmarks are not scored yet (other shards still running); run again when they finish[/]")
