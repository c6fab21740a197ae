"""Where gymnasium task envs run: in this process, in worker processes, or on Ray actors.

:class:`~metarl.problem.RLProblem` hands the collection of a gymnasium task env (MuJoCo,
users' envs) to a :class:`Sampler`; tensor (batched) envs never get here, they always run
locally and batched. ``train.sampler`` picks the backend:

* ``local`` (:class:`LocalSampler`): the envs run in this process, as they always did.
* ``process`` (:class:`ProcessSampler`): ``train.workers`` long-lived worker processes
  on this machine, each owning its own vector env.
* ``ray`` (:class:`RaySampler`): ``train.workers`` Ray actors, each owning its own vector
  env, on the cluster at ``train.ray_address`` (or a local cluster started on demand).

Sharding. A call to :meth:`Sampler.collect` splits its ``n`` tasks into
``min(workers, n)`` contiguous shards whose sizes differ by at most one (the first
``n % shards`` shards get the extra task). Shard ``k`` runs on worker ``k``, which steps
its own :class:`TaskVectorEnv` through the ordinary :class:`~metarl.collect.Collector`
(in chunks of at most ``max_width`` rows, as locally) with its own copy of the policy.
The shards come back as :class:`~metarl.batch.TrajectoryBatch` objects and are
concatenated in task order (shorter shards padded in time, ``valid == False``).

Policies travel as a ``torch.save`` snapshot taken at the start of each shard (tensors
mapped to the CPU in the worker; workers act on the CPU, batches are moved to the
problem's device). The collector calls ``set_tasks``/``initial_state`` once per chunk in
row order; before snapshotting shard ``k + 1`` the sampler replays those calls for shard
``k`` on the caller's policy, so a policy with per-row bookkeeping (MAML's
``FastWeightPolicy`` counts rows to find each row's task) sees in every worker exactly the
state it would have had locally, and ends in the state a local collection leaves it in.
Any other mutation a policy makes to itself while acting stays in the worker.

Determinism. With one shard (``workers == 1``, or a single task) the shard uses the
caller's generator itself: locally directly, remotely by shipping its state and setting
the advanced state back, so every backend reproduces today's local batches and leaves the
generator exactly where a local collection would. With ``s > 1`` shards, one seed ``r`` is
drawn from the caller's generator (``torch.randint(0, 2**62)``, the only draw it sees), and
shard ``k`` uses a fresh CPU generator seeded from ``SeedSequence([r, SHARD_STREAM, k])``;
the ``local`` backend shards the same way when ``workers > 1``. A shard's batch is
therefore a function of (its tasks, the policy, ``r``, ``k``) only, not of which process
ran it, in which order, or how often it was retried, and ``local``, ``process`` and ``ray``
give bit-identical batches for the same seed and the same ``workers`` (on CPU; a CUDA
caller generator is never shipped, so it always takes the derived-seed path remotely).
Different ``workers`` values give different (equally valid) batches. This assumes the
env's ``reset(seed=...)`` fully determines its randomness (gymnasium's contract) and that
the policy's CPU kernels give the same results in the worker (one torch thread) as in the
caller.

Fault handling (``process`` and ``ray``). Every wait has a deadline: a worker must start
within ``start_timeout`` (default ``max(120 s, worker_timeout)``) and deliver its shard
within ``worker_timeout`` of receiving it. A worker that dies (its process exits, the
actor is killed or its node is lost) or misses its deadline is killed, replaced by a new
one, and its shard is re-run from the same snapshot, seed and tasks, so the retried
shard is identical and no trajectory is lost or duplicated; after ``max_retries``
replacements for one shard in one call the call fails with a :class:`SamplerError`
naming the shard's tasks. An exception raised by the env inside a worker is not retried:
it comes back at once as a :class:`TaskEnvError` naming the env class, the method
(``step``, ``reset`` or ``set_task``) and the task; a NaN/inf reward comes back as the
collector's :class:`~metarl.learner.NonFiniteError`, as locally. When a call fails, the
workers still busy with it are killed (and lazily replaced by the next call), so no stale
result can leak into a later iteration.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import importlib.util
import io
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from metarl.batch import TrajectoryBatch
from metarl.collect import Collector
from metarl.learner import NonFiniteError
from metarl.policy import Policy
from metarl.tasks import TaskBatch
from metarl.vector import BatchedTaskEnv, GymVectorTaskEnv

logger = logging.getLogger("metarl.samplers")

#: Mixed into the per-shard seeds, apart from the runner's train (0) and eval (1) streams.
SHARD_STREAM = 2
#: Replacements of one shard's worker within one ``collect`` call before giving up.
MAX_RETRIES = 3
SAMPLERS = ("local", "process", "ray")

__all__ = [
    "MAX_RETRIES",
    "SAMPLERS",
    "SHARD_STREAM",
    "FileEnvFactory",
    "LocalSampler",
    "ProcessSampler",
    "RaySampler",
    "Sampler",
    "SamplerError",
    "ShardJob",
    "ShardWorker",
    "TaskEnvError",
    "TaskVectorEnv",
    "collect_chunks",
    "make_sampler",
    "shard_bounds",
    "shard_seed",
]


# ---------------------------------------------------------------------------- errors
class SamplerError(RuntimeError):
    """Collection through a sampler failed; the message's first line is for the user."""


