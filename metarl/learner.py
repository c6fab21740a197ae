"""The learner interface the runner, evaluator and CLI program against.

A learner owns its networks and optimisers and knows how to do one meta-training iteration
and how to measure adaptation on held-out tasks. Everything domain-specific (how tasks
become trajectories or few-shot batches) comes through the ``problem`` it is built with.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import torch


@dataclasses.dataclass(frozen=True)
class Curve:
    """An adaptation curve: one value per task at each x.

    Attributes:
        x: The x positions (episode index within the trial, gradient step, or shots).
        values: ``[len(x), n_tasks]`` per-task returns (or accuracies) at each x.
        x_label: What x counts, e.g. ``"episode"`` or ``"gradient step"``.
        lengths: Optional ``[len(x), n_tasks]`` episode lengths (for episode curves).
        batch: Optional trajectories the curve was measured on (e.g. to draw paths).
        y_label: What the values are (plot axis label).
        headline: Index into ``x`` of the value a summary reports for non-episode curves
            (default: the last x).
    """

    x: list[int]
    values: torch.Tensor
    x_label: str
    lengths: torch.Tensor | None = None
    batch: Any = dataclasses.field(default=None, repr=False, compare=False)
    y_label: str = "mean return per episode"
    headline: int = -1

    def total(self) -> torch.Tensor:
        """Per-task summary: the whole trial's return for episode curves, else the values
        at ``headline`` (e.g. after the last gradient step)."""
        return self.values.sum(0) if self.x_label == "episode" else self.values[self.headline]

    def __post_init__(self) -> None:
        if self.values.dim() != 2 or self.values.shape[0] != len(self.x):
            raise ValueError(
                f"Curve values must be [len(x)={len(self.x)}, tasks], "
                f"got {tuple(self.values.shape)}"
            )


class Learner(abc.ABC):
    """Base class of every registered algorithm.

    Subclasses set ``config_cls`` (a dataclass whose fields are the ``algo.*`` options, each
    with a docstring) and ``description``, and are constructed as
    ``cls(problem, config, device)``.
    """

    config_cls: ClassVar[type]
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def tasks_per_iteration(self) -> int:
        """How many training tasks one iteration consumes."""

    @abc.abstractmethod
    def train_iteration(self, tasks: Any, generator: torch.Generator) -> dict[str, float]:
        """One meta-training iteration on ``tasks``; returns scalar metrics.

        Metric names are namespaced by the runner: ``return`` and other rollout statistics
        go under ``meta_train/``, names starting with ``loss`` or ending in ``_loss`` under
        ``losses/``.
        """

    @abc.abstractmethod
    def evaluate(
        self, tasks: Any, generator: torch.Generator, *, baselines: bool | None = None
    ) -> dict[str, Curve]:
        """Adaptation curves on held-out ``tasks``: the learner's own under its registered
        name, plus any learner-specific baselines (e.g. a fine-tuned random init).

        ``baselines=False`` (``metarl eval --no-baselines``) asks for the learner's own
        curve only; None lets the learner decide. Learners without baselines of their own
        ignore it.
        """

    def set_progress(self, iteration: int, total: int) -> None:
        """Called by the runner before each training iteration, for schedules.

        ``iteration`` counts from 0; ``total`` is ``train.iterations``. A schedule that is
        a function of these two alone replays exactly on ``--resume`` (extending
        ``--iterations`` on resume stretches it from that point on). Default: no schedule.
        """
        del iteration, total  # no schedule

    def summary_metric(self, curves: dict[str, Curve], name: str) -> float:
        """The headline number of an evaluation (default: mean total over x)."""
        return float(curves[name].values.sum(0).mean())

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: parameters and optimiser state (tensors, numbers)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def load_weights(self, state: dict[str, Any]) -> None:
        """Warm start: takes ``state``'s parameters, keeps this learner's optimiser state.

        ``state`` is another run's :meth:`state_dict`. Only its ``"model"`` entry is used,
        so a fine-tune starts with fresh optimiser moments (and its own learning rate).

        Raises:
            KeyError, RuntimeError, ValueError: If the parameters do not fit this learner.
        """
        self.load_state_dict({**self.state_dict(), "model": state["model"]})

    def mismatch_hint(self, problem: str) -> str:
        """What to change when another run's weights do not fit (``problem`` is torch's
        line naming the missing, unexpected or mis-shaped parameters); ``""`` if nothing
        specific. Shown after the warm-start error."""
        return ""

    def parameters_vector(self) -> torch.Tensor:
        """All trainable parameters as one flat vector (resume/determinism checks)."""
        tensors = [v.reshape(-1).float() for v in _tensors(self.state_dict().get("model", {}))]
        return torch.cat(tensors) if tensors else torch.zeros(0)


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for k in sorted(tree) for t in _tensors(tree[k])]
    if isinstance(tree, list | tuple):
        return [t for v in tree for t in _tensors(v)]
    return []


class IncompatibleEnvError(ValueError):
    """The env's spaces do not fit the learner (e.g. a Gaussian policy on Discrete actions).

    Learners raise it from their constructor; the CLI reports it as a usage error (one line,
    exit 2), since the fix is a different algorithm or env, not a different run.
    """


class NonFiniteError(RuntimeError):
    """A loss or gradient became NaN or infinite."""

    def __init__(self, name: str, value: float):
        super().__init__(f"{name} is {value}")
        self.name = name
        self.value = value


def check_finite(name: str, value: torch.Tensor | float) -> None:
    """Raises :class:`NonFiniteError` if ``value`` has a NaN or infinity."""
    t = torch.as_tensor(value)
    if not bool(torch.isfinite(t).all()):
        raise NonFiniteError(name, float(t.reshape(-1)[~torch.isfinite(t.reshape(-1))][0]))
