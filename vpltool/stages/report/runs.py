"""What a run folder holds, discovered from its stage records (no fixed list of stages or folder names).

Every sub-folder of the run with a ``_stage.json`` of `cam`, `crf` or `predict` becomes a column; the columns are
grouped by the dataset split they were made from (``inputs.dataset`` of the record), and each split is one table
of the report. A `cam --save-debug` folder (its ``_side.json``) is matched to the `cam` folder whose parameters its
files record; a `crf` folder to the `cam` folder whose record it hashed. Metrics come from ``RUN/metrics.json``
(`demo-report`) and ``RUN/metrics/<folder>.json`` (`eval`, the Makefile's convention).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ... import io
from ...config import PSEUDO_STAGES, EvalConfig
from ...data import Dataset, check_recorded, is_plain, open_recorded
from ...errors import VplError
from ...ops.kernels import class_name_map

COLUMN_STAGES = ("cam", *PSEUDO_STAGES, "predict", "segment")  # per-image outputs a row shows, in pipeline order
DATA_STAGES = ("extract", *COLUMN_STAGES)  # folders that name a dataset split
# what two CAM folders may differ in and still be one refinement of two prototype sets (text vs vision)
PROTOTYPE_PARAMS = ("prototypes", "temperature")
METRICS = "metrics"


@dataclass
class Column:
    """One per-image output folder of the run: a `cam` folder (CAMs) or a `crf`/`predict` folder (masks).

    Attributes:
        name: the folder's name (what the user sees in the run folder, e.g. ``cams_vision_val``).
        kind: ``cam`` or ``mask``.
        title: what it is, from its record (e.g. "vision CAM", "CRF pseudo mask").
        bg_exponent: CAMs: the background exponent eval chose (``metrics/<name>.json``), else the first default.
        fp16: CAMs made with ``--parity clip-es`` (scored with CLIP-ES's float16 arithmetic, as eval does).
        lut: masks of an open-vocabulary `predict`: its class indices -> the dataset's (None: the same classes).
        debug: the `cam --save-debug` folder of these CAMs, or None.
        boxes: how the detail view's box masks are known: ``saved`` (debug folder with CAA's boxes), ``off``
            (``--refine none``: CAA made no box), ``not saved`` (CAA ran, no debug folder).
        made_from: a `crf` folder: the name of the `cam` folder it was made from, when that is in the run.
    """

    name: str
    folder: Path
    stage: str
    record: dict[str, Any]
    kind: str = "mask"
    title: str = ""
    source: str | None = None
    bg_exponent: float | None = None
    fp16: bool = False
    lut: Any = None
    debug: Path | None = None
    boxes: str = "off"
    made_from: str | None = None
    metrics: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """What the page shows about the column (JSON-able)."""
        params = self.record.get("params", {})
        shown = {k: params[k] for k in ("refine", "affinity", "box_threshold", "layer", "confidence", "no_crf",
                                        "scales", "crf") if k in params}
        return {"name": self.name, "kind": self.kind, "stage": self.stage, "title": self.title,
                "source": self.source, "bg_exponent": self.bg_exponent, "boxes": self.boxes,
                "debug": self.debug.name if self.debug else None, "made_from": self.made_from, "params": shown,
                "metrics_miou": (self.metrics or {}).get("miou")}


@dataclass
class Split:
    """The images of one dataset split and the run's columns made from it."""

    key: tuple[str, str | None]
    name: str
    dataset: Dataset
    columns: list[Column] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (text CAM column, vision CAM column)

    @property
    def has_gt(self) -> bool:
        return any(item.gt is not None for item in self.dataset.items)


@dataclass
class Run:
    """A run folder as the report sees it."""

    root: Path
    splits: list[Split]
    inputs: list[Path]  # every folder the report reads (the output may lie in none of them)
    metrics_file: Path | None
    metrics_files: dict[str, Path]
    single: bool = False  # one stage folder given alone (`report OUT` of a `segment` on photos), not a run folder