class TaskEnvError(SamplerError):
    """A gymnasium task env raised; the message names the env, the method and the task.

    Attributes:
        env_name: Class name of the env that raised.
        task_repr: ``repr`` of its task (shortened).
    """

    def __init__(self, message: str, env_name: str | None = None, task_repr: str | None = None):
        super().__init__(message)
        self.env_name = env_name
        self.task_repr = task_repr

    def __reduce__(self):
        # Rebuilt from strings only: the original task or cause may not unpickle elsewhere
        # (gymnasium's AsyncVectorEnv pickles sub-env exceptions back to the parent).
        return (type(self), (str(self), self.env_name, self.task_repr))

    @classmethod
    def from_env(cls, env_name: str, method: str, task: Any, cause: BaseException) -> TaskEnvError:
        task_repr = _short_repr(task)
        return cls(
            f"env {env_name} raised {type(cause).__name__}: {_first_line(cause)} "
            f"in {method}() on task {task_repr}",
            env_name,
            task_repr,
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _ray_reason(e: BaseException) -> str:
    """One line for a Ray error: its first line plus the underlying exception, if any."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(e).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return type(e).__name__
    cause = next(
        (line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)), ""
    )
    return lines[0] if not cause or cause == lines[0] else f"{lines[0]} ... {cause}"


def _short_repr(x: Any, limit: int = 160) -> str:
    try:
        text = " ".join(repr(x).split())
    except Exception:
        text = f"<{type(x).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------- envs
class _BlameEnv(gym.Wrapper):
    """Re-raises any exception of ``reset``/``step`` as a :class:`TaskEnvError`.

    ``SyncVectorEnv`` lets a sub-env's exception through without saying which sub-env
    raised; this wrapper adds the env's name and its current task, the two things a user
    needs to reproduce the failure.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.env_name = type(env.unwrapped).__name__
        self.blame_task: Any = None

    def _task(self) -> Any:
        if self.blame_task is not None:
            return self.blame_task
        return getattr(self.env.unwrapped, "task", "<unknown>")

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        try:
            return self.env.reset(seed=seed, options=options)
        except Exception as e:
            raise TaskEnvError.from_env(self.env_name, "reset", self._task(), e) from e

    def step(self, action):
        try:
            return self.env.step(action)
        except Exception as e:
            raise TaskEnvError.from_env(self.env_name, "step", self._task(), e) from e


def _blamed(make_env: Callable[[], gym.Env]) -> gym.Env:
    return _BlameEnv(make_env())


class TaskVectorEnv(GymVectorTaskEnv):
    """:class:`~metarl.vector.GymVectorTaskEnv` whose env errors name the env and task.

    Args:
        make_env: Builds one env; it must implement ``set_task(task)``.
        num_envs: Width of the vector env.
        max_episode_steps: The env's own time limit.
        device: Where observation tensors are put.
        asynchronous: Use ``AsyncVectorEnv`` (one process per env).
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        num_envs: int,
        max_episode_steps: int,
        device: torch.device | str = "cpu",
        asynchronous: bool = False,
    ):
        # A module-level function in a partial, not a closure: AsyncVectorEnv pickles it.
        super().__init__(
            functools.partial(_blamed, make_env), num_envs, max_episode_steps, device, asynchronous
        )

    def set_tasks(self, tasks: Sequence[Any]) -> None:
        envs = getattr(self.vec, "envs", None)
        if envs is None:  # AsyncVectorEnv: the sub-envs live in other processes
            super().set_tasks(tasks)
            return
        if isinstance(tasks, TaskBatch):
            tasks = tasks.unbind()
        if len(tasks) != self.num_envs:
            raise ValueError(f"got {len(tasks)} tasks for {self.num_envs} envs")
        for sub, task in zip(envs, tasks):
            # sub is vector.py's task setter around our _BlameEnv around the user's env.
            blame = getattr(sub, "env", None)
            name = getattr(blame, "env_name", type(sub.unwrapped).__name__)
            try:
                sub.metarl_task = task
            except Exception as e:
                raise TaskEnvError.from_env(name, "set_task", task, e) from e
            if isinstance(blame, _BlameEnv):
                blame.blame_task = task


@dataclasses.dataclass(frozen=True)
class FileEnvFactory:
    """Builds an env class loaded from a ``.py`` file, by path (picklable to workers).

    ``metarl train ALGO path/to/env.py:Class`` loads the file under a private module name
    that other processes do not know, so pickling the class itself would fail there.
    This factory ships the absolute path instead and loads the file in the worker.

    Attributes:
        path: Absolute path of the file.
        attr: Name of the env class in it.
        kwargs: Constructor keyword arguments.
    """

    path: str
    attr: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self) -> gym.Env:
        from metarl.registry import load_target

        return load_target(f"{self.path}:{self.attr}")(**self.kwargs)


# ---------------------------------------------------------------------------- sharding
def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` row ranges of ``min(shards, n)`` near-equal shards."""
    if n < 1:
        raise ValueError("collect needs at least one task")
    s = max(1, min(int(shards), n))
    base, extra = divmod(n, s)
    bounds, start = [], 0
    for k in range(s):
        stop = start + base + (1 if k < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def shard_seed(base: int, k: int) -> int:
    """Seed of shard ``k``'s generator, from the one draw ``base`` of the caller's."""
    state = np.random.SeedSequence([int(base), SHARD_STREAM, int(k)]).generate_state(1, np.uint64)
    return int(state[0] >> 1)


def _draw_base_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def collect_chunks(
    env_for_width: Callable[[int], BatchedTaskEnv],
    policy: Policy,
    tasks: Any,
    episodes: int,
    max_episode_steps: int,
    max_width: int,
    generator: torch.Generator,
) -> TrajectoryBatch:
    """One trial per task, in chunks of at most ``max_width`` rows (one env per width)."""
    chunks = []
    for start in range(0, len(tasks), max_width):
        part = tasks[start : start + max_width]
        collector = Collector(env_for_width(len(part)), max_episode_steps)
        chunks.append(collector.collect(policy, part, episodes, generator))
    return chunks[0] if len(chunks) == 1 else TrajectoryBatch.cat(chunks)


# ---------------------------------------------------------------------------- samplers
class Sampler(abc.ABC):
    """Collects one trial per task of a gymnasium task env; see the module docstring.

    Args:
        env_factory: Builds one env (picklable for ``process`` and ``ray``).
        env_max_episode_steps: The env's own time limit.
        max_episode_steps: The trial's per-episode time limit (at most the env's).
        max_width: Largest number of rows one vector env steps at once.
        workers: Number of shards (and of worker processes or actors).
    """

    name = "sampler"

    def __init__(
        self,
        env_factory: Callable[[], gym.Env],
        env_max_episode_steps: int,
        max_episode_steps: int,
        max_width: int,
        workers: int = 1,
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.env_factory = env_factory
        self.env_max_episode_steps = int(env_max_episode_steps)
        self.max_episode_steps = int(max_episode_steps)
        self.max_width = int(max_width)
        self.workers = int(workers)
        #: Workers replaced so far (died or timed out), for monitoring.
        self.restarts = 0
        #: Of the last call: wall-clock seconds and, for remote samplers, each shard's
        #: wall-clock and CPU seconds inside its worker (policy unpickling + collection).
        self.last_timing: dict[str, Any] = {}

    @abc.abstractmethod
    def collect(
        self, policy: Policy, tasks: Any, generator: torch.Generator, episodes: int
    ) -> TrajectoryBatch:
        """One trial of ``episodes`` episodes per task, rows in task order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stops the workers (a closed sampler restarts them on the next ``collect``)."""


class LocalSampler(Sampler):
    """Runs the envs in this process; shards sequentially when ``workers > 1``.

    Args:
        env_for_width: Returns the (cached) vector env of a given width.
        max_episode_steps: The trial's per-episode time limit.
        max_width: Largest number of rows stepped at once.
        workers: Number of shards, for batches identical to ``process``/``ray`` ones.
    """

    name = "local"

    def __init__(
        self,
        env_for_width: Callable[[int], BatchedTaskEnv],
        max_episode_steps: int,
        max_width: int,
        workers: int = 1,
    ):
        super().__init__(None, max_episode_steps, max_episode_steps, max_width, workers)  # type: ignore[arg-type]
        self.env_for_width = env_for_width

    def collect(
        self, policy: Policy, tasks: Any, generator: torch.Generator, episodes: int
    ) -> TrajectoryBatch:
        t0 = time.perf_counter()
        bounds = shard_bounds(len(tasks), self.workers)
        if len(bounds) == 1:
            batch = self._run(policy, tasks, generator, episodes)
        else:
            base = _draw_base_seed(generator)
            shards = []
            for k, (a, b) in enumerate(bounds):
                shard_gen = torch.Generator(device=generator.device)
                shard_gen.manual_seed(shard_seed(base, k))
                shards.append(self._run(policy, tasks[a:b], shard_gen, episodes))
            batch = TrajectoryBatch.cat(shards)
        self.last_timing = {"wall_s": time.perf_counter() - t0}
        return batch

    def _run(self, policy, tasks, generator, episodes) -> TrajectoryBatch:
        return collect_chunks(
            self.env_for_width,
            policy,
            tasks,
            episodes,
            self.max_episode_steps,
            self.max_width,
            generator,
        )


@dataclasses.dataclass
class ShardJob:
    """One shard's work, as shipped to a worker (the policy snapshot travels beside it).

    Attributes:
        index: The shard's position ``k``.
        tasks: The shard's tasks, in row order.
        episodes: Episodes per trial.
        max_episode_steps: Per-episode time limit.
        max_width: Largest number of rows stepped at once.
        generator: A seed (derived-seed path) or a CPU generator state (single shard).
    """

    index: int
    tasks: Any
    episodes: int
    max_episode_steps: int
    max_width: int
    generator: int | torch.Tensor


def _dumps_policy(policy: Policy, backend: str) -> bytes:
    buf = io.BytesIO()
    try:
        torch.save(policy, buf)
    except Exception as e:
        raise SamplerError(
            f"sampler={backend} ships the policy to its workers, but {type(policy).__name__} "
            f"does not pickle: {type(e).__name__}: {_first_line(e)}"
        ) from e
    return buf.getvalue()


def _loads_policy(blob: bytes) -> Policy:
    # The snapshot is our own, made by the driver of this run from its own policy object.
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)


class ShardWorker:
    """Collects shards in a worker: owns one :class:`TaskVectorEnv` per width.

    The process backend runs it in its worker processes; the Ray backend makes it an actor.

    Args:
        env_factory: Builds one env.
        env_max_episode_steps: The env's own time limit.
        threads: torch intra-op threads in this worker (1: workers are the parallelism).
    """

    def __init__(
        self, env_factory: Callable[[], gym.Env], env_max_episode_steps: int, threads: int = 1
    ):
        torch.set_num_threads(max(1, int(threads)))
        self.env_factory = env_factory
        self.env_max_episode_steps = int(env_max_episode_steps)
        self._envs: dict[int, TaskVectorEnv] = {}

    def ready(self) -> int:
        """The worker's pid (a cheap call that returns once the worker is up)."""
        return os.getpid()

    def _env(self, width: int) -> TaskVectorEnv:
        if width not in self._envs:
            self._envs[width] = TaskVectorEnv(self.env_factory, width, self.env_max_episode_steps)
        return self._envs[width]

    def run(self, job: ShardJob, policy_blob: bytes) -> tuple:
        """Collects ``job``; never raises.

        Returns:
            ``("ok", batch, generator_state | None, seconds, cpu_seconds)``,
            ``("env", message)`` for an env error, ``("nonfinite", name, value)`` for a
            NaN/inf reward, or ``("error", message, traceback)`` for anything else.
        """
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            policy = _loads_policy(policy_blob)
            generator = torch.Generator()
            if isinstance(job.generator, int):
                generator.manual_seed(job.generator)
            else:
                generator.set_state(job.generator)
            batch = collect_chunks(
                self._env,
                policy,
                job.tasks,
                job.episodes,
                job.max_episode_steps,
                job.max_width,
                generator,
            )
            state = None if isinstance(job.generator, int) else generator.get_state()
            return ("ok", batch, state, time.perf_counter() - t0, time.process_time() - c0)
        except TaskEnvError as e:
            return ("env", str(e))
        except NonFiniteError as e:
            return ("nonfinite", e.name, e.value)
        except Exception as e:
            return ("error", f"{type(e).__name__}: {_first_line(e)}", traceback.format_exc())

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


class _RemoteSampler(Sampler):
    """Shards, snapshots, retries and error mapping shared by ``process`` and ``ray``.

    Subclasses manage worker slots: start them, send a job to slot ``k``, wait for
    events, and replace a slot's worker.
    """

    def __init__(
        self,
        env_factory: Callable[[], gym.Env],
        env_max_episode_steps: int,
        max_episode_steps: int,
        max_width: int,
        workers: int = 1,
        worker_timeout: float = 300.0,
        start_timeout: float | None = None,
        max_retries: int = MAX_RETRIES,
        threads: int = 1,
        device: torch.device | str = "cpu",
    ):
        super().__init__(env_factory, env_max_episode_steps, max_episode_steps, max_width, workers)
        self.device = torch.device(device)
        if worker_timeout <= 0:
            raise ValueError(f"worker_timeout must be > 0, got {worker_timeout}")
        self.worker_timeout = float(worker_timeout)
        self.start_timeout = float(start_timeout or max(120.0, self.worker_timeout))
        self.max_retries = int(max_retries)
        self.threads = int(threads)

    # -------------------------------------------------------------- backend hooks
    @abc.abstractmethod
    def _start(self) -> None:
        """Starts every slot that has no live worker and waits until all are up."""

    def _put(self, blobs: list[tuple[int, bytes]]) -> list[Any]:
        """Per shard, what ``_send`` ships as the policy snapshot (default: the bytes)."""
        return [blob for _, blob in blobs]

    @abc.abstractmethod
    def _send(self, k: int, job: ShardJob, snapshot: Any) -> None:
        """Hands ``job`` and its policy ``snapshot`` to slot ``k``."""

    @abc.abstractmethod
    def _wait(self, pending: set[int], timeout: float) -> list[tuple[int, str, Any]]:
        """Events of pending slots within ``timeout`` s: (k, "reply"|"died", payload)."""

    @abc.abstractmethod
    def _replace(self, k: int) -> None:
        """Kills slot ``k``'s worker and starts a fresh one (waiting until it is up)."""

    @abc.abstractmethod
    def _discard(self, k: int) -> None:
        """Kills slot ``k``'s worker; the next ``_start`` replaces it."""

    def _describe(self, k: int) -> str:
        return f"worker {k}"

    # -------------------------------------------------------------- collection
    def collect(
        self, policy: Policy, tasks: Any, generator: torch.Generator, episodes: int
    ) -> TrajectoryBatch:
        t0 = time.perf_counter()
        bounds = shard_bounds(len(tasks), self.workers)
        ship_state = len(bounds) == 1 and generator.device.type == "cpu"
        if ship_state:
            gens: list[int | torch.Tensor] = [generator.get_state()]
        else:
            base = _draw_base_seed(generator)
            gens = [shard_seed(base, k) for k in range(len(bounds))]
        jobs = [
            ShardJob(k, tasks[a:b], episodes, self.max_episode_steps, self.max_width, gens[k])
            for k, (a, b) in enumerate(bounds)
        ]
        blobs = self._snapshots(policy, tasks, bounds)
        replies = self._run_jobs(jobs, blobs)
        if ship_state:
            generator.set_state(replies[0][2])
        batches = [reply[1] for reply in replies]
        for job, batch in zip(jobs, batches):
            if batch.num_trials != len(job.tasks):  # never hand back a partial batch
                raise SamplerError(
                    f"{self.name} shard {job.index} returned {batch.num_trials} trials "
                    f"for {len(job.tasks)} tasks"
                )
        batch = batches[0] if len(batches) == 1 else TrajectoryBatch.cat(batches)
        batch = batch if self.device.type == "cpu" else batch.to(self.device)
        self.last_timing = {
            "wall_s": time.perf_counter() - t0,
            "shard_s": [reply[3] for reply in replies],
            "shard_cpu_s": [reply[4] for reply in replies],
        }
        return batch

    def _snapshots(self, policy: Policy, tasks: Any, bounds) -> list[tuple[int, bytes]]:
        """One policy snapshot per shard, as (key, bytes); equal snapshots share a key."""
        out: list[tuple[int, bytes]] = []
        for k, (a, b) in enumerate(bounds):
            blob = _dumps_policy(policy, self.name)
            # Any policy without per-row bookkeeping gives equal snapshots: ship it once.
            key = out[-1][0] if out and out[-1][1] == blob else k
            out.append((key, blob))
            # Replay what the collector calls locally for this shard's rows (see the module
            # docstring): the next snapshot, and the caller's policy at the end, are then
            # in the state a local collection would have left them in.
            for start in range(a, b, self.max_width):
                part = tasks[start : min(start + self.max_width, b)]
                if hasattr(policy, "set_tasks"):
                    policy.set_tasks(part)
                policy.initial_state(len(part), self.device)
        return out

    def _run_jobs(self, jobs: list[ShardJob], blobs: list[tuple[int, bytes]]) -> list[tuple]:
        self._start()
        snapshots = self._put(blobs)
        replies: list[tuple | None] = [None] * len(jobs)
        attempts = [0] * len(jobs)
        deadlines = [0.0] * len(jobs)
        pending: set[int] = set()

        def dispatch(k: int) -> None:
            self._send(k, jobs[k], snapshots[k])
            deadlines[k] = time.monotonic() + self.worker_timeout
            pending.add(k)

        try:
            for k in range(len(jobs)):
                dispatch(k)
            while pending:
                timeout = max(0.0, min(deadlines[k] for k in pending) - time.monotonic())
                events = self._wait(pending, timeout)
                seen = {k for k, _, _ in events}
                now = time.monotonic()
                events += [(k, "timeout", None) for k in pending - seen if now >= deadlines[k]]
                for k, kind, payload in events:
                    if kind == "reply":
                        pending.discard(k)
                        replies[k] = self._check_reply(k, jobs[k], payload)
                        continue
                    reason = (
                        f"sent no result within train.worker_timeout={self.worker_timeout:g}s"
                        if kind == "timeout"
                        else f"died ({payload})"
                    )
                    attempts[k] += 1
                    if attempts[k] > self.max_retries:
                        raise SamplerError(
                            f"{self.name} {self._describe(k)} {reason}; gave up on shard {k} "
                            f"({_tasks_summary(jobs[k].tasks)}) after {self.max_retries} "
                            "replacements"
                        )
                    logger.warning(
                        "metarl: %s sampler %s %s; replacing it and re-running its %d tasks",
                        self.name,
                        self._describe(k),
                        reason,
                        len(jobs[k].tasks),
                    )
                    pending.discard(k)
                    self.restarts += 1
                    self._replace(k)
                    dispatch(k)
        except BaseException:
            # Workers still busy with this call would later answer into the next one.
            for k in pending:
                self._discard(k)
            raise
        return replies  # type: ignore[return-value]

    def _check_reply(self, k: int, job: ShardJob, reply: tuple) -> tuple:
        kind = reply[0]
        if kind == "ok":
            return reply
        if kind == "env":
            raise TaskEnvError(f"{reply[1]} ({self.name} {self._describe(k)}, shard {k})")
        if kind == "nonfinite":
            raise NonFiniteError(reply[1], reply[2])
        error = SamplerError(f"{self.name} {self._describe(k)} failed on shard {k}: {reply[1]}")
        if len(reply) > 2 and reply[2]:
            error.add_note(f"worker traceback:\n{reply[2]}")
        raise error


def _tasks_summary(tasks: Any) -> str:
    n = len(tasks)
    first = _short_repr(tasks[0] if not isinstance(tasks, TaskBatch) else tasks[0:1], 80)
    return f"{n} task{'s' if n != 1 else ''}, first {first}"


# ---------------------------------------------------------------------------- process
def _process_main(conn, env_factory, env_max_episode_steps: int, threads: int) -> None:
    """A worker process: handshake, then run jobs until told to stop or orphaned."""
    # Ctrl-C reaches the whole process group; the driver decides, and then kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        worker = ShardWorker(env_factory, env_max_episode_steps, threads)
    except Exception as e:
        reply = ("error", f"{type(e).__name__}: {_first_line(e)}", traceback.format_exc())
        conn.send_bytes(pickle.dumps(reply))
        return
    conn.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):  # the driver is gone
            return
        item = pickle.loads(message)
        if item is None:
            worker.close()
            return
        job, blob = item
        reply = worker.run(job, blob)
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, OSError):
            return


