"""Figures logged to TensorBoard: the teacher's attention map beside the keys a selector picked."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def attention_figure(probs: torch.Tensor, chosen: torch.Tensor, title: str):
    """probs (T, T) teacher attention of one head, chosen (T, T) bool selection -> a two-panel figure."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), constrained_layout=True)
    axes[0].imshow(probs.float().cpu().numpy(), cmap="viridis", interpolation="nearest")
    axes[0].set_title("teacher attention")
    overlay = probs.float().cpu().clone()
    axes[1].imshow(overlay.numpy(), cmap="Greys", interpolation="nearest", alpha=0.6)
    ys, xs = torch.nonzero(chosen.cpu(), as_tuple=True)
    axes[1].scatter(xs.numpy(), ys.numpy(), s=4, c="tab:red", marker="s", linewidths=0)
    axes[1].set_title("selected keys (red) over it")
    for ax in axes:
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.suptitle(title)
    return fig
