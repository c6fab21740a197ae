"""Classical baselines for random tabular MDPs, as batched metarl policies.

The task format is that of ``envs.tabular_mdp.MDPTasks`` (any object with these attributes
works here): ``reward_mean [n, S, A]`` with rewards ``N(mean, 1)``, ``transitions
[n, S, A, S]``, start state 0 and a fixed horizon ``H`` (every episode is truncated after
``H`` steps). Observations are one-hot states ``[B, S]``; actions are long ``[B]``. In RL²'s
task distribution (Duan et al. 2016, §4.2) reward means are drawn from ``N(1, 1)`` and
transition rows from a flat Dirichlet, which is the prior the Bayesian baselines assume.

Every baseline is a model-based planner. Its per-row state (:class:`MDPStats`) holds
visit counts, reward sums and transition counts of the current trial, the previous state,
and the current plan ``Q [B, H, S, A]``. At each step it first records the previous step
``(prev_state, prev_action, prev_reward, current state)``, unless the trial starts there;
at the first step of every episode it replans from its statistics and then acts greedily
on ``Q[episode_step, state]`` (ties broken at random).

Observation gap: when an episode ends, the policy's next input is already the first state
of the next episode, so the state reached by the last transition of each episode is never
observed. Its reward is counted, its transition is not (1/H of the transition data). This
is inherent to the collector's interface, and harmless for planning because no value
follows the last step of an episode.

Baselines (names of :data:`MDP_BASELINES`), as in RL² §4.2:

* ``random``: uniform actions.
* ``psrl``: posterior sampling (Osband et al. 2013), one sampled MDP per episode.
* ``opsrl``: optimistic posterior sampling, the max over several posterior samples.
* ``ucrl2``: UCRL2 (Jaksch et al. 2010) adapted to finite-horizon episodes.
* ``beb``: Bayesian exploration bonus (Kolter & Ng 2009).
* ``eps-greedy`` / ``greedy``: the posterior-mean MDP's optimal policy, with ε random
  actions.

:func:`run_mdp` simulates trials directly in torch so baselines can be evaluated and tuned
without the collector.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from envs.bandit_baselines import argmax_random_ties, sample_gamma
from metarl.policy import Policy, PolicyStep, StepInput

__all__ = [
    "BEB",
    "MDP_BASELINES",
    "MDP_DEFAULT_GRIDS",
    "MDP_HYPERPARAMETERS",
    "OPSRL",
    "PSRL",
    "UCRL2",
    "EpsilonGreedyMDP",
    "GreedyMDP",
    "MDPStats",
    "RandomMDP",
    "optimal_episode_value",
    "run_mdp",
    "sample_dirichlet",
    "tune_mdp_baseline",
    "value_iteration_batched",
]


def value_iteration_batched(
    reward: torch.Tensor, transitions: torch.Tensor, horizon: int
) -> torch.Tensor:
    """Finite-horizon, time-dependent optimal Q-values of a batch of MDPs.

    Undiscounted backward induction: ``Q_{H−1}(s, a) = r(s, a)`` and
    ``Q_h(s, a) = r(s, a) + Σ_s' P(s' | s, a)·max_a' Q_{h+1}(s', a')``.

    Args:
        reward: Expected rewards ``[..., S, A]``.
        transitions: Next-state distributions ``[..., S, A, S]``.
        horizon: ``H``, steps per episode.

    Returns:
        ``Q [..., H, S, A]``; ``Q[..., h, s, a]`` is the optimal expected return of the
        remaining ``H − h`` steps after taking ``a`` in ``s`` at step ``h``.
    """
    q = reward.new_empty(*reward.shape[:-2], horizon, *reward.shape[-2:])
    value = torch.zeros(reward.shape[:-1], dtype=reward.dtype, device=reward.device)
    for h in range(horizon - 1, -1, -1):
        q[..., h, :, :] = reward + torch.einsum("...sat,...t->...sa", transitions, value)
        value = q[..., h, :, :].max(dim=-1).values
    return q


def optimal_episode_value(tasks: Any, horizon: int) -> torch.Tensor:
    """Expected return of an optimal (task-aware) policy over one episode, ``[n]``."""
    q = value_iteration_batched(tasks.reward_mean, tasks.transitions, horizon)
    return q[:, 0, 0, :].max(dim=-1).values


def sample_dirichlet(concentration: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dirichlet samples over the last dim (normalised Gamma draws from ``generator``)."""
    gamma = sample_gamma(concentration, generator)
    return gamma / gamma.sum(dim=-1, keepdim=True).clamp_min(1e-30)


