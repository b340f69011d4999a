"""Plain files: atomic writes (regular files only, the umask respected), JSON, hashes and file identities, logs.

Every file vpltool writes goes through :func:`atomic_path`: a temporary name in the same folder, renamed into place
only once complete, so a crash never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from ..errors import ContractError, VplError, write_error

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process's umask. Linux shows it in /proc/self/status, which leaves it alone: the writer threads of
    :mod:`vpltool.batches` ask at once, and setting it to 0 to read it, even for an instant, would give another
    thread's file 0666. Elsewhere it is read that way, under a lock."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
        return mask


def check_writable_target(path: str | os.PathLike, suffix: str = ".safetensors") -> Path:
    """``path`` as a Path, after refusing anything that is not a regular file (or absent).

    A device node, a FIFO or a socket must never be replaced: run as root, ``-o /dev/null`` would replace the
    system's /dev/null with a regular file. A folder is refused too (``-o`` of a file stage names a file; the
    message suggests a name in it ending in ``suffix``).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows a symlink: the link is replaced, its target judged
    except FileNotFoundError:
        return path
    except OSError as e:
        raise VplError(f"{path}: cannot be written ({e.strerror}); choose another output path") from None
    if stat.S_ISDIR(mode):
        raise VplError(f"{path}: is a folder; give a file name (e.g. {path / 'out'}{suffix})")
    if not stat.S_ISREG(mode):
        raise VplError(f"{path}: exists and is not a regular file (a device, FIFO or socket); it is never "
                       "replaced: choose another output path")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions ``open()`` would give it (0666 minus the umask), not mkstemp's private 0600, so
    collaborators in the same group can read results. An existing ``path`` that is not a regular file is refused.
    """
    path = check_writable_target(path, Path(path).suffix or ".safetensors")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise write_error(path, e) or VplError(f"{path.parent}: cannot write here ({e.strerror}); "
                                               "choose another --out") from None
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as e:
        raise_write_error(path, e)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves neither a half file nor its temporary


def raise_write_error(path: str | os.PathLike, e: OSError) -> NoReturn:
    """Re-raise ``e`` as the one-line error naming ``path`` when the user can fix it; unchanged otherwise."""
    error = write_error(path, e)
    if error is None:
        raise e
    raise error from None


def check_folder_target(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, after refusing an existing path that is not a folder (a file, a FIFO, a device).

    Stages call it on every output folder before loading a model, so a wrong ``--out`` costs nothing.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise VplError(f"{folder}: exists and is not a folder; choose another --out")
    return folder


def make_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` with a one-line error (no space, no permission, a file in the way)."""
    folder = check_folder_target(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e) or VplError(f"{folder}: cannot create output folder ({e.strerror})") from None
    return folder


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` + newline to a log file; a full disk or a missing permission is a one-line error."""
    try:
        with open(path, "a") as fh:
            fh.write(line + "\n")
    except OSError as e:
        raise_write_error(path, e)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VplError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else " (not UTF-8 text)"
        raise ContractError(f"{path}: not valid JSON{where}") from None


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def file_identity(path: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """``{"path", "sha256", **extra}``: how a stage records a file it read, to notice later that it changed."""
    return {"path": str(path), "sha256": sha256_file(path), **extra}


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, keys strings): for comparing with a record."""
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def read_log(path: str | os.PathLike, upto: int | None = None) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (those whose ``iter`` is <= ``upto`` when given).

    A last line without its newline is dropped: a write cut short (disk full, power loss) must not stop
    ``--resume``, and that iteration is past the checkpoint anyway.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")[:-1]  # the piece after the last newline is empty or torn
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if upto is None or r["iter"] <= upto]


def write_log(path: str | os.PathLike, records: list[Mapping[str, Any]]) -> Path:
    """Replace a ``log.jsonl`` by ``records``, atomically (a resumed run trims the log to its checkpoint)."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    return Path(path)


def append_log(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """One record appended to a ``log.jsonl`` (one JSON object per line)."""
    append_line(path, json.dumps(record))
