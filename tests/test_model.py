"""The GPT: shapes, causality, teacher signals, config validation."""

from __future__ import annotations

import pytest
import torch

from src.model import GPT, GPTConfig


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 17, "seq_len": 24, "n_layer": 2, "n_head": 2, "d_model": 32, **kw})).eval()


def test_shapes():
    m = tiny_gpt()
    assert m(torch.randint(0, 17, (3, 24))).shape == (3, 24, 17)
    assert m(torch.randint(0, 17, (1, 5))).shape == (1, 5, 17)


POSITION_KINDS = [{"pos": "learned"}, {"pos": "rope"}, {"pos": "rope", "rope_base": 5e5, "qk_scale": "logn"},
                  {"pos": "learned", "qk_scale": "logn"}]


@pytest.mark.parametrize("pos", POSITION_KINDS)
def test_causal(pos):
    """Logits at position t do not change when tokens after t change."""
    m = tiny_gpt(**pos)
    x = torch.randint(0, 17, (2, 24))
    for t in (0, 7, 22):
        y = x.clone()
        y[:, t + 1 :] = (y[:, t + 1 :] + 1) % 17
        torch.testing.assert_close(m(x)[:, : t + 1], m(y)[:, : t + 1])
    # and the last position does see the tokens before it
    y = x.clone()
    y[:, 0] = (x[:, 0] + 1) % 17
    assert not torch.allclose(m(x)[:, -1], m(y)[:, -1])


def test_rope_scores_depend_on_the_offset_only():
    """Rotated q · k is the same for every pair of positions the same distance apart, and norms are kept."""
    from src.model import rotary_tables, rotate

    cos, sin = rotary_tables(16, 8)
    q, k = torch.randn(8), torch.randn(8)
    qs, ks = (rotate(t.expand(1, 1, 16, 8), cos, sin)[0, 0] for t in (q, k))
    torch.testing.assert_close(qs.norm(dim=-1), q.norm().expand(16))
    for offset in (0, 3):
        dots = torch.stack([qs[i + offset] @ ks[i] for i in range(16 - offset)])
        torch.testing.assert_close(dots, dots[:1].expand_as(dots))
    assert tiny_gpt(pos="rope").wpe is None


def test_signals_match_sdpa_path():
    m = tiny_gpt()
    x = torch.randint(0, 17, (2, 24))
    signals = {0: None, 1: None}
    logits = m(x, signals=signals)
    torch.testing.assert_close(logits, m(x), atol=1e-5, rtol=1e-5)
    s = signals[1]
    B, nh, T, hs = 2, 2, 24, 16
    assert s.q.shape == s.k.shape == s.v.shape == s.head_out.shape == (B, nh, T, hs)
    assert s._probs is None  # the T × T map only when it is read
    one = s.heads([1])
    assert one.q.shape == (B, 1, T, hs) and one.probs.shape == (B, 1, T, T) and s._probs is None
    assert s.probs.shape == (B, nh, T, T)
    torch.testing.assert_close(s.probs.sum(-1), torch.ones(B, nh, T))
    assert torch.all(s.probs.triu(1) == 0)  # no weight on future keys
    torch.testing.assert_close(s.probs @ s.v, s.head_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.heads([1]).probs, s.probs[:, [1]])


def test_signals_alone_are_the_forward_s(monkeypatch):
    """GPT.signals(idx, layers) gives the signals a full forward fills in, without running the later blocks."""
    m = tiny_gpt()
    x = torch.randint(0, 17, (2, 24))
    full = {0: None}
    m(x, signals=full)
    ran = []
    for i, block in enumerate(m.blocks):
        monkeypatch.setattr(block, "forward", lambda *a, _i=i, _f=block.forward, **k: (ran.append(_i), _f(*a, **k))[1])
    alone = m.signals(x, [0])
    assert ran == [0] and list(alone) == [0]  # block 1 and the lm_head never ran
    for name in ("x", "q", "k", "v", "head_out"):
        torch.testing.assert_close(getattr(alone[0], name), getattr(full[0], name))


def test_set_attention_swaps_one_layer():
    m = tiny_gpt()

    class Zero(torch.nn.Module):
        def forward(self, x, signals=None):
            return torch.zeros_like(x)

    x = torch.randint(0, 17, (1, 24))
    before = m(x)
    m.set_attention(1, Zero())
    assert not torch.allclose(before, m(x))


