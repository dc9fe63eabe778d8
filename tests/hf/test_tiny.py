"""Tiny models made here (src/hf/tiny.py): a tokenizer trained on the corpus, a model trained a few steps and saved,
which loads as a teacher; the command line says a bad argument in one line."""

from __future__ import annotations

import math

import pytest

from src.data.corpora import corpus_text
from src.errors import UserError
from src.hf.load import load_teacher
from src.hf.tiny import main, make_tiny


def test_a_tiny_model_trains_saves_and_loads_as_a_teacher(tmp_path):
    info = make_tiny("gpt2", tmp_path / "m", corpus_text("shakespeare")[:50_000], vocab_size=280, steps=3,
                     seq_len=32)
    assert math.isfinite(info["loss"]) and info["vocab"] == 280 and 1 < info["chars_per_token"] < 5
    teacher = load_teacher({"model": str(tmp_path / "m")}, 32)
    assert teacher.cfg.family == "gpt2" and teacher.vocab.decode(teacher.vocab.encode("ROMEO: hi")) == "ROMEO: hi"


def test_a_bad_argument_is_one_line():
    with pytest.raises(UserError, match="argument --family: invalid choice"):
        main(["--family", "bert", "--out", "x"])
