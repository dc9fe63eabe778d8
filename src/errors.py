"""One exception for bad input that a user can fix: it is printed as one clear message, never a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a missing file, a wrong setting, a checkpoint that does not fit.

    The message names the problem and, where there is one, the command or setting that fixes it.
    """
