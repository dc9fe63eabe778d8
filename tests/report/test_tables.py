"""Tables and their files (src/report/tables.py)."""

from __future__ import annotations

import csv
import json
import os

import pytest

from src.errors import UserError
from src.report.tables import write_report


def test_four_files(tmp_path):
    rows = [{"L": 1024, "speedup": 1.5}, {"L": 2048, "speedup": 3.0}]
    paths = write_report(tmp_path / "out", "t", rows, "# table\n", lambda p: p.write_bytes(b"png"),
                         meta={"machine": "x"})
    assert [p.name for p in paths] == ["t.csv", "t.json", "t.md", "t.png"]
    assert list(csv.DictReader(paths[0].open())) == [{"L": "1024", "speedup": "1.5"}, {"L": "2048", "speedup": "3.0"}]
    assert json.loads(paths[1].read_text()) == {"machine": "x", "rows": rows}
    assert paths[2].read_text() == "# table\n" and paths[3].read_bytes() == b"png"
    write_report(tmp_path / "plain", "t", rows, "", lambda p: None)
    assert json.loads((tmp_path / "plain" / "t.json").read_text()) == rows  # no meta: the rows alone


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder_is_one_line(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write to .*: pass another folder with --out"):
            write_report(tmp_path / "out", "t", [{"a": 1}], "", lambda p: None)
    finally:
        tmp_path.chmod(0o700)


def test_a_file_in_the_way_is_one_line(tmp_path):
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(UserError, match="cannot write to .*out"):
        write_report(tmp_path / "out", "t", [{"a": 1}], "", lambda p: None)
