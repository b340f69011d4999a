"""Plain files: atomic writes (regular files only, the umask respected), JSON, hashes and file identities.

Every file vpltool writes goes through :func:`atomic_path`: a temporary name in the same folder, renamed into place
only once complete, so a crash never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from ..errors import ContractError, VplError, write_error
from .digests import sha256_file  # noqa: F401 (a large file's digest kept by stat: model weights)

# the longest file name (one path component) Linux file systems take, in bytes (ext4, xfs, btrfs, tmpfs)
NAME_MAX = 255
PATH_MAX = 4096  # the longest path Linux takes, its terminating NUL included
_TMP_EXTRA = len("..XXXXXXXX.tmp")  # what an atomic write adds to a name: a dot, a dot, 8 random letters, .tmp


def name_problem(path: str | os.PathLike, room: int = 0) -> str | None:
    """Why ``path`` cannot be a file name on this system (a component longer than :data:`NAME_MAX` bytes, or the
    absolute path longer than :data:`PATH_MAX` less ``room``: what a folder keeps for the files in it), or None.
    Checked before any ``stat``, which would fail with "File name too long" (a traceback, not a line)."""
    for part in os.fsencode(path).split(b"/"):
        if len(part) > NAME_MAX:
            return f"a name of {len(part)} bytes, longer than a file name may be ({NAME_MAX} bytes)"
    full, limit = len(os.fsencode(os.path.abspath(path))), PATH_MAX - 1 - room
    if full > limit:
        within = ", leaving room for the names of the files in it" if room else ""
        return f"a path of {full} bytes, longer than a path may be ({limit} bytes{within})"
    return None


def short_path(path: str | os.PathLike) -> str:
    """``path`` for a message, each component longer than 40 characters cut to ``first…last``."""
    parts = [p if len(p) <= 40 else f"{p[:16]}…{p[-16:]}" for p in Path(path).parts]
    return str(Path(*parts)) if parts else str(path)


def is_regular_file(path: str | os.PathLike) -> bool:
    """``path`` is an existing regular file (following links); False, never an error, for anything else: a name
    too long to be a file, a loop, a folder, a device. For values that may be a file or a literal (``--classes``,
    ``--templates``)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):  # ENAMETOOLONG, ELOOP, ENOENT...; ValueError: an embedded NUL
        return False


# a value of these endings names a file, not a class name or a template: a typo in it must not become a class
_LIST_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".list", ".lst", ".names", ".text", ".yaml", ".yml")


def named_file(value: str, option: str, what: str) -> Path | None:
    """The file an option's ``value`` names, or None when the value is a literal (``a,b,c``, a template).

    An existing regular file is the file. A value that names something else that exists (a folder, ``/dev/null``)
    or that looks like a path (a ``/``, a leading ``~``, an ending such as ``.txt``) but does not exist is an error
    naming ``option`` and ``what`` the file should hold: ``--classes myclasess.txt`` must not become a class named
    ``myclasess.txt``. A value too long to be a file name is a literal.
    """
    if not value.strip():  # "" is Path("."), the current folder: an empty literal, for the option to refuse
        return None
    path = Path(value).expanduser() if value.startswith("~") else Path(value)
    if is_regular_file(path):
        return path
    if name_problem(path) is not None or "\0" in value:
        return None
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise VplError(f"{option} {value}: cannot be read ({e.strerror}); give {what}") from None
    if mode is not None:
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise VplError(f"{option} {value}: is {kind}; give {what}")
    looks_like_path = os.sep in value or value.startswith("~") or Path(value).suffix.lower() in _LIST_SUFFIXES
    if looks_like_path:
        raise VplError(f"{option} {value}: no such file; give {what}")
    return None


def not_utf8(path: Path, e: UnicodeDecodeError) -> ContractError:
    """The one-line error for a text file in another encoding (Latin-1, UTF-16, ...)."""
    data = path.read_bytes()
    source = _encoding_guess(data)
    if source.startswith("utf-16"):  # its byte-order mark says so: no line to point at, every other byte is 0
        where = f"UTF-16 text (byte-order mark {data[:2].hex(' ')})"
    else:
        line = data[: e.start].count(b"\n") + 1
        where = f"not UTF-8 text (byte 0x{data[e.start]:02x} on line {line})"
    return ContractError(f"{path}: {where}; save it as UTF-8, e.g. iconv -f {source} -t utf-8 {path.name} > "
                         f"{path.stem}.utf8{path.suffix}")


