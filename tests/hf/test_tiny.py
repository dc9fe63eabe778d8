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


def test_episodes_and_periodic_strings_for_a_model_that_looks_back(tmp_path):
    import torch

    from src.hf.tiny import episode_windows, periodic_windows, train_tokenizer

    text = corpus_text("shakespeare")[:100_000]
    tokenizer = train_tokenizer(text, 280)
    windows = episode_windows(text, tokenizer, 12, 120)
    assert 0 < len(windows) <= 12 and windows.shape[1] == 120
    assert any(cue in tokenizer.decode(w) for w in windows for cue in ("pass key", "magic number"))
    strings = periodic_windows(3, 100, 280, torch.Generator().manual_seed(0))
    assert strings.shape == (3, 100) and int(strings.max()) < 280
    info = make_tiny("llama", tmp_path / "m", text, vocab_size=280, steps=2, seq_len=120, episodes=0.25,
                     periodic=0.25)
    assert math.isfinite(info["loss"])


def test_a_saved_tiny_model_trains_further(tmp_path, hf_models):
    info = make_tiny("llama", tmp_path / "more", corpus_text("shakespeare")[:50_000], steps=2, seq_len=32,
                     init=hf_models["gpt2"])
    assert info["family"] == "gpt2" and info["vocab"] == 300 and math.isfinite(info["loss"])
