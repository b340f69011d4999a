"""`vpltool benchmark`: one training-free method on the field's eight benchmarks (VOC21, Context60, COCO-Object, VOC20,
Context59, COCO-Stuff, Cityscapes, ADE20K), each with the settings the method's own config uses for it
(:mod:`vpltool.config.benchmarks`), scored, and the table printed with its mean.

Per benchmark given a root: the dataset (:mod:`vpltool.data.benchmarks`) and the preset are checked first, for all
of them, before the model loads; then `segment`'s stage body writes ``<out>/<benchmark>/`` (resumable, and split by
rank under torchrun as every per-image stage), and once every image of it has a mask, `eval` writes
``<out>/<benchmark>.json``. The table is ``<out>/table.json``. The CLIP is loaded once and shared.

A text-supervised family's checkpoint (``benchmark pgseg --model pgseg:FILE``, :func:`run_text_benchmark`) runs the
same way with `segment --model NAME:FILE`'s stage body and the family's settings (:func:`text_settings`) in the same
table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import io
from ..config import RuntimeConfig, SegmentConfig
from ..config.benchmarks import BENCHMARK_PRESETS
from ..config.dense import DENSE_CHOICES
from ..data.benchmarks import BENCHMARK_ORDER, TITLES
from ..data.class_files import is_class_set
from ..errors import VplError
from ..io.protocols import from_row
from ..models.registry import segmenter_family

if TYPE_CHECKING:  # a name of annotations: `benchmark --presets` imports this module and no torch
    from ..models import ModelSpec

STAGE = "benchmark"


def preset_config(method: str, benchmark: str, overrides: Mapping[str, Any] | None = None) -> SegmentConfig:
    """The :class:`SegmentConfig` of ``method`` on ``benchmark``: its preset, with every non-None ``overrides``
    value (the command line's options) in its place."""
    if method not in BENCHMARK_PRESETS:
        if segmenter_family(method) != "clip":  # a text-supervised family's: a checkpoint, no benchmark presets
            from ..models.registry import TEXT_FAMILIES

            raise VplError(f"benchmark {method}: give its checkpoint, --model {method}:FILE "
                           f"({TEXT_FAMILIES[segmenter_family(method)].files})")
        raise VplError(f"benchmark: no presets for method {method!r}; choose one of {', '.join(BENCHMARK_PRESETS)}")
    presets = BENCHMARK_PRESETS[method]
    if benchmark not in presets.names:
        raise VplError(f"benchmark {method} --root {benchmark}=...: {presets.repo} has no config for {benchmark} "
                       f"(its presets: {', '.join(presets.names)}); give one of those, or run segment --dense "
                       f"{presets.defaults['dense']} on its images")
    settings = presets.settings(benchmark)
    if settings["dense"] not in DENSE_CHOICES:
        raise VplError(f"benchmark {method}: --dense {settings['dense']} is not in this vpltool (it has "
                       f"{', '.join(DENSE_CHOICES[1:])}); its presets are listed by `vpltool benchmark --presets`")
    known = set(SegmentConfig.option_names(settings["dense"]))  # another method's knobs are not this one's
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None and k in known})
    if settings.get("class_file") is not None and is_class_set(settings["class_file"]):  # each benchmark's own
        settings["class_file"] = f"{settings['class_file']}:{benchmark}"
    return SegmentConfig.of(**settings)


def check_class_file_option(class_file: str | None, names: Sequence[str]) -> None:
    """``--class-file`` of a benchmark run: a set name (``sclip``: each benchmark's own file) for any number of
    benchmarks, one file for one benchmark only (VOC20 would get VOC21's background line)."""
    if class_file is None or is_class_set(class_file) or len(names) <= 1:
        return
    from ..config.dense import CLASS_SETS

    sets = ", ".join(CLASS_SETS)
    raise VplError(f"--class-file {class_file}: one file for {len(names)} benchmarks ({', '.join(names)}), whose "
                   f"classes differ; give a set name ({sets}: each benchmark's own file), or run one benchmark per "
                   "--class-file")


