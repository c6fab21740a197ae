"""Random tabular MDPs (Duan et al., 2016, "RL²").

A task is an MDP with ``S`` states and ``A`` actions: mean rewards ~ N(1, 1) and, for every
(state, action), a next-state distribution ~ Dirichlet(1). Episodes start in state 0,
observe the state one-hot, receive rewards ~ N(mean, 1) and are cut at ``horizon`` steps.

The dynamics are written once, batched in torch (:class:`TabularMDPEnv`); the gymnasium
env :class:`TabularMDPGymEnv` (``metarl/TabularMDP-v0``) is a one-row view of it.
:func:`value_iteration` gives the finite-horizon optimum, used by the oracle baseline.
"""

import dataclasses
import functools
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from metarl.policy import Policy, PolicyStep, StepInput
from metarl.tasks import TaskBatch
from metarl.vector import BatchedEnvView, TensorTaskEnv


@dataclasses.dataclass(frozen=True)
class MDPTasks(TaskBatch):
    """A batch of tabular MDPs.

    Attributes:
        reward_mean: Mean reward of every (state, action), ``[n, S, A]`` float.
        transitions: Next-state distribution of every (state, action), ``[n, S, A, S]``
            float; every ``transitions[i, s, a]`` sums to 1.
    """

    reward_mean: torch.Tensor
    transitions: torch.Tensor


def value_iteration(tasks: MDPTasks, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Finite-horizon value iteration for a batch of MDPs.

    With a finite horizon the optimal policy depends on the time step, so Q is indexed by
    it: ``q[i, t, s, a]`` is the optimal expected return from taking ``a`` in ``s`` at step
    ``t`` (``horizon - t`` steps remain), ``q[:, t] = R + P · max_a q[:, t + 1]``.

    Args:
        tasks: ``n`` MDPs.
        horizon: Episode length ``H`` (>= 1).

    Returns:
        ``(q, v0)``: ``q`` of shape ``[n, H, S, A]`` and ``v0`` of shape ``[n]``, the
        optimal expected episode return from the start state 0.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    reward, transitions = tasks.reward_mean, tasks.transitions
    n, num_states, num_actions = reward.shape
    q = reward.new_zeros(n, horizon, num_states, num_actions)
    v_next = reward.new_zeros(n, num_states)  # value after the last step
    # Backward in time; the loop is over steps only, every step is one op over all tasks.
    for t in range(horizon - 1, -1, -1):
        q[:, t] = reward + torch.einsum("nsak,nk->nsa", transitions, v_next)
        v_next = q[:, t].max(dim=-1).values
    return q, v_next[:, 0]


class TabularMDPEnv(TensorTaskEnv):
    """``num_envs`` tabular MDPs stepped in one torch op.

    Args:
        num_envs: Number of rows ``B``.
        states: Number of states ``S``.
        actions: Number of actions ``A``.
        horizon: Episode length; the base class truncates there.
        device: Where tensors live.
    """

    def __init__(
        self,
        num_envs: int,
        states: int,
        actions: int,
        horizon: int,
        device: torch.device | str = "cpu",
    ):
        super().__init__(num_envs, max_episode_steps=horizon, device=device)
        self.states = states
        self.actions = actions
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (states,), np.float32)
        self.single_action_space = gym.spaces.Discrete(actions)
        self.state = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._rows = torch.arange(num_envs, device=self.device)

    def set_tasks(self, tasks: MDPTasks) -> None:
        expected = (self.states, self.actions)
        if tuple(tasks.reward_mean.shape[1:]) != expected:
            raise ValueError(
                f"tasks have (S, A)={tuple(tasks.reward_mean.shape[1:])}, env has {expected}"
            )
        super().set_tasks(tasks)

    def _obs(self) -> torch.Tensor:
        return F.one_hot(self.state, self.states).to(torch.float32)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        self.state = torch.where(mask, 0, self.state)
        return self._obs()

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.tasks is None:
            raise RuntimeError("set_tasks() must be called before step()")
        action = action.to(device=self.device, dtype=torch.long).reshape(self.num_envs)
        mean = self.tasks.reward_mean[self._rows, self.state, action]
        noise = torch.randn(self.num_envs, generator=self.generator, device=self.device)
        probs = self.tasks.transitions[self._rows, self.state, action]
        # multinomial (not an inverse CDF) so that zero-probability states are never drawn,
        # even when float rounding leaves a row sum slightly off 1.
        self.state = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        # Episodes only end by the time limit, which the base class turns into truncation.
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        return self._obs(), mean + noise, terminated


class MDPOracle:
    """Acts greedily w.r.t. the time-dependent optimal Q of the true MDP.

    Args:
        horizon: Episode length the Q-values are computed for.
    """

    def __init__(self, horizon: int):
        self.horizon = horizon
        self._q: torch.Tensor | None = None

    def set_tasks(self, tasks: MDPTasks) -> None:
        """Solves the true tasks of the rows about to be collected, in row order."""
        self._q = value_iteration(tasks, self.horizon)[0]

    def initial_state(self, num_rows: int, device: torch.device) -> None:
        return None

    def step(self, inp: StepInput, state: None, generator: torch.Generator) -> PolicyStep:
        if self._q is None:
            raise RuntimeError("MDPOracle.set_tasks() must be called before step()")
        rows = inp.obs.shape[0]
        if self._q.shape[0] != rows:
            raise ValueError(f"oracle knows {self._q.shape[0]} tasks, got {rows} rows")
        device = inp.obs.device
        if self._q.device != device:  # move once, not every step
            self._q = self._q.to(device)
        s = inp.obs.argmax(dim=-1)
        # Clamp so a longer-than-horizon episode (a user override) still gets an action.
        t = inp.episode_step.to(device).clamp(0, self.horizon - 1)
        action = self._q[torch.arange(rows, device=device), t, s].argmax(dim=-1)
        zeros = torch.zeros(rows, device=device)
        return PolicyStep(action=action, log_prob=zeros, value=zeros, state=None)


