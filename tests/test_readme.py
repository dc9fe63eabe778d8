"""README.md, the front door: its selector example is the code the tests run, its commands compose or parse, and it
stays a few screens long."""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

import pytest
import torch
import yaml

from src.analysis.__main__ import build_parser as analyze_parser
from src.bench.decode import build_parser as decode_parser
from src.bench.layer import build_parser as layer_parser
from src.bench.teacher import build_parser as teacher_parser
from src.errors import Parser
from src.hybrid import HybridSpec, SparseParts
from src.model import GPTConfig
from src.selectors import SELECTORS, build_selector
from src.selectors.base import KeySelector
from src.sparse import causal_topk
from tests.conftest import ROOT, compose_config

README = ROOT / "README.md"
TEXT = README.read_text(encoding="utf-8")
MAX_LINES = 250  # the front door: a few screens; results and their history live in docs/

HYDRA_FLAGS = {"-m", "--multirun", "--resolve"}  # Hydra's own flags, not overrides
HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--info", "-i"}
PLACEHOLDER = re.compile(r"\.\.\.|<[^>]*>|=[A-Z]+$|^\[")  # outputs/2026-..., <timestamp>, resume=RUN, [the overrides]


def fenced(language: str) -> list[str]:
    """The bodies of README.md's ```language blocks."""
    return re.findall(rf"^```{language}\n(.*?)^```", TEXT, flags=re.MULTILINE | re.DOTALL)


def commands(module: str) -> list[list[str]]:
    """The arguments of every ``python -m MODULE ...`` in the README's bash blocks and inline code spans."""
    lines = [line for block in fenced("bash") for line in block.splitlines()]
    lines += re.findall(r"`(python -m [^`]+)`", TEXT)
    found = []
    for line in lines:
        words = re.sub(r"(^|\s)#.*", "", line).split()  # without the comment
        for i in range(len(words) - 2):
            if words[i:i + 3] == ["python", "-m", module]:
                found.append(words[i + 3:])
    return found


def hydra_overrides(args: list[str]) -> list[list[str]]:
    """A train command's overrides, without Hydra's flags; a multirun's sweeps (key=a,b) expanded into its jobs."""
    overrides, skip = [], False
    for arg in args:
        if skip or arg in HYDRA_FLAGS:
            skip = False
            continue
        if arg in HYDRA_FLAGS_WITH_VALUE:
            skip = True
            continue
        assert not arg.startswith("-"), f"README: `python -m src.train` has no flag {arg}"
        overrides.append(arg)
    choices = []
    for o in overrides:
        key, _, value = o.partition("=")
        sweep = "," in value and value[0] not in "[{'\""
        choices.append([f"{key}={v}" for v in value.split(",")] if sweep else [o])
    return [list(job) for job in itertools.product(*choices)]


# --------------------------------------------------------------------------------------------------------------
# "Add your own selector": the README's code is what runs


@pytest.fixture
def dilated():
    """The README's DilatedSelector, defined by executing its one python block; the registry restored afterwards."""
    blocks = fenced("python")
    assert len(blocks) == 1, "README.md should hold exactly one ```python block: the selector example"
    saved = dict(SELECTORS)
    try:
        namespace: dict = {}
        exec(compile(blocks[0], f"{README}:python block", "exec"), namespace)  # noqa: S102  the README's own code
        yield namespace["DilatedSelector"]
    finally:
        SELECTORS.clear()
        SELECTORS.update(saved)


def test_the_readme_selector_registers_and_builds(dilated):
    assert issubclass(dilated, KeySelector) and SELECTORS["dilated"] is dilated
    sel = build_selector("dilated", 2, 16, 8, 12, hidden=99, d_index=3)  # settings it does not ask for: ignored
    assert isinstance(sel, dilated) and sel.n_heads == 2
    picked = causal_topk(sel.scores(torch.zeros(1, 12, 16), None, None), 3).idx[0, 0]
    assert picked[11].tolist() == [11, 9, 7] and picked[4].tolist() == [4, 2, 0]
    cfg = GPTConfig(vocab_size=5, seq_len=12, n_layer=1, n_head=2, d_model=16)
    parts = SparseParts(HybridSpec.from_config(cfg, heads="all", budget=3), cfg, {"name": "dilated"},
                        {"name": "softmax"})
    assert isinstance(parts.selectors["0"], dilated)


