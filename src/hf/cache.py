"""The KV cache of a Hugging Face teacher's generation: the model's own cache (transformers' ``DynamicCache``) and,
beside it, each hybrid layer's sparse heads in a buffer of the model's T (src/model.py ``LayerCache``), where their
sparse decoder keeps its state. ``HFTeacher.forward(idx, cache=...)`` reads and extends it, as the project's GPT does
its ``KVCache``."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from src.model import LayerCache


class HFCache:
    def __init__(self, config, max_len: int):
        self.past = DynamicCache(config=config)  # every layer's keys and values, grown by the model itself
        self.max_len = max_len  # positions it may hold: the model's T (the budget is counted there)
        self.pos = 0  # tokens cached so far: the position of the next one
        self.layers: dict[int, LayerCache] = {}  # hybrid layer -> its sparse heads' keys, values and decoder

    def served(self, layer: int, q: torch.Tensor) -> LayerCache:
        """The sparse heads' cache of ``layer`` (q (B, h, Tn, hs): their new queries), allocated at the prompt."""
        if self.pos == 0 or layer not in self.layers:
            B, h, _, hs = q.shape
            shape = (B, h, self.max_len, hs)
            self.layers[layer] = LayerCache(q.new_zeros(shape), q.new_zeros(shape))
        return self.layers[layer]

    def advance(self, n: int) -> None:
        self.pos += n
