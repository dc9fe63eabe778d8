"""A run's JSON records (metrics.json, results.json, error.json): written without NaN, read leniently."""

from __future__ import annotations

import json
import math
from pathlib import Path


def finite(data):
    """``data`` with every NaN or infinite float replaced by None (JSON has no NaN)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


def scalar_metrics(metrics: dict) -> dict[str, float | None]:
    """Lightning's metrics (tensors or floats) as plain floats, None where not finite."""
    return {k: finite(float(v)) for k, v in metrics.items()}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
