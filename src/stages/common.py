"""What every stage shares: the model settings of a run, its data (checked against the checkpoint it starts from),
the learning-rate schedule, generated text, and the teacher's weights inside a checkpoint."""

from __future__ import annotations

import math
from dataclasses import fields

import torch
from omegaconf import DictConfig, OmegaConf

from src.config import DataConf, hf_teacher
from src.data import CharDataModule, Vocab
from src.errors import UserError
from src.hybrid import build_gpt
from src.model import GPT, GPTConfig
from src.runs.commands import command_for
from src.runs.lookup import mismatch


def gpt_config(model: dict, vocab_size: int) -> GPTConfig:
    """Model group of the Hydra config (+ the data's vocabulary size) -> GPTConfig; extra keys ignored."""
    names = {f.name for f in fields(GPTConfig)}
    try:
        return GPTConfig(vocab_size=vocab_size, **{k: v for k, v in model.items() if k in names})
    except ValueError as e:
        raise UserError(str(e)) from None


def model_shape(cfg: DictConfig):
    """The shape of the run's teacher, without its weights: a GPTConfig of model.*, or a Hugging Face model's layers,
    heads and widths (src/hf/shape.py HFShape, from its config; teacher=hf)."""
    hf = hf_teacher(cfg)
    if hf:
        from src.hf.load import model_shape as hf_shape

        return hf_shape(hf, cfg.model.seq_len)
    return gpt_config(plain(cfg, "model"), vocab_size=2)


def build_model(model: dict, vocab_size: int) -> GPT:
    """Model group of the Hydra config (+ the vocabulary size) -> the model (src/hybrid.py build_gpt: natively sparse
    layers where ``model.sparse`` asks); a setting that does not fit ends in one line naming it."""
    try:
        return build_gpt(gpt_config(model, vocab_size))
    except ValueError as e:
        raise UserError(str(e)) from None


def warmup_cosine(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step``: linear warm-up to lr, then cosine decay to min_lr at ``total`` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def adamw(module, groups, **settings) -> torch.optim.AdamW:
    """AdamW over ``groups`` (parameters, or dicts of them with their own settings), fused -- one kernel over every
    parameter instead of a dozen small ones each -- where PyTorch has the fused kernel (CPU, CUDA) and the run's
    precision is not mixed (Lightning refuses to clip a fused optimizer's gradients under autocast): 1.9 ms instead
    of 6.6 ms per step for the baby model's 0.8 M parameters on one CPU thread, the same update."""
    groups = list(groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    trainer = module._trainer  # None outside a Trainer (a test's module)
    mixed = trainer is not None and "mixed" in str(trainer.precision)
    fused = not mixed and bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, fused=fused or None, **settings)


def build_datamodule(cfg: DictConfig, source: tuple[str, dict] | None = None) -> CharDataModule:
    """The run's data (data.*, model.seq_len, seed), set up. With ``source`` -- (path, checkpoint) of what the run
    starts from -- the data must have exactly the vocabulary that checkpoint was trained with (src/runs/lookup.py
    ``mismatch``), or one line naming the fix. A Hugging Face teacher (teacher=hf) reads the corpus with its own
    tokenizer: windows of model.seq_len tokens."""
    settings = {f.name: cfg.data[f.name] for f in fields(DataConf) if f.name in cfg.data}
    hf = hf_teacher(cfg)
    if hf:
        from src.hf.load import load_vocab

        settings["vocab"] = load_vocab(hf)
    dm = CharDataModule(**settings, seq_len=cfg.model.seq_len, seed=cfg.seed)
    dm.setup()
    if source is not None and not hf:
        path, ckpt = source
        diff = mismatch(ckpt, cfg, "teacher", vocab=dm.vocab.itos)
        if diff:
            raise UserError(f"{path} was trained on other data than data={cfg.data.name}: it has {diff}; use the data "
                            f"it was trained on, or train a teacher on this data with "
                            f"`{command_for('teacher', cfg)}`")
    return dm


def teacher_weights(ckpt: dict) -> dict[str, torch.Tensor]:
    """The teacher GPT's weights in a checkpoint: a teacher's (its ``gpt.``) or a distilled hybrid's (``teacher.``)."""
    prefix = "teacher." if "hybrid" in ckpt["hyper_parameters"] else "gpt."
    return {k.removeprefix(prefix): v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def plain(cfg: DictConfig, group: str) -> dict:
    """A config group as a plain dict, interpolations resolved: what a checkpoint's hyper-parameters hold."""
    return OmegaConf.to_container(cfg[group], resolve=True)


@torch.no_grad()
def sample_text(gpt: GPT, vocab: Vocab, num_chars: int, prompt: str = "", temperature: float = 0.8,
                top_k: int | None = None, attention: dict | None = None, num_samples: int = 1,
                on_token=None) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (one batch, KV-cached, src/model.py ``GPT.generate``), each
    num_chars long; an empty prompt starts from a newline (or token 0). ``attention``: a hybrid's sparse layers;
    ``on_token(ids)``: called with each step's new tokens (B, 1) (progress, and what a Ctrl-C keeps)."""
    ids = vocab.encode(prompt) if prompt else torch.tensor([vocab.stoi.get("\n", 0)])
    device = next(gpt.parameters()).device
    out = gpt.generate(ids[None].repeat(num_samples, 1).to(device), num_chars, temperature=temperature, top_k=top_k,
                       attention=attention, on_token=on_token)
    return [vocab.decode(row[len(ids):].tolist()) for row in out]
