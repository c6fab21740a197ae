"""What every few-shot learner shares: the interface, checkpointing, backbones, metrics.

Interface (what the runner calls):

* ``Learner(config, num_ways, input_shape, device, regression=False)``
* ``meta_train_step(batch, generator) -> dict[str, float]`` — one outer update on a
  meta-batch (:class:`agents.fewshot.sampler.FewShotBatch`).
* ``evaluate(batch) -> dict[int, Tensor]`` — per-task query accuracy ``[tasks]`` (MSE for
  regression) keyed by the number of inner gradient steps (``0..S`` for gradient-based
  learners; the single key ``0`` for metric / memory learners).
* ``state_dict()`` / ``load_state_dict()`` — networks, optimiser and counters.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.fewshot.backbones import MLP, Conv4
from agents.fewshot.sampler import FewShotBatch


@dataclasses.dataclass
class EpisodicConfig:
    """What every few-shot learner's config shares (the fields come first in each)."""

    meta_batch: int = 32
    """Tasks per meta-batch, i.e. per outer update (MAML: 32 for 5-way Omniglot)."""


def check_positive(config: Any, *names: str, allow_zero: bool = False) -> None:
    """Raises ``ValueError("algo.<name> ...")`` for non-positive fields of ``config``."""
    for name in names:
        value = getattr(config, name)
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ValueError(f"algo.{name} must be {bound}, got {value}")


def build_backbone(
    input_shape: Sequence[int],
    out_features: int | None,
    *,
    hidden: int = 64,
    mlp_hidden: Sequence[int] = (40, 40),
    track_running_stats: bool = False,
    fuse_first: bool = True,
    channels_last: bool = True,
) -> nn.Module:
    """Conv-4 for images ``(C, H, W)``, an MLP for vectors ``(D,)``.

    Args:
        input_shape: One example's shape.
        out_features: Head size (``num_ways``, or 1 for regression); None for an embedding
            (images only).
        hidden: Conv-4 filters.
        mlp_hidden: MLP hidden sizes.
        track_running_stats: BN running statistics (metric learners) vs transductive.
        fuse_first: Exact conv+BN fusion of Conv-4's first block.
        channels_last: Conv-4 in channels-last layout (faster on CPU; see ``Conv4``).
    """
    if len(input_shape) == 3:
        channels, height, width = input_shape
        if height != width:
            raise ValueError(f"Conv-4 needs square images, got {tuple(input_shape)}")
        return Conv4(
            channels,
            hidden,
            out_features,
            height,
            track_running_stats=track_running_stats,
            fuse_first=fuse_first,
            channels_last=channels_last,
        )
    if len(input_shape) == 1:
        if out_features is None:
            raise ValueError("vector inputs need an output size (no embedding backbone)")
        return MLP(input_shape[0], tuple(mlp_hidden), out_features)
    raise ValueError(f"unsupported input shape {tuple(input_shape)}")


def query_metric(output: Tensor, target: Tensor, regression: bool) -> Tensor:
    """Accuracy (classification) or MSE (regression) of one task's predictions, a scalar."""
    if regression:
        return F.mse_loss(output, target)
    return (output.argmax(-1) == target).float().mean()


def task_loss(output: Tensor, target: Tensor, regression: bool) -> Tensor:
    """Cross-entropy or MSE, the loss every learner trains with."""
    return F.mse_loss(output, target) if regression else F.cross_entropy(output, target)


def split_tasks(batch: Any, size: int) -> list[FewShotBatch]:
    """The batch as consecutive groups of ``size`` tasks (``size <= 0``: one group).

    Works for any object with ``support_x, support_y, query_x, query_y`` tensors.
    """
    tasks = batch.support_x.shape[0]
    size = tasks if size <= 0 else size
    return [
        FewShotBatch(
            batch.support_x[s : s + size],
            batch.support_y[s : s + size],
            batch.query_x[s : s + size],
            batch.query_y[s : s + size],
        )
        for s in range(0, tasks, size)
    ]