def run_benchmark(method: str, roots: Mapping[str, str | Path], out: str | Path, spec: ModelSpec,
                  overrides: Mapping[str, Any] | None = None, runtime: RuntimeConfig = RuntimeConfig(), *,
                  shard: tuple[int, int] | None = None, on_benchmark: Callable[[str], None] | None = None,
                  backbone=None, keep: dict | None = None) -> dict[str, Any]:
    """Segment and score each benchmark of ``roots`` (name -> root) with ``method``'s preset for it; ``backbone``:
    a loaded CLIP of ``spec`` to reuse (each benchmark sets its ``--dense``), else loaded when there is work.

    Returns:
        ``{"method", "model", "columns": [names in the table's order], "miou": {name: fraction in [0, 1] or None
        (not scored yet: another rank's images are still to come)}, "mean": fraction or None (the mean over the
        benchmarks scored, None until all given are), "settings": {name: SegmentConfig fields}}``, also written to
        ``<out>/table.json`` once every benchmark given is scored. ``keep``: a dict that receives the CLIP loaded (or
        given) as ``keep["backbone"]``, for the next method.
    """
    from ..device import resolve_device
    from ..models import load_model
    from .segment import is_benchmark, resolve_queries, run_segment, scored_background

    names, datasets, out = _open_benchmarks(roots, out)
    # every dataset and every preset checked before the model loads (a wrong root fails in a second)
    check_class_file_option((overrides or {}).get("class_file"), names)
    configs = {n: preset_config(method, n, overrides) for n in names}
    for n in names:  # the class files and queries too (a bad file for the last benchmark fails now, not in an hour)
        resolve_queries(list(datasets[n].classes[1:]), configs[n], scored_background(datasets[n]),
                        is_benchmark(datasets[n]))
    loaded = {"backbone": backbone}

    def segment(n: str, folder: Path) -> None:
        if loaded["backbone"] is None:
            loaded["backbone"] = load_model("clip", spec, resolve_device(runtime.device))
        run_segment(datasets[n], folder, spec, configs[n], runtime, shard=shard, backbone=loaded["backbone"])

    presets = BENCHMARK_PRESETS[method]
    table = _score(method, spec.identity(), names, datasets, out, segment,
                   {n: _config_dict(configs[n]) for n in names}, on_benchmark,
                   {n: made_with(configs[n]) for n in names},
                   {n: f"benchmark presets: {presets.repo} {presets.config_file(n)}" for n in names})
    if keep is not None:
        keep["backbone"] = loaded["backbone"]
    return table


