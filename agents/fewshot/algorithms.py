"""The few-shot learners as registered algorithms (``metarl train maml omniglot``).

:class:`FewShotAlgorithm` adapts a :class:`~agents.fewshot.base.FewShotLearner` to the
runner's :class:`~metarl.learner.Learner` interface: one iteration is one meta-batch of
``algo.meta_batch`` tasks from the dataset (a :class:`~agents.fewshot.problem.FewShotProblem`),
and an evaluation turns the learner's per-task query accuracy (or MSE) into a
:class:`~metarl.learner.Curve` against inner gradient steps, or against shots seen for
learners without an inner loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from agents.fewshot.base import FewShotLearner
from agents.fewshot.maml import MAML, MetaSGD
from agents.fewshot.matching import MatchingNet
from agents.fewshot.metanet import MetaNet
from agents.fewshot.problem import FewShotProblem
from agents.fewshot.protonet import ProtoNet
from agents.fewshot.reptile import Reptile
from agents.fewshot.snail import SNAILClassifier
from metarl.learner import Curve, Learner, check_finite


class FewShotAlgorithm(Learner):
    """A few-shot learner behind the runner's interface.

    Subclasses set ``learner_cls``; ``config_cls`` is that learner's config dataclass.

    Args:
        problem: The dataset (:class:`~agents.fewshot.problem.FewShotProblem`), on ``device``.
        config: ``learner_cls.config_cls`` instance (the run's ``algo.*``).
        device: Where the networks live.
    """

    learner_cls: ClassVar[type[FewShotLearner]]

    def __init__(self, problem: Any, config: Any, device: torch.device | str):
        if not isinstance(problem, FewShotProblem):
            raise ValueError(
                f"{self.registered_name!r} here is the few-shot learner; it trains on a few-shot "
                "dataset (omniglot, sinusoid)"
            )
        self.problem = problem
        self.config = config
        self.device = torch.device(device)
        if getattr(config, "sequence_length", None) == 0:
            # Sequence learners (SNAIL) size their temporal convolutions to the task's
            # sequence: N·K labelled examples, then the query.
            config = dataclasses.replace(config, sequence_length=problem.ways * problem.shots + 1)
        self.learner = self.learner_cls(
            config, problem.ways, problem.input_shape, self.device, regression=problem.regression
        )
        #: The headline metric's name (``meta_test/accuracy`` or ``meta_test/mse``).
        self.metric_name = "mse" if problem.regression else "accuracy"

    registered_name: ClassVar[str] = "few-shot learner"

    def tasks_per_iteration(self) -> int:
        return self.config.meta_batch

    def train_iteration(self, tasks: Any, generator: torch.Generator) -> dict[str, float]:
        stats = self.learner.meta_train_step(tasks, generator)
        check_finite("loss", stats["loss"])
        if "grad_norm" in stats:
            check_finite("gradient norm", stats["grad_norm"])
        # The runner files "loss" under losses/ and the rest (accuracy, mse) under meta_train/.
        return {k: float(v) for k, v in stats.items()}

    @property
    def x_label(self) -> str:
        return "gradient step" if self.learner.gradient_based else "shots"

    def evaluate(
        self, tasks: Any, generator: torch.Generator, *, baselines: bool | None = None
    ) -> dict[str, Curve]:
        """Per-task query accuracy (MSE) of held-out ``tasks`` (an iterable of batches).

        ``baselines`` is ignored: chance levels come from the problem (``metarl eval``).

        Each learner's ``evaluate`` manages its own grad mode (inner loops take gradients
        without building a graph to the meta-parameters).
        """
        del baselines
        parts: dict[int, list[torch.Tensor]] = {}
        for batch in tasks:
            for x, values in self.learner.evaluate(batch).items():
                parts.setdefault(x, []).append(values.detach().float().cpu())
        xs = sorted(parts)
        # Learners without an inner loop report one point, at K shots.
        xs_shown = [self.problem.shots] if not self.learner.gradient_based and xs == [0] else xs
        values = torch.stack([torch.cat(parts[x]) for x in xs])
        if self.problem.regression:
            # An inner loop run past the steps it was meta-trained for can diverge (Meta-SGD's
            # learned steps overshoot when iterated): its MSE is infinite, not undefined.
            values = values.nan_to_num(nan=float("inf"))
        y_label = "query MSE" if self.problem.regression else "query accuracy"
        return {
            self.registered_name: Curve(
                xs_shown, values, self.x_label, y_label=y_label, headline=self.headline(xs)
            )
        }

    def headline(self, xs: list[int]) -> int:
        """Index of the headline x, as the papers report: classification accuracy after the
        last evaluation step (MAML: 3 steps on Omniglot) or at K shots; regression MSE after
        as many steps as meta-training used (MAML and Meta-SGD: one step on sinusoids)."""
        steps = getattr(self.config, "inner_steps", None)
        if self.problem.regression and self.learner.gradient_based and steps in xs:
            return xs.index(steps)
        return len(xs) - 1

    def summary_metric(self, curves: dict[str, Curve], name: str) -> float:
        """Mean query accuracy (MSE) at the curve's headline x."""
        return float(curves[name].total().mean())

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.learner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["model"])

    def load_weights(self, state: dict[str, Any]) -> None:
        # The networks only: the optimiser, step counter and schedules start afresh.
        fresh = self.learner.state_dict()
        self.learner.load_state_dict({**fresh, "nets": state["model"]["nets"]})

    def save_figures(self, out_dir: Any, tasks: Any) -> None:
        """Sinusoid fits (the MAML / Meta-SGD figure) for gradient-based regressors."""
        if self.problem.regression and self.learner.gradient_based:
            from agents.fewshot.plots import plot_sinusoid_fits

            plot_sinusoid_fits(
                self.learner, next(iter(tasks)), out_dir / "fits.png", title=self.registered_name
            )


def _algorithm(name: str, learner: type[FewShotLearner]) -> type[FewShotAlgorithm]:
    cls = type(
        f"{learner.__name__}Algorithm",
        (FewShotAlgorithm,),
        {
            "learner_cls": learner,
            "config_cls": learner.config_cls,
            "description": learner.description,
            "registered_name": name,
            "__doc__": f"``{name}`` on few-shot datasets: :class:`{learner.__module__}."
            f"{learner.__name__}` behind the runner's interface.",
            "__module__": __name__,
        },
    )
    return cls


MAMLAlgorithm = _algorithm("maml", MAML)
MetaSGDAlgorithm = _algorithm("meta-sgd", MetaSGD)
SNAILAlgorithm = _algorithm("snail", SNAILClassifier)
ProtoNetAlgorithm = _algorithm("protonet", ProtoNet)
MatchingNetAlgorithm = _algorithm("matchingnet", MatchingNet)
ReptileAlgorithm = _algorithm("reptile", Reptile)
MetaNetAlgorithm = _algorithm("metanet", MetaNet)
