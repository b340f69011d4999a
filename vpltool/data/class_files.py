"""Class files in the references' format (``configs/cls_<benchmark>.txt`` of SCLIP, NACLIP, ClearCLIP, ...): one line a
class, in the order of the dataset's label values, each line the class's queries separated by commas (SCLIP and
NACLIP ask for VOC's boat as 'ship', give person seven phrasings, and put 26 background words on the first line of
a benchmark with background; ClearCLIP asks 'background'). Each query is its own text row; the class scores as the
max over its rows (the references' ``query_idx``) and is written, and scored by `eval`, as the dataset's class.

Two separators, as the references' own readers (each ``get_cls_idx``) split: SCLIP, NACLIP and ClearCLIP split a
line at ``', '`` or ``','``; ProxyCLIP and Trident at ``'; '`` (their VOC21 background line is 26 words separated by
``; ``, and their ADE20K-847 names such as ``building, edifice`` are one query each). A file with a ``;`` on any
line is read in the second format (every line split at ``;``, commas kept inside a query), any other file in the
first (split at ``,``); each query is stripped (CLIP's tokenizer drops the spaces the references keep). An empty
line or an empty query (a trailing separator) is refused: the references would encode the empty string as a
query. Blank lines at the end of the file are no lines (they shift no class). A ``|`` (``--classes``' synonym mark)
or a query starting with ``#`` (a comment in every other list file) is refused too, rather than encoded as text.

Which line is the background's is never guessed. The first line is the background's when it is marked
(``background: sky, wall, ...``, or a line whose only query is ``background``, as ClearCLIP's), or when the file has
one line more than the dataset has classes (the references' files). A benchmark decides the rest by its class
count: VOC21, Context60 and COCO-Object score a background class, so their file takes the background's line; a file
one line short is refused rather than read shifted. On another dataset a file of one line a class, none marked,
reads the same as a file whose first line is the background's and which lacks one class line (its first class then
asks the background's words): it is refused, unless the run says how its background is scored (``--background``
given: the file has no background line). A class line whose only query is the name of another class (what a missing
or extra line makes of a file of names) is refused.

The files they ship are bundled (``vpltool/assets/class_files/<set>/<benchmark>.txt``) and named
``SET:BENCHMARK``: ``sclip:voc21`` (SCLIP's, NACLIP's, SC-CLIP's and CASS's files are byte-identical),
``clearclip:voc21`` (ClearCLIP's, which differ for voc21, voc20 and coco-object), ``proxyclip:voc21``
(mc-lan/ProxyCLIP@e7b767f's ``configs/cls_*.txt``, which Trident ships too: one query for person and for tvmonitor,
a 26-word background line separated by ``; ``; also ``proxyclip:ade847`` and ``proxyclip:context459``) or
``corrclip:voc21`` (zdk258/CorrCLIP@103bc18's ``CorrCLIPv1/configs/cls_*.txt``: "people" where the others ask
"person"). A method names its reference's set in its spec row (:data:`vpltool.config.dense.DENSE_SPECS`,
``class_files``), so a new set is a folder of files here and one name there. Torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import io
from ..config.dense import DENSE_SPECS
from ..errors import VplError
from ..plugins.entry_points import DerivedMap

BACKGROUND_WORD = "background"
ASSETS = Path(__file__).resolve().parent.parent / "assets" / "class_files"
# a method -> the bundled set its reference's configs/ ship: its spec row's (verified byte for byte:
# parity/results/benchmarks_parity.json); a set is also named by its folder
REFERENCE_SETS = DerivedMap(lambda: {name: spec.class_files for name, spec in DENSE_SPECS.items() if spec.class_files},
                            DENSE_SPECS)


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
        raise VplError(f"--class-file {path}: not found; give a file with one line a class (queries separated by "
                       "',' or '; ') or a bundled SET:BENCHMARK such as sclip:voc21")
    return path


def is_class_set(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` names a bundled set alone (``sclip``, ``clearclip``, or a reference such as ``naclip``), not a
    file: `benchmark` then takes each benchmark's own file of it (``sclip:voc20`` for VOC20)."""
    text = os.fspath(spec)
    return ":" not in text and not Path(text).exists() and (text in REFERENCE_SETS or (ASSETS / text).is_dir())


