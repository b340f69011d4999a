"""Class files in the references' format (``configs/cls_<benchmark>.txt`` of SCLIP, NACLIP, ClearCLIP, ...): one line a
class, in the order of the dataset's label values, each line the class's queries separated by commas (SCLIP and
NACLIP ask for VOC's boat as 'ship', give person seven phrasings, and put 26 background words on the first line of
a benchmark with background; ClearCLIP asks 'background'). Each query is its own text row; the class scores as the
max over its rows (the references' ``query_idx``) and is written, and scored by `eval`, as the dataset's class.

The references split a line at ``', '`` (SCLIP, NACLIP) or ``','`` (ClearCLIP, without stripping); here a line is
split at ``','`` and each query stripped, which reads every file they ship the same way. An empty line or an empty
query (a trailing comma) is refused: the references would encode the empty string as a query.

The files they ship are bundled (``vpltool/assets/class_files/<set>/<benchmark>.txt``) and named
``SET:BENCHMARK``: ``sclip:voc21`` (SCLIP's, NACLIP's, SC-CLIP's and CASS's files are byte-identical) or
``clearclip:voc21`` (ClearCLIP's, which differ for voc21, voc20 and coco-object). Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import VplError

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "class_files"
# a reference -> the bundled set its configs/ ship (verified byte for byte: parity/results/benchmarks_parity.json)
REFERENCE_SETS = {"sclip": "sclip", "naclip": "sclip", "sc-clip": "sclip", "cass": "sclip", "clearclip": "clearclip",
                  "maskclip": "clearclip", "none": "clearclip"}


def class_file_path(spec: str | os.PathLike) -> Path:
    """``SET:BENCHMARK`` (a bundled file) or a path -> the file; one line when neither exists."""
    text = os.fspath(spec)
    if ":" in text and not Path(text).exists():
        ref, _, bench = text.partition(":")
        path = ASSETS / REFERENCE_SETS.get(ref, ref) / f"{bench}.txt"
        if path.is_file():
            return path
        sets = sorted(p.name for p in ASSETS.iterdir() if p.is_dir())
        raise VplError(f"--class-file {text}: no bundled class file; give SET:BENCHMARK with SET one of "
                       f"{', '.join(sets)} (or {', '.join(sorted(REFERENCE_SETS))}) and BENCHMARK one of "
                       f"{', '.join(sorted(p.stem for p in (ASSETS / 'sclip').glob('*.txt')))}, or a file path")
    path = Path(text).expanduser()
    if not path.is_file():
        raise VplError(f"--class-file {path}: not found; give a file with one line a class (comma-separated "
                       "queries) or a bundled SET:BENCHMARK such as sclip:voc21")
    return path


def read_class_file(spec: str | os.PathLike) -> list[list[str]]:
    """The queries of each line of a class file, in order (``[[q, ...], ...]``, one list per class).

    Raises:
        VplError: an empty line or an empty query (one line naming the file and the line), or an unreadable file.
    """
    path = class_file_path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VplError(f"{path}: unreadable class file ({e}); save it as UTF-8 text") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":  # the newline that ends the last line (readlines() gives no line for it)
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        queries = [q.strip() for q in line.rstrip("\r").split(",")]
        if not any(queries):
            raise VplError(f"{path}: line {number} is empty; each line is one class (its queries comma-separated): "
                           "remove the line or name the class")
        if not all(queries):
            raise VplError(f"{path}: line {number} has an empty query ({line.strip()!r}); remove the extra comma")
        out.append(queries)
    if not out:
        raise VplError(f"{path}: no classes; write one line a class")
    return out


def class_file_queries(spec: str | os.PathLike, n_foreground: int) -> tuple[list[list[str]], list[str]]:
    """A class file laid over ``n_foreground`` classes: ``(queries of classes 1..C, background queries)``.

    A file of ``C + 1`` lines gives class 0 (background) its first line; a file of ``C`` lines has no background
    queries (as the references run a benchmark without background: class 0 then only through
    ``--prob-threshold``). Any other count is one line.
    """
    lines = read_class_file(spec)
    if len(lines) == n_foreground + 1:
        return lines[1:], lines[0]
    if len(lines) == n_foreground:
        return lines, []
    path = class_file_path(spec)
    raise VplError(f"{path}: {len(lines)} lines for {n_foreground} classes; give one line a class in the dataset's "
                   f"order ({n_foreground} lines, or {n_foreground + 1} with the background's words first)")


__all__ = ["ASSETS", "REFERENCE_SETS", "class_file_path", "read_class_file", "class_file_queries"]
