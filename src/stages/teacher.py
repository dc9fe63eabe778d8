"""Stage 1: train the teacher GPT with full causal attention (character-level language modelling).

AdamW with linear warm-up and cosine decay, gradient clipping (Trainer), torchmetrics loss / perplexity / accuracy,
a generated text sample in TensorBoard at every validation, best and last checkpoints.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import fields
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from src.checkpoints import read_checkpoint
from src.data import CharDataModule, Vocab
from src.errors import UserError
from src.model import GPT, GPTConfig
from src.runs import (build_trainer, original_overrides, resume_point, saved_checkpoint, scalar_metrics,
                      stage_spec, write_json)

log = logging.getLogger(__name__)


def gpt_config(model: dict, vocab_size: int) -> GPTConfig:
    """Model group of the Hydra config (+ the data's vocabulary size) -> GPTConfig; extra keys ignored."""
    names = {f.name for f in fields(GPTConfig)}
    try:
        return GPTConfig(vocab_size=vocab_size, **{k: v for k, v in model.items() if k in names})
    except ValueError as e:
        raise UserError(str(e)) from None


def warmup_cosine(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Learning rate at ``step``: linear warm-up to lr, then cosine decay to min_lr at ``total`` steps."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


class TeacherLM(L.LightningModule):
    """Language-model training of :class:`GPT`; the vocabulary is a hyper-parameter, so it lives in every checkpoint."""

    def __init__(self, model: dict, vocab: list[str], optim: dict, max_steps: int = 2000, sample_chars: int = 200):
        super().__init__()
        self.save_hyperparameters()
        self.vocab = Vocab(list(vocab))
        self.gpt = GPT(gpt_config(model, len(vocab)))
        V = len(vocab)
        self.metrics = torch.nn.ModuleDict(
            {
                split: torch.nn.ModuleDict(
                    {"loss": MeanMetric(), "ppl": Perplexity(), "acc": MulticlassAccuracy(V, average="micro")}
                )
                for split in ("val", "test")
            }
        )

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.gpt(idx)

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, T) each
        logits = self.gpt(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch, split: str) -> None:
        x, y = batch
        logits = self.gpt(x)
        m = self.metrics[split]
        m["loss"].update(F.cross_entropy(logits.flatten(0, 1), y.flatten()), weight=y.numel())
        m["ppl"].update(logits, y)
        m["acc"].update(logits.flatten(0, 1), y.flatten())
        for name, metric in m.items():
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "loss")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        val = self.trainer.callback_metrics.get("val/loss")
        if val is not None:
            log.info("step %d: val/loss %.4f", self.global_step, float(val))
        if self.hparams.sample_chars:
            self._log_sample()

    @rank_zero_only
    def _log_sample(self) -> None:
        text = self.sample(self.hparams.sample_chars)
        if self.logger is not None and hasattr(self.logger.experiment, "add_text"):
            # markdown: keep line breaks visible in TensorBoard's text tab
            self.logger.experiment.add_text("sample", "    " + text.replace("\n", "\n    "), self.global_step)

    def sample(self, num_chars: int, prompt: str = "", temperature: float = 0.8, top_k: int | None = None) -> str:
        """Continue ``prompt`` by num_chars characters; an empty prompt starts from a newline (or token 0)."""
        was_training = self.training
        self.eval()
        text = sample_text(self.gpt, self.vocab, num_chars, prompt, temperature, top_k)[0]
        self.train(was_training)
        return text

    @property
    def flops_per_batch(self) -> int | None:
        """Training FLOPs of one batch -- forward + backward ~ 3 x the forward's, counted by src/costs.py (causal
        attention, projections and MLP of every layer, the lm_head) -- from which Lightning's ThroughputMonitor logs
        train/device/flops_per_sec."""
        from src import costs

        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return None
        m = self.gpt.cfg
        layer = costs.dense_layer(m.d_model, m.n_head, m.seq_len).flops + costs.rest_of_layer(m.d_model, m.seq_len).flops
        return 3 * dm.batch_size * (m.n_layer * layer + 2 * m.seq_len * m.d_model * m.vocab_size)

    def configure_optimizers(self):
        o = self.hparams.optim
        decay = [p for p in self.parameters() if p.dim() >= 2]  # matrices and embeddings
        no_decay = [p for p in self.parameters() if p.dim() < 2]  # norms and biases
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o["lr"],
            betas=(o["beta1"], o["beta2"]),
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: warmup_cosine(s, o["warmup_steps"], self.hparams.max_steps, o["lr"], o["min_lr"]) / o["lr"],
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.no_grad()
def sample_text(gpt: GPT, vocab: Vocab, num_chars: int, prompt: str = "", temperature: float = 0.8,
                top_k: int | None = None, attention: dict | None = None, num_samples: int = 1) -> list[str]:
    """``num_samples`` continuations of ``prompt`` (one batch, KV-cached, src/model.py ``GPT.generate``), each
    num_chars long; an empty prompt starts from a newline (or token 0). ``attention``: a hybrid's sparse layers."""
    ids = vocab.encode(prompt) if prompt else torch.tensor([vocab.stoi.get("\n", 0)])
    device = next(gpt.parameters()).device
    out = gpt.generate(ids[None].repeat(num_samples, 1).to(device), num_chars, temperature=temperature, top_k=top_k,
                       attention=attention)
    return [vocab.decode(row[len(ids):].tolist()) for row in out]


