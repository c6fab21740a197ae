"""One batched env interface, two backends.

* :class:`BatchedTaskEnv` is the interface the collector drives: ``B`` rows, one task per
  row, torch tensors in and out, no auto-reset. Tensor envs (bandit, MDP, nav2d, maze)
  implement it directly and step all rows in one torch op.
* :class:`GymVectorTaskEnv` implements it over ``gymnasium.vector`` for envs that only
  exist as single gymnasium envs (MuJoCo, users' envs), with autoreset disabled so that
  only the collector decides where episodes and trials begin.
* :class:`BatchedEnvView` turns a tensor env into a plain single ``gymnasium.Env`` (a
  batch of one), so the dynamics are written once.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.tasks import TaskBatch


@dataclasses.dataclass(frozen=True)
class EnvStep:
    """What :meth:`BatchedTaskEnv.step` returns for all ``B`` rows.

    Attributes:
        obs: Next observation ``[B, *obs_shape]`` (the final one if the episode ended).
        reward: ``[B]`` float.
        terminated: ``[B]`` bool, the episode reached a terminal state.
        truncated: ``[B]`` bool, the episode hit its time limit.
    """

    obs: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor


class BatchedTaskEnv(abc.ABC):
    """``B`` independent envs, each on its own task, stepped together.

    Subclasses set ``num_envs``, ``single_observation_space``, ``single_action_space``,
    ``max_episode_steps`` and ``device``. Observations are float tensors; discrete actions
    are long tensors ``[B]``, continuous actions float tensors ``[B, *shape]``.
    """

    num_envs: int
    single_observation_space: gym.spaces.Space
    single_action_space: gym.spaces.Space
    max_episode_steps: int
    device: torch.device

    @abc.abstractmethod
    def set_tasks(self, tasks: Any) -> None:
        """Assigns one task per row (a :class:`TaskBatch` or a sequence of tasks)."""

    @abc.abstractmethod
    def reset(self, mask: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        """Starts a new episode in the rows of ``mask`` (all rows if None).

        Args:
            mask: ``[B]`` bool rows to reset; other rows are left untouched.
            seed: Reseeds the env's random stream (only meaningful for a full reset).

        Returns:
            The observation of every row, ``[B, *obs_shape]``.
        """

    @abc.abstractmethod
    def step(self, action: torch.Tensor, live: torch.Tensor | None = None) -> EnvStep:
        """Advances the rows by one step. Rows are never reset here.

        Args:
            action: One action per row.
            live: ``[B]`` bool, the rows whose result the caller will use (None: all).
                A backend may skip the other rows, which is worth it when each row is a
                separate simulator (:class:`GymVectorTaskEnv`): a skipped row keeps its
                observation and reports reward 0, not terminated, not truncated. Tensor
                envs step every row anyway, as one op over all rows costs the same.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Releases resources (worker processes); tensor envs have none."""


class TensorTaskEnv(BatchedTaskEnv):
    """Base class for batched envs whose dynamics are torch ops over all rows.

    Subclasses implement :meth:`_reset_rows` and :meth:`_step` and keep their per-row
    state in tensors. The step counter, time-limit truncation and seeding live here.
    """

    def __init__(self, num_envs: int, max_episode_steps: int, device: torch.device | str = "cpu"):
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(0)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.tasks: TaskBatch | None = None

    def set_tasks(self, tasks: TaskBatch) -> None:
        if len(tasks) != self.num_envs:
            raise ValueError(f"got {len(tasks)} tasks for {self.num_envs} envs")
        self.tasks = tasks.to(self.device)

    def reset(self, mask: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        if self.tasks is None:
            raise RuntimeError("set_tasks() must be called before reset()")
        if seed is not None:
            self.generator.manual_seed(int(seed))
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self.elapsed = torch.where(mask, 0, self.elapsed)
        return self._reset_rows(mask)

    def step(self, action: torch.Tensor, live: torch.Tensor | None = None) -> EnvStep:
        obs, reward, terminated = self._step(action)
        self.elapsed = self.elapsed + 1
        truncated = (self.elapsed >= self.max_episode_steps) & ~terminated
        return EnvStep(obs, reward, terminated, truncated)

    @abc.abstractmethod
    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        """Resets the state of rows in ``mask``; returns all rows' observations."""

    @abc.abstractmethod
    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Applies ``action`` to every row; returns (obs, reward, terminated)."""


class BatchedEnvView(gym.Env):
    """A single gymnasium env backed by a :class:`TensorTaskEnv` with one row.

    Subclasses set ``distribution_cls`` and forward their constructor kwargs. The view keeps
    the task-distribution contract for the gymnasium path: ``sample_tasks(n, rng)`` and
    ``set_task(task)``; a task is a one-row :class:`TaskBatch`.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 - gymnasium convention

    def __init__(
        self, distribution: Any, task: TaskBatch | None = None, render_mode: str | None = None
    ):
        self.distribution = distribution
        self._env: TensorTaskEnv = distribution.make_batched_env(1, "cpu")
        self.observation_space = self._env.single_observation_space
        self.action_space = self._env.single_action_space
        self.render_mode = render_mode
        self.task = (
            task if task is not None else distribution.sample_tasks(1, np.random.default_rng(0))
        )
        self._env.set_tasks(self.task)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> list[TaskBatch]:
        return self.distribution.sample_tasks(n, rng).unbind()

    def set_task(self, task: TaskBatch) -> None:
        self.task = task
        self._env.set_tasks(task)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        # Derive the torch stream from gymnasium's np_random so that reset(seed) is
        # reproducible and an unseeded reset continues the stream.
        torch_seed = int(self.np_random.integers(0, 2**62))
        obs = self._env.reset(seed=torch_seed)
        return self._to_numpy_obs(obs), {}

    def step(self, action):
        if isinstance(self.action_space, gym.spaces.Discrete):
            act = torch.as_tensor([int(action)], dtype=torch.long)
        else:
            act = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(
                1, *self.action_space.shape
            )
        out = self._env.step(act)
        return (
            self._to_numpy_obs(out.obs),
            float(out.reward[0]),
            bool(out.terminated[0]),
            bool(out.truncated[0]),
            {},
        )

    def _to_numpy_obs(self, obs: torch.Tensor) -> np.ndarray:
        return obs[0].cpu().numpy().astype(self.observation_space.dtype, copy=False)


