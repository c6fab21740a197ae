"""The acting interface shared by learners and baselines.

Anything that acts in a :class:`metarl.vector.BatchedTaskEnv` through the collector, a
meta-learner or a classical baseline such as UCB1, implements :class:`Policy`: it gets the
current observation plus the previous action, previous reward and done flag (the inputs
of RL² and SNAIL), and an opaque per-row ``state`` that it owns (an RNN's hidden state,
SNAIL's caches, a bandit algorithm's counts). The collector starts every row's trial with
``initial_state`` and never touches the state otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import torch


@dataclasses.dataclass(frozen=True)
class StepInput:
    """The inputs of one step, for all ``B`` rows.

    Attributes:
        obs: ``[B, *obs_shape]`` float.
        prev_action: Action of the previous step, ``[B]`` long (discrete) or
            ``[B, *action_shape]`` float; zero at a trial start.
        prev_reward: Reward of the previous step, ``[B]``; zero at a trial start.
        prev_done: 1.0 where the previous step ended an episode of the same trial, ``[B]``.
        trial_start: True where this is the first step of a trial, ``[B]`` bool.
        episode_step: Steps taken so far in the current episode, ``[B]`` long.
        episode_index: Episodes finished so far in the trial, ``[B]`` long (None when the
            caller does not track it; the collector always does).
    """

    obs: torch.Tensor
    prev_action: torch.Tensor
    prev_reward: torch.Tensor
    prev_done: torch.Tensor
    trial_start: torch.Tensor
    episode_step: torch.Tensor
    episode_index: torch.Tensor | None = None


@dataclasses.dataclass(frozen=True)
class PolicyStep:
    """A policy's decision for all rows.

    Attributes:
        action: ``[B]`` long or ``[B, *action_shape]`` float.
        log_prob: ``[B]`` log-probability of ``action`` (zeros for deterministic baselines).
        value: ``[B]`` value estimate of the observation (zeros if the policy has none).
        state: The policy's per-row state after this step.
    """

    action: torch.Tensor
    log_prob: torch.Tensor
    value: torch.Tensor
    state: Any


@runtime_checkable
class Policy(Protocol):
    """Acts for ``B`` rows at a time. See the module docstring."""

    def initial_state(self, num_rows: int, device: torch.device) -> Any:
        """State at the start of a trial (memory empty)."""
        ...

    def step(self, inp: StepInput, state: Any, generator: torch.Generator) -> PolicyStep:
        """Chooses actions; random choices draw from ``generator`` only."""
        ...


class TaskAwarePolicy(Policy, Protocol):
    """A policy that is told the true tasks, such as an oracle baseline."""

    def set_tasks(self, tasks: Any) -> None: ...
