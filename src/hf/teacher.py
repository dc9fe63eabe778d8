"""``HFTeacher``: a Hugging Face causal language model behind the calls the stages make of the project's GPT
(src/model.py), so that the selectors, the kernels, the stages, the metrics and generation run on it unchanged:

* ``forward(idx, signals=..., attention=..., cache=...)`` -> logits (B, T, V): the teacher signals of some layers,
  hybrid layers for this call only, the KV cache (the model's own, src/hf/cache.py);
* ``signals(idx, layers)``: those layers' signals alone (the forward stops after the last of them);
* ``hybrid_attention(spec, parts)``: the per-layer overrides that make it a hybrid (src/hf/hybrid.py);
* ``generate`` (GPT's own loop) and ``cfg`` (an HFShape: layers, heads, widths, T).

The model is frozen and its code untouched: every attention layer gets a ``Tap`` and a forward pre-hook (its input),
and the model runs with ``attn_implementation`` set to the project's attention function (src/hf/attention.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from src.hf.attention import NAME, TAP, StopForward, Tap, capture_input
from src.hf.cache import HFCache
from src.hf.hybrid import HFHybridLayer
from src.hf.shape import shape_of
from src.model import GPT, AttentionSignals


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The model's self-attention modules, in layer order: the modules that transformers' attention function is
    called from (an ``...Attention`` class with its ``layer_idx``)."""
    found = [m for m in model.modules() if type(m).__name__.endswith("Attention")
             and isinstance(getattr(m, "layer_idx", None), int)]
    return sorted(found, key=lambda m: m.layer_idx)


class HFTeacher(nn.Module):
    def __init__(self, model: nn.Module, vocab, seq_len: int, name: str):
        super().__init__()
        if model.config._attn_implementation != NAME:
            raise ValueError(f"load the model with attn_implementation={NAME!r} (src/hf/load.py)")
        self.model = model.requires_grad_(False).eval()
        self.vocab, self.name = vocab, name
        self.cfg = shape_of(model.config, seq_len)
        modules = attention_modules(model)
        if len(modules) != self.cfg.n_layer:
            raise ValueError(f"found {len(modules)} attention layers in {name}, its config says {self.cfg.n_layer}")
        self.taps = [Tap(i) for i in range(self.cfg.n_layer)]
        for module, tap in zip(modules, self.taps):
            module.__dict__[TAP] = tap  # a plain attribute: no submodule, nothing in the state dict
            module.register_forward_pre_hook(capture_input, with_kwargs=True)

    def num_params(self, non_embedding: bool = True) -> int:
        return self.model.num_parameters(exclude_embeddings=non_embedding)

    @contextlib.contextmanager
    def asked(self, signals=None, attention=None, cache: HFCache | None = None, last: int | None = None):
        """The layers' Taps set for one call: signals of the layers in ``signals``, ``attention``'s hybrid layers,
        the generation ``cache``; cleared afterwards, whatever happens."""
        boxes = {}
        try:
            for layer in signals or ():
                boxes[layer] = self.taps[layer].signals = []
            for layer, hybrid in (attention or {}).items():
                self.taps[layer].hybrid = hybrid
                self.taps[layer].cache = cache
            if last is not None:
                self.taps[last].last = True
            yield boxes
        finally:
            for tap in self.taps:
                tap.clear()

    def forward(self, idx: torch.Tensor, signals: dict[int, AttentionSignals] | None = None,
                attention: dict[int, nn.Module] | None = None, cache: HFCache | None = None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V) in float32, as GPT.forward: ``signals={layer: None}`` filled in,
        ``attention={layer: hybrid layer}`` for this call, ``cache``: the tokens after the cached ones."""
        start = cache.pos if cache is not None else 0
        if start + idx.size(1) > self.cfg.seq_len:
            raise ValueError(f"sequence of length {start + idx.size(1)} is longer than model.seq_len="
                             f"{self.cfg.seq_len}")
        with self.asked(signals, attention, cache) as boxes:
            out = self.model(input_ids=idx, cache=cache.past if cache is not None else None,
                             use_cache=cache is not None)
        for layer, box in boxes.items():
            signals[layer] = box[0]
        if cache is not None:
            cache.advance(idx.size(1))
        return out.logits.float()

    @torch.no_grad()
    def signals(self, idx: torch.Tensor, layers) -> dict[int, AttentionSignals]:
        """The teacher signals of ``layers`` alone: the model runs up to the last of them, and stops."""
        with self.asked(layers, last=max(layers)) as boxes:
            try:
                self.model(input_ids=idx, use_cache=False)
            except StopForward:
                pass
        return {layer: boxes[layer][0] for layer in layers}

    def hybrid_attention(self, spec, parts) -> dict[int, HFHybridLayer]:
        """The per-layer overrides that make the model a hybrid (``forward(idx, attention=...)``): src/hybrid.py
        ``hybrid_attention`` for a Hugging Face model."""
        return {layer: HFHybridLayer(self.cfg.n_head, spec.heads, parts.attention(layer)) for layer in spec.layers}

    def new_cache(self, batch: int) -> HFCache:
        """An empty cache for generation (GPT.generate calls it)."""
        return HFCache(self.model.config, self.cfg.seq_len)

    generate = GPT.generate  # the same loop: prefill, one token per step, the context slid when the cache is full
