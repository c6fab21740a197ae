"""Dark room, batched: ``B`` rooms stepped in one torch op.

The agent starts in the centre cell of a ``size × size`` room and sees only its own
position; the goal cell is hidden. Reward is 1 on every step the agent stands on the goal.
A trial is several episodes in the same room, so an agent with memory explores in the
first episode and walks straight to the goal afterwards (the "Dark Room" of Laskin et al.,
2022, "In-context RL with algorithm distillation").

Actions: 0 stay, 1 up, 2 down, 3 left, 4 right. With probability ``slip`` the room
replaces the action by a uniformly random one, drawn from the env's seeded generator.

This module only uses absolute imports, so it also loads as
``path/to/darkroom.py:DarkRoomDistribution``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.policy import Policy, PolicyStep, StepInput
from metarl.tasks import TaskBatch
from metarl.vector import TensorTaskEnv

#: Row/column change of each action: stay, up, down, left, right.
MOVES = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def check_room(size: Any, horizon: Any, slip: Any) -> tuple[int, int, float]:
    """Validates the constructor arguments shared by both implementations.

    Raises:
        ValueError: With a one-line reason (metarl shows it as ``env 'dark-room': ...``).
    """
    for name, value, low in (("size", size, 2), ("horizon", horizon, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"dark room {name} must be an integer >= {low}, got {value!r}")
    if isinstance(slip, bool) or not isinstance(slip, int | float) or not 0 <= slip <= 1:
        raise ValueError(f"dark room slip must be a number in [0, 1], got {slip!r}")
    return int(size), int(horizon), float(slip)


def sample_goals(size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` goal cells ``[n, 2]`` (row, col), uniform over every cell but the start."""
    centre = (size // 2) * size + size // 2
    index = rng.integers(0, size * size - 1, n)
    index = index + (index >= centre)  # skip the start cell
    return np.stack([index // size, index % size], axis=1)


@dataclasses.dataclass(frozen=True)
class DarkRoomTasks(TaskBatch):
    """A batch of dark-room tasks.

    Attributes:
        goal: Goal cell (row, col), ``[n, 2]`` long.
    """

    goal: torch.Tensor


class DarkRoomEnv(TensorTaskEnv):
    """``num_envs`` dark rooms; the base class handles the step counter and time limit.

    Args:
        num_envs: Rows ``B``.
        size: Room side length.
        horizon: Steps per episode (episodes are truncated, never terminated).
        slip: Probability of a random action.
        device: Where tensors live.
    """

    def __init__(self, num_envs: int, size: int, horizon: int, slip: float, device: Any = "cpu"):
        super().__init__(num_envs, max_episode_steps=horizon, device=device)
        self.size = size
        self.slip = slip
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.single_action_space = gym.spaces.Discrete(len(MOVES))
        self.moves = torch.tensor(MOVES, dtype=torch.long, device=self.device)
        self.start = size // 2
        self.pos = torch.full((num_envs, 2), self.start, dtype=torch.long, device=self.device)

    def _obs(self) -> torch.Tensor:
        return self.pos.to(torch.float32) / (self.size - 1)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.pos = torch.where(mask[:, None], self.start, self.pos)
        return self._obs()

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        action = action.to(device=self.device, dtype=torch.long).reshape(self.num_envs)
        if self.slip > 0:
            # All randomness comes from self.generator, which reset(seed=...) reseeds: the
            # same seed replays the same slips (what `metarl check-env` verifies).
            u = torch.rand(self.num_envs, generator=self.generator, device=self.device)
            random_action = torch.randint(
                0, len(MOVES), (self.num_envs,), generator=self.generator, device=self.device
            )
            action = torch.where(u < self.slip, random_action, action)
        self.pos = (self.pos + self.moves[action]).clamp(0, self.size - 1)
        reward = (self.pos == self.tasks.goal).all(dim=-1).to(torch.float32)
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self._obs(), reward, terminated


class DarkRoomOracle:
    """Knows the goal: walks there (rows first) and stays. A baseline, not a learner."""

    def __init__(self, size: int):
        self.size = size
        self._goal: torch.Tensor | None = None

    def set_tasks(self, tasks: DarkRoomTasks) -> None:
        """Called by the collector with the tasks of the rows about to be collected."""
        self._goal = tasks.goal

    def initial_state(self, num_rows: int, device: torch.device) -> None:
        return None

    def step(self, inp: StepInput, state: None, generator: torch.Generator) -> PolicyStep:
        goal = self._goal.to(inp.obs.device)
        pos = torch.round(inp.obs * (self.size - 1)).long()
        d = goal - pos
        action = torch.zeros(len(pos), dtype=torch.long, device=pos.device)  # stay
        action = torch.where(d[:, 1] > 0, 4, torch.where(d[:, 1] < 0, 3, action))
        action = torch.where(d[:, 0] > 0, 2, torch.where(d[:, 0] < 0, 1, action))
        zeros = torch.zeros(len(pos), device=pos.device)
        return PolicyStep(action=action, log_prob=zeros, value=zeros, state=None)


class DarkRoomDistribution:
    """Dark rooms with a goal hidden uniformly among the cells other than the start.

    Args:
        size: Room side length (>= 2).
        horizon: Steps per episode (>= 1).
        slip: Probability that the room takes a random action instead of the agent's.

    Raises:
        ValueError: If an argument is out of range.
    """

    #: Shown by `metarl envs`.
    description = "dark room: find a hidden goal cell from your position alone (example plug-in)"
    #: Episodes per trial unless the user sets trial.episodes.
    default_episodes = 4

    def __init__(self, size: int = 5, horizon: int = 10, slip: float = 0.0):
        self.size, self.horizon, self.slip = check_room(size, horizon, slip)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> DarkRoomTasks:
        """``n`` tasks drawn with ``rng`` only (so a seed fixes them)."""
        return DarkRoomTasks(goal=torch.from_numpy(sample_goals(self.size, n, rng)).long())

    def make_batched_env(self, num_envs: int, device: Any = "cpu") -> DarkRoomEnv:
        """The batched env metarl collects trials with."""
        return DarkRoomEnv(num_envs, self.size, self.horizon, self.slip, device)

    def optimal_episode_return(self, tasks: DarkRoomTasks) -> torch.Tensor:
        """Expected return of an episode for the oracle without slips, ``[n]``.

        The goal is ``d`` (Manhattan distance) steps away; the oracle stands on it from
        step ``d`` to the horizon. ``metarl eval`` divides returns by this (``normalised``).
        """
        start = self.size // 2
        d = (tasks.goal - start).abs().sum(-1).to(torch.float32)
        return torch.clamp(self.horizon - d + 1, min=0.0)

    def baselines(self, episodes: int) -> dict[str, Callable[[], Policy]]:
        """Policies `metarl eval` runs next to the learner (``random`` is always added)."""
        # functools.partial rather than a lambda, so the factories pickle.
        return {"oracle": functools.partial(DarkRoomOracle, self.size)}
