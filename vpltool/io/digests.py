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

import hashlib
import json
import os
import secrets
import time
from pathlib import Path

CACHED_BYTES = 1 << 20  # smaller files are hashed every time (a millisecond)
RACY_S = 2.0
MAX_ENTRIES = 512
CACHE_ENV = "VPLTOOL_CACHE_DIR"
CACHE_NAME = "digests.json"
_FORMAT = 1
_MEMO: dict[tuple, str] = {}


def cache_file() -> Path | None:
    """Where the digests are kept, or None when ``VPLTOOL_CACHE_DIR`` is set empty."""
    folder = os.environ.get(CACHE_ENV)
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "vpltool")
    return Path(folder) / CACHE_NAME if folder else None


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
    if st.st_size < CACHED_BYTES:
        return _hash(path)
    real = os.path.realpath(path)
    stamp = _stamp(st)
    memo_key = (real, *stamp)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    where = cache_file()
    if where is not None:
        entry = _read_cache(where).get(real)
        if isinstance(entry, list) and entry[:-1] == stamp and isinstance(entry[-1], str):
            _MEMO[memo_key] = entry[-1]
            return entry[-1]
    digest = _hash(path)
    after = os.stat(path)
    settled = time.time() - max(after.st_mtime_ns, after.st_ctime_ns) / 1e9 > RACY_S
    if _stamp(after) == stamp and settled:  # not written while it was read, nor too recently to tell
        _MEMO[memo_key] = digest
        if where is not None:
            _write_cache(where, real, [*stamp, digest])
    return digest


__all__ = ["CACHED_BYTES", "CACHE_ENV", "cache_file", "sha256_file"]
