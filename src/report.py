"""The files every benchmark and analysis writes: one table as STEM.csv, STEM.json, STEM.md and STEM.png."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from src.errors import UserError


def write_report(out: Path, stem: str, rows: list[dict], markdown: str, plot_to: Callable[[Path], None],
                 meta: dict | None = None, columns=None, fix: str = "pass another folder with --out") -> list[Path]:
    """OUT/STEM.csv (one row per dict, ``columns`` or the first row's keys), .json (``meta`` with the rows under
    "rows"; without ``meta``, the rows alone), .md (``markdown``) and .png (``plot_to(path)``). A folder that cannot
    be written ends with one line naming it and ``fix``."""
    paths = [out / f"{stem}.{ext}" for ext in ("csv", "json", "md", "png")]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with paths[0].open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(columns or rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        paths[1].write_text(json.dumps(rows if meta is None else {**meta, "rows": rows}, indent=2) + "\n")
        paths[2].write_text(markdown)
        plot_to(paths[3])
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror or e}; {fix}") from None
    return paths
