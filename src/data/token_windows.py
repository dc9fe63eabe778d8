"""Training windows of a corpus read with a model's tokenizer (teacher=hf), some carrying a recall episode: the
episode is written in characters (src/data/recall.py) into the text of a slightly longer stretch of tokens, the text
tokenised again, and its last seq_len + 1 tokens kept -- the window's length in tokens whatever the episode's
numbers and names tokenise to (a needle that falls in the dropped first tokens is lost: a window without an answer
to learn). What MixedWindows does in characters, for the episodes alone."""

from __future__ import annotations

import torch

from src.data.recall import episode, episode_rng
from src.data.windows import EPISODE, MixedWindows

SLACK = 1.15  # tokens of filler decoded per token of the window: room for an episode that tokenises less densely


class TokenEpisodeWindows(MixedWindows):
    def __getitem__(self, item) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(item, int) or item[0] != EPISODE:
            return super().__getitem__(item)
        _, offset, seed, *short = item
        length = (short[0] if short else self.seq_len) + 1
        offset = min(offset, len(self.data) - int(SLACK * length))
        filler = self.vocab.decode(self.data[offset:offset + int(SLACK * length)])
        rng = episode_rng(seed)
        try:
            text = episode(rng.choice(self.tasks), rng, filler, self.depth(rng), self.pairs, self.queries).text
        except ValueError:  # the episode does not fit this stretch: the corpus alone
            text = filler
        chunk = self.vocab.encode(text)[-length:]
        if len(chunk) < length:  # tokenised shorter than the window: the corpus alone
            chunk = self.data[offset:offset + length]
        return chunk[:-1], chunk[1:]
