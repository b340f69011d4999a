"""The `benchmark` command: one training-free method on the eight open-vocabulary benchmarks, each with its preset."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..config import DEFAULT_MODEL, DEFAULT_PRETRAINED
from ..config.benchmarks import BENCHMARK_NAMES, BENCHMARK_PRESETS
from .dense_options import DENSE_PRESET
from .options import BATCHED, MODEL, LogFile, ModelConfigDir, PretrainedOpt, Shard, Verbose, runtime
from .output import say
from .values import model_spec
from .values import shard as shard_of


def _listed_methods() -> tuple[str, ...]:
    """The methods with presets of the plugins listed so far (a help's), not loaded here."""
    from ..plugins.survey import shown_so_far

    own = set(BENCHMARK_PRESETS)  # iterated: a lookup by name would load the plugin that has it
    return tuple(dict.fromkeys(row["method"] for rows in shown_so_far("presets").values() for row in rows
                               if row["method"] not in own))


def benchmark_cmd(
    method: Annotated[Optional[str], typer.Argument(
        help=f"The method, or several comma-separated (one row each, in <out>/<method>/): "
             f"{' | '.join((*BENCHMARK_PRESETS, *_listed_methods()))} (those not in this vpltool's --dense list "
             "are listed by --presets "
             "only); or a text-supervised family (alone) with its checkpoint, e.g. pgseg with --model pgseg:FILE "
             "[default with --model NAME:FILE: NAME].",
        show_default=False)] = None,
    root: Annotated[Optional[list[str]], typer.Option(
        "--root", help=f"NAME=ROOT, once per benchmark (NAME: {', '.join(BENCHMARK_NAMES)}); e.g. "
        "voc21=data/VOCdevkit/VOC2012 (docs/benchmarks.md: the layouts).", show_default=False)] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Output folder: <benchmark>/ masks, "
                                               "<benchmark>.json scores, table.json.", show_default=False)] = None,
    presets: Annotated[bool, typer.Option("--presets", help="List every method's per-benchmark settings and where "
                                          "each comes from (file:line of its config), then exit.")] = False,
    knobs: dict = DENSE_PRESET,
    model: Annotated[str, typer.Option(
        "--model", rich_help_panel=MODEL,
        help="A CLIP for the --dense methods (an open_clip architecture, local-dir:/path, hf-hub:ORG/REPO, or "
             "vpltool-toy), or FAMILY:FILE, a text-supervised family's checkpoint (pgseg:FILE or groupvit:FILE: a "
             "PGSeg / GroupViT checkpoint, a train-pgseg pgseg.safetensors or a release .pth) run with `segment "
             "--model FAMILY:FILE`'s settings on every benchmark (--presets lists them).")] = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    shard: Shard = None,
    run: dict = BATCHED,
    model_config_dir: ModelConfigDir = None,
    log_file: LogFile = None,
    verbose: Verbose = False,
) -> None:
    """Run a training-free method on the eight open-vocabulary benchmarks (VOC21, Context60, COCO-Object, VOC20,
    Context59, COCO-Stuff, Cityscapes, ADE20K) with the settings its own config uses for each, score each, and print
    the table with its mean; or a text-supervised family's checkpoint (PGSeg / GroupViT: --model pgseg:FILE) with
    `segment`'s settings for it. Resumable; under torchrun each rank segments its share.

    \b
    Example:
      vpltool benchmark naclip --root voc21=data/VOCdevkit/VOC2012 --root ade20k=data/ADEChallengeData2016 -o runs/b
      vpltool benchmark naclip,sclip,clearclip --root voc20=data/VOCdevkit/VOC2012 -o runs/b
      vpltool benchmark pgseg --model pgseg:runs/gv/pgseg.safetensors --root voc21=data/VOCdevkit/VOC2012 -o runs/b
      vpltool benchmark --presets
    """
    from ..config.benchmarks import presets_table
    from ..errors import VplError
    from ..models.registry import segmenter_family

    if presets:  # a listing: no model and no torch (stages.benchmark imports them)
        for row in [*presets_table(method), *_listed_presets(method)]:
            s = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
            extra = (" [" + ", ".join(f"{k}={v}" for k, v in row["extra"].items()) + "]") if row["extra"] else ""
            typer.echo(f"{row['method']:<10} {row['benchmark']:<12} {s}{extra}\n{'':<23}from {row['repo']}: "
                       f"{row['source']}")
        if method is None or segmenter_family(method) != "clip":
            _print_text_presets(None if method is None else segmenter_family(method))
        return
    from ..models.registry import model_family

    family, checkpoint = model_family(model)  # NAME:FILE: a text-supervised family's checkpoint (pgseg:FILE)
    if family != "clip" and method is None:
        method = model.partition(":")[0].lower()  # the row's name: the family prefix given
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
    methods = [m.strip() for m in method.split(",") if m.strip()]
    if family != "clip":
        from ..stages.benchmark import run_text_benchmark

        if len(methods) != 1:
            raise VplError(f"benchmark {method} --model {model}: one checkpoint is one method; give one ({family})")
        tables = [run_text_benchmark(methods[0], family, roots, out, checkpoint, knobs, runtime(**run),
                                     shard=shard_of(shard), on_benchmark=lambda n: say(f"benchmark {methods[0]}: {n}"))]
        _print_tables(tables)
        return
    from ..stages.benchmark import run_benchmarks

    tables = run_benchmarks(methods, roots, out, model_spec(model, pretrained, model_config_dir), knobs,
                            runtime(**run), shard=shard_of(shard),
                            on_benchmark=lambda m, n: say(f"benchmark {m}: {n}"))
    _print_tables(tables)


def _listed_presets(method: str | None) -> list[dict]:
    """The presets rows of the plugins not loaded here, as each said when listed in a child process (none is
    loaded to be listed: :func:`vpltool.plugins.survey.shown`)."""
    from ..config.benchmarks import BENCHMARK_PRESETS
    from ..plugins.survey import shown

    own = set(BENCHMARK_PRESETS)  # iterated: a lookup by name would load the plugin that has it
    return [row for rows in shown("presets").values() for row in rows
            if row["method"] not in own and method in (None, row["method"])]


def _print_text_presets(family: str | None) -> None:
    """`--presets`: a text-supervised family's checkpoint settings (`segment --model NAME:FILE`'s, on every
    benchmark), for ``family`` or every family."""
    from ..data.benchmarks import BENCHMARKS
    from ..models.registry import TEXT_FAMILIES, text_config
    from ..stages.benchmark import text_settings

    for name in [family] if family is not None else list(TEXT_FAMILIES):
        source = text_config(name).ZERO_SHOT.source
        for b in BENCHMARK_NAMES:
            s = ", ".join(f"{k}={v}" for k, v in text_settings(name, b).items() if k != "method")
            why = ("; bg_thresh 0 (vpltool's): this benchmark has no background class" if not
                   BENCHMARKS[b].has_background else "")
            typer.echo(f"{name:<10} {b:<12} {s}\n{'':<23}from {source}: segment --model {name}:FILE's{why}")


def _print_tables(tables: list[dict]) -> None:
    from ..stages.benchmark import format_row

    lines = [format_row(t) for t in tables]
    typer.echo(lines[0][0])
    for line in lines:  # the method's row, then what made each benchmark's number
        typer.echo("\n".join(line[1:]))
    if any(t["mean"] is None for t in tables):
        say("[yellow]some benchmarks are not scored yet (other shards still running); run again when they finish[/]")
