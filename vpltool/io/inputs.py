"""What a run depends on, identified by content: how a record names its inputs, and which one changed since.

Every file a run reads (a dataset's images, labels and masks; shards and caption files; ``--init``, ``--nouns``,
prototypes; the weights of every model it loads) is recorded as ``{"path", "sha256", ...}``
(:func:`vpltool.io.file_identity`, :func:`weights_identity`), a collection of files as one digest over theirs. A
resume, the next shard, the next stage and ``predict`` compare records with :func:`vpltool.io.by_content` (the paths
dropped: the same bytes by another path are the same input; other bytes under the same name are not) and refuse, in
one line naming the input that changed (:func:`changed_inputs`), to go on from a record of other inputs: a run is
never finished on data it did not start with.

Cost: each file is read once per run (its sha256; a dataset's images through the per-process cache of
:func:`vpltool.data.common.content_sha`); a file of 1 MiB or more (model weights) once at all, its digest kept by
:mod:`vpltool.io.digests` under its size, modification *and change* times, inode and device. Name, size and
modification time alone would not do: a copy made with ``cp -p`` or ``rsync -t`` keeps all three over other bytes,
which is the change this module exists to notice; no copy keeps the change time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import VplError
from .files import by_content, file_identity, jsonable

# values of a weights option that name no file (timm's hub weights, random weights)
NOT_FILES = ("hub", "none", "")
# parameters a record derives from the lines of a file another parameter names (recorded by content): where that
# file's bytes changed, their change is the file's, said with it, not another setting
DERIVED = {"template_list": ("templates",), "background_words": ("background", "class_file"),
           "class_queries": ("class_file",)}


def weights_identity(value: str | os.PathLike | None, **extra: Any) -> Any:
    """A weights option as a record keeps it: ``{"path", "sha256"}`` of the file it names (its path absolute, so
    that a later stage finds it from any folder), else the value itself (``hub``, ``none``, None)."""
    if value is None or str(value) in NOT_FILES or not Path(value).expanduser().is_file():
        return None if value is None else str(value)
    return file_identity(Path(value).expanduser().resolve(), **extra)


def files_digest(parts: Iterable[Any]) -> str:
    """``sha256:<hex>`` over ``parts`` (JSON values: ids, captions, each file's digest), in order."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode() + b"\n")
    return "sha256:" + h.hexdigest()


def _short(sha: Any) -> str:
    return str(sha).removeprefix("sha256:")[:12] + "…" if isinstance(sha, str) else json.dumps(sha)


def shown_path(path: Any) -> str:
    """A recorded path as a message shows it: relative to the current folder when it lies inside it (records keep
    absolute paths, so that a later stage finds them from anywhere; the user typed a short one), else as recorded."""
    text = str(path)
    if not os.path.isabs(text):
        return text
    try:
        rel = os.path.relpath(text)
    except ValueError:  # another drive (Windows)
        return text
    return text if rel == ".." or rel.startswith(".." + os.sep) else rel


def _member(folder: Any, entry: Any) -> Any:
    """A collection's file entry as a path: an identity's ``path``, or a ``[name, digest]`` pair's name in
    ``folder``."""
    if isinstance(entry, dict):
        return entry.get("path")
    if isinstance(entry, list) and entry and isinstance(entry[0], str):
        return os.path.join(str(folder), entry[0]) if folder else entry[0]
    return entry


_LAYOUTS = {"hf": "Hugging Face's layout (config.json + model.safetensors)", "meta": "Meta's sam3.pt"}


def _describe(option: str, before: Any, now: Any) -> str:
    """One input's change in words: the file, its digest there and here; for a collection (``files``), the first
    file whose content differs; for a CLIP (``weights``), its weights. Paths as :func:`shown_path` shows them."""
    if isinstance(now, dict) and isinstance(before, dict):
        old_files, new_files = before.get("files"), now.get("files")
        where = shown_path(now.get("path", ""))
        if before.get("layout", now.get("layout")) != now.get("layout"):  # SAM 3's two layouts: other files
            return (f"{option} {where}: weights in {_LAYOUTS.get(now['layout'], now['layout'])} where the record has "
                    f"{_LAYOUTS.get(before['layout'], before['layout'])}: other files, the same model only if both "
                    "hold the same weights, which their bytes cannot show")
        if isinstance(old_files, list) and isinstance(new_files, list):
            if len(old_files) != len(new_files):
                return f"{option} {where}: {len(new_files)} files where the record has {len(old_files)}"
            for old, new in zip(old_files, new_files):
                if by_content(old) != by_content(new):
                    name, was = _member(now.get("path"), new), _member(before.get("path"), old)
                    change = "changed" if name == was else f"differs from the record's {shown_path(was)}"
                    return (f"{option}: {shown_path(name)} {change} (sha256 {_short(_sha(old))} there, "
                            f"{_short(_sha(new))} here)")
        if "count" in now and before.get("count") != now.get("count"):
            return f"{option} {where}: {now['count']} items where the record has {before.get('count')}"
        if "sha256" in now:
            return (f"{option} {where}: its content changed (sha256 {_short(before.get('sha256'))} "
                    f"there, {_short(now['sha256'])} here)")
        if isinstance(now.get("weights"), str) and "weights" in before:
            name = now.get("model") if now.get("pretrained", "none") == "none" else now.get("pretrained")
            return (f"{option} {shown_path(name)}: its weights' content changed (sha256 "
                    f"{_short(before['weights'])} there, {_short(now['weights'])} here)")
    if isinstance(now, dict) and "sha256" in now:
        return f"{option} {shown_path(now.get('path'))}: other content than the record's {_shown(before)}"
    if _same_but_bytes(before, now):  # a model recorded inside a setting (a region generator's SAM)
        return (f"{option}: the content of the model it reads changed (sha256 {_short(_digest_in(before))} there, "
                f"{_short(_digest_in(now))} here)")
    if isinstance(now, str) and isinstance(before, str) and now.startswith("sha256:"):
        return f"{option} changed (sha256 {_short(before)} there, {_short(now)} here)"
    return f"{option}: {_shown(before)} there, {_shown(now)} here"


def _sha(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2:  # a [name, digest] pair
        return value[1]
    return value.get("sha256") if isinstance(value, dict) else value


def _shown(value: Any) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"(sha256 {_short(value['sha256'])})"
    return "none" if value is None else json.dumps(value)[:60]


def changed_inputs(before: Mapping[str, Any] | None, now: Mapping[str, Any],
                   options: Mapping[str, str] = {}) -> list[str]:
    """Each input of ``now`` whose content differs from ``before``'s (a record's ``inputs``), in words naming it:
    ``options`` maps a key to the option that gave it (``init`` -> ``--init``). Paths alone never differ
    (:func:`vpltool.io.by_content`); a key only one side has is a change (an input added or dropped)."""
    old, new = jsonable(dict(before or {})), jsonable(dict(now))
    said = []
    for key in dict.fromkeys([*old, *new]):
        if by_content(_placed(key, old)) != by_content(_placed(key, new)):
            said.append(_describe(options.get(key, key), old.get(key), new.get(key)))
    return said


def changed_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any], ignore: Sequence[str] = ()) -> list[str]:
    """Keys of ``new`` whose values differ in ``old``, as they read back from JSON, local bytes compared by content
    (:func:`vpltool.io.files.by_content`). ``ignore``: keys never compared. A key only ``old`` has is one the new
    run does not record: an option without effect in its combination (or a record of an older vpltool)."""
    settings, contents = param_changes(old, new, ignore)
    return sorted([*settings, *(_label(k, v) for k, v in contents)])


