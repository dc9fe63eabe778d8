"""Tiny Hugging Face models made here, without a network: a byte-level BPE tokenizer trained on the project's corpus
(``tokenizers``), a Llama (GQA, rotary) or GPT-2 (learned positions) built from its config, optionally trained a
few hundred steps on the same corpus, and saved with ``save_pretrained`` -- a folder that ``teacher=hf
teacher.hf.model=FOLDER`` loads like any pretrained model (the tests' models, the README's figures). To make one that
looks back, a share of each batch can be recall episodes woven into the corpus (src/data/recall.py, tokenised) and
periodic random token strings (the induction warm-up kept in the mix, as ``data.periodic`` does for the GPT).

    python -m src.hf.tiny --family llama --out outputs/hf/tiny-llama --steps 600
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from src.errors import Parser, positive_int

log = logging.getLogger(__name__)

FAMILIES = ("llama", "gpt2")
SPECIAL = "<|endoftext|>"


def train_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE tokenizer (GPT-2's kind: every text encodes, nothing is unknown) of ``vocab_size`` tokens
    learnt from ``text``, as a transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((text[i:i + 10_000] for i in range(0, len(text), 10_000)), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL, eos_token=SPECIAL)


def tiny_config(family: str, vocab_size: int, positions: int, width: int = 64, layers: int = 2, heads: int = 4,
                kv_heads: int = 2):
    """A tiny config: Llama with ``kv_heads`` key/value heads (GQA) and rotary positions, or GPT-2 with learned
    positions (every head its own key/value head)."""
    from transformers import GPT2Config, LlamaConfig

    if family == "llama":
        return LlamaConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width,
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                           max_position_embeddings=positions, tie_word_embeddings=True, bos_token_id=0,
                           eos_token_id=0, pad_token_id=None)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=width, n_layer=layers, n_head=heads, n_positions=positions,
                          bos_token_id=0, eos_token_id=0)
    raise ValueError(f"family {family!r}: use one of {', '.join(FAMILIES)}")


def episode_windows(text: str, tokenizer, n: int, length: int, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` windows of ``length`` tokens, each a recall episode (passkey, multikey, mqar with 2 pairs, at a
    random depth) woven into a random passage of ``text`` and tokenised (its oldest tokens dropped to fit): (n,
    length)."""
    from src.data.recall import TASKS, episode

    sample = text[:200_000]
    chars = int(1.15 * length * len(sample) / len(tokenizer(sample, add_special_tokens=False)["input_ids"]))
    rows = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        start = rng.randrange(0, len(text) - chars)
        try:
            e = episode(rng.choice(TASKS), rng, text[start:start + chars], rng.random(), 2, 2)
        except ValueError:  # a short window: the episodes that fit
            continue
        ids = tokenizer(e.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            rows.append(ids[-length:])
    return torch.tensor(rows)


def periodic_windows(n: int, length: int, vocab: int, g: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``length`` random tokens, each a random string of 8 to length / 2 tokens repeated: (n,
    length)."""
    rows = []
    for _ in range(n):
        period = int(torch.randint(8, max(9, length // 2), (1,), generator=g))
        unit = torch.randint(1, vocab, (period,), generator=g)
        rows.append(unit.repeat(length // period + 1)[:length])
    return torch.stack(rows) if rows else torch.zeros(0, length, dtype=torch.long)


def train_steps(model, tokens: torch.Tensor, steps: int, seq_len: int, batch: int = 16, lr: float = 3e-3,
                seed: int = 0, episodes: torch.Tensor | None = None, share: float = 0.0,
                periodic: float = 0.0) -> float:
    """``steps`` of AdamW (warm-up, cosine decay) on random windows of ``tokens`` -- ``share`` of each batch from
    ``episodes`` (n, seq_len + 1), ``periodic`` of it periodic random strings: the last step's loss."""
    g = torch.Generator().manual_seed(seed)
    n_episodes = round(share * batch) if episodes is not None and len(episodes) else 0
    n_periodic = round(periodic * batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        starts = torch.randint(0, len(tokens) - seq_len - 1, (batch - n_episodes - n_periodic,), generator=g)
        window = torch.stack([tokens[s:s + seq_len + 1] for s in starts.tolist()]
                             + list(episodes[torch.randint(0, len(episodes), (n_episodes,), generator=g)]
                                    if n_episodes else [])
                             + list(periodic_windows(n_periodic, seq_len + 1, model.config.vocab_size, g)))
        logits = model(input_ids=window[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("step %d: loss %.3f", step, loss.item())
    return loss.item()


def make_tiny(family: str, out: Path, text: str, vocab_size: int = 512, positions: int = 256, steps: int = 0,
              seq_len: int = 128, seed: int = 0, width: int = 64, layers: int = 2, episodes: float = 0.0,
              periodic: float = 0.0, init: Path | None = None) -> dict:
    """Tokenizer + model of ``family`` from ``text`` (``init``: those of a folder saved before, trained further),
    trained ``steps`` steps, saved into ``out`` -> what was done."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    if init:
        tokenizer = AutoTokenizer.from_pretrained(init)
        model = AutoModelForCausalLM.from_pretrained(init, attn_implementation="sdpa")
        family = model.config.model_type
    else:
        tokenizer = train_tokenizer(text, vocab_size)
        model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer), positions, width, layers),
                                                 attn_implementation="sdpa")
    info = {"family": family, "folder": Path(out), "vocab": len(tokenizer), "parameters": model.num_parameters(),
            "steps": steps}
    if steps:
        tokens = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
        begin = time.perf_counter()
        windows = episode_windows(text, tokenizer, min(4000, 4 * steps), seq_len + 1, seed) if episodes else None
        info["loss"] = train_steps(model, tokens, steps, seq_len, seed=seed, episodes=windows, share=episodes,
                                   periodic=periodic)
        info["seconds"] = time.perf_counter() - begin
        info["chars_per_token"] = len(text) / len(tokens)
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return info


def main(argv=None) -> None:
    from src.data.corpora import corpus_text

    parser = Parser(prog="python -m src.hf.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=FAMILIES, default="llama")
    parser.add_argument("--out", required=True, help="the folder to save the model and its tokenizer into")
    parser.add_argument("--steps", type=int, default=600, help="training steps on the corpus (0: random weights)")
    parser.add_argument("--vocab", type=positive_int, default=512, help="tokens of the BPE tokenizer")
    parser.add_argument("--chars", type=positive_int, default=2_000_000, help="characters of Shakespeare used")
    parser.add_argument("--width", type=positive_int, default=64, help="hidden size (4 heads; Llama: 2 key/value)")
    parser.add_argument("--layers", type=positive_int, default=2)
    parser.add_argument("--seq-len", type=positive_int, default=128, help="tokens per training window")
    parser.add_argument("--episodes", type=float, default=0.0, help="share of each batch: recall episodes")
    parser.add_argument("--periodic", type=float, default=0.0, help="share of each batch: periodic random strings")
    parser.add_argument("--init", help="a folder saved before: train its model further (its tokenizer kept)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = corpus_text("shakespeare")[: args.chars]
    info = make_tiny(args.family, Path(args.out), text, args.vocab, steps=args.steps, width=args.width,
                     layers=args.layers, seq_len=args.seq_len, episodes=args.episodes, periodic=args.periodic,
                     init=args.init)
    print(", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()))


if __name__ == "__main__":
    main()
