"""The folder lock: one ``flock`` per output folder (``.vpltool.lock``), for plain runs and shards alike.

A run takes it exclusively; the shards of a ``--shard i/n`` run share it and each claims its index, so a plain run
and a sharded one, two copies of one shard, or shards of two counts never write one folder at once. It is taken
before anything in the folder changes, so a refused run leaves the folder as it found it, and the kernel frees it
when the run dies: forked children (DataLoader workers) never hold it (:func:`_release_in_child`). A run alone in
its folder first removes what a killed run left: the temporaries of atomic writes (``.NAME.XXXXXXXX.tmp``) and the
claims of dead shards. Runs take or join the lock one at a time (a short ``flock`` on the folder itself), so the
shards of one run that start together never take each other for a whole run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import VplError
from .files import another, make_folder, raise_write_error
from .records import LOCK_FILE

SHARD_NAME = re.compile(r"([0-9]+)-of-([0-9]+)", flags=re.ASCII)  # a shard's "i-of-n" in claim and record names

_HELD: set[int] = set()  # descriptors of the locks this process holds


def _release_in_child() -> None:
    """After ``fork``: point every held lock's descriptor at /dev/null in the child.

    An ``flock`` belongs to the open file description, which a forked child shares: a DataLoader worker would keep
    the folder locked after its run was killed (for minutes; a re-run was refused). Re-pointing (``dup2``, not
    ``close``) keeps the number valid for the child's copy of the file object, which may close it later.
    """
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for fd in _HELD:
            with contextlib.suppress(OSError):
                os.dup2(null, fd)
    finally:
        os.close(null)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_release_in_child)


@contextlib.contextmanager
def _locked_file(path: Path, mode: int) -> Iterator[Any]:
    """``path`` opened (created) and ``flock``-ed with ``mode`` (never waiting); yields the file, or None when
    another holder has it. Open failures (a read-only folder) are one line."""
    try:
        fh = open(path, "a+")
    except OSError as e:
        raise_write_error(path, e)
    try:
        try:
            fcntl.flock(fh, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        _HELD.add(fh.fileno())
        yield fh
    finally:
        _HELD.discard(fh.fileno())
        fh.close()


def _shard_claims(folder: Path) -> list[tuple[Path, int, int]]:
    """The claim files of shards (``.vpltool.lock.i-of-n``) in ``folder``: ``(path, i, n)``."""
    found = []
    for path in folder.glob(f"{LOCK_FILE}.*-of-*"):
        match = SHARD_NAME.fullmatch(path.name[len(LOCK_FILE) + 1:])
        if match:
            found.append((path, int(match.group(1)), int(match.group(2))))
    return found


@contextlib.contextmanager
def _claim(folder: Path, index: int, count: int) -> Iterator[None]:
    """Claim shard ``index`` of ``count`` (an exclusive ``flock`` on ``.vpltool.lock.i-of-n``, held by a run that
    shares the folder lock); refuse a shard already running or shards of another count. The claim file goes with
    the run, so a refused or finished shard leaves none; one a killed shard left is removed by the next run."""
    path = folder / f"{LOCK_FILE}.{index}-of-{count}"
    for _ in range(3):  # the file may be removed as stale between our open and our lock: claim the new one
        with _locked_file(path, fcntl.LOCK_EX) as fh:
            if fh is None:
                raise VplError(f"{folder}: --shard {index}/{count} is already running here; wait for it or run "
                               "another shard")
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue
            try:
                _refuse_other_counts(folder, count)
                yield
            finally:
                path.unlink(missing_ok=True)  # still locked: a run that opens it now finds another inode
            return
    raise VplError(f"{folder}: could not claim --shard {index}/{count} (its lock file keeps changing); retry")


def _refuse_other_counts(folder: Path, count: int) -> None:
    """Shards of another count that are running here are refused (their items would be split twice); claims
    whose shard died are removed."""
    for path, i, n in _shard_claims(folder):
        if n == count:
            continue
        with _locked_file(path, fcntl.LOCK_EX) as fh:
            if fh is None:
                raise VplError(f"{folder}: shards of another count (--shard {i}/{n}) are writing here; a folder is "
                               f"made in one shard count: run --shard i/{n}, or wait for them")
            path.unlink(missing_ok=True)


def _remove_leftovers(folder: Path) -> None:
    """What killed runs left in ``folder`` and its subfolders (a decoder's ``checkpoints/``): temporaries of
    atomic writes (``.NAME.XXXXXXXX.tmp``) and shard claims. Called only by a run alone in the folder."""
    for path, *_ in _shard_claims(folder):
        path.unlink(missing_ok=True)
    for where in [folder, *(p for p in _scan(folder) if p.is_dir(follow_symlinks=False))]:
        for entry in _scan(where):
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _scan(folder: Path | os.DirEntry) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except OSError:
        return []


# how long a run waits for another that is taking or joining the same folder's lock (a shard of its own run, cleaning
# up what a killed run left): seconds at most, unless the folder is huge and the disk slow
ENTER_WAIT_S = 120.0


@contextlib.contextmanager
def _entering(folder: Path) -> Iterator[None]:
    """One run at a time takes or joins ``folder``'s lock: an exclusive ``flock`` on the folder itself, held only
    while the lock is taken and leftovers removed, and waited for (:data:`ENTER_WAIT_S`).

    Why: the shards of one run (torchrun's ranks) start together, and the first takes the folder lock exclusively
    to clean up before it shares it; a second shard that tried the lock in that moment would read the brief
    exclusive hold as a whole run writing here and refuse, the re-run after a killed node included."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as e:
        raise_write_error(folder, e)
    deadline = None
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                deadline = deadline or now + ENTER_WAIT_S
                if now > deadline:
                    raise VplError(f"{folder}: another vpltool run has been starting here for {ENTER_WAIT_S:.0f} s; "
                                   f"wait for it or {another(folder)}") from None
                time.sleep(0.02)
        _HELD.add(fd)
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # frees the flock


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, shard: tuple[int, int] = (0, 1),
                also: Iterable[str | os.PathLike] = ()) -> Iterator[None]:
    """Hold the folder's lock (``.vpltool.lock``) while writing it; a second writer is refused at once.

    A run in one piece takes it exclusively. Shard ``i`` of ``n`` takes it shared, with the other shards of its run,
    and claims its index (:func:`_claim`): a plain run and a sharded one never mix, nor do two copies of a shard or
    shards of two counts. Take it before anything in the folder changes (:func:`prepare_stage_dir` included:
    ``--overwrite`` removes the record), so that a refused run leaves the folder as it found it. A run that finds
    itself alone first removes what killed runs left in the folder and in the folders ``also`` (its side folders):
    :func:`_remove_leftovers`. Runs take or join the lock one at a time (:func:`_entering`).
    """
    folder = make_folder(folder)
    index, count = shard
    lock = folder / LOCK_FILE
    with contextlib.ExitStack() as stack:
        with _entering(folder):
            fh = stack.enter_context(_locked_file(lock, fcntl.LOCK_EX))
            if fh is not None:
                for where in (folder, *also):
                    _remove_leftovers(Path(where))
            if count == 1:
                if fh is None:
                    with _locked_file(lock, fcntl.LOCK_SH) as probe:
                        who = "the shards of a --shard run are" if probe is not None else "another vpltool run is"
                    raise VplError(f"{folder}: {who} writing here; wait for it or {another(folder)}")
            else:
                if fh is not None:  # alone: share the lock from now on, with the other shards of this run
                    try:
                        fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
                    except BlockingIOError:
                        fh = None
                else:
                    fh = stack.enter_context(_locked_file(lock, fcntl.LOCK_SH))
                if fh is None:
                    raise VplError(f"{folder}: another vpltool run (not a shard) is writing here; wait for it or "
                                   f"{another(folder)}")
                stack.enter_context(_claim(folder, index, count))
        yield


def being_written(folder: str | os.PathLike) -> bool:
    """Whether a vpltool run holds ``folder``'s lock now (it is writing there: a reader must wait), probed without
    taking it over and without writing anything (no lock file is made where there is none)."""
    try:
        fh = open(Path(folder) / LOCK_FILE, "rb")
    except OSError:
        return False
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def replace_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold the lock of an output that is built elsewhere and moved into place as a whole (`report`'s folder): a
    ``flock`` on ``.NAME.lock`` beside it, since a lock file inside would go with the folder it replaces. A second
    writer is refused at once; while held, what killed runs left beside it (``.NAME.tmp-*``, ``.NAME.old-*``) is
    removed. The lock file goes with the run (checked by inode, as :func:`_claim` does)."""
    target = Path(target)
    parent = make_folder(target.parent)
    path = parent / f".{target.name}.lock"
    for _ in range(3):  # the file may be removed by the run ending between our open and our lock: lock the new one
        with _locked_file(path, fcntl.LOCK_EX) as fh:
            if fh is None:
                raise VplError(f"{target}: another vpltool run is writing here; wait for it or {another(target)}")
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                continue
            try:
                for left in [*parent.glob(f".{target.name}.tmp-*"), *parent.glob(f".{target.name}.old-*")]:
                    _remove_tree(left)
                yield
            finally:
                path.unlink(missing_ok=True)
            return
    raise VplError(f"{target}: could not take its lock {path} (the file keeps changing); retry")


def _remove_tree(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


__all__ = ["SHARD_NAME", "being_written", "output_lock", "replace_lock"]
