"""Quality against key budget: ``python -m src.analyze budget DIR`` over a ``+experiment=budget_curve`` multirun.

Every finished job (one selector at one budget, fixed or dynamic) becomes a row: the density of keys its queries
actually read (keys per query / T, mean ± spread over queries and heads), the test loss change against the teacher,
the teacher's attention mass on the kept keys, and the whole model's forward speed against the teacher on each
kernel it ran (src/stages/evaluate.py). The plot has one line per selector: loss change, mass recall and measured
speed-up against the budget, the dynamic budget as single points at the density it used.

Writes DIR/budget.csv, budget.json, budget.md and budget.png.
"""

from __future__ import annotations

from pathlib import Path

from src.analysis.jobs import job_config, job_status, jobs_of
from src.analysis.sweep import write_tables
from src.costs.accounting import run_budget
from src.errors import UserError
from src.report.tables import markdown_table, num
from src.selectors import BLOCK_SELECTORS
from src.sparse import Budget

MAKE = "python -m src.train -m +experiment=budget_curve"  # the multirun this analysis reads

COLUMNS = (
    "job", "status", "data", "model", "seq_len", "selector", "level", "budget", "budget_keys", "mass", "density",
    "density_std", "loss_change_pct", "teacher_loss", "hybrid_loss", "kl", "mass_recall", "kernel",
    "teacher_tokens_per_s", "hybrid_tokens_per_s", "speedup", "speed_kernels", "error",
)


def budget_fraction(cfg: dict) -> float | None:
    """The job's budget as a fraction of T (1/8 = 0.125), fixed or the dynamic budget's cap."""
    T = cfg.get("model", {}).get("seq_len")
    try:
        return run_budget(cfg).keys(T) / T
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def selector_columns(cfg: dict) -> dict:
    """Which line of the curve a job is: its selector (``+recentN`` when it always keeps its previous blocks: a line
    of its own), token or block level, budget (a fraction of T), keys per query and dynamic budget's mass."""
    sel, m = cfg.get("selector", {}), cfg.get("model", {})
    name = sel.get("name")
    if sel.get("recent"):
        name = f"{name}+recent{sel['recent']}"
    fraction = budget_fraction(cfg)
    return {"selector": name, "level": "block" if sel.get("name") in BLOCK_SELECTORS else "token", "budget": fraction,
            "budget_keys": round(fraction * m["seq_len"]) if fraction and m.get("seq_len") else None,
            "mass": cfg.get("hybrid", {}).get("mass")}


def job_row(job: Path) -> dict:
    cfg = job_config(job)
    m = cfg.get("model", {})
    row: dict = {"job": job.name, "data": cfg.get("data", {}).get("name"), "model": m.get("name"),
                 "seq_len": m.get("seq_len"), **selector_columns(cfg)}
    status, metrics = job_status(job)
    row.update(status)
    if metrics:
        e = metrics["evaluate"]
        row.update(density=e.get("test/density"), density_std=e.get("test/density_std"),
                   loss_change_pct=e.get("test/loss_change_pct"), teacher_loss=e.get("test/teacher_loss"),
                   hybrid_loss=e.get("test/hybrid_loss"), kl=e.get("test/kl_teacher_hybrid"),
                   mass_recall=e.get("test/mass_recall"))
        speed = e.get("speed") or {}
        kernels = speed.get("kernels") or []
        if kernels:  # the fastest kernel that served the hybrid; every kernel's figure is in speed_kernels
            best = max(kernels, key=lambda k: speed[f"{k}_tokens_per_s"])
            row.update(kernel=best, teacher_tokens_per_s=speed["teacher_tokens_per_s"],
                       hybrid_tokens_per_s=speed[f"{best}_tokens_per_s"], speedup=speed[f"{best}_speedup"],
                       speed_kernels=" ".join(f"{k}:{speed[f'{k}_speedup']:.2f}x" for k in kernels))
    return {c: row.get(c) for c in COLUMNS}


def gather(root: Path) -> list[dict]:
    rows = [job_row(job) for job in jobs_of(root, MAKE)]
    if not any(r["selector"] for r in rows):
        raise UserError(f"{root} holds no pipeline jobs: give the folder of `{MAKE}`")
    return sorted(rows, key=lambda r: (str(r["data"]), str(r["selector"]), r["mass"] is not None, r["budget"] or 0))


def fraction_text(f: float | None) -> str:
    """0.125 -> 'T/8' (src/sparse/budget.py's text); '–' when unknown."""
    return str(Budget(float(f))) if f else "–"


def markdown(rows: list[dict], root: Path) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    lines = [
        f"# Quality against key budget: {root}",
        "",
        f"{len(rows)} jobs: {len(ok)} finished, {len(rows) - len(ok)} failed or unfinished. Test split, every head of "
        "every layer sparse; loss change against the job's teacher; density = keys a query reads / T (mean ± spread "
        "over queries and heads); speed = the whole model's forward, hybrid against teacher, same batch, one process "
        "(the fastest kernel; all kernels in budget.csv).",
        "",
    ]
    for data in dict.fromkeys(r["data"] for r in ok):
        group = [r for r in ok if r["data"] == data]
        lines += [
            f"## data={data}, model={group[0]['model']} (T={group[0]['seq_len']})",
            "",
            markdown_table(
                ["selector", "level", "budget", "dynamic mass", "density", "loss change", "mass recall", "KL",
                 "speed-up (kernel)", "hybrid tokens/s", "teacher tokens/s"],
                [[r["selector"], r["level"], f"{fraction_text(r['budget'])} ({r['budget_keys']})",
                  num(r["mass"], ".2f"), f"{num(r['density'], '.4f')} ± {num(r['density_std'], '.4f')}",
                  f"{num(r['loss_change_pct'], '+.2f')}%", num(r["mass_recall"], ".4f"), num(r["kl"], ".4f"),
                  f"{num(r['speedup'], '.2f')}× ({r['kernel'] or '–'})", num(r["hybrid_tokens_per_s"], ",.0f"),
                  num(r["teacher_tokens_per_s"], ",.0f")] for r in group],
                "llrrrrrrrrr"),
        ]
        lines.append("")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        lines += ["## Failed or unfinished jobs", ""] + [f"- {r['job']} ({r['status']}): {r['error']}" for r in bad]
    return "\n".join(lines).rstrip() + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """Loss change, mass recall and speed-up against density, one line per selector, a row per corpus."""
    from src.report.figures import budget_figure, save

    save(budget_figure([r for r in rows if r["status"] == "ok"]), path)


def write(rows: list[dict], root: Path) -> list[Path]:
    return write_tables(rows, root, "budget", COLUMNS, markdown, plot)
