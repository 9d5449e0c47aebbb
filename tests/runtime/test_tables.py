"""The table formats: what predict writes, drift reads back, column for column."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgpipe.runtime.tables import TABLE_FORMATS, TABLE_SUFFIXES


@pytest.mark.parametrize("suffix", TABLE_SUFFIXES)
def test_rows_written_are_the_rows_read(suffix: str, tmp_path: Path) -> None:
    rows = [
        {"path": "a.png", "confidence": 0.5, "extra": 1},
        {"path": "b.png", "confidence": 1.0, "extra": 2},
    ]
    write, read = TABLE_FORMATS[suffix]
    target = tmp_path / f"table{suffix}"
    write(rows, ["path", "confidence", "extra"], target)
    table = read(target)
    assert list(table.columns) == ["path", "confidence", "extra"]
    assert table.to_dict("records") == rows


def test_csv_and_json_lines_are_plain_text(tmp_path: Path) -> None:
    rows = [{"path": "a.png", "confidence": 0.5}]
    TABLE_FORMATS[".csv"][0](rows, ["path", "confidence"], tmp_path / "t.csv")
    TABLE_FORMATS[".jsonl"][0](rows, ["path", "confidence"], tmp_path / "t.jsonl")
    assert (tmp_path / "t.csv").read_bytes() == b"path,confidence\r\na.png,0.5\r\n"
    assert (tmp_path / "t.jsonl").read_text() == '{"path": "a.png", "confidence": 0.5}\n'
