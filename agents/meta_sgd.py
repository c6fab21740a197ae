"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML-TRPO with a learned inner step size per weight.

The inner update is ``φ = θ − α ⊙ ∇_θ L(θ)`` with ``α`` a tensor of the shape of every
parameter (including the log-std), initialised to ``fast_lr``. α is meta-learned together
with θ: it is part of the TRPO parameter vector, so the outer step's gradient, the KL's
Hessian (which gains the ``∂φ/∂α = −diag(∇L)`` block) and the line search all cover
``(θ, α)``. Everything else is :class:`agents.maml.MAMLTRPO`; the inner update is the same
:mod:`agents.functional` code with ``lr`` a dict of tensors. With ``learn_alpha=False``
α stays at ``fast_lr`` and Meta-SGD computes exactly what MAML-TRPO does.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from agents.functional import LearningRate, Params, safe_key
from agents.maml import MAMLTRPO, MAMLTRPOConfig


@dataclasses.dataclass
class MetaSGDConfig(MAMLTRPOConfig):
    """Meta-SGD settings: MAML-TRPO's (``fast_lr`` is α's initial value) plus ``learn_alpha``."""

    learn_alpha: bool = True
    """Meta-learn α with θ in the TRPO step; False keeps α = fast_lr (then it is MAML)."""


class MetaSGD(MAMLTRPO):
    """MAML-TRPO with a meta-learned per-parameter inner step size α."""

    config_cls = MetaSGDConfig
    description = "Meta-SGD: MAML-TRPO with a meta-learned per-parameter inner step size"
    default_name = "meta-sgd"

    def _make_alpha(self) -> nn.ParameterDict:
        cfg = self.config
        # A ParameterDict (dots are not allowed in its keys: safe_key) so that α is saved
        # in the checkpoint next to θ.
        return nn.ParameterDict(
            {
                safe_key(name): nn.Parameter(
                    torch.full_like(p.detach(), float(cfg.fast_lr)), requires_grad=cfg.learn_alpha
                )
                for name, p in self.net.named_parameters()
            }
        )

    def inner_lr(self) -> LearningRate:
        return {name: self.alpha[safe_key(name)] for name, _ in self.net.named_parameters()}

    def learned_alpha(self) -> Params | None:
        return self.inner_lr() if self.config.learn_alpha else None

    def _alpha_metrics(self) -> dict[str, float]:
        flat = torch.cat([a.detach().reshape(-1) for a in self.alpha.values()])
        return {
            "alpha_mean": float(flat.mean()),
            "alpha_min": float(flat.min()),
            "alpha_max": float(flat.max()),
        }