class _TaskSetter(gym.Wrapper):
    """Exposes ``set_task`` as a settable ``task`` attribute for ``vector.set_attr``.

    ``gymnasium.vector``'s ``call`` passes the same arguments to every sub-env, while
    ``set_attr`` takes one value per sub-env. Routing ``set_attr("metarl_task", tasks)``
    through this setter gives each worker (also in ``AsyncVectorEnv``) its own task.
    """

    @property
    def metarl_task(self) -> Any:
        return getattr(self.env.unwrapped, "task", None)

    @metarl_task.setter
    def metarl_task(self, task: Any) -> None:
        self.env.unwrapped.set_task(task)


def _wrapped_factory(make_env: Callable[[], gym.Env]) -> Callable[[], gym.Env]:
    def factory() -> gym.Env:
        return _TaskSetter(make_env())

    return factory


class GymVectorTaskEnv(BatchedTaskEnv):
    """Drives ``num_envs`` copies of a gymnasium task env through ``gymnasium.vector``.

    Args:
        make_env: Builds one env; it must implement ``set_task(task)``.
        num_envs: Width of the vector env.
        max_episode_steps: Time limit the collector enforces on top of the env's own.
        device: Where observation tensors are put.
        asynchronous: Use ``AsyncVectorEnv`` (one process per env) instead of ``SyncVectorEnv``.
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        num_envs: int,
        max_episode_steps: int,
        device: torch.device | str = "cpu",
        asynchronous: bool = False,
    ):
        vec_cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
        self.vec = vec_cls(
            [_wrapped_factory(make_env)] * num_envs,
            autoreset_mode=gym.vector.AutoresetMode.DISABLED,
        )
        self.num_envs = num_envs
        self.single_observation_space = self.vec.single_observation_space
        self.single_action_space = self.vec.single_action_space
        self.max_episode_steps = max_episode_steps
        self.device = torch.device(device)
        self._discrete = isinstance(self.single_action_space, gym.spaces.Discrete)
        self._obs = None

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        if isinstance(tasks, TaskBatch):
            tasks = tasks.unbind()
        if len(tasks) != self.num_envs:
            raise ValueError(f"got {len(tasks)} tasks for {self.num_envs} envs")
        self.vec.set_attr("metarl_task", list(tasks))

    def _obs_tensor(self, obs: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)

    def reset(self, mask: torch.Tensor | None = None, seed: int | None = None) -> torch.Tensor:
        if mask is None or seed is not None:
            seeds = None if seed is None else [int(seed) + i for i in range(self.num_envs)]
            obs, _ = self.vec.reset(seed=seeds)
            self._obs = self._obs_tensor(obs)
            return self._obs
        reset_mask = mask.cpu().numpy()
        obs, _ = self.vec.reset(options={"reset_mask": reset_mask})
        new = self._obs_tensor(obs)
        self._obs = torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, self._obs)
        return self._obs

    def step(self, action: torch.Tensor, live: torch.Tensor | None = None) -> EnvStep:
        act = action.detach().cpu().numpy()
        sub_envs = getattr(self.vec, "envs", None)  # None for AsyncVectorEnv
        rows = None if live is None or sub_envs is None else live.cpu().numpy()
        if rows is None or rows.all():
            obs, reward, terminated, truncated, _ = self.vec.step(act)
            self._obs = self._obs_tensor(obs)
        else:
            reward, terminated, truncated = self._step_rows(sub_envs, act, rows)
        return EnvStep(
            obs=self._obs,
            reward=torch.as_tensor(reward, dtype=torch.float32, device=self.device),
            terminated=torch.as_tensor(terminated, device=self.device),
            truncated=torch.as_tensor(truncated, device=self.device),
        )

    def _step_rows(
        self, sub_envs: list[gym.Env], act: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps only the sub-envs of ``rows``; the others keep their last observation.

        Why: a trial that has ended early (an Ant that fell, a finished row waiting for the
        slowest row) would otherwise keep simulating physics nobody reads, which was most
        of an Ant iteration's sampling. ``SyncVectorEnv.step`` has no row mask, so this
        steps its sub-envs directly. What that bypasses is harmless: its stored
        observations (:meth:`reset` merges only the reset rows into ``self._obs``) and its
        ended-episode flags (set by its own steps, cleared by resets; within a collection
        every row that ended in a full step is reset before the next step).
        """
        n = self.num_envs
        reward = np.zeros(n, dtype=np.float32)
        terminated = np.zeros(n, dtype=bool)
        truncated = np.zeros(n, dtype=bool)
        index = np.flatnonzero(rows)
        new_obs = []
        for i in index:
            obs_i, reward[i], terminated[i], truncated[i], _ = sub_envs[i].step(act[i])
            new_obs.append(np.asarray(obs_i, dtype=np.float32))
        # Not in place: the collector may still hold the previous observation tensor.
        self._obs = self._obs.clone()
        if len(index):
            self._obs[torch.as_tensor(index, device=self.device)] = self._obs_tensor(
                np.stack(new_obs)
            )
        return reward, terminated, truncated

    def close(self) -> None:
        self.vec.close()


def space_dims(space: gym.spaces.Space) -> tuple[int, int, bool]:
    """(flat observation or action size, number of discrete choices or 0, is_discrete)."""
    if isinstance(space, gym.spaces.Discrete):
        return 1, int(space.n), True
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape)), 0, False
    raise TypeError(f"unsupported space {space}; metarl handles Discrete and Box spaces")