def _records(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    """``(folder, record)`` of every finished stage folder directly inside ``root``, by name."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        path = io.stage_record_path(folder)
        if path.is_file():
            found.append((folder, io.read_record(path)))
    return found


def _debug_folders(root: Path) -> list[Path]:
    """The `cam --save-debug` folders directly inside ``root`` (their ``_side.json`` says so)."""
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        side = folder / io.SIDE_RECORD
        if side.is_file():
            record = io.read_side_record(side)
            if isinstance(record, dict) and (record.get("stage"), record.get("option")) == ("cam", "--save-debug"):
                found.append(folder)
    return found


def _debug_params(folder: Path) -> dict[str, Any] | None:
    """The cam parameters recorded in the first debug file of ``folder`` (None when it holds none)."""
    first = next(iter(sorted(folder.glob("*.safetensors"))), None)
    if first is None:
        return None
    raw = io.read_header(first).get("vpltool.params")
    return None if raw is None else io.jsonable(json.loads(raw))


def _cam_title(source: str | None, params: dict[str, Any]) -> str:
    refine = params.get("refine", "none")
    how = "" if refine in (None, "none") else f", {refine}"
    affinity = params.get("affinity", "clip")
    how += "" if affinity in (None, "clip") or refine in (None, "none") else f" ({affinity} attention)"
    return f"{source or '?'} CAM{how}"


TITLES = {"crf": "CRF pseudo mask", "sam-pseudo": "SAM pseudo mask", "predict": "decoder prediction",
          "segment": "open-vocabulary mask"}


def _column(folder: Path, record: dict[str, Any], metrics: Path) -> Column:
    params = record.get("params", {})
    col = Column(folder.name, folder, record["stage"], record)
    file = metrics / f"{folder.name}.json"
    col.metrics = _eval_metrics(file) if file.is_file() else None
    if col.stage == "cam":
        col.kind = "cam"
        col.source = (params.get("prototypes") or {}).get("source")
        col.title = _cam_title(col.source, params)
        chosen = (col.metrics or {}).get("bg_exponent")
        col.bg_exponent = float(chosen) if chosen is not None else EvalConfig.bg_exponents[0]
        col.fp16 = params.get("parity") == "clip-es"
        col.boxes = "off" if params.get("refine", "none") == "none" else "not saved"
    else:
        col.title = TITLES[col.stage] + (" (no CRF)" if params.get("no_crf") else "")
    return col


def _eval_metrics(path: Path) -> dict[str, Any] | None:
    """``metrics/<name>.json`` checked as an `eval --json` result (:func:`vpltool.io.check_eval_metrics`) when it
    claims to be one; None for another tool's file there (choose-pseudo's choice, diagnose's rows)."""
    data = io.read_json(path)
    return io.check_eval_metrics(path, data) if io.is_eval_metrics(data) else None


def _same_but_prototypes(a: dict[str, Any], b: dict[str, Any]) -> bool:
    strip = lambda p: {k: v for k, v in p.items() if k not in PROTOTYPE_PARAMS}  # noqa: E731
    return io.jsonable(strip(a)) == io.jsonable(strip(b))


def _pairs(columns: list[Column]) -> list[tuple[str, str]]:
    """(text, vision) CAM columns with the same settings but their prototypes: the change VPL made per image."""
    cams = [c for c in columns if c.kind == "cam"]
    pairs = []
    for vision in (c for c in cams if c.source == "vision"):
        match = [t for t in cams if t.source == "text" and _same_but_prototypes(t.record["params"],
                                                                               vision.record["params"])]
        if match:
            pairs.append((match[0].name, vision.name))
    return pairs


def _order(col: Column) -> tuple:
    return (COLUMN_STAGES.index(col.stage), {"text": 0, "vision": 1}.get(col.source or "", 2), col.name)


def _split_names(keys: list[tuple[str, str | None]]) -> list[str]:
    """A tab name per split, each unique: the split's name; with the dataset's folder name where two datasets
    share a split name, and its whole path where they also share a folder name (``/a/world`` and ``/b/world``)."""
    short = [s or "all" for _, s in keys]
    names = [f"{n} ({Path(r).name})" if short.count(n) > 1 else n for n, (r, _) in zip(short, keys)]
    return [f"{s or 'all'} ({r})" if names.count(n) > 1 else n for n, (r, s) in zip(names, keys)]


def _one_class_list(root: Path, splits: list[tuple[Path, Split]]) -> None:
    """The page shows one class list: the datasets of a run's folders must share it (one line naming two folders,
    one per dataset, otherwise). ``splits``: (a folder made from it, split)."""
    (a, first), rest = splits[0], splits[1:]
    for b, split in rest:
        one, other = first.dataset.classes, split.dataset.classes
        if one != other:
            k = next((i for i, (x, y) in enumerate(zip(one, other)) if x != y), None)
            how = f"class {k} is {one[k]!r} in one and {other[k]!r} in the other" if k is not None else \
                f"{len(one) - 1} and {len(other) - 1} classes"
            raise VplError(f"{root}: its folders come from two datasets with other classes ({a.name}: {first.key[0]}; "
                           f"{b.name}: {split.key[0]}; {how}); a report shows one class list: move the folders of "
                           "one dataset into a run folder of their own")


def _same_items(key: tuple[str, str | None], found: list[tuple[Path, dict[str, Any]]], dataset: Dataset) -> None:
    """The folders of one split were made from the images and classes the dataset holds now (their recorded count
    and class digest), else the report would count, show and name other images than they hold: one line naming
    the folder."""
    now = dataset.identity()
    where = f"split {key[1]!r} of {key[0]}" if key[1] else key[0]
    for folder, record in found:
        ident = record["inputs"]["dataset"]
        n, classes = ident.get("n_items"), ident.get("classes_sha")
        if (n is not None and n != now["n_items"]) or (classes is not None and classes != now["classes_sha"]):
            what = f"{n} images" if n != now["n_items"] else "a class list"
            holds = f"{now['n_items']} images" if n != now["n_items"] else "other classes"
            raise VplError(f"{io.stage_record_path(folder)}: made from {what} of {where}, which now holds {holds}: "
                           "the dataset changed since; re-run the stages on it (or report the run made before)")


def discover(run: str | Path) -> Run:
    """Read a run folder's records: its splits, their columns and datasets, the metrics files, the inputs.

    Raises:
        VplError: ``run`` is not a folder, holds no stage folder (not a run), or names a dataset that is gone.
    """
    root = Path(run)
    if not root.is_dir():
        raise VplError(f"{root}: not a folder; pass a run folder (the folders of one pipeline run, e.g. runs/demo)")
    own = io.stage_record_path(root)
    single = own.is_file() and io.read_record(own).get("stage") in COLUMN_STAGES
    # one stage folder given alone (a `segment` of plain photos): the report of that folder, one column
    records = [(root, io.read_record(own))] if single else \
        [(f, r) for f, r in _records(root) if r.get("stage") in DATA_STAGES]
    if not records:
        inner = [f for f in sorted(p for p in root.iterdir() if p.is_dir())
                 if any(r.get("stage") in DATA_STAGES for _, r in _records(f))]
        if inner:  # `benchmark -o` of several methods: a folder of runs, one a method
            names = ", ".join(f.name for f in inner[:3]) + (", ..." if len(inner) > 3 else "")
            raise VplError(f"{root}: holds {len(inner)} run folder{'s' if len(inner) != 1 else ''} ({names}), not "
                           f"stage folders; pass one of them, e.g. {inner[0]}")
        raise VplError(f"{root}: not a vpltool run (no extract, cam, crf, predict or segment folder with a "
                       f"{io.STAGE_RECORD} inside); pass a run folder (the folders of one pipeline run, e.g. "
                       "runs/demo) or one segment folder")
    metrics = root / METRICS
    by_key: dict[tuple[str, str | None], list[tuple[Path, dict[str, Any]]]] = {}
    for folder, record in records:
        ident = (record.get("inputs") or {}).get("dataset")
        if not isinstance(ident, dict) or not ident.get("root"):
            raise VplError(f"{io.stage_record_path(folder)}: names no dataset; re-run the stage that wrote {folder}")
        by_key.setdefault((str(ident["root"]), ident.get("split")), []).append((folder, record))
    splits = []
    for (key, found), name in zip(by_key.items(), _split_names(list(by_key))):
        dataset = open_recorded(found[0][0])  # one line when the world is gone
        _same_items(key, found, dataset)
        for folder, _ in found[1:]:  # every folder shown, each made from the dataset as it is now
            check_recorded(folder, dataset)
        if is_plain(dataset):  # photos name no classes: the masks' own (the first `segment` folder's)
            dataset = replace(dataset, classes=tuple(found[0][1].get("classes") or dataset.classes))
        split = Split(key, name, dataset)
        split.columns = sorted((_column(f, r, metrics) for f, r in found if r["stage"] in COLUMN_STAGES), key=_order)
        for col in split.columns:
            if col.stage in ("predict", "segment"):
                col.lut = class_name_map(col.record.get("classes"), dataset.classes, col.folder)
        split.pairs = _pairs(split.columns)
        splits.append(split)
    _one_class_list(root, [(found[0][0], split) for found, split in zip(by_key.values(), splits)])
    _link(root, splits)
    splits.sort(key=lambda s: (-len(s.dataset.items), s.name))  # the largest first: the training split
    files = {p.stem: p for p in sorted(metrics.glob("*.json"))} if metrics.is_dir() else {}
    inputs = [f for f, _ in records] + [c.debug for s in splits for c in s.columns if c.debug] + \
        ([metrics] if metrics.is_dir() else [])
    summary = root / "metrics.json"
    return Run(root, splits, inputs, summary if summary.is_file() else None, files, single)


def _link(root: Path, splits: list[Split]) -> None:
    """Debug folders to their `cam` columns (same recorded parameters); `crf` columns to the `cam` column whose
    record they hashed."""
    cams = [c for s in splits for c in s.columns if c.kind == "cam"]
    for folder in _debug_folders(root):
        params = _debug_params(folder)
        for col in cams:
            if col.debug is None and params is not None and params == io.jsonable(col.record.get("params", {})):
                col.debug = folder
                col.boxes = "saved" if col.boxes != "off" else "off"
                break
    hashes = {io.sha256_file(io.stage_record_path(c.folder)): c.name for c in cams}
    for col in (c for s in splits for c in s.columns if c.stage in PSEUDO_STAGES):
        col.made_from = hashes.get((col.record.get("inputs") or {}).get("cams"))


def _made(row: Any, splits: list[str]) -> str:
    """A stage row's protocol and post-processing in a few words (:mod:`vpltool.io.protocols`), from the first of
    its splits' scores that records them."""
    from ...io.protocols import from_row

    scores = [row.get(s) for s in splits] if isinstance(row, dict) else []
    made = next((m for m in (from_row(s.get("protocol")) for s in scores if isinstance(s, dict)) if m), None)
    return "" if made is None else f"{made.protocol} · {made.brief()}"


def stage_table(run: Run) -> dict[str, Any]:
    """The figures of the report's first table, as `demo-report` and `eval` wrote them (never recomputed):
    ``stages`` (rows of ``metrics.json``: stage, `cam --refine`, mIoU per split), ``splits`` (those splits),
    ``refines`` (whether rows name their refinement), ``chance``,
    ``other_layers``, and ``per_class`` (one row per ``metrics/<name>.json``: its mIoU and per-class IoU, and its
    per-class precision and recall when the JSON holds them)."""
    out: dict[str, Any] = {"stages": [], "chance": {}, "other_layers": [], "per_class": [], "classes": [],
                           "splits": [], "refines": False}
    if run.metrics_file is not None:
        summary = io.read_run_metrics(run.metrics_file)
        out.update({k: summary.get(k) or out[k] for k in ("stages", "chance", "other_layers")})
    # the splits the stage rows have figures for, in their order (demo-report: train, val)
    # (a row's "refine" names the CAM refinement it was made with: a column of its own, not a split)
    out["splits"] = list(dict.fromkeys(k for row in out["stages"] if isinstance(row, dict) for k in row
                                       if k not in ("stage", "refine")))
    out["refines"] = any(isinstance(row, dict) and row.get("refine") for row in out["stages"])
    # each row's protocol and post-processing, as its eval recorded them ("" for an older eval's)
    out["protocols"] = [_made(row, out["splits"]) for row in out["stages"]]
    for name, path in run.metrics_files.items():
        result = _eval_metrics(path)
        if result is None:
            continue  # e.g. diagnose_val.json: its rows are in metrics.json's other_layers
        # precision and recall per class (eval since issue 37), shown under the IoU where the JSON has them
        extra = {k: {c: v for c, v in result[k].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                 if isinstance(result.get(k), dict) else None for k in ("precision", "recall")}
        out["per_class"].append({"name": name, "miou": result.get("miou"), "n_images": result.get("n_images"),
                                 "bg_exponent": result.get("bg_exponent"), "iou": result["iou"], **extra})
        out["classes"] = out["classes"] or list(result["iou"])
    return out


__all__ = ["Column", "Run", "Split", "discover", "stage_table"]
