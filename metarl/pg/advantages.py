"""Generalised advantage estimation over time-major ``[T, B]`` tensors."""

from __future__ import annotations

import torch


def next_values(value: torch.Tensor, bootstrap: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
    """Value of the state after each step.

    Args:
        value: ``V(s_t)`` for every step, ``[T, B]``.
        bootstrap: ``V(s_{t+1})`` at steps where the sequence is cut (its next state is not
            the next row of ``value``), e.g. the value of a truncated episode's final
            observation; ignored elsewhere. ``[T, B]``.
        cut: Steps after which the advantage recursion stops (episode or trial ends), ``[T, B]``.

    Returns:
        ``value[t + 1]`` where not cut, else ``bootstrap[t]``.
    """
    shifted = torch.cat([value[1:], torch.zeros_like(value[:1])])
    return torch.where(cut, bootstrap, shifted)


def gae(
    reward: torch.Tensor,
    value: torch.Tensor,
    next_value: torch.Tensor,
    terminal: torch.Tensor,
    cut: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    ``δ_t = r_t + γ (1 − terminal_t) V(s_{t+1}) − V(s_t)`` and
    ``A_t = δ_t + γλ (1 − cut_t) A_{t+1}``. Terminal steps do not bootstrap; truncated steps
    are cut but bootstrap from ``next_value`` (the final observation's value).

    Args:
        reward: ``[T, B]``.
        value: ``V(s_t)``, ``[T, B]``.
        next_value: ``V(s_{t+1})``, ``[T, B]`` (see :func:`next_values`).
        terminal: True where ``s_{t+1}`` is terminal (no bootstrap), ``[T, B]`` bool.
        cut: True where the recursion stops after step t (terminal, truncated, or padding
            follows), ``[T, B]`` bool. Padding steps should have zero reward and be cut.
        gamma: Discount.
        lam: GAE λ.

    Returns:
        (advantages, returns) with ``returns = advantages + value``, both ``[T, B]``.

    Example:
        >>> r = torch.tensor([[1.0], [1.0]])
        >>> v = torch.zeros(2, 1)
        >>> done = torch.tensor([[False], [True]])
        >>> adv, ret = gae(r, v, torch.zeros(2, 1), done, done, gamma=0.5, lam=1.0)
        >>> adv.squeeze(1).tolist()
        [1.5, 1.0]
    """
    not_terminal = (~terminal).to(reward.dtype)
    carry = (~cut).to(reward.dtype) * gamma * lam
    delta = reward + gamma * not_terminal * next_value - value
    advantages = torch.empty_like(reward)
    running = torch.zeros_like(reward[0])
    for t in range(reward.shape[0] - 1, -1, -1):
        running = delta[t] + carry[t] * running
        advantages[t] = running
    return advantages, advantages + value


def discounted_returns(reward: torch.Tensor, cut: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted reward-to-go that restarts after every cut step, ``[T, B]``."""
    zeros = torch.zeros_like(reward)
    return gae(reward, zeros, zeros, cut, cut, gamma, 1.0)[0]
