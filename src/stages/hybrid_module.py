"""What the selector, approximator and evaluation stages share: a frozen teacher plus the sparse parts.

``HybridModule`` holds the teacher GPT (frozen, always in eval mode) and ``SparseParts`` (one selector and one
approximator per sparse layer). Teacher signals are computed batch by batch from the shared DataModule, never
stored. Its checkpoints are self-contained: the teacher's weights, the parts and every setting travel together
(``from_checkpoint``); a new one starts from a teacher's checkpoint (``from_teacher``). The stages' run -- finding
the teacher, training, measuring -- is src/stages/distill.py. A Hugging Face teacher (``teacher``: its teacher.hf
settings, src/hf/) takes the GPT's place; its weights load from its folder and are never saved in the checkpoints.
"""

from __future__ import annotations

import logging
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from src.data import Vocab
from src.errors import UserError
from src.hybrid import HybridCausalSelfAttention, HybridSpec, SparseParts, hybrid_attention
from src.metrics import SQRT_METRICS, PerHeadRatio, selection_stats
from src.model import GPT, AttentionSignals
from src.report.figures import attention_figure
from src.sparse import Selection, SparseAttention, gather_rows, selection_mask
from src.stages.common import adamw, gpt_config, plain, teacher_weights, warmup_cosine

log = logging.getLogger(__name__)


