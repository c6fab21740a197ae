"""Dark room as a plain ``gymnasium.Env``: the simplest task-distribution contract.

Any gymnasium env becomes a metarl task distribution with two methods:

* ``sample_tasks(n, rng)``: ``n`` picklable tasks drawn with the numpy Generator ``rng``
  only (metarl derives ``rng`` from the run's seed, so tasks are reproducible);
* ``set_task(task)``: the next ``reset()`` starts an episode of ``task``.

metarl steps copies of it through ``gymnasium.vector`` (in this process, or in worker
processes with ``--set train.sampler=process``). Dynamics are identical to
:class:`metarl_darkroom.darkroom.DarkRoomEnv`, one room at a time.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from metarl_darkroom.darkroom import MOVES, check_room, sample_goals


class DarkRoomGymEnv(gym.Env):
    """One dark room; the goal cell is the task.

    Args:
        size: Room side length (>= 2).
        horizon: Steps per episode; the env truncates there.
        slip: Probability of a random action (drawn from ``self.np_random``).
        render_mode: Unused (no rendering).
    """

    description = "dark room as a plain gymnasium env (example plug-in, simple contract)"
    default_episodes = 4
    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium convention

    def __init__(
        self, size: int = 5, horizon: int = 10, slip: float = 0.0, render_mode: str | None = None
    ):
        self.size, self.horizon, self.slip = check_room(size, horizon, slip)
        #: metarl sizes its trajectory buffers from this (else from the env spec, or 1000).
        self.max_episode_steps = self.horizon
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(len(MOVES))
        self.render_mode = render_mode
        self.goal = (0, 0)
        self.pos = [self.size // 2, self.size // 2]
        self.t = 0

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
        """``n`` goal cells as plain tuples (picklable, comparable)."""
        return [(int(r), int(c)) for r, c in sample_goals(self.size, n, rng)]

    def set_task(self, task: tuple[int, int]) -> None:
        """Sets the goal; no randomness here, so the same task always gives the same room."""
        self.goal = (int(task[0]), int(task[1]))

    def _obs(self) -> np.ndarray:
        # Exactly the observation space's dtype and shape (check-env tests both).
        return np.asarray(self.pos, dtype=np.float32) / np.float32(self.size - 1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)  # seeds self.np_random: the only source of randomness
        self.pos = [self.size // 2, self.size // 2]
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        action = int(action)
        if self.slip > 0 and self.np_random.random() < self.slip:
            action = int(self.np_random.integers(len(MOVES)))
        dr, dc = MOVES[action]
        self.pos = [
            min(max(self.pos[0] + dr, 0), self.size - 1),
            min(max(self.pos[1] + dc, 0), self.size - 1),
        ]
        self.t += 1
        reward = float(tuple(self.pos) == self.goal)
        return self._obs(), reward, False, self.t >= self.horizon, {}