@dataclasses.dataclass(frozen=True)
class MDPStats:
    """Per-row state of an MDP baseline (statistics of the current trial and its plan).

    Attributes:
        visits: Rewards observed per state-action, ``[B, S, A]`` float.
        reward_sum: Sum of those rewards, ``[B, S, A]``.
        transition_counts: Observed transitions ``(s, a) → s'``, ``[B, S, A, S]`` float.
        prev_state: State of the previous step, ``[B]`` long.
        steps: Steps taken so far in the trial, ``[B]`` float.
        q: The plan of the current episode, ``[B, H, S, A]``.
    """

    visits: torch.Tensor
    reward_sum: torch.Tensor
    transition_counts: torch.Tensor
    prev_state: torch.Tensor
    steps: torch.Tensor
    q: torch.Tensor


class _PlanningMDPPolicy:
    """Bookkeeping, posterior and acting shared by all MDP baselines.

    Subclasses implement :meth:`plan`; the prior parameters describe RL²'s task
    distribution (reward means ``N(1, 1)``, unit reward noise, flat Dirichlet transitions).

    Args:
        num_states: ``S``.
        num_actions: ``A``.
        horizon: ``H``, steps per episode.
        num_episodes: Trial length ``n`` (unused by the current baselines; accepted so that
            every factory can be called the same way).
        reward_prior_mean: Mean of the Normal prior on reward means.
        reward_prior_var: Variance of that prior.
        reward_noise_var: Known variance of observed rewards around their mean.
        transition_prior: Concentration of the symmetric Dirichlet prior on transitions.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        horizon: int,
        num_episodes: int | None = None,
        reward_prior_mean: float = 1.0,
        reward_prior_var: float = 1.0,
        reward_noise_var: float = 1.0,
        transition_prior: float = 1.0,
    ):
        self.num_states = int(num_states)
        self.num_actions = int(num_actions)
        self.horizon = int(horizon)
        self.num_episodes = num_episodes
        self.reward_prior_mean = float(reward_prior_mean)
        self.reward_prior_var = float(reward_prior_var)
        self.reward_noise_var = float(reward_noise_var)
        self.transition_prior = float(transition_prior)

    # ------------------------------------------------------------------ state
    def initial_state(self, num_rows: int, device: torch.device | str) -> MDPStats:
        S, A, H = self.num_states, self.num_actions, self.horizon
        return MDPStats(
            visits=torch.zeros(num_rows, S, A, device=device),
            reward_sum=torch.zeros(num_rows, S, A, device=device),
            transition_counts=torch.zeros(num_rows, S, A, S, device=device),
            prev_state=torch.zeros(num_rows, dtype=torch.long, device=device),
            steps=torch.zeros(num_rows, device=device),
            q=torch.zeros(num_rows, H, S, A, device=device),
        )

    def update(self, inp: StepInput, stats: MDPStats, state: torch.Tensor) -> MDPStats:
        """Records the previous step; zeroes rows where a trial starts."""
        rows = torch.arange(state.shape[0], device=state.device)
        keep = (~inp.trial_start.bool()).to(stats.visits.dtype)
        prev_a = inp.prev_action.long()
        # The next state is unobserved when the previous step ended the episode.
        saw_next = keep * (1.0 - inp.prev_done.to(keep.dtype))
        visits = stats.visits * keep[:, None, None]
        reward_sum = stats.reward_sum * keep[:, None, None]
        counts = stats.transition_counts * keep[:, None, None, None]
        visits[rows, stats.prev_state, prev_a] += keep
        reward_sum[rows, stats.prev_state, prev_a] += keep * inp.prev_reward.to(keep.dtype)
        counts[rows, stats.prev_state, prev_a, state] += saw_next
        return MDPStats(
            visits=visits,
            reward_sum=reward_sum,
            transition_counts=counts,
            prev_state=state,
            steps=stats.steps * keep + keep,
            q=stats.q,
        )

    # ---------------------------------------------------------------- posterior
    def reward_posterior(self, stats: MDPStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the Normal posterior on reward means (known noise)."""
        precision = 1.0 / self.reward_prior_var + stats.visits / self.reward_noise_var
        mean = (
            self.reward_prior_mean / self.reward_prior_var
            + stats.reward_sum / self.reward_noise_var
        ) / precision
        return mean, 1.0 / precision

    def transition_concentration(self, stats: MDPStats) -> torch.Tensor:
        """Dirichlet posterior parameters ``prior + counts``, ``[B, S, A, S]``."""
        return stats.transition_counts + self.transition_prior

    def posterior_mean_mdp(self, stats: MDPStats) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior-mean rewards ``[B, S, A]`` and transitions ``[B, S, A, S]``."""
        conc = self.transition_concentration(stats)
        return self.reward_posterior(stats)[0], conc / conc.sum(-1, keepdim=True)

    # ------------------------------------------------------------------ acting
    def plan(self, stats: MDPStats, generator: torch.Generator) -> torch.Tensor:
        """The plan ``Q [B, H, S, A]`` for the episode that starts now."""
        raise NotImplementedError

    def act(self, q: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Chooses actions from the current state's Q-values ``[B, A]``."""
        return argmax_random_ties(q, generator)

    def step(self, inp: StepInput, state: MDPStats, generator: torch.Generator) -> PolicyStep:
        current = inp.obs.argmax(dim=-1)
        stats = self.update(inp, state, current)
        replan = inp.trial_start.bool() | (inp.prev_done > 0.5)
        if bool(replan.any()):
            q = torch.where(replan[:, None, None, None], self.plan(stats, generator), stats.q)
            stats = dataclasses.replace(stats, q=q)
        rows = torch.arange(current.shape[0], device=current.device)
        h = inp.episode_step.long().clamp(0, self.horizon - 1)
        action = self.act(stats.q[rows, h, current], generator)
        zeros = torch.zeros(action.shape, device=action.device)
        return PolicyStep(action=action, log_prob=zeros, value=zeros, state=stats)