BACKGROUND_MARK = "background:"  # at the start of the first line: the line is the background's queries


def read_class_file(spec: str | os.PathLike) -> list[list[str]]:
    """The queries of each line of a class file, in order (``[[q, ...], ...]``, one list per class); a first
    line's :data:`BACKGROUND_MARK` is dropped (:func:`read_class_lines` says whether it was there).

    Raises:
        VplError: an empty line or an empty query (one line naming the file and the line), or an unreadable file.
    """
    return read_class_lines(spec)[0]


def read_class_lines(spec: str | os.PathLike) -> tuple[list[list[str]], bool]:
    """``(queries of each line, whether the first line is marked as the background's)``: marked by
    :data:`BACKGROUND_MARK` or by ``background`` as its only query. The mark on a later line is refused."""
    path = class_file_path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise VplError(f"{path}: unreadable class file ({e}); save it as UTF-8 text") from None
    lines = text.split("\n")
    while lines and not lines[-1].strip():  # the newline that ends the last line (readlines() gives no line for it),
        lines.pop()  # and blank lines after it (an editor's, or a copy's): they name no class, nor shift one
    marked = bool(lines) and lines[0].lstrip().casefold().startswith(BACKGROUND_MARK)
    if marked:
        lines[0] = lines[0].lstrip()[len(BACKGROUND_MARK):]
    late = next((n for n, line in enumerate(lines[1:], start=2)
                 if line.lstrip().casefold().startswith(BACKGROUND_MARK)), None)
    if late is not None:
        raise VplError(f"{path}: line {late} is marked '{BACKGROUND_MARK}', but the background's line is the first; "
                       "move it to the top")
    sep = query_separator(lines)
    out = []
    for number, line in enumerate(lines, start=1):
        queries = [q.strip() for q in line.rstrip("\r").split(sep)]
        if not any(queries):
            raise VplError(f"{path}: line {number} is empty; each line is one class (its queries separated by "
                           f"'{sep} '): remove the line or name the class")
        if not all(queries):
            raise VplError(f"{path}: line {number} has an empty query ({line.strip()!r}); remove the extra '{sep}'")
        odd = next((q for q in queries if "|" in q or q.startswith("#")), None)
        if odd is not None:
            why = ("holds '|', --classes' synonym mark; in a class file a line's queries are separated by "
                   f"'{sep} ': write {odd.replace('|', sep + ' ')!r}" if "|" in odd else
                   "starts with '#', which would be encoded as text (class files have no comments): remove it")
            raise VplError(f"{path}: line {number}: query {odd!r} {why}")
        out.append(queries)
    if not out:
        raise VplError(f"{path}: no classes; write one line a class")
    return out, marked or [q.casefold() for q in out[0]] == [BACKGROUND_WORD]


def query_separator(lines: list[str]) -> str:
    """``';'`` for a file in ProxyCLIP's and Trident's format (a ``;`` on any line), else ``','`` (SCLIP's,
    NACLIP's, ClearCLIP's): one separator for the whole file, so a comma inside a ``;``-separated query is kept."""
    return ";" if any(";" in line for line in lines) else ","


def check_class_file(spec: str | os.PathLike, names: list[str], synonyms: list[list[str]],
                     background: list[str]) -> None:
    """The checks ``--classes`` gets (:func:`vpltool.config.presets.check_class_names`), for a class file laid over the
    dataset's class ``names``: a query in two classes, or 'background' as a class's query, is one line; so is a
    class whose only query is another class's name (the file is shifted by a missing or extra line). A
    background query that is also a class's query is warned about, not refused: SCLIP's own coco-object file asks
    ``bed`` on both lines, and a reference's file is run as it ships."""
    import warnings

    from ..config import presets
    from ..errors import VplWarning

    path = class_file_path(spec)
    presets.check_class_names(names, f"--class-file {path}", synonyms)
    key = lambda word: word.replace("_", " ").strip().casefold()  # noqa: E731 (as check_class_names compares)
    index = {key(name): i for i, name in enumerate(names)}
    first = len(read_class_file(spec)) - len(names) + 1  # the file's line of class 1
    for i, queries in enumerate(synonyms):
        other = index.get(key(queries[0])) if len(queries) == 1 else None
        if other is not None and other != i:
            raise VplError(f"--class-file {path}: line {first + i} (class {names[i]!r}) asks only {queries[0]!r}, the "
                           f"name of class {names[other]!r}: a line missing or one too many shifts every class "
                           "after it; give one line a class in the dataset's order (the background's first, marked "
                           f"'{BACKGROUND_MARK}')")
    clash = presets.clashing_word([presets.BACKGROUND, *(q for s in synonyms for q in s)], background)
    if clash is not None:
        warnings.warn(VplWarning(f"--class-file {path}: {clash!r} is a query of the background's line and of a "
                                 "class's; the background row takes part of that class's probability (kept, as "
                                 "the references run it)"), stacklevel=2)


