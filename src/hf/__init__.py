"""Bring your own model: a Hugging Face causal language model as the teacher (``teacher=hf``).

* ``attention``  the project's attention function, registered in transformers' AttentionInterface: q, k, v after the
  model's own rotary embedding and cache, the sparse heads through SparseAttention, the rest through SDPA;
* ``hybrid``     one layer's sparse and dense heads over the model's q, k, v (GQA: each query head reads its group's
  key/value head), in a forward pass and in generation;
* ``teacher``    ``HFTeacher``: the model behind the calls the stages make of the project's GPT (signals, hybrid
  overrides, the KV cache, generation);
* ``tokens``     the model's tokenizer as the project's vocabulary;
* ``load``       from a local folder or a hub name, with one line naming the fix for what cannot be loaded;
* ``tiny``       tiny Llama and GPT-2 models with a tokenizer trained on the project's corpus, saved like any
  pretrained model (the tests and the README's figures).

transformers is an optional dependency (``pip install -e '.[hf]'``): nothing here is imported unless ``teacher=hf``
asks for it, and ``require`` says how to install it in one line.
"""

from __future__ import annotations

import importlib.util

from src.errors import UserError

INSTALL = "pip install -e '.[hf]'"


def installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def require() -> None:
    """One line naming the install command when transformers or tokenizers is missing."""
    missing = [name for name in ("transformers", "tokenizers") if not installed(name)]
    if missing:
        raise UserError(f"teacher=hf needs the Hugging Face libraries ({', '.join(missing)} not installed): run "
                        f"`{INSTALL}` (or `make install`)")
