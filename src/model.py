"""A small GPT in the style of nanoGPT: config -> attention -> MLP -> block -> GPT.

The teacher of every later stage. Two things are added to nanoGPT's design:

* every block's attention is an ordinary sub-module, so a stage can swap it for another
  causal attention (``GPT.set_attention``), e.g. a hybrid that is sparse in some heads;
* ``GPT.forward(idx, signals=...)`` can return, for chosen layers, the teacher signals that the
  distillation stages read: Q, K, V, the attention probabilities and each head's output.

* ``model.sparse`` makes chosen layers natively sparse, from the first training step: every head reads only the key
  blocks a parameter-free gate picks (MoBA's, src/selectors/moba.py), on a block-sparse kernel. This file keeps the
  hook (``CausalSelfAttention.sparse``); src/hybrid.py ``build_gpt`` fills it in, so the model file imports nothing
  of the sparse library.

* ``GPT.forward(idx, cache=KVCache(...))`` runs with a KV cache: the prompt once (prefill), then one token per step
  against the cached keys and values (``GPT.generate``); an attention module may keep more beside them (a sparse
  layer keeps its block summaries, src/sparse/decode.py).

Shapes: B batch, T sequence length, C = d_model, nh heads, hs = C // nh head size, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


POSITIONS = ("learned", "rope")
QK_SCALES = ("none", "logn")  # model.qk_scale
GATES = ("none", "moba", "query_moba")  # model.sparse: dense, or natively sparse on MoBA's gate (src/selectors/moba.py)


@dataclass
class GPTConfig:
    vocab_size: int = 65  # characters in the corpus; set from the data
    seq_len: int = 128  # block size: the longest context the model sees
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads per block
    d_model: int = 128  # embedding width C; head size is d_model // n_head
    dropout: float = 0.0  # 0 for small data on CPU, as nanoGPT's "baby" config
    bias: bool = False  # biases in Linear and LayerNorm; False is a little better and faster
    pos: str = "learned"  # positions: "learned" embeddings (nanoGPT, GPT-2) or "rope" (rotary q and k, as LLaMA);
    #                       at T = 2048 learned embeddings stall at the bigram loss on a CPU budget, rope does not
    rope_base: float = 10000.0  # rope's longest wavelength: pair i turns base^(-2i/hs) per position (RoFormer's
    #                             10000); a larger base (Llama 3: 500000) leaves more pairs nearly still over T, which
    #                             a head matching content far back needs (Men et al. 2024, "Base of RoPE bounds
    #                             context length")
    qk_scale: str = "none"  # "logn": q times a learned per-head s * log(t + 1) at position t (SSMax, Nakanishi 2025),
    #                         so that a match stays as sharp among 2000 keys as among 200; "none": q as it is
    sparse: str = "none"  # natively sparse layers, trained so from step 0: "moba" (MoBA's parameter-free gate, one
    #                       choice per block of queries from its first query, on the block-sparse kernel: the fast
    #                       one), "query_moba" (every query chooses, MoBA's own rule; the per-query kernel), "none"
    sparse_budget: Any = 512  # keys per query of the sparse layers: whole numbers count keys (512: NSA's and MoBA's
    #                           order), decimals are fractions of T (0.125); rounded up to whole blocks
    sparse_block: int = 64  # keys (and queries) per block of the sparse layers: 64 keeps 8 blocks at 512 keys
    sparse_layers: Any = "all"  # which layers are sparse: "all" or a list of indices (every head of each)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "n_head", "d_model"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be divisible by model.n_head ({self.n_head})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.pos not in POSITIONS:
            raise ValueError(f"model.pos={self.pos!r} is unknown: use one of {', '.join(POSITIONS)}")
        if self.qk_scale not in QK_SCALES:
            raise ValueError(f"model.qk_scale={self.qk_scale!r} is unknown: use one of {', '.join(QK_SCALES)}")
        if isinstance(self.rope_base, bool) or not isinstance(self.rope_base, (int, float)) or self.rope_base <= 1:
            raise ValueError(f"model.rope_base={self.rope_base} must be a number above 1 (10000: RoFormer's)")
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"model.pos=rope rotates pairs of dimensions: the head size {self.head_dim} must be even")
        if self.sparse not in GATES:
            raise ValueError(f"model.sparse={self.sparse!r} is unknown: use one of {', '.join(GATES)}")
        if self.sparse != "none":
            if isinstance(self.sparse_block, bool) or not isinstance(self.sparse_block, int) or self.sparse_block <= 0:
                raise ValueError(f"model.sparse_block={self.sparse_block} must be a positive number of keys")
            self.sparse_layer_list()

    def sparse_layer_list(self) -> tuple[int, ...]:
        """The natively sparse layers (none for a dense model); ValueError naming the setting when it is invalid."""
        if self.sparse == "none":
            return ()
        value = self.sparse_layers
        if value == "all":
            return tuple(range(self.n_layer))
        items = [value] if isinstance(value, int) else list(value)
        if not items or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_layer
                            for i in items):
            raise ValueError(f"model.sparse_layers={value} must be 'all' or a list of layer indices in "
                             f"0..{self.n_layer - 1}")
        return tuple(sorted(set(items)))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


@dataclass
class AttentionSignals:
    """What one layer's attention computed, per head, for a batch: the distillation targets.

    The (B, nh, T, T) probabilities are materialised only when ``probs`` is first read (the token selectors' losses
    and the selection metrics read them; a block selector learns from q and k alone, src/sparse/mass.py), and
    ``heads`` narrows everything to some heads first, so a long T pays for the T × T map only where it is used.
    """

    x: torch.Tensor  # (B, T, C) the attention's input (after ln_1): what content-based selectors read
    q: torch.Tensor  # (B, nh, T, hs)
    k: torch.Tensor  # (B, nh, T, hs)
    v: torch.Tensor  # (B, nh, T, hs)
    head_out: torch.Tensor  # (B, nh, T, hs) softmax attention output, before the output projection
    _probs: torch.Tensor | None = field(default=None, repr=False)

    @property
    def probs(self) -> torch.Tensor:
        """(B, nh, T, T) causal softmax(q k^T / sqrt(hs)); zero above the diagonal. Computed once, when first read."""
        if self._probs is None:
            self._probs = causal_attention_probs(self.q, self.k)
        return self._probs

    def heads(self, h: list[int]) -> AttentionSignals:
        """The signals of heads ``h`` only (x is shared by every head)."""
        probs = None if self._probs is None else self._probs[:, h]
        return AttentionSignals(self.x, self.q[:, h], self.k[:, h], self.v[:, h], self.head_out[:, h], probs)


def causal_attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Materialised causal softmax attention: (B, nh, T, hs) x2 -> (B, nh, T, T)."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (seq_len, head_dim / 2) each: position t turns dimension pair i by
    t / base^(2i / head_dim) (RoFormer; the GPT-NeoX / LLaMA layout: pairs are (i, i + head_dim / 2))."""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hs / 2,)
    angles = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv  # (T, hs / 2)
    return angles.cos(), angles.sin()


def rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int = 0) -> torch.Tensor:
    """(B, nh, T, hs) -> the same vectors turned by their positions start..start+T-1: q · k then depends on the
    offset only."""
    T, half = t.size(-2), t.size(-1) // 2
    a, b = t[..., :half], t[..., half:]
    cos, sin = cos[start:start + T].to(t.dtype), sin[start:start + T].to(t.dtype)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


@dataclass
class LayerCache:
    """One layer's keys and values for the tokens so far, in buffers allocated once for ``max_len`` positions (a
    step writes one row; nothing is copied as the context grows)."""

    k: torch.Tensor  # (B, nh, max_len, hs): positions < pos hold the keys so far
    v: torch.Tensor  # (B, nh, max_len, hs)
    pos: int = 0  # tokens cached before this call
    state: Any = None  # what the layer's attention keeps beside them (a sparse layer: src/sparse/decode.py)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens' k, v (B, nh, Tn, hs) at pos..pos+Tn-1 -> every cached key and value so far, views
        (B, nh, pos + Tn, hs)."""
        end = self.pos + k.size(-2)
        if end > self.k.size(-2):
            raise ValueError(f"the KV cache holds {self.k.size(-2)} positions; {end} do not fit (slide the context)")
        self.k[:, :, self.pos:end] = k
        self.v[:, :, self.pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class KVCache:
    """Every layer's LayerCache. ``GPT.forward(idx, cache=...)`` reads and extends it: first the whole prompt at
    position 0 (prefill), then one token per call (decode)."""

    def __init__(self, cfg: GPTConfig, batch: int, device=None, dtype=torch.float32, max_len: int | None = None):
        self.max_len = max_len or cfg.seq_len  # positions it can hold: the model's T
        shape = (batch, cfg.n_head, self.max_len, cfg.head_dim)
        self.layers = [LayerCache(torch.zeros(shape, device=device, dtype=dtype),
                                  torch.zeros(shape, device=device, dtype=dtype)) for _ in range(cfg.n_layer)]

    @property
    def pos(self) -> int:
        """Tokens cached so far: the position of the next one."""
        return self.layers[0].pos

    def advance(self, n: int) -> None:
        for layer in self.layers:
            layer.pos += n

    def rewind(self, pos: int) -> None:
        """Forget the tokens from ``pos`` on (the benchmark times one step again and again at the same length)."""
        for layer in self.layers:
            layer.pos = pos


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: int) -> torch.Tensor:
    """Causal attention of the new queries q (B, h, Tn, hs) at positions pos..pos+Tn-1 over every cached key so far
    k, v (B, h, pos + Tn, hs): the prompt (pos 0) is ordinary causal attention, a single new token reads all keys
    (GPT.forward allows nothing else)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=pos == 0)


