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
    """Deep equality over tensors, arrays, dataclasses, mappings and sequences.

    NaN equals NaN here: the question is "did the same thing happen twice", and a
    non-finite reward is reported by its own check, not as non-determinism.
    """
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and bool(torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True))
        )
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        x, y = np.asarray(a), np.asarray(b)
        if x.shape != y.shape:
            return False
        try:
            return bool(np.array_equal(x, y, equal_nan=True))
        except TypeError:  # non-numeric arrays
            return bool(np.array_equal(x, y))
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
    if isinstance(a, float | np.floating) and isinstance(b, float | np.floating):
        return bool(a == b or (np.isnan(a) and np.isnan(b)))
    try:
        return bool(a == b)
    except Exception:
        return False


def _check_obs(obs: Any, space: gym.spaces.Box, where: str) -> str | None:
    """One line if ``obs`` does not have the space's exact shape and dtype."""
    if not isinstance(obs, np.ndarray):
        return (
            f"observation from {where} is a {type(obs).__name__}, not a numpy array of "
            f"dtype {space.dtype} and shape {space.shape}"
        )
    if obs.shape != space.shape:
        return (
            f"observation shape {obs.shape} from {where} does not match "
            f"observation_space shape {space.shape}"
        )
    if obs.dtype != space.dtype:
        return (
            f"observation dtype {obs.dtype} from {where} does not match "
            f"observation_space dtype {space.dtype}"
        )
    return _outside_bounds(obs, space, where)


def _outside_bounds(obs: np.ndarray, space: gym.spaces.Box, where: str) -> str | None:
    """One line if ``obs`` (shape ``space.shape``, or ``[n, *space.shape]``) leaves the box.

    gymnasium's checker only warns about this; a learner that scales or embeds
    observations by the declared bounds would then train on values it never expected.
    """
    obs = np.asarray(obs, dtype=np.float64)
    low = np.broadcast_to(space.low, obs.shape)
    high = np.broadcast_to(space.high, obs.shape)
    bad = ~((obs >= low) & (obs <= high))  # NaN compares False: counted as outside
    if not bad.any():
        return None
    i = tuple(int(k) for k in np.argwhere(bad)[0])
    return (
        f"observation from {where} lies outside observation_space: element {i} is "
        f"{obs[i]:g}, bounds [{low[i]:g}, {high[i]:g}]"
    )


def _task_problems(tasks: Any, again: Any) -> list[str]:
    """Tasks must pickle (for worker processes) and repeat for the same rng seed."""
    try:
        pickle.loads(pickle.dumps(tasks))
    except Exception as e:
        # Only this line: unpicklable tasks (lambdas, locks) often compare by identity too,
        # so "not deterministic" would be a knock-on report, not a second problem.
        return [f"tasks cannot be pickled (needed by process and Ray samplers): {_first_line(e)}"]
    if not _same(tasks, again):
        return ["sample_tasks is not deterministic: the same rng seed gave different tasks"]
    return []


class _ContractError(Exception):
    """A reset/step return value of the wrong form (reported as one problem)."""


def _gym_rollout(env: gym.Env, seed: int, steps: int = 20) -> list[tuple]:
    """reset(seed) then up to ``steps`` seeded random actions: [(obs, reward, term, trunc)]."""
    out = env.reset(seed=seed)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise _ContractError("reset() must return (obs, info)")
    trace = [(out[0], 0.0, False, False)]
    env.action_space.seed(123)
    for _ in range(steps):
        result = env.step(env.action_space.sample())
        if not (isinstance(result, tuple) and len(result) == 5):
            count = len(result) if isinstance(result, tuple) else type(result).__name__
            raise _ContractError(
                f"step() must return (obs, reward, terminated, truncated, info), got {count}"
            )
        obs, reward, terminated, truncated, _ = result
        trace.append((obs, reward, terminated, truncated))
        if terminated or truncated:
            break
    return trace


