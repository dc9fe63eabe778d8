"""Stage 1: train the teacher GPT with full causal attention (character-level language modelling).

AdamW with linear warm-up and cosine decay, gradient clipping (Trainer), torchmetrics loss / perplexity / accuracy,
a generated text sample in TensorBoard at every validation, best and last checkpoints. A Hugging Face teacher
(teacher=hf) is not trained: the stage measures it the same way (``measure_hf``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from src.costs.accounting import training_flops
from src.data import Vocab
from src.runs.checkpoints import read_checkpoint
from src.config import hf_teacher
from src.runs.lookup import checkpoint_for, spec
from src.runs.records import scalar_metrics, write_json
from src.runs.resume import resume_point
from src.runs.trainer import build_trainer, saved_checkpoint
from src.stages.common import adamw, build_datamodule, build_model, plain, sample_text, warmup_cosine
from src.stages.probes import probe_results

log = logging.getLogger(__name__)


class TeacherLM(L.LightningModule):
    """Language-model training of :class:`GPT`; the vocabulary is a hyper-parameter, so it lives in every checkpoint."""

    def __init__(self, model: dict, vocab: list[str] | None, optim: dict, max_steps: int = 2000,
                 sample_chars: int = 200, teacher: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        if teacher:  # teacher=hf: a Hugging Face model and its tokenizer, frozen (src/hf/load.py)
            from src.hf.load import load_teacher

            self.gpt = load_teacher(teacher, model["seq_len"])
            self.vocab = self.gpt.vocab
        else:
            self.vocab = Vocab(list(vocab))
            self.gpt = build_model(model, len(vocab))
        V = len(self.vocab)
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
        self.batch_shape = tuple(x.shape)  # flops_per_batch: a warm-up's or curriculum's windows are shorter
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
        """Training FLOPs of one batch -- forward + backward ~ 3 x the forward's, counted by the cost model (causal
        attention, or the natively sparse layers' chosen blocks and gate, projections and MLP of every layer, the
        lm_head) -- from which Lightning's ThroughputMonitor logs train/device/flops_per_sec. The batch is the
        last one trained (a warm-up's or length curriculum's windows are more and shorter), else batch_size windows
        of seq_len."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None or self.hparams.get("teacher"):
            return None
        m = self.gpt.cfg
        B, T = getattr(self, "batch_shape", (dm.batch_size, m.seq_len))
        return B * training_flops(m.d_model, m.n_head, m.n_layer, T, m.vocab_size, m.sparse,
                                  len(m.sparse_layer_list()), m.sparse_budget, m.sparse_block)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> TeacherLM:
        """The teacher a teacher's checkpoint holds (read and checked by src/runs/checkpoints.py), in eval mode."""
        module = cls(**ckpt["hyper_parameters"])
        module.load_state_dict(ckpt["state_dict"])
        return module.eval()

    def configure_optimizers(self):
        o = self.hparams.optim
        decay = [p for p in self.parameters() if p.dim() >= 2]  # matrices and embeddings
        no_decay = [p for p in self.parameters() if p.dim() < 2]  # norms and biases
        opt = adamw(
            self,
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=o["lr"],
            betas=(o["beta1"], o["beta2"]),
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt,
            lambda s: warmup_cosine(s, o["warmup_steps"], self.hparams.max_steps, o["lr"], o["min_lr"]) / o["lr"],
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


TRAIN_TEACHER = "train one with `python -m src.train +experiment=teacher`"


def load_teacher(path: str | Path, map_location: str = "cpu") -> TeacherLM:
    """A trained teacher from its checkpoint, with one clear message when the file is missing or not a teacher's."""
    return TeacherLM.from_checkpoint(read_checkpoint(path, "teacher", TRAIN_TEACHER, map_location, stage="teacher"))


def measure_hf(cfg: DictConfig, run_dir: Path) -> dict:
    """teacher=hf: nothing to train. The model's loss, perplexity and accuracy on the validation and test splits
    (``trainer.limit_final_batches``; a generated sample in TensorBoard), the probes, recorded as a trained
    teacher's are."""
    path, ckpt = checkpoint_for(cfg, "teacher", "")  # the model's folder or hub name (src/runs/lookup.py)
    dm = build_datamodule(cfg, (path, ckpt))
    log.info("data %s", dm.summary())
    module = TeacherLM(model=plain(cfg, "model"), vocab=None, optim=plain(cfg, "optim"), max_steps=0,
                       sample_chars=cfg.trainer.sample_chars, teacher=ckpt["hyper_parameters"]["teacher"])
    log.info("model %s: %.2f M parameters", path, module.gpt.num_params() / 1e6)
    trainer = build_trainer(cfg, run_dir, monitor=None)
    if not cfg.trainer.fast_dev_run:
        trainer.limit_val_batches = trainer.limit_test_batches = cfg.trainer.limit_final_batches
    val = trainer.validate(module, datamodule=dm, verbose=False)
    test = trainer.test(module, datamodule=dm, verbose=False)
    probes = {} if cfg.trainer.fast_dev_run else probe_results(cfg, {"teacher": (module.gpt, None)}, dm,
                                                                     module.device)
    result = {"stage": "teacher", "run_dir": str(run_dir), "checkpoint": None, "hf_model": path,
              "spec": spec(cfg, "teacher"), "fast_dev_run": bool(cfg.trainer.fast_dev_run), "steps": 0,
              "best_val_loss": val[0].get("val/loss") if val else None, **scalar_metrics(test[0] if test else {}),
              **probes}
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result


def run(cfg: DictConfig, run_dir: Path) -> dict:
    L.seed_everything(cfg.seed, workers=True)
    if hf_teacher(cfg):
        return measure_hf(cfg, run_dir)
    resume = resume_point(cfg, run_dir, "teacher")
    dm = build_datamodule(cfg, resume)
    log.info("data %s", dm.summary())
    module = TeacherLM(model=plain(cfg, "model"), vocab=dm.vocab.itos, optim=plain(cfg, "optim"),
                       max_steps=cfg.trainer.max_steps, sample_chars=cfg.trainer.sample_chars)
    log.info("model %s: %.2f M parameters", cfg.model.name, module.gpt.num_params() / 1e6)
    trainer = build_trainer(cfg, run_dir, monitor="val/loss")
    trainer.fit(module, datamodule=dm, ckpt_path=resume[0] if resume else None)
    checkpoint = saved_checkpoint(trainer, run_dir)
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    if not cfg.trainer.fast_dev_run:  # periodic validations read trainer.limit_val_batches; the final ones this
        trainer.limit_val_batches = trainer.limit_test_batches = cfg.trainer.limit_final_batches
        val = trainer.validate(module, datamodule=dm, ckpt_path=checkpoint, verbose=False)
        if val and "val/loss" in val[0]:
            log.info("best checkpoint on the validation split: val/loss %.4f", val[0]["val/loss"])
            best = val[0]["val/loss"]
    test = trainer.test(module, datamodule=dm, ckpt_path=checkpoint, verbose=False)
    probes = {} if cfg.trainer.fast_dev_run else probe_results(cfg, {"teacher": (module.gpt.eval(), None)}, dm,
                                                                     module.device, cache={"teacher": checkpoint})
    result = {
        "stage": "teacher",
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "spec": spec(cfg, "teacher"),
        "fast_dev_run": bool(cfg.trainer.fast_dev_run),
        "steps": trainer.global_step,
        "best_val_loss": float(best) if best is not None else None,
        **scalar_metrics(test[0] if test else {}),
        **probes,  # does it look back: the recall episodes (data=recall) and the copy probe
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result
