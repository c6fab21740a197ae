"""Bernoulli multi-armed bandits (Duan et al., 2016, "RL²").

A task is a vector of arm means drawn uniformly from ``[0, 1]``. Every pull is a whole
episode: the env returns a Bernoulli reward and ``terminated=True``, so a trial of ``K``
episodes is ``K`` pulls and memory across episodes is what lets an agent exploit.

The dynamics are written once, batched in torch (:class:`BanditEnv`); the gymnasium env
:class:`BanditGymEnv` (``metarl/Bandit-v0``) is a one-row view of it.
"""

import dataclasses
import functools
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch

from metarl.policy import Policy, PolicyStep, StepInput
from metarl.tasks import TaskBatch
from metarl.vector import BatchedEnvView, TensorTaskEnv


@dataclasses.dataclass(frozen=True)
class BanditTasks(TaskBatch):
    """A batch of bandit tasks.

    Attributes:
        means: Success probability of every arm, ``[n, arms]`` float.
    """

    means: torch.Tensor


class BanditEnv(TensorTaskEnv):
    """``num_envs`` Bernoulli bandits stepped in one torch op.

    Observations are a constant zero ``[B, 1]``: the bandit has no state, only the
    previous action and reward (which the policy gets from the collector) carry information.

    Args:
        num_envs: Number of rows ``B``.
        arms: Number of arms.
        device: Where tensors live.
    """

    def __init__(self, num_envs: int, arms: int, device: torch.device | str = "cpu"):
        # One pull is one episode, so the time limit never fires before termination.
        super().__init__(num_envs, max_episode_steps=1, device=device)
        self.arms = arms
        self.single_observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.single_action_space = gym.spaces.Discrete(arms)

    def set_tasks(self, tasks: BanditTasks) -> None:
        if tasks.means.shape[1:] != (self.arms,):
            raise ValueError(f"tasks have {tuple(tasks.means.shape[1:])} arms, env has {self.arms}")
        super().set_tasks(tasks)

    def _obs(self) -> torch.Tensor:
        return torch.zeros(self.num_envs, 1, device=self.device)

    def _reset_rows(self, mask: torch.Tensor) -> torch.Tensor:
        return self._obs()

    def _step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.tasks is None:
            raise RuntimeError("set_tasks() must be called before step()")
        action = action.to(device=self.device, dtype=torch.long).reshape(self.num_envs)
        p = self.tasks.means.gather(1, action[:, None]).squeeze(1)
        u = torch.rand(self.num_envs, generator=self.generator, device=self.device)
        reward = (u < p).to(torch.float32)
        terminated = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        return self._obs(), reward, terminated


class BanditOracle:
    """Always pulls the arm with the highest true mean (an upper bound, not a learner)."""

    def __init__(self) -> None:
        self._means: torch.Tensor | None = None

    def set_tasks(self, tasks: BanditTasks) -> None:
        """Stores the true tasks of the rows about to be collected, in row order."""
        self._means = tasks.means

    def initial_state(self, num_rows: int, device: torch.device) -> None:
        return None

    def step(self, inp: StepInput, state: None, generator: torch.Generator) -> PolicyStep:
        if self._means is None:
            raise RuntimeError("BanditOracle.set_tasks() must be called before step()")
        rows = inp.obs.shape[0]
        if self._means.shape[0] != rows:
            raise ValueError(f"oracle knows {self._means.shape[0]} tasks, got {rows} rows")
        if self._means.device != inp.obs.device:  # move once, not every step
            self._means = self._means.to(inp.obs.device)
        action = self._means.argmax(dim=1)
        zeros = torch.zeros(rows, device=inp.obs.device)
        return PolicyStep(action=action, log_prob=zeros, value=zeros, state=None)


