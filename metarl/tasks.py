"""Tasks, task distributions and seeded train/test task splits.

A *task* is plain, picklable data (numbers or small tensors) that fully describes one
member of a task distribution: a bandit's arm means, an MDP's reward and transition
tables, a navigation goal. Task distributions sample tasks from an explicit
``numpy.random.Generator`` so that the same seed always yields the same tasks.

Batched (tensor) distributions return a :class:`TaskBatch`, a frozen dataclass of tensors
whose leading dimension indexes tasks. Plain gymnasium task envs may return any sequence
of picklable objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch

T = TypeVar("T", bound="TaskBatch")

#: Stream identifiers mixed into the user's seed. Train and test tasks therefore come from
#: disjoint ``SeedSequence`` children and can never coincide by construction.
TRAIN_STREAM = 0
TEST_STREAM = 1


@dataclasses.dataclass(frozen=True)
class TaskBatch:
    """Base class for a batch of tasks stored as tensors with a leading task dimension.

    Subclasses declare tensor fields only. Indexing with an int, slice, index tensor or
    boolean mask returns a batch of the selected tasks (an int keeps a batch of one).

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Goals(TaskBatch):
        ...     goal: torch.Tensor
        >>> tasks = Goals(goal=torch.zeros(4, 2))
        >>> len(tasks), len(tasks[1:3]), tasks[0].goal.shape
        (4, 2, torch.Size([1, 2]))
    """

    def __post_init__(self) -> None:
        sizes = {f.name: getattr(self, f.name).shape[0] for f in dataclasses.fields(self)}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{type(self).__name__}: fields disagree on task count {sizes}")

    def __len__(self) -> int:
        first = dataclasses.fields(self)[0].name
        return int(getattr(self, first).shape[0])

    def __getitem__(self: T, index: Any) -> T:
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return type(self)(
            **{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)}
        )

    def to(self: T, device: torch.device | str) -> T:
        """Returns the same tasks on ``device``."""
        return type(self)(
            **{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)}
        )

    def unbind(self: T) -> list[T]:
        """Splits into single-task batches (what a gymnasium view's ``set_task`` takes)."""
        return [self[i] for i in range(len(self))]

    @classmethod
    def cat(cls: type[T], batches: Sequence[T]) -> T:
        """Concatenates task batches along the task dimension."""
        return cls(
            **{
                f.name: torch.cat([getattr(b, f.name) for b in batches])
                for f in dataclasses.fields(cls)
            }
        )


@runtime_checkable
class TaskDistribution(Protocol):
    """What metarl needs from a task distribution.

    Batched distributions (``envs.bandit.BanditDistribution`` …) additionally provide
    ``make_batched_env(num_envs, device)``; plain gymnasium envs are wrapped by the
    :mod:`metarl.vector` adapter instead.
    """

    def sample_tasks(self, n: int, rng: np.random.Generator) -> Sequence[Any]:
        """Returns ``n`` tasks drawn with ``rng``."""
        ...


def task_rng(seed: int, stream: int, *key: int) -> np.random.Generator:
    """A generator for one stream of tasks (train or test) derived from ``seed``.

    Args:
        seed: The run's seed.
        stream: :data:`TRAIN_STREAM` or :data:`TEST_STREAM`.
        *key: Further integers (e.g. the iteration) for independent sub-streams.
    """
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, *key])))


def torch_generator(seed: int, *key: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator seeded deterministically from ``seed`` and ``key``."""
    sub_seed = int(np.random.SeedSequence([seed, 7, *key]).generate_state(1, np.uint64)[0] >> 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(sub_seed)
    return generator


def sample_train_tasks(dist: TaskDistribution, n: int, seed: int, iteration: int) -> Sequence[Any]:
    """The training tasks of one meta-iteration (fresh tasks every iteration)."""
    return dist.sample_tasks(n, task_rng(seed, TRAIN_STREAM, iteration))


def sample_test_tasks(dist: TaskDistribution, n: int, seed: int) -> Sequence[Any]:
    """The held-out meta-test tasks: a fixed set drawn from a stream disjoint from training."""
    return dist.sample_tasks(n, task_rng(seed, TEST_STREAM))
