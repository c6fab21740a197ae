"""Few-shot datasets as the runner sees them: the registered ``omniglot`` and ``sinusoid``.

A dataset class plays the part an env plays in meta-RL. Its constructor keyword arguments
are the ``data.*`` options of a run (``--set data.ways=5``); :meth:`FewShotProblem.to`
loads it onto the run's device; :meth:`~FewShotProblem.sample_train_tasks` and
:meth:`~FewShotProblem.sample_test_tasks` hand out meta-batches, deterministic in
``(seed, iteration)`` like the RL task streams, so ``--resume`` replays the same batches.

Test tasks come from the held-out split (Omniglot: the 423 meta-test characters) and are
drawn lazily, in chunks, so a 1,000-task 20-way evaluation never holds every image at once.

Example:
    >>> from agents.fewshot.problem import SinusoidTasks
    >>> problem = SinusoidTasks(shots=5).to("cpu")
    >>> batch = problem.sample_train_tasks(4, seed=0, iteration=0)
    >>> tuple(batch.support_x.shape), tuple(batch.query_y.shape)
    ((4, 5, 1), (4, 10, 1))
    >>> sum(chunk.support_x.shape[0] for chunk in problem.sample_test_tasks(120, seed=0))
    120
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar

import torch

from agents.fewshot.data import SinusoidDistribution, load_omniglot, omniglot_splits
from agents.fewshot.sampler import ClassificationSampler, FewShotBatch, SinusoidSampler
from metarl.tasks import torch_generator

#: Seed streams of the task samplers (disjoint from each other and from the RL streams'
#: roles: the split, not the stream, keeps Omniglot's test classes unseen).
TRAIN_STREAM, TEST_STREAM = 11, 12


@dataclasses.dataclass(frozen=True)
class TestTasks:
    """A lazily drawn, reproducible set of held-out tasks.

    Iterating yields :class:`~agents.fewshot.sampler.FewShotBatch` chunks of at most
    ``chunk`` tasks; chunk ``i`` always comes from the same generator, so every pass (and
    every evaluation of the same run) sees the same tasks.

    Attributes:
        problem: The dataset the tasks come from.
        num_tasks: Total number of tasks.
        seed: The seed they derive from.
        chunk: Tasks per yielded batch.
    """

    problem: FewShotProblem
    num_tasks: int
    seed: int
    chunk: int = 50

    def __len__(self) -> int:
        return self.num_tasks

    def __iter__(self) -> Iterator[FewShotBatch]:
        for i, start in enumerate(range(0, self.num_tasks, self.chunk)):
            size = min(self.chunk, self.num_tasks - start)
            generator = torch_generator(self.seed, TEST_STREAM, i)
            yield self.problem.test_sampler.sample(size, generator)


class FewShotProblem:
    """Base of the registered few-shot datasets.

    Subclasses build ``train_sampler`` and ``test_sampler`` in :meth:`_load` and set
    ``ways``, ``input_shape`` and ``regression``.
    """

    #: Marks a dataset for the registry and the config (``data.*`` instead of ``env.*``).
    is_fewshot_dataset: ClassVar[bool] = True
    description: ClassVar[str] = ""
    ways: int
    input_shape: tuple[int, ...]
    regression: bool

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.train_sampler: Any = None
        self.test_sampler: Any = None

    def to(self, device: torch.device | str) -> FewShotProblem:
        """Loads the data onto ``device`` (samplers produce batches there); returns self."""
        self.device = torch.device(device)
        self._load()
        return self

    def _load(self) -> None:
        raise NotImplementedError

    def sample_train_tasks(self, num_tasks: int, seed: int, iteration: int) -> FewShotBatch:
        """The meta-batch of training iteration ``iteration`` (same seed, same batch)."""
        return self.train_sampler.sample(num_tasks, torch_generator(seed, TRAIN_STREAM, iteration))

    def sample_test_tasks(self, num_tasks: int, seed: int, chunk: int = 50) -> TestTasks:
        """``num_tasks`` held-out tasks, drawn lazily in chunks of ``chunk``."""
        return TestTasks(self, int(num_tasks), int(seed), chunk)

    def close(self) -> None:
        """Nothing to release (the RL problems close envs and workers)."""

    def baseline_values(self, tasks: TestTasks, generator: torch.Generator) -> dict[str, Any]:
        """Per-task scores of learners that ignore the support set, ``{name: [tasks]}``.

        Classification: ``random``, a uniformly random guess per query (accuracy ≈ 1/N).
        Regression: ``zero``, predicting the prior mean 0 everywhere (MSE = E[y²]).
        """
        scores = []
        for batch in tasks:
            if self.regression:
                scores.append(batch.query_y.square().mean(dim=(1, 2)).cpu())
            else:
                guess = torch.randint(
                    self.ways, batch.query_y.shape, generator=generator, device=generator.device
                )
                scores.append((guess.to(batch.query_y.device) == batch.query_y).float().mean(1))
        return {("zero" if self.regression else "random"): torch.cat(scores).cpu()}


class OmniglotTasks(FewShotProblem):
    """N-way K-shot Omniglot classification (registered as ``omniglot``).

    The standard split of :func:`~agents.fewshot.data.omniglot_splits`: 1,200 training
    and 423 test characters from a seeded shuffle, ×4 with rotations.

    Args:
        ways: N, classes per task.
        shots: K, labelled examples per class.
        queries: Q, query examples per class (K + Q ≤ 20).
        train_queries: Query examples per class in meta-training batches (0 = ``queries``).
            MAML's reference code trains 5-way 1-shot with one query per class; evaluation
            always uses ``queries``, so fewer training queries buy more outer updates per
            minute without making the reported accuracy noisier.
        dir: Folder with ``images_background.npz`` and ``images_evaluation.npz``
            (default: ``../shared/data/omniglot`` beside the repository). Never downloaded.
        image_size: Side of the resized images (cached once per size).
        split_seed: Seed of the character shuffle that makes the split.
        rotations: Rotations by 90°, 180°, 270° as new classes.
    """

    description = "Omniglot N-way K-shot classification (1,200 / 423 character split, rotations)"

    def __init__(
        self,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        train_queries: int = 0,
        dir: str | None = None,
        image_size: int = 28,
        split_seed: int = 0,
        rotations: bool = True,
    ):
        super().__init__()
        if ways < 2:
            raise ValueError(f"data.ways must be >= 2, got {ways}")
        if shots < 1 or queries < 1:
            raise ValueError(f"data.shots and data.queries must be >= 1, got {shots}, {queries}")
        if train_queries < 0:
            raise ValueError(f"data.train_queries must be >= 0, got {train_queries}")
        for name, q in (("queries", queries), ("train_queries", train_queries)):
            if shots + q > 20:
                raise ValueError(
                    f"data.shots + data.{name} = {shots + q} exceeds Omniglot's 20 drawings "
                    "per character"
                )
        if image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {image_size}")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.train_queries = train_queries or queries
        self.dir, self.image_size, self.split_seed = dir, image_size, split_seed
        self.rotations = rotations
        self.input_shape = (1, image_size, image_size)
        self.regression = False

    def _load(self) -> None:
        images = load_omniglot(self.dir, image_size=self.image_size)
        splits = omniglot_splits(images, seed=self.split_seed, rotations=self.rotations)
        self.splits = splits
        self.train_sampler = ClassificationSampler(
            splits["train"], self.ways, self.shots, self.train_queries, self.device
        )
        self.test_sampler = ClassificationSampler(
            splits["test"], self.ways, self.shots, self.queries, self.device
        )


class SinusoidTasks(FewShotProblem):
    """K-shot sinusoid regression ``y = A·sin(x − φ)`` (registered as ``sinusoid``).

    Args:
        shots: K, support points per task.
        queries: Q, query points per task.
        amplitude: Range of A (MAML: [0.1, 5]).
        phase: Range of φ (MAML: [0, π]).
        x_range: Range of the inputs (MAML: [−5, 5]).
    """

    description = "sinusoid regression, A ~ U[0.1,5], phase ~ U[0,pi], x ~ U[-5,5] (MAML)"

    def __init__(
        self,
        shots: int = 10,
        queries: int = 10,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, 3.141592653589793),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ):
        super().__init__()
        if shots < 1 or queries < 1:
            raise ValueError(f"data.shots and data.queries must be >= 1, got {shots}, {queries}")
        for name, pair in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if len(pair) != 2 or not pair[0] <= pair[1]:
                raise ValueError(f"data.{name} must be [low, high] with low <= high, got {pair}")
        self.shots, self.queries = shots, queries
        self.distribution = SinusoidDistribution(
            tuple(map(float, amplitude)), tuple(map(float, phase)), tuple(map(float, x_range))
        )
        self.ways = 1
        self.input_shape = (1,)
        self.regression = True

    def _load(self) -> None:
        sampler = SinusoidSampler(self.shots, self.queries, self.distribution, self.device)
        # One distribution: train and test tasks differ by their seed streams only.
        self.train_sampler = self.test_sampler = sampler
