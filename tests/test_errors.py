"""One-line errors of the argparse tools (src/errors.py ``Parser``)."""

from __future__ import annotations

import argparse

import pytest

from src.errors import Parser, UserError, int_list, positive_int


def test_parser_error_is_one_line_naming_help():
    p = Parser(prog="python -m src.tool")
    p.add_argument("--n", type=positive_int)
    with pytest.raises(UserError, match=r"argument --n: expected a positive integer, got 0 \(see python -m src.tool "
                                        r"--help\)"):
        p.parse_args(["--n", "0"])
    assert p.parse_args(["--n", "3"]).n == 3


def test_int_list():
    assert int_list("256, 1024") == (256, 1024)
    for bad in ("", "a,2", "0,4"):
        with pytest.raises(argparse.ArgumentTypeError):
            int_list(bad)


@pytest.mark.parametrize("module,args", [("demo", ["--bogus"]), ("analyze", ["costs", "--k", "0"]),
                                         ("bench", ["--seq-lens", "x"]), ("bench", ["--decode", "--lens", "0"])])
def test_every_tool_says_a_bad_argument_in_one_line(module, args, capsys):
    import importlib

    name = "src.bench.__main__" if module == "bench" else f"src.{module}"
    assert importlib.import_module(name).main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "--help" in err
