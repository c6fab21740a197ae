"""MAML-TRPO (Finn, Abbeel & Levine, ICML 2017): meta-learn an initialisation θ such that one
(or a few) vanilla policy-gradient steps on a new task give a good policy for that task.

One meta-iteration on a batch of ``meta_batch_size`` tasks:

1. **Pre-update sampling.** Every task gets ``trajectories_per_task`` rows of the batched
   env, task-major (task ``i`` owns rows ``i*R .. (i+1)*R - 1``), each row a one-episode
   trial under the policy at θ.
2. **Inner step.** Per task: a linear feature baseline (:mod:`agents.linear_baseline`) is
   fitted to the task's discounted returns, advantages are GAE(γ, λ) against it and
   standardised per task (rllab's ``center_adv``), and the fast weights are
   ``φ_i = θ − α ∇_θ L_i(θ)`` with the REINFORCE loss ``L_i = −mean_t A_t log π_θ(a_t|s_t)``.
   The update is :func:`agents.functional.adapt_batched`, the same functional code the
   few-shot classifiers use; Meta-SGD passes a learned per-parameter α as ``lr``.
3. **Post-update sampling** with every task's fast weights, all tasks in one batched
   forward (:class:`FastWeightPolicy`).
4. **Outer TRPO step** on the post-update surrogate ``mean_i mean_t π_φi(θ)/π_old · A``,
   under the trust region ``mean_i KL(π_φi(θ_old) ‖ π_φi(θ)) ≤ max_kl``; both are functions of
   θ *through the inner step*. The policy gradient is the exact second-order meta-gradient
   (autograd through the differentiable inner update). Conjugate gradient needs products
   with the Hessian of the KL, also taken through the inner step (see below). A line search
   keeps only a finite, improving step inside the trust region; otherwise θ is left as it
   was and the iteration says so (``trpo_accepted = 0``, a reason code and a log line).

**Hessian-vector products.** At θ_old the KL's gradient with respect to the fast weights is
zero, so its Hessian with respect to θ is *exactly* ``Jᵀ F J``: ``J = ∂φ/∂θ`` the Jacobian
of the inner update and ``F`` the Fisher matrix of the post-update policy at φ (the KL's
Hessian in φ). For an SGD inner step ``J = I − α H_in`` with ``H_in`` the Hessian of the
inner loss, so ``Jv`` and ``Jᵀw`` are Hessian-vector products of the inner loss (double
backprop through its gradient) and ``F u`` one of the KL at φ. ``hvp = "gauss-newton"``
(default) composes these; it equals double-backpropagating the KL through the whole inner
update (``hvp = "autograd"``, kept as the reference; tests check they agree to float64
rounding and against finite differences) and is about 1.7× faster because it never
differentiates the terms that vanish at θ_old. With several inner steps ``J`` is the
product of the per-step Jacobians. ``hvp_subsample < 1`` (rllab's ``subsample_factor``)
evaluates these products on a strided subset of every task's time steps: the gradient,
the inner update, the trust-region check and the line search stay exact; only CG's
curvature matrix is estimated.

**Design choices** (checked against cbfinn/maml_rl and tristandeleu/pytorch-maml-rl):

* Policy: Gaussian MLP with two hidden layers of 100 units and **ReLU**, state-independent
  learned log-std (initial std 1), Xavier-uniform weights and zero biases: the paper's two
  100-unit layers, with the nonlinearity of the paper's code (maml_rl's
  ``maml_trpo_point.py`` and ``cluster_maml_trpo_{cheetah,ant}.py`` all pass
  ``hidden_nonlinearity=tf.nn.relu, hidden_sizes=(100,100)``). pytorch-maml-rl's configs use
  tanh with 64×64 (2D navigation, HalfCheetah). ``algo.activation=tanh`` is available.
  On ``Discrete`` action spaces (bandits, tabular MDPs, the maze) the same MLP gives the
  logits of a categorical policy (:class:`CategoricalMLP`, as pytorch-maml-rl does for its
  bandit and tabular-MDP tasks); the inner loss, the surrogate, the KL and its curvature
  only go through :class:`PolicyMLP`'s distribution methods, so nothing else changes. A
  "trajectory" is one row of the collector, i.e. one trial of ``trial.episodes`` episodes
  (a 10-pull bandit trial is one trajectory), and returns are reported per episode.
* Action scaling: maml_rl wraps every env in rllab's ``normalize``, so the Gaussian lives
  in ``[-1, 1]`` and actions are affinely mapped to the Box (and clipped by the env). For
  the MuJoCo envs the Box is ``[-1, 1]`` already; for 2D navigation it is ``[-0.1, 0.1]``.
  ``normalize_actions`` keeps this (the inner step's size α = 0.1 is tuned for it).
* Baseline and advantages: per-task linear feature baseline, GAE with λ = 1, γ = 0.99,
  per-task standardised advantages; the horizon is part of the task (the objective is the
  H-step return and the baseline sees time), so time-limit ends are not bootstrapped,
  as in rllab and pytorch-maml-rl. The baseline is fitted on the task's own batch before
  predicting it (pytorch-maml-rl); rllab predicted with the previous batch's fit.
* TRPO settings from rllab's ``ConjugateGradientOptimizer``: 10 CG iterations, damping
  1e-5, backtracking ratio 0.8, 15 backtracks, accept iff the surrogate improves and the
  mean KL ≤ δ = 0.01. rllab approximates Hessian-vector products by finite differences of
  the KL gradient; here they are exact.
* Multiple inner steps collect fresh trajectories with the current fast weights before
  each step (maml_rl, pytorch-maml-rl); the sampling distribution's dependence on θ is
  ignored, as in the paper.

Example:
    >>> import torch
    >>> from envs.nav2d import Nav2DDistribution
    >>> from metarl.problem import RLProblem
    >>> problem = RLProblem(Nav2DDistribution(horizon=10), episodes=1)
    >>> cfg = MAMLTRPOConfig(meta_batch_size=2, trajectories_per_task=3, hidden_sizes=(8,))
    >>> learner = MAMLTRPO(problem, cfg)
    >>> tasks = problem.sample_train_tasks(2, seed=0, iteration=0)
    >>> metrics = learner.train_iteration(tasks, torch.Generator().manual_seed(0))
    >>> metrics["return"] < 0
    True
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.functional import (
    LearningRate,
    Params,
    adapt,
    adapt_batched,
    inner_gradients,
    num_tasks,
    task_slice,
)
from agents.linear_baseline import linear_baseline_values
from metarl.batch import TrajectoryBatch
from metarl.learner import Curve, IncompatibleEnvError, Learner, check_finite
from metarl.pg import conjugate_gradient, gae, next_values
from metarl.pg.trpo import TRPOResult, get_flat, set_flat
from metarl.policy import PolicyStep, StepInput
from metarl.problem import RLProblem
from metarl.tasks import TaskBatch

ACTIVATIONS = ("relu", "tanh")
HVP_METHODS = ("gauss-newton", "autograd")
INNER_METHODS = ("loop", "vmap", "func")
BASELINES = ("random", "pretrained", "oracle", "sb3-ppo")
#: Why a TRPO step was rejected, as a number for the metrics (0: accepted).
REJECT_CODES = {
    "": 0,
    "non-finite surrogate loss": 1,
    "non-finite policy gradient": 2,
    "degenerate Fisher matrix": 3,
    "line search found no improving step": 4,
}
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ============================================================================ config
@dataclasses.dataclass
class MAMLTRPOConfig:
    """MAML-TRPO settings; defaults are the paper's locomotion settings (Finn et al. 2017)."""

    meta_batch_size: int = 40
    """Tasks per meta-iteration (paper: 40 for locomotion, 20 for 2D navigation)."""
    trajectories_per_task: int = 20
    """Trajectories sampled per task for each inner step and for the post-update batch."""
    inner_steps: int = 1
    """Inner policy-gradient steps per task during meta-training (paper: 1)."""
    fast_lr: float = 0.1
    """Inner step size α (paper: 0.1). Meta-SGD: the initial value of every entry of α."""
    first_order: bool = False
    """First-order MAML: treat the inner gradient as a constant of θ (no second order)."""
    hidden_sizes: tuple[int, ...] = (100, 100)
    """Hidden layer widths of the MLP policy (paper: 100, 100)."""
    activation: str = "relu"
    """Hidden nonlinearity, ``relu`` (the paper's code, maml_rl) or ``tanh`` (pytorch-maml-rl)."""
    init_log_std: float = 0.0
    """Initial log standard deviation of the Gaussian policy (rllab: std 1); Box actions
    only."""
    normalize_actions: bool = True
    """Gaussian in [-1, 1], mapped affinely to the action Box (rllab's ``normalize``); Box
    actions only."""
    gamma: float = 0.99
    """Discount of returns and advantages."""
    gae_lambda: float = 1.0
    """GAE λ (paper: 1, i.e. Monte-Carlo returns minus the baseline)."""
    baseline_reg: float = 1e-5
    """Ridge coefficient of the linear feature baseline (rllab: 1e-5)."""
    normalize_advantages: bool = True
    """Standardise advantages per task and batch (rllab's ``center_adv``)."""
    max_kl: float = 0.01
    """TRPO trust region δ on the mean KL of the post-update policies (paper: 0.01)."""
    cg_iters: int = 10
    """Conjugate-gradient iterations (rllab: 10)."""
    damping: float = 1e-5
    """Damping added to the KL Hessian in CG (rllab ``reg_coeff``, pytorch-maml-rl: 1e-5)."""
    ls_backtrack_ratio: float = 0.8
    """Line-search step shrink factor (rllab: 0.8)."""
    ls_max_steps: int = 15
    """Line-search trials before the step is rejected (rllab: 15)."""
    hvp: str = "gauss-newton"
    """KL Hessian-vector products: ``gauss-newton`` (exact Jᵀ F J, faster) or ``autograd``
    (double backprop of the KL through the inner update; reference)."""
    hvp_subsample: float = 1.0
    """Fraction of each task's time steps used in CG's Hessian-vector products (1: exact,
    all data; 0.2 = every 5th step). The gradient and line search always use all data."""
    inner_method: str = "loop"
    """Batching of the differentiable inner update (``agents.functional`` method):
    ``loop``, ``vmap`` or ``func``; all exact, ``loop`` is fastest on the CPU."""
    eval_steps: int = 3
    """Gradient steps measured at meta-test (curve x = 0 .. eval_steps)."""
    eval_trajectories: int = 0
    """Trajectories per task and step at meta-test, for the learner and the fine-tuned
    baselines alike (0: ``trajectories_per_task``). The MAML authors' 2D-navigation test
    script adapts on 40 (a VPG batch of 4,000 steps) after training with 20."""
    eval_lr_scale: float | tuple[float, ...] = 1.0
    """Factor on the inner step size at meta-test (``fast_lr``, or Meta-SGD's learned α),
    for the learner and the fine-tuned baselines alike: one number for every step, or one
    per step with the last repeated (``[1.0, 0.5]``: the training step size for the first
    step, half of it for the later ones, as in the MAML authors' 2D-navigation test script,
    which also adapts on 40 trajectories per step)."""
    eval_baselines: tuple[str, ...] = BASELINES
    """Baselines ``metarl eval`` adds: ``random``, ``pretrained``, ``oracle``, ``sb3-ppo``."""
    random_inits: int = 8
    """Initialisations the ``random`` baseline averages over, each fine-tuned on an equal
    share of the meta-test tasks: how fast one random policy improves depends strongly on
    its draw."""
    baseline_iterations: int = 50
    """TRPO iterations for the ``pretrained`` and ``oracle`` baselines."""
    baseline_trajectories: int = 200
    """Trajectories (each on a fresh task) per TRPO iteration of those baselines."""
    sb3_tasks: int = 2
    """Held-out tasks on which the ``sb3-ppo`` baseline learns from scratch."""
    sb3_timesteps: int = 20000
    """Env steps of SB3 PPO training per ``sb3-ppo`` task."""

    def eval_lr_scale_at(self, step: int) -> float:
        """``eval_lr_scale`` of meta-test inner step ``step`` (0: the first update)."""
        if isinstance(self.eval_lr_scale, tuple):
            return self.eval_lr_scale[min(step, len(self.eval_lr_scale) - 1)]
        return float(self.eval_lr_scale)

    @property
    def meta_test_trajectories(self) -> int:
        """Trajectories per task and step at meta-test: ``eval_trajectories`` if set, else
        ``trajectories_per_task``."""
        return self.eval_trajectories or self.trajectories_per_task

    def __post_init__(self) -> None:
        self.hidden_sizes = tuple(int(h) for h in self.hidden_sizes)
        self.eval_baselines = tuple(self.eval_baselines)
        positive = (
            "meta_batch_size",
            "trajectories_per_task",
            "max_kl",
            "cg_iters",
            "ls_max_steps",
            "random_inits",
            "baseline_iterations",
            "baseline_trajectories",
            "sb3_tasks",
            "sb3_timesteps",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"algo.{name} must be > 0, got {getattr(self, name)}")
        if self.inner_steps < 1:
            raise ValueError(f"algo.inner_steps must be >= 1, got {self.inner_steps}")
        if self.eval_steps < 0:
            raise ValueError(f"algo.eval_steps must be >= 0, got {self.eval_steps}")
        if self.eval_trajectories < 0:
            raise ValueError(f"algo.eval_trajectories must be >= 0, got {self.eval_trajectories}")
        scales = (
            [self.eval_lr_scale]
            if isinstance(self.eval_lr_scale, int | float)
            else list(self.eval_lr_scale)
        )
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in scales)
        if not numbers or not scales or not all(0 < x < float("inf") for x in scales):
            raise ValueError(
                f"algo.eval_lr_scale must be a positive number or a non-empty list of them, "
                f"got {self.eval_lr_scale}"
            )
        if not isinstance(self.eval_lr_scale, int | float):
            self.eval_lr_scale = tuple(float(x) for x in scales)
        if any(h < 1 for h in self.hidden_sizes):
            raise ValueError(f"algo.hidden_sizes must be >= 1, got {list(self.hidden_sizes)}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("algo.gamma and algo.gae_lambda must lie in [0, 1]")
        if not 0 < self.ls_backtrack_ratio < 1:
            raise ValueError(
                f"algo.ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio}"
            )
        if self.damping < 0 or self.baseline_reg < 0:
            raise ValueError("algo.damping and algo.baseline_reg must be >= 0")
        if not 0 < self.hvp_subsample <= 1:
            raise ValueError(f"algo.hvp_subsample must be in (0, 1], got {self.hvp_subsample}")
        for name, value, options in (
            ("activation", self.activation, ACTIVATIONS),
            ("hvp", self.hvp, HVP_METHODS),
            ("inner_method", self.inner_method, INNER_METHODS),
        ):
            if value not in options:
                raise ValueError(f"algo.{name} must be one of {', '.join(options)}, got {value!r}")
        unknown = [b for b in self.eval_baselines if b not in BASELINES]
        if unknown:
            raise ValueError(
                f"algo.eval_baselines: unknown {unknown[0]!r} (known: {', '.join(BASELINES)})"
            )
        if self.hvp == "autograd" and self.hvp_subsample < 1:
            raise ValueError("algo.hvp_subsample < 1 needs algo.hvp=gauss-newton")


# ============================================================================ policy
def _linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    # Per-task weights [n, out, in] against per-task inputs [n, rows, in]: one batched GEMM.
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


class PolicyMLP(nn.Module):
    """An MLP evaluated as a pure function of a parameter dict; the MAML policies' base.

    :meth:`output` is a pure function of a parameter dict, so the same module evaluates θ,
    one task's fast weights, or all tasks' fast weights at once: with a leading task
    dimension on every parameter (``[n, out, in]``) and inputs ``[n, rows, obs]`` each
    layer is one batched GEMM. Subclasses say what the output parameterises (a Gaussian's
    mean, a categorical's logits) and supply that distribution's log-probability, KL and
    sampling, which is all the inner loss, the TRPO step and the collector need.

    Args:
        obs_size: Flat observation size.
        out_size: Output size (action dims, or number of actions).
        hidden_sizes: Hidden widths.
        activation: ``relu`` or ``tanh``.
    """

    #: Whether actions are integers (categorical) rather than vectors (Gaussian).
    discrete: bool = False

    def __init__(
        self,
        obs_size: int,
        out_size: int,
        hidden_sizes: Sequence[int] = (100, 100),
        activation: str = "relu",
    ):
        super().__init__()
        sizes = [obs_size, *hidden_sizes, out_size]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        for layer in self.layers:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.activation = activation
        self._act = torch.relu if activation == "relu" else torch.tanh
        self._names = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(len(self.layers))]

    def output(self, params: Mapping[str, Tensor], obs: Tensor) -> Tensor:
        """The last layer's output ``[..., out_size]`` under ``params`` (class docstring)."""
        h = obs
        last = len(self._names) - 1
        for i, (w, b) in enumerate(self._names):
            h = _linear(h, params[w], params[b])
            if i < last:
                h = self._act(h)
        return h

    def forward(self, obs: Tensor) -> Tensor:
        return self.output(dict(self.named_parameters()), obs)

    # The distribution, given ``out = output(params, obs)``. ``params`` may carry a task
    # dim (``out`` is then ``[n, rows, ...]``).
    def log_prob(self, params: Mapping[str, Tensor], out: Tensor, action: Tensor) -> Tensor:
        """Log-probability of ``action`` per row."""
        raise NotImplementedError

    def snapshot(self, params: Mapping[str, Tensor], out: Tensor) -> tuple[Tensor, ...]:
        """The distribution, detached (and cloned), as the "old" side of :meth:`kl`."""
        raise NotImplementedError

    def kl(self, old: tuple[Tensor, ...], params: Mapping[str, Tensor], out: Tensor) -> Tensor:
        """``KL(old ‖ new)`` per row, ``old`` from :meth:`snapshot`."""
        raise NotImplementedError

    def row_scale(self, weights: Mapping[str, Tensor], per_task: bool, r: int) -> Tensor | None:
        """Per-row data :meth:`sample` needs besides ``out`` (the Gaussian's log-std, rows
        of task ``i`` at ``i*r ..``), or None."""
        return None

    def sample(
        self, out: Tensor, scale: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """(action, log-probability) per row of ``out [B, out_size]``."""
        raise NotImplementedError


class GaussianMLP(PolicyMLP):
    """MLP mean and state-independent log-std: the MAML policy for Box actions.

    Args:
        obs_size: Flat observation size.
        action_size: Flat action size.
        hidden_sizes: Hidden widths.
        activation: ``relu`` or ``tanh``.
        init_log_std: Initial log-std.
    """

    def __init__(
        self,
        obs_size: int,
        action_size: int,
        hidden_sizes: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_log_std: float = 0.0,
    ):
        super().__init__(obs_size, action_size, hidden_sizes, activation)
        self.log_std = nn.Parameter(torch.full((action_size,), float(init_log_std)))

    def mean(self, params: Mapping[str, Tensor], obs: Tensor) -> Tensor:
        """Action mean ``[..., action_size]`` under ``params`` (same as :meth:`output`)."""
        return self.output(params, obs)

    def log_prob(self, params: Mapping[str, Tensor], out: Tensor, action: Tensor) -> Tensor:
        return gaussian_log_prob(out, params["log_std"], action)

    def snapshot(self, params: Mapping[str, Tensor], out: Tensor) -> tuple[Tensor, ...]:
        # clone: with no inner step the log-std is the live parameter, which the line
        # search updates in place.
        return out.detach(), params["log_std"].detach().clone()

    def kl(self, old: tuple[Tensor, ...], params: Mapping[str, Tensor], out: Tensor) -> Tensor:
        return gaussian_kl(old[0], old[1], out, params["log_std"])

    def row_scale(self, weights: Mapping[str, Tensor], per_task: bool, r: int) -> Tensor | None:
        return weights["log_std"].repeat_interleave(r, 0) if per_task else weights["log_std"]

    def sample(
        self, out: Tensor, scale: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        assert scale is not None
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        u = out + noise * torch.exp(scale)
        return u, (-0.5 * noise * noise - scale - _LOG_SQRT_2PI).sum(-1)


class CategoricalMLP(PolicyMLP):
    """MLP logits over ``Discrete(n)`` actions: the MAML policy for bandits, tabular MDPs
    and the maze (as in pytorch-maml-rl's categorical MLP policy).

    Args:
        obs_size: Flat observation size.
        num_actions: Number of actions ``n``.
        hidden_sizes: Hidden widths.
        activation: ``relu`` or ``tanh``.
    """

    discrete = True

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        hidden_sizes: Sequence[int] = (100, 100),
        activation: str = "relu",
    ):
        super().__init__(obs_size, num_actions, hidden_sizes, activation)

    def log_prob(self, params: Mapping[str, Tensor], out: Tensor, action: Tensor) -> Tensor:
        logp = torch.log_softmax(out, dim=-1)
        return logp.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def snapshot(self, params: Mapping[str, Tensor], out: Tensor) -> tuple[Tensor, ...]:
        return (torch.log_softmax(out.detach(), dim=-1),)

    def kl(self, old: tuple[Tensor, ...], params: Mapping[str, Tensor], out: Tensor) -> Tensor:
        (old_logp,) = old
        return (old_logp.exp() * (old_logp - torch.log_softmax(out, dim=-1))).sum(-1)

    def sample(
        self, out: Tensor, scale: Tensor | None, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        logp = torch.log_softmax(out, dim=-1)
        # Inverse CDF with the caller's generator (torch.distributions would use the
        # global RNG); clamped because the CDF's last entry can round below u.
        u = torch.rand(out.shape[:-1], generator=generator, device=out.device, dtype=out.dtype)
        action = (logp.exp().cumsum(-1) < u.unsqueeze(-1)).sum(-1).clamp_max(out.shape[-1] - 1)
        return action, logp.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def gaussian_log_prob(mean: Tensor, log_std: Tensor, x: Tensor) -> Tensor:
    """Diagonal Gaussian log-density of ``x`` (summed over the last dim).

    ``log_std`` is ``[d]``, or ``[n, d]`` per task against ``mean`` ``[n, rows, d]``.
    """
    if log_std.dim() > 1:
        log_std = log_std.unsqueeze(-2)
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z * z - log_std - _LOG_SQRT_2PI).sum(-1)


def gaussian_kl(old_mean: Tensor, old_log_std: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """``KL(N(old) ‖ N(new))`` per row, summed over action dims (shapes as above)."""
    if log_std.dim() > 1:
        log_std = log_std.unsqueeze(-2)
    if old_log_std.dim() > 1:
        old_log_std = old_log_std.unsqueeze(-2)
    var_ratio = torch.exp(2 * (old_log_std - log_std))
    diff = (old_mean - mean) * torch.exp(-log_std)
    return (log_std - old_log_std + 0.5 * (var_ratio + diff * diff) - 0.5).sum(-1)


@dataclasses.dataclass
class _Chunk:
    """The rows one ``Collector.collect`` call acts for (a :class:`FastWeightPolicy` state)."""

    weights: Params
    scale: Tensor | None  # PolicyMLP.row_scale of the chunk's rows
    first_task: int
    offset: int
    rows: int
    aligned: bool


class FastWeightPolicy:
    """Acts with per-task weights, all tasks in one batched forward per step.

    Rows are task-major: row ``r`` belongs to task ``r // rows_per_task``. The collector
    calls :meth:`initial_state` once per ``collect`` call, chunk after chunk in row order
    (``RLProblem`` splits wide task sets into chunks); the policy counts rows there, so it
    knows which tasks a chunk's rows belong to, even when a chunk starts or ends inside a
    task. Call :meth:`reset_rows` before each ``RLProblem.collect``.

    Args:
        net: The policy network.
        params: Either shared weights (no task dim) or per-task weights ``[n, ...]``.
        rows_per_task: Rows (trajectories) per task.
        action_center: Center of the action Box (actions are ``center + half * u``);
            unused for a categorical policy.
        action_half: Half-width of the action Box (1 when not normalising).
        task_features: Optional ``tasks -> [rows, k]`` features appended to observations
            (the task-conditioned ``oracle`` baseline).
    """

    def __init__(
        self,
        net: PolicyMLP,
        params: Mapping[str, Tensor],
        rows_per_task: int,
        action_center: Tensor,
        action_half: Tensor,
        task_features: Callable[[Any], Tensor] | None = None,
    ):
        self.net = net
        self.params = {k: v.detach() for k, v in params.items()}
        self.per_task = _per_task(self.params)
        self.rows_per_task = rows_per_task
        self.center = action_center
        self.half = action_half
        self.task_features = task_features
        self._features: Tensor | None = None
        self._zeros: Tensor | None = None  # the value output (no critic), reused per step
        self.rows_seen = 0

    def reset_rows(self) -> None:
        self.rows_seen = 0

    def set_tasks(self, tasks: Any) -> None:
        """Stores the chunk's task features (only used with ``task_features``)."""
        if self.task_features is not None:
            self._features = self.task_features(tasks)

    def initial_state(self, num_rows: int, device: torch.device) -> _Chunk:
        first = self.rows_seen
        self.rows_seen += num_rows
        if not self.per_task:
            scale = self.net.row_scale(self.params, False, 1)
            return _Chunk(self.params, scale, 0, 0, num_rows, True)
        r = self.rows_per_task
        t0, offset = divmod(first, r)
        n = -(-(offset + num_rows) // r)
        tasks = _num_weight_tasks(self.params)
        if t0 + n > tasks:
            raise ValueError(
                f"rows {first}..{first + num_rows - 1} exceed the {tasks} tasks of this policy"
            )
        weights = {k: v[t0 : t0 + n] for k, v in self.params.items()}
        scale = self.net.row_scale(weights, True, r)
        if scale is not None:
            scale = scale[offset : offset + num_rows]
        aligned = offset == 0 and num_rows == n * r
        return _Chunk(weights, scale, t0, offset, num_rows, aligned)

    def step(self, inp: StepInput, state: _Chunk, generator: torch.Generator) -> PolicyStep:
        b = inp.obs.shape[0]
        obs = inp.obs.reshape(b, -1).to(self.params["layers.0.weight"].dtype)
        if self._features is not None:
            obs = torch.cat([obs, self._features.to(obs)], dim=-1)
        if not self.per_task:
            out = self.net.output(state.weights, obs)
        else:
            n, r = _num_weight_tasks(state.weights), self.rows_per_task
            if state.aligned:
                out = self.net.output(state.weights, obs.view(n, r, -1)).reshape(b, -1)
            else:
                # The chunk cuts through a task: pad it to whole tasks for the batched GEMM.
                padded = obs.new_zeros(n * r, obs.shape[-1])
                padded[state.offset : state.offset + b] = obs
                full = self.net.output(state.weights, padded.view(n, r, -1)).reshape(n * r, -1)
                out = full[state.offset : state.offset + b]
        u, log_prob = self.net.sample(out, state.scale, generator)
        if self.net.discrete:
            action = u
        else:
            action = (self.center + self.half * u).view(b, *self.center.shape)
        if self._zeros is None or self._zeros.shape[0] != b:
            self._zeros = torch.zeros(b, device=out.device, dtype=out.dtype)
        return PolicyStep(action, log_prob, self._zeros, state)


# ============================================================================ data
class TaskData(NamedTuple):
    """One batch of per-task (or per-group) training data, ``[n, rows, ...]``.

    A task's trajectories are laid out trajectory-major (row ``j * T + t``), so a stride
    over rows keeps every trajectory. Padding steps have zero weight.

    Attributes:
        obs: Observations ``[n, M, obs]`` (plus task features for the oracle).
        action: Gaussian samples in the policy's (normalised) action space ``[n, M, d]``,
            or action indices ``[n, M]`` (long) for a categorical policy.
        advantage: ``[n, M]``.
        weight: ``valid / (valid steps of the task)``, ``[n, M]``: each task's rows sum to 1,
            so ``(x * weight).sum(-1)`` is the task's mean over its valid steps.
    """

    obs: Tensor
    action: Tensor
    advantage: Tensor
    weight: Tensor

    def subsample(self, stride: int) -> TaskData:
        """Every ``stride``-th row of every task, weights renormalised."""
        if stride <= 1:
            return self
        weight = self.weight[:, ::stride]
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-12)
        return TaskData(
            self.obs[:, ::stride], self.action[:, ::stride], self.advantage[:, ::stride], weight
        )


def repeat_tasks(tasks: Any, k: int) -> Any:
    """Each task repeated ``k`` times in a row (task-major rows)."""
    if isinstance(tasks, TaskBatch):
        return tasks[torch.arange(len(tasks)).repeat_interleave(k)]
    return [t for t in tasks for _ in range(k)]


def task_features(tasks: Any) -> Tensor:
    """Task parameters as a float matrix ``[n, k]`` (the ``oracle`` baseline's extra input).

    Supports :class:`~metarl.tasks.TaskBatch` (all fields, flattened per task), sequences of
    mappings (values by sorted key, e.g. ``{"direction": 1.0}``) and of numbers or arrays.

    Raises:
        TypeError: For tasks of another form.
    """
    if isinstance(tasks, TaskBatch):
        fields = [getattr(tasks, f.name) for f in dataclasses.fields(tasks)]
        return torch.cat([f.reshape(len(tasks), -1).float() for f in fields], dim=-1).cpu()
    rows = []
    for task in tasks:
        if isinstance(task, TaskBatch):
            rows.append(task_features(task)[0])
        elif isinstance(task, Mapping):
            rows.append(torch.tensor([float(task[k]) for k in sorted(task)]))
        else:
            try:
                rows.append(torch.as_tensor(np.asarray(task, dtype=np.float32)).reshape(-1))
            except (TypeError, ValueError):
                raise TypeError(f"cannot turn task {task!r} into features") from None
    return torch.stack(rows).float()


class TaskSampler:
    """Collects task-major trajectories with a :class:`PolicyMLP` and prepares them.

    Args:
        problem: The RL problem.
        config: Discounting, baseline and advantage settings.
    """

    def __init__(self, problem: RLProblem, config: MAMLTRPOConfig):
        self.problem = problem
        self.config = config
        space = problem.action_space
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if self.discrete:
            # Integer actions: no Box to map to; the centre/half are never used.
            self.center = self.half = torch.zeros((), device=problem.device)
            return
        low = torch.as_tensor(np.asarray(space.low, dtype=np.float32)).reshape(-1)
        high = torch.as_tensor(np.asarray(space.high, dtype=np.float32)).reshape(-1)
        finite = bool(torch.isfinite(low).all() and torch.isfinite(high).all())
        if config.normalize_actions and finite:
            self.center, self.half = (high + low) / 2, (high - low) / 2
        else:
            self.center, self.half = torch.zeros_like(low), torch.ones_like(low)
        self.center = self.center.to(problem.device).view(space.shape)
        self.half = self.half.to(problem.device).view(space.shape)

    def collect(
        self,
        net: PolicyMLP,
        params: Mapping[str, Tensor],
        tasks: Any,
        rows_per_task: int,
        generator: torch.Generator,
        features: Callable[[Any], Tensor] | None = None,
    ) -> TrajectoryBatch:
        """``rows_per_task`` one-trial rows per task, task-major."""
        policy = FastWeightPolicy(
            net, params, rows_per_task, self.center, self.half, task_features=features
        )
        rows = len(tasks) * rows_per_task
        batch = self.problem.collect(policy, repeat_tasks(tasks, rows_per_task), generator)
        if policy.rows_seen != rows:
            raise RuntimeError(f"policy acted for {policy.rows_seen} rows, expected {rows}")
        return batch

    def prepare(
        self, batch: TrajectoryBatch, groups: int, extra_obs: Tensor | None = None
    ) -> TaskData:
        """Linear baseline per group, GAE, standardised advantages, grouped tensors.

        Args:
            batch: Rows ordered group-major.
            groups: Number of groups (tasks); each gets its own baseline fit and advantage
                standardisation.
            extra_obs: Per-row features ``[B, k]`` appended to every observation (also seen
                by the baseline).
        """
        cfg = self.config
        if extra_obs is not None:
            extra = extra_obs.to(batch.obs).unsqueeze(0).expand(batch.num_steps, -1, -1)
            flat = batch.obs.reshape(*batch.obs.shape[:2], -1)
            final = batch.final_obs.reshape(*batch.obs.shape[:2], -1)
            batch = dataclasses.replace(
                batch, obs=torch.cat([flat, extra], -1), final_obs=torch.cat([final, extra], -1)
            )
        values, _ = linear_baseline_values(batch, groups, cfg.gamma, cfg.baseline_reg)
        cut = batch.done | ~batch.valid
        # No bootstrap at the horizon: the H-step return is the objective (module docstring).
        nv = next_values(values, torch.zeros_like(values), cut)
        adv, _ = gae(batch.reward * batch.valid, values, nv, cut, cut, cfg.gamma, cfg.gae_lambda)
        t, b = batch.num_steps, batch.num_trials
        per = b // groups

        def grouped(x: Tensor) -> Tensor:
            # [T, G*R, ...] -> [G, R*T, ...], trajectory-major within a group.
            x = x.reshape(t, groups, per, *x.shape[2:])
            x = x.permute(1, 2, 0, *range(3, x.dim()))
            return x.reshape(groups, per * t, *x.shape[3:])

        dtype = torch.get_default_dtype()
        mask = grouped(batch.valid).to(dtype)
        count = mask.sum(-1, keepdim=True).clamp_min(1.0)
        adv = grouped(adv).to(dtype)
        if cfg.normalize_advantages:
            mean = (adv * mask).sum(-1, keepdim=True) / count
            std = (((adv - mean) ** 2 * mask).sum(-1, keepdim=True) / count).sqrt()
            adv = (adv - mean) / (std + 1e-8)
        obs = grouped(batch.obs.reshape(t, b, -1)).to(dtype)
        if self.discrete:
            action = batch.action.reshape(t, b).long()
        else:
            action = batch.action.reshape(t, b, -1).to(dtype)
            action = (action - self.center.reshape(-1)) / self.half.reshape(-1)
        return TaskData(obs, grouped(action), adv * mask, mask / count)

    def task_returns(self, batch: TrajectoryBatch, groups: int) -> Tensor:
        """Mean undiscounted return per trajectory (episode) of each group, ``[groups]``."""
        episodes = self.problem.episodes
        per_row = batch.episode_returns(episodes).mean(0)
        return per_row.reshape(groups, -1).mean(-1)


# ============================================================================ inner loop
def make_inner_loss(net: PolicyMLP) -> Callable[[Params, TaskData], Tensor]:
    """The REINFORCE loss ``−Σ_t w_t A_t log π(a_t|s_t)`` (a per-task mean over valid steps).

    With per-task weights and data ``[n, ...]`` it returns the sum of the tasks' losses, so
    its gradient with respect to the per-task weights is every task's own gradient.
    """

    def loss(params: Params, data: TaskData) -> Tensor:
        log_prob = net.log_prob(params, net.output(params, data.obs), data.action)
        return -(log_prob * data.advantage * data.weight).sum()

    return loss


def _scale_lr(lr: LearningRate, scale: float) -> LearningRate:
    """``lr`` (a number, a tensor or per-parameter tensors) times ``scale``."""
    if scale == 1.0:
        return lr
    if isinstance(lr, Mapping):
        return {k: v * scale for k, v in lr.items()}
    return lr * scale


def adapt_per_task(
    loss_fn: Callable[[Params, Any], Tensor],
    params: Params,
    data: Any,
    *,
    lr: LearningRate,
    first_order: bool = False,
) -> Params:
    """One inner SGD step from *per-task* weights ``[n, ...]`` (a second or later step).

    ``agents.functional.adapt_batched`` starts every task from shared θ; this applies
    :func:`agents.functional.adapt` to each task's own weights and stacks the results.
    """
    per_task = [
        adapt(
            loss_fn,
            {k: v[i] for k, v in params.items()},
            task_slice(data, i),
            steps=1,
            lr=lr,
            first_order=first_order,
        )
        for i in range(num_tasks(data))
    ]
    return {k: torch.stack([p[k] for p in per_task]) for k in params}


def inner_update(
    loss_fn: Callable[[Params, Any], Tensor],
    params: Params,
    data: TaskData,
    *,
    lr: LearningRate,
    first_order: bool,
    method: str,
) -> Params:
    """One inner step for every task: from shared θ (first step) or per-task weights."""
    if not _per_task(params):
        return adapt_batched(
            loss_fn, params, data, steps=1, lr=lr, first_order=first_order, method=method
        )
    return adapt_per_task(loss_fn, params, data, lr=lr, first_order=first_order)


def _lr_of(lr: LearningRate, name: str) -> Any:
    return lr[name] if isinstance(lr, Mapping) else lr


def _per_task(params: Mapping[str, Tensor]) -> bool:
    """Whether the weights carry a leading task dim (a weight matrix is then ``[n, o, i]``)."""
    return params["layers.0.weight"].dim() == 3


def _num_weight_tasks(params: Mapping[str, Tensor]) -> int:
    """Tasks of per-task weights (their leading dim)."""
    return params["layers.0.weight"].shape[0]


# ============================================================================ outer step
class MetaObjective:
    """The outer (post-update) objective of one meta-batch, as a function of θ (and α).

    Args:
        net: Policy network.
        steps: Inner-step data; ``steps[j]`` was collected with the weights after ``j``
            inner steps (empty: plain TRPO, used by the joint-training baselines).
        post: Post-update data (collected after ``len(steps)`` inner steps).
        first_order: Treat inner gradients as constants of θ.
        method: ``agents.functional`` batching of the first inner step.
    """

    def __init__(
        self,
        net: PolicyMLP,
        steps: Sequence[TaskData],
        post: TaskData,
        *,
        first_order: bool = False,
        method: str = "loop",
    ):
        self.net = net
        self.steps = list(steps)
        self.post = post
        self.first_order = first_order
        self.method = method
        self.loss_fn = make_inner_loss(net)
        self.n = post.obs.shape[0]

    def adapt(self, theta: Params, lr: LearningRate) -> list[Params]:
        """``[θ, φ_1, …, φ_K]``: differentiable in θ and α when grad mode is on."""
        out = [theta]
        for data in self.steps:
            out.append(
                inner_update(
                    self.loss_fn,
                    out[-1],
                    data,
                    lr=lr,
                    first_order=self.first_order,
                    method=self.method,
                )
            )
        return out

    def surrogate(
        self, fast: Params, old: tuple[tuple[Tensor, ...], Tensor] | None = None
    ) -> tuple[Tensor, Tensor, tuple[tuple[Tensor, ...], Tensor]]:
        """(surrogate loss, mean KL, old distribution) of the post-update policies.

        ``old`` (the distribution's :meth:`PolicyMLP.snapshot`, log-prob) defaults to the
        current ones, detached: the state at θ_old, where the ratio is 1 and the KL 0.
        """
        post = self.post
        out = self.net.output(fast, post.obs)
        log_prob = self.net.log_prob(fast, out, post.action)
        if old is None:
            old = (self.net.snapshot(fast, out), log_prob.detach())
        ratio = torch.exp(log_prob - old[1])
        loss = -(ratio * post.advantage * post.weight).sum(-1).mean()
        kl = (self.net.kl(old[0], fast, out) * post.weight).sum(-1).mean()
        return loss, kl, old

    def gauss_newton_hvp(
        self,
        fasts: Sequence[Params],
        lr: LearningRate,
        learn_lr: bool,
        stride: int = 1,
    ) -> Callable[[Params, Params | None], tuple[Params, Params | None]]:
        """Exact products with the KL's Hessian in (θ, α) at θ_old: ``Σ_i J_iᵀ F_i J_i``.

        Per task ``i`` and inner step ``j`` it keeps the graph of the inner gradient at the
        step's starting weights; ``J_ij x = x − α ⊙ H_ij x − x_α ⊙ g_ij`` and its transpose
        are then one backward pass each through that graph (``H_ij`` is symmetric), and
        ``F_i u`` one through the graph of the KL's gradient at φ_i. Tasks are processed one
        at a time: their activations stay cache-resident, which on the CPU beats one
        batched graph over all tasks.

        Args:
            fasts: ``[θ, φ_1, …, φ_K]`` at θ_old (detached).
            lr: The inner step size(s) α.
            learn_lr: α is an outer parameter (Meta-SGD): include ``∂φ/∂α = −diag(g)``.
            stride: Use every ``stride``-th row of every task (``hvp_subsample``).

        Returns:
            ``hvp(v_theta, v_alpha) -> ((H v)_theta, (H v)_alpha)`` on parameter dicts.
        """
        names = list(fasts[0])
        k_steps = len(self.steps)
        n = self.n if k_steps else 1

        def leaves(params: Mapping[str, Tensor], i: int | None) -> Params:
            # Fresh graph leaves at one task's weights (``i is None``: shared weights).
            return {
                k: (v if i is None or not _per_task(params) else v[i]).detach().requires_grad_()
                for k, v in params.items()
            }

        def hvp_fn(leaf: Params, grad: Mapping[str, Tensor]) -> Callable[[Params], Params]:
            def apply(x: Params) -> Params:
                out = torch.autograd.grad(
                    [grad[k] for k in names],
                    [leaf[k] for k in names],
                    [x[k] for k in names],
                    retain_graph=True,
                    allow_unused=True,
                )
                return {
                    k: torch.zeros_like(leaf[k]) if o is None else o for k, o in zip(names, out)
                }

            return apply

        post = self.post.subsample(stride)
        tasks = []
        with torch.enable_grad():
            for i in range(n):
                inner_h, inner_g = [], []
                for j, data in enumerate(self.steps):
                    if self.first_order and not learn_lr:
                        inner_h.append(None)  # J = I: nothing to precompute
                        continue
                    leaf = leaves(fasts[j], i)
                    sub = task_slice(data.subsample(stride), i)
                    grad = inner_gradients(
                        self.loss_fn(leaf, sub), leaf, create_graph=not self.first_order
                    )
                    inner_h.append(None if self.first_order else hvp_fn(leaf, grad))
                    if learn_lr:
                        # ∂φ/∂α needs the exact (full-data) gradient, not its subsample.
                        if stride > 1:
                            full = leaves(fasts[j], i)
                            loss = self.loss_fn(full, task_slice(data, i))
                            grad = inner_gradients(loss, full, create_graph=False)
                        inner_g.append({k: g.detach() for k, g in grad.items()})
                leaf = leaves(fasts[-1], i if k_steps else None)
                sub = task_slice(post, i) if k_steps else post
                out = self.net.output(leaf, sub.obs)
                kl = self.net.kl(self.net.snapshot(leaf, out), leaf, out)
                # The objective's KL is the mean over tasks: each task's Fisher gets 1/n.
                if k_steps:
                    kl = (kl * sub.weight).sum() / self.n
                else:
                    kl = (kl * sub.weight).sum(-1).mean()
                fisher = hvp_fn(leaf, inner_gradients(kl, leaf, create_graph=True))
                tasks.append((inner_h, inner_g, fisher))

        def hvp(v_theta: Params, v_alpha: Params | None) -> tuple[Params, Params | None]:
            out = {k: torch.zeros_like(v_theta[k]) for k in names}
            out_alpha = {k: torch.zeros_like(v_theta[k]) for k in names} if learn_lr else None
            for inner_h, inner_g, fisher in tasks:
                d = v_theta
                for j in range(k_steps):
                    h = inner_h[j]
                    hd = h(d) if h is not None else None
                    new = {}
                    for k in names:
                        x = d[k] if hd is None else d[k] - _lr_of(lr, k) * hd[k]
                        if learn_lr and v_alpha is not None:
                            x = x - v_alpha[k] * inner_g[j][k]
                        new[k] = x
                    d = new
                w = fisher(d)
                for j in reversed(range(k_steps)):
                    if out_alpha is not None:
                        for k in names:
                            out_alpha[k] = out_alpha[k] - inner_g[j][k] * w[k]
                    h = inner_h[j]
                    if h is not None:
                        hw = h({k: _lr_of(lr, k) * w[k] for k in names})
                        w = {k: w[k] - hw[k] for k in names}
                for k in names:
                    out[k] = out[k] + w[k]
            return out, out_alpha

        return hvp


@dataclasses.dataclass
class OuterStepInfo:
    """Diagnostics of :func:`meta_trpo_step` (seconds and norms)."""

    grad_s: float = 0.0
    hvp_setup_s: float = 0.0
    cg_s: float = 0.0
    line_search_s: float = 0.0
    grad_norm: float = 0.0
    step_norm: float = 0.0
    hvp_calls: int = 0


def _flat(tensors: Sequence[Tensor | None], like: Sequence[Tensor]) -> Tensor:
    return torch.cat(
        [(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(tensors, like)]
    )


def meta_trpo_step(
    objective: MetaObjective,
    theta: Params,
    alpha: Params | None,
    lr: LearningRate,
    config: MAMLTRPOConfig,
) -> tuple[TRPOResult, OuterStepInfo]:
    """One TRPO step of θ (and α if given) on ``objective``, in place.

    Same contract as :func:`metarl.pg.trpo_step` (a rejected step leaves the parameters
    exactly as they were), but the surrogate and KL share one adaptation per evaluation and
    the KL's Hessian is applied as in :meth:`MetaObjective.gauss_newton_hvp` (or by double
    backprop with ``config.hvp == "autograd"``).

    Args:
        objective: The meta-batch's objective.
        theta: The policy's parameters (live ``nn.Parameter``s, updated in place).
        alpha: Learned inner step sizes by parameter name (Meta-SGD), or None.
        lr: The inner step size(s) used by the adaptation (``alpha`` itself or a float).
        config: TRPO settings.
    """
    info = OuterStepInfo()
    names = list(theta)
    params = [theta[k] for k in names] + ([alpha[k] for k in names] if alpha is not None else [])
    sizes = [p.numel() for p in params]
    old_flat = get_flat(params)

    def split(v: Tensor) -> tuple[Params, Params | None]:
        parts = [c.view_as(p) for c, p in zip(v.split(sizes), params)]
        v_theta = dict(zip(names, parts[: len(names)]))
        v_alpha = dict(zip(names, parts[len(names) :])) if alpha is not None else None
        return v_theta, v_alpha

    def reject(reason: str, loss: float) -> tuple[TRPOResult, OuterStepInfo]:
        set_flat(params, old_flat)
        return TRPOResult(False, loss, loss, 0.0, backtracks, reason), info

    backtracks = 0
    t0 = time.perf_counter()
    with torch.enable_grad():
        fasts = objective.adapt(theta, lr)
        loss, kl, old = objective.surrogate(fasts[-1])
        loss_before = float(loss.detach())
        if not math.isfinite(loss_before):
            return reject("non-finite surrogate loss", loss_before)
        autograd_hvp = config.hvp == "autograd"
        grads = torch.autograd.grad(loss, params, retain_graph=autograd_hvp, allow_unused=True)
        g = _flat(grads, params)
        info.grad_norm = float(g.norm())
        if not bool(torch.isfinite(g).all()):
            return reject("non-finite policy gradient", loss_before)
        t1 = time.perf_counter()
        info.grad_s = t1 - t0
        if autograd_hvp:
            grad_kl = _flat(
                torch.autograd.grad(kl, params, create_graph=True, allow_unused=True), params
            )

            def curvature(v: Tensor) -> Tensor:
                out = torch.autograd.grad(grad_kl @ v, params, retain_graph=True, allow_unused=True)
                return _flat(out, params)

        else:
            stride = max(1, round(1 / config.hvp_subsample))
            detached = [{k: v.detach() for k, v in f.items()} for f in fasts]
            op = objective.gauss_newton_hvp(detached, lr, alpha is not None, stride)

            def curvature(v: Tensor) -> Tensor:
                v_theta, v_alpha = split(v)
                h_theta, h_alpha = op(v_theta, v_alpha)
                parts = [h_theta[k] for k in names]
                if alpha is not None:
                    parts += [h_alpha[k] for k in names]
                return torch.cat([p.reshape(-1) for p in parts])

        def fvp(v: Tensor) -> Tensor:
            info.hvp_calls += 1
            return curvature(v) + config.damping * v

        t2 = time.perf_counter()
        info.hvp_setup_s = t2 - t1
        direction = conjugate_gradient(fvp, -g, iters=config.cg_iters)
        dhd = direction @ fvp(direction)
    t3 = time.perf_counter()
    info.cg_s = t3 - t2
    if not bool(torch.isfinite(dhd)) or dhd <= 0:
        return reject("degenerate Fisher matrix", loss_before)
    step = direction * torch.sqrt(2 * config.max_kl / dhd)
    info.step_norm = float(step.norm())
    for k in range(config.ls_max_steps):
        backtracks = k
        set_flat(params, old_flat + (config.ls_backtrack_ratio**k) * step)
        with torch.no_grad():
            new_loss, new_kl, _ = objective.surrogate(objective.adapt(theta, lr)[-1], old)
            new_loss, new_kl = float(new_loss), float(new_kl)
        # NaN/inf candidates (e.g. a step that makes the policy's outputs overflow) are
        # backtracked from like any other bad step; nothing raises.
        finite = math.isfinite(new_loss) and math.isfinite(new_kl)
        if finite and new_kl <= config.max_kl and new_loss < loss_before:
            info.line_search_s = time.perf_counter() - t3
            return TRPOResult(True, loss_before, new_loss, new_kl, k), info
    backtracks = config.ls_max_steps
    info.line_search_s = time.perf_counter() - t3
    return reject("line search found no improving step", loss_before)


# ============================================================================ learner
class MAMLTRPO(Learner):
    """MAML with a VPG inner step and a TRPO outer step; see the module docstring."""

    config_cls = MAMLTRPOConfig
    description = "MAML-TRPO: VPG inner step, exact second-order TRPO meta-update (Finn et al.)"
    default_name = "maml-trpo"

    def __init__(
        self, problem: RLProblem, config: MAMLTRPOConfig, device: torch.device | str = "cpu"
    ):
        space = problem.action_space
        if not isinstance(space, (gym.spaces.Box, gym.spaces.Discrete)):
            # The policies are a diagonal Gaussian (Box) and a categorical (Discrete).
            raise IncompatibleEnvError(
                f"algorithm {self.default_name!r} needs a Box or Discrete action space, got "
                f"{space}; for other spaces use rl2 or snail"
            )
        self.problem = problem
        self.config = config
        self.device = torch.device(device)
        self.obs_size = int(np.prod(problem.observation_space.shape))
        self.discrete = isinstance(space, gym.spaces.Discrete)
        self.action_size = int(space.n) if self.discrete else int(np.prod(space.shape))
        self.net = self._make_net(self.obs_size)
        self.alpha = self._make_alpha()
        self.sampler = TaskSampler(problem, config)
        self._trained = False
        self._baseline_cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ parameters
    def _make_net(self, obs_size: int) -> PolicyMLP:
        cfg = self.config
        if self.discrete:
            net: PolicyMLP = CategoricalMLP(
                obs_size, self.action_size, cfg.hidden_sizes, cfg.activation
            )
        else:
            net = GaussianMLP(
                obs_size, self.action_size, cfg.hidden_sizes, cfg.activation, cfg.init_log_std
            )
        return net.to(self.device)

    def _make_alpha(self) -> nn.ParameterDict | None:
        """Learned inner step sizes (Meta-SGD); MAML's is the constant ``fast_lr``."""
        return None

    def theta(self) -> Params:
        return dict(self.net.named_parameters())

    def inner_lr(self) -> LearningRate:
        """What the functional inner update takes as ``lr``."""
        return self.config.fast_lr

    def learned_alpha(self) -> Params | None:
        """α by parameter name if it is an outer (TRPO) parameter, else None."""
        return None

    @property
    def name(self) -> str:
        """The registered name (set by the runner), else ``default_name``.

        A ``registered_name`` inherited from a parent class (``resolve_algo`` sets it on
        the class) is ignored: Meta-SGD must not report itself as ``maml-trpo``.
        """
        return (
            self.__dict__.get("registered_name")
            or type(self).__dict__.get("registered_name")
            or self.default_name
        )

    # ------------------------------------------------------------------ training
    def tasks_per_iteration(self) -> int:
        return self.config.meta_batch_size

    def _check_fast(self, fast: Params) -> None:
        for k, v in fast.items():
            check_finite(f"fast weights {k}", v)

    def train_iteration(self, tasks: Any, generator: torch.Generator) -> dict[str, float]:
        cfg = self.config
        self._trained = True
        n, r = len(tasks), cfg.trajectories_per_task
        timing = {"sampling": 0.0, "adaptation": 0.0}
        lr = self.inner_lr()
        loss_fn = make_inner_loss(self.net)
        params: Params = {k: v.detach() for k, v in self.theta().items()}
        steps: list[TaskData] = []
        returns_by_step = []
        env_steps = 0.0
        for _ in range(cfg.inner_steps):
            t0 = time.perf_counter()
            batch = self.sampler.collect(self.net, params, tasks, r, generator)
            t1 = time.perf_counter()
            data = self.sampler.prepare(batch, n)
            with torch.no_grad():
                params = inner_update(
                    loss_fn, params, data, lr=lr, first_order=True, method=cfg.inner_method
                )
            self._check_fast(params)
            timing["sampling"] += t1 - t0
            timing["adaptation"] += time.perf_counter() - t1
            steps.append(data)
            returns_by_step.append(float(self.sampler.task_returns(batch, n).mean()))
            env_steps += float(batch.valid.sum())
        t0 = time.perf_counter()
        batch = self.sampler.collect(self.net, params, tasks, r, generator)
        t1 = time.perf_counter()
        post = self.sampler.prepare(batch, n)
        timing["sampling"] += t1 - t0
        timing["adaptation"] += time.perf_counter() - t1
        post_return = float(self.sampler.task_returns(batch, n).mean())
        env_steps += float(batch.valid.sum())

        t0 = time.perf_counter()
        objective = MetaObjective(
            self.net, steps, post, first_order=cfg.first_order, method=cfg.inner_method
        )
        result, info = meta_trpo_step(objective, self.theta(), self.learned_alpha(), lr, cfg)
        outer_s = time.perf_counter() - t0
        if not result.accepted:
            print(
                f"metarl: {self.name}: TRPO step rejected ({result.reason}); parameters unchanged",
                file=sys.stderr,
                flush=True,
            )
        metrics = {
            "return": post_return,
            "return_pre": returns_by_step[0],
            "env_steps": env_steps,
            "loss_surrogate": result.loss_before,
            "loss_surrogate_after": result.loss_after,
            "kl": result.kl,
            "trpo_accepted": float(result.accepted),
            "trpo_backtracks": float(result.backtracks),
            "trpo_reject_code": float(REJECT_CODES.get(result.reason, -1)),
            "trpo_hvp_calls": float(info.hvp_calls),
            "grad_norm": info.grad_norm,
            "step_norm": info.step_norm,
            "time/sampling_s": timing["sampling"],
            "time/adaptation_s": timing["adaptation"],
            "time/outer_s": outer_s,
            "time/outer_grad_s": info.grad_s,
            "time/outer_hvp_setup_s": info.hvp_setup_s,
            "time/outer_cg_s": info.cg_s,
            "time/outer_line_search_s": info.line_search_s,
        }
        if isinstance(self.net, GaussianMLP):
            metrics["log_std"] = float(self.net.log_std.detach().mean())
        else:
            with torch.no_grad():
                logp = torch.log_softmax(self.net.output(self.theta(), post.obs), dim=-1)
                entropy = -(logp.exp() * logp).sum(-1)
            # The pre-update policy's entropy on the post-update states: how much the
            # initialisation still explores (the categorical twin of the log-std).
            metrics["entropy"] = float((entropy * post.weight).sum(-1).mean())
        for j, ret in enumerate(returns_by_step[1:], start=1):
            metrics[f"return_step{j}"] = ret
        metrics.update(self._alpha_metrics())
        return metrics

    def _alpha_metrics(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ evaluation
    def adaptation_curve(
        self,
        net: PolicyMLP,
        params: Params,
        lr: LearningRate,
        tasks: Any,
        generator: torch.Generator,
        steps: int | None = None,
    ) -> Tensor:
        """Mean return per trajectory of every task after 0 .. ``steps`` inner steps.

        Each step collects ``eval_trajectories`` (default ``trajectories_per_task``) fresh
        trajectories with the current weights, reports their mean return and adapts on them
        with step size ``lr`` times ``eval_lr_scale`` (of that step).
        Tasks are processed in chunks of at most ~4096 rows to bound memory.

        Returns:
            ``[steps + 1, len(tasks)]``.
        """
        cfg = self.config
        steps = cfg.eval_steps if steps is None else steps
        r = cfg.meta_test_trajectories
        loss_fn = make_inner_loss(net)
        chunk = max(1, 4096 // r)
        out = torch.zeros(steps + 1, len(tasks))
        for start in range(0, len(tasks), chunk):
            part = tasks[start : start + chunk]
            n = len(part)
            p = {k: v.detach() for k, v in params.items()}
            for k in range(steps + 1):
                batch = self.sampler.collect(net, p, part, r, generator)
                out[k, start : start + n] = self.sampler.task_returns(batch, n).cpu()
                if k < steps:
                    data = self.sampler.prepare(batch, n)
                    with torch.no_grad():
                        p = inner_update(
                            loss_fn,
                            p,
                            data,
                            lr=_scale_lr(lr, cfg.eval_lr_scale_at(k)),
                            first_order=True,
                            method=cfg.inner_method,
                        )
                    self._check_fast(p)
        return out

    def evaluate(
        self, tasks: Any, generator: torch.Generator, *, baselines: bool | None = None
    ) -> dict[str, Curve]:
        """Adaptation curves (x = gradient step) on held-out tasks, plus the baselines.

        Args:
            tasks: Held-out tasks.
            generator: Randomness of sampling (baselines draw from a stream split off it
                after the learner's own curve, which is therefore the same with or without
                them).
            baselines: Add ``config.eval_baselines`` (see :mod:`agents.maml_baselines`).
                Default: yes, unless this learner trained in this process, i.e. this is a
                periodic meta-test during training, where they would cost time for nothing.
        """
        x = list(range(self.config.eval_steps + 1))
        values = self.adaptation_curve(self.net, self.theta(), self.inner_lr(), tasks, generator)
        curves = {self.name: Curve(x, values, "gradient step")}
        if baselines is None:
            baselines = not self._trained
        if baselines and self.config.eval_baselines:
            from agents.maml_baselines import baseline_curves

            curves.update(baseline_curves(self, tasks, generator))
        return curves

    def summary_metric(self, curves: dict[str, Curve], name: str) -> float:
        """Mean return after ``inner_steps`` gradient steps (what meta-training optimises;
        the paper's "after one gradient step")."""
        values = curves[name].values
        return float(values[min(self.config.inner_steps, values.shape[0] - 1)].mean())

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        model = {"policy": self.net.state_dict()}
        if self.alpha is not None:
            model["alpha"] = self.alpha.state_dict()
        return {"model": model}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        model = state["model"]
        self.net.load_state_dict(model["policy"])
        if self.alpha is not None:
            self.alpha.load_state_dict(model["alpha"])
        elif "alpha" in model:
            raise ValueError("checkpoint has a learned alpha (Meta-SGD); this learner has none")
