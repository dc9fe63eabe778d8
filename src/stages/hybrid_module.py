"""What the selector, approximator and evaluation stages share: a frozen teacher plus the sparse parts.

``HybridModule`` holds the teacher GPT (frozen, always in eval mode) and ``SparseParts`` (one selector and one
approximator per sparse layer). Teacher signals are computed batch by batch from the shared DataModule, never
stored. Its checkpoints are self-contained: the teacher's weights, the parts and every setting travel together.

Also here: finding and checking the teacher (``resolve_teacher``) and loading a stage's checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from src.checkpoints import HYBRID_KEYS, read_checkpoint
from src.data import CharDataModule, Vocab
from src.errors import UserError
from src.hybrid import HybridSpec, SparseParts, hybrid_attention
from src.metrics import SQRT_METRICS, PerHeadRatio, selection_stats
from src.model import GPT, AttentionSignals
from src.plots import attention_figure
from src.runs import (SELECTOR_ARCH, build_trainer, find_run, hybrid_arch, make_command, model_mismatch,
                      resume_point, saved_checkpoint, scalar_metrics, stage_spec, write_json)
from src.sparse import Selection, gather_rows, selection_mask
from src.stages.teacher import TeacherLM, build_datamodule, gpt_config, load_teacher, warmup_cosine

log = logging.getLogger(__name__)


class HybridModule(L.LightningModule):
    """Frozen teacher + sparse parts. Subclasses add the training objective of their stage."""

    def __init__(self, model: dict, vocab: list[str], hybrid: dict, selector: dict, approximator: dict,
                 lr: float = 3e-3, max_steps: int = 300, teacher_ckpt: str | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.vocab = Vocab(list(vocab))
        self.teacher = GPT(gpt_config(model, len(vocab))).requires_grad_(False).eval()
        try:
            self.spec = HybridSpec.from_config(self.teacher.cfg, **hybrid)
            self.parts = SparseParts(self.spec, self.teacher.cfg, selector, approximator)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.pair_names = [f"L{layer}H{head}" for layer, head in self.spec.pairs()]
        # plain dict: the overrides own no weights (the teacher's and the parts' are registered already)
        self._attention = hybrid_attention(self.teacher, self.spec, self.parts)
        self._figure_input: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------- the model

    def setup(self, stage: str) -> None:
        """A kernel that cannot run on this run's device fails now, in one line, before any batch."""
        for attention in self._attention.values():
            problem = attention.sparse.problem_on(self.device)
            if problem:
                raise UserError(problem)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, whatever Lightning asks
        return self

    @torch.no_grad()
    def teacher_signals(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, AttentionSignals]]:
        signals: dict = {layer: None for layer in self.spec.layers}
        return self.teacher(x, signals=signals), signals

    def served(self, s: AttentionSignals) -> AttentionSignals:
        """The signals of the sparse heads only: q, k, v, head_out (B, h, T, ...), probs on demand."""
        return s.heads(list(self.spec.heads))

    def select(self, layer: int, s: AttentionSignals) -> Selection:
        """Every query's keys (token level, teacher-forced): what the metrics and the approximator read."""
        served = self.served(s)
        return self._attention[layer].sparse.selection(s.x, served.q, served.k)

    def selection_stats(self, layer: int, s: AttentionSignals, sel: Selection) -> dict:
        """Selection metrics of one layer's sparse heads against the teacher's attention (src/metrics.py)."""
        ranked = not self.parts.selectors[str(layer)].picks_blocks
        return selection_stats(sel, self.served(s).probs, ranked=ranked)

    def approximate(self, layer: int, s: AttentionSignals, sel: Selection) -> torch.Tensor:
        """The approximator over the selected keys ``sel``: on the layer's block-sparse kernel when it has one (the
        same choice, no gathered keys), else the gather path (differentiable, any approximator)."""
        served, approximator = self.served(s), self.parts.approximators[str(layer)]
        sparse = self._attention[layer].sparse
        if sparse.kernel_for(served.q) != "gather":
            return sparse(s.x, served.q, served.k, served.v)
        k_sel = gather_rows(served.k, sel.idx) if getattr(approximator, "reads_keys", True) else None
        return approximator(served.q, k_sel, gather_rows(served.v, sel.idx), sel.valid)

    def hybrid_layer(self, layer: int) -> torch.nn.Module:
        """The hybrid attention of ``layer``: the teacher's projections around this run's sparse heads."""
        return self._attention[layer]

    def hybrid_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x, attention=self._attention)

    @property
    def selector_learned(self) -> bool:
        """Whether the selector has weights to learn (oracle: none), frozen or not."""
        return any(True for _ in self.parts.selectors.parameters())

    @property
    def approximator_learned(self) -> bool:
        """Whether the approximator has weights to learn (softmax: none)."""
        return any(True for _ in self.parts.approximators.parameters())

    def adamw(self, params):
        params = list(params)
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=0.0)
        steps = self.hparams.max_steps
        lr = self.hparams.lr
        schedule = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, max(1, steps // 10), steps, lr, lr / 10) / lr
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------------------------------- metrics

    def per_head_metrics(self, names: list[str]) -> torch.nn.ModuleDict:
        n = len(self.pair_names)
        return torch.nn.ModuleDict({name: PerHeadRatio(n, sqrt=name in SQRT_METRICS) for name in names})

    @staticmethod
    def update_per_head(metrics: torch.nn.ModuleDict, stats_by_layer: list[dict]) -> None:
        """stats_by_layer: one dict {metric: (num (h,), den (h,))} per sparse layer, in spec order."""
        for name, metric in metrics.items():
            metric.update(*(torch.cat([s[name][i] for s in stats_by_layer]) for i in (0, 1)))

    def log_per_head(self, split: str, metrics: torch.nn.ModuleDict) -> dict[str, float]:
        """Log mean and per-head values (``split/name`` and ``split/name/L0H1``); return them; reset."""
        out = {}
        for name, metric in metrics.items():
            values = metric.compute().reshape(-1)  # torchmetrics squeezes a single head to a scalar
            out[f"{split}/{name}"] = float(values.mean())
            for pair, value in zip(self.pair_names, values.tolist()):
                out[f"{split}/{name}/{pair}"] = value
            metric.reset()
        for key, value in out.items():
            self.log(key, value, prog_bar=key.count("/") == 1)  # means in the bar, per head in TensorBoard
        return out

    def keep_figure_input(self, s: AttentionSignals, sel: Selection) -> None:
        """Remember the first sequence's attention and selection of the first sparse head for the picture."""
        if self._figure_input is None:
            T = s.probs.size(-1)
            probs = s.probs[0, self.spec.heads[0]]
            chosen = selection_mask(Selection(sel.idx[:1, :1], sel.valid[:1, :1]), T)[0, 0]
            self._figure_input = (probs.detach().cpu(), chosen.cpu())

    @rank_zero_only
    def log_figure(self) -> None:
        if self._figure_input is None or self.logger is None or not hasattr(self.logger.experiment, "add_figure"):
            self._figure_input = None
            return
        probs, chosen = self._figure_input
        layer, head = self.spec.pairs()[0]
        title = f"layer {layer} head {head}: {self.hparams.selector['name']} selector, budget {self.spec.budget}"
        self.logger.experiment.add_figure(f"attention/L{layer}H{head}", attention_figure(probs, chosen, title),
                                          self.global_step)
        self._figure_input = None


# ------------------------------------------------------------------------------------------- teachers and checkpoints


# ------------------------------------------------------------------------------------------- the distillation run


def fit_or_measure(module: HybridModule, trainable: bool, trainer: L.Trainer, dm, run_dir: Path,
                   resume: str | None = None) -> tuple[str, dict]:
    """Train when there is something to train (continuing from the checkpoint ``resume``); measure on the
    validation split either way; save the checkpoint."""
    if trainable:
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
    checkpoint = saved_checkpoint(trainer, run_dir) if trainable else None
    metrics = trainer.validate(module, datamodule=dm, ckpt_path=checkpoint, verbose=False)
    if not trainable:  # nothing learned: the checkpoint is the teacher plus the fixed parts
        checkpoint = str(run_dir / "checkpoints" / "best.ckpt")
        trainer.save_checkpoint(checkpoint)
    return checkpoint, scalar_metrics(metrics[0] if metrics else {})


def distil(cfg: DictConfig, run_dir: Path, stage: str, cls: type, part: str, monitor: str, mode: str,
           prepare=None) -> dict:
    """The run of a distillation stage, which trains the ``part`` ("selector" or "approximator", with ``part``.lr
    and .max_steps) of the hybrid module ``cls``: the teacher and its data, ``prepare(module, hparams)`` -- what the
    stage starts from, returning more result fields --, training (or, with nothing to learn, measuring), the
    checkpoint that ``monitor`` picks, and RUN/metrics.json."""
    L.seed_everything(cfg.seed, workers=True)
    teacher, teacher_ckpt = resolve_teacher(cfg)
    dm = datamodule_for(cfg, teacher.vocab, f"teacher {teacher_ckpt}")
    settings = cfg[part]
    hp = hybrid_hparams(cfg, teacher, teacher_ckpt, settings.lr, settings.max_steps)
    module = cls(**hp)
    module.teacher.load_state_dict(teacher.gpt.state_dict())
    extra = prepare(module, hp) if prepare else {}
    trainable = module.selector_learned if part == "selector" else module.approximator_learned
    trainer = build_trainer(cfg, run_dir, monitor=monitor, mode=mode, max_steps=settings.max_steps,
                            val_every=max(1, settings.max_steps // 2), lr_setting=f"{part}.lr")
    checkpoint, metrics = fit_or_measure(module, trainable, trainer, dm, run_dir, resume_point(cfg, run_dir, stage))
    result = {"stage": stage, "run_dir": str(run_dir), "checkpoint": checkpoint, "teacher_ckpt": teacher_ckpt, **extra,
              "spec": stage_spec(cfg, stage), "fast_dev_run": bool(cfg.trainer.fast_dev_run),
              "steps": trainer.global_step, **metrics}
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
    return result


def teacher_command(cfg: DictConfig) -> str:
    return make_command("teacher", cfg, ("model", "data"))


def resolve_teacher(cfg: DictConfig) -> tuple[TeacherLM, str]:
    """``teacher.ckpt``, or the newest compatible teacher under outputs/; checked against this run's model."""
    path = cfg.teacher.ckpt or find_run("teacher", stage_spec(cfg, "teacher"))
    if not path:
        raise UserError(
            f"no trained teacher for model={cfg.model.name} data={cfg.data.name} under outputs/: train one with "
            f"`{teacher_command(cfg)}`, or name one with teacher.ckpt=PATH"
        )
    teacher = load_teacher(path)
    diff = model_mismatch(teacher.hparams.model, cfg)
    if diff:
        raise UserError(
            f"teacher {path} does not fit model={cfg.model.name}: it has {diff}; pick the matching model=... or "
            f"train a teacher for this one with `{teacher_command(cfg)}`"
        )
    return teacher, str(path)


def datamodule_for(cfg: DictConfig, vocab: Vocab, source: str) -> CharDataModule:
    """The run's data, checked to have exactly the vocabulary the checkpoint ``source`` was trained with."""
    dm = build_datamodule(cfg)
    if dm.vocab.itos != vocab.itos:
        raise UserError(
            f"{source} was trained with another vocabulary ({len(vocab)} symbols) than data={cfg.data.name} "
            f"({len(dm.vocab)} symbols): use the data it was trained on, or train a teacher on this data with "
            f"`{teacher_command(cfg)}`"
        )
    return dm


def hybrid_hparams(cfg: DictConfig, teacher: TeacherLM, teacher_ckpt: str, lr: float, max_steps: int) -> dict:
    return dict(
        model=dict(teacher.hparams.model),
        vocab=list(teacher.vocab.itos),
        hybrid=OmegaConf.to_container(cfg.hybrid, resolve=True),
        selector=OmegaConf.to_container(cfg.selector, resolve=True),
        approximator=OmegaConf.to_container(cfg.approximator, resolve=True),
        lr=lr,
        max_steps=max_steps,
        teacher_ckpt=teacher_ckpt,
    )


def load_stage_checkpoint(path: str | Path, stage: str, make_command: str) -> dict:
    """A distillation checkpoint as a dict, with one clear message when it is missing or of another kind."""
    return read_checkpoint(path, stage, f"make one with `{make_command}`", keys=HYBRID_KEYS)


def stage_checkpoint(cfg: DictConfig, stage: str, setting: str, what: str, make: str) -> tuple[str, dict]:
    """The checkpoint of ``stage`` this run starts from: the path in ``setting`` (e.g. selector.ckpt), else the
    newest finished run of that stage with these settings under outputs/; one line naming the command that makes
    one (``make``) when there is none."""
    path = OmegaConf.select(cfg, setting) or find_run(stage, stage_spec(cfg, stage))
    if not path:
        raise UserError(f"no trained {what} for these settings under outputs/: make one with `{make}` (the same "
                        f"model, data and hybrid.* settings), or name one with {setting}=PATH")
    return path, load_stage_checkpoint(path, stage, make)


def hybrid_from_checkpoint(ckpt: dict, path: str | Path, make_command: str, cls: type | None = None,
                           **hparams) -> HybridModule:
    """The hybrid a distillation checkpoint holds (the teacher's weights and the parts travel in it), as ``cls``
    (default HybridModule), with ``hparams`` replacing the saved ones (e.g. another kernel for the same parts)."""
    hp = ckpt["hyper_parameters"]
    module = (cls or HybridModule)(**{**hp, **hparams})
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise UserError(f"the weights in {path} do not fit this version's {hp['selector']['name']} + "
                        f"{hp['approximator']['name']} hybrid (made by an older one?): make a new one with "
                        f"`{make_command}`") from None
    return module.eval()


def check_same(ckpt_hp: dict, hparams: dict, keys: tuple[str, ...], path: str, make_command: str,
               budget: bool = True) -> None:
    """The settings in ``keys`` must be equal in a checkpoint and in this run, or the parts do not fit (``budget``
    False: the budget is not compared, as for a selector that does not read it)."""
    for key in keys:
        a, b = ckpt_hp.get(key), hparams.get(key)
        if key in ("selector", "approximator"):  # training budgets and paths may differ
            a = {k: v for k, v in (a or {}).items() if k in SELECTOR_ARCH}
            b = {k: v for k, v in (b or {}).items() if k in SELECTOR_ARCH}
        if key == "hybrid":  # any kernel runs the same trained parts
            a, b = hybrid_arch(a, budget), hybrid_arch(b, budget)
        if a != b:
            raise UserError(
                f"checkpoint {path} was made with {key}={a}, this run asks for {key}={b}: run with the same "
                f"settings, or make a matching one with `{make_command}`"
            )