@pytest.fixture
def readme_conf(tmp_path) -> Path:
    """A config folder holding the README's conf/selector/dilated.yaml (its one ```yaml block)."""
    blocks = fenced("yaml")
    assert len(blocks) == 1, "README.md should hold exactly one ```yaml block: the selector's config"
    assert blocks[0].startswith("# conf/selector/dilated.yaml\n")
    (tmp_path / "selector").mkdir()
    (tmp_path / "selector" / "dilated.yaml").write_text(blocks[0])
    return tmp_path


def test_the_readme_yaml_names_the_readme_selector(dilated, readme_conf):
    assert yaml.safe_load((readme_conf / "selector" / "dilated.yaml").read_text()) == {"name": dilated.name}


# --------------------------------------------------------------------------------------------------------------
# every command in it


def test_every_train_command_composes(readme_conf):
    runs = commands("src.train")
    assert len(runs) >= 10  # the five steps, the pipeline, the prototype, the commands table
    composed = 0
    for args in runs:
        if any(PLACEHOLDER.search(a) for a in args):
            continue  # names a run folder to fill in
        for overrides in hydra_overrides(args):
            # the README's selector (selector=dilated) from its YAML block; every other group from conf/
            cfg = compose_config([*overrides, f"hydra.searchpath=[file://{readme_conf}]"])
            for o in overrides:
                key, _, value = o.lstrip("+").partition("=")
                if key in ("selector", "approximator", "model", "data", "device"):  # a group: its option chosen
                    assert cfg[key].name == value, o
            composed += 1
    assert composed >= 10


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag a parser accepts, its subcommands' included."""
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= option_strings(sub)
    return flags


class Built(Exception):
    pass


def demo_parser(monkeypatch) -> Parser:
    """The parser src/demo.py's main builds (it has no build_parser), caught before it parses anything."""
    from src import demo

    class Catch(Parser):
        def parse_args(self, *args, **kwargs):
            raise Built(self)

    monkeypatch.setattr(demo, "Parser", Catch)
    with pytest.raises(Built) as e:
        demo.main([])
    return e.value.args[0]


def test_every_tool_command_parses(monkeypatch):
    """python -m src.bench / src.analyze / src.demo as the README writes them: every flag exists, every value parses."""
    tools = {"src.bench": lambda args: (decode_parser() if "--decode" in args else teacher_parser() if "--teacher"
                                        in args else layer_parser()),
             "src.analyze": lambda args: analyze_parser(),
             "src.demo": lambda args: demo_parser(monkeypatch)}
    seen = 0
    for module, parser_for in tools.items():
        for args in commands(module):
            parser = parser_for(args)
            Parser.parse_args(parser, args)  # a bad flag or value raises UserError naming it
            seen += 1
    assert seen >= 6  # bench, bench --decode, analyze costs / sweep / budget, demo


def test_every_tool_flag_in_the_readme_exists(monkeypatch):
    """Flags written anywhere after ``python -m src.bench`` / ``src.analyze`` / ``src.demo`` (prose included)."""
    flags = {"src.bench": option_strings(layer_parser()) | option_strings(decode_parser())
             | option_strings(teacher_parser()),
             "src.analyze": option_strings(analyze_parser()),
             "src.demo": option_strings(demo_parser(monkeypatch))}
    for module, known in flags.items():
        for line in re.findall(rf"python -m {re.escape(module)}\b([^`\n#]*)", TEXT):
            for flag in re.findall(r"(?<!\S)(--?[a-z][\w-]*)", line):
                assert flag in known, f"README: `python -m {module} {flag}`: no such flag"


def test_readme_is_a_front_door():
    assert TEXT.count("\n") <= MAX_LINES  # wc -l README.md
