"""``--overwrite`` that fails keeps the last good result: the new result is built in the folder's place while the
last one waits beside it, and the two are swapped back unless the new one finishes.

:class:`vpltool.io.StageFolder` does this for every stage that writes a folder (``beside=True``, the default), once:

1. under the folder's lock, the last result is set aside (:func:`set_aside`): an empty folder made beside it,
   ``.NAME.vpltool-last``, its lock taken, and the two exchanged in one ``renameat2(RENAME_EXCHANGE)``, so that the
   folder's name never points at nothing and its lock is never free. The stage then writes into an empty folder
   under the name it was given (the stages need no other path), and its items are all new.
2. the run finishes (``_stage.json`` written): the files that no run of the stage wrote (a user's notes: a file
   that records no vpltool kind, id or run, :mod:`vpltool.io.marks`) move into the new folder, and the last result
   goes (:func:`keep_new`).
3. the run fails (an exception, a refusal, Ctrl-C) or ends without finishing: the two are exchanged back and the
   unfinished one goes (:func:`put_back`): the last result is there again byte for byte, records included.

A run killed (``kill -9``) between 1 and 2 leaves the last result beside the folder; the next run into the folder,
once it holds the lock, puts it back (or, when the killed run had finished, keeps the new one): :func:`recover`. An
``--overwrite`` run cut short is therefore never resumed; it is run again.

A shard of several (``--shard i/n``, torchrun's ranks) writes into the folder where it is, as before: the shards of a
run share the folder, and none of them alone may swap it.

Where ``renameat2`` is missing (not Linux, an old C library, a file system without it) the exchange is three
renames, and another run could see no folder under the name for an instant. Where nothing can be made or moved
beside the folder (a parent the user may not write, a mount point), the folder is overwritten in place, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import stat
from pathlib import Path

from ..errors import VplError
from .files import read_json
from .marks import file_kind, item_marks
from .records import LOCK_FILE, RUN_RECORD, SIDE_RECORD, STAGE_RECORD

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def aside_path(folder: Path) -> Path:
    """Where the last result of ``folder`` waits while an ``--overwrite`` run builds the new one."""
    return folder.parent / f".{folder.name}.vpltool-last"


def _renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_EXCHANGE = _renameat2()


def exchange(a: Path, b: Path) -> None:
    """Swap the two folders ``a`` and ``b`` (same parent): atomically where the system can
    (``renameat2(RENAME_EXCHANGE)``), else by three renames."""
    if _EXCHANGE is not None:
        if _EXCHANGE(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(a))
    between = a.parent / f".{a.name}.vpltool-swap"
    os.rename(a, between)
    try:
        os.rename(b, a)
    except OSError:
        os.rename(between, a)  # as it was: nothing moved
        raise
    os.rename(between, b)


def _ours(name: str) -> bool:
    """A record, the lock or a temporary of an atomic write: what every run of a stage writes and replaces."""
    return (name in (STAGE_RECORD, RUN_RECORD) or name.startswith(LOCK_FILE)
            or (name.startswith("_shard.") and name.endswith(".json"))
            or (name.startswith(".") and name.endswith(".tmp")))


def written_by_a_run(path: Path) -> bool:
    """Whether a run of a stage wrote ``path`` (an item of the folder, a record, a side folder), read from the file
    itself; anything else (a user's notes, a folder of the user's) is not, and moves into the new result."""
    if _ours(path.name):
        return True
    if path.is_symlink():
        return False
    if path.is_dir():
        return (path / SIDE_RECORD).is_file() or (path / STAGE_RECORD).is_file()
    if not path.is_file():
        return False
    if file_kind(path) is not None:
        return True
    marks = item_marks(path) or {}
    return any(k in marks for k in ("vpltool.id", "vpltool.run", "vpltool.kind"))


def has_result(folder: Path) -> bool:
    """Whether ``folder`` holds anything an ``--overwrite`` could lose (more than its lock and temporaries)."""
    try:
        with os.scandir(folder) as entries:
            return any(not (e.name.startswith(LOCK_FILE) or (e.name.startswith(".") and e.name.endswith(".tmp")))
                       for e in entries)
    except OSError:
        return False


def _lock(path: Path, stack: contextlib.ExitStack) -> None:
    """Hold ``path`` (a lock file) exclusively for the rest of the run, on ``stack``."""
    fh = stack.enter_context(open(path, "a+"))
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def set_aside(folder: Path, stack: contextlib.ExitStack) -> Path | None:
    """Put ``folder``'s last result beside it and an empty folder (same permissions, its lock held) in its place;
    returns where the last result is. None where nothing may be made or moved beside it (a parent the user may not
    write, a mount point): then the folder is overwritten in place, as before."""
    aside = aside_path(folder)
    try:
        _remove(aside)
        aside.mkdir()
        with contextlib.suppress(OSError):
            os.chmod(aside, stat.S_IMODE(os.stat(folder).st_mode))
        _lock(aside / LOCK_FILE, stack)  # the lock of the folder-to-be: no other run takes it after the exchange
        exchange(aside, folder)
    except OSError:
        with contextlib.suppress(OSError):
            _remove(aside)
        return None
    return aside


def refuse_other_stage(folder: Path, stage: str) -> None:
    """``--overwrite`` redoes a folder of ``stage``, never another stage's (:func:`vpltool.io.begin_stage_run` says
    the same of a folder overwritten in place); checked before the folder is set aside."""
    for name in (STAGE_RECORD, RUN_RECORD):
        old = None
        with contextlib.suppress(VplError):  # a damaged record is cleared, as in place
            old = read_json(folder / name) if (folder / name).is_file() else None
        if isinstance(old, dict) and old.get("stage") not in (None, stage):
            raise VplError(f"{folder}: holds `{old.get('stage')}` output; choose another --out")


def finish(folder: Path, aside: Path, failed: bool) -> None:
    """The run ends: the new result kept when it is complete (``_stage.json`` written and no failure), else the last
    one put back."""
    if failed or not (folder / STAGE_RECORD).is_file():
        put_back(folder, aside)
    else:
        keep_new(folder, aside)


def put_back(folder: Path, aside: Path) -> None:
    """The run failed: the last result takes its name again, the unfinished one goes."""
    exchange(aside, folder)
    _remove(aside)


def keep_new(folder: Path, aside: Path) -> None:
    """The run finished: what no run of the stage wrote moves from the last result into the new one (a name the new
    result holds too stays the new result's), then the last result goes."""
    for entry in sorted(aside.iterdir()):
        if os.path.lexists(folder / entry.name) or written_by_a_run(entry):  # the cheap test first
            continue
        with contextlib.suppress(OSError):
            os.rename(entry, folder / entry.name)
    _remove(aside)


def recover(folder: Path, stack: contextlib.ExitStack) -> None:
    """What a killed ``--overwrite`` run left: its last result beside ``folder``. Kept when the killed run had
    finished (its record is there), put back otherwise. Called by a run alone in ``folder``, holding its lock."""
    aside = aside_path(folder)
    if not aside.is_dir() or aside.is_symlink():
        return
    if (folder / STAGE_RECORD).is_file():
        keep_new(folder, aside)
        return
    _lock(aside / LOCK_FILE, stack)  # the last result's own lock, held before it takes the folder's name again
    put_back(folder, aside)


def carry_over(aside: Path, folder: Path, names: tuple[str, ...]) -> None:
    """Hard-link the last result's ``names`` (a folder of entries each written whole, as a feature cache) into the
    new one, so that the run starts from them while the last result keeps its own, byte for byte (an entry the run
    replaces or deletes is a new name, or an unlinked one: the other link is untouched). A link (a cache kept on
    another disk) is copied as the link. Where links cannot be made the rest is left out: what is carried over only
    saves time."""
    for name in names:
        source, target = aside / name, folder / name
        if not os.path.lexists(source) or os.path.lexists(target):
            continue
        try:
            if source.is_symlink():
                os.symlink(os.readlink(source), target)
            elif not source.is_dir():
                os.link(source, target)
            else:
                shutil.copytree(source, target, symlinks=True, copy_function=os.link)
        except (OSError, shutil.Error):
            pass


@contextlib.contextmanager
def built_beside(folder: Path, done: str, overwrite: bool, alone: bool = True, carry: tuple[str, ...] = ()):
    """The same for a run that is no :class:`vpltool.io.StageFolder` (a training run): ``done``, the file whose
    presence says the new result is complete (``decoder.safetensors``). Alone in the folder (``alone``: not one rank
    of several), holding its lock: what a killed ``--overwrite`` run left beside it is put back, or kept when that
    run had finished (:func:`recover`); under ``overwrite`` the last result is set aside for the run, kept back
    unless the run ends with ``done`` written. ``carry``: entries of the last result the new one starts from
    (:func:`carry_over`: train-text's feature cache)."""
    if not alone:
        yield
        return
    with contextlib.ExitStack() as stack:
        aside = aside_path(folder)
        if aside.is_dir() and not aside.is_symlink():
            if (folder / done).is_file():
                keep_new(folder, aside)
            else:
                _lock(aside / LOCK_FILE, stack)
                put_back(folder, aside)
        aside = set_aside(folder, stack) if overwrite and has_result(folder) else None
        if aside is not None:
            carry_over(aside, folder, carry)
        failed = True
        try:
            yield
            failed = False
        finally:
            if aside is not None:
                if failed or not (folder / done).is_file():
                    put_back(folder, aside)
                else:
                    keep_new(folder, aside)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


__all__ = ["aside_path", "built_beside", "carry_over", "exchange", "finish", "has_result", "keep_new", "put_back",
           "recover", "refuse_other_stage", "set_aside", "written_by_a_run"]
