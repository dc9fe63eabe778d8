"""The project's attention function inside Hugging Face models (src/hf/attention.py, teacher.py, hybrid.py), on the
session's tiny saved Llama (GQA, rotary) and GPT-2 (learned positions): with every key kept the hybrid is the model
(its own SDPA, 1e-5) on every kernel; no position reads a later one; generation through the model's cache gives the
full forward's logits; the teacher signals are the model's own q, k, v."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from src.hf.load import load_teacher
from src.hybrid import HybridSpec, SparseParts
from tests.hf.conftest import T, VOCAB


def teacher_of(folder: str):
    return load_teacher({"model": folder}, T)


def hybrid(teacher, selector: str, heads="all", layers="all", kernel: str = "auto", approximator: str = "softmax",
           **budget) -> dict:
    """Sparse parts with random weights large enough to make distinct choices, as the teacher's overrides."""
    spec = HybridSpec.from_config(teacher.cfg, layers=layers, heads=heads, kernel=kernel, **budget)
    torch.manual_seed(1)
    parts = SparseParts(spec, teacher.cfg, {"name": selector, "block_size": 8}, {"name": approximator}).eval()
    for p in parts.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return teacher.hybrid_attention(spec, parts)


def tokens(B: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_the_registered_function_alone_is_the_model_s_sdpa(hf_folder):
    teacher = teacher_of(hf_folder)
    own = AutoModelForCausalLM.from_pretrained(hf_folder, attn_implementation="sdpa").eval()
    x = tokens()
    assert torch.allclose(teacher(x), own(input_ids=x).logits, atol=1e-5)
    signals = {0: None, 1: None}
    assert torch.allclose(teacher(x, signals=signals), own(input_ids=x).logits, atol=1e-5)  # the signals' SDPA


@pytest.mark.parametrize("selector,kernel,heads", [
    ("block", "tiles", "all"), ("block", "gather", [1, 2]), ("query_block", "query_tiles", "all"),
    ("indexer", "masked", [0, 3]), ("indexer", "gather", "all"), ("window", "auto", [2]),
])
@torch.no_grad()
def test_every_key_kept_is_the_model(hf_folder, selector, kernel, heads):
    teacher = teacher_of(hf_folder)
    own = AutoModelForCausalLM.from_pretrained(hf_folder, attn_implementation="sdpa").eval()
    x = tokens()
    logits = teacher(x, attention=hybrid(teacher, selector, heads, kernel=kernel, budget=1.0))
    assert torch.allclose(logits, own(input_ids=x).logits, atol=1e-5)


@pytest.mark.parametrize("selector,budget", [("block", 16), ("query_block", 16), ("indexer", 8), ("oracle", 8)])
@torch.no_grad()
def test_the_hybrid_is_causal_through_the_model_and_drops_keys(hf_folder, selector, budget):
    teacher = teacher_of(hf_folder)
    attention = hybrid(teacher, selector, budget=budget)
    x = tokens(1)
    y = x.clone()
    y[0, 30:] = (y[0, 30:] + 1) % VOCAB
    a, b = teacher(x, attention=attention), teacher(y, attention=attention)
    assert torch.allclose(a[:, :30], b[:, :30], atol=1e-6)
    assert not torch.allclose(a, teacher(x), atol=1e-4)  # keys were dropped


@torch.no_grad()
def decode(teacher, attention, x: torch.Tensor, prompt: int) -> torch.Tensor:
    """Logits of every position: the first ``prompt`` tokens as one prefill, then one token per call."""
    cache = teacher.new_cache(x.size(0))
    steps = [teacher(x[:, :prompt], attention=attention, cache=cache)]
    steps += [teacher(x[:, t:t + 1], attention=attention, cache=cache) for t in range(prompt, x.size(1))]
    return torch.cat(steps, 1)


@pytest.mark.parametrize("selector,heads,budget", [
    (None, None, None), ("block", "all", {"budget": 16}), ("block", [1, 3], {"budget": 16, "mass": 0.9}),
    ("query_block", "all", {"budget": 16}), ("indexer", [0, 2], {"budget": 8}), ("window", "all", {"budget": 8}),
])
@pytest.mark.parametrize("prompt", [1, 13, 16])
@torch.no_grad()
def test_generation_through_the_cache_is_the_full_forward(hf_folder, selector, heads, budget, prompt):
    teacher = teacher_of(hf_folder)
    attention = hybrid(teacher, selector, heads, **budget) if selector else None
    x = tokens()
    assert torch.allclose(decode(teacher, attention, x, prompt), teacher(x, attention=attention), atol=1e-4)


@torch.no_grad()
def test_generate_slides_past_the_context(hf_folder):
    teacher = teacher_of(hf_folder)
    out = teacher.generate(tokens(2)[:, :5], T + 10, top_k=1, attention=hybrid(teacher, "block", budget=16))
    assert out.shape == (2, T + 15) and int(out.max()) < VOCAB


@torch.no_grad()
def test_the_signals_are_the_model_s_q_k_v_after_rotary_and_gqa(hf_folder):
    teacher = teacher_of(hf_folder)
    x = tokens()
    full = {0: None, 1: None}
    teacher(x, signals=full)
    alone = teacher.signals(x, [1])
    assert set(alone) == {1} and torch.equal(alone[1].q, full[1].q) and torch.equal(alone[1].head_out, full[1].head_out)
    s, cfg = full[0], teacher.cfg
    assert s.q.shape == s.k.shape == s.v.shape == (2, cfg.n_head, T, cfg.head_dim) and s.x.shape == (2, T, cfg.d_model)
    group = cfg.n_head // cfg.n_kv_head
    assert torch.equal(s.k[:, 0], s.k[:, group - 1])  # GQA: the heads of a group read one key head
    assert torch.allclose(s.probs @ s.v, s.head_out, atol=1e-5)
    assert all(t.signals is None and t.x is None for t in teacher.taps)  # nothing kept after the call


@torch.no_grad()
def test_a_bfloat16_model_runs_its_sparse_heads_in_float32(hf_folder):
    teacher = load_teacher({"model": hf_folder, "dtype": "bfloat16"}, T)
    own = AutoModelForCausalLM.from_pretrained(hf_folder, attn_implementation="sdpa", dtype=torch.bfloat16).eval()
    x = tokens()
    attention = hybrid(teacher, "block", budget=1.0)
    logits = teacher(x, attention=attention)
    assert logits.dtype == torch.float32 and torch.allclose(logits, own(input_ids=x).logits.float(), atol=0.05)
    signals = teacher.signals(x, [0])
    assert signals[0].q.dtype == signals[0].x.dtype == torch.float32
    assert teacher.generate(x[:, :8], 4, top_k=1, attention=hybrid(teacher, "block", budget=16)).shape == (2, 12)