def _check_gym_env(env_cls: Any, kwargs: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    try:
        env = env_cls(**kwargs)
    except Exception as e:
        return [f"constructing {env_cls.__name__}(**{kwargs}) failed: {_first_line(e)}"]
    try:
        problems = _gym_env_problems(env)
        if not problems:
            from gymnasium.utils.env_checker import check_env

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    check_env(env, skip_render_check=True)
                except Exception as e:
                    problems.append(f"gymnasium check_env: {_first_line(e)}")
    finally:
        try:
            env.close()
        except Exception as e:
            problems.append(f"close() raised {_first_line(e)}")
    return problems


def _gym_env_problems(env: gym.Env) -> list[str]:
    problems: list[str] = []
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
    try:
        tasks, again = list(tasks), list(again)
    except TypeError:
        return [f"sample_tasks(4, rng) returned a {type(tasks).__name__}, not a sequence"]
    if len(tasks) != 4:
        return [f"sample_tasks(4, rng) returned {len(tasks)} tasks"]
    problems += _task_problems(tasks, again)
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Discrete | gym.spaces.Box):
        problems.append(f"action space {act_space} is not supported (Discrete or Box)")
    if not isinstance(obs_space, gym.spaces.Box):
        problems.append(f"observation space {obs_space} is not supported (Box)")
    if problems and not isinstance(obs_space, gym.spaces.Box | gym.spaces.Discrete):
        return problems

    try:
        env.set_task(tasks[0])
        first = _gym_rollout(env, seed=0)
        second = _gym_rollout(env, seed=0)  # same task, no set_task in between
    except _ContractError as e:
        return [*problems, str(e)]
    except Exception as e:
        return [*problems, f"reset/step with a task raised {_first_line(e)}"]
    if isinstance(obs_space, gym.spaces.Box):
        for i, (obs, *_) in enumerate(first):
            message = _check_obs(obs, obs_space, "reset()" if i == 0 else "step()")
            if message:
                problems.append(message)
                break
    for _, reward, *_ in first[1:]:
        try:
            value = float(reward)
        except (TypeError, ValueError):
            problems.append(f"step() returned reward {reward!r}, not a number")
            break
        if not np.isfinite(value):
            problems.append(f"step() returned a non-finite reward ({value})")
            break
    seeded = _same(first, second)
    if not seeded:
        problems.append(
            "reset ignores the seed: two reset(seed=0) rollouts of the same task differ "
            "(draw all randomness from self.np_random after super().reset(seed=seed))"
        )
    try:
        env.set_task(tasks[1])
        _gym_rollout(env, seed=1)
        env.set_task(tasks[0])
        third = _gym_rollout(env, seed=0)
    except Exception as e:
        problems.append(f"set_task raised {_first_line(e)}")
        return problems
    if seeded and not _same(first, third):
        problems.append(
            "set_task is not deterministic: set_task(task) then reset(seed=0) gave a different "
            "rollout the second time (set_task must not draw randomness or keep old state)"
        )
    return problems


def _batched_actions(space: gym.spaces.Space, n: int, gen: torch.Generator) -> torch.Tensor:
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(0, int(space.n), (n,), generator=gen)
    low = torch.as_tensor(space.low, dtype=torch.float32)
    high = torch.as_tensor(space.high, dtype=torch.float32)
    u = torch.rand((n, *space.shape), generator=gen)
    if torch.isfinite(low).all() and torch.isfinite(high).all():
        return low + u * (high - low)
    return u * 2 - 1


def _batched_rollout(env: Any, tasks: Any, seed: int, steps: int = 8) -> list[tuple]:
    env.set_tasks(tasks)
    obs = env.reset(seed=seed)
    trace = [(obs.clone(), None, None, None)]
    gen = torch.Generator().manual_seed(123)
    for _ in range(steps):
        out = env.step(_batched_actions(env.single_action_space, env.num_envs, gen))
        trace.append((out.obs.clone(), out.reward.clone(), out.terminated, out.truncated))
        done = out.terminated | out.truncated
        if done.any():
            obs = env.reset(mask=done)
            trace.append((obs.clone(), None, None, None))
    return trace


