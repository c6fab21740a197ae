"""Reptile (Nichol, Achiam & Schulman, 2018): first-order meta-learning by interpolation.

For each task of a meta-batch, run ``inner_steps`` plain SGD steps from θ on the task's
data to get φ_t; then move θ toward the adapted weights,
``θ ← θ + ε · mean_t(φ_t − θ)``. The move is applied by an SGD optimiser with learning
rate ε on the pseudo-gradient ``θ − mean_t φ_t`` (so ε can be annealed by a scheduler and
the optimiser checkpoints like every other learner's). No second-order terms and no
graph to θ are ever built: inner steps run on detached copies (``agents.functional.adapt``
under ``no_grad``).

Reptile has no train/test split inside a task; by default the inner loop trains on all
sampled examples of a task (support and query), which plays the role of the paper's
larger "train shots". Evaluation adapts on the support set only and scores the query set.
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
    linear_decay,
    query_metric,
    task_loss,
)


@dataclasses.dataclass
class ReptileConfig(EpisodicConfig):
    """Reptile settings."""

    inner_lr: float = 0.05
    """Inner-loop SGD step size."""
    inner_steps: int = 5
    """Inner SGD steps per task during meta-training."""
    eval_inner_steps: int = 10
    """Inner steps at evaluation; ``evaluate`` reports steps 0..this."""
    outer_lr: float = 1.0
    """ε, the fraction of the way θ moves toward the mean adapted weights."""
    anneal_steps: int = 0
    """Linearly anneal ε to 0 over this many meta-steps, as in the paper (0 = constant)."""
    inner_on_query: bool = True
    """Train the inner loop on support + query examples (False: support only)."""
    inner_batch: int = 0
    """Examples per inner step, drawn without replacement from a fresh permutation of the
    task's training examples (cycling when the steps outrun it); 0 = all of them every
    step. The paper trains Omniglot with 10 training shots per class and inner batches of
    10 (``--train-shots 10 --inner-batch 10``): cheap steps, many meta-iterations."""
    hidden: int = 64
    """Conv-4 filters per block."""
    mlp_hidden: tuple[int, ...] = (40, 40)
    """Hidden sizes of the MLP used for vector inputs (sinusoid regression)."""

    def __post_init__(self) -> None:
        check_positive(self, "meta_batch", "inner_lr", "outer_lr", "hidden", "inner_steps")
        check_positive(self, "eval_inner_steps", "anneal_steps", "inner_batch", allow_zero=True)
        self.mlp_hidden = tuple(int(h) for h in self.mlp_hidden)


class Reptile(FewShotLearner):
    """Reptile with plain-SGD inner loops and an SGD outer step of size ε."""

    config_cls = ReptileConfig
    description = "Reptile: first-order meta-learning, θ moves toward task-adapted weights"
    gradient_based = True

    def __init__(
        self,
        config: ReptileConfig,
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
        ).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.outer_lr)
        self.scheduler = linear_decay(self.optimizer, config.anneal_steps)

    @property
    def model(self) -> nn.Module:
        """The network whose initial weights θ are meta-learned."""
        return self.nets["model"]

    def eval_lr(self) -> float:
        """The inner step size used at evaluation."""
        return self.config.inner_lr

    def inner_loss(self, params: fn.Params, data: tuple[Tensor, Tensor]) -> Tensor:
        """Training loss of one task at ``params``."""
        x, y = data
        return task_loss(fn.forward(self.model, params, x), y, self.regression)

    def meta_train_step(self, batch: Any, generator: torch.Generator) -> dict[str, float]:
        """Adapts to every task of the batch and moves θ toward the mean adapted weights."""
        self.nets.train()
        theta = fn.params_of(self.model)
        tasks = batch.support_x.shape[0]
        mean_fast = {k: torch.zeros_like(v) for k, v in theta.items()}
        losses = []
        with torch.no_grad():
            for t in range(tasks):
                x, y = batch.support_x[t], batch.support_y[t]
                if self.config.inner_on_query:
                    x = torch.cat([x, batch.query_x[t]])
                    y = torch.cat([y, batch.query_y[t]])
                fast = self._adapt_minibatched(theta, x, y, generator)
                losses.append(self.inner_loss(fast, (x, y)))
                for k in mean_fast:
                    mean_fast[k] += fast[k] / tasks
            for k, p in theta.items():
                p.grad = p - mean_fast[k]  # pseudo-gradient: an SGD step of ε moves θ by ε·Δ
        grad_norm = float(
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in theta.values()]))
        )
        self.optimizer.step()
        self.scheduler.step()
        self.steps_done += 1
        return {
            "loss": float(torch.stack(losses).mean()),
            "grad_norm": grad_norm,
            "outer_lr": float(self.optimizer.param_groups[0]["lr"]),
        }

    def _adapt_minibatched(
        self, theta: fn.Params, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> fn.Params:
        """``inner_steps`` SGD steps on one task, on ``inner_batch``-sized minibatches."""
        cfg = self.config
        n = x.shape[0]
        if not cfg.inner_batch or cfg.inner_batch >= n:
            return fn.adapt(self.inner_loss, theta, (x, y), steps=cfg.inner_steps, lr=cfg.inner_lr)
        # Enough permutations for every step; each step takes the next slice.
        rounds = -(-cfg.inner_steps * cfg.inner_batch // n)
        order = torch.cat(
            [torch.randperm(n, generator=generator, device=generator.device) for _ in range(rounds)]
        ).to(x.device)
        fast = theta
        for step in range(cfg.inner_steps):
            idx = order[step * cfg.inner_batch : (step + 1) * cfg.inner_batch]
            fast = fn.adapt(self.inner_loss, fast, (x[idx], y[idx]), steps=1, lr=cfg.inner_lr)
        return fast

    @torch.no_grad()
    def evaluate(self, batch: Any) -> dict[int, Tensor]:
        """Query accuracy (MSE) per task after 0..``eval_inner_steps`` SGD steps on support."""
        self.nets.eval()
        steps = self.config.eval_inner_steps
        theta = fn.params_of(self.model, detach=True)
        results = torch.zeros(steps + 1, batch.support_x.shape[0], device=self.device)
        for t in range(batch.support_x.shape[0]):
            support = (batch.support_x[t], batch.support_y[t])
            fast = theta
            for step in range(steps + 1):
                if step > 0:
                    fast = fn.adapt(
                        self.inner_loss, fast, support, steps=1, lr=self.config.inner_lr
                    )
                out = fn.forward(self.model, fast, batch.query_x[t])
                results[step, t] = query_metric(out, batch.query_y[t], self.regression)
        return {step: results[step] for step in range(steps + 1)}

    def extra_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