def text_settings(family: str, benchmark: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`segment --model NAME:FILE`'s settings on ``benchmark`` for text-supervised family ``family`` (its
    configuration's ``ZERO_SHOT``: PGSeg's are the reference's, :mod:`vpltool.config.pgseg`), with ``short_side`` /
    ``slide_crop`` / ``slide_stride`` of ``overrides`` where given. A benchmark whose ground truth has no background
    class (VOC20, Context59, COCO-Stuff, Cityscapes, ADE20K, where class 0 is never right) gets ``bg_thresh`` 0: no
    pixel is background, each takes its best class."""
    from ..data.benchmarks import BENCHMARKS
    from ..models.registry import text_config

    own = text_config(family).ZERO_SHOT
    o = {k: v for k, v in (overrides or {}).items() if v is not None}
    return {"method": family, "bg_thresh": own.bg_thresh if BENCHMARKS[benchmark].has_background else 0.0,
            "short_side": o.get("short_side", own.short_side), "slide_crop": o.get("slide_crop", own.slide[0]),
            "slide_stride": o.get("slide_stride", own.slide[1]), "background": own.background}


def run_text_benchmark(method: str, family: str, roots: Mapping[str, str | Path], out: str | Path,
                       checkpoint: str | Path, overrides: Mapping[str, Any] | None = None,
                       runtime: RuntimeConfig = RuntimeConfig(), *, shard: tuple[int, int] | None = None,
                       on_benchmark: Callable[[str], None] | None = None) -> dict[str, Any]:
    """:func:`run_benchmark` for the ``family`` checkpoint ``checkpoint`` (``benchmark NAME --model NAME:FILE``,
    e.g. ``benchmark pgseg --model pgseg:FILE``): each benchmark segmented by `segment --model NAME:FILE`'s stage
    body with :func:`text_settings` (the dataset's class names, one query each), then scored; the same table (its
    ``"model"``: ``{"model": family, "pretrained": FILE}``, as the segment records name it). ``shard``: this
    process's share of each benchmark's images (a benchmark is scored once all its shards are in)."""
    from ..models.registry import TEXT_FAMILIES
    from .segment_text import check_options, run_segment_text, text_family_of, text_names

    if segmenter_family(method) != family:
        raise VplError(f"benchmark {method} --model {family}:{checkpoint}: a {TEXT_FAMILIES[family].title} "
                       f"checkpoint runs as method {family} (benchmark {family} --model {family}:FILE); {method} "
                       "needs a CLIP --model")
    names, datasets, out = _open_benchmarks(roots, out)
    settings = {n: text_settings(family, n, overrides) for n in names}
    min_side = text_family_of(family).TrainConfig.ZERO_SHOT.min_side
    for n in names:  # every option and class list checked, and the checkpoint read, before anything is written
        s = settings[n]
        check_options(s["bg_thresh"], s["short_side"], (s["slide_crop"], s["slide_stride"]), min_side)
        text_names(list(datasets[n].classes[1:]), s["background"])
    text_family_of(family).check_checkpoint(checkpoint)

    def segment(n: str, folder: Path) -> None:
        s = settings[n]
        run_segment_text(datasets[n], folder, family, checkpoint, list(datasets[n].classes[1:]), runtime,
                         bg_thresh=s["bg_thresh"], short_side=s["short_side"],
                         slide=(s["slide_crop"], s["slide_stride"]), background=s["background"], shard=shard)

    made = {n: {"class_file": None, "short_side": s["short_side"],
                "window": _window(s["slide_crop"], s["slide_stride"]), "threshold": s["bg_thresh"], "logit_scale": None}
            for n, s in settings.items()}
    return _score(method, {"model": family, "pretrained": str(checkpoint)}, names, datasets, out, segment,
                  settings, on_benchmark, made)


def _open_benchmarks(roots: Mapping[str, str | Path], out: str | Path) -> tuple[list[str], dict, Path]:
    """The benchmarks of ``roots`` in the table's order, each opened (a wrong root: one line), and ``out`` checked."""
    from ..data import open_dataset

    unknown = [n for n in roots if n not in BENCHMARK_ORDER]
    if unknown:
        raise VplError(f"--root {unknown[0]}=...: unknown benchmark; give NAME=ROOT with NAME one of "
                       f"{', '.join(BENCHMARK_ORDER)}")
    if not roots:
        raise VplError(f"no benchmark given; pass --root NAME=ROOT for some of {', '.join(BENCHMARK_ORDER)}")
    out = io.check_folder_target(out)
    names = [n for n in BENCHMARK_ORDER if n in roots]
    return names, {n: open_dataset(f"{n}={roots[n]}") for n in names}, out


def _window(crop: int, stride: int) -> str:
    return f"{crop}/{stride}" if crop else "whole image"


def made_with(cfg: SegmentConfig) -> dict[str, Any]:
    """What makes a benchmark's number, as its table row names it: the class file (``SET:BENCHMARK``; None: the
    dataset's names), the short side, the window (``crop/stride`` or ``whole image``), the threshold and the logit
    scale that ran (the preset's, with the command line's options)."""
    s = cfg.resolved()
    return {"class_file": cfg.class_file, "short_side": s.short_side, "window": _window(s.slide_crop, s.slide_stride),
            "threshold": s.prob_threshold, "logit_scale": s.logit_scale}


def _score(method: str, model: dict, names: list[str], datasets: dict, out: Path,
           segment: Callable[[str, Path], None], settings: dict, on_benchmark: Callable[[str], None] | None,
           made: dict, presets: dict | None = None) -> dict[str, Any]:
    """Each benchmark segmented into ``<out>/<name>/`` (``segment(name, folder)``) and, once every image has its
    mask, scored by `eval` into ``<out>/<name>.json``; the table (:func:`run_benchmark`'s), ``table.json`` once all
    are scored. Each figure's protocol and post-processing are its eval's (read from the folder's records), with
    ``presets`` (name -> where the settings came from) for a method run with its benchmark presets."""
    from .eval import run_eval

    miou: dict[str, float | None] = {}
    protocol: dict[str, dict | None] = {}  # each figure's protocol and post-processing (vpltool.io.protocols)
    for n in names:
        if on_benchmark:
            on_benchmark(n)
        folder = out / n
        segment(n, folder)
        if all(io.mask_path(folder, it.id).is_file() for it in datasets[n].items) and io.stage_record_path(
                folder).is_file():
            result, _ = run_eval(folder, json_out=out / f"{n}.json", overwrite=True)
            # the settings' source: the method's benchmark presets (the folder's record holds what they set)
            miou[n], protocol[n] = result["miou"], {**result["protocol"], **(
                {"presets": presets[n]} if presets else {})}
        else:
            miou[n], protocol[n] = None, None
    scored = [v for v in miou.values() if v is not None]
    table = {"method": method, "model": model, "columns": names, "titles": [TITLES[n] for n in names],
             "miou": miou, "mean": sum(scored) / len(scored) if len(scored) == len(names) else None,
             "made_with": made, "settings": settings, "protocol": protocol}
    if table["mean"] is not None:
        io.write_json(out / "table.json", table, kind="benchmark-table")
    return table


def run_benchmarks(methods: Sequence[str], roots: Mapping[str, str | Path], out: str | Path, spec: ModelSpec,
                   overrides: Mapping[str, Any] | None = None, runtime: RuntimeConfig = RuntimeConfig(), *,
                   shard: tuple[int, int] | None = None,
                   on_benchmark: Callable[[str, str], None] | None = None) -> list[dict[str, Any]]:
    """:func:`run_benchmark` for each of ``methods`` (one CLIP loaded for all), every method's presets checked first;
    one method writes into ``out``, several each into ``<out>/<method>/``. Returns their tables in order."""
    twice = next((m for m in methods if list(methods).count(m) > 1), None)
    if twice is not None:
        raise VplError(f"benchmark: method {twice!r} is named {list(methods).count(twice)} times; give each once")
    check_class_file_option((overrides or {}).get("class_file"), [n for n in BENCHMARK_ORDER if n in roots])
    for m in methods:
        for n in (n for n in roots if n in BENCHMARK_ORDER):
            preset_config(m, n, overrides)
    keep: dict = {}
    tables = []
    for m in methods:
        folder = Path(out) / m if len(methods) > 1 else Path(out)
        tables.append(run_benchmark(m, roots, folder, spec, overrides, runtime, shard=shard, keep=keep,
                                    backbone=keep.get("backbone"),
                                    on_benchmark=None if on_benchmark is None else lambda n, m=m: on_benchmark(m, n)))
    return tables


def _config_dict(cfg: SegmentConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.flat().items() if v is not None}


def format_row(table: Mapping[str, Any]) -> list[str]:
    """The table as text lines: a header of the benchmarks' titles and Avg, then the method's mIoU in percent (one
    decimal; '-' where not scored yet), then per benchmark what made its number (:func:`made_with`)."""
    titles = [*table["titles"], "Avg"]
    cells = [table["miou"][n] for n in table["columns"]] + [table["mean"]]
    width = max(8, *(len(t) + 1 for t in titles))
    made_by = {n: from_row(p) for n, p in (table.get("protocol") or {}).items()}
    kinds = sorted({p.protocol for p in made_by.values() if p is not None})  # one word unless they differ
    head = f"{'method':<12}" + "".join(f"{t:>{width}}" for t in titles) + "  protocol"
    row = f"{table['method']:<12}" + "".join(f"{'-' if v is None else f'{100 * v:.1f}':>{width}}" for v in cells)
    row += f"  {' / '.join(kinds) or '-'}"
    made = []
    for n, title in zip(table["columns"], table["titles"]):
        m = table.get("made_with", {}).get(n)
        if m is not None:
            scale = "" if m["logit_scale"] is None else f", logit scale {m['logit_scale']:g}"
            made.append(f"  {title}: class file {m['class_file'] or 'the dataset names'}, short side "
                        f"{m['short_side']}, window {m['window']}, threshold {m['threshold']:g}{scale}")
        p = made_by.get(n)
        if p is not None:  # the protocol and post-processing beside the figure (vpltool.io.protocols)
            made.append(f"    {p.label()}; post-processing: {p.post()}; settings: {p.presets}")
    return [head, row, *made]


__all__ = ["STAGE", "run_benchmark", "run_benchmarks", "run_text_benchmark", "text_settings", "preset_config",
           "format_row"]
