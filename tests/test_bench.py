"""bench/'s shared helpers: docs/RESULTS.md sections are replaced in place, atomically, and the
boards table keeps the rows of boards that were not rebuilt."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import boards
    import results

    yield results, boards
    for name in ("results", "boards"):
        sys.modules.pop(name, None)


def test_update_section_replaces_only_its_block(bench, tmp_path):
    results, _ = bench
    doc = tmp_path / "R.md"
    results.update_section("a", "first A", doc)
    results.update_section("b", "only B", doc)
    results.update_section("a", "second A", doc)
    text = doc.read_text()
    assert text.startswith(results.HEADER)
    assert "first A" not in text and "second A" in text and "only B" in text
    assert text.index("second A") < text.index("only B")  # a stays where it was
    assert [p.name for p in tmp_path.iterdir()] == ["R.md"]  # no temporary files left


def test_boards_table_keeps_other_boards(bench, tmp_path):
    results, boards = bench
    doc = tmp_path / "R.md"
    row = ["icebreaker", "8", *["x"] * (len(boards.HEADER) - 2)]
    results.update_section("boards", results.markdown_table(boards.HEADER, [row]), doc)
    assert boards.previous_rows(doc) == {"icebreaker": row}
    # a table with another header (an older layout) is not reused
    results.update_section("boards", results.markdown_table(["board", "lanes"], [row[:2]]), doc)
    assert boards.previous_rows(doc) == {}
