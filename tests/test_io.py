from pathlib import Path

import pytest

from imgpipe.io import atomic_path, read_json, write_json


def test_file_appears_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_folder_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "tree"
    (target / "stale").mkdir(parents=True)
    with atomic_path(target) as temporary:
        (temporary / "fresh").mkdir(parents=True)
    assert [p.name for p in target.iterdir()] == ["fresh"]
    assert [p.name for p in tmp_path.iterdir()] == ["tree"]


def test_json_is_stable(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    assert read_json(tmp_path / "a.json") == {"a": [1.5], "b": 1}
