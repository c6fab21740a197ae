"""Proximal policy optimisation's clipped surrogate (Schulman et al. 2017)."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over entries where ``mask`` is True."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def ppo_policy_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss ``−E[min(ρA, clip(ρ, 1−ε, 1+ε)A)]`` over valid steps.

    Returns:
        The loss and diagnostics: approximate KL and the fraction of clipped ratios.
    """
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip, 1.0 + clip) * advantages
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
        clip_frac = masked_mean(((ratio - 1).abs() > clip).float(), mask)
    return loss, {"approx_kl": float(approx_kl), "clip_fraction": float(clip_frac)}


def minibatch_rows(
    num_rows: int, num_minibatches: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Random disjoint row (trial) index sets; minibatches never split a trial in time."""
    perm = torch.randperm(num_rows, generator=generator, device=generator.device)
    return [chunk for chunk in perm.chunk(max(1, min(num_minibatches, num_rows))) if len(chunk)]