class BanditDistribution:
    """Bernoulli bandits with arm means ~ U[0, 1].

    Args:
        arms: Number of arms (at least 2).

    Raises:
        ValueError: If ``arms`` is not an integer >= 2.
    """

    name = "bandit"
    description = "Bernoulli multi-armed bandit, arm means ~ U[0,1]; one pull per episode"
    default_episodes = 10

    def __init__(self, arms: int = 5):
        if isinstance(arms, bool) or not isinstance(arms, (int, np.integer)) or arms < 2:
            raise ValueError(f"bandit arms must be an integer >= 2, got {arms!r}")
        self.arms = int(arms)

    def sample_tasks(self, n: int, rng: np.random.Generator) -> BanditTasks:
        """Draws ``n`` tasks using ``rng`` only (CPU float32 tensors)."""
        means = rng.uniform(0.0, 1.0, size=(n, self.arms)).astype(np.float32)
        return BanditTasks(means=torch.from_numpy(means))

    def make_batched_env(self, num_envs: int, device: torch.device | str = "cpu") -> BanditEnv:
        """A :class:`BanditEnv` with ``num_envs`` rows on ``device``."""
        return BanditEnv(num_envs, self.arms, device)

    @property
    def observation_space(self) -> gym.spaces.Box:
        """Single-env observation space (a constant zero)."""
        return gym.spaces.Box(0.0, 1.0, (1,), np.float32)

    @property
    def action_space(self) -> gym.spaces.Discrete:
        """Single-env action space (the arm index)."""
        return gym.spaces.Discrete(self.arms)

    def optimal_episode_return(self, tasks: BanditTasks) -> torch.Tensor:
        """Expected return of an episode (one pull) under the oracle, ``[n]``."""
        return tasks.means.max(dim=1).values

    def baselines(self, episodes: int = 10) -> dict[str, Callable[[], Policy]]:
        """Reference policies for trials of ``episodes`` pulls.

        ``oracle`` knows the arm means. The classical algorithms of
        :mod:`envs.bandit_baselines` (Gittins index, UCB1, Thompson sampling, optimistic
        Thompson sampling, ε-greedy, greedy) come next; UCB1's ``c`` and ε are tuned over
        [0, 1] on training tasks the first time their factory is called.
        """
        from envs.bandit_baselines import BANDIT_BASELINES, BANDIT_HYPERPARAMETERS

        out: dict[str, Callable[[], Policy]] = {"oracle": BanditOracle}
        for name, cls in BANDIT_BASELINES.items():
            if name == "random":
                continue
            if name in BANDIT_HYPERPARAMETERS:
                out[name] = functools.partial(_tuned_bandit_baseline, name, self.arms, episodes)
            else:
                out[name] = functools.partial(cls, num_arms=self.arms, num_episodes=episodes)
        return out


@functools.lru_cache(maxsize=64)
def tuned_bandit_hyperparameter(name: str, arms: int, episodes: int) -> float:
    """The value of ``name``'s hyperparameter tuned on 1,000 training tasks (cached)."""
    from envs.bandit_baselines import tune_bandit_baseline
    from metarl.tasks import TRAIN_STREAM, task_rng

    # A dedicated training-stream key, so tuning never sees held-out tasks.
    tasks = BanditDistribution(arms=arms).sample_tasks(1000, task_rng(0, TRAIN_STREAM, 10**9))
    return tune_bandit_baseline(
        name, tasks.means, episodes, generator=torch.Generator().manual_seed(0)
    )


def _tuned_bandit_baseline(name: str, arms: int, episodes: int) -> Policy:
    from envs.bandit_baselines import BANDIT_BASELINES, BANDIT_HYPERPARAMETERS

    value = tuned_bandit_hyperparameter(name, arms, episodes)
    return BANDIT_BASELINES[name](
        num_arms=arms, num_episodes=episodes, **{BANDIT_HYPERPARAMETERS[name]: value}
    )


class BanditGymEnv(BatchedEnvView):
    """``metarl/Bandit-v0``: one bandit as a gymnasium env.

    Args:
        arms: Number of arms.
        render_mode: Unused; no rendering.
    """

    distribution_cls = BanditDistribution

    def __init__(self, arms: int = 5, render_mode: str | None = None):
        super().__init__(BanditDistribution(arms=arms), render_mode=render_mode)
