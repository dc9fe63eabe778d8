"""One exception for bad input that a user can fix: it is printed as one clear message, never a traceback; and the
argument parser of the argparse tools (``python -m src.bench``, ``src.analyze``, ``src.demo``), whose bad arguments
raise it. The stages and ``src.sample`` are Hydra apps (conf/, conf/cli/)."""

from __future__ import annotations

import argparse


class UserError(Exception):
    """Bad input: a missing file, a wrong setting, a checkpoint that does not fit.

    The message names the problem and, where there is one, the command or setting that fixes it.
    """


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, said once: not where the help text already says it, nor for a flag or
    an option whose default is worked out later (None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or "default" in text or not action.option_strings):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument raises UserError (one line naming it and ``--help``, exit status 2) instead of
    printing the usage; ``--help`` gives every default once (HelpFormatter)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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