def build_datamodule(cfg: DictConfig, vocab: list[str] | None = None) -> CharDataModule:
    d = cfg.data
    dm = CharDataModule(
        name=d.name,
        seq_len=cfg.model.seq_len,
        batch_size=d.batch_size,
        path=d.path,
        package=d.package,
        vocab_size=d.vocab_size,
        num_tokens=d.num_tokens,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        num_workers=d.num_workers,
        seed=cfg.seed,
        vocab=vocab,
    )
    dm.setup()
    return dm


TRAIN_TEACHER = "train one with `python -m src.train +experiment=teacher`"


def load_teacher(path: str | Path, map_location: str = "cpu") -> TeacherLM:
    """A trained teacher from its checkpoint, with one clear message when the file is missing or not a teacher."""
    return teacher_from_checkpoint(read_checkpoint(path, "teacher", TRAIN_TEACHER, map_location), path)


def teacher_from_checkpoint(ckpt: dict, path: str | Path) -> TeacherLM:
    """The teacher a checkpoint read by src/checkpoints.py holds (one line if it is another stage's)."""
    p, make = Path(path), TRAIN_TEACHER
    hp = ckpt["hyper_parameters"]
    others = sorted(set(hp) - set(inspect.signature(TeacherLM.__init__).parameters))
    if others:
        kind = "a selector or hybrid" if "hybrid" in hp else "another stage's"
        raise UserError(f"{p} is {kind} checkpoint (it has {', '.join(others)}), not a teacher's: give the "
                        f"teacher's checkpoint (a pipeline's teacher/checkpoints/best.ckpt), or {make}")
    module = TeacherLM(**hp)
    module.load_state_dict(ckpt["state_dict"])
    return module.eval()


def check_resumable(ckpt_path: str, module: TeacherLM, run_dir: Path) -> None:
    """A resumed run must have the model and vocabulary it was started with, or its weights do not fit."""
    hp = read_checkpoint(ckpt_path)["hyper_parameters"]
    wanted, now = hp.get("model") or {}, dict(module.hparams["model"])
    diff = [f"model.{k}={wanted[k]} (now {now.get(k)})" for k in wanted if wanted[k] != now.get(k)]
    if hp.get("vocab") is not None and list(hp["vocab"]) != list(module.hparams["vocab"]):
        diff.append(f"its data (a vocabulary of {len(hp['vocab'])} characters; now {len(module.hparams['vocab'])})")
    if diff:
        again = " ".join(original_overrides(run_dir)) or "the overrides it was started with"
        raise UserError(f"{ckpt_path} was trained with {', '.join(diff)}: resume it with the settings it was "
                        f"started with: python -m src.train resume={run_dir} {again}")


def run(cfg: DictConfig, run_dir: Path) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    ckpt_path = resume_point(cfg, run_dir, "teacher")
    dm = build_datamodule(cfg)
    log.info("data %s", dm.summary())
    module = TeacherLM(
        model=OmegaConf.to_container(cfg.model),
        vocab=dm.vocab.itos,
        optim=OmegaConf.to_container(cfg.optim),
        max_steps=cfg.trainer.max_steps,
        sample_chars=cfg.trainer.sample_chars,
    )
    if ckpt_path:
        check_resumable(ckpt_path, module, run_dir)
    log.info("model %s: %.2f M parameters", cfg.model.name, module.gpt.num_params() / 1e6)
    trainer = build_trainer(cfg, run_dir, monitor="val/loss")
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    checkpoint = saved_checkpoint(trainer, run_dir)
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    if checkpoint and not cfg.trainer.fast_dev_run:  # periodic validations read trainer.limit_val_batches only
        trainer.limit_val_batches = 1.0
        val = trainer.validate(module, datamodule=dm, ckpt_path=checkpoint, verbose=False)
        if val and "val/loss" in val[0]:
            log.info("best checkpoint on the whole validation split: val/loss %.4f", val[0]["val/loss"])
            best = val[0]["val/loss"]
    test = trainer.test(module, datamodule=dm, ckpt_path=checkpoint, verbose=False)
    result = {
        "stage": "teacher",
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "spec": stage_spec(cfg, "teacher"),
        "fast_dev_run": bool(cfg.trainer.fast_dev_run),
        "steps": trainer.global_step,
        "best_val_loss": float(best) if best is not None else None,
        **scalar_metrics(test[0] if test else {}),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result