def _encoding_guess(data: bytes) -> str:
    """The encoding ``iconv -f`` should read a non-UTF-8 text file in: UTF-16 by its byte-order mark (what Windows
    tools save as "Unicode"), else Latin-1 (any byte is a Latin-1 character)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "utf-16"
    return "latin1"


COMMENT = "#"  # a line of a list file whose first non-blank character is this is a comment, in every list file


def numbered_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    """``(line number, line)`` of the non-empty, stripped lines of a UTF-8 text file (a byte-order mark, as Windows
    editors save, dropped), comment lines (:data:`COMMENT`) left out: the one rule of every list file (classes.txt,
    split files, template, background-word and ``--classes`` files; labels.csv rows too), so a name or an id never
    starts with '#' (:func:`comment_problem`). One-line errors for a missing file or another encoding."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise VplError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise not_utf8(path, e) from None
    return [(n, s) for n, s in enumerate((line.strip() for line in lines), 1) if s and not s.startswith(COMMENT)]


def comment_problem(name: str) -> str | None:
    """Why a class name or an id cannot be written in a list file, or None: one starting with '#' would be a
    comment there (:func:`numbered_lines`)."""
    return (f"starts with '{COMMENT}', which makes a comment line in every list file (classes.txt, split files, "
            "labels.csv)") if name.strip().startswith(COMMENT) else None


def text_lines(path: str | os.PathLike) -> list[str]:
    """The non-empty, stripped lines of a UTF-8 text file (:func:`numbered_lines` without the numbers)."""
    return [line for _, line in numbered_lines(path)]


def id_problem(item_id: object) -> str | None:
    """Why ``item_id`` cannot name a per-item file (``<out>/<id>.<ext>``), or None: the rule of every id, from a
    dataset or from a record (:func:`check_id`)."""
    if not isinstance(item_id, str):
        return "is not a string"
    return ("is empty" if not item_id else
            "holds a path separator" if "/" in item_id or "\\" in item_id or (os.altsep or "/") in item_id else
            "starts with a dot" if item_id.startswith(".") else
            comment_problem(item_id) if comment_problem(item_id) else
            "holds a control character" if any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 for c in item_id) else
            "is too long for a file name" if len(os.fsencode(item_id)) > NAME_MAX - len(".safetensors") else None)


def check_id(image_id: str, source: Path | str) -> str:
    """``image_id`` unchanged if it is a plain file name; a VplError naming ``source`` (the file that lists it)
    otherwise.

    Ids are data, not paths: every per-image output is ``<out>/<id>.<ext>``, so an id holding a path separator or
    ``..`` would write outside the output folder, a leading dot would hide the file (and ``..``), and a control
    character (a newline, a NUL) makes a name no tool shows faithfully. Every dataset reader calls this before
    anything is written, and so does every reader of a record's ids (:func:`vpltool.io.read_record`).
    """
    why = id_problem(image_id)
    if why is not None:
        raise VplError(f"{source}: id {image_id!r} {why}; ids name the output files (<out>/<id>.<ext>), so they must "
                       "be plain file names: rename the image (and its label row)")
    return image_id


def check_writable_target(path: str | os.PathLike, suffix: str = ".safetensors", option: str | None = None) -> Path:
    """``path`` as a Path, after refusing anything that is not a regular file (or absent).

    A device node, a FIFO or a socket must never be replaced: run as root, ``-o /dev/null`` would replace the
    system's /dev/null with a regular file. A folder is refused too (``-o`` of a file stage names a file; the
    message suggests a name in it ending in ``suffix``). ``option``: where the path came from (``--json``), for
    this message and any later one about the file (:func:`note_option`).
    """
    if option is not None:
        note_option(path, option)
    _check_target(os.fspath(path), suffix)
    return Path(path)