def param_changes(old: Mapping[str, Any] | None, new: Mapping[str, Any], ignore: Sequence[str] = ()
                  ) -> tuple[list[str], list[tuple[str, str]]]:
    """``(settings, contents)``: the keys of ``new`` whose values differ in ``old`` (see :func:`changed_keys`), split
    into settings (their keys) and local bytes whose content changed under the same description (a file, a folder,
    a CLIP's weights: ``(key, the change in words naming the file)``, as :func:`changed_inputs` says it). A content
    change is not another parameter: the run's options are the same, its inputs are not."""
    old, new = jsonable(dict(old or {})), jsonable(dict(new))
    settings, contents = [], []
    for key in sorted(new):
        was, now = old.get(key), _as_recorded(old.get(key), new[key])
        if key in ignore or by_content(was) == by_content(now):
            continue
        if _same_but_bytes(was, now):
            contents.append((key, _describe(key, was, now)))
        else:
            settings.append(key)
    changed = {key for key, _ in contents}  # what a changed file's lines became follows the file: no setting
    return [k for k in settings if not changed & set(DERIVED.get(k, ()))], contents


# what an identity of local bytes holds of their content (a model's ``layout``: the form its files take, part of
# them; ``weights_sha256``: a region generator's model, recorded inside its settings)
_DIGESTS = ("sha256", "weights", "files", "layout", "weights_sha256")


