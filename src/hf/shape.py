"""A Hugging Face model's config in the project's terms: what HybridSpec and SparseParts read of a GPTConfig (layers,
heads, widths, T), and whether its family is one the sparse heads serve. Reads attributes only: no weights."""

from __future__ import annotations

from dataclasses import dataclass

TESTED = ("llama", "gpt2")  # built, saved and run end to end by the tests (tiny configs)
SAME_LAYOUT = ("mistral", "qwen2", "qwen3")  # Llama's attention code (q/k norms before rope in qwen3): the same call
FAMILIES = TESTED + SAME_LAYOUT
LEARNED = ("gpt2",)  # learned position embeddings; the others rotate q and k (rope)


@dataclass(frozen=True)
class HFShape:
    vocab_size: int  # rows of the model's embedding (the tokenizer's ids must stay below it)
    seq_len: int  # the windows the project runs: model.seq_len, at most the model's positions
    n_layer: int
    n_head: int  # query heads
    n_kv_head: int  # key/value heads (GQA: fewer than n_head)
    d_model: int  # the layer input's width: what content-based selectors read
    head_dim: int
    pos: str  # learned | rope
    family: str  # the config's model_type
    max_len: int  # the model's positions
    sparse: str = "none"  # a pretrained model is dense (src/hybrid.py HybridSpec asks)


def shape_of(config, seq_len: int) -> HFShape:
    n_head = config.num_attention_heads
    return HFShape(
        vocab_size=config.vocab_size, seq_len=seq_len, n_layer=config.num_hidden_layers, n_head=n_head,
        n_kv_head=getattr(config, "num_key_value_heads", None) or n_head, d_model=config.hidden_size,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // n_head,
        pos="learned" if config.model_type in LEARNED else "rope", family=config.model_type,
        max_len=getattr(config, "max_position_embeddings", None) or seq_len)


def family_problem(config, name: str) -> str | None:
    """Why the sparse heads cannot serve this model (None: they can), one line naming the fix."""
    family = config.model_type
    if family not in FAMILIES:
        return (f"teacher.hf.model={name} is a {family!r} model, which the sparse heads do not serve yet: use one of "
                f"the families {', '.join(FAMILIES)} (plain causal attention through transformers' attention "
                "interface)")
    kinds = set(getattr(config, "layer_types", None) or ())
    if kinds - {"full_attention"} or (family == "mistral" and getattr(config, "sliding_window", None)):
        return (f"teacher.hf.model={name} has sliding-window layers, which the sparse heads do not apply: use a "
                "model with full attention in every layer")
    return None


def shape_problem(shape: HFShape, name: str) -> str | None:
    """Why model.seq_len does not fit the model (None: it does)."""
    if shape.seq_len > shape.max_len:
        return (f"model.seq_len={shape.seq_len} is longer than teacher.hf.model={name} was made for "
                f"({shape.max_len} positions): give model.seq_len={shape.max_len} or less")
    if shape.n_head % shape.n_kv_head:
        return f"teacher.hf.model={name}: {shape.n_head} query heads do not share {shape.n_kv_head} key/value heads"
    return None