class TabularMDPDistribution:
    """Random tabular MDPs: rewards ~ N(1, 1), transitions ~ Dirichlet(1), start state 0.

    Args:
        states: Number of states (>= 1).
        actions: Number of actions (>= 2).
        horizon: Steps per episode (>= 1).

    Raises:
        ValueError: If a size is not an integer in its range.
    """

    name = "tabular-mdp"
    description = "random tabular MDP, rewards ~ N(1,1), transitions ~ Dirichlet(1), one-hot obs"
    default_episodes = 10

    def __init__(self, states: int = 10, actions: int = 5, horizon: int = 10):
        for key, value, low in (
            ("states", states, 1),
            ("actions", actions, 2),
            ("horizon", horizon, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"tabular-mdp {key} must be an integer >= {low}, got {value!r}")
        self.states = int(states)
        self.actions = int(actions)
        self.horizon = int(horizon)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> MDPTasks:
        """Draws ``n`` MDPs using ``rng`` only (CPU float32 tensors)."""
        s, a = self.states, self.actions
        reward_mean = rng.normal(1.0, 1.0, size=(n, s, a)).astype(np.float32)
        transitions = rng.dirichlet(np.ones(s), size=(n, s, a)).astype(np.float32)
        # Renormalise after the float32 cast so rows sum to 1 to float32 precision.
        transitions /= transitions.sum(axis=-1, keepdims=True)
        return MDPTasks(
            reward_mean=torch.from_numpy(reward_mean), transitions=torch.from_numpy(transitions)
        )

    def make_batched_env(self, num_envs: int, device: torch.device | str = "cpu") -> TabularMDPEnv:
        """A :class:`TabularMDPEnv` with ``num_envs`` rows on ``device``."""
        return TabularMDPEnv(num_envs, self.states, self.actions, self.horizon, device)

    @property
    def observation_space(self) -> gym.spaces.Box:
        """Single-env observation space (one-hot state)."""
        return gym.spaces.Box(0.0, 1.0, (self.states,), np.float32)

    @property
    def action_space(self) -> gym.spaces.Discrete:
        """Single-env action space."""
        return gym.spaces.Discrete(self.actions)

    def optimal_episode_return(self, tasks: MDPTasks) -> torch.Tensor:
        """Optimal expected return of one episode from state 0, ``[n]``."""
        return value_iteration(tasks, self.horizon)[1]

    def baselines(self, episodes: int = 10) -> dict[str, Callable[[], Policy]]:
        """Reference policies for trials of ``episodes`` episodes.

        ``oracle`` plans with the true MDP. Then the classical algorithms of
        :mod:`envs.mdp_baselines` (PSRL, OPSRL, UCRL2, BEB, ε-greedy, greedy); the
        hyperparameters of OPSRL, UCRL2, BEB and ε-greedy are tuned on training tasks the
        first time their factory is called.
        """
        from envs.mdp_baselines import MDP_BASELINES, MDP_HYPERPARAMETERS

        # partial, not a lambda, so that the factories pickle (process-based workers).
        out: dict[str, Callable[[], Policy]] = {
            "oracle": functools.partial(MDPOracle, self.horizon)
        }
        sizes = (self.states, self.actions, self.horizon, episodes)
        for name, cls in MDP_BASELINES.items():
            if name == "random":
                continue
            if name in MDP_HYPERPARAMETERS:
                out[name] = functools.partial(_tuned_mdp_baseline, name, *sizes)
            else:
                out[name] = functools.partial(
                    cls, self.states, self.actions, self.horizon, episodes
                )
        return out


@functools.lru_cache(maxsize=64)
def tuned_mdp_hyperparameter(
    name: str, states: int, actions: int, horizon: int, episodes: int
) -> float:
    """The value of ``name``'s hyperparameter tuned on 200 training tasks (cached)."""
    from envs.mdp_baselines import tune_mdp_baseline
    from metarl.tasks import TRAIN_STREAM, task_rng

    dist = TabularMDPDistribution(states=states, actions=actions, horizon=horizon)
    tasks = dist.sample_tasks(200, task_rng(0, TRAIN_STREAM, 10**9))
    return tune_mdp_baseline(
        name, tasks, horizon, episodes, generator=torch.Generator().manual_seed(0)
    )


def _tuned_mdp_baseline(
    name: str, states: int, actions: int, horizon: int, episodes: int
) -> Policy:
    from envs.mdp_baselines import MDP_BASELINES, MDP_HYPERPARAMETERS

    value = tuned_mdp_hyperparameter(name, states, actions, horizon, episodes)
    return MDP_BASELINES[name](
        states, actions, horizon, episodes, **{MDP_HYPERPARAMETERS[name]: value}
    )


class TabularMDPGymEnv(BatchedEnvView):
    """``metarl/TabularMDP-v0``: one random MDP as a gymnasium env.

    Args:
        states: Number of states.
        actions: Number of actions.
        horizon: Steps per episode.
        render_mode: Unused; no rendering.
    """

    distribution_cls = TabularMDPDistribution

    def __init__(
        self,
        states: int = 10,
        actions: int = 5,
        horizon: int = 10,
        render_mode: str | None = None,
    ):
        super().__init__(
            TabularMDPDistribution(states=states, actions=actions, horizon=horizon),
            render_mode=render_mode,
        )
