"""2D point navigation to an unobserved goal (Finn et al., 2017, "MAML").

A task is a goal position ~ U[goal_low, goal_high]². The agent starts at the origin,
observes only its own position, moves by a clipped velocity action and is rewarded with
the negative distance to the goal; the episode terminates once it is within
``goal_tolerance`` of the goal on both coordinates.

The dynamics are written once, batched in torch (:class:`Nav2DEnv`); the gymnasium env
:class:`Nav2DGymEnv` (``metarl/Nav2D-v0``) is a one-row view of it.
"""

import dataclasses
import functools
import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from metarl.policy import Policy, PolicyStep, StepInput
from metarl.tasks import TaskBatch
from metarl.vector import BatchedEnvView, TensorTaskEnv

#: Positions are clamped to ``[-BOUND, BOUND]²`` so observations stay in their Box.
BOUND = 10.0


@dataclasses.dataclass(frozen=True)
class Nav2DTasks(TaskBatch):
    """A batch of navigation tasks.

    Attributes:
        goal: Goal position, ``[n, 2]`` float.
    """

    goal: torch.Tensor


class Nav2DEnv(TensorTaskEnv):
    """``num_envs`` point agents stepped in one torch op.

    Args:
        num_envs: Number of rows ``B``.
        horizon: Episode length; the base class truncates there.
        max_action: Per-coordinate bound of the velocity action.
        goal_tolerance: Per-coordinate distance to the goal that ends the episode.
        device: Where tensors live.
    """

    def __init__(
        self,
        num_envs: int,
        horizon: int,
        max_action: float,
        goal_tolerance: float,
        device: torch.device | str = "cpu",
    ):
        super().__init__(num_envs, max_episode_steps=horizon, device=device)
        self.max_action = max_action
        self.goal_tolerance = goal_tolerance
        self.single_observation_space = gym.spaces.Box(-BOUND, BOUND, (2,), np.float32)
        self.single_action_space = gym.spaces.Box(-max_action, max_action, (2,), np.float32)
        self.pos = torch.zeros(num_envs, 2, device=self.device)

    def set_tasks(self, tasks: Nav2DTasks) -> None:
        if tuple(tasks.goal.shape[1:]) != (2,):
            raise ValueError(f"goals must be [n, 2], got {tuple(tasks.goal.shape)}")
        super().set_tasks(tasks)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.pos = torch.where(mask[:, None], 0.0, self.pos)
        # A copy: callers may keep observations while the env moves on.
        return self.pos.clone()

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.tasks is None:
            raise RuntimeError("set_tasks() must be called before step()")
        action = action.to(device=self.device, dtype=torch.float32).reshape(self.num_envs, 2)
        # Policies sample from unbounded Gaussians; the env, not the policy, enforces bounds.
        action = action.clamp(-self.max_action, self.max_action)
        self.pos = (self.pos + action).clamp(-BOUND, BOUND)
        delta = self.pos - self.tasks.goal
        reward = -torch.linalg.vector_norm(delta, dim=-1)
        terminated = (delta.abs() < self.goal_tolerance).all(dim=-1)
        return self.pos.clone(), reward, terminated


class Nav2DOracle:
    """Moves straight at the goal: ``action = clip(goal - pos)``.

    Clipping per coordinate makes every step the closest reachable point to the goal, which
    is optimal for a sum of negative distances.

    Args:
        max_action: Per-coordinate action bound.
    """

    def __init__(self, max_action: float):
        self.max_action = max_action
        self._goal: torch.Tensor | None = None

    def set_tasks(self, tasks: Nav2DTasks) -> None:
        """Stores the true goals of the rows about to be collected, in row order."""
        self._goal = tasks.goal

    def initial_state(self, num_rows: int, device: torch.device) -> None:
        return None

    def step(self, inp: StepInput, state: None, generator: torch.Generator) -> PolicyStep:
        if self._goal is None:
            raise RuntimeError("Nav2DOracle.set_tasks() must be called before step()")
        rows = inp.obs.shape[0]
        if self._goal.shape[0] != rows:
            raise ValueError(f"oracle knows {self._goal.shape[0]} tasks, got {rows} rows")
        if self._goal.device != inp.obs.device:  # move once, not every step
            self._goal = self._goal.to(inp.obs.device)
        action = (self._goal - inp.obs).clamp(-self.max_action, self.max_action)
        zeros = torch.zeros(rows, device=inp.obs.device)
        return PolicyStep(action=action, log_prob=zeros, value=zeros, state=None)


