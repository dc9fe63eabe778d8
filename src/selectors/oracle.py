"""The oracle: the teacher's own attention scores, so its top-K is the teacher's exact top-K keys.

Nothing to train; it costs as much as full attention's Q K^T. It is the upper bound for any learned selector.
"""

from __future__ import annotations

import math

from src.selectors.base import KeySelector


class OracleSelector(KeySelector):
    trainable = False

    def prepare(self, x, q, k):
        return q, k

    def score_rows(self, ctx, rows):
        q, k = ctx
        return q[:, :, rows] @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, h, R, T): softmax is monotone
