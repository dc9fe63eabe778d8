"""Distillation metrics, per sparse head, as torchmetrics (so they aggregate over batches and devices).

Selection quality against the teacher's attention probabilities p (teacher-forced: same inputs as the teacher):

* ``top1_acc``  -- the selector's best key is the teacher's argmax key (the prototype's metric); for a block
  selector, whose keys are not ranked, the teacher's argmax key is among the selected ones;
* ``recall``    -- recall@K: overlap of the selected keys with the teacher's top-K, over min(K, i+1);
* ``mass_recall`` -- the teacher's probability mass on the selected keys (1.0 = nothing that mattered was dropped);
* ``density``   -- keys each query actually reads, as a fraction of T (the budget's unit: a budget of T/8 keys is
  0.125, less for the first queries; the dynamic budget reads fewer), and ``density_sq`` its square, for the spread.

Approximation quality against the teacher's head output y: ``approx_mse`` and ``approx_rel_err`` = ||ŷ - y|| / ||y||.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from src.sparse import Selection, causal_topk, selection_mask


class PerHeadRatio(Metric):
    """sum(num) / sum(den) per head (optionally its square root), accumulated over batches and devices."""

    full_state_update = False

    def __init__(self, n_heads: int, sqrt: bool = False):
        super().__init__()
        self.sqrt = sqrt
        self.add_state("num", torch.zeros(n_heads, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("den", torch.zeros(n_heads, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, num: torch.Tensor, den: torch.Tensor) -> None:
        self.num += num.detach().double()
        self.den += den.detach().double()

    def compute(self) -> torch.Tensor:
        r = self.num / self.den.clamp_min(1e-30)
        return (r.sqrt() if self.sqrt else r).float()


def per_head(t: torch.Tensor) -> torch.Tensor:
    """(B, h, T) -> (h,) sums over batch and positions."""
    return t.float().sum(dim=(0, 2))


def selection_stats(sel: Selection, probs: torch.Tensor,
                    ranked: bool = True) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Selection (B, h, T, K) against teacher probs (B, h, T, T) -> {metric: (num (h,), den (h,))}. ``ranked``:
    the selection's first slot is its best key (token selectors); else (blocks) top-1 asks whether the teacher's
    argmax key was selected at all."""
    B, h, T, K = sel.idx.shape
    count = torch.full((h,), float(B * T), device=probs.device)
    chosen = selection_mask(sel, T)  # (B, h, T, T)
    teacher_top = selection_mask(causal_topk(probs, K), T)
    n_valid = sel.valid.sum(-1)  # (B, h, T): min(K, i + 1)
    return {
        "top1_acc": (per_head(sel.idx[..., 0] == probs.argmax(-1) if ranked
                              else chosen.gather(-1, probs.argmax(-1, keepdim=True))[..., 0]), count),
        "recall": (per_head((chosen & teacher_top).sum(-1) / n_valid), count),
        "mass_recall": (per_head((probs * chosen).sum(-1)), count),
        "density": (per_head(n_valid / T), count),
        "density_sq": (per_head((n_valid / T) ** 2), count),
    }


def approximation_stats(pred: torch.Tensor, target: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Head outputs (B, h, T, hs) -> {metric: (num (h,), den (h,))} for MSE and relative error."""
    sq_err = (pred - target).pow(2).sum(-1)  # (B, h, T)
    B, h, T, hs = target.shape
    return {
        "approx_mse": (per_head(sq_err), torch.full((h,), float(B * T * hs), device=target.device)),
        "approx_rel_err": (per_head(sq_err), per_head(target.pow(2).sum(-1))),
    }


SQRT_METRICS = {"approx_rel_err"}
