"""Vanilla policy gradient (REINFORCE with a baseline / advantages)."""

from __future__ import annotations

import torch

from metarl.pg.ppo import masked_mean


def vpg_loss(log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``−E[log π(a|s) · A]`` over valid steps; its gradient is the policy gradient."""
    return -masked_mean(log_prob * advantages.detach(), mask)


def surrogate_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Importance-sampled surrogate ``−E[π/π_old · A]`` (TRPO's objective).

    Its gradient at ``π = π_old`` equals :func:`vpg_loss`'s.
    """
    return -masked_mean(torch.exp(log_prob - old_log_prob.detach()) * advantages.detach(), mask)