def linear_decay(
    optimizer: torch.optim.Optimizer, steps: int, final_fraction: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler taking the step size linearly from its value to ``final_fraction`` of it
    over ``steps`` optimiser steps, then holding it there (``steps = 0``: constant).

    Step it once per meta-batch. Its ``state_dict`` belongs in the learner's checkpoint, so
    ``--resume`` continues the schedule where it stopped.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> sched = linear_decay(opt, steps=4, final_fraction=0.2)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 3))
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [1.0, 0.8, 0.6, 0.4, 0.2, 0.2]
    """
    if steps <= 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(final_fraction, 1.0 - (1.0 - final_fraction) * step / steps)
    )


def clip_grad(parameters: Sequence[Tensor], max_norm: float) -> float:
    """Gradient norm before clipping (clips only if ``max_norm > 0``)."""
    grads = [p for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(grads, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([g.grad.norm() for g in grads])))


class FewShotLearner:
    """Base class: holds the networks (``self.nets``), the optimiser and counters.

    Subclasses build ``self.nets`` (an ``nn.ModuleDict``) and ``self.optimizer`` in
    ``__init__`` and implement :meth:`meta_train_step` and :meth:`evaluate`.

    Args:
        config: The learner's config dataclass.
        num_ways: Classes per task (1 for regression).
        input_shape: One example's shape, ``(1, 28, 28)`` for Omniglot, ``(1,)`` for
            sinusoids.
        device: Where the networks live; batches must be on it too.
        regression: MSE on real targets instead of N-way classification.
    """

    config_cls: ClassVar[type]
    description: ClassVar[str] = ""
    gradient_based: ClassVar[bool] = False

    def __init__(
        self,
        config: Any,
        num_ways: int,
        input_shape: Sequence[int],
        device: torch.device | str = "cpu",
        regression: bool = False,
    ):
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"config must be a dataclass, got {type(config).__name__}")
        self.config = config
        self.num_ways = int(num_ways)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.device = torch.device(device)
        self.regression = regression
        self.steps_done = 0
        self.nets = nn.ModuleDict()
        self.optimizer: torch.optim.Optimizer | None = None

    def meta_train_step(self, batch: Any, generator: torch.Generator) -> dict[str, float]:
        """One outer update on a meta-batch; returns scalar statistics."""
        raise NotImplementedError

    def evaluate(self, batch: Any) -> dict[int, Tensor]:
        """Per-task query accuracy (or MSE) keyed by inner steps."""
        raise NotImplementedError

    def episodic_step(
        self,
        batch: Any,
        chunk: int,
        forward: Callable[[FewShotBatch], tuple[Tensor, Tensor]],
        grad_clip: float = 0.0,
    ) -> dict[str, float]:
        """One optimiser step on the mean query loss, accumulated over task groups.

        Args:
            batch: The meta-batch.
            chunk: Tasks per forward pass (``<= 0``: all). Each group is back-propagated
                before the next is embedded, so only one group's activations are alive;
                batch norm's statistics are those of a group.
            forward: ``forward(group) -> (mean query loss, per-task accuracy [tasks])``.
            grad_clip: Global-norm clip (0 = off).
        """
        self.nets.train()
        self.optimizer.zero_grad(set_to_none=True)
        tasks = batch.support_x.shape[0]
        loss_sum, accuracies = 0.0, []
        for group in split_tasks(batch, chunk):
            loss, accuracy = forward(group)
            weight = group.support_x.shape[0] / tasks
            (loss * weight).backward()
            loss_sum += loss.item() * weight
            accuracies.append(accuracy.detach())
        grad_norm = clip_grad(list(self.nets.parameters()), grad_clip)
        self.optimizer.step()
        self.steps_done += 1
        return {
            "loss": loss_sum,
            "accuracy": torch.cat(accuracies).mean().item(),
            "grad_norm": grad_norm,
        }

    def extra_state(self) -> dict[str, Any]:
        """Further picklable state (subclasses extend)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`extra_state`."""

    def state_dict(self) -> dict[str, Any]:
        """Networks, optimiser, step counter and :meth:`extra_state`."""
        return {
            "nets": self.nets.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "steps_done": self.steps_done,
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` output (copied: the source is never aliased)."""
        state = copy.deepcopy(state)  # optimiser moments would otherwise be shared tensors
        self.nets.load_state_dict(state["nets"])
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = int(state.get("steps_done", 0))
        self.load_extra_state(state.get("extra", {}))


class MetricLearner(FewShotLearner):
    """Shared training and evaluation of metric learners (ProtoNet, Matching Networks).

    There is no inner loop: a subclass only maps a batch to query class log-probabilities
    (:meth:`query_log_probs`), usually from :meth:`embed`'s embeddings. Its config needs
    ``tasks_per_pass`` and ``grad_clip``; the embedding network is ``nets["encoder"]``.
    """

    def embed(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Support and query embeddings ``[tasks, S, D]``, ``[tasks, Q, D]`` in one pass."""
        tasks, s = batch.support_x.shape[:2]
        q = batch.query_x.shape[1]
        images = torch.cat([batch.support_x.flatten(0, 1), batch.query_x.flatten(0, 1)])
        z = self.nets["encoder"](images)
        return z[: tasks * s].view(tasks, s, -1), z[tasks * s :].view(tasks, q, -1)

    def query_log_probs(self, batch: Any) -> Tensor:
        """Query class log-probabilities ``[tasks, Q, N]``."""
        raise NotImplementedError

    def loss_and_accuracy(self, batch: Any) -> tuple[Tensor, Tensor]:
        """Mean query NLL and per-task query accuracy ``[tasks]``."""
        log_probs = self.query_log_probs(batch)
        loss = F.nll_loss(log_probs.flatten(0, 1), batch.query_y.flatten())
        return loss, (log_probs.argmax(-1) == batch.query_y).float().mean(1)

    def meta_train_step(self, batch: Any, generator: torch.Generator) -> dict[str, float]:
        """One Adam step on the query NLL of a meta-batch."""
        return self.episodic_step(
            batch, self.config.tasks_per_pass, self.loss_and_accuracy, self.config.grad_clip
        )

    @torch.no_grad()
    def evaluate(self, batch: Any) -> dict[int, Tensor]:
        """Per-task query accuracy ``{0: [tasks]}`` (no inner steps)."""
        self.nets.eval()
        return {
            0: torch.cat(
                [
                    self.loss_and_accuracy(group)[1]
                    for group in split_tasks(batch, self.config.tasks_per_pass)
                ]
            )
        }
