"""The one argument parser of the argparse tools (``python -m src.bench``, ``src.analyze``, ``src.demo``): a bad
argument ends with one line ``error: ...`` naming it and ``--help`` (exit status 2), never argparse's usage dump.
The stages and ``src.sample`` are Hydra apps (conf/, conf/cli/)."""

from __future__ import annotations

import argparse

from src.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UserError (one line, exit 2) instead of printing the usage."""

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def int_list(text: str) -> tuple[int, ...]:
    """'256,1024' -> (256, 1024), every one positive."""
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values
