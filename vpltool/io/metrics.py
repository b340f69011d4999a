"""The metrics JSON files later commands read back: `eval --json` results and a run's ``metrics.json``
(`demo-report`). Each reader checks the shape a reader relies on, so that a file of valid JSON but the wrong shape
(``{"miou": "abc"}``, ``"chance": [1, 2]``) is one line naming the file, the field and the fix, never a traceback
after minutes of work. Extra fields are allowed (a newer vpltool may add some).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ContractError
from .files import read_json

EVAL_FIELDS = ("miou", "iou")  # a JSON object holding either is an eval result and is read as one


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:40] + "…"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_score(value: Any) -> bool:
    """An IoU or mIoU as eval writes it: a fraction in [0, 1], or null (a class absent from the ground truth)."""
    return value is None or (_is_number(value) and 0.0 <= value <= 1.0)


def _require(ok: bool, path: Path, field: str, value: Any, what: str, fix: str) -> None:
    if not ok:
        raise ContractError(f"{path}: {field!r} is {_shown(value)}, not {what}; {fix}")


def is_eval_metrics(data: Any) -> bool:
    """Whether a JSON value claims to be an `eval --json` result (an object with ``miou`` or ``iou``)."""
    return isinstance(data, dict) and any(k in data for k in EVAL_FIELDS)


def check_eval_metrics(path: str | os.PathLike, data: Any) -> dict[str, Any]:
    """``data`` (read from ``path``) if it has an `eval --json` result's shape: ``miou`` a fraction in [0, 1] or
    null, ``iou`` (and ``precision``, ``recall``) an object {class name: fraction or null}, ``pixel_accuracy`` and
    ``mean_accuracy`` fractions or null, ``n_images`` an integer >= 0, ``bg_exponent`` a finite
    number or null (each when present, ``miou`` and ``iou`` always); ContractError otherwise."""
    path = Path(path)
    fix = f"re-make it with `vpltool eval FOLDER --json {path}`"
    if not isinstance(data, dict):
        raise ContractError(f"{path}: holds a JSON {type(data).__name__}, not an eval result (an object); {fix}")
    for key in EVAL_FIELDS:
        _require(key in data, path, key, None, "present", fix)
    _require(_is_score(data["miou"]), path, "miou", data["miou"], "a number in [0, 1] or null", fix)
    iou = data["iou"]
    _require(isinstance(iou, dict), path, "iou", iou, "an object {class name: IoU}", fix)
    for name, value in iou.items():
        _require(_is_score(value), path, f"iou.{name}", value, "a number in [0, 1] or null", fix)
    for key in ("precision", "recall"):  # per-class fractions too (a report prints them as percentages)
        if key in data:
            table = data[key]
            _require(isinstance(table, dict), path, key, table, "an object {class name: fraction}", fix)
            for name, value in table.items():
                _require(_is_score(value), path, f"{key}.{name}", value, "a number in [0, 1] or null", fix)
    for key in ("pixel_accuracy", "mean_accuracy"):
        if key in data:
            _require(_is_score(data[key]), path, key, data[key], "a number in [0, 1] or null", fix)
    if "n_images" in data:
        n = data["n_images"]
        _require(isinstance(n, int) and not isinstance(n, bool) and n >= 0, path, "n_images", n,
                 "an integer >= 0", fix)
    if data.get("bg_exponent") is not None:
        _require(_is_number(data["bg_exponent"]), path, "bg_exponent", data["bg_exponent"], "a number", fix)
    return data


def read_eval_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """An `eval --json` file, checked (:func:`check_eval_metrics`)."""
    return check_eval_metrics(path, read_json(path))


def read_run_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """A run's ``metrics.json`` (`demo-report`), checked where the report reads it: ``stages`` a list of objects
    (``stage`` a string, ``refine`` a string or null, every other key a split -> null or ``{"miou": fraction or
    null}``), ``chance`` an object split -> {baseline: fraction or null}, ``other_layers`` a list of objects
    (``stage`` a string, ``val`` a fraction or null). Each is optional; ContractError otherwise."""
    path = Path(path)
    fix = "re-make it with `vpltool demo-report RUN` (or remove it)"
    data = read_json(path)
    if not isinstance(data, dict):
        raise ContractError(f"{path}: holds a JSON {type(data).__name__}, not demo-report's metrics (an object); "
                            f"{fix}")
    stages = data.get("stages") or []
    _require(isinstance(stages, list), path, "stages", stages, "a list of rows", fix)
    for i, row in enumerate(stages):
        _require(isinstance(row, dict) and isinstance(row.get("stage"), str), path, f"stages[{i}]", row,
                 "an object naming its stage", fix)
        _require(row.get("refine") is None or isinstance(row["refine"], str), path, f"stages[{i}].refine",
                 row.get("refine"), "a string or null", fix)
        for split, value in row.items():
            if split in ("stage", "refine") or value is None:
                continue
            _require(isinstance(value, dict) and _is_score(value.get("miou")), path, f"stages[{i}].{split}", value,
                     'null or {"miou": a number in [0, 1] or null}', fix)
    chance = data.get("chance") or {}
    _require(isinstance(chance, dict), path, "chance", chance, "an object {split: baselines}", fix)
    for split, baselines in chance.items():
        _require(isinstance(baselines, dict), path, f"chance.{split}", baselines, "an object {baseline: mIoU}", fix)
        for name in ("all background", "random CAMs"):
            _require(_is_score(baselines.get(name)), path, f"chance.{split}.{name}", baselines.get(name),
                     "a number in [0, 1] or null", fix)
    layers = data.get("other_layers") or []
    _require(isinstance(layers, list), path, "other_layers", layers, "a list of rows", fix)
    for i, row in enumerate(layers):
        _require(isinstance(row, dict) and isinstance(row.get("stage"), str) and _is_score(row.get("val")), path,
                 f"other_layers[{i}]", row, 'an object {"stage": name, "val": a number in [0, 1] or null}', fix)
    return data


__all__ = ["check_eval_metrics", "is_eval_metrics", "read_eval_metrics", "read_run_metrics"]