class RandomMDP(_PlanningMDPPolicy):
    """Uniformly random actions (an all-zero plan: every action ties)."""

    def plan(self, stats: MDPStats, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros_like(stats.q)


class PSRL(_PlanningMDPPolicy):
    """Posterior sampling for RL (Osband, Russo & Van Roy 2013).

    At each episode start it samples reward means from their Normal posterior (prior
    ``N(1, 1)``, known unit noise) and transitions from ``Dirichlet(1 + counts)``, solves the
    sampled MDP by finite-horizon value iteration and follows it greedily for the episode.
    """

    def sample_mdps(
        self, stats: MDPStats, num_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws ``J = num_samples`` MDPs from the posterior.

        Returns:
            Reward means ``[J, B, S, A]`` and transitions ``[J, B, S, A, S]``.
        """
        mean, var = self.reward_posterior(stats)
        noise = torch.randn(
            (num_samples, *mean.shape), generator=generator, device=mean.device, dtype=mean.dtype
        )
        rewards = mean + var.sqrt() * noise
        conc = self.transition_concentration(stats)
        conc = conc.expand(num_samples, *conc.shape)
        return rewards, sample_dirichlet(conc, generator)

    def plan(self, stats: MDPStats, generator: torch.Generator) -> torch.Tensor:
        rewards, transitions = self.sample_mdps(stats, 1, generator)
        return value_iteration_batched(rewards[0], transitions[0], self.horizon)


class OPSRL(PSRL):
    """Optimistic posterior sampling: the most optimistic of ``J`` posterior samples.

    ``J = num_samples`` MDPs are drawn from the posterior and combined optimistically in
    the backup, ``Q_h(s, a) = max_j [r_j(s, a) + P_j(· | s, a)·V_{h+1}]`` with
    ``V_{h+1} = max_a Q_{h+1}``: the value of the best MDP when each state-action may pick
    its own sample, as in Agrawal & Jia (2017). ``J = 1`` is PSRL.

    Args:
        num_samples: ``J``. RL² does not state its value; the default 5 is a middle
            ground, and :func:`tune_mdp_baseline` tunes it over (1, 2, 3, 5, 10) (at
            S = 10, A = 5, H = 10, n = 10 the return barely depends on ``J``).
        **kwargs: Sizes and priors, see :class:`_PlanningMDPPolicy`.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        horizon: int,
        num_episodes: int | None = None,
        num_samples: int = 5,
        **kwargs: Any,
    ):
        super().__init__(num_states, num_actions, horizon, num_episodes, **kwargs)
        self.num_samples = max(1, int(num_samples))

    def plan(self, stats: MDPStats, generator: torch.Generator) -> torch.Tensor:
        rewards, transitions = self.sample_mdps(stats, self.num_samples, generator)
        q = torch.empty_like(stats.q)
        value = torch.zeros(stats.q.shape[0], self.num_states, device=q.device, dtype=q.dtype)
        for h in range(self.horizon - 1, -1, -1):
            q_samples = rewards + torch.einsum("jbsat,bt->jbsa", transitions, value)
            q[:, h] = q_samples.max(dim=0).values
            value = q[:, h].max(dim=-1).values
        return q


class UCRL2(_PlanningMDPPolicy):
    """UCRL2 (Jaksch, Ortner & Auer 2010) adapted to finite-horizon episodes.

    At each episode start it plans by extended value iteration over the set of plausible
    MDPs: empirical mean rewards plus a Hoeffding bonus, and any transition distribution
    within an L1 ball of the empirical one. With ``t`` the steps taken so far in the
    trial, ``N`` the visit count of ``(s, a)`` (``N'`` its observed transitions)::

        reward bonus  = scale · sqrt(7 ln(2 S A t / δ) / (2 max(1, N)))
        L1 radius     = scale · sqrt(14 S ln(2 A t / δ) / max(1, N'))

    Adaptations, documented: (1) the planning problem is the finite-horizon one of the
    task, solved backwards over ``H`` steps, instead of average-reward extended value
    iteration; (2) it replans at every episode start instead of when a count doubles;
    (3) ``scale`` multiplies both widths (UCRL2's bounds are very conservative, and our
    rewards are Gaussian rather than in ``[0, 1]``); ``scale = 1`` is the original width,
    ``scale = 0`` the greedy empirical-MDP policy. ``δ`` enters only logarithmically, so
    ``scale`` is the hyperparameter that is tuned. Unvisited pairs have empirical reward 0
    and a uniform empirical transition row (the radius of at least 2 covers the simplex).

    Args:
        scale: Multiplier of both confidence widths.
        delta: Confidence parameter ``δ``.
        **kwargs: Sizes, see :class:`_PlanningMDPPolicy` (the priors are unused).
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        horizon: int,
        num_episodes: int | None = None,
        scale: float = 1.0,
        delta: float = 0.1,
        **kwargs: Any,
    ):
        super().__init__(num_states, num_actions, horizon, num_episodes, **kwargs)
        self.scale = float(scale)
        self.delta = float(delta)

    def plan(self, stats: MDPStats, generator: torch.Generator) -> torch.Tensor:
        S, A = self.num_states, self.num_actions
        log_t = torch.log(stats.steps.clamp_min(1.0))[:, None, None]
        n_reward = stats.visits.clamp_min(1.0)
        reward = stats.reward_sum / n_reward + self.scale * torch.sqrt(
            7 * (math.log(2 * S * A / self.delta) + log_t) / (2 * n_reward)
        )
        n_trans = stats.transition_counts.sum(-1)
        p_hat = torch.where(
            (n_trans > 0)[..., None],
            stats.transition_counts / n_trans.clamp_min(1.0)[..., None],
            torch.full_like(stats.transition_counts, 1.0 / S),
        )
        radius = self.scale * torch.sqrt(
            14 * S * (math.log(2 * A / self.delta) + log_t) / n_trans.clamp_min(1.0)
        )
        q = torch.empty_like(stats.q)
        value = torch.zeros(stats.q.shape[0], S, device=q.device, dtype=q.dtype)
        for h in range(self.horizon - 1, -1, -1):
            q[:, h] = reward + _optimistic_expectation(p_hat, radius, value)
            value = q[:, h].max(dim=-1).values
        return q


def _optimistic_expectation(
    p_hat: torch.Tensor, radius: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """``max_p p·V`` over ``‖p − p̂‖₁ ≤ radius``, for every row and state-action.

    Jaksch et al.'s inner maximisation (their Fig. 2): move up to ``radius / 2`` mass onto
    the best next state, taken from the worst next states first.

    Args:
        p_hat: Empirical transitions ``[B, S, A, S]``.
        radius: L1 radii ``[B, S, A]``.
        value: Next-step values ``[B, S]``.

    Returns:
        Optimistic expected next values ``[B, S, A]``.
    """
    order = value.argsort(dim=-1)  # ascending: worst next state first, best last
    v_sorted = value.gather(-1, order)
    p_sorted = p_hat.gather(-1, order[:, None, None, :].expand_as(p_hat))
    best = p_sorted[..., -1]
    best_new = torch.clamp(best + radius / 2, max=1.0)
    excess = best_new - best
    mass_before = p_sorted.cumsum(-1) - p_sorted
    removed = torch.minimum(p_sorted, (excess[..., None] - mass_before).clamp_min(0.0))
    p_opt = p_sorted - removed
    p_opt[..., -1] = best_new
    return (p_opt * v_sorted[:, None, None, :]).sum(-1)


class BEB(_PlanningMDPPolicy):
    """Bayesian exploration bonus (Kolter & Ng 2009).

    Plans in the posterior-mean MDP with rewards ``E[r(s, a)] + β / (1 + n(s, a))``,
    ``n(s, a)`` being the visits of ``(s, a)`` in the trial; replans every episode.

    Args:
        beta: Bonus scale ``β``.
        **kwargs: Sizes and priors, see :class:`_PlanningMDPPolicy`.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        horizon: int,
        num_episodes: int | None = None,
        beta: float = 1.0,
        **kwargs: Any,
    ):
        super().__init__(num_states, num_actions, horizon, num_episodes, **kwargs)
        self.beta = float(beta)

    def plan(self, stats: MDPStats, generator: torch.Generator) -> torch.Tensor:
        reward, transitions = self.posterior_mean_mdp(stats)
        reward = reward + self.beta / (1.0 + stats.visits)
        return value_iteration_batched(reward, transitions, self.horizon)


