"""A Hugging Face model's tokenizer as the project's vocabulary (the calls the data module, the probes and sampling
make of src/data/vocab.py's ``Vocab``): any corpus becomes the model's token ids, windows of model.seq_len tokens."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import torch

from src.data.recall import Episode
from src.errors import UserError

CHUNK = 1 << 16  # characters per piece of a long corpus (cut at a newline), tokenised as one batch
UNKNOWN = 0.01  # more unknown tokens than this share: the tokenizer does not cover the corpus


class TokenVocab:
    """Text <-> the model's token ids. ``itos`` is None: no list of symbols travels in a checkpoint, the model's
    folder (teacher.hf.model) stands for it."""

    itos = None

    def __init__(self, tokenizer, size: int, name: str):
        self.tokenizer, self.size, self.name = tokenizer, size, name
        newline = tokenizer.encode("\n", add_special_tokens=False)
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (newline or [0])[0]
        self.stoi = {"\n": start}  # what an empty prompt starts from (src/stages/common.py sample_text)

    def __len__(self) -> int:
        return self.size

    def encode(self, text: str) -> torch.Tensor:
        """Text -> token ids (N,), without special tokens; one line when the tokenizer does not fit the model or the
        corpus."""
        pieces, start = [], 0
        while start < len(text):
            cut = text.rfind("\n", start, start + CHUNK)  # a piece ends after a newline where it can
            end = len(text) if len(text) - start <= CHUNK else (cut + 1 if cut > start else start + CHUNK)
            pieces.append(text[start:end])
            start = end
        ids = self.tokenizer(pieces or [""], add_special_tokens=False)["input_ids"]
        tokens = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        if tokens.numel() and int(tokens.max()) >= self.size:
            raise UserError(f"the tokenizer of teacher.hf.model={self.name} gives token id {int(tokens.max())}, but "
                            f"the model has {self.size} embeddings: give the tokenizer saved with the model (the same "
                            "folder)")
        unk = self.tokenizer.unk_token_id
        share = float((tokens == unk).float().mean()) if unk is not None and tokens.numel() else 0.0
        if share > UNKNOWN:
            raise UserError(f"the tokenizer of teacher.hf.model={self.name} does not cover this text: {share:.0%} of "
                            "its tokens are unknown; give a corpus in the model's language (data=...), or a model "
                            "whose tokenizer covers it")
        return tokens

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])

    def episode(self, e: Episode, length: int) -> Episode:
        """A recall episode (src/data/recall.py, in characters) in this tokenizer's tokens: its text as at most
        ``length`` token ids (the oldest dropped when more), each answer the tokens that hold its characters, each
        needle the token of its first character."""
        enc = self.tokenizer(e.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
        starts, ends = [s for s, _ in spans], [end for _, end in spans]
        cut = max(0, len(ids) - length)
        answers = tuple((bisect_right(ends, a) - cut, bisect_left(starts, b) - cut) for a, b in e.answers)
        needles = tuple(max(0, bisect_right(ends, n) - cut) for n in e.needles)
        return Episode(ids[cut:], e.task, e.depth, answers, needles)
