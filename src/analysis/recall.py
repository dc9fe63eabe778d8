"""Needle in a haystack: ``python -m src.analyze recall DIR`` over a run on ``data=recall`` -- an evaluate run (or a
pipeline, or its evaluate step) or a teacher run -- or a multirun of evaluate jobs (one selector at one budget each,
at one or more ``model.seq_len``, e.g. ``+experiment=budget_curve data=recall``).

Every model is a heatmap panel and a table row per context length: the teacher (measured by the evaluate step on
the same episodes as its hybrid: one teacher per context length, the first job's) and each hybrid, named by its
selector and budget (src/analysis/budget_curve.py's lines). The panels show the share of the test episodes' answers
recalled exactly (src/stages/probes.py) per task and needle depth; the table gives per task the share over all
depths and the worst depth, a hybrid's share of the teacher's answers at its worst depth (``kept``: its share over
the teacher's, per depth the teacher answers), the copy probe (the loss on a passage's second appearance over its
first, per gap) and the test loss change on the filler against the teacher.

Writes DIR/recall.csv, recall.json, recall.md and recall.png.
"""

from __future__ import annotations

import re
from pathlib import Path

from src.analysis.budget_curve import fraction_text, selector_columns
from src.analysis.explore import run_config
from src.analysis.jobs import job_status, jobs_of
from src.analysis.sweep import write_tables
from src.costs.accounting import run_budget
from src.data.recall import TASKS
from src.errors import UserError
from src.report.tables import markdown_table, num, percent
from src.runs.folders import RECORD

MAKE = "python -m src.train -m +experiment=budget_curve data=recall"  # a multirun this analysis reads
FIX = (f"run evaluate with data=recall: `python -m src.train +experiment=pipeline data=recall`, or a budget sweep "
       f"`{MAKE}`")

BASE = ("job", "status", "data", "seq_len", "model", "panel", "selector", "level", "budget", "budget_keys", "mass",
        "loss_change_pct")
DEPTH = re.compile(r"^(?P<task>[a-z_]+)_d(?P<depth>[0-9.]+)$")  # a column of one task (passkey, passkey_greedy)
#                                                                  at one needle depth
GAP = re.compile(r"^copy_g(?P<gap>[0-9]+)$")  # a column of the copy probe at one gap


def budget_text(cfg: dict) -> str:
    """The budget as the job set it: keys per query ('256') or a fraction of T ('T/8'), the same at every length."""
    try:
        budget = run_budget(cfg)
    except (KeyError, TypeError, ValueError):
        return "–"
    return str(budget.value) if budget.fixed else fraction_text(budget.value)


def panel_name(cfg: dict) -> str:
    """A hybrid's panel: its selector and budget ('window 256', 'block T/8, mass 0.90')."""
    mass = cfg.get("hybrid", {}).get("mass")
    return f"{selector_columns(cfg)['selector']} {budget_text(cfg)}" + (f", mass {mass:.2f}" if mass else "")


def measured(results: dict, model: str) -> dict:
    """One model's columns from an evaluate (or teacher) step's numbers: the share of answers recalled exactly per
    task ('passkey'), per task and needle depth ('passkey_d0.3'), over all ('all'), each task's worst depth
    ('passkey_worst', 'passkey_worst_depth'); the copy probe per gap ('copy_g200')."""
    recall, copy = f"test/{model}_recall/", f"test/{model}_copy/"
    row = {}
    for key, value in results.items():
        if key.startswith(recall):
            row[key[len(recall):].replace("/", "_")] = value
        elif key.startswith(copy):
            row[f"copy_{key[len(copy):]}"] = value
    depths: dict[str, dict[str, float]] = {}
    for key, value in row.items():
        m = DEPTH.match(key)
        if m and value is not None:
            depths.setdefault(m["task"], {})[m["depth"]] = value
    for task, shares in depths.items():
        worst = min(shares, key=shares.get)
        row.update({f"{task}_worst": shares[worst], f"{task}_worst_depth": worst})
    return row


