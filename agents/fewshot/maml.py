"""MAML (Finn et al., 2017) and Meta-SGD (Li et al., 2017) for few-shot learning.

Both are the same loop on :mod:`agents.functional`: adapt θ on each task's support set with
``inner_steps`` SGD steps, evaluate the adapted weights on the query set, and update θ
with the gradient of the mean query loss (second order unless ``first_order``). Meta-SGD
differs only in the step size: a learned tensor α per parameter instead of a constant,
so ``MetaSGD`` with α frozen at MAML's ``inner_lr`` *is* MAML (tested bit for bit).

Models: the Conv-4 for images (batch norm with the current batch's statistics, as in
MAML), the 1→40→40→1 ReLU MLP for sinusoid regression.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from agents import functional as fn
from agents.fewshot.base import (
    EpisodicConfig,
    FewShotLearner,
    build_backbone,
    check_positive,
    clip_grad,
    query_metric,
    task_loss,
)


@dataclasses.dataclass
class MAMLConfig(EpisodicConfig):
    """MAML settings (defaults: the paper's Omniglot 5-way setup)."""

    inner_lr: float = 0.4
    """Inner-loop SGD step size α (paper: 0.4 for Omniglot, 0.01 for sinusoids)."""
    inner_steps: int = 1
    """Inner steps during meta-training (paper: 1 for 5-way Omniglot)."""
    eval_inner_steps: int = 3
    """Inner steps at evaluation; ``evaluate`` reports steps 0..this (paper: 3)."""
    first_order: bool = False
    """First-order MAML: treat inner gradients as constants (no Hessian terms)."""
    meta_lr: float = 1e-3
    """Adam step size of the outer update."""
    grad_clip: float = 0.0
    """Clip the meta-gradient's global norm to this (0 = off)."""
    hidden: int = 64
    """Conv-4 filters per block."""
    mlp_hidden: tuple[int, ...] = (40, 40)
    """Hidden sizes of the MLP used for vector inputs (sinusoid regression)."""
    method: str = "auto"
    """Batching technique over tasks (see ``agents.functional``): ``loop``, ``vmap``, ``func``
    (refuses batch norm) or ``auto``: ``loop`` for Conv-4 (fastest on CPU, one task's graph
    in memory at a time), ``vmap`` for the MLP (6x faster than the loop on sinusoids)."""
    fuse_first: bool = True
    """Exact rewrite of Conv-4's first conv+BN as one matmul (faster, same numbers)."""
    channels_last: bool = True
    """Conv-4 in channels-last layout: ~1.3x faster on CPU; float32 meta-gradients then
    carry ~3e-4 relative rounding instead of ~1e-6 (see ``backbones.Conv4``)."""

    def __post_init__(self) -> None:
        check_positive(self, "meta_batch", "inner_lr", "meta_lr", "hidden")
        check_positive(self, "inner_steps", "eval_inner_steps", "grad_clip", allow_zero=True)
        if self.method not in (*fn.METHODS, "auto"):
            raise ValueError(
                f"algo.method must be one of auto, {', '.join(fn.METHODS)}, got {self.method!r}"
            )
        self.mlp_hidden = tuple(int(h) for h in self.mlp_hidden)


class MAML(FewShotLearner):
    """Model-agnostic meta-learning, second or first order, batched over tasks."""

    config_cls = MAMLConfig
    description = "MAML: second/first-order gradient-based meta-learning (Conv-4 / MLP)"
    gradient_based = True

    def __init__(
        self,
        config: MAMLConfig,
        num_ways: int,
        input_shape: Any,
        device: torch.device | str = "cpu",
        regression: bool = False,
    ):
        super().__init__(config, num_ways, input_shape, device, regression)
        self.nets["model"] = build_backbone(
            self.input_shape,
            1 if regression else self.num_ways,
            hidden=config.hidden,
            mlp_hidden=config.mlp_hidden,
            fuse_first=config.fuse_first,
            channels_last=config.channels_last,
        )
        self.method = config.method
        if self.method == "auto":
            self.method = "vmap" if len(self.input_shape) == 1 else "loop"
        self.build_extra()
        self.nets.to(self.device)
        self.optimizer = torch.optim.Adam(self.meta_parameters(), lr=config.meta_lr)

    # --------------------------------------------------------------- hooks
    @property
    def model(self) -> nn.Module:
        """The network whose initial weights θ are meta-learned."""
        return self.nets["model"]

    def build_extra(self) -> None:
        """Creates further meta-learned modules (Meta-SGD's α)."""

    def meta_parameters(self) -> list[Tensor]:
        """What the outer optimiser updates."""
        return list(self.model.parameters())

    def inner_lr(self) -> fn.LearningRate:
        """The inner step size: MAML's constant."""
        return self.config.inner_lr

    # ---------------------------------------------------------- objective
    def eval_lr(self) -> fn.LearningRate:
        """The inner step size without a graph to the meta-parameters (for evaluation)."""
        lr = self.inner_lr()
        return {k: v.detach() for k, v in lr.items()} if isinstance(lr, dict) else lr

    def inner_loss(self, params: fn.Params, data: tuple[Tensor, Tensor]) -> Tensor:
        """Support loss of one task at ``params``."""
        x, y = data
        return task_loss(fn.forward(self.model, params, x), y, self.regression)

    def outer_loss(self, params: fn.Params, data: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Query loss of one task at ``params`` and its accuracy (or MSE)."""
        x, y = data
        out = fn.forward(self.model, params, x)
        return task_loss(out, y, self.regression), query_metric(out.detach(), y, self.regression)

    def meta_gradients(self, batch: Any) -> dict[str, float]:
        """Accumulates the meta-gradient of the mean query loss into ``.grad``.

        With the ``loop`` method tasks are back-propagated one at a time
        (``backward_scale``), so only one task's second-order graph is in memory.
        """
        self.optimizer.zero_grad(set_to_none=True)
        tasks = batch.support_x.shape[0]
        losses, metric = fn.meta_losses(
            self.inner_loss,
            self.outer_loss,
            fn.params_of(self.model),
            (batch.support_x, batch.support_y),
            (batch.query_x, batch.query_y),
            steps=self.config.inner_steps,
            lr=self.inner_lr(),
            first_order=self.config.first_order,
            method=self.method,
            backward_scale=1.0 / tasks,
        )
        key = "mse" if self.regression else "accuracy"
        return {"loss": float(losses.mean()), key: float(metric.mean())}

    def meta_train_step(self, batch: Any, generator: torch.Generator) -> dict[str, float]:
        """One Adam step on the meta-gradient of a meta-batch (``generator`` is unused:
        MAML's update is deterministic given the batch)."""
        self.nets.train()
        stats = self.meta_gradients(batch)
        stats["grad_norm"] = clip_grad(self.meta_parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.steps_done += 1
        return stats

    @torch.no_grad()
    def evaluate(self, batch: Any) -> dict[int, Tensor]:
        """Query accuracy (MSE) per task after 0..``eval_inner_steps`` inner steps.

        Under ``no_grad`` the inner gradients are still taken (``fn.adapt`` enables grad
        for them) but no graph to θ is built.
        """
        self.nets.eval()
        steps = self.config.eval_inner_steps
        lr = self.eval_lr()
        theta = fn.params_of(self.model, detach=True)
        results = torch.zeros(steps + 1, batch.support_x.shape[0], device=self.device)
        for t in range(batch.support_x.shape[0]):
            support = (batch.support_x[t], batch.support_y[t])
            qx, qy = batch.query_x[t], batch.query_y[t]
            fast = theta
            for step in range(steps + 1):
                if step > 0:
                    fast = fn.adapt(self.inner_loss, fast, support, steps=1, lr=lr)
                out = fn.forward(self.model, fast, qx)
                results[step, t] = query_metric(out, qy, self.regression)
        return {step: results[step] for step in range(steps + 1)}


@dataclasses.dataclass
class MetaSGDConfig(MAMLConfig):
    """Meta-SGD settings: MAML's, with ``inner_lr`` as the initial value of every α entry."""

    learn_alpha: bool = True
    """Meta-learn α with θ (False freezes α = ``inner_lr``, which is exactly MAML)."""


class MetaSGD(MAML):
    """Meta-SGD: MAML with a learned step size per parameter entry (α, same shapes as θ)."""

    config_cls = MetaSGDConfig
    description = "Meta-SGD: MAML with meta-learned per-parameter inner learning rates"

    def build_extra(self) -> None:
        self.nets["alpha"] = nn.ParameterDict(
            {
                fn.safe_key(name): nn.Parameter(
                    torch.full_like(p, self.config.inner_lr), requires_grad=self.config.learn_alpha
                )
                for name, p in self.model.named_parameters()
            }
        )

    def meta_parameters(self) -> list[Tensor]:
        params = list(self.model.parameters())
        if self.config.learn_alpha:
            params += list(self.nets["alpha"].parameters())
        return params

    def inner_lr(self) -> fn.LearningRate:
        alpha = self.nets["alpha"]
        return {name: alpha[fn.safe_key(name)] for name, _ in self.model.named_parameters()}