def class_file_queries(spec: str | os.PathLike, n_foreground: int, background_line: bool | None = None
                       ) -> tuple[list[list[str]], list[str]]:
    """A class file laid over ``n_foreground`` classes: ``(queries of classes 1..C, background queries)``.

    A file of ``C + 1`` lines, or one whose first line is marked (:data:`BACKGROUND_MARK`, or ``background``
    alone), gives class 0 (background) its first line. ``background_line``: whether the file must hold the
    background's line (True: a benchmark with a background class, VOC21, Context60, COCO-Object), must not (False:
    a benchmark without one, or a run whose ``--background`` gives class 0's queries), or is not known (None: any
    other dataset under ``--background auto``). Unknown, a file of ``C`` unmarked lines is refused: it reads the
    same as the background's line followed by ``C - 1`` class lines, one missing. Any other count is one line.
    """
    lines, marked = read_class_lines(spec)
    path = class_file_path(spec)
    if len(lines) == n_foreground + 1:
        return lines[1:], lines[0]
    if len(lines) == n_foreground and marked:
        raise VplError(f"{path}: {len(lines)} lines for the background and {n_foreground} classes: one class line is "
                       f"missing; give one line a class in the dataset's order ({n_foreground + 1} lines in all)")
    if len(lines) == n_foreground and background_line:
        raise VplError(f"{path}: {len(lines)} lines for {n_foreground} classes and the background, which this "
                       f"benchmark scores: give the background's queries on the first line, then one line a class "
                       f"in the dataset's order ({n_foreground + 1} lines in all)")
    if len(lines) == n_foreground and background_line is None:
        raise VplError(f"{path}: {len(lines)} lines for {n_foreground} classes, the first not marked as the "
                       "background's: a file whose first line is the background's and which lacks one class line "
                       "reads the same; mark that line 'background: WORDS' (and give every class a line), or, if "
                       "every line is a class, say how the background is scored: --background WORDS, voc or coco (the "
                       "default lists) or none (--prob-threshold alone)")
    if len(lines) == n_foreground:
        return lines, []
    raise VplError(f"{path}: {len(lines)} lines for {n_foreground} classes; give one line a class in the dataset's "
                   f"order ({n_foreground} lines, or {n_foreground + 1} with the background's words first)")


CLASSES_FILE = "a file with one class name per line, or names a,b,c"


def parse_class_names(spec: str) -> tuple[str, ...]:
    """``--classes``: a file with one class name per line (UTF-8, blank lines skipped) or ``a,b,c``; names
    stripped. A value that looks like a file but is none (a typo, a folder, ``/dev/null``) is an error, never a
    class name (:func:`vpltool.io.named_file`). The names are checked by :class:`PredictConfig` (non-empty, no
    duplicates, no 'background')."""
    path = io.named_file(spec, "--classes", CLASSES_FILE)
    if path is not None:
        return tuple(io.text_lines(path))
    return tuple(name.strip() for name in spec.split(","))


__all__ = ["ASSETS", "BACKGROUND_MARK", "CLASSES_FILE", "REFERENCE_SETS", "is_class_set", "class_file_path",
           "read_class_file", "read_class_lines", "query_separator", "check_class_file", "class_file_queries",
           "parse_class_names"]
