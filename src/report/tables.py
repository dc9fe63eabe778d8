"""Tables and their files, for every benchmark, analysis and stage: a markdown table (``markdown_table``), a CSV
(``write_csv``), one table as STEM.csv, STEM.json, STEM.md and STEM.png (``write_report``), and the number formats
every table prints with."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Callable

from src.errors import UserError


def num(value, spec: str = ".4g") -> str:
    """A number as ``format(value, spec)``; '–' for a missing or non-finite one."""
    if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec) if isinstance(value, (int, float)) else str(value)


def percent(share) -> str:
    """A share as a percentage, one decimal: 0.625 -> '62.5%'; '–' when unknown."""
    return "–" if num(share) == "–" else f"{100 * share:.1f}%"


def millions(x: float) -> str:
    """67108864 -> '67.1' (units of 10⁶, one decimal, thousands separated)."""
    return f"{x / 1e6:,.1f}"


def megabytes(nbytes: float | None) -> str:
    """Bytes -> MB (10⁶ bytes), one decimal; three where that would show 0.0; '–' when unknown."""
    if nbytes is None:
        return "–"
    return millions(nbytes) if nbytes >= 0.05e6 else f"{nbytes / 1e6:.3f}"


def times(x: float | None) -> str:
    """2.2857 -> '2.29×'."""
    return "–" if x is None else f"{x:.2f}×"


def markdown_table(header: list[str], rows: list[list], align: str) -> str:
    """A markdown table; ``align`` has one 'l' (left) or 'r' (right) per column; cells are written with str()."""
    rule = ["---:" if a == "r" else "---" for a in align]
    return "\n".join("| " + " | ".join(str(c) for c in r) + " |" for r in [header, rule, *rows])


def write_csv(path: Path, rows: list[dict], columns=None) -> None:
    """One row per dict, the columns ``columns`` or the first row's keys."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns or rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(out: Path, stem: str, rows: list[dict], markdown: str, plot_to: Callable[[Path], None],
                 meta: dict | None = None, columns=None, fix: str = "pass another folder with --out") -> list[Path]:
    """OUT/STEM.csv (one row per dict, ``columns`` or the first row's keys), .json (``meta`` with the rows under
    "rows"; without ``meta``, the rows alone), .md (``markdown``) and .png (``plot_to(path)``). A folder that cannot
    be written ends with one line naming it and ``fix``."""
    paths = [out / f"{stem}.{ext}" for ext in ("csv", "json", "md", "png")]
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(paths[0], rows, columns)
        paths[1].write_text(json.dumps(rows if meta is None else {**meta, "rows": rows}, indent=2) + "\n")
        paths[2].write_text(markdown)
        plot_to(paths[3])
    except OSError as e:
        raise UserError(f"cannot write to {out}: {e.strerror or e}; {fix}") from None
    return paths