def _check_real(key: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"nav2d {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"nav2d {key} must be finite, got {value!r}")
    return float(value)


class Nav2DDistribution:
    """Point navigation to a goal ~ U[goal_low, goal_high]², reward = −distance.

    Args:
        horizon: Steps per episode (>= 1).
        goal_low: Lower bound of each goal coordinate.
        goal_high: Upper bound of each goal coordinate (>= goal_low; equal fixes the goal).
        max_action: Per-coordinate action bound (> 0).
        goal_tolerance: Per-coordinate distance at which the episode terminates (> 0).

    Raises:
        ValueError: If a value is out of range or the goal box leaves ``[-10, 10]²``.
    """

    name = "nav2d"
    description = "2D point navigation to a hidden goal ~ U[low,high]^2, reward = -distance"
    # Gradient-based meta-learners adapt across single-episode trials; RL² users set
    # trial.episodes themselves.
    default_episodes = 1

    def __init__(
        self,
        horizon: int = 100,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        max_action: float = 0.1,
        goal_tolerance: float = 0.01,
    ):
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"nav2d horizon must be an integer >= 1, got {horizon!r}")
        goal_low = _check_real("goal_low", goal_low)
        goal_high = _check_real("goal_high", goal_high)
        max_action = _check_real("max_action", max_action)
        goal_tolerance = _check_real("goal_tolerance", goal_tolerance)
        if goal_low > goal_high:
            raise ValueError(f"nav2d goal_low ({goal_low}) must be <= goal_high ({goal_high})")
        if goal_low < -BOUND or goal_high > BOUND:
            raise ValueError(
                f"nav2d goals must lie in [-{BOUND}, {BOUND}], got [{goal_low}, {goal_high}]"
            )
        if max_action <= 0:
            raise ValueError(f"nav2d max_action must be > 0, got {max_action}")
        if goal_tolerance <= 0:
            raise ValueError(f"nav2d goal_tolerance must be > 0, got {goal_tolerance}")
        self.horizon = int(horizon)
        self.goal_low = goal_low
        self.goal_high = goal_high
        self.max_action = max_action
        self.goal_tolerance = goal_tolerance

    def sample_tasks(self, n: int, rng: np.random.Generator) -> Nav2DTasks:
        """Draws ``n`` goals using ``rng`` only (CPU float32 tensors)."""
        goal = rng.uniform(self.goal_low, self.goal_high, size=(n, 2)).astype(np.float32)
        return Nav2DTasks(goal=torch.from_numpy(goal))

    def make_batched_env(self, num_envs: int, device: torch.device | str = "cpu") -> Nav2DEnv:
        """A :class:`Nav2DEnv` with ``num_envs`` rows on ``device``."""
        return Nav2DEnv(num_envs, self.horizon, self.max_action, self.goal_tolerance, device)

    @property
    def observation_space(self) -> gym.spaces.Box:
        """Single-env observation space (the position)."""
        return gym.spaces.Box(-BOUND, BOUND, (2,), np.float32)

    @property
    def action_space(self) -> gym.spaces.Box:
        """Single-env action space (a velocity)."""
        return gym.spaces.Box(-self.max_action, self.max_action, (2,), np.float32)

    def optimal_episode_return(self, tasks: Nav2DTasks) -> torch.Tensor:
        """Return of one episode under the oracle, ``[n]`` (the dynamics are deterministic).

        Computed by stepping the batched env, so it includes float32 rounding and the
        early termination exactly as an agent would see them.
        """
        env = self.make_batched_env(len(tasks), tasks.goal.device)
        env.set_tasks(tasks)
        pos = env.reset()
        total = torch.zeros(len(tasks), device=tasks.goal.device)
        active = torch.ones(len(tasks), dtype=torch.bool, device=tasks.goal.device)
        for _ in range(self.horizon):
            out = env.step((tasks.goal - pos).clamp(-self.max_action, self.max_action))
            total = total + torch.where(active, out.reward, 0.0)
            active = active & ~(out.terminated | out.truncated)
            pos = out.obs
            if not bool(active.any()):
                break
        return total

    def baselines(self) -> dict[str, Callable[[], Policy]]:
        """Reference policies: ``"oracle"`` knows the goal."""
        # partial, not a lambda, so that the factories pickle (process-based workers).
        return {"oracle": functools.partial(Nav2DOracle, self.max_action)}


class Nav2DGymEnv(BatchedEnvView):
    """``metarl/Nav2D-v0``: one navigation task as a gymnasium env.

    Args:
        horizon: Steps per episode.
        goal_low: Lower bound of each goal coordinate.
        goal_high: Upper bound of each goal coordinate.
        max_action: Per-coordinate action bound.
        goal_tolerance: Per-coordinate distance at which the episode terminates.
        render_mode: Unused; no rendering.
    """

    distribution_cls = Nav2DDistribution

    def __init__(
        self,
        horizon: int = 100,
        goal_low: float = -0.5,
        goal_high: float = 0.5,
        max_action: float = 0.1,
        goal_tolerance: float = 0.01,
        render_mode: str | None = None,
    ):
        super().__init__(
            Nav2DDistribution(
                horizon=horizon,
                goal_low=goal_low,
                goal_high=goal_high,
                max_action=max_action,
                goal_tolerance=goal_tolerance,
            ),
            render_mode=render_mode,
        )
