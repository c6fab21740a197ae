"""An RL meta-learning problem: a task distribution, a trial length and a way to collect.

:class:`RLProblem` hides which backend runs the env. A *batched* distribution (it has
``make_batched_env``) steps all rows in torch; any other task env, a ``gymnasium.Env``
with ``sample_tasks`` and ``set_task`` (MuJoCo envs, users' envs), runs through
:class:`~metarl.vector.GymVectorTaskEnv`. Learners only call :meth:`RLProblem.collect`.

Gymnasium task envs are collected by a :mod:`metarl.samplers` backend: ``local`` (in this
process), ``process`` (worker processes) or ``ray`` (Ray actors), sharded over ``workers``;
see that module for the sharding, determinism and fault-handling rules. Batched
distributions always step locally, in one torch op per step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import torch

from metarl.baselines import RandomPolicy
from metarl.batch import TrajectoryBatch
from metarl.collect import Collector
from metarl.policy import Policy
from metarl.samplers import Sampler, TaskVectorEnv, make_sampler
from metarl.tasks import sample_test_tasks, sample_train_tasks
from metarl.vector import BatchedTaskEnv


class RLProblem:
    """A task distribution plus trial settings, able to collect trials for any policy.

    Args:
        distribution: A batched distribution, or an instance of a gymnasium task env.
        episodes: Episodes per trial (``trial.episodes``).
        device: Where batches live.
        max_episode_steps: Optional per-episode time limit below the env's own.
        env_factory: For gymnasium task envs, builds a fresh env (one per vector slot).
        max_width: Largest number of rows stepped at once; larger task sets are split.
        asynchronous: With the ``local`` sampler, step gymnasium envs in one process per
            env (``AsyncVectorEnv``).
        sampler: Where gymnasium task envs run: ``local``, ``process`` or ``ray``
            (ignored for batched distributions, which always run locally).
        workers: Shards per collection, and worker processes or actors for ``process``
            and ``ray``. ``local`` with ``workers > 1`` shards in this process, giving the
            same batches as the other backends with the same ``workers``.
        ray_address: Ray cluster address for ``sampler="ray"`` (None: start or join a
            local cluster).
        worker_timeout: Seconds a worker may take for one shard before it is replaced.
    """

    def __init__(
        self,
        distribution: Any,
        episodes: int,
        device: torch.device | str = "cpu",
        max_episode_steps: int | None = None,
        env_factory: Callable[[], gym.Env] | None = None,
        max_width: int | None = None,
        asynchronous: bool = False,
        sampler: str = "local",
        workers: int = 1,
        ray_address: str | None = None,
        worker_timeout: float = 300.0,
    ):
        self.distribution = distribution
        self.episodes = int(episodes)
        self.device = torch.device(device)
        self.batched = hasattr(distribution, "make_batched_env")
        self.env_factory = env_factory
        self.asynchronous = asynchronous
        if not self.batched and env_factory is None:
            raise ValueError("a gymnasium task env needs env_factory")
        self.max_width = max_width or (1 << 16 if self.batched else 64)
        self._envs: dict[int, BatchedTaskEnv] = {}
        probe = self._env(1)
        self.observation_space = probe.single_observation_space
        self.action_space = probe.single_action_space
        self.env_max_episode_steps = probe.max_episode_steps
        self.max_episode_steps = min(
            max_episode_steps or probe.max_episode_steps, probe.max_episode_steps
        )
        self.sampler: Sampler | None = None
        if not self.batched:
            self.sampler = make_sampler(
                sampler,
                env_factory=env_factory,
                env_for_width=self._env,
                env_max_episode_steps=self._gym_env_steps(),
                max_episode_steps=self.max_episode_steps,
                max_width=self.max_width,
                workers=workers,
                ray_address=ray_address,
                worker_timeout=worker_timeout,
                device=self.device,
            )

    @property
    def max_trial_steps(self) -> int:
        """Upper bound on a trial's length in steps (``T`` of a batch)."""
        return self.episodes * self.max_episode_steps

    def _env(self, width: int) -> BatchedTaskEnv:
        if width not in self._envs:
            if self.batched:
                env = self.distribution.make_batched_env(width, self.device)
            else:
                env = TaskVectorEnv(
                    self.env_factory, width, self._gym_env_steps(), self.device, self.asynchronous
                )
            self._envs[width] = env
        return self._envs[width]

    def _gym_env_steps(self) -> int:
        """A gymnasium task env's own time limit."""
        steps = int(getattr(self.distribution, "max_episode_steps", 0) or 0)
        return steps or _spec_steps(self.distribution)

    def sample_train_tasks(self, n: int, seed: int, iteration: int) -> Sequence[Any]:
        return sample_train_tasks(self.distribution, n, seed, iteration)

    def sample_test_tasks(self, n: int, seed: int) -> Sequence[Any]:
        return sample_test_tasks(self.distribution, n, seed)

    def collect(
        self,
        policy: Policy,
        tasks: Sequence[Any],
        generator: torch.Generator,
        episodes: int | None = None,
    ) -> TrajectoryBatch:
        """One trial per task, rows in task order.

        Batched distributions step in chunks of at most ``max_width`` rows here; gymnasium
        task envs go through the sampler (:mod:`metarl.samplers`).
        """
        episodes = self.episodes if episodes is None else episodes
        if self.sampler is not None:
            return self.sampler.collect(policy, tasks, generator, episodes)
        n = len(tasks)
        chunks = []
        for start in range(0, n, self.max_width):
            part = tasks[start : start + self.max_width]
            env = self._env(len(part))
            collector = Collector(env, self.max_episode_steps)
            chunks.append(collector.collect(policy, part, episodes, generator))
        return chunks[0] if len(chunks) == 1 else TrajectoryBatch.cat(chunks)

    def baselines(self) -> dict[str, Callable[[], Policy]]:
        """Policies evaluated next to the learner: ``random`` and the env's own."""
        out: dict[str, Callable[[], Policy]] = {"random": lambda: RandomPolicy(self.action_space)}
        if hasattr(self.distribution, "baselines"):
            takes_episodes = "episodes" in inspect.signature(self.distribution.baselines).parameters
            out.update(
                self.distribution.baselines(self.episodes)
                if takes_episodes
                else self.distribution.baselines()
            )
        return out

    def close(self) -> None:
        """Stops sampler workers and closes the envs."""
        if self.sampler is not None:
            self.sampler.close()
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def _spec_steps(env: gym.Env) -> int:
    spec = getattr(env, "spec", None)
    if spec is not None and spec.max_episode_steps:
        return int(spec.max_episode_steps)
    return 1000
