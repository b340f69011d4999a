"""The output guard: every path a run writes is checked alike, once, before any model loads.

How a stage (or a new command) uses it: name every path the run writes and every path it reads, then call
:func:`check_outputs` before loading anything heavy::

    io.check_outputs("report", {"--out": (html, "file"), "--tensorboard": (events_dir, "side")},
                     inputs={"the run folder": run, "--prototypes": prototypes},
                     protected=dataset.folders())

* ``outputs``: option -> ``(path or None, kind)``. Kinds: ``stage`` (a folder of per-item outputs with vpltool
  records, written through :class:`vpltool.io.StageFolder`), ``written`` (a file the run writes, or deletes under
  ``--overwrite``, inside its own stage folder: a trainer's model and log; compared with the run's inputs only, so
  that ``--init RUN/pgseg.safetensors -o RUN --overwrite`` is refused instead of deleting its own input), ``side``
  (a folder of extra files: overlays, debug maps, TensorBoard events; :func:`vpltool.io.write_side_record` marks
  it when the run makes it), ``file`` (one
  file, replaced atomically through :func:`vpltool.io.atomic_path`), ``log`` (one file, appended to). A ``file``
  output names the kind of file it writes, ``(path, "file", "scores")`` (:mod:`vpltool.io.marks`: the file records
  it), and the run passes ``overwrite``.
* ``inputs``: described -> path: every file and folder the run reads. ``protected``: the dataset's own paths
  (:meth:`vpltool.data.Dataset.folders`: its root, data folders, label table).
* The CLI adds the run's ``--log`` file (``VPLTOOL_LOG``) to every call by itself (:func:`run_outputs`): a stage
  never names it, and a new command gets it checked by calling :func:`check_outputs` at all.
* A new output: an HTML report is a ``file`` (write it with :func:`vpltool.io.atomic_path`); a folder of extra
  files (``--tensorboard DIR``) is a ``side`` folder: mark it with :func:`vpltool.io.write_side_record` when the run
  makes it (:class:`vpltool.io.StageFolder` does so for its ``sides``), so that the next run may write there again
  and nobody else's non-empty folder ever is.

Refused, in one line naming the path, why, and the option to change:

* a name longer than a file name may be, a symbolic link loop, a dangling symbolic link;
* an output that *is* one of the run's inputs, or lies inside an input folder (an extract folder's items and
  records, a CAM folder's), or inside the dataset (its images, masks, label table, split files, class list): a run
  reads them, it never writes there;
* an output inside any other vpltool folder (one holding a stage or side record, or a decoder), which only its
  own stage writes; a run's side folders and files may lie in its own stage folder, its ``--log`` may not;
* two outputs that are one path (``--save-overlays`` = ``--out``: their files would mix);
* a stage folder that holds another stage's output, with or without ``--overwrite`` (``--overwrite`` redoes a
  folder of the same stage, it never adopts another one), or that is not empty and holds no vpltool record
  (``_stage.json`` / ``_run.json``): it is the user's, never resumed;
* a side folder that is not empty and holds no ``_side.json`` naming this stage and option;
* a file output that exists and is not a regular file (:func:`vpltool.io.check_writable_target`);
* a file output that exists and was not written by vpltool as the kind the run writes (its record says which:
  :func:`vpltool.io.marks.file_kind`): a user's notes, the learned prototypes under ``eval --json``, a contact sheet
  under ``--plot``; unless ``--overwrite`` is given (an empty file is replaced: it holds nothing to lose);
* a log that exists and was not written by a vpltool ``--log`` (its first line is not a time-stamped line):
  appending to a label table or a mask would damage it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import VplError
from .files import (
    check_folder_target,
    check_writable_target,
    forget_options,
    name_problem,
    note_option,
    read_json,
    short_path,
)
from .marks import describe_kind, file_kind
from .records import DECODER_FILES, LOCK_FILE, RUN_RECORD, SHARD_RECORD, SIDE_RECORD, STAGE_RECORD, read_record

KINDS = ("stage", "side", "file", "log", "written")

PathLike = str | os.PathLike
Outputs = Mapping[str, "tuple[PathLike | None, str] | tuple[PathLike | None, str, str]"]

# the first bytes of a file vpltool's --log wrote: "2025-01-31 12:00:00 " (cli.output stamps every line)
_LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _hidden_ours(name: str) -> bool:
    """A lock file or a temporary of an atomic write: what a refused or killed run may leave in a folder."""
    return name.startswith(LOCK_FILE) or (name.startswith(".") and name.endswith(".tmp"))


_ASSETS = Path(__file__).resolve().parent.parent / "assets"  # the toy models vpltool ships
_PGSEG_KINDS = ("pgseg-model", "pgseg-checkpoint")  # train-pgseg's final model and checkpoint
_LAST_CHECKPOINT = "checkpoints/last.safetensors"


def folder_owner(folder: PathLike) -> str | None:
    """The vpltool stage that made ``folder`` (from its records), None when it is empty (lock and temporary files
    aside), ``""`` when it holds files but no vpltool record (the user's folder)."""
    folder = Path(folder)
    # listed before the records are read: the ranks of a stage check its folder as they start, and one may write
    # its run record (then its items) meanwhile; read first, the records missed it, and the listing then showed it
    # as a file of no stage's (a node refused the folder its peer had just begun)
    with os.scandir(folder) as entries:
        held = any(not _hidden_ours(e.name) for e in entries)
    shards = sorted(folder.glob(SHARD_RECORD.format(index="*", count="*")))
    for path in [folder / STAGE_RECORD, folder / RUN_RECORD, *shards]:
        if path.is_file():
            record = read_json(path)
            if not isinstance(record, dict) and path.name in (STAGE_RECORD, RUN_RECORD):
                read_record(path, run=path.name == RUN_RECORD)  # a damaged record is named, not taken as a user's
            stage = record.get("stage") if isinstance(record, dict) else None
            return stage if isinstance(stage, str) and stage else ""
    if any((folder / name).exists() for name in DECODER_FILES):
        # train-pgseg's checkpoints and log have train-decoder's names: its files' kind tells the two apart
        pgseg = any(file_kind(folder / name) in _PGSEG_KINDS for name in ("pgseg.safetensors", _LAST_CHECKPOINT))
        return "train-pgseg" if pgseg else "train-decoder"
    return "" if held else None


def _marked_by(folder: Path) -> str | None:
    """The stage whose record (stage, run, shard or side record) or decoder marks ``folder`` as a vpltool folder,
    ``"vpltool"`` when the record names none; None for any other folder. Presence alone: nothing is validated."""
    names = [STAGE_RECORD, RUN_RECORD, SIDE_RECORD]
    found = [folder / n for n in names if (folder / n).is_file()]
    found += sorted(folder.glob(SHARD_RECORD.format(index="*", count="*")))
    for path in found:
        with contextlib.suppress(VplError):
            record = read_json(path)
            if isinstance(record, dict) and isinstance(record.get("stage"), str) and record["stage"]:
                return record["stage"]
        return "vpltool"
    if (folder / "decoder.safetensors").is_file() or (folder / "checkpoints" / "last.safetensors").is_file():
        return "train-decoder"
    return None


def _side_owner(folder: Path) -> dict[str, Any] | None:
    path = folder / SIDE_RECORD
    if not path.is_file():
        return None
    from .records import read_side_record

    return read_side_record(path)


def _link_loop(path: Path) -> str:
    """``a → b → a``: the chain of a symbolic link loop at ``path``, for the message."""
    chain, seen, current = [path.name], {_lexical(path)}, path
    for _ in range(8):
        try:
            target = os.readlink(current)
        except OSError:
            break
        chain.append(target)
        current = current.parent / target
        if _lexical(current) in seen:
            break
        seen.add(_lexical(current))
    return " → ".join(chain)


def _lexical(path: Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def _a(stage: str) -> str:
    """"a `crf`" or "an `extract`": the article a stage's name takes when spoken."""
    return f"{'an' if stage[:1] in 'aeiou' else 'a'} `{stage}`"


def _check_path(path: Path, option: str) -> None:
    """A name the file system takes, with no symbolic link loop and no dangling link on the way."""
    why = name_problem(path)
    if why is not None:
        raise VplError(f"{short_path(path)}: {why}; choose a shorter {option}")
    try:
        os.stat(path)
        return
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise VplError(f"{path}: cannot be used ({e.strerror}); choose another {option}") from None
    for part in [path, *path.parents]:  # the first component (from the end) that is a loop or a dangling link
        if not os.path.islink(part):
            continue
        try:
            os.stat(part)
        except FileNotFoundError:
            raise VplError(f"{part}: a symbolic link to {os.readlink(part)}, which does not exist; create the target "
                           f"or choose another {option}") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise VplError(f"{part}: a symbolic link loop ({_link_loop(part)}); remove it or choose another "
                               f"{option}") from None


def _check_stage_folder(path: Path, option: str, stage: str, overwrite: bool) -> None:
    check_folder_target(path)
    if not path.is_dir():
        return
    owner = folder_owner(path)
    if owner is None or owner == stage:
        return
    if owner:
        again = f"; --overwrite only redoes {_a(stage)} folder, never another stage's" if overwrite else ""
        raise VplError(f"{path}: holds `{owner}` output{again}; choose another {option}")
    raise VplError(f"{path}: not empty and made by no vpltool stage (no {STAGE_RECORD} or {RUN_RECORD}), so it is "
                   f"never written into or resumed; choose a new or empty folder for {option}")


def _check_side_folder(path: Path, option: str, stage: str) -> None:
    check_folder_target(path)
    if not path.is_dir():
        return
    record = _side_owner(path)
    if record is not None and (record.get("stage"), record.get("option")) == (stage, option):
        return
    with os.scandir(path) as entries:
        if not any(not _hidden_ours(e.name) for e in entries):
            return
    made = f"holds `{record.get('stage')} {record.get('option')}` output" if record else \
        f"not empty and holds no {SIDE_RECORD} of `{stage} {option}`"
    raise VplError(f"{path}: {made}, so it is never written into; choose a new or empty folder for {option}")


def _check_file_kind(path: Path, option: str, kind: str | None, flag: str = "--overwrite") -> None:
    """An existing, non-empty file is replaced only if vpltool wrote it as ``kind`` (None: as any kind); ``flag``:
    what lifts the refusal, as the caller spells it (the Python door's ``overwrite=True``)."""
    try:
        if os.stat(path).st_size == 0:
            return
    except FileNotFoundError:
        return
    found = file_kind(path)
    if found is not None and (kind is None or found == kind):
        return
    held = f"holds {describe_kind(found)}" if found is not None else "exists and was not written by vpltool"
    if found is None and path.resolve().is_relative_to(_ASSETS):  # shipped before files recorded their kind
        held = f"is the toy model vpltool ships ({path.resolve().relative_to(_ASSETS.parent.parent)})"
    instead = f", not {describe_kind(kind)}" if found is not None and kind is not None else ""
    where = f"choose another {option}" if option.startswith("-") else "move it away"
    raise VplError(f"{path}: {held}{instead}, so it is not replaced; {where}, or pass {flag} to replace it")


def check_log_target(path: PathLike, option: str = "--log") -> Path:
    """``path`` as a Path, if a log may be appended there: absent, or a regular file that is empty or was written
    by a vpltool log (its first line starts with a time stamp). Needs no other context, so the CLI checks it before
    a command starts; :func:`check_outputs` checks the rest (inputs, the dataset, vpltool folders)."""
    path = Path(path)
    _check_path(path, option)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISDIR(st.st_mode):
        raise VplError(f"{path}: is a folder; give {option} a file name (e.g. {path / 'vpltool.log'})")
    if not stat.S_ISREG(st.st_mode):
        raise VplError(f"{path}: exists and is not a regular file (a device, FIFO or socket); choose another "
                       f"{option}")
    if st.st_size:
        with open(path, "rb") as fh:
            head = fh.read(20)
        if not _LOG_LINE.match(head):
            raise VplError(f"{path}: exists and is no vpltool log (its first line is not a time-stamped vpltool "
                           f"line), so it is never appended to; choose another {option}")
    return path


class _RunOutputs:
    """What the command under way adds to every :func:`check_outputs` call (see :func:`run_outputs`)."""

    outputs: dict[str, tuple[PathLike | None, str]] = {}
    on_checked: Callable[[bool], None] | None = None


@contextlib.contextmanager
def run_outputs(outputs: Outputs, on_checked: Callable[[bool], None] | None = None) -> Iterator[None]:
    """While the block runs, every :func:`check_outputs` call also checks ``outputs`` (the CLI's ``--log``), and
    ``on_checked(True)`` reports that they passed in a run's full context, ``on_checked(False)`` that one of them
    was refused (the CLI then writes its buffered log lines, or drops them)."""
    saved = _RunOutputs.outputs, _RunOutputs.on_checked
    _RunOutputs.outputs = {k: v for k, v in outputs.items() if v[0] is not None}
    _RunOutputs.on_checked = on_checked
    forget_options()  # a new command: its own options name its paths
    try:
        yield
    finally:
        _RunOutputs.outputs, _RunOutputs.on_checked = saved
        forget_options()


def check_outputs(stage: str, outputs: Outputs, *, inputs: Mapping[str, PathLike | None] = {},
                  protected: Iterable[PathLike] = (), overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Refuse, in one line, any output of a run that would destroy an input or another's data (see the module doc).

    Args:
        stage: the command (recorded in the folders it makes).
        outputs: option -> ``(path or None, kind)``; kind ``stage``, ``side``, ``file`` or ``log``; a ``file``
            adds the kind of file it writes, ``(path, "file", "scores")`` (:mod:`vpltool.io.marks`).
        inputs: what the run reads, described -> path (a file or a folder; None = not given).
        protected: the dataset's paths (root, images, masks, annotations, label table): no output may be in them.
        overwrite: ``--overwrite`` was given: it lets a file output replace a file of another kind (or the
            user's); for folders it only changes the wording (it never lifts a refusal there).
        flag: how a message spells ``overwrite`` (the Python door: ``overwrite=True``).

    Raises:
        VplError: one line naming the path, why, and the option to change.
    """
    extra = _RunOutputs.outputs
    every = {**extra, **{k: v for k, v in outputs.items() if v[0] is not None}}  # the run's own (the log) first
    for option, (_, kind, *_) in every.items():
        assert kind in KINDS, (option, kind)
    guard = _Guard(stage, every, inputs, protected, overwrite, flag)
    for option in extra:  # settled before the others, so the caller knows whether to write its log lines
        try:
            guard.check(option)
        except VplError:
            if _RunOutputs.on_checked is not None:
                _RunOutputs.on_checked(False)
            raise
    if extra and _RunOutputs.on_checked is not None:
        _RunOutputs.on_checked(True)
    for option in every:
        if option not in extra:
            guard.check(option)


class _Guard:
    """One :func:`check_outputs` call: the real paths of its inputs, folders and outputs, computed once."""

    def __init__(self, stage: str, outputs: Outputs, inputs: Mapping[str, PathLike | None],
                 protected: Iterable[PathLike], overwrite: bool, flag: str = "--overwrite"):
        self.stage, self.outputs, self.overwrite, self.flag = stage, outputs, overwrite, flag
        self.inputs = {_real(Path(p)): what for what, p in inputs.items() if p is not None}
        self.input_folders = [(real, what) for real, what in self.inputs.items() if os.path.isdir(real)]
        self.protected = [_real(Path(p)) for p in protected]
        # the run's own folders: its side folders and files may lie in them (never its log)
        self.own = {_real(Path(p)): option for option, (p, kind, *_) in outputs.items() if kind in ("stage", "side")}
        self.seen: dict[Path, str] = {}

    def check(self, option: str) -> None:
        path, kind, *writes = self.outputs[option]  # a file output: the kind of file it writes
        path = Path(path)
        note_option(path, option)  # a later error about this path (a full disk) names its option
        _check_path(path, option)
        real = _real(path)
        if real in self.inputs:
            if kind == "written":  # a file inside the run's own folder: the input is what must move
                raise VplError(f"{self.inputs[real]} {path}: this run writes (or, with --overwrite, deletes) that "
                               f"file of its {option.split()[0]} folder; copy it elsewhere and pass the copy")
            raise VplError(f"{path}: is also this run's input ({self.inputs[real]}); writing there would destroy it: "
                           f"choose another {option}")
        if kind == "written":
            return  # checked with its folder (the stage output) otherwise
        dataset = [d for d in self.protected if _inside(real, d)]
        if dataset:
            folder = max(dataset, key=lambda d: len(d.parts))  # the most specific: "is the dataset's folder masks"
            where = "is" if real == folder else "lies inside"
            raise VplError(f"{path}: {where} the dataset's folder {folder}; no stage writes into a dataset: "
                           f"choose another {option}")
        for folder, what in self.input_folders:
            if _inside(real, folder):
                raise VplError(f"{path}: lies inside {folder}, this run's input ({what}), whose files are read, never "
                               f"written; choose another {option}")
        self._check_vpltool_folders(path, real, option, kind)
        if real in self.seen:
            raise VplError(f"{path}: given as both {self.seen[real]} and {option}; their files would mix: choose "
                           f"another {option}")
        self.seen[real] = option
        if kind == "stage":
            _check_stage_folder(path, option, self.stage, self.overwrite)
        elif kind == "side":
            _check_side_folder(path, option, self.stage)
        elif kind == "log":
            check_log_target(path, option)
        else:
            check_writable_target(path, path.suffix or ".safetensors")
            if not self.overwrite:
                _check_file_kind(path, option, writes[0] if writes else None, self.flag)

    def _check_vpltool_folders(self, path: Path, real: Path, option: str, kind: str) -> None:
        """No output inside a folder another stage owns; a log not even inside this run's own folders."""
        for folder in real.parents:
            if folder in self.own:
                if kind == "log":
                    raise VplError(f"{path}: lies inside {folder}, this run's {self.own[folder]} folder, whose files "
                                   f"are the stage's; choose a {option} outside it")
                return
            owner = _marked_by(folder)
            if owner is not None:
                raise VplError(f"{path}: lies inside {folder}, {_a(owner)} folder whose files only that stage "
                               f"writes; choose another {option}")


__all__ = ["KINDS", "SIDE_RECORD", "check_log_target", "check_outputs", "folder_owner", "run_outputs"]