class EpsilonGreedyMDP(_PlanningMDPPolicy):
    """ε-greedy on the posterior-mean MDP's optimal Q, replanned every episode.

    Args:
        epsilon: Probability of a uniformly random action at each step.
        **kwargs: Sizes and priors, see :class:`_PlanningMDPPolicy`.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        horizon: int,
        num_episodes: int | None = None,
        epsilon: float = 0.1,
        **kwargs: Any,
    ):
        super().__init__(num_states, num_actions, horizon, num_episodes, **kwargs)
        self.epsilon = float(epsilon)

    def plan(self, stats: MDPStats, generator: torch.Generator) -> torch.Tensor:
        return value_iteration_batched(*self.posterior_mean_mdp(stats), self.horizon)

    def act(self, q: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        explore = torch.rand(q.shape[0], generator=generator, device=q.device) < self.epsilon
        # An exploring row sees all-equal scores, i.e. picks a uniformly random action.
        return argmax_random_ties(torch.where(explore[:, None], torch.zeros_like(q), q), generator)


class GreedyMDP(EpsilonGreedyMDP):
    """Greedy on the posterior-mean MDP (ε-greedy with ε = 0)."""

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        horizon: int,
        num_episodes: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_states, num_actions, horizon, num_episodes, epsilon=0.0, **kwargs)


#: Baseline factories, called as
#: ``factory(num_states=S, num_actions=A, horizon=H, num_episodes=n, **hyperparams)``.
MDP_BASELINES: dict[str, Callable[..., Policy]] = {
    "random": RandomMDP,
    "psrl": PSRL,
    "opsrl": OPSRL,
    "ucrl2": UCRL2,
    "beb": BEB,
    "eps-greedy": EpsilonGreedyMDP,
    "greedy": GreedyMDP,
}

#: The tunable hyperparameter (constructor keyword) of each baseline that has one.
MDP_HYPERPARAMETERS: dict[str, str] = {
    "opsrl": "num_samples",
    "ucrl2": "scale",
    "beb": "beta",
    "eps-greedy": "epsilon",
}

#: Default tuning grids.
MDP_DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {
    "opsrl": (1, 2, 3, 5, 10),
    "ucrl2": tuple(i / 10 for i in range(11)),
    "beb": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0),
    "eps-greedy": tuple(i / 10 for i in range(11)),
}


def run_mdp(
    policy: Policy, tasks: Any, horizon: int, episodes: int, generator: torch.Generator
) -> torch.Tensor:
    """Runs one trial of ``episodes`` episodes on each of ``n`` tabular MDPs in torch.

    Feeds the policy what the collector would: the one-hot state, the previous
    action/reward, ``prev_done = 1`` at the first step of every episode but the first,
    ``trial_start`` at the very first step and the step index within the episode. Every
    episode starts in state 0 and lasts exactly ``horizon`` steps; rewards are drawn from
    ``N(reward_mean, 1)``.

    Args:
        policy: Any MDP policy.
        tasks: Object with ``reward_mean [n, S, A]`` and ``transitions [n, S, A, S]``.
        horizon: ``H``.
        episodes: Episodes per trial.
        generator: Source of the policy's and the MDPs' randomness.

    Returns:
        Episode returns ``[episodes, n]``.
    """
    reward_mean, transitions = tasks.reward_mean, tasks.transitions
    n, S, _ = reward_mean.shape
    device = reward_mean.device
    rows = torch.arange(n, device=device)
    policy_state = policy.initial_state(n, device)
    prev_action = torch.zeros(n, dtype=torch.long, device=device)
    prev_reward = torch.zeros(n, dtype=reward_mean.dtype, device=device)
    returns = torch.zeros(episodes, n, dtype=reward_mean.dtype, device=device)
    for e in range(episodes):
        state = torch.zeros(n, dtype=torch.long, device=device)
        for h in range(horizon):
            inp = StepInput(
                obs=torch.nn.functional.one_hot(state, S).to(reward_mean.dtype),
                prev_action=prev_action,
                prev_reward=prev_reward,
                prev_done=torch.full((n,), float(h == 0 and e > 0), device=device),
                trial_start=torch.full((n,), h == 0 and e == 0, dtype=torch.bool, device=device),
                episode_step=torch.full((n,), h, dtype=torch.long, device=device),
            )
            out = policy.step(inp, policy_state, generator)
            policy_state = out.state
            action = out.action.long()
            noise = torch.randn(n, generator=generator, device=device, dtype=reward_mean.dtype)
            prev_reward = reward_mean[rows, state, action] + noise
            prev_action = action
            returns[e] += prev_reward
            next_probs = transitions[rows, state, action]
            state = torch.multinomial(next_probs, 1, generator=generator)[:, 0]
    return returns


def tune_mdp_baseline(
    name: str,
    tasks: Any,
    horizon: int,
    episodes: int,
    grid: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    **fixed: Any,
) -> float:
    """Picks the hyperparameter value with the best mean trial return on training tasks.

    Every grid value is evaluated with an identically seeded generator (common random
    numbers) so that the comparison is not dominated by sampling noise.

    Args:
        name: A key of :data:`MDP_HYPERPARAMETERS`.
        tasks: Training tasks (``reward_mean``, ``transitions``).
        horizon: ``H``.
        episodes: Episodes per trial.
        grid: Candidate values (default :data:`MDP_DEFAULT_GRIDS`).
        generator: Seeds the evaluation (a fixed seed is used if None).
        **fixed: Other constructor keywords.

    Returns:
        The grid member with the highest mean trial return (the first one on ties).
    """
    if name not in MDP_HYPERPARAMETERS:
        raise ValueError(
            f"{name!r} has no tunable hyperparameter; tunable: {sorted(MDP_HYPERPARAMETERS)}"
        )
    grid = list(MDP_DEFAULT_GRIDS[name] if grid is None else grid)
    _, S, A = tasks.reward_mean.shape
    seed = (
        int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        if generator
        else 0
    )
    best_value, best_return = grid[0], -math.inf
    for value in grid:
        policy = MDP_BASELINES[name](
            num_states=S,
            num_actions=A,
            horizon=horizon,
            num_episodes=episodes,
            **{MDP_HYPERPARAMETERS[name]: value},
            **fixed,
        )
        eval_generator = torch.Generator(device=tasks.reward_mean.device)
        eval_generator.manual_seed(seed)
        result = run_mdp(policy, tasks, horizon, episodes, eval_generator)
        mean_return = float(result.sum(0).mean())
        if mean_return > best_return:
            best_value, best_return = value, mean_return
    return best_value