class CausalSelfAttention(nn.Module):
    """Full multi-head causal attention (SDPA). The reference every sparse variant is measured against."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.rope = cfg.pos == "rope"
        if self.rope:  # not saved: recomputed from the config
            cos, sin = rotary_tables(cfg.seq_len, cfg.head_dim, cfg.rope_base)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)
        self.logn = cfg.qk_scale == "logn"
        if self.logn:  # SSMax: s starts at 1 / log(256), q as it was at position 255, sharper beyond, softer before
            self.q_gain = nn.Parameter(torch.full((cfg.n_head,), 1 / math.log(256)))  # (nh,): not weight-decayed
            self.register_buffer("log_pos", torch.arange(1, cfg.seq_len + 1).log()[:, None], persistent=False)
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)  # q, k, v for all heads
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.sparse: nn.Module | None = None  # model.sparse: src.sparse's SparseAttention over every head, set by
        #                                       src/hybrid.py build_gpt (it holds no weights)

    def qkv(self, x: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, C) at positions start..start+T-1 -> q, k, v, each (B, nh, T, hs); q and k rotated by their
        positions with rope, q scaled by its position's log with model.qk_scale=logn."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, dim=2))
        if self.rope:
            q, k = rotate(q, self.cos, self.sin, start), rotate(k, self.cos, self.sin, start)
        if self.logn:  # (nh, 1, 1) * (T, 1) -> (nh, T, 1)
            q = q * (self.q_gain[:, None, None] * self.log_pos[start:start + T]).to(q.dtype)
        return q, k, v

    def merge_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, nh, T, hs) -> output projection of the concatenated heads, (B, T, C)."""
        B, nh, T, hs = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, nh * hs)))

    def forward(self, x: torch.Tensor, signals: list | None = None, cache: LayerCache | None = None) -> torch.Tensor:
        if cache is not None:  # generation: the new tokens against every cached key
            q, k, v = self.qkv(x, cache.pos)
            pos = cache.pos
            keys, values = cache.append(k, v)
            if self.sparse is not None:  # the gate's blocks only (src/sparse/decode.py)
                return self.merge_heads(self.sparse.decode(x, q, cache))
            return self.merge_heads(cached_attention(q, keys, values, pos))
        q, k, v = self.qkv(x)  # (B, nh, T, hs)
        if self.sparse is not None:  # natively sparse: the blocks the gate picks, on a block-sparse kernel
            y = self.sparse(x, q, k, v)
            if signals is not None:
                signals.append(AttentionSignals(x=x, q=q, k=k, v=v, head_out=y))
        elif signals is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:  # the teacher signals (no dropout: they are targets)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            signals.append(AttentionSignals(x=x, q=q, k=k, v=v, head_out=y))
        return self.merge_heads(y)


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn: nn.Module = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, signals: list | None = None, attn: nn.Module | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        attn = attn or self.attn
        x = x + (attn(self.ln_1(x), signals) if cache is None else attn(self.ln_1(x), signals, cache))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token embedding, tied to lm_head
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos == "learned" else None  # learned positions
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scaled init of the residual projections
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() if non_embedding and self.wpe is not None else n

    def set_attention(self, layer: int, attn: nn.Module) -> None:
        """Replace one block's attention by any module with the signature attn(x, signals=None)."""
        self.blocks[layer].attn = attn

    def forward(
        self,
        idx: torch.Tensor,
        signals: dict[int, AttentionSignals] | None = None,
        attention: dict[int, nn.Module] | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, V).

        Pass ``signals={layer: None, ...}`` to have the teacher signals of those layers filled in, and
        ``attention={layer: module}`` to run those layers with another attention for this call only
        (how a hybrid runs on the teacher's weights without copying them). With ``cache``, idx are the tokens
        after the cached ones (the prompt into an empty cache, then one token per call) and the cache grows by them.
        """
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start and T != 1:
            raise ValueError(f"a cached forward takes the whole prompt at position 0 or one token at a time, got "
                             f"{T} tokens at position {start}")
        if start + T > self.cfg.seq_len:
            raise ValueError(f"sequence of length {start + T} is longer than model.seq_len={self.cfg.seq_len}")
        if self.cfg.sparse != "none" and self.blocks[self.cfg.sparse_layer_list()[0]].attn.sparse is None:
            raise ValueError(f"model.sparse={self.cfg.sparse}: build the model with src.hybrid.build_gpt, which gives "
                             "its sparse layers their gate (GPT(cfg) alone is dense)")
        x = self.embed(idx, start)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            box: list | None = [] if signals is not None and i in signals else None
            x = block(x, box, attention.get(i) if attention else None, cache.layers[i] if cache is not None else None)
            if box:
                signals[i] = box[0]
        if cache is not None:
            cache.advance(T)
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """idx (B, T) at positions start.. -> the first block's input (B, T, C)."""
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + idx.size(1), device=idx.device))
        return self.drop(x)

    @torch.no_grad()
    def signals(self, idx: torch.Tensor, layers) -> dict[int, AttentionSignals]:
        """The teacher signals of ``layers`` alone, as ``forward(idx, signals=...)`` fills them in: the blocks up to the
        last of those layers run, the ones after it and the lm_head do not (what a distillation step needs)."""
        if idx.size(1) > self.cfg.seq_len:
            raise ValueError(f"sequence of length {idx.size(1)} is longer than model.seq_len={self.cfg.seq_len}")
        out: dict[int, AttentionSignals] = {}
        x = self.embed(idx)
        for i, block in enumerate(self.blocks[: max(layers) + 1]):
            box: list | None = [] if i in layers else None
            x = block(x, box)
            if box:
                out[i] = box[0]
        return out

    def new_cache(self, batch: int) -> KVCache:
        """An empty KV cache of this model's T for ``batch`` sequences, on its device and in its dtype."""
        p = next(self.parameters())
        return KVCache(self.cfg, batch, p.device, p.dtype)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 attention: dict[int, nn.Module] | None = None, on_token=None) -> torch.Tensor:
        """Sample max_new_tokens continuations of idx (B, T) with a KV cache (``attention``: as in forward, e.g. a
        hybrid's sparse layers); ``on_token(nxt)`` is called with each step's new tokens (B, 1).

        The prompt (its last seq_len tokens) is run once, then one token per step reads the cached keys and values:
        the same logits as running the whole context again for every token (tests), for O(T) work per token
        instead of O(T²). When the cache is full the context *slides*: the cache restarts from the last
        seq_len // 2 tokens, run again as a prompt (positions are absolute -- learned embeddings and rotary
        tables cover 0..seq_len-1 -- so cached keys cannot be shifted), and each token then sees between
        seq_len / 2 and seq_len tokens of context, where recomputing would always see seq_len at seq_len times the
        work.
        """
        T = self.cfg.seq_len
        cache = self.new_cache(idx.size(0))
        logits = self(idx[:, -T:], attention=attention, cache=cache)[:, -1]  # (B, V): prefill
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            if on_token is not None:
                on_token(nxt)
            if i == max_new_tokens - 1:
                break
            if cache.pos == T:  # full: slide
                cache = self.new_cache(idx.size(0))
                logits = self(idx[:, -(T // 2):], attention=attention, cache=cache)[:, -1]
            else:
                logits = self(nxt, attention=attention, cache=cache)[:, -1]
        return idx


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None) -> torch.Tensor:
    """One token per row from logits (B, V): softmax at ``temperature`` over the ``top_k`` best (None: all)."""
    logits = logits / max(temperature, 1e-6)
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1)  # (B, 1)
