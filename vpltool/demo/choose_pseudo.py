"""`vpltool choose-pseudo`: which CAM refinement's CRF pseudo masks train the decoder, chosen on the training split.

A Make run folder (``RUN``) holds the pipeline's own CAMs and masks at its top level (``RUN/cams_vision``,
``RUN/pseudo``, made with the Makefile's ``REFINE``) and, for every other refinement R it compares (``REFINES``), the
same folders under ``RUN/R/`` with their `eval` JSONs under ``RUN/metrics/R/``. Which refinement made a folder is
read from the records (``pseudo/_stage.json`` names the digest of the CAM folder's record, ``cams_vision/_stage.json``
its ``--refine``), never assumed. The choice reads each candidate's scores on the training split
(``RUN/metrics[/R]/pseudo.json``, written by `eval` on the split the Makefile scores train-side stages on) after
checking that each score is of that folder as it is now (eval records the folder, the digest of its record, that of
its masks' content and the split). Held-out figures are never read, so the choice cannot be tuned on them.

The rule (issue 37, ``--by decoder``): the masks' own mIoU ranked SGC's precise but thin masks first, and the
decoder trained on them learned to under-segment (5.5 points lower on the demo's val). So each candidate's masks
train a decoder (``RUN[/R]/decoder``), which predicts the training split (``RUN[/R]/pred_train``, eval JSON
``RUN/metrics[/R]/pred_train.json``), and the decoder with the highest train mIoU wins: over three worlds and two
decoder seeds it picked the best refinement on val in 5 of 6 cases (docs/pipeline.md,
studies/study_pseudo_choice.py). ``--by masks`` keeps the masks' own mIoU (no decoders needed).

A candidate ``R+K`` is refinement R's masks of the pseudo-mask rule K (:data:`vpltool.config.SAM_PSEUDO_RULES`:
``sam``, SAM's automatic masks assigned to the classes of R's vision CAMs; ``sam3``, SAM 3 prompted with the labels),
made by `sam-pseudo`: the same folders one level down, ``RUN[/R]/K/pseudo``, ``RUN[/R]/K/decoder``,
``RUN[/R]/K/pred_train`` and their scores under ``RUN/metrics[/R]/K/``, chosen by the same rule.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any, Sequence

from .. import io
from ..config import PSEUDO_RULES, PSEUDO_STAGES, REFINES, SAM_PSEUDO_RULES, pseudo_rule
from ..errors import VplError

CHOICE_FILE = "pseudo_choice.json"  # under RUN/metrics; demo-report reads it
# what a candidate is scored by (--by): its decoder's prediction on the training split, or its masks themselves
RULES = {"decoder": "the highest mIoU on the training split of the decoder trained on each candidate's masks",
         "masks": "the highest pseudo-mask mIoU on the training split"}
BY = tuple(RULES)


def split_candidate(name: str) -> tuple[str, str | None]:
    """``R`` -> (R, None): refinement R's CRF masks; ``R+K`` -> (R, K) for a rule K of
    :data:`~vpltool.config.SAM_PSEUDO_RULES` (``R+sam``, ``R+sam3``): its sam-pseudo masks of that rule, which is
    also the folder they live in."""
    for rule in SAM_PSEUDO_RULES:
        if name.endswith("+" + rule):
            return name[: -len(rule) - 1], rule
    return name, None


def candidate_name(refine: str, rule: str) -> str:
    """The candidate of refinement ``refine``'s masks of ``rule`` (:data:`~vpltool.config.PSEUDO_RULES`): ``R`` for
    crf's, ``R+K`` for sam-pseudo's rule K."""
    return f"{refine}+{rule}" if rule in SAM_PSEUDO_RULES else refine


def refinement_dir(run: Path, refine: str, run_refine: str | None) -> Path:
    """The folder holding candidate ``refine``'s mask folder and decoder: ``run`` for the run's own refinement, else
    ``run/R``; ``R+K``'s is that folder's ``K/``."""
    base, kind = split_candidate(refine)
    folder = run if base == run_refine else run / base
    return folder / kind if kind else folder


def metrics_dir(run: Path, refine: str, run_refine: str | None) -> Path:
    base, kind = split_candidate(refine)
    folder = run / "metrics" if base == run_refine else run / "metrics" / base
    return folder / kind if kind else folder


def make_fix(target: str, run: Path, refines: Sequence[str]) -> str:
    """The Make command that re-makes ``target`` for this run and these candidates, as a fix to quote: the
    Makefile's own RUN and REFINES are the demo's, so a bare ``make pseudo`` would make another run's folders
    (``R+K`` candidates: REFINES R and PSEUDO with K)."""
    parts = [split_candidate(r) for r in refines]
    bases = list(dict.fromkeys(b for b, _ in parts))
    kinds = list(dict.fromkeys(kind or "crf" for _, kind in parts))
    pseudo = f" PSEUDO={shlex.quote(' '.join(kinds))}" if kinds != ["crf"] else ""
    return f"`make {target} RUN={shlex.quote(str(run))} REFINES={shlex.quote(' '.join(bases))}{pseudo}`"


def recorded_refinement(pseudo: Path) -> str:
    """The candidate a mask folder is, read from the records: the ``--refine`` of the CAMs a `crf` folder was made
    from (its record names the digest of their record, which must be that of the ``cams_vision`` folder beside it,
    the Makefile's layout), or ``R+K`` for a `sam-pseudo` folder of rule K (its record's, :func:`vpltool.config.
    pseudo_rule`) at ``.../K/pseudo`` made from the ``cams_vision`` two levels up; one line otherwise."""
    record = io.read_record(io.stage_record_path(pseudo))
    if record["stage"] not in PSEUDO_STAGES:
        raise VplError(f"{pseudo}: holds `{record['stage']}` output, expected `crf` or `sam-pseudo` pseudo masks; a "
                       "pseudo-mask candidate is the crf (or sam-pseudo) folder of its refinement's vision CAMs")
    command = record["stage"]
    rule = pseudo_rule(command, record.get("params", {}))
    # RUN[/R]/pseudo's CAMs are beside it, RUN[/R]/K/pseudo's (rule K of sam-pseudo) a level up
    cams = (pseudo.parent.parent if rule in SAM_PSEUDO_RULES else pseudo.parent) / "cams_vision"
    cams_record = io.stage_record_path(cams)
    if not cams_record.is_file() or io.sha256_file(cams_record) != record["inputs"].get("cams"):
        raise VplError(f"{pseudo}: its record names CAMs other than {cams} (or none), so its refinement is unknown; "
                       f"re-run `vpltool {command} {cams} -o {pseudo} --overwrite`")
    refine = io.read_record(cams_record)["params"].get("refine")
    if refine not in REFINES:
        raise VplError(f"{cams_record}: records no known --refine ({refine!r}); re-run its `vpltool cam`")
    return candidate_name(refine, rule)


def _own_refinement(run: Path, run_refine: str | None) -> str | None:
    """The refinement of ``RUN/pseudo`` read from the records (None when there is no such folder); a ``--refine``
    given by hand must agree with them."""
    own = recorded_refinement(run / "pseudo") if io.stage_record_path(run / "pseudo").is_file() else None
    if run_refine is not None and own is not None and run_refine != own:
        raise VplError(f"{run / 'pseudo'}: made from CAMs of --refine {own} (its cams_vision record), not "
                       f"{run_refine}; drop --refine: the records say which")
    return own if own is not None else run_refine


def _number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number in [0, 1] (an mIoU), else None (a string, a bool, 7.5, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def checked_score(scored: Path, folder: Path, split: str | None, remake: str) -> dict[str, Any]:
    """The eval JSON ``scored`` of the mask folder ``folder``, after checking that it is an eval result of that
    folder as it is now, on ``split`` (None: the split the masks were made from); one line naming the fix
    otherwise (``remake``: the Make command that re-makes it, :func:`make_fix`)."""
    # --overwrite: the file may be no score at all (edited, a list), which eval replaces only when told to
    fix = f"re-run `vpltool eval {folder} --json {scored} --overwrite` (or {remake})"
    if not scored.is_file():
        raise VplError(f"{scored}: no train-split score of {folder}; {fix}")
    result = io.read_json(scored)
    if not isinstance(result, dict):
        raise VplError(f"{scored}: a JSON {type(result).__name__}, not an eval result; {fix}")
    miou = _number(result.get("miou"))
    if miou is None:
        what = "no 'miou'" if "miou" not in result else f"'miou' is {result['miou']!r}, not a number in [0, 1]"
        raise VplError(f"{scored}: {what}; {fix}")
    if "record" not in result or "folder" not in result:
        raise VplError(f"{scored}: does not say which folder it scored (an eval older than this check, or not an "
                       f"eval result); {fix}")
    if result["folder"] != str(folder.resolve()):
        raise VplError(f"{scored}: scores {result['folder']}, not {folder.resolve()}; {fix}")
    if result["record"] != io.sha256_file(io.stage_record_path(folder)):
        raise VplError(f"{scored}: stale: {folder} was re-made after it was scored; {fix}")
    if "masks" not in result:
        raise VplError(f"{scored}: does not say which masks it scored (an eval older than this check); {fix}")
    if result["masks"] != io.masks_digest(folder):  # a mask edited in place: the record and chunks say nothing
        raise VplError(f"{scored}: stale: {folder}'s masks changed after it was scored; {fix}")
    check_score_consistent(scored, result, fix)
    made_on = io.read_record(io.stage_record_path(folder))["inputs"].get("dataset", {}).get("split")
    wanted = split or made_on
    if result.get("split") != wanted:
        raise VplError(f"{scored}: scored on split {result.get('split')!r}, not {wanted!r} (the choice is made on the "
                       f"training split); {fix.replace(' --json', f' --split {wanted} --json')}")
    return {**result, "miou": miou}


DATASET_DIGESTS = ("content", "files")  # how records tell datasets apart (vpltool.data.Dataset.inputs), best first


def dataset_digest(folder: Path) -> dict[str, Any]:
    """The dataset digests ``folder``'s record keeps (:data:`DATASET_DIGESTS`, and the class list's)."""
    inputs = io.dataset_inputs(io.read_record(io.stage_record_path(folder)))
    found = {k: inputs[k] for k in DATASET_DIGESTS if k in inputs}
    ident = inputs.get("dataset")
    if isinstance(ident, dict) and "classes_sha" in ident:
        found["classes"] = ident["classes_sha"]
    return found


def check_same_dataset(folder: Path, reference: Path, what: str, remake: str) -> None:
    """One line unless ``folder`` was made from the dataset ``reference`` was (every digest both records keep
    agrees): scores of folders made from two datasets are never compared (``remake``: :func:`make_fix`)."""
    mine, theirs = dataset_digest(folder), dataset_digest(reference)
    differ = [k for k in (*DATASET_DIGESTS, "classes") if k in mine and k in theirs and mine[k] != theirs[k]]
    if differ:
        raise VplError(f"{folder}: made from another dataset than {reference} (their records' {differ[0]} digests "
                       f"differ), so {what} are not comparable; re-make it from the run's dataset ({remake})")


def check_score_consistent(scored: Path, result: dict[str, Any], fix: str) -> None:
    """The ``miou`` of an eval JSON must be the mean of its per-class IoUs (``iou``; None = class absent) and that
    of its ``confusion`` matrix, each when present: a file edited by hand or damaged is never trusted."""
    ious = result.get("iou", {})
    if not isinstance(ious, dict):
        raise VplError(f"{scored}: its 'iou' is not a table of per-class IoUs; {fix}")
    values = [v for v in ious.values() if v is not None]
    if any(_number(v) is None for v in values):
        raise VplError(f"{scored}: its per-class 'iou' values are not numbers in [0, 1]; {fix}")
    mean = sum(values) / len(values) if values else float(result["miou"])
    if abs(mean - float(result["miou"])) > 1e-6:
        raise VplError(f"{scored}: its 'miou' {float(result['miou']):.4f} is not the mean of its per-class IoUs "
                       f"({mean:.4f}): the file was edited or damaged; {fix}")
    if "confusion" in result:  # the counts themselves: IoUs edited together with the mIoU still contradict them
        import numpy as np

        from ..ops.kernels import scores

        try:
            again = scores(np.asarray(result["confusion"], dtype=np.int64))["miou"]
        except (ValueError, TypeError, OverflowError):
            raise VplError(f"{scored}: its 'confusion' is not a confusion matrix; {fix}") from None
        if again is None or abs(again - float(result["miou"])) > 1e-6:
            raise VplError(f"{scored}: its 'miou' {float(result['miou']):.4f} is not that of its confusion matrix "
                           f"({'none' if again is None else f'{again:.4f}'}): the file was edited or damaged; {fix}")


def checked_decoder_score(base: Path, scored: Path, pseudo: Path, split: str, remake: str) -> float:
    """The training-split mIoU of ``base/pred_train``, the prediction of the decoder ``base/decoder`` trained on the
    masks ``pseudo`` (each link checked through the records: the prediction's decoder digest, the decoder's masks
    digest), from its eval JSON ``scored`` (``remake``: the Make command that re-makes them, :func:`make_fix`)."""
    pred, decoder = base / "pred_train", base / "decoder" / "decoder.safetensors"
    if not decoder.is_file() or not io.stage_record_path(pred).is_file():
        raise VplError(f"{decoder if not decoder.is_file() else pred}: not found: the decoder trained on {pseudo} and "
                       f"its prediction on the training split are what the rule scores; make them ({remake}), or "
                       "choose --by masks")
    result = checked_score(scored, pred, split, remake)
    check_same_dataset(pred, pseudo, "its decoder's score and the masks it was trained on", remake)
    if io.read_record(io.stage_record_path(pred))["inputs"].get("decoder") != io.sha256_file(decoder):
        raise VplError(f"{pred}: not predicted by {decoder} as it is now (re-trained since?); re-run its predict "
                       f"and eval ({remake})")
    trained_on = _json_field(io.read_header(decoder).get("vpltool.inputs"), "pseudo", "sha256")
    if trained_on != io.sha256_file(io.stage_record_path(pseudo)):
        raise VplError(f"{decoder}: not trained on {pseudo} as it is now; re-train it ({remake})")
    return result["miou"]


def _json_field(text: str | None, *keys: str) -> Any:
    """``text`` (JSON) indexed by ``keys``; None when it is not JSON or lacks one of them."""
    import json

    try:
        value = json.loads(text or "")
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value
    except json.JSONDecodeError:
        return None


def choose_pseudo(run: str | Path, among: Sequence[str], run_refine: str | None = None, pick: str = "auto",
                  split: str | None = None, by: str = "decoder", overwrite: bool = False) -> dict[str, Any]:
    """Choose the pseudo masks for the decoder among the refinements ``among``; writes ``RUN/metrics/CHOICE_FILE``
    (``overwrite``: even over a file of another kind, :func:`vpltool.io.check_outputs`).

    ``run_refine``: the refinement of RUN's own folders, checked against the records (None: read from them).
    ``pick`` is ``auto`` (the rule) or one name of ``among`` (kept whatever the scores). ``split``: the split the
    scores must be on (None: the one the first candidate's masks were made from). ``by``: ``decoder`` (the rule:
    each candidate's decoder, ``RUN[/R]/decoder``, scored by its prediction on that split, ``RUN[/R]/pred_train``,
    eval JSON ``RUN/metrics[/R]/pred_train.json``) or ``masks`` (the masks' own mIoU). Returns ``{"chosen",
    "folder", "decoder", "by", "rule", "split", "candidates": [{"refine", "folder", "train_miou",
    "decoder_train_miou" (by decoder)}]}``, mIoU in [0, 1].
    """
    run = Path(run)
    among = list(dict.fromkeys(among))
    for name in [*among, *([run_refine] if run_refine is not None else [])]:
        if split_candidate(name)[0] not in REFINES or (name == run_refine and split_candidate(name)[1]):
            raise VplError(f"choose-pseudo: unknown refinement {name!r}; use one of {', '.join(REFINES)} (a "
                           f"candidate may add {' or '.join('+' + k for k in SAM_PSEUDO_RULES)}: that "
                           "refinement's sam-pseudo masks of that rule)")
    if not among:
        raise VplError("choose-pseudo: name at least one refinement to choose among (e.g. none caa caa+sgc)")
    if pick != "auto" and pick not in among:
        raise VplError(f"choose-pseudo: --pick {pick!r} is not among {', '.join(among)}; use auto or one of them")
    if by not in RULES:
        raise VplError(f"choose-pseudo: --by {by!r}; use one of {', '.join(BY)}")
    if not run.is_dir():
        raise VplError(f"{run}: run folder not found; run {make_fix('pseudo', run, among)} first")
    # the output first (the house rule): a user's file there is refused before any score is read
    io.check_outputs("choose-pseudo", {"RUN/metrics/" + CHOICE_FILE: (run / "metrics" / CHOICE_FILE, "file",
                                                                      "pseudo-choice")}, overwrite=overwrite)
    own = _own_refinement(run, run_refine)
    remake_masks, remake_decoders = make_fix("pseudo", run, among), make_fix("decoders", run, among)
    candidates = []
    for name in among:
        folder = refinement_dir(run, name, own) / "pseudo"
        if not io.stage_record_path(folder).is_file():
            raise VplError(f"{folder}: no finished pseudo masks there (folder or its _stage.json missing); make "
                           f"{name}'s masks and score them on train ({remake_masks})")
        stage, wanted = io.record_stage(folder), PSEUDO_RULES[split_candidate(name)[1] or "crf"]
        if stage in PSEUDO_STAGES and stage != wanted:
            raise VplError(f"{folder}: holds `{stage}` output where {name}'s `{wanted}` masks belong; re-make "
                           f"{name}'s masks there ({remake_masks})")
        made_by = recorded_refinement(folder)
        if made_by != name:
            (base, rule), want = split_candidate(made_by), split_candidate(name)[0]
            how = (f"from CAMs of --refine {made_by} (its cams_vision record)" if base != want else
                   f"by `sam-pseudo --masks {rule}` (its record)")
            raise VplError(f"{folder}: made {how}, not {name}; re-make {name}'s masks there ({remake_masks})")
        scored = checked_score(metrics_dir(run, name, own) / "pseudo.json", folder, split, remake_masks)
        split = scored["split"]  # every candidate on the first one's split
        if candidates:  # every candidate from the first one's dataset
            check_same_dataset(folder, Path(candidates[0]["folder"]), "the candidates' scores", remake_masks)
        candidates.append({"refine": name, "folder": str(folder), "train_miou": scored["miou"]})
    for c in candidates if by == "decoder" else ():  # every candidate's masks checked first, then the decoders
        c["decoder_train_miou"] = checked_decoder_score(refinement_dir(run, c["refine"], own), metrics_dir(
            run, c["refine"], own) / "pred_train.json", Path(c["folder"]), split, remake_decoders)
    key = "decoder_train_miou" if by == "decoder" else "train_miou"
    if pick == "auto":
        best = max(candidates, key=lambda c: c[key])  # max keeps the first of equals
        rule = RULES[by]
    else:
        best = next(c for c in candidates if c["refine"] == pick)
        rule = f"set by hand (--pick {pick}), not chosen by score"
    decoder = Path(best["folder"]).parent / "decoder" / "decoder.safetensors"
    result = {"chosen": best["refine"], "folder": best["folder"], "decoder": str(decoder) if by == "decoder" else None,
              "by": by, "rule": rule, "split": split, "candidates": candidates}
    io.write_json(run / "metrics" / CHOICE_FILE, result, kind="pseudo-choice")
    return result


def describe(choice: dict[str, Any]) -> str:
    """One line: the choice, its rule and every candidate's training-split mIoU % (masks, and decoder when scored)."""
    def score(c: dict[str, Any]) -> str:
        masks = f"masks {100 * c['train_miou']:.1f}"
        return (f"{c['refine']} decoder {100 * c['decoder_train_miou']:.1f} / {masks}" if "decoder_train_miou" in c
                else f"{c['refine']} {masks}")

    scores = ", ".join(score(c) for c in choice["candidates"])
    return f"pseudo masks for the decoder: {choice['chosen']} ({choice['rule']}; train mIoU %: {scores})"
