"""Analyses that need no training run: ``python -m src.analyze SUBCOMMAND [...]``.

    python -m src.analyze costs [--out DIR]   # the analytic cost model: tables, CSVs, a plot (analysis/costs.py)
    python -m src.analyze sweep DIR           # one table + plot of a multirun's jobs (analysis/sweep.py)
    python -m src.analyze budget DIR          # quality against key budget, one line per selector (budget_curve.py)
    python -m src.analyze recall DIR          # needle in a haystack: recall per task, depth and length (recall.py)

Each subcommand is one entry of ``SUBCOMMANDS``: a help line, a function adding its arguments, a function running
it. Bad arguments end with one line ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from src.analysis.costs import add_costs_arguments, run_costs
from src.errors import Parser, UserError

# --------------------------------------------------------------------------------------------------------------
# subcommand: sweep


def add_sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="the multirun folder (outputs/multirun/<timestamp>)")


def gather_and_write(analysis, root: Path) -> None:
    """``analysis`` (src/analysis/sweep.py, budget_curve.py or recall.py): gather a multirun's jobs, write its files,
    print them."""
    rows = analysis.gather(root)
    try:
        paths = analysis.write(rows, root)
    except OSError as e:
        raise UserError(f"cannot write to {root}: {e.strerror or e}") from None
    print(analysis.markdown(rows, root))
    print("wrote " + " ".join(str(p) for p in paths))


def run_sweep(args: argparse.Namespace) -> None:
    from src.analysis import sweep

    gather_and_write(sweep, args.dir)
    print(f"TensorBoard (HPARAMS tab compares the jobs): tensorboard --logdir {args.dir}")


def run_budget(args: argparse.Namespace) -> None:
    from src.analysis import budget_curve

    gather_and_write(budget_curve, args.dir)


def add_recall_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", type=Path, help="a run on data=recall (evaluate, pipeline or teacher: its folder), or the "
                                          "folder of a multirun of them (outputs/multirun/<timestamp>)")


def run_recall(args: argparse.Namespace) -> None:
    from src.analysis import recall

    gather_and_write(recall, args.dir)


# --------------------------------------------------------------------------------------------------------------
# the command line


@dataclass(frozen=True)
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


SUBCOMMANDS: dict[str, Subcommand] = {
    "costs": Subcommand("analytic FLOPs and memory of dense vs sparse attention", add_costs_arguments, run_costs),
    "sweep": Subcommand("one table and plot of a multirun's jobs: quality, FLOPs, measured speed", add_sweep_arguments,
                        run_sweep),
    "budget": Subcommand("quality against key budget of a budget_curve multirun: table and plot, one line per "
                         "selector", add_sweep_arguments, run_budget),
    "recall": Subcommand("needle in a haystack over runs on data=recall: heatmaps of the answers recalled per task, "
                         "needle depth and context length, one panel per model; a table with the copy probe and the "
                         "loss change", add_recall_arguments, run_recall),
}


def build_parser() -> Parser:
    parser = Parser(prog="python -m src.analyze", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    for name, cmd in SUBCOMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        SUBCOMMANDS[args.command].run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
