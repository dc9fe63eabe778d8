"""The project's attention inside a Hugging Face model: one function, registered in transformers' AttentionInterface
under ``NAME`` and chosen with ``from_pretrained(..., attn_implementation=NAME)``.

transformers calls it in every attention layer with what SDPA would read: the layer's q (B, nh, T, hs) and k, v
(B, nkv, Tk, hs) after the model's own rotary embedding and, in generation, its cache update (Tk: every key so
far). A layer that nothing is asked of runs transformers' own SDPA function, so the model is unchanged. A layer is
asked through its ``Tap`` (set by src/hf/teacher.py; the layer's input x is taken by a forward pre-hook, the model's
code is not edited):

* for the teacher signals (src/model.py ``AttentionSignals``: x, q, k, v and each head's output), what the
  distillation stages read; ``last``: the layer after which the forward stops (the later layers need not run);
* to run a hybrid layer (src/hf/hybrid.py): the sparse heads through SparseAttention, the others through SDPA;
  with a cache (generation), through the sparse decoder.

What the sparse heads read is made uniform first (``head_view``): float32 (the selectors' dtype), q scaled so that
the kernels' 1/sqrt(hs) gives the model's own scaling (GPT-2's layer-wise scaling included), and each query head's
key/value head repeated (GQA). The attention mask is transformers' SDPA mask (``sdpa_mask``): None for an unpadded
causal batch, which is all the sparse heads serve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from src.model import AttentionSignals

NAME = "sparse_mlp"  # attn_implementation=NAME
TAP = "sparse_tap"  # the attribute of each attention module that holds its Tap
UNSUPPORTED = {  # keyword arguments some families pass, which the sparse heads do not apply
    "softcap": "soft-capped attention scores (Gemma 2)",
    "sliding_window": "a sliding-window layer (Mistral, Gemma)",
    "s_aux": "attention sinks (gpt-oss)",
    "position_bias": "a position bias added to the scores (T5-style)",
}


class StopForward(Exception):
    """Raised after the last layer whose signals were asked for: the rest of the model need not run."""


class Tap:
    """What one attention layer is asked for during one call of the model (nothing: the model's own SDPA)."""

    def __init__(self, layer: int):
        self.layer = layer
        self.x: torch.Tensor | None = None  # (B, T, C) the layer's input in this call (the forward pre-hook)
        self.signals: list | None = None  # the teacher signals are appended here
        self.last = False  # stop the forward after this layer's signals
        self.hybrid = None  # the hybrid layer to run instead (src/hf/hybrid.py HFHybridLayer)
        self.cache = None  # generation: the HFCache the call reads and extends

    @property
    def idle(self) -> bool:
        return self.signals is None and self.hybrid is None

    def clear(self) -> None:
        self.x, self.signals, self.last, self.hybrid, self.cache = None, None, False, None, None


def capture_input(module, args, kwargs) -> None:
    """Forward pre-hook of an attention module: keep its input x (B, T, C) while its Tap asks for something."""
    tap = getattr(module, TAP, None)
    if tap is not None and not tap.idle:
        tap.x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def head_view(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              scaling: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's q (B, nh, T, hs), k, v (B, nkv, Tk, hs) -> float32 q, k, v (B, nh, ., hs): q scaled so that
    softmax(q k^T / sqrt(hs)) is the model's attention, each query head with its group's key and value (GQA)."""
    hs, nh, nkv = query.size(-1), query.size(1), key.size(1)
    q, k, v = query.float(), key.float(), value.float()
    if scaling is not None and abs(scaling * hs**0.5 - 1.0) > 1e-12:
        q = q * (scaling * hs**0.5)
    if nkv != nh:  # head h reads key/value head h // (nh / nkv), as transformers' repeat_kv
        k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    return q, k, v


def call_problem(attention_mask, kwargs: dict) -> str | None:
    """Why this call cannot run the sparse heads or give signals (None: it can)."""
    for key, what in UNSUPPORTED.items():
        if kwargs.get(key) is not None:
            return (f"this model's attention uses {what}, which the sparse heads do not apply: use a model whose "
                    "layers are plain causal attention (Llama, Qwen2, GPT-2, ...)")
    if attention_mask is not None:
        return ("the sparse heads serve unpadded causal batches only (this call has an attention mask: padding or "
                "packed sequences): pass windows of equal length without an attention mask")
    return None


def sparse_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention signature -> (output (B, T, nh, hs), no weights)."""
    tap: Tap | None = getattr(module, TAP, None)
    if tap is None or tap.idle:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    problem = call_problem(attention_mask, kwargs)
    if problem:
        raise ValueError(problem)
    q, k, v = head_view(query, key, value, scaling)
    x = tap.x.float()
    if tap.hybrid is not None:
        y = tap.hybrid(x, q, k, v) if tap.cache is None else tap.hybrid.decode(x, q, k, v, tap.cache, tap.layer)
    else:  # the teacher's own attention, for its signals (a whole sequence: no cache)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if tap.signals is not None:
        tap.signals.append(AttentionSignals(x=x, q=q, k=k, v=v, head_out=y))
        if tap.last:
            raise StopForward
    return y.transpose(1, 2).to(query.dtype).contiguous(), None  # (B, T, nh, hs)


def register() -> None:
    """Register the function (and transformers' SDPA mask for it) under NAME; idempotent."""
    AttentionInterface.register(NAME, sparse_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
