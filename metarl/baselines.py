"""Env-agnostic baseline policies."""

from __future__ import annotations

import gymnasium as gym
import torch

from metarl.policy import PolicyStep, StepInput
from metarl.vector import space_dims


class RandomPolicy:
    """Uniformly random actions (Discrete: uniform choice; Box: uniform in the bounds).

    Args:
        action_space: The env's single action space.
    """

    def __init__(self, action_space: gym.spaces.Space):
        _, self.n, self.discrete = space_dims(action_space)
        if not self.discrete:
            self.low = torch.as_tensor(action_space.low, dtype=torch.float32)
            self.high = torch.as_tensor(action_space.high, dtype=torch.float32)
            if not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
                # Unbounded Box: a standard normal is the only sensible "random".
                self.low = self.high = None

    def initial_state(self, num_rows: int, device: torch.device) -> None:
        return None

    def step(self, inp: StepInput, state: None, generator: torch.Generator) -> PolicyStep:
        b, device = inp.prev_reward.shape[0], inp.prev_reward.device
        zeros = torch.zeros(b, device=device)
        if self.discrete:
            action = torch.randint(0, self.n, (b,), generator=generator, device=device)
        elif self.low is None:
            action = torch.randn(
                (b, *inp.prev_action.shape[1:]), generator=generator, device=device
            )
        else:
            low, high = self.low.to(device), self.high.to(device)
            u = torch.rand((b, *low.shape), generator=generator, device=device)
            action = low + u * (high - low)
        return PolicyStep(action, zeros, zeros, None)
