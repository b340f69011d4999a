"""What made a score: its protocol and the post-processing behind it, read from the scored folder's own records.

The field's leaderboards mix protocols (zero-shot; weak, image-level labels; labelled supports; an unlabelled image
bank; adaptation on the target images) and post-processing (a CRF, several scales, a flip, a sliding window, a
background rule), and a number without them cannot be compared. :func:`of_folder` reads both from the ``_stage.json``
of the folder `eval` scores (and, for a decoder's predictions, from the decoder file's own record of what it was
trained on), so that `eval`, `benchmark` and `demo-report` print them beside every figure and keep them in their
JSON (:meth:`Protocol.row`).

vpltool's own stages give two protocols: ``zero-shot`` (`segment`, `predict --classes --dense`) and ``weak labels``
(`cam`, `crf`, `sam-pseudo` and a decoder's `predict`, all made from the dataset's image-level labels). The other
three are for a method that says so: a ``--dense`` plugin whose hooks' ``record()`` holds ``"protocol": NAME``
is read as that protocol (one that records none reads zero-shot, as every `segment` does).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

ZERO_SHOT, WEAK_LABELS = "zero-shot", "weak labels"
SUPPORT_ASSISTED, UNLABELLED_BANK, TARGET_ADAPTED = "support-assisted", "unlabelled bank", "target-adapted"
UNRECORDED = "unrecorded"  # a bare folder of masks (eval --data): nothing says what made it
PROTOCOLS = (ZERO_SHOT, WEAK_LABELS, SUPPORT_ASSISTED, UNLABELLED_BANK, TARGET_ADAPTED, UNRECORDED)


@dataclass(frozen=True)
class Protocol:
    """What a score is of, beyond its images.

    Attributes:
        protocol: one of :data:`PROTOCOLS`.
        labels: which labels made it (weak labels: the dataset, split and label file; a decoder's: the pseudo masks
            it learned from), None for zero-shot.
        crf: a dense CRF ran (None: not recorded).
        scales: the test scales (``(1.0,)``: one); None: not recorded.
        flip: a flipped view was averaged in; None: not recorded.
        window: the sliding window, ``"crop/stride"`` or ``"whole image"``; None: not recorded.
        background: the rule that made background pixels.
        refinement: any other step (PAMR, CLIP-ES's CAA); None: none.
        presets: where the settings came from: a stage's defaults (and the options given in their place), a method's
            own (its reference's VOC21 config) or a benchmark preset (its reference's config file).
        stage: the stage that wrote the folder.
    """

    protocol: str
    labels: str | None = None
    crf: bool | None = None
    scales: tuple[float, ...] | None = None
    flip: bool | None = None
    window: str | None = None
    background: str | None = None
    refinement: str | None = None
    presets: str | None = None
    stage: str | None = None

    def row(self) -> dict[str, Any]:
        """JSON-ready: every field, ``scales`` as a list, and ``post_processing`` (:meth:`post`) for a table."""
        out = asdict(self)
        out["scales"] = None if self.scales is None else list(self.scales)
        return {**out, "post_processing": self.post()}

    def label(self) -> str:
        """The protocol, with its labels: ``weak labels (image-level labels of split 'train' of world)``."""
        return f"{self.protocol} ({self.labels})" if self.labels else self.protocol

    def brief(self) -> str:
        """The post-processing in a table's column: ``CRF off · scale 1 · no flip · whole image``."""
        parts = [] if self.crf is None else [f"CRF {'on' if self.crf else 'off'}"]
        parts += [] if self.scales is None else [f"scale{'s' if len(self.scales) > 1 else ''} "
                                                 f"{','.join(f'{s:g}' for s in self.scales)}"]
        parts += [] if self.flip is None else ["flip" if self.flip else "no flip"]
        parts += [self.window] if self.window else []
        parts += [self.refinement] if self.refinement else []
        return " · ".join(parts) or "not recorded"

    def post(self) -> str:
        """The post-processing in a few words: ``CRF off, scale 1, no flip, window whole image, ...`` (where the
        settings came from is :attr:`presets`)."""
        parts = [] if self.crf is None else [f"CRF {'on' if self.crf else 'off'}"]
        if self.scales is not None:
            parts.append(f"scale{'s' if len(self.scales) > 1 else ''} {', '.join(f'{s:g}' for s in self.scales)}")
        if self.flip is not None:
            parts.append("flip" if self.flip else "no flip")
        parts += [f"window {self.window}"] if self.window else []
        parts += [f"background {self.background}"] if self.background else []
        parts += [self.refinement] if self.refinement else []
        return ", ".join(parts) or "not recorded"


def from_row(row: Mapping[str, Any] | None) -> Protocol | None:
    """A :meth:`Protocol.row` read back (an eval JSON's ``protocol``); None for a result of an older vpltool."""
    if not isinstance(row, Mapping) or row.get("protocol") not in PROTOCOLS:
        return None
    known = {f.name for f in fields(Protocol)}
    values = {k: v for k, v in row.items() if k in known}
    if values.get("scales") is not None:
        values["scales"] = tuple(values["scales"])
    return Protocol(**values)


def of_folder(folder: str | os.PathLike) -> Protocol:
    """The protocol and post-processing of the masks or CAMs in ``folder``, read from its ``_stage.json`` (a bare
    folder of masks: :data:`UNRECORDED`)."""
    from .records import read_record, stage_record_path

    path = stage_record_path(folder)
    if not path.is_file():
        return Protocol(UNRECORDED)
    record = read_record(path)
    stage, params = record.get("stage"), record.get("params") or {}
    read = _READERS.get(stage)
    try:
        found = read(params, record.get("inputs") or {}) if read else Protocol(UNRECORDED)
    except (AttributeError, TypeError, ValueError, KeyError):  # a hand-edited field: the score stands, unlabelled
        found = Protocol(UNRECORDED)
    return Protocol(**{**asdict(found), "stage": stage})


def of_scores(folder: str | os.PathLike, bg_exponent: float | None = None) -> dict[str, Any]:
    """What `eval` records of a score (:meth:`Protocol.row` of :func:`of_folder`), with the background exponent
    the scoring chose for CAMs (``bg_exponent``)."""
    from dataclasses import replace

    made = of_folder(folder)
    if bg_exponent is not None:
        made = replace(made, background=f"(1 - max CAM)^a, a={float(bg_exponent):g} chosen by eval")
    return made.row()


def protocol_lines(row: Mapping[str, Any] | None) -> list[str]:
    """The protocol and post-processing of a score as `eval` prints them under its figure (none for a result of
    an older vpltool, which recorded neither)."""
    made = from_row(row)
    if made is None:
        return []
    return [f"protocol: {made.label()}", f"post-processing: {made.post()}", f"settings: {made.presets or '?'}"]


def _labels(dataset: Mapping[str, Any] | None) -> str:
    """Which image-level labels a dataset identity (a record's ``inputs.dataset``) read."""
    if not isinstance(dataset, Mapping):
        return "image-level labels"
    where = Path(str(dataset.get("root", "?"))).name
    split = f" of split {dataset['split']!r}" if dataset.get("split") else ""
    file = dataset.get("labels_file")
    given = f", from {Path(file['path']).name}" if isinstance(file, Mapping) and file.get("path") else ""
    return f"image-level labels{split} of {where}{given}"


def _given(cfg_class: type, params: Mapping[str, Any], keys: tuple[str, ...], defaults: str) -> str:
    """``defaults`` and the options of ``keys`` recorded in ``params`` at another value than ``cfg_class``'s."""
    default = {f.name: f.default for f in fields(cfg_class)}
    other = [f"{k}={_shown(params[k])}" for k in keys if k in params and _norm(params[k]) != _norm(default.get(k))]
    return f"{defaults}{', given ' + ', '.join(other) if other else ''}"


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


def _shown(value: Any) -> str:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(
        value, (list, tuple)) else f"{value:g}" if isinstance(value, float) else str(value)


def _window(crop: Any, stride: Any) -> str:
    return f"{crop}/{stride}" if crop else "whole image"


def _segment(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> Protocol:
    """`segment` (and `benchmark`'s folders): a dense method or a text-supervised checkpoint, no labels."""
    if "settings" not in params:  # a text-supervised family's checkpoint (segment --model NAME:FILE)
        return Protocol(ZERO_SHOT, crf=False, scales=(1.0,), flip=False,
                        window=_window(params.get("slide_crop"), params.get("slide_stride")),
                        background=f"score below {params.get('bg_thresh', 0):g}",
                        presets=f"{params.get('method', 'the family')}'s zero-shot defaults (its configuration)")
    return _dense(params, params["settings"], params.get("dense", "naclip"))


def _dense(params: Mapping[str, Any], settings: Mapping[str, Any], dense: str) -> Protocol:
    """A ``--dense`` method's folder: its settings as recorded, compared with its spec row's."""
    from ..config.dense import DENSE_SPECS

    spec = DENSE_SPECS.get(dense)
    own = asdict(spec.settings) if spec is not None else {}
    other = [f"{k}={_shown(v)}" for k, v in settings.items() if k in own and _norm(v) != _norm(own[k])]
    presets = f"--dense {dense}'s own (its reference's VOC21 config)" + (f", given {', '.join(other)}"
                                                                         if other else "")
    if spec is None:  # a plugin's method not installed here: its settings are what the record holds
        presets = f"--dense {dense}'s, as recorded (the method is not installed here)"
    words = params.get("background_words") or []
    background = f"probability below {settings.get('prob_threshold', 0):g}" + (
        f" or a background word ({len(words)})" if words else "")
    pamr = settings.get("pamr_steps") or 0
    protocol = params.get("protocol") if params.get("protocol") in PROTOCOLS else ZERO_SHOT  # a plugin's own
    return Protocol(protocol, crf=False, scales=(1.0,), flip=False,
                    window=_window(settings.get("slide_crop"), settings.get("slide_stride")), background=background,
                    refinement=f"PAMR {pamr}" if pamr else None, presets=presets)


def _predict(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> Protocol:
    """`predict`: a decoder's masks (weak labels: those its pseudo masks came from), or ``--classes --dense``."""
    from ..config.decoder import PredictConfig

    if params.get("dense", "none") != "none" and "settings" in params:  # the decoder's CLIP alone: no labels
        return _dense(params, params["settings"], params["dense"])
    decoder = params.get("decoder") or {}
    trained = _decoder_inputs(decoder.get("path"))
    labels = _labels(trained.get("dataset")) if trained else "the decoder's training labels (its file is gone)"
    pseudo = (trained.get("pseudo") or {}).get("path") if trained else None
    if pseudo:
        labels += f", through the pseudo masks of {_made_by(pseudo)}"
    if params.get("classes"):
        labels += "; scored on names it was not trained on (--classes)"
    keys = ("scales", "flip", "crf", "long_side", "resize")
    return Protocol(WEAK_LABELS, labels, crf=bool(params.get("crf")), scales=tuple(params.get("scales") or (1.0,)),
                    flip=bool(params.get("flip")), window="whole image",
                    background="the decoder's background class",
                    presets=_given(PredictConfig, params, keys, "predict's defaults (WeCLIP's test script)"))


def _decoder_inputs(path: str | None) -> dict[str, Any]:
    """What a decoder file says it was trained on (its ``vpltool.inputs``); {} when it is gone or unreadable."""
    import json

    if not path or not Path(path).is_file():
        return {}
    try:
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("vpltool.inputs", "{}"))
    except (OSError, ValueError):  # damaged: the label stays general, never a traceback in eval
        return {}


def _made_by(folder: str) -> str:
    """A pseudo-mask folder as ``crf`` / ``sam-pseudo`` (its record's stage) and its name."""
    from .records import read_record, stage_record_path

    path = stage_record_path(folder)
    stage = read_record(path).get("stage") if path.is_file() else None
    return f"{stage or 'a folder'} ({Path(folder).name})"


def _cam(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> Protocol:
    """`cam`: one map per labelled class of each image (its image-level labels)."""
    from ..config.stages import CamConfig

    source = params.get("source")
    refine = params.get("refine")
    keys = ("refine", "box_threshold", "affinity", "layer")  # its temperature is recorded resolved: not compared
    return Protocol(WEAK_LABELS, _labels(inputs.get("dataset")), crf=False, scales=(1.0,), flip=False,
                    background="(1 - max CAM)^a, a chosen by eval (--bg-exponents)",
                    refinement=f"cam --refine {refine}" if refine and refine != "none" else None,
                    presets=_given(CamConfig, params, keys, "cam's defaults (CLIP-ES)") if source not in (
                        "dense",) else f"cam --dense {params.get('dense')}")


def _crf(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> Protocol:
    """`crf`: CAMs (of image-level labels) to masks, through a dense CRF unless ``--no-crf``."""
    from ..config.stages import CrfConfig

    keys = ("iterations", "confidence", "bg_exponent", "no_crf", "parity")
    return Protocol(WEAK_LABELS, _labels(inputs.get("dataset")), crf=not params.get("no_crf", False),
                    scales=(1.0,), flip=False,
                    background=f"(1 - max CAM)^{params.get('bg_exponent', 1):g}, confidence "
                               f"{params.get('confidence', 0):g}",
                    presets=_given(CrfConfig, params, keys, "crf's defaults (CLIP-ES)"))


def _sam_pseudo(params: Mapping[str, Any], inputs: Mapping[str, Any]) -> Protocol:
    """`sam-pseudo`: a CAM's masks merged with SAM's (of the same image-level labels)."""
    from ..config.stages import SamPseudoConfig

    keys = ("masks", "merge", "start", "bg_exponent")
    return Protocol(WEAK_LABELS, _labels(inputs.get("dataset")), crf=params.get("start") == "crf", scales=(1.0,),
                    flip=False, background=f"(1 - max CAM)^{params.get('bg_exponent', 1):g}",
                    refinement=_sam_refinement(params),
                    presets=_given(SamPseudoConfig, params, keys, "sam-pseudo's defaults (SAM_WSSS)"))


def _sam_refinement(params: Mapping[str, Any]) -> str:
    """What a `sam-pseudo` record's rule did: SAM 3's prompted instances and their gate, or the masks' merge."""
    if params.get("masks") == "sam3":  # no merge: the prompted rule records its threshold and gate instead
        return (f"sam3 instances of the labels above {params.get('sam3_threshold', 0.5):g}, CAM gate "
                f"{params.get('sam3_gate', 0.5):g}")
    return f"{params.get('masks', 'sam')} masks merged by {params.get('merge')}"


_READERS = {"segment": _segment, "predict": _predict, "cam": _cam, "crf": _crf, "sam-pseudo": _sam_pseudo}


__all__ = ["PROTOCOLS", "Protocol", "ZERO_SHOT", "WEAK_LABELS", "SUPPORT_ASSISTED", "UNLABELLED_BANK",
           "TARGET_ADAPTED", "UNRECORDED", "from_row", "of_folder", "of_scores", "protocol_lines"]
