"""Tiny Hugging Face models of two families, made once for the session without a network (src/hf/tiny.py): a
byte-level BPE tokenizer trained on the project's corpus, a Llama (GQA: 4 query heads on 2 key/value heads, rotary)
and a GPT-2 (learned positions), random weights, saved with save_pretrained. Skipped without transformers."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

FAMILIES = ("llama", "gpt2")
VOCAB = 300  # tokens of the tiny tokenizer
T = 48  # the windows the tests run (the models have 256 positions)


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory) -> dict:
    """family -> the folder of its saved tiny model and tokenizer."""
    from src.data.corpora import corpus_text
    from src.hf.tiny import make_tiny

    root = tmp_path_factory.mktemp("hf")
    text = corpus_text("shakespeare")[:200_000]
    return {family: make_tiny(family, root / family, text, VOCAB)["folder"] for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def hf_folder(request, hf_models) -> str:
    return str(hf_models[request.param])