def _check_target(path: str, suffix: str) -> None:
    """:func:`check_writable_target` on a plain string (the writer threads write thousands of files: each
    ``Path`` costs them more than the file's ``stat``)."""
    why = name_problem(path)
    if why is not None:
        raise VplError(f"{short_path(path)}: {why}; choose a shorter {option_for(path) or 'name'}")
    try:
        mode = os.stat(path).st_mode  # follows a symlink: the link is replaced, its target judged
    except FileNotFoundError:
        return
    except OSError as e:
        raise VplError(f"{path}: cannot be written ({e.strerror}); {another(path)}") from None
    if stat.S_ISDIR(mode):
        option = option_for(path)
        raise VplError(f"{path}: is a folder; give {option} a file name (e.g. {Path(path) / 'out'}{suffix})" if option
                       else f"{path}: is a folder where this command writes a file; move the folder away")
    if not stat.S_ISREG(mode):
        raise VplError(f"{path}: exists and is not a regular file (a device, FIFO or socket); it is never "
                       f"replaced: {another(path)}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions ``open()`` would give it (0666 minus the umask), not mkstemp's private 0600, so
    collaborators in the same group can read results. An existing ``path`` that is not a regular file is refused.
    """
    with _atomic(path) as (fd, tmp):
        os.close(fd)
        yield Path(tmp)


def atomic_write(path: str | os.PathLike, chunks: Iterable[bytes | memoryview]) -> Path:
    """Write ``chunks`` one after the other as the file ``path``, atomically (as :func:`atomic_path`, through the
    temporary's own descriptor: no second open, and no joined copy of the chunks)."""
    with _atomic(path) as (fd, _), open(fd, "wb", closefd=True) as fh:
        for chunk in chunks:
            fh.write(chunk)
    return Path(path)


@contextlib.contextmanager
def _atomic(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """The shared body of :func:`atomic_path` and :func:`atomic_write`: ``path`` checked (a regular file or
    absent), then ``(descriptor, name)`` of a new temporary beside it, renamed onto ``path`` when the block
    succeeds."""
    target = os.fspath(path)
    _check_target(target, os.path.splitext(target)[1] or ".safetensors")
    # the temporary's name from before open() creates it: a Ctrl-C that lands the moment open() returns, or before
    # _renamed_onto's own cleanup is entered, must not leave it behind either
    trying: list[str] = []
    try:
        fd, tmp = _temporary(target, trying)
        with _renamed_onto(tmp, target):
            yield fd, tmp
    except BaseException:
        for name in trying:
            with contextlib.suppress(OSError):
                os.unlink(name)
        raise


def _temporary(path: str, trying: list[str]) -> tuple[int, str]:
    """A new file ``.NAME.XXXXXXXX.tmp`` beside ``path`` (its folder made if missing), open for writing;
    ``trying`` holds the name being created while ``open()`` runs (the caller removes it if a signal's exception
    lands before the name is returned: a signal arriving during the system call is raised just after it).

    Created by ``open()`` with mode 0666, exclusively: the kernel applies the umask (and a folder's default ACL), so
    the file needs no chmod and the umask is never read (reading it means setting it, which other threads see)."""
    folder, name = os.path.split(path)
    for attempt in range(100):
        tmp = os.path.join(folder, f".{_short_name(name)}.{secrets.token_hex(4)}.tmp")
        trying[:] = [tmp]
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            trying.clear()  # another's file: never removed
            continue
        except FileNotFoundError as e:  # the folder is missing: made once, then the name is tried again
            if attempt or not folder:
                raise _unwritable(path, e) from None
            _make_folder(path, folder)
        except OSError as e:
            raise _unwritable(path, e) from None
    raise VplError(f"{path}: no free temporary name beside it after 100 tries; remove its .*.tmp files")


def _make_folder(path: str, folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, e) from None


def _unwritable(path: str, e: OSError) -> VplError:
    return write_error(path, e, option=option_for(path)) or VplError(f"{path}: cannot be written ({e.strerror}); "
                                                                      f"{another(path)}")


@contextlib.contextmanager
def _renamed_onto(tmp: str, path: str) -> Iterator[None]:
    """Rename ``tmp`` onto ``path`` when the block succeeds; remove it otherwise (a failed write leaves neither a
    half file nor its temporary). A write error is the one-line error naming ``path``."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise_write_error(path, e)
        raise


def _short_name(name: str) -> str:
    """``name`` cut so that its temporary (``.NAME.XXXXXXXX.tmp``) fits a file name: a legal 250-byte output name
    must not fail for its temporary's sake. Temporaries are recognised by their ``.`` and ``.tmp`` alone."""
    raw = os.fsencode(name)
    if len(raw) + _TMP_EXTRA <= NAME_MAX:
        return name
    return os.fsdecode(raw[: NAME_MAX - _TMP_EXTRA])  # a cut multi-byte letter stays bytes: still a valid name


_OPTIONS: dict[str, str] = {}  # real path -> the option it came from, as io.check_outputs checked it


def note_option(path: str | os.PathLike, option: str) -> None:
    """Remember that ``path`` (an output file or folder) came from ``option`` (``--out``, ``--json``; a description
    such as "metrics" is no option and is not remembered), so that an error about a file in it names that option
    (:func:`option_for`)."""
    option = option.split()[0]
    if option.startswith("--"):
        _OPTIONS[os.path.realpath(path)] = option


def forget_options() -> None:
    """Forget every :func:`note_option` (a new command begins: :func:`vpltool.io.run_outputs`)."""
    _OPTIONS.clear()


def option_for(path: str | os.PathLike) -> str | None:
    """The option ``path`` came from: its own or its nearest folder's (:func:`note_option`); None when no option
    names it (a file the command names itself, such as ``RUN/metrics/pseudo_choice.json``)."""
    real = Path(os.path.realpath(path))
    return next((_OPTIONS[str(p)] for p in (real, *real.parents) if str(p) in _OPTIONS), None)


def another(path: str | os.PathLike) -> str:
    """The end of a message asking for another output: "choose another --json", or, for a path no option names,
    "move it away" (there is no option to change)."""
    option = option_for(path)
    return f"choose another {option}" if option else "move it away (this command always writes there)"


def raise_write_error(path: str | os.PathLike, e: OSError) -> NoReturn:
    """Re-raise ``e`` as the one-line error naming ``path`` (and the option it came from) when the user can fix it;
    unchanged otherwise."""
    error = write_error(path, e, option=option_for(path))
    if error is None:
        raise e
    raise error from None


def check_folder_target(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, after refusing an existing path that is not a folder (a file, a FIFO, a device).

    Stages call it on every output folder before loading a model, so a wrong ``--out`` costs nothing.
    """
    folder = Path(folder)
    why = name_problem(folder, room=NAME_MAX + 1)  # before any stat: "File name too long" would be a traceback
    if why is not None:
        raise VplError(f"{short_path(folder)}: {why}; choose a shorter {option_for(folder) or 'output'} path")
    if folder.exists() and not folder.is_dir():
        raise VplError(f"{folder}: exists and is not a folder; {another(folder)}")
    return folder


def make_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p`` with a one-line error (no space, no permission, a file in the way)."""
    folder = check_folder_target(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(folder, e, option=option_for(folder)) or VplError(
            f"{folder}: cannot create output folder ({e.strerror})") from None
    return folder


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` + newline to a log file; a full disk or a missing permission is a one-line error."""
    try:
        with open(path, "a") as fh:
            fh.write(line + "\n")
    except OSError as e:
        raise_write_error(path, e)


def write_json(path: str | os.PathLike, obj: Any, kind: str | None = None) -> Path:
    """``obj`` as indented JSON, atomically; ``kind``: a file output's kind, recorded in it
    (:func:`vpltool.io.marks.marked`: ``check_outputs`` replaces only a file of the same kind)."""
    if kind is not None:
        from .marks import marked

        obj = marked(obj, kind)
    return atomic_write(path, [(json.dumps(obj, indent=2, default=str) + "\n").encode()])


def write_text(path: str | os.PathLike, text: str) -> Path:
    """A UTF-8 text file (a page, a script), atomically."""
    return atomic_write(path, [text.encode("utf-8")])


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise VplError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" ({e.msg} at line {e.lineno})" if isinstance(e, json.JSONDecodeError) else " (not UTF-8 text)"
        raise ContractError(f"{path}: not valid JSON{where}") from None


def file_identity(path: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """``{"path", "sha256", **extra}``: how a stage records a file it read, to notice later that it changed."""
    return {"path": str(path), "sha256": sha256_file(path), **extra}


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, keys strings): for comparing with a record."""
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def by_content(obj: Any) -> Any:
    """``obj`` (as read back from JSON) with every identity of local bytes reduced to its content, the one rule by
    which records are compared (a resume, the next shard, the next stage): the same bytes by another path are the
    same input, other bytes under the same name are not.

    * a file or folder (a dict holding a ``sha256``): its ``path`` dropped, so that ``-p ./t.safetensors`` and
      ``-p /abs/t.safetensors`` compare equal;
    * a CLIP whose weights are local bytes (a dict holding ``weights``, their digest:
      :mod:`vpltool.models.backbones.local_weights`): where they were read from dropped, so that a ``local-dir:`` folder
      reached through a symlink or renamed, or a ``--pretrained`` file moved, is the same model. That is
      ``pretrained`` (the file, or ``none`` for a folder) and, for a folder (``pretrained`` ``none``), ``model``
      (``local-dir:DIR`` or a registered alias: its config is among the digested files); a file's ``model`` is its
      architecture, and stays."""
    if isinstance(obj, dict):
        return {k: by_content(v) for k, v in obj.items() if k not in _located(obj)}
    if isinstance(obj, list):
        return [by_content(v) for v in obj]
    return obj


def _located(identity: dict[str, Any]) -> tuple[str, ...]:
    """The keys of ``identity`` that say where its bytes lie rather than what they are (:func:`by_content`)."""
    if "sha256" in identity:
        return ("path",)
    if isinstance(identity.get("weights"), str) and "model" in identity:
        return ("pretrained", "model") if identity.get("pretrained", "none") == "none" else ("pretrained",)
    return ()
