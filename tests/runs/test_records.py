"""A run's JSON records (src/runs/records.py)."""

from __future__ import annotations

import json

from src.runs.records import finite, write_json


def test_write_json_has_no_nan(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2.5}})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": None, "b": [1.0, None], "c": {"d": 2.5}}
    assert finite((1, float("-inf"))) == [1, None]
