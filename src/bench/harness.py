"""What the two benchmarks share (``python -m src.bench`` and ``--decode``): the dtypes they measure in and their
command line -- settings, checks, measuring each cell with a line of progress, the files in ``--out``, the table."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch

from src.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUT = Path("outputs/bench")  # the default --out: OUT/PREFIX + timestamp


def name_list(text: str) -> tuple[str, ...]:
    """'a, b,c' -> ('a', 'b', 'c')."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def command_line(parse: Callable, check: Callable, describe: Callable, measure: Callable, write_files: Callable,
                 show: Callable, prefix: str = "") -> int:
    """A benchmark's command line: settings -> check -> measure, logging each cell -> files in ``--out`` (default
    outputs/bench/PREFIX + timestamp) -> the table; a bad argument ends with one line ``error: ...`` and status 2."""
    try:
        s = parse()
        check(s)
        out = Path(s.out) if s.out else OUT / datetime.now().strftime(f"{prefix}%Y-%m-%d_%H-%M-%S")
        print(f"{describe(s)}; torch {torch.__version__}; writing to {out}/", flush=True)
        start = time.perf_counter()
        rows = measure(s, log=lambda line: print(line, flush=True))
        if not rows:
            raise UserError("nothing was measured (every cell was skipped, see above)")
        elapsed = time.perf_counter() - start
        paths = write_files(rows, s, out, elapsed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + show(rows))
    print(f"took {elapsed:.0f} s; wrote " + " ".join(str(p) for p in paths))
    return 0


def write_bench(out: Path, name: str, title: str, rows: list[dict], s, table: str, figure: Callable,
                notes: str, elapsed: float | None) -> list[Path]:
    """A benchmark's files in ``out``: NAME.csv, NAME.json (machine, settings, label, notes), NAME.md (``title``, the
    machine and settings, ``table``) and NAME.png (``figure(rows, label)``, src/report/figures.py)."""
    from dataclasses import asdict

    from src.bench.timing import machine_info
    from src.config import resolve_device
    from src.report.figures import save
    from src.report.tables import write_report

    info = machine_info(resolve_device(s.device, "--device"))
    label = s.describe(info["device_name"])
    markdown = f"# Measured: {title}\n\n{label}; torch {info['torch']}.\n\n{table}\n"
    return write_report(out, name, rows, markdown, lambda path: save(figure(rows, label), path),
                        meta={"machine": info, "settings": asdict(s), "label": label, "elapsed_s": elapsed,
                              "notes": notes})

