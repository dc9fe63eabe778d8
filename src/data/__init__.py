"""Corpora and the one LightningDataModule every stage uses, character-level (Hydra group ``data/``).

* ``corpora``  the texts: Shakespeare's plays, a package's Python sources, any text file, random tokens;
* ``vocab``    the character vocabulary (it travels in every checkpoint);
* ``windows``  windows of seq_len + 1 tokens, and the training batches drawn per step (exact resume);
* ``module``   ``CharDataModule``: corpus -> vocabulary -> contiguous train / val / test splits -> loaders.
"""

from src.data.corpora import (SYNTHETIC_SYMBOLS, TEXTS, corpus_text, package_sources, python_source_text,
                              read_text_file, shakespeare_text, strip_markdown, synthetic_tokens)
from src.data.module import CharDataModule
from src.data.vocab import Vocab
from src.data.windows import ConsecutiveWindows, RandomWindows, StepBatches

__all__ = ["SYNTHETIC_SYMBOLS", "TEXTS", "CharDataModule", "ConsecutiveWindows", "RandomWindows", "StepBatches",
           "Vocab", "corpus_text", "package_sources", "python_source_text", "read_text_file", "shakespeare_text",
           "strip_markdown", "synthetic_tokens"]
