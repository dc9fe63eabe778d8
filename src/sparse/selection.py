"""Token-level selection: each query's chosen earlier keys, and the causal top-K that makes them.

A token selector scores (query, key) pairs, shape (B, h, R, T) for R queries. Keys after the query are masked out
*before* top-K, so no selector can ever pick a future key: query i chooses among keys 0..i, and when it has fewer
than K of them (i + 1 < K) the surplus slots are marked invalid and point at the query itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Selection:
    idx: torch.Tensor  # (B, h, R, K) selected key positions, best first; always <= the query position
    valid: torch.Tensor  # (B, h, R, K) bool: False for the slots of queries with fewer than K earlier keys


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) bool, True where the key is after the query (must never be attended or selected)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).triu(1)


def finite_scores(scores: torch.Tensor) -> torch.Tensor:
    """NaN and ±inf clamped to the dtype's range, so that a real key always ranks above a masked (-inf) one."""
    lowest, highest = torch.finfo(scores.dtype).min, torch.finfo(scores.dtype).max
    return torch.nan_to_num(scores, nan=lowest, neginf=lowest, posinf=highest)


def ranking(scores: torch.Tensor) -> torch.Tensor:
    """Scores (..., n), no NaN -> int64 keys (..., n) in the same order, equal scores ordered by position, the later
    first: ``top_ranked`` of the keys picks the same entries on every machine and for every shape of the batch (the
    forward's chunks and generation's single rows), where ``topk`` of the scores breaks ties as its implementation
    does -- and equal scores are common (a character repeated at the same distance bucket scores the same). A key is
    the float's order as an integer (a negative float's bits other than the sign flipped) times 2^32, plus the
    position."""
    bits = scores.float().contiguous().view(torch.int32)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # the floats' order, as integers (branch-free: 4x the torch.where)
    return order.to(torch.int64).mul_(2**32).add_(torch.arange(scores.size(-1), device=scores.device))


AMAX_TOP = 16  # up to this many picks, one max per pick (a vectorised pass) beats ``topk`` (5x at 4 of 32 on a CPU)


def top_ranked(keys: torch.Tensor, k: int) -> torch.Tensor:
    """The positions of the k largest of ``ranking``'s keys (..., n), largest first -> (..., k) int64: ``topk``'s
    indices. A key holds its position in its low 32 bits, so a few picks are a max each, the picked key then
    lowered below every other."""
    if k > AMAX_TOP:
        return keys.topk(k, dim=-1).indices
    keys, picks = keys.clone() if k > 1 else keys, []  # lowered in place after each pick but the last
    for j in range(k):
        best = keys.amax(-1, keepdim=True)
        picks.append(best & 0xFFFFFFFF)
        if j + 1 < k:
            keys.scatter_(-1, picks[-1], torch.iinfo(keys.dtype).min)
    return torch.cat(picks, -1)


def within_mass(probs: torch.Tensor, valid: torch.Tensor, mass: float | None) -> torch.Tensor:
    """The dynamic budget: of slots ranked best first, with predicted attention ``probs`` (..., n), keep the fewest
    whose probabilities reach ``mass`` -- slot j while the slots before it hold less than ``mass``. -> valid (...,
    n) narrowed (unchanged when ``mass`` is None)."""
    if mass is None:
        return valid
    before = probs.cumsum(-1) - probs
    return valid & (before < mass)


def causal_topk(scores: torch.Tensor, top_k: int, rows: torch.Tensor | None = None,
                mass: float | None = None) -> Selection:
    """Top-K keys of each query i among keys 0..i. scores (B, h, R, T) of the queries at positions ``rows`` (R,);
    None: all T queries (R = T). With ``mass`` (the dynamic budget), only the first of them whose predicted
    attention -- the softmax of the scores over keys 0..i -- reaches that share. -> Selection (B, h, R, K)."""
    if top_k <= 0:
        raise ValueError(f"top_k={top_k} must be 1 or more")
    pos = torch.arange(scores.size(-1), device=scores.device) if rows is None else rows  # (R,)
    if top_k > scores.size(-1):  # a budget counted at a longer length than these keys: the surplus slots are invalid
        scores = F.pad(scores, (0, top_k - scores.size(-1)))
    T = scores.size(-1)
    future = torch.arange(T, device=scores.device) > pos[:, None]  # (R, T)
    ranked = finite_scores(scores).masked_fill(future, float("-inf"))
    top = top_ranked(ranking(ranked), top_k)  # (B, h, R, K), best first
    valid = (torch.arange(top_k, device=scores.device) <= pos[:, None]).expand_as(top)  # query i: i + 1 keys
    if mass is not None:  # the softmax over keys 0..i, of the top K
        probs = (ranked.gather(-1, top) - ranked.logsumexp(-1, keepdim=True)).exp()
        valid = within_mass(probs, valid, mass)
    idx = torch.where(valid, top, pos[:, None])  # surplus slots point at the query itself
    return Selection(idx=idx, valid=valid)


def selection_mask(sel: Selection, T: int) -> torch.Tensor:
    """(B, h, R, T) bool: True at the selected (valid) keys of each query."""
    counts = torch.zeros(*sel.idx.shape[:-1], T, dtype=torch.int32, device=sel.idx.device)
    return counts.scatter_add_(-1, sel.idx, sel.valid.int()) > 0  # add, so invalid slots cannot unset a key