def job_rows(job: Path) -> list[dict]:
    """A finished evaluate run's rows, the teacher's and the hybrid's; a teacher run's one; one row saying why for a
    job that failed, did not finish or measured no recall episodes."""
    cfg = run_config(job) or {}
    data = cfg.get("data", {})
    base = {"job": job.name, "data": data.get("filler") if data.get("name") == "recall" else data.get("name"),
            "seq_len": cfg.get("model", {}).get("seq_len")}
    hybrid = {"model": "hybrid", "panel": panel_name(cfg), **selector_columns(cfg), "budget": budget_text(cfg)}
    status, metrics = job_status(job, ("evaluate", "teacher"))
    if metrics is None:
        return [{**base, **(hybrid if cfg.get("stage") != "teacher" else {"panel": "teacher"}), **status}]
    results = metrics.get("evaluate") or metrics["teacher"]
    if not any(k.startswith("test/teacher_recall/") for k in results):
        return [{**base, **hybrid, "status": "no recall", "error": f"data={data.get('name')}: no recall episodes"}]
    rows = [{**base, **status, "model": "teacher", "panel": "teacher", "selector": "teacher",
             **measured(results, "teacher")}]
    if "evaluate" in metrics:
        rows.append({**base, **status, **hybrid, "loss_change_pct": results.get("test/loss_change_pct"),
                     **measured(results, "hybrid")})
    return rows


def run_folders(root: Path) -> list[Path]:
    """ROOT itself when it is one run's folder (its metrics.json, error.json or Hydra's record), else the jobs of the
    multirun ROOT."""
    root = Path(root)
    if any((root / name).is_file() for name in ("metrics.json", "error.json", f"{RECORD}/config.yaml")):
        return [root]
    return jobs_of(root, MAKE)


def gather(root: Path) -> list[dict]:
    """One row per model and context length: the teacher once per length (the first job's), every hybrid; the jobs
    that did not measure the episodes after them. No recall episodes at all: one line saying how to get them."""
    rows = [row for job in run_folders(root) for row in job_rows(job)]
    rows = [{c: r.get(c) for c in columns(rows)} for r in rows]
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        bad = [r for r in rows if r["status"] != "no recall"]  # failed or unfinished: the first one's error
        why = f" ({bad[0]['job']} {bad[0]['status']}: {bad[0]['error']})" if bad else ""
        raise UserError(f"{root} holds no results of recall episodes{why}: {FIX}")
    teachers = {}
    for r in ok:
        if r["model"] == "teacher":
            teachers.setdefault(r["seq_len"], r)
    for r in ok:
        if r["model"] == "hybrid":
            r.update(kept_of(r, teachers[r["seq_len"]]))
    kept = [r for r in ok if r["model"] == "hybrid" or teachers[r["seq_len"]] is r]
    kept.sort(key=lambda r: (r["seq_len"] is None, r["seq_len"] or 0, r["model"] != "teacher", str(r["selector"]),
                             r["mass"] is not None, r["budget_keys"] or 0))
    return kept + [r for r in rows if r["status"] != "ok"]


def kept_of(hybrid: dict, teacher: dict) -> dict:
    """Per task, the hybrid's share of the teacher's answers at the depth where it keeps the least of them
    ('passkey_kept', 'passkey_kept_depth'), over the depths the teacher answers at all."""
    out = {}
    for key, value in teacher.items():
        m = DEPTH.match(key)
        if m and value and hybrid.get(key) is not None:
            task, ratio = m["task"], hybrid[key] / value
            if out.get(f"{task}_kept") is None or ratio < out[f"{task}_kept"]:
                out.update({f"{task}_kept": ratio, f"{task}_kept_depth": m["depth"]})
    return out


