"""Policy-gradient core: advantages (GAE), VPG, PPO and TRPO."""

from metarl.pg.advantages import discounted_returns, gae, next_values
from metarl.pg.ppo import masked_mean, minibatch_rows, ppo_policy_loss
from metarl.pg.trpo import TRPOResult, conjugate_gradient, trpo_step
from metarl.pg.vpg import surrogate_loss, vpg_loss

__all__ = [
    "TRPOResult",
    "conjugate_gradient",
    "discounted_returns",
    "gae",
    "masked_mean",
    "minibatch_rows",
    "next_values",
    "ppo_policy_loss",
    "surrogate_loss",
    "trpo_step",
    "vpg_loss",
]
