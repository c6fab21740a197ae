"""Checks for users' task distributions, and toy envs with known answers for tests.

:func:`check_task_env` is what ``metarl check-env`` runs. It returns a list of precise,
one-line problems (empty if the env is fine) instead of raising on the first one.
"""

from __future__ import annotations

import dataclasses
import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.tasks import TaskBatch
from metarl.vector import TensorTaskEnv


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _same(a: Any, b: Any) -> bool:
    """Deep equality over tensors, arrays, dataclasses, mappings and sequences."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(
            _same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    try:
        return bool(a == b)
    except Exception:
        return False


def _check_gym_env(env_cls: Any, kwargs: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    try:
        env = env_cls(**kwargs)
    except Exception as e:
        return [f"constructing {env_cls.__name__}(**{kwargs}) failed: {_first_line(e)}"]
    for method in ("sample_tasks", "set_task"):
        if not callable(getattr(env, method, None)):
            problems.append(f"{type(env).__name__} has no {method}() method")
    if problems:
        return problems
    try:
        tasks = env.sample_tasks(4, np.random.default_rng(0))
        again = env.sample_tasks(4, np.random.default_rng(0))
    except Exception as e:
        return [f"sample_tasks(4, rng) raised {_first_line(e)}"]
    if len(tasks) != 4:
        problems.append(f"sample_tasks(4, rng) returned {len(tasks)} tasks")
    if not _same(list(tasks), list(again)):
        problems.append("sample_tasks is not deterministic: the same rng seed gave different tasks")
    try:
        pickle.loads(pickle.dumps(tasks))
    except Exception as e:
        problems.append(
            f"tasks cannot be pickled (needed by process and Ray samplers): {_first_line(e)}"
        )
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Discrete | gym.spaces.Box):
        problems.append(f"action space {act_space} is not supported (Discrete or Box)")
    if not isinstance(obs_space, gym.spaces.Box):
        problems.append(f"observation space {obs_space} is not supported (Box)")

    def rollout(task: Any, seed: int, steps: int = 20) -> list[Any]:
        env.set_task(task)
        obs, _ = env.reset(seed=seed)
        act_space.seed(123)
        trace = [obs]
        for _ in range(steps):
            obs, reward, terminated, truncated, _ = env.step(act_space.sample())
            trace += [obs, reward, terminated, truncated]
            if terminated or truncated:
                break
        return trace

    try:
        trace = rollout(tasks[0], seed=0)
    except Exception as e:
        return [*problems, f"reset/step with a task raised {_first_line(e)}"]
    obs = trace[0]
    if isinstance(obs_space, gym.spaces.Box):
        arr = np.asarray(obs)
        if arr.shape != obs_space.shape:
            problems.append(
                f"observation shape {arr.shape} does not match observation_space {obs_space.shape}"
            )
        if arr.dtype != obs_space.dtype:
            problems.append(
                f"observation dtype {arr.dtype} does not match "
                f"observation_space dtype {obs_space.dtype}"
            )
    rewards = trace[2::4]
    if not all(np.isfinite(float(r)) for r in rewards):
        problems.append("step returned a non-finite reward")
    if not _same(rollout(tasks[0], seed=0)[0::4], trace[0::4]):
        problems.append(
            "reset ignores the seed: reset(seed=0) twice gave different observations/trajectories"
        )
    try:
        env.set_task(tasks[1])
        env.set_task(tasks[0])
        if not _same(rollout(tasks[0], seed=0)[1::4], trace[1::4]):
            problems.append(
                "set_task is not deterministic: the same task and seed gave different rollouts"
            )
    except Exception as e:
        problems.append(f"set_task raised {_first_line(e)}")
    if not problems:
        from gymnasium.utils.env_checker import check_env

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                check_env(env, skip_render_check=True)
            except Exception as e:
                problems.append(f"gymnasium check_env: {_first_line(e)}")
    env.close()
    return problems


def _check_batched(dist_cls: Any, kwargs: dict[str, Any]) -> list[str]:
    try:
        dist = dist_cls(**kwargs)
    except Exception as e:
        return [f"constructing {dist_cls.__name__}(**{kwargs}) failed: {_first_line(e)}"]
    problems = []
    try:
        tasks = dist.sample_tasks(8, np.random.default_rng(0))
        again = dist.sample_tasks(8, np.random.default_rng(0))
        pickle.loads(pickle.dumps(tasks))
        if not _same(tasks, again):
            problems.append("sample_tasks is not deterministic for the same rng seed")
        env = dist.make_batched_env(8, "cpu")
        env.set_tasks(tasks)
        obs = env.reset(seed=0)
        if tuple(obs.shape[1:]) != tuple(env.single_observation_space.shape):
            problems.append(f"batched obs shape {tuple(obs.shape)} does not match the space")
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            if isinstance(env.single_action_space, gym.spaces.Discrete):
                act = torch.randint(0, int(env.single_action_space.n), (8,), generator=gen)
            else:
                act = torch.rand((8, *env.single_action_space.shape), generator=gen) * 0.0
            out = env.step(act)
            if not torch.isfinite(out.reward).all():
                problems.append("step returned a non-finite reward")
                break
            done = out.terminated | out.truncated
            if done.any():
                env.reset(mask=done)
    except Exception as e:
        problems.append(f"batched env failed: {_first_line(e)}")
    view_cls = getattr(dist, "gym_env_cls", None)
    if view_cls is not None and not problems:
        problems += _check_gym_env(view_cls, kwargs)
    return problems


def check_task_env(env_cls: Any, kwargs: dict[str, Any] | None = None) -> list[str]:
    """Validates a task distribution; returns one line per problem (empty: OK).

    Checks the API (``sample_tasks``, ``set_task`` or ``make_batched_env``), spaces,
    observation dtype and shape, finite rewards, picklable and deterministic tasks,
    deterministic ``set_task``, seeded ``reset``, and gymnasium's own ``check_env``.
    """
    kwargs = kwargs or {}
    if hasattr(env_cls, "make_batched_env"):
        return _check_batched(env_cls, kwargs)
    if isinstance(env_cls, type) and issubclass(env_cls, gym.Env):
        return _check_gym_env(env_cls, kwargs)
    return [
        f"{getattr(env_cls, '__name__', env_cls)!s} is neither a batched task distribution "
        "(make_batched_env) nor a gymnasium.Env subclass with sample_tasks/set_task"
    ]


# ---------------------------------------------------------------------------- toy envs
@dataclasses.dataclass(frozen=True)
class CountingTasks(TaskBatch):
    """Tasks of :class:`CountingDistribution`: a per-row integer offset (as float)."""

    offset: torch.Tensor


class CountingEnv(TensorTaskEnv):
    """A deterministic env for boundary tests.

    The observation is ``[step within episode, offset]``; the reward at each step is
    ``1 + offset``; an episode terminates after ``episode_length`` steps if ``terminate``
    else it is truncated there. Rows can have different episode lengths (``offset`` odd →
    one step shorter) so that trials end at different times.
    """

    def __init__(
        self, num_envs: int, episode_length: int, terminate: bool, ragged: bool, device="cpu"
    ):
        super().__init__(num_envs, episode_length + 1, device)
        self.episode_length = episode_length
        self.terminate = terminate
        self.ragged = ragged
        self.single_observation_space = gym.spaces.Box(-1e6, 1e6, (2,), np.float32)
        self.single_action_space = gym.spaces.Discrete(2)
        self.count = torch.zeros(num_envs, device=self.device)

    def _length(self) -> torch.Tensor:
        offset = self.tasks.offset
        return self.episode_length - (offset.long() % 2 if self.ragged else 0)

    def _obs(self) -> torch.Tensor:
        return torch.stack([self.count, self.tasks.offset], -1)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.count = torch.where(mask, 0.0, self.count)
        return self._obs()

    def _step(self, action: torch.Tensor):
        self.count = self.count + 1
        end = self.count >= self._length()
        reward = 1.0 + self.tasks.offset
        if self.terminate:
            return self._obs(), reward, end
        # Truncation through the time limit: mark elapsed so the base class truncates.
        self.elapsed = torch.where(end, self.max_episode_steps - 1, self.elapsed)
        return self._obs(), reward, torch.zeros_like(end)


class CountingDistribution:
    """Task distribution of :class:`CountingEnv` (offsets 0, 1, 2, … in order)."""

    name = "counting"
    description = "deterministic counting env for boundary tests"
    default_episodes = 3

    def __init__(self, episode_length: int = 4, terminate: bool = True, ragged: bool = False):
        self.episode_length = episode_length
        self.terminate = terminate
        self.ragged = ragged

    def sample_tasks(self, n: int, rng: np.random.Generator) -> CountingTasks:
        start = int(rng.integers(0, 1000))
        return CountingTasks(offset=torch.arange(start, start + n, dtype=torch.float32))

    def make_batched_env(self, num_envs: int, device: Any = "cpu") -> CountingEnv:
        return CountingEnv(num_envs, self.episode_length, self.terminate, self.ragged, device)