def _same_but_bytes(old: Any, new: Any) -> bool:
    """Whether two recorded identities of local bytes (a dict holding a digest, at its top or nested: the SAM 3
    inside a ``region_source``) differ only in their bytes: the same kind of input, other content."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return False
    if _digest_in(old) is None or _digest_in(new) is None:
        return False
    return _stripped(old) == _stripped(new)


def _stripped(value: Any) -> Any:
    """``value`` less every digest of its content (:data:`_DIGESTS`), at any depth."""
    if isinstance(value, dict):
        return {k: _stripped(v) for k, v in by_content(value).items() if k not in _DIGESTS}
    return [_stripped(v) for v in value] if isinstance(value, list) else value


def _digest_in(value: Any) -> str | None:
    """The first digest of content ``value`` holds (its ``sha256``, a CLIP's ``weights``, a nested model's), or
    None."""
    if not isinstance(value, dict):
        return None
    for key in ("sha256", "weights", "weights_sha256"):
        if isinstance(value.get(key), str):
            return value[key]
    return next((d for v in value.values() if (d := _digest_in(v)) is not None), None)


def _as_recorded(old: Any, new: Any) -> Any:
    """``new`` as ``old`` could record it, for a record of an older vpltool: a model identity without a
    ``"weights"`` digest (:mod:`vpltool.models.backbones.local_weights`) is compared by name, as it was made; a file or
    folder recorded by its path alone is compared by that path (the same file now is the same input)."""
    if isinstance(old, dict) and isinstance(new, dict) and "weights" in new and "weights" not in old \
            and "model" in new:
        return {k: v for k, v in new.items() if k != "weights"}
    if isinstance(old, str) and isinstance(new, dict) and isinstance(new.get("path"), str) and "sha256" in new \
            and os.path.realpath(os.path.expanduser(old)) == os.path.realpath(new["path"]):
        return old
    return new


def _label(key: str, change: str) -> str:
    """``key``, or ``key (its weights' content)`` for a CLIP whose weights alone changed."""
    return f"{key} (its weights' content)" if "its weights' content changed" in change else key


def placed(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """A record's ``inputs`` as they are compared: each value as :func:`_placed` gives it (a dataset whose every
    image is recorded by content, less its root)."""
    return {key: _placed(key, inputs) for key in inputs}


def _placed(key: str, inputs: Mapping[str, Any]) -> Any:
    """``inputs[key]``, less the dataset's ``root`` where ``inputs`` also records every image's bytes and labels
    (``content``): then the data is compared by content, and a dataset moved with the same bytes is the same."""
    value = inputs.get(key)
    if key == "dataset" and "content" in inputs and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "root"}
    return value


def not_a_file(path: str | os.PathLike, what: str, fix: str) -> VplError:
    """The one line for ``path`` where a ``what`` file belongs (``"DINO weights"``) that is no regular file: a folder
    says so and names the weights files in it (a folder was "file not found"), anything else is not found."""
    path = Path(path)
    if path.is_dir():
        try:
            inside = sorted(p.name for p in path.iterdir()
                            if p.suffix in (".safetensors", ".pth", ".pt", ".bin", ".tar") and p.is_file())
        except OSError:
            inside = []
        held = f" (it holds {', '.join(inside[:3])}{', ...' if len(inside) > 3 else ''})" if inside else ""
        return VplError(f"{path}: a folder, not a {what} file{held}; give the file itself: {fix}")
    if path.exists():
        return VplError(f"{path}: not a regular file (a device, a pipe or a socket), where a {what} file belongs; "
                        f"{fix}")
    return VplError(f"{path}: {what} file not found; {fix}")


__all__ = ["DERIVED", "NOT_FILES", "changed_inputs", "changed_keys", "files_digest", "not_a_file", "param_changes",
           "placed", "shown_path", "weights_identity"]
