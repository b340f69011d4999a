"""`vpltool choose-pseudo`: which CAM refinement's CRF pseudo masks train the decoder, chosen on the training split.

A Make run folder (``RUN``) holds the pipeline's own CAMs and masks at its top level (``RUN/cams_vision``,
``RUN/pseudo``, made with the Makefile's ``REFINE``) and, for every other refinement R it compares (``REFINES``), the
same folders under ``RUN/R/`` with their `eval` JSONs under ``RUN/metrics/R/``. The choice reads each candidate's
pseudo-mask mIoU on the training split (``RUN/metrics[/R]/pseudo.json``, written by `eval` on the split the
Makefile scores train-side stages on) and keeps the highest (ties: the first listed). Held-out figures are never
read, so the choice cannot be tuned on them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from .. import io
from ..config import REFINES
from ..errors import VplError

CHOICE_FILE = "pseudo_choice.json"  # under RUN/metrics; demo-report reads it


def refinement_dir(run: Path, refine: str, run_refine: str) -> Path:
    """The folder holding ``refine``'s CAM and mask folders: ``run`` for the run's own refinement, else ``run/R``."""
    return run if refine == run_refine else run / refine


def metrics_dir(run: Path, refine: str, run_refine: str) -> Path:
    return run / "metrics" if refine == run_refine else run / "metrics" / refine


def choose_pseudo(run: str | Path, among: Sequence[str], run_refine: str, pick: str = "auto",
                  overwrite: bool = False) -> dict[str, Any]:
    """Choose the pseudo masks for the decoder among the refinements ``among``; writes ``RUN/metrics/CHOICE_FILE``
    (``overwrite``: even over a file of another kind, :func:`vpltool.io.check_outputs`).

    ``pick`` is ``auto`` (the highest training-split mIoU) or one name of ``among`` (kept whatever the scores).
    Returns ``{"chosen", "folder", "rule", "candidates": [{"refine", "folder", "train_miou"}]}``, mIoU in [0, 1].
    """
    run = Path(run)
    among = list(dict.fromkeys(among))
    for name in [*among, run_refine]:
        if name not in REFINES:
            raise VplError(f"choose-pseudo: unknown refinement {name!r}; use one of {', '.join(REFINES)}")
    if not among:
        raise VplError("choose-pseudo: name at least one refinement to choose among (e.g. none caa caa+sgc)")
    if pick != "auto" and pick not in among:
        raise VplError(f"choose-pseudo: --pick {pick!r} is not among {', '.join(among)}; use auto or one of them")
    candidates = []
    for name in among:
        scored = metrics_dir(run, name, run_refine) / "pseudo.json"
        if not scored.is_file():
            raise VplError(f"{scored}: no train-split score of {name}'s pseudo masks; run `make pseudo` for it "
                           f"(or `vpltool eval {refinement_dir(run, name, run_refine) / 'pseudo'} --json {scored}`)")
        miou = float(io.read_json(scored)["miou"])
        if not math.isfinite(miou):
            raise VplError(f"{scored}: mIoU {miou} is not a number; re-run its eval")
        candidates.append({"refine": name, "folder": str(refinement_dir(run, name, run_refine) / "pseudo"),
                           "train_miou": miou})
    if pick == "auto":
        best = max(candidates, key=lambda c: c["train_miou"])  # max keeps the first of equals
        rule = "the highest pseudo-mask mIoU on the training split"
    else:
        best = next(c for c in candidates if c["refine"] == pick)
        rule = f"set by hand (--pick {pick}), not chosen by score"
    result = {"chosen": best["refine"], "folder": best["folder"], "rule": rule, "candidates": candidates}
    io.check_outputs("choose-pseudo", {"RUN/metrics/" + CHOICE_FILE: (run / "metrics" / CHOICE_FILE, "file",
                                                                      "pseudo-choice")}, overwrite=overwrite)
    io.write_json(run / "metrics" / CHOICE_FILE, result, kind="pseudo-choice")
    return result


def describe(choice: dict[str, Any]) -> str:
    """One line: the choice, its rule and every candidate's training-split mIoU %."""
    scores = ", ".join(f"{c['refine']} {100 * c['train_miou']:.1f}" for c in choice["candidates"])
    return f"pseudo masks for the decoder: {choice['chosen']} ({choice['rule']}; train mIoU %: {scores})"
