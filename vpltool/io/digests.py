"""The sha256 of a file, computed once per file: model weights are hundreds of MB and every command records them.

:func:`sha256_file` hashes a file's bytes. A file of at least :data:`CACHED_BYTES` is hashed once and its digest
kept, in this process and in a small cache file under the user's cache folder (``$VPLTOOL_CACHE_DIR``, else
``$XDG_CACHE_HOME/vpltool``, else ``~/.cache/vpltool``; ``VPLTOOL_CACHE_DIR=`` with no value turns the file off),
keyed by the file's real path and its ``stat``: size, modification time, change time (``ctime``), inode and device.
No copy keeps all of them: ``cp -p`` and ``rsync -t`` restore a modification time, but writing a file sets its
change time to the present, which nothing can set back, and a new file gets a new inode. A file changed within
:data:`RACY_S` seconds of being hashed is not cached (git's "racy" rule: a second change within the file system's
clock tick would keep every stamp), so it is hashed again next time.

The cache file is a JSON object written atomically (a temporary name, then a rename); a cache that cannot be read
or written is ignored, never an error: it only saves time. It keeps the :data:`MAX_ENTRIES` latest files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import VplError

CACHED_BYTES = 1 << 20  # smaller files are hashed every time (a millisecond)
RACY_S = 2.0
MAX_ENTRIES = 512
CACHE_ENV = "VPLTOOL_CACHE_DIR"
CACHE_NAME = "digests.json"
_FORMAT = 1
_MEMO: dict[tuple, str] = {}
# real path -> (stamp, digest) of the last time this process named the file by its content: what a model load is
# checked against (:func:`check_loaded_files`), so that a run never records one file's digest and uses other bytes
_SEEN: dict[str, tuple[list[int], str]] = {}


def cache_folder() -> Path | None:
    """The user's cache folder for vpltool (``$VPLTOOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/vpltool``, else
    ``~/.cache/vpltool``), or None when ``VPLTOOL_CACHE_DIR`` is set empty: what is kept there only saves time."""
    folder = os.environ.get(CACHE_ENV)
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "vpltool")
    return Path(folder) if folder else None


def cache_file() -> Path | None:
    """Where the digests are kept, or None when ``VPLTOOL_CACHE_DIR`` is set empty."""
    folder = cache_folder()
    return folder / CACHE_NAME if folder is not None else None


def _hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_cache(path: Path) -> dict[str, list]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) and data.get("format") == _FORMAT else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, key: str, entry: list) -> None:
    """Add ``key -> entry`` to the cache file (read again first: another command may have added to it)."""
    try:
        entries = _read_cache(path)
        entries.pop(key, None)
        entries[key] = entry  # the latest last; the oldest dropped beyond MAX_ENTRIES
        kept = dict(list(entries.items())[-MAX_ENTRIES:])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.write_text(json.dumps({"format": _FORMAT, "entries": kept}))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:  # a read-only home, a full disk: the digest is still right, only not kept
        pass


def sha256_file(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of the file's bytes; a large file's digest from the cache when its ``stat`` is unchanged."""
    st = os.stat(path)
    real = os.path.realpath(path)
    stamp = _stamp(st)
    if st.st_size < CACHED_BYTES:
        return _seen(real, stamp, _hash(path))
    memo_key = (real, *stamp)
    if memo_key in _MEMO:
        return _seen(real, stamp, _MEMO[memo_key])
    where = cache_file()
    if where is not None:
        entry = _read_cache(where).get(real)
        if isinstance(entry, list) and entry[:-1] == stamp and isinstance(entry[-1], str):
            _MEMO[memo_key] = entry[-1]
            return _seen(real, stamp, entry[-1])
    digest = _hash(path)
    after = os.stat(path)
    settled = time.time() - max(after.st_mtime_ns, after.st_ctime_ns) / 1e9 > RACY_S
    if _stamp(after) == stamp and settled:  # not written while it was read, nor too recently to tell
        _MEMO[memo_key] = digest
        if where is not None:
            _write_cache(where, real, [*stamp, digest])
    return _seen(real, stamp if _stamp(after) == stamp else [], digest)


def _seen(real: str, stamp: list[int], digest: str) -> str:
    _SEEN[real] = (stamp, digest)
    return digest


