"""A CLIP whose weights come from local bytes is identified by a digest of those bytes, not by its path.

``--model local-dir:DIR``, a registered alias (the demo's ``vpltool-toy``: a folder shipped with vpltool, which a
later release may retrain under the same name) and ``--pretrained FILE`` load bytes that can change under the same
name. :meth:`vpltool.models.ModelSpec.identity` records their digest (:func:`weights_digest`) as ``"weights"``, so
that every comparison of identities (a resume and the next shard through the stage records, a later stage through
the recorded identity, ``cam``'s check that prototypes and features share a CLIP) compares the bytes. A record read
back (:meth:`~vpltool.models.ModelSpec.from_identity`) is checked against the bytes there now
(:func:`check_recorded`): other bytes under the recorded name are refused in one line before the model loads.

A model named by an open_clip tag (``openai``) or random weights (``none``) has no local bytes of its own: the tag
names published weights and stays its identity. A record made before digests were kept (no ``"weights"``) names
the model by path and is compared by path, as it was then.

Each file's digest is taken once and kept by its ``stat`` (:func:`vpltool.io.digests.sha256_file`), so a 600 MB
ViT-B/16 file is read once, not by every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import VplError

ModelSpec = Any  # vpltool.models.backbones.loading.ModelSpec, which imports this module (no circle through a type hint)

# the files of a local open_clip folder that make the model: its config, vpltool.json, the weights open_clip picks
# from (*.safetensors, *.bin, *.pth) and a Hugging Face tokenizer's files; a README or a log beside them is not
FOLDER_SUFFIXES = (".json", ".safetensors", ".bin", ".pth", ".pt", ".txt", ".model")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def weight_files(spec: ModelSpec) -> list[Path]:
    """The local files ``spec``'s model is built from (sorted), or [] when it has none (a tag, random weights)."""
    folder = spec.folder
    if folder is not None:
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.suffix in FOLDER_SUFFIXES and not p.name.startswith(".")
                      and p.is_file())
    pretrained = spec.pretrained
    if pretrained in (None, "", "none"):
        return []
    path = Path(pretrained).expanduser()
    return [path] if path.is_file() else []


def weights_digest(spec: ModelSpec) -> str | None:
    """``sha256:<hex>`` of ``spec``'s local bytes: the file's own digest for ``--pretrained FILE``, for a folder
    one digest over each file's name and digest; None when the model has no local bytes."""
    from ... import io

    files = weight_files(spec)
    if not files:
        return None
    if spec.folder is None:
        return io.sha256_file(files[0])
    return io.files_digest([[p.name, io.sha256_file(p)] for p in files])


def check_recorded(spec: ModelSpec, where: str) -> None:
    """Refuse, in one line, to rebuild a recorded CLIP (``spec.weights``: the digest a record holds) from other
    bytes than those recorded. ``where``: the file or folder whose record named it."""
    if not spec.weights:
        return
    now = weights_digest(spec)
    if now == spec.weights:
        return
    name = spec.model if spec.folder is not None else f"{spec.model} --pretrained {spec.pretrained}"
    short = lambda d: str(d).removeprefix("sha256:")[:12] + "…"  # noqa: E731
    if now is None:
        raise VplError(f"{where}: made with the CLIP {name}, whose weights are not there any more; restore them "
                       f"(sha256 {short(spec.weights)}) or re-make {where} with the weights you have")
    raise VplError(f"{where}: made with the CLIP {name}, whose weights changed since (sha256 {short(spec.weights)} "
                   f"there, {short(now)} here); restore those weights, or re-make {where} with these "
                   "(--overwrite)")


def recorded_at(spec: ModelSpec, at: ModelSpec, where: str) -> ModelSpec:
    """The recorded CLIP ``spec`` (:meth:`~vpltool.models.ModelSpec.from_identity`) rebuilt from ``at``, the model
    a later stage is given for it (``--model local-dir:NEW`` after the folder was renamed or copied, ``--pretrained
    FILE`` moved): ``at`` when it holds the recorded bytes (:func:`vpltool.io.same_model`, by content: the same
    digest and, for a file, the same architecture), else one line naming ``at``. A record without a digest (a tag,
    random weights, an older vpltool's) takes only the same name."""
    from ... import io

    name = lambda s: s.model if s.folder is not None else f"{s.model} --pretrained {s.pretrained}"  # noqa: E731
    made = {"model": spec.model, "pretrained": spec.pretrained, **({"weights": spec.weights} if spec.weights else {})}
    given = at.identity()
    if spec.weights:  # by content: both digests (a folder without weights is no match, whatever its name)
        same = isinstance(given.get("weights"), str) and io.same_model(made, given)
    else:
        same = io.same_model(made, {k: v for k, v in given.items() if k != "weights"})
    if same:
        return type(spec)(model=at.model, pretrained=at.pretrained, config_dir=at.config_dir or spec.config_dir,
                          weights=spec.weights)
    short = lambda d: str(d).removeprefix("sha256:")[:12] + "…"  # noqa: E731
    if spec.weights:
        here = f"{short(given['weights'])} here" if given.get("weights") else "no weights here"
        what = (f"other weights than the CLIP {where} was made with ({name(spec)}, sha256 {short(spec.weights)} "
                f"there, {here})")
    else:
        what = f"not the CLIP {where} was made with ({name(spec)})"
    raise VplError(f"{name(at)}: {what}; give the model folder or file that holds those weights, or re-make {where} "
                   "with this one")


__all__ = ["FOLDER_SUFFIXES", "weight_files", "weights_digest", "check_recorded", "recorded_at"]