def test_logn_scales_each_query_by_its_position():
    """model.qk_scale=logn: q at position t is the plain q times s_h * log(t + 1), k and v unchanged; the gain is a
    parameter of its own (one per head) and the rope base turns the pairs more slowly."""
    plain, scaled = tiny_gpt(pos="rope"), tiny_gpt(pos="rope", qk_scale="logn")
    with torch.no_grad():
        scaled.blocks[0].attn.q_gain.copy_(torch.tensor([0.5, 2.0]))
    x = torch.randn(1, 24, 32)
    (q0, k0, v0), (q1, k1, v1) = plain.blocks[0].attn.qkv(x), scaled.blocks[0].attn.qkv(x)
    gain = torch.tensor([0.5, 2.0])[:, None, None] * torch.arange(1, 25).log()[:, None]  # (nh, T, 1)
    torch.testing.assert_close(q1, q0 * gain)
    torch.testing.assert_close((k1, v1), (k0, v0))
    assert scaled.blocks[0].attn.q_gain.dim() == 1  # the optimiser does not decay it
    slow = tiny_gpt(pos="rope", rope_base=1e6).blocks[0].attn
    assert slow.cos[-1, -1] > plain.blocks[0].attn.cos[-1, -1]


def test_too_long_sequence():
    with pytest.raises(ValueError, match="longer than model.seq_len"):
        tiny_gpt()(torch.zeros(1, 25, dtype=torch.long))


@pytest.mark.parametrize(
    "kw,msg",
    [({"d_model": 30, "n_head": 4}, "divisible"), ({"n_layer": 0}, "n_layer"), ({"dropout": 1.0}, "dropout"),
     ({"pos": "alibi"}, "model.pos='alibi' is unknown: use one of learned, rope"),
     ({"pos": "rope", "d_model": 6, "n_head": 2}, "head size 3 must be even"),
     ({"qk_scale": "ssmax"}, "model.qk_scale='ssmax' is unknown: use one of none, logn"),
     ({"rope_base": 0.5}, "model.rope_base=0.5 must be a number above 1")],
)
def test_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        GPTConfig(**kw)


def test_generate_length():
    m = tiny_gpt()
    out = m.generate(torch.zeros(1, 3, dtype=torch.long), 30, top_k=5)
    assert out.shape == (1, 33)


@pytest.mark.parametrize("pos", POSITION_KINDS)
@pytest.mark.parametrize("prompt", [1, 7, 24])
def test_kv_cache_equals_recompute(pos, prompt):
    """Prefill + one token at a time through the KV cache gives the logits of one pass over the whole sequence."""
    from src.model import KVCache

    m = tiny_gpt(**pos)
    x = torch.randint(0, 17, (2, 24))
    cache = KVCache(m.cfg, 2)
    with torch.no_grad():
        steps = [m(x[:, :prompt], cache=cache)] + [m(x[:, t:t + 1], cache=cache) for t in range(prompt, 24)]
    assert cache.pos == 24
    torch.testing.assert_close(torch.cat(steps, 1), m(x), atol=1e-5, rtol=1e-5)


def test_kv_cache_errors():
    from src.model import KVCache

    m = tiny_gpt()
    cache = KVCache(m.cfg, 1)
    m(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="whole prompt at position 0 or one token at a time"):
        m(torch.zeros(1, 2, dtype=torch.long), cache=cache)
    cache.rewind(24)
    with pytest.raises(ValueError, match="longer than model.seq_len=24"):
        m(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_generate_with_cache_samples_as_recompute():
    """Greedy (top_k=1) generation with the cache picks the tokens that recomputing the whole context picks, until
    the context slides; past it the output keeps its length and every token stays in the vocabulary."""
    m = tiny_gpt(pos="rope")
    idx = torch.randint(0, 17, (2, 5))
    out = m.generate(idx, 19, top_k=1)  # fills the 24 positions exactly: no slide
    ref = idx
    for _ in range(19):
        ref = torch.cat([ref, m(ref)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ref)
    long = m.generate(idx, 60, top_k=1)  # slides twice
    assert long.shape == (2, 65) and long.max() < 17 and torch.equal(long[:, :24], ref)