_SCOPE = [0]  # how many runs are open in this process (a command, a Python stage; benchmark opens segment's)
# what else lives for one run, told where the outermost run begins and ends (vpltool.io.reads' ledger)
AT_RUN_EDGES: list[Callable[[], None]] = []


def _at_edge() -> None:
    for forget in AT_RUN_EDGES:
        forget()


@contextlib.contextmanager
def naming_scope() -> Iterator[None]:
    """One run's span: what it names by content inside (:func:`sha256_file`, :func:`note_digest`) is what
    :func:`read_as_named` and :func:`check_loaded_files` hold its later reads to; nothing is held outside a run (a
    long-lived process, a notebook, may change a file between two runs: the next run names it anew). The CLI opens
    one around each command, the Python door around each stage; runs inside a run share the outer one."""
    if not _SCOPE[0]:
        _SEEN.clear()
        _at_edge()
    _SCOPE[0] += 1
    try:
        yield
    finally:
        _SCOPE[0] -= 1
        if not _SCOPE[0]:
            _SEEN.clear()
            _at_edge()


def note_digest(path: str | os.PathLike, stamp: list[int], digest: str) -> None:
    """Record that this process named ``path`` (as it was at ``stamp``) by ``digest`` (a digest taken elsewhere, as
    a dataset's images are), for :func:`read_as_named`."""
    _seen(os.path.realpath(path), stamp, digest)


def read_as_named(path: str | os.PathLike) -> bytes:
    """A per-image input's bytes, read once, and the same bytes the run named it by: when this process took the
    file's digest earlier (:func:`sha256_file`, :func:`note_digest`: a record's inputs, made before the work
    started) and the file has been written since, the bytes just read are hashed and must be those; else one line
    (a file rewritten while the run goes would make its output from other bytes than its record names). Files it
    never named are read as they are. ``OSError`` as ``open`` raises it."""
    with open(path, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):  # a device never ends: /dev/zero is no image
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = fh.read()
        stamp = _stamp(os.fstat(fh.fileno()))  # of the file read (a rename over it leaves this one whole)
    real = os.path.realpath(path)
    seen = _SEEN.get(real) if _SCOPE[0] else None
    if seen is None or seen[0] == stamp:
        return data
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if digest != seen[1]:
        short = lambda d: d.removeprefix("sha256:")[:12] + "…"  # noqa: E731
        raise VplError(f"{path}: changed while this run was using it (sha256 {short(seen[1])} when the run named it, "
                       f"{short(digest)} now), so its output would not be what its record names; run the command "
                       "again once the file is as it should be")
    _seen(real, stamp, digest)  # the same bytes written again (touched)
    return data


def file_stamp(path: str | os.PathLike) -> list[int] | None:
    """The ``stat`` that tells a file's bytes apart (size, modification and change times, inode, device), or None
    for a file that is not there."""
    try:
        return _stamp(os.stat(path))
    except OSError:
        return None


def check_loaded_files(before: dict[Path, list[int] | None], fix: str = "run it again once the file is written"
                       ) -> None:
    """After a model was loaded from the files of ``before`` (path -> :func:`file_stamp` taken just before the
    load): one line naming a file that changed while it was read, or whose bytes are no longer those this process
    named it by (:func:`sha256_file`, e.g. in the run's record) before it was loaded: the model would be other
    bytes than the record says. A file touched with the same bytes passes (its digest is taken again)."""
    for path, stamp in before.items():
        now = file_stamp(path)
        if now != stamp:
            raise VplError(f"{path}: changed while it was being loaded; {fix}")
        seen = _SEEN.get(os.path.realpath(path)) if now is not None and _SCOPE[0] else None
        if seen is None or seen[0] == now:
            continue
        digest = sha256_file(path)
        if digest != seen[1]:
            short = lambda d: d.removeprefix("sha256:")[:12] + "…"  # noqa: E731
            raise VplError(f"{path}: replaced after this run named it by its content (sha256 {short(seen[1])} "
                           f"then, {short(digest)} now), so the model loaded is not the one the run records; {fix}")


__all__ = ["CACHED_BYTES", "CACHE_ENV", "cache_file", "cache_folder", "check_loaded_files", "file_stamp",
           "naming_scope", "note_digest", "read_as_named", "sha256_file"]