class HybridModule(L.LightningModule):
    """Frozen teacher + sparse parts. Subclasses add the training objective of their stage."""

    def __init__(self, model: dict, vocab: list[str] | None, hybrid: dict, selector: dict, approximator: dict,
                 lr: float = 3e-3, max_steps: int = 300, teacher_ckpt: str | None = None, teacher: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        if teacher:  # teacher=hf: the model and its tokenizer, frozen (src/hf/load.py)
            from src.hf.load import load_teacher

            self.teacher = load_teacher(teacher, model["seq_len"])
            self.vocab = self.teacher.vocab
            self.strict_loading = False  # its weights are not in the checkpoints (on_save_checkpoint)
        else:
            self.vocab = Vocab(list(vocab))
            self.teacher = GPT(gpt_config(model, len(vocab))).requires_grad_(False).eval()
        try:
            self.spec = HybridSpec.from_config(self.teacher.cfg, **hybrid)
            self.parts = SparseParts(self.spec, self.teacher.cfg, selector, approximator)
        except ValueError as e:
            raise UserError(str(e)) from None
        self.pair_names = [f"L{layer}H{head}" for layer, head in self.spec.pairs()]
        # layer -> its hybrid attention: ``teacher(x, attention=module.attention)`` is the hybrid. A plain dict: the
        # overrides own no weights (the teacher's and the parts' are registered already)
        self.attention: dict[int, HybridCausalSelfAttention] = (
            self.teacher.hybrid_attention(self.spec, self.parts) if teacher
            else hybrid_attention(self.teacher, self.spec, self.parts))
        self._figure_input: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_teacher(cls, cfg: DictConfig, path: str, ckpt: dict, lr: float = 0.0, max_steps: int = 0):
        """A new hybrid of this run's settings (hybrid.*, selector.*, approximator.*) around the teacher of the
        checkpoint ``ckpt`` read from ``path``, its weights loaded."""
        hp = ckpt["hyper_parameters"]
        hf = hp.get("teacher")  # a Hugging Face teacher's settings (src/runs/lookup.py hf_checkpoint)
        module = cls(model=dict(hp["model"]), vocab=None if hf else list(hp["vocab"]), hybrid=plain(cfg, "hybrid"),
                     selector=plain(cfg, "selector"), approximator=plain(cfg, "approximator"), lr=lr,
                     max_steps=max_steps, teacher_ckpt=str(path), teacher=hf)
        if not hf:
            module.teacher.load_state_dict(teacher_weights(ckpt))
        return module

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: str, make: str, **hparams):
        """The hybrid a distillation checkpoint holds (the teacher's weights and the parts travel in it), with
        ``hparams`` replacing the saved ones (e.g. another kernel for the same parts), in eval mode."""
        hp = ckpt["hyper_parameters"]
        module = cls(**{**hp, **hparams})
        state = ckpt["state_dict"]
        if hp.get("teacher"):  # the Hugging Face model's weights are its folder's
            state = {**module.teacher.state_dict(prefix="teacher."), **state}
        try:
            module.load_state_dict(state)
        except RuntimeError:
            raise UserError(f"the weights in {path} do not fit this version's {hp['selector']['name']} + "
                            f"{hp['approximator']['name']} hybrid (made by an older one?): make a new one with "
                            f"`{make}`") from None
        return module.eval()

    # ------------------------------------------------------------------------------------------- the model

    @property
    def sparse_layers(self) -> list[SparseAttention]:
        """Each sparse layer's sparse heads (selector, approximator, budget, kernel), in layer order."""
        return [a.sparse for a in self.attention.values()]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """A Hugging Face teacher's weights stay in its folder: the checkpoint holds the parts and the settings."""
        if self.hparams.get("teacher"):
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                        if not k.startswith("teacher.")}

    def setup(self, stage: str) -> None:
        """A kernel that cannot run on this run's device fails now, in one line, before any batch."""
        for attention in self.attention.values():
            problem = attention.sparse.problem_on(self.device)
            if problem:
                raise UserError(problem)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, whatever Lightning asks
        return self

    @torch.no_grad()
    def teacher_signals(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, AttentionSignals]]:
        """The teacher's logits and its signals of the sparse layers."""
        signals: dict = {layer: None for layer in self.spec.layers}
        return self.teacher(x, signals=signals), signals

    def layer_signals(self, x: torch.Tensor) -> dict[int, AttentionSignals]:
        """The teacher's signals of the sparse layers alone (no logits: the layers after them do not run)."""
        return self.teacher.signals(x, self.spec.layers)

    def served(self, s: AttentionSignals) -> AttentionSignals:
        """The signals of the sparse heads only: q, k, v, head_out (B, h, T, ...), probs on demand."""
        return s.heads(list(self.spec.heads))

    def select(self, layer: int, s: AttentionSignals) -> Selection:
        """Every query's keys (token level, teacher-forced): what the metrics and the approximator read."""
        served = self.served(s)
        return self.attention[layer].sparse.selection(s.x, served.q, served.k)

    def selection_stats(self, layer: int, s: AttentionSignals, sel: Selection) -> dict:
        """Selection metrics of one layer's sparse heads against the teacher's attention (src/metrics.py)."""
        ranked = not self.parts.selectors[str(layer)].whole_blocks
        return selection_stats(sel, self.served(s).probs, ranked=ranked)

    def approximate(self, layer: int, s: AttentionSignals, sel: Selection) -> torch.Tensor:
        """The approximator over the selected keys ``sel``: on the layer's block-sparse kernel when it has one (the
        same choice, no gathered keys), else the gather path (differentiable, any approximator)."""
        served, approximator = self.served(s), self.parts.approximators[str(layer)]
        sparse = self.attention[layer].sparse
        if sparse.kernel_for(served.q) != "gather":
            return sparse(s.x, served.q, served.k, served.v)
        k_sel = gather_rows(served.k, sel.idx) if getattr(approximator, "reads_keys", True) else None
        return approximator(served.q, k_sel, gather_rows(served.v, sel.idx), sel.valid)

    def hybrid_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x, attention=self.attention)

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
        opt = adamw(self, params, lr=self.hparams.lr, weight_decay=0.0)
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

    def update_layers(self, metrics: torch.nn.ModuleDict, signals: dict[int, AttentionSignals], stats_of) -> None:
        """Accumulate the per-head ``metrics`` with ``stats_of(layer, signals, selection)`` -- {metric: (num (h,),
        den (h,))} -- of every sparse layer, each layer's keys selected teacher-forced."""
        self.update_per_head(metrics, [stats_of(layer, s, self.select(layer, s)) for layer, s in signals.items()])

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
