"""Figures of few-shot evaluations: the sinusoid fits of the MAML and Meta-SGD papers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from agents import functional as fn


@torch.no_grad()
def plot_sinusoid_fits(
    learner: Any,
    batch: Any,
    path: str | Path,
    *,
    tasks: int = 3,
    steps: tuple[int, ...] = (0, 1, 10),
    title: str = "",
) -> None:
    """Draws the true sine, the K support points and the fit after ``steps`` inner steps.

    Args:
        learner: A gradient-based few-shot regressor (``model``, ``inner_loss``, ``eval_lr``).
        batch: A :class:`~agents.fewshot.sampler.SinusoidBatch` of held-out tasks.
        path: Where to save the PNG.
        tasks: Number of tasks (panels) to draw.
        steps: Inner-step counts whose fits are drawn.
        title: Figure title prefix.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learner.nets.eval()
    tasks = min(tasks, batch.support_x.shape[0])
    device = batch.support_x.device
    grid = torch.linspace(-5, 5, 200, device=device)[:, None]
    fig, axes = plt.subplots(1, tasks, figsize=(4.5 * tasks, 3.6), squeeze=False)
    theta = fn.params_of(learner.model, detach=True)
    for t, ax in enumerate(axes[0]):
        amp, phase = float(batch.amplitude[t]), float(batch.phase[t])
        truth = amp * torch.sin(grid - phase)
        ax.plot(grid.cpu(), truth.cpu(), "k-", linewidth=2, label="true")
        support = (batch.support_x[t], batch.support_y[t])
        fast, done = theta, 0
        for k in sorted(steps):
            with torch.enable_grad():
                fast = fn.adapt(
                    learner.inner_loss, fast, support, steps=k - done, lr=learner.eval_lr()
                )
            done = k
            pred = fn.forward(learner.model, fast, grid)
            ax.plot(grid.cpu(), pred.cpu(), "--", label=f"{k} step{'s' if k != 1 else ''}")
        ax.plot(
            batch.support_x[t].cpu(),
            batch.support_y[t].cpu(),
            "^",
            color="tab:purple",
            label=f"{batch.support_x.shape[1]} points",
        )
        ax.set_title(f"{title} A={amp:.2f} phase={phase:.2f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
