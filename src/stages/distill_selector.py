"""Stage 2: distil a key selector from the frozen teacher, for every sparse (layer, head).

Teacher-forced: each batch runs the teacher, which hands over the sparse layers' inputs, Q, K and attention
probabilities; the selector learns to score keys so that its causal top-K covers what the teacher attends to.
Losses (``selector.loss``): ``ce`` the teacher's top-1 key (the prototype), ``topk`` its top-K set (multi-label),
``kl`` KL(teacher attention ‖ softmax of the selector's scores) (the lightning indexer's and SeerAttention's).
A block selector learns at the level it selects: KL from the teacher's attention mass per key block, summed over
each block of queries (src/sparse/mass.py, computed chunk by chunk), to the softmax of its block scores over the
earlier blocks (the own block is always kept: only its share is learned); the per-query block selector
(query_block) the same, from each query's own mass per key block.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from src.errors import UserError
from src.sparse import block_attention_mass, causal_mask, causal_topk, n_blocks, selection_mask
from src.sparse.mass import key_block_mass
from src.stages.distill import distil
from src.stages.hybrid_module import HybridModule

log = logging.getLogger(__name__)

LOSSES = ("ce", "topk", "kl", "kl_full")  # kl_full: the whole-block selectors' KL, weighted (block_selector_loss)


def selector_loss(kind: str, scores: torch.Tensor, probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """scores, probs (B, h, T, T) -> scalar loss; keys after the query never count."""
    T = scores.size(-1)
    scores, probs = scores.float(), probs.float()  # the loss in fp32 under bf16 autocast too
    future = causal_mask(T, scores.device)
    if kind == "topk":  # multi-label: is this key among the teacher's top-K?
        target = selection_mask(causal_topk(probs, top_k), T).float()
        weight = (~future).float().expand_as(scores)
        return F.binary_cross_entropy_with_logits(scores, target, weight=weight, reduction="sum") / weight.sum()
    logq = scores.masked_fill(future, float("-inf")).log_softmax(-1)
    if kind == "ce":  # the prototype: the teacher's strongest key
        return -logq.gather(-1, probs.argmax(-1, keepdim=True)).mean()
    # kl: sum_j p log(p / q) over the causal keys (p = 0 above the diagonal contributes nothing)
    logp = probs.clamp_min(1e-12).log()
    return (probs * (logp - logq.masked_fill(future, 0.0))).sum(-1).mean()


def block_selector_loss(scores: torch.Tensor, mass: torch.Tensor, own: torch.Tensor | None = None,
                        weighted: bool = False) -> torch.Tensor:
    """scores, mass (B, h, R, nb) of R rows against every key block -> KL(the teacher's mass over the earlier blocks
    ‖ softmax of the scores over them) -- which blocks to read -- plus the two-way KL of the own block's share of
    the mass against softmax(scores over the own and earlier blocks)'s -- how much the rest holds, which the dynamic
    budget reads. A row is a block of queries (the block selector: row r's own block is r) or one query (``own``
    (R,): each row's own block, the query's). Averaged over the rows that have an earlier block.

    ``weighted`` (selector.loss=kl_full): the first KL weighted by the row's mass on the earlier blocks, which makes
    the sum the KL of the row's whole distribution over its blocks (the chain rule). Unweighted, a query that reads
    its own block only counts as much as one that reads a needle 1500 keys back; weighted, the far readers lead."""
    scores, mass = scores.float(), mass.float()  # under bf16 autocast 1 - 1e-6 rounds to 1: log(0) below
    own = torch.arange(scores.size(-2), device=scores.device) if own is None else own
    keep = own > 0  # the first block's rows: nothing to choose, nothing to learn
    if not keep.any():
        return scores.sum() * 0.0
    rows, s, m = own[keep], scores[..., keep, :], mass[..., keep, :]
    earlier = torch.arange(scores.size(-1), device=scores.device) < rows[:, None]  # c < own block
    p = m.masked_fill(~earlier, 0.0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-30)
    logq = s.masked_fill(~earlier, float("-inf")).log_softmax(-1).masked_fill(~earlier, 0.0)
    which = (p * (p.clamp_min(1e-12).log() - logq)).sum(-1)
    own = rows.view(1, 1, -1, 1).expand(*s.shape[:-1], 1)
    p_own = (m.gather(-1, own)[..., 0] / m.sum(-1).clamp_min(1e-30)).clamp(1e-6, 1 - 1e-6)
    logit = s.gather(-1, own)[..., 0] - s.masked_fill(~earlier, float("-inf")).logsumexp(-1)  # own vs the rest
    share = (p_own * (p_own.log() - F.logsigmoid(logit))
             + (1 - p_own) * ((1 - p_own).log() - F.logsigmoid(-logit)))
    return ((1 - p_own) * which + share).mean() if weighted else (which + share).mean()


class SelectorDistillation(HybridModule):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        sel = self.hparams.selector
        first = next(iter(self.parts.selectors.values()))
        self.loss_kind = sel.get("loss") or first.default_loss
        if self.loss_kind not in LOSSES:
            raise UserError(f"selector.loss={self.loss_kind!r} is unknown: use one of {', '.join(LOSSES)}")
        if first.whole_blocks and self.loss_kind not in ("kl", "kl_full"):
            raise UserError(f"selector.loss={self.loss_kind} ranks single keys; selector={sel['name']} keeps whole "
                            "blocks and learns the teacher's attention mass per block: use selector.loss=kl or kl_full")
        if not first.whole_blocks and self.loss_kind == "kl_full":
            raise UserError(f"selector.loss=kl_full weighs the teacher's mass per block; selector={sel['name']} "
                            "ranks single keys, whose kl is the whole distribution's already: use selector.loss=kl")
        self.weighted = self.loss_kind == "kl_full"
        self.val_metrics = self.per_head_metrics(["top1_acc", "recall", "mass_recall"])

    def loss(self, layer: int, s) -> torch.Tensor:
        """One sparse layer's distillation loss, teacher-forced."""
        served, selector = self.served(s), self.parts.selectors[str(layer)]
        q, k, T = served.q, served.k, served.q.size(-2)
        if selector.picks_blocks:  # from q and k, chunk by chunk: no T × T map
            rows = torch.arange(n_blocks(T, selector.block_size), device=q.device)
            return block_selector_loss(selector.block_scores(s.x, q, k, rows),
                                       block_attention_mass(q, k, selector.block_size), weighted=self.weighted)
        if selector.whole_blocks:  # every query's own choice of blocks: its own mass per key block
            rows, bs = torch.arange(T, device=q.device), selector.block_size
            mass = key_block_mass(served.probs, bs)
            return block_selector_loss(selector.block_rows(selector.prepare(s.x, q, k), rows), mass, rows // bs,
                                       self.weighted)
        return selector_loss(self.loss_kind, selector.scores(s.x, q, k), served.probs, self.spec.budget.keys(T))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        signals = self.layer_signals(x)
        losses = [self.loss(layer, s) for layer, s in signals.items()]
        loss = torch.stack(losses).mean()
        self.log("train/selector_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        def stats(layer: int, s, sel) -> dict:
            self.keep_figure_input(s, sel)
            return self.selection_stats(layer, s, sel)

        self.update_layers(self.val_metrics, self.layer_signals(batch[0]), stats)

    def on_validation_epoch_end(self) -> None:
        values = self.log_per_head("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            log.info("step %d: selector mass recall %.4f, recall@K %.4f, top-1 %.4f", self.global_step,
                     values["val/mass_recall"], values["val/recall"], values["val/top1_acc"])
        self.log_figure()

    def configure_optimizers(self):
        return self.adamw(self.parts.selectors.parameters())


def run(cfg: DictConfig, run_dir: Path) -> dict:
    def describe(module: SelectorDistillation) -> dict:
        log.info("selector %s (loss %s) for layers %s heads %s, budget %s; teacher %s", cfg.selector.name,
                 module.loss_kind, list(module.spec.layers), list(module.spec.heads), module.spec.budget,
                 module.hparams.teacher_ckpt)
        return {}

    return distil(cfg, run_dir, "distill_selector", SelectorDistillation, "selector", "val/mass_recall", "max",
                  describe)
