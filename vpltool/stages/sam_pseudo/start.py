"""sam-pseudo's start label from a folder (``--start FOLDER``): the labels `crf --start-out` wrote beside its own
masks from the same CRF (`crf --confidence 0`'s masks, or `crf --no-crf`'s argmax), so that a pipeline runs the CRF
once, in its `crf` stage, not again in sam-pseudo's loaders.

The folder is checked by its record before a model loads (:func:`check_start_folder`): a finished `crf` folder of
these very CAMs (its record names the digest of the `cam` folder's), at the settings sam-pseudo's own start uses,
in this run's dtype and mode, with a label of each image's size. Its masks are then the same bytes
``--start crf`` (or ``argmax``) computes (:func:`vpltool.ops.kernels.crf_scores` makes both from one Q).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ... import io
from ...config import SAM_STARTS, CrfConfig, SamPseudoConfig, to_params
from ...errors import ContractError, VplError


def start_folder(cfg: SamPseudoConfig) -> Path | None:
    """``--start`` when it names a folder of start labels, None for ``crf`` and ``argmax`` (computed here)."""
    return None if cfg.start in SAM_STARTS else Path(cfg.start)


def expected_params(cfg: SamPseudoConfig, no_crf: bool) -> dict[str, Any]:
    """The `crf` parameters of the start ``--start crf`` (``no_crf``: ``argmax``) computes: the CRF's defaults at
    confidence 0, sam-pseudo's ``--bg-exponent``, pydensecrf (an argmax runs no CRF: its backend is not compared)."""
    params = to_params(CrfConfig(confidence=0.0, bg_exponent=cfg.bg_exponent, no_crf=no_crf, backend="pydensecrf"))
    if no_crf:
        params.pop("backend", None)
    return params


def _option(key: str, value: Any) -> str:
    """A recorded parameter as its `crf` option (``--no-crf`` a flag)."""
    flag = f"--{key.replace('_', '-')}"
    if isinstance(value, bool):
        return flag if value else f"no {flag}"
    return f"{flag} {value}"


def check_start_folder(folder: Path, cams_dir: Path, cfg: SamPseudoConfig, ids: Sequence[str],
                       sizes: Mapping[str, tuple[int, int]], numerics: Mapping[str, Any]) -> tuple[str, str]:
    """Refuse, in one line naming the file and the fix, a start folder sam-pseudo may not start from.

    Args:
        folder: ``--start``'s folder. cams_dir: the run's `cam` folder. ids, sizes: the images this run may label
            (every one needs its start label) and their ``(H, W)``. numerics: this run's (dtype and mode).

    Returns:
        The start it holds (``crf`` or ``argmax``) and the sha256 of its record (the run's input).
    """
    exponent = "" if cfg.bg_exponent == CrfConfig.bg_exponent else f" --bg-exponent {cfg.bg_exponent:g}"
    fix = (f"write it with `vpltool crf {cams_dir} -o MASKS --start-out {folder}{exponent}` (the CRF's other "
           "settings at their defaults), or pass --start crf")
    if not folder.is_dir():
        raise VplError(f"--start {folder}: no such folder; pass {' or '.join(SAM_STARTS)}, or a folder of start labels "
                       f"that `crf --start-out` wrote: {fix}")
    record = io.read_stage_record(folder, "crf")  # one line for an unfinished run or another stage's folder
    path = io.stage_record_path(folder)
    if record.get("inputs", {}).get("cams") != io.sha256_file(io.stage_record_path(cams_dir)):
        raise VplError(f"{path}: start labels of other CAMs than {cams_dir} (its record names another `cam` run); "
                       f"{fix}")
    params = record.get("params", {})
    kind = "argmax" if params.get("no_crf") else "crf"
    want = expected_params(cfg, kind == "argmax")
    for key in sorted((set(want) | set(params)) - ({"backend"} if kind == "argmax" else set())):
        if params.get(key) != want.get(key):
            raise VplError(f"{path}: labels of `vpltool crf {_option(key, params.get(key))}`, while sam-pseudo "
                           f"starts from `vpltool crf {_option(key, want.get(key))}`'s; {fix}")
    io.check_numerics(numerics, *io.folder_made(folder, record, "crf", items=False))
    for item_id in ids:
        mask = io.mask_path(folder, item_id)
        if not mask.is_file():
            raise VplError(f"{mask}: no start label for image {item_id} in --start {folder}; {fix}")
        if (size := io.image_size(mask)) != tuple(sizes[item_id]):
            raise ContractError(f"{mask}: a {size[0]}x{size[1]} start label for a {sizes[item_id][0]}x"
                                f"{sizes[item_id][1]} image; {fix}")
    return kind, io.sha256_file(path)


def read_start(folder: Path, item_id: str, size: tuple[int, int]) -> np.ndarray:
    """One image's start label ``[H, W]`` uint8 from ``folder`` (checked: its id, its run, its size), writable (a
    PIL-decoded array is not, which torch.from_numpy warns of)."""
    mask = io.read_mask(io.mask_path(folder, item_id))
    if mask.shape != tuple(size):
        raise ContractError(f"{io.mask_path(folder, item_id)}: a {mask.shape[0]}x{mask.shape[1]} start label for a "
                            f"{size[0]}x{size[1]} image; re-run `vpltool crf --start-out {folder}`")
    return np.require(mask, requirements="W")


__all__ = ["start_folder", "expected_params", "check_start_folder", "read_start"]