def _check_batched(dist_cls: Any, kwargs: dict[str, Any]) -> list[str]:
    try:
        dist = dist_cls(**kwargs)
    except Exception as e:
        return [f"constructing {dist_cls.__name__}(**{kwargs}) failed: {_first_line(e)}"]
    problems: list[str] = []
    n = 8
    try:
        tasks = dist.sample_tasks(n, np.random.default_rng(0))
        again = dist.sample_tasks(n, np.random.default_rng(0))
        other = dist.sample_tasks(n, np.random.default_rng(1))
    except Exception as e:
        return [f"sample_tasks({n}, rng) raised {_first_line(e)}"]
    if len(tasks) != n:
        return [f"sample_tasks({n}, rng) returned {len(tasks)} tasks"]
    problems += _task_problems(tasks, again)
    try:
        env = dist.make_batched_env(n, "cpu")
        first = _batched_rollout(env, tasks, seed=0)
        second = _batched_rollout(env, tasks, seed=0)
        _batched_rollout(env, other, seed=1)
        third = _batched_rollout(env, tasks, seed=0)
    except Exception as e:
        return [*problems, f"batched env failed: {_first_line(e)}"]
    space = env.single_observation_space
    expected = (n, *space.shape)
    for i, (obs, reward, *_) in enumerate(first):
        where = "reset()" if reward is None else "step()"
        if tuple(obs.shape) != expected:
            problems.append(
                f"batched {where} observations have shape {tuple(obs.shape)}, "
                f"expected {expected} (num_envs, *observation_space.shape)"
            )
            break
        if not obs.is_floating_point():
            problems.append(
                f"batched {where} observations have dtype {obs.dtype}, "
                "expected a floating-point tensor"
            )
            break
        if isinstance(space, gym.spaces.Box):
            message = _outside_bounds(obs.detach().cpu().numpy(), space, f"batched {where}")
            if message:
                problems.append(message)
                break
        if reward is not None and (reward.shape != (n,) or not torch.isfinite(reward).all()):
            problems.append(
                f"step() returned a non-finite reward (step {i})"
                if reward.shape == (n,)
                else f"step() returned rewards of shape {tuple(reward.shape)}, expected ({n},)"
            )
            break
    seeded = _same(first, second)
    if not seeded:
        problems.append(
            "reset ignores the seed: two reset(seed=0) rollouts of the same tasks differ "
            "(draw all randomness from a generator seeded in reset)"
        )
    elif not _same(first, third):
        problems.append(
            "set_tasks is not deterministic: the same tasks and reset(seed=0) gave a different "
            "rollout after other tasks were set"
        )
    try:
        env.close()
    except Exception as e:
        problems.append(f"close() raised {_first_line(e)}")
    view_cls = getattr(dist, "gym_env_cls", None)
    if view_cls is not None and not problems:
        problems += _check_gym_env(view_cls, kwargs)
    return problems


def check_task_env(env_cls: Any, kwargs: dict[str, Any] | None = None) -> list[str]:
    """Validates a task distribution; returns one line per problem (empty: OK).

    Checks, for a gymnasium task env: ``sample_tasks``/``set_task`` exist; tasks are
    deterministic for a seeded rng and picklable (the process and Ray samplers ship them
    to workers); Discrete/Box spaces; every observation from ``reset``/``step`` has the
    observation space's exact shape and dtype; rewards are finite numbers;
    ``reset(seed=s)`` reproduces the rollout; ``set_task`` is deterministic; then
    gymnasium's own ``check_env``. Batched distributions get the same checks on
    ``make_batched_env`` (shapes ``[num_envs, ...]``, float observations).

    Args:
        env_cls: The task-distribution class (batched) or ``gymnasium.Env`` subclass.
        kwargs: Constructor keyword arguments (the ``env.*`` options).

    Returns:
        Problems, one precise line each, most basic first.
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
