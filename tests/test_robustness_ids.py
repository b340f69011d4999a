"""The review's list of bad inputs (tests/data/robustness-round11.tsv: id, area, grade, command, note) and the rows of
docs/robustness.md: every id has exactly one row (a case of ``robustness_cases.py`` naming it, ``tsv=``), no row
names an id the list lacks, and the page shows each row's id in its case column."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import robustness_cases as rc  # tests/ is on sys.path

LIST = Path(__file__).parent / "data" / "robustness-round11.tsv"


def _ids() -> list[str]:
    with LIST.open(newline="") as f:
        return [row["case"] for row in csv.DictReader(f, delimiter="\t")]


def test_the_list_is_the_review_s_cases():
    ids = _ids()
    assert len(ids) == len(set(ids)) == 43, Counter(ids).most_common(3)


def test_every_id_of_the_list_has_exactly_one_row():
    named = Counter(c.tsv for c in rc.CASES if c.tsv)
    ids = set(_ids())
    assert sorted(ids - set(named)) == [], "ids of the list without a row"
    assert sorted(set(named) - ids) == [], "rows naming an id the list lacks"
    assert [i for i, n in named.items() if n > 1] == [], "ids with more than one row"


def test_the_page_shows_each_row_s_id_in_its_case_column():
    outcome = rc.Outcome(exit_code=2, error_lines=["error: x"], last_line="error: x", traceback=False)
    for c in (c for c in rc.CASES if c.tsv):
        row = rc.render([(c, "vpltool x", outcome)]).splitlines()[-1]
        assert row.split(" | ")[0] == f"| {c.name} (`{c.tsv}`)", row
    plain = next(c for c in rc.CASES if not c.tsv)
    assert "(`" not in rc.render([(plain, "vpltool x", outcome)]).splitlines()[-1].split(" | ")[0]