class _Proc:
    """One worker process and the driver's end of its pipe."""

    def __init__(self, ctx, index: int, args: tuple):
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_process_main,
            args=(child, *args),
            name=f"metarl-sampler-{index}",
            daemon=True,  # never outlive the driver
        )
        self.process.start()
        child.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(2.0)

    def exit_reason(self) -> str:
        self.process.join(0.5)
        code = self.process.exitcode
        if code is None:
            return "closed its pipe"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


def _kill_all(procs: list) -> None:
    for p in procs:
        if p is not None:
            p.kill()


class ProcessSampler(_RemoteSampler):
    """``workers`` worker processes on this machine, each owning its own vector env.

    Each worker is a long-lived process (started by a fork server, or ``spawn`` where there
    is none, so it never inherits the driver's threads or CUDA state) that builds its envs
    once and then collects one shard per call; only the policy snapshot, the tasks and the
    trajectories cross the pipe, once per call, not once per step. See the module
    docstring for determinism and fault handling.

    Args:
        env_factory: Builds one env; pickled to the workers.
        env_max_episode_steps: The env's own time limit.
        max_episode_steps: The trial's per-episode time limit.
        max_width: Largest number of rows a worker steps at once.
        workers: Number of worker processes (and shards).
        worker_timeout: Seconds a worker may take for one shard.
        start_timeout: Seconds a worker may take to start (default ``max(120, timeout)``).
        max_retries: Replacements of one shard's worker per call before failing.
        threads: torch threads per worker.
        device: The problem's device (batches are moved there; replayed
            ``initial_state`` calls use it, as the local collector does).
        start_method: multiprocessing start method (default ``forkserver`` if the platform
            has it, else ``spawn``; not ``fork``, which copies the driver's threads).
    """

    name = "process"

    def __init__(self, *args: Any, start_method: str | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if start_method is None:
            start_method = (
                "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            )
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            # The fork server imports torch and metarl once; every worker (and every
            # replacement of a dead one) then starts in milliseconds instead of seconds.
            # __main__ too (the default), so env classes defined in a user's script unpickle.
            self._ctx.set_forkserver_preload(["__main__", "metarl.samplers"])
        self._procs: list[_Proc | None] = [None] * self.workers
        # Kill the workers when the sampler is garbage-collected (the runner never closes it).
        self._finalizer = weakref.finalize(self, _kill_all, self._procs)

    def _describe(self, k: int) -> str:
        proc = self._procs[k]
        pid = proc.process.pid if proc is not None else None
        return f"worker {k} (pid {pid})"

    def _spawn(self, k: int) -> _Proc:
        try:
            return _Proc(self._ctx, k, (self.env_factory, self.env_max_episode_steps, self.threads))
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise SamplerError(
                f"sampler=process ships the env factory to worker processes, but it does not "
                f"pickle: {type(e).__name__}: {_first_line(e)}"
            ) from e

    def _handshake(self, ks: list[int]) -> None:
        deadline = time.monotonic() + self.start_timeout
        waiting = set(ks)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(self._describe(k) for k in sorted(waiting))
                for k in waiting:
                    self._discard(k)
                raise SamplerError(
                    f"process sampler {names} did not start within {self.start_timeout:g}s"
                )
            objs = {}
            for k in waiting:
                proc = self._procs[k]
                objs[proc.conn] = k
                objs[proc.process.sentinel] = k
            for obj in multiprocessing.connection.wait(list(objs), left):
                k = objs[obj]
                if k not in waiting:
                    continue
                proc = self._procs[k]
                try:
                    reply = pickle.loads(proc.conn.recv_bytes())
                except (EOFError, OSError):
                    reply = ("died", proc.exit_reason())
                waiting.discard(k)
                if reply[0] != "ready":
                    self._discard(k)
                    detail = reply[1]
                    if reply[0] == "died":
                        detail += "; its traceback, if any, is above"
                    raise SamplerError(f"process sampler worker {k} failed to start: {detail}")

    def _start(self) -> None:
        new = []
        for k, proc in enumerate(self._procs):
            if proc is None or not proc.process.is_alive():
                if proc is not None:
                    logger.warning("metarl: process sampler worker %d had exited; restarting", k)
                    proc.kill()
                self._procs[k] = self._spawn(k)
                new.append(k)
        if new:
            self._handshake(new)

    def _send(self, k: int, job: ShardJob, snapshot: Any) -> None:
        proc = self._procs[k]
        # A worker dead before it got the job is reported by the next _wait (sentinel).
        with contextlib.suppress(OSError):
            proc.conn.send_bytes(pickle.dumps((job, snapshot), protocol=pickle.HIGHEST_PROTOCOL))

    def _wait(self, pending: set[int], timeout: float) -> list[tuple[int, str, Any]]:
        objs = {}
        for k in pending:
            proc = self._procs[k]
            objs[proc.conn] = k
            objs[proc.process.sentinel] = k
        ready = multiprocessing.connection.wait(list(objs), timeout)
        events: dict[int, tuple[int, str, Any]] = {}
        # Read replies first: a worker may have answered and then exited.
        for k in sorted(pending):
            proc = self._procs[k]
            if proc.conn in ready or proc.process.sentinel in ready:
                try:
                    if proc.conn.poll(0):
                        events[k] = (k, "reply", pickle.loads(proc.conn.recv_bytes()))
                        continue
                except (EOFError, OSError):  # EOF on the pipe: the process is gone
                    pass
                events[k] = (k, "died", proc.exit_reason())
        return list(events.values())

    def _replace(self, k: int) -> None:
        self._discard(k)
        self._procs[k] = self._spawn(k)
        self._handshake([k])

    def _discard(self, k: int) -> None:
        proc = self._procs[k]
        if proc is not None:
            proc.kill()
        self._procs[k] = None

    def close(self) -> None:
        for k, proc in enumerate(self._procs):
            if proc is None:
                continue
            try:
                proc.conn.send_bytes(pickle.dumps(None))
                proc.process.join(2.0)
            except (BrokenPipeError, OSError):
                pass
            proc.kill()
            self._procs[k] = None


# ---------------------------------------------------------------------------- ray
RAY_MISSING = (
    "train.sampler=ray needs Ray, which is not installed; install it with "
    "pip install 'metarl[ray]' (or pip install ray)"
)


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise SamplerError(RAY_MISSING) from None
    return ray


class RaySampler(_RemoteSampler):
    """``workers`` Ray actors, each owning its own vector env (a :class:`ShardWorker`).

    Connects to ``address`` (``train.ray_address``) or, if Ray is not initialised yet and
    no address is given, lets ``ray.init()`` start or join a local cluster (with Ray's usage
    statistics off unless ``RAY_USAGE_STATS_ENABLED`` says otherwise, and no dashboard).
    Each actor asks for one CPU, so that Ray spreads them over the cluster's cores; actors
    that do not fit stay pending and hit ``start_timeout``. Ray's own actor restarts are
    off: a dead actor is replaced here, where the lost shard is known and re-run.

    Args:
        address: Ray cluster address, or None.
        num_cpus: CPUs per actor.
        (others): See :class:`ProcessSampler`.
    """

    name = "ray"

    def __init__(self, *args: Any, address: str | None = None, num_cpus: float = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not ray_available():
            raise SamplerError(RAY_MISSING)
        self.address = address
        self.num_cpus = num_cpus
        self._actors: list[Any] = [None] * self.workers
        self._refs: dict[int, Any] = {}
        self._started_ray = False
        self._actor_cls = None

    def _ray(self):
        ray = _import_ray()
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs: dict[str, Any] = {"address": self.address} if self.address else {}
            if not self.address:
                kwargs["include_dashboard"] = False
            try:
                ray.init(**kwargs)
            except Exception as e:
                where = self.address or "a local cluster"
                raise SamplerError(
                    f"cannot start or join Ray at {where}: {type(e).__name__}: {_first_line(e)}"
                ) from e
            self._started_ray = True
        if self._actor_cls is None:
            self._actor_cls = ray.remote(num_cpus=self.num_cpus, max_restarts=0)(ShardWorker)
        return ray

    def _describe(self, k: int) -> str:
        return f"actor {k}"

    def _new_actor(self, k: int):
        return self._actor_cls.remote(self.env_factory, self.env_max_episode_steps, self.threads)

    def _wait_ready(self, ks: list[int]) -> None:
        ray = self._ray()
        refs = [self._actors[k].ready.remote() for k in ks]
        try:
            ray.get(refs, timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            for k in ks:
                self._discard(k)
            raise SamplerError(
                f"Ray sampler actors did not start within {self.start_timeout:g}s; each asks "
                f"for {self.num_cpus:g} CPU and {self.workers} were requested, does the "
                "cluster have room?"
            ) from None
        except ray.exceptions.RayError as e:
            for k in ks:
                self._discard(k)
            raise SamplerError(f"Ray sampler actor failed to start: {_ray_reason(e)}") from e

    def _start(self) -> None:
        self._ray()
        new = [k for k, actor in enumerate(self._actors) if actor is None]
        for k in new:
            self._actors[k] = self._new_actor(k)
        if new:
            self._wait_ready(new)

    def _put(self, blobs: list[tuple[int, bytes]]) -> list[Any]:
        ray = self._ray()
        # One object per distinct snapshot; Ray resolves the reference inside the actor.
        refs: dict[int, Any] = {}
        for key, blob in blobs:
            if key not in refs:
                refs[key] = ray.put(blob)
        return [refs[key] for key, _ in blobs]

    def _send(self, k: int, job: ShardJob, snapshot: Any) -> None:
        self._refs[k] = self._actors[k].run.remote(job, snapshot)

    def _wait(self, pending: set[int], timeout: float) -> list[tuple[int, str, Any]]:
        ray = self._ray()
        by_ref = {self._refs[k]: k for k in pending}
        ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        events = []
        for ref in ready:
            k = by_ref[ref]
            self._refs.pop(k, None)  # do not pin the shard's batch in the object store
            try:
                events.append((k, "reply", ray.get(ref, timeout=self.worker_timeout)))
            except ray.exceptions.RayTaskError as e:
                # Our method never raises: this is Ray failing to (de)serialise the job.
                events.append((k, "reply", ("error", _ray_reason(e), str(e))))
            except ray.exceptions.RayError as e:
                events.append((k, "died", f"{type(e).__name__}: {_ray_reason(e)}"))
        return events

    def _replace(self, k: int) -> None:
        self._discard(k)
        self._actors[k] = self._new_actor(k)
        self._wait_ready([k])

    def _discard(self, k: int) -> None:
        actor = self._actors[k]
        self._actors[k] = None
        if actor is not None:
            ray = _import_ray()
            with contextlib.suppress(Exception):  # already dead, or the cluster is gone
                ray.kill(actor, no_restart=True)

    @property
    def actors(self) -> list[Any]:
        """The live actor handles (tests kill one to simulate a lost node)."""
        return list(self._actors)

    def close(self) -> None:
        if not ray_available():
            return
        ray = _import_ray()
        if ray.is_initialized():
            for k in range(len(self._actors)):
                self._discard(k)
            if self._started_ray:
                ray.shutdown()
                self._started_ray = False


# ---------------------------------------------------------------------------- factory
def make_sampler(
    kind: str,
    *,
    env_factory: Callable[[], gym.Env],
    env_for_width: Callable[[int], BatchedTaskEnv],
    env_max_episode_steps: int,
    max_episode_steps: int,
    max_width: int,
    workers: int = 1,
    ray_address: str | None = None,
    worker_timeout: float = 300.0,
    device: torch.device | str = "cpu",
) -> Sampler:
    """The sampler named ``kind`` (``local``, ``process`` or ``ray``)."""
    if kind == "local":
        return LocalSampler(env_for_width, max_episode_steps, max_width, workers)
    remote = {
        "env_factory": env_factory,
        "env_max_episode_steps": env_max_episode_steps,
        "max_episode_steps": max_episode_steps,
        "max_width": max_width,
        "workers": workers,
        "worker_timeout": worker_timeout,
        "device": device,
    }
    if kind == "process":
        return ProcessSampler(**remote)
    if kind == "ray":
        return RaySampler(**remote, address=ray_address)
    raise ValueError(f"unknown sampler {kind!r}; choose one of {', '.join(SAMPLERS)}")


if sys.version_info < (3, 11):  # pragma: no cover - add_note is 3.11+

    def _add_note(self, note: str) -> None:
        self.__notes__ = [*getattr(self, "__notes__", []), note]

    SamplerError.add_note = _add_note  # type: ignore[method-assign]
