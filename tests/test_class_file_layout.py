"""Which line of a class file is the background's is never guessed (a mark, the line count, a benchmark's class
count, or --background given), and a file shifted by a missing line is refused."""

from __future__ import annotations

import warnings

import pytest

from vpltool.config import SegmentConfig
from vpltool.data.benchmarks import BENCHMARKS
from vpltool.data.class_files import ASSETS, check_class_file, class_file_queries, read_class_lines
from vpltool.errors import VplError, VplWarning
from vpltool.stages.segment import resolve_queries

NAMES = ["circle", "star", "square"]


def _file(tmp_path, *lines: str):
    path = tmp_path / "cls.txt"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_file_one_line_short_is_refused_whichever_way_its_background_is_given(tmp_path):
    with pytest.raises(VplError, match="line 2 \\(class 'star'\\) asks only 'circle', the name of class 'circle'"):
        resolve_queries(NAMES, SegmentConfig(class_file=_file(tmp_path, "grass, sky", "circle", "star"),
                                             background="none"))
    with pytest.raises(VplError, match="3 lines for the background and 3 classes: one class line is missing"):
        class_file_queries(_file(tmp_path, "background: grass, sky", "circle", "star"), 3)
    with pytest.raises(VplError, match="one class line is missing"):  # ClearCLIP's mark: 'background' alone
        class_file_queries(_file(tmp_path, "background", "circle", "star"), 3)
    with pytest.raises(VplError, match="3 lines for 3 classes and the background, which this benchmark scores"):
        class_file_queries(_file(tmp_path, "grass, sky", "round", "pointy"), 3, background_line=True)
    with pytest.raises(VplError, match="line 3 is marked 'background:'"):
        class_file_queries(_file(tmp_path, "circle", "star", "background: sky"), 3)
    fg, bg = class_file_queries(_file(tmp_path, "Background: grass, sky", "circle", "star", "square"), 3)
    assert bg == ["grass", "sky"] and fg == [["circle"], ["star"], ["square"]]
    assert class_file_queries(_file(tmp_path, "round", "pointy", "boxy"), 3, background_line=False)[1] == []
    with pytest.raises(VplError, match="3 lines for 3 classes, the first not marked"):  # not known: not guessed
        class_file_queries(_file(tmp_path, "round", "pointy", "boxy"), 3)


def test_every_bundled_file_reads_with_its_benchmarks_layout_and_passes_the_checks():
    for folder in sorted(p for p in ASSETS.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.txt")):
            bench = BENCHMARKS.get(path.stem)
            if bench is None:  # a set's file for a benchmark vpltool has no loader for: read by path alone
                continue
            names = list(bench.classes[1:] if bench.has_background else bench.classes)
            spec = f"{folder.name}:{path.stem}"
            fg, bg = class_file_queries(spec, len(names), background_line=bench.has_background)
            lines, _ = read_class_lines(spec)
            assert fg == lines[-len(names):] and bool(bg) == (len(lines) == len(names) + 1), spec
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VplWarning)  # SCLIP's coco-object asks 'bed' twice, as it ships
                check_class_file(spec, names, fg, bg)


def test_a_file_of_one_line_a_class_is_read_so_only_when_background_says_how_class_0_is_scored(tmp_path):
    # the background's line kept, the first class's missing: every reading but the file's own is refused, even with
    # synonyms on every line (no line asks only another class's name)
    for lines in (("grass, sky", "star", "square"), ("grass, sky", "star, pointy", "square, boxy"),
                  ("circle", "star", "square")):
        with pytest.raises(VplError, match="3 lines for 3 classes, the first not marked as the background's: .* "
                                           "mark that line 'background: WORDS'.*--background WORDS"):
            resolve_queries(NAMES, SegmentConfig(class_file=_file(tmp_path, *lines)))
    path = _file(tmp_path, "circle", "star", "square")
    with warnings.catch_warnings():
        warnings.simplefilter("error", VplWarning)
        assert resolve_queries(NAMES, SegmentConfig(class_file=path, background="none"))[2] == []
        synonyms, _, bg = resolve_queries(NAMES, SegmentConfig(class_file=path, background="voc"))
        assert bg == resolve_queries(NAMES, SegmentConfig())[2] and bg  # the words of a run without a class file
        assert synonyms == [["circle"], ["star"], ["square"]]
        assert resolve_queries(NAMES, SegmentConfig(class_file=path), scored_background=False)[2] == []


def test_blank_lines_at_the_end_are_no_lines_and_a_blank_line_within_is_refused(tmp_path):
    """An editor's (or a copy's) blank lines after the last class were refused as "line N is empty"; they name no
    class and shift none. A blank line between two classes would shift every class after it: still refused."""
    lines = ("background: grass, sky", "circle", "star", "square")
    want = class_file_queries(_file(tmp_path, *lines), 3)
    for tail in ("\n", "\n\n", "\r\n", "  \n\t\n"):
        path = tmp_path / "trailing.txt"
        path.write_text("\n".join(lines) + "\n" + tail)
        assert class_file_queries(str(path), 3) == want, repr(tail)
    with pytest.raises(VplError, match="line 3 is empty"):
        class_file_queries(_file(tmp_path, "background: grass, sky", "circle", "", "star", "square"), 3)