def layout(rows: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """The tasks (src/data/recall.py's order), needle depths and copy-probe gaps that the rows measured."""
    keys = {k for r in rows for k in r}
    found = [m for m in map(DEPTH.match, keys) if m]
    tasks = sorted({m["task"] for m in found}, key=lambda t: (TASKS.index(t) if t in TASKS else len(TASKS), t))
    depths = sorted({m["depth"] for m in found}, key=float)
    gaps = sorted((m["gap"] for m in map(GAP.match, keys) if m), key=int)
    return tasks, depths, gaps


def columns(rows: list[dict]) -> list[str]:
    tasks, depths, gaps = layout(rows)
    per_task = [c for t in tasks for c in (t, f"{t}_worst", f"{t}_worst_depth", f"{t}_kept", f"{t}_kept_depth",
                                           *(f"{t}_d{d}" for d in depths))]
    return [*BASE, *per_task, "all", *(f"copy_g{g}" for g in gaps), "error"]


def markdown(rows: list[dict], root: Path) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    tasks, _, gaps = layout(ok)
    jobs = dict.fromkeys(r["job"] for r in rows)
    lines = [
        f"# Recall episodes: {root}",
        "",
        f"{len(jobs)} runs, {len(dict.fromkeys(r['job'] for r in ok))} with recall episodes measured. Each task: the "
        "share of the test episodes' answers recalled exactly (teacher-forced: every character of the answer the "
        "argmax) over all needle depths, and at the worst depth; of teacher: a hybrid's share of the teacher's "
        "answers at the depth where it keeps the least of them; copy gN: the loss on a passage's second appearance, "
        "N characters after its first, over the first (1: no copying, towards 0: copies); loss change: the test loss "
        "on the filler against the teacher. Heatmaps per depth and context length: recall.png.",
        "",
    ]
    header = ["model", *(c for t in tasks for c in (t, f"{t} worst depth", f"{t} of teacher")),
              *(f"copy g{g}" for g in gaps),
              "loss change"]
    for T in dict.fromkeys(r["seq_len"] for r in ok):
        group = [r for r in ok if r["seq_len"] == T]
        data = ", ".join(str(d) for d in dict.fromkeys(r["data"] for r in group))
        lines += [
            f"## T = {T} (filler: {data})",
            "",
            markdown_table(header, [
                [r["panel"],
                 *(c for t in tasks for c in (percent(r.get(t)), worst_text(r, t), worst_text(r, t, "kept"))),
                 *(num(r.get(f"copy_g{g}"), ".3f") for g in gaps),
                 "–" if r.get("loss_change_pct") is None else f"{r['loss_change_pct']:+.2f}%"] for r in group],
                "l" + "r" * (len(header) - 1)),
            "",
        ]
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["## Failed, unfinished or without recall episodes", ""]
        lines += [f"- {r['job']} ({r['status']}): {r['error']}" for r in bad]
    return "\n".join(lines).rstrip() + "\n"


def worst_text(row: dict, task: str, which: str = "worst") -> str:
    """'40.0% (d0.9)': a task's worst needle depth and its share (``which``: 'kept', the share of the teacher's
    answers); '–' when unmeasured."""
    depth = row.get(f"{task}_{which}_depth")
    return "–" if depth is None else f"{percent(row[f'{task}_{which}'])} (d{depth})"


def plot(rows: list[dict], path: Path) -> None:
    """The heatmaps: a row of panels per task, a panel per model (src/report/figures.py ``recall_figure``)."""
    from src.report.figures import recall_figure, save

    ok = [r for r in rows if r["status"] == "ok"]
    tasks, depths, _ = layout(ok)
    save(recall_figure(ok, tasks, depths, f"Recall episodes of {path.parent.name}: the share of answers recalled "
                                          "exactly, per needle depth and context length"), path)


def write(rows: list[dict], root: Path) -> list[Path]:
    return write_tables(rows, root, "recall", columns(rows), markdown, plot)
