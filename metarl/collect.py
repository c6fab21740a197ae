"""The rollout collector: ``B`` trials of ``K`` episodes each, in parallel.

Each row of the batched env runs exactly one trial on its own task. The collector alone
decides where episodes and trials begin: after a row's episode ends it resets that row,
and after the row's ``K``-th episode the row is finished and its remaining steps are
padding (``valid == False``). The policy's state (RNN memory, SNAIL caches, bandit
statistics) is created once per trial with ``initial_state`` and carried across episode
boundaries inside the trial; the policy sees each boundary through ``prev_done``.
"""

from __future__ import annotations

import inspect

import torch

from metarl.batch import TrajectoryBatch
from metarl.learner import NonFiniteError
from metarl.policy import Policy, StepInput
from metarl.vector import BatchedTaskEnv


class Collector:
    """Collects trials from a :class:`~metarl.vector.BatchedTaskEnv`.

    Args:
        env: The batched env; its width is the number of trials per call.
        max_episode_steps: Time limit per episode. Defaults to the env's own; a smaller
            value truncates episodes here (``truncated=True``), so any env works.

    Example:
        >>> import numpy as np, torch
        >>> from envs.bandit import BanditDistribution
        >>> from metarl.baselines import RandomPolicy
        >>> dist = BanditDistribution(arms=3)
        >>> env = dist.make_batched_env(8, "cpu")
        >>> tasks = dist.sample_tasks(8, np.random.default_rng(0))
        >>> batch = Collector(env).collect(RandomPolicy(env.single_action_space), tasks,
        ...                                episodes=5, generator=torch.Generator().manual_seed(0))
        >>> batch.reward.shape, bool(batch.trial_start[0].all())
        (torch.Size([5, 8]), True)
    """

    def __init__(self, env: BatchedTaskEnv, max_episode_steps: int | None = None):
        self.env = env
        # A batched env written against the older ``step(action)`` signature (no ``live``)
        # still works: it steps every row.
        self._pass_live = "live" in inspect.signature(env.step).parameters
        self.max_episode_steps = min(
            max_episode_steps or env.max_episode_steps, env.max_episode_steps
        )

    @torch.no_grad()
    def collect(
        self,
        policy: Policy,
        tasks,
        episodes: int,
        generator: torch.Generator,
    ) -> TrajectoryBatch:
        """Runs one trial of ``episodes`` episodes per row.

        Args:
            policy: Acts for all rows; its state is reset only at the trial start.
            tasks: One task per row (a ``TaskBatch`` or a sequence of tasks).
            episodes: ``K``, episodes per trial.
            generator: Source of all randomness (env seed and the policy's sampling).

        Returns:
            A :class:`~metarl.batch.TrajectoryBatch` with ``T = K · max_episode_steps`` at
            most (cut at the last step any row needs).
        """
        env = self.env
        if episodes < 1:
            raise ValueError(f"episodes per trial must be >= 1, got {episodes}")
        b, device = env.num_envs, env.device
        horizon = self.max_episode_steps
        t_max = episodes * horizon
        if hasattr(policy, "set_tasks"):
            policy.set_tasks(tasks)
        env.set_tasks(tasks)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        obs = env.reset(seed=seed)
        state = policy.initial_state(b, device)

        # Preallocated buffers: writing row t is one copy per field, no list growth.
        obs_buf = obs.new_zeros((t_max, *obs.shape))
        final_obs_buf = obs.new_zeros((t_max, *obs.shape))
        reward_buf = torch.zeros(t_max, b, device=device)
        logp_buf = torch.zeros(t_max, b, device=device)
        value_buf = torch.zeros(t_max, b, device=device)
        flags = torch.zeros(5, t_max, b, dtype=torch.bool, device=device)
        terminated_buf, truncated_buf, ep_start_buf, trial_start_buf, valid_buf = flags
        action_buf = None

        active = torch.ones(b, dtype=torch.bool, device=device)
        episodes_done = torch.zeros(b, dtype=torch.long, device=device)
        episode_step = torch.zeros(b, dtype=torch.long, device=device)
        episode_start = torch.ones(b, dtype=torch.bool, device=device)
        trial_start = torch.ones(b, dtype=torch.bool, device=device)
        prev_reward = torch.zeros(b, device=device)
        prev_done = torch.zeros(b, device=device)
        prev_action = None
        # Rows all finish together when every episode has the same length (bandits, MDPs);
        # then the per-step "any row still active?" host sync is not needed.
        t = 0
        for t in range(t_max):
            if prev_action is None:
                prev_action = _zero_action(env, b, device)
            out = policy.step(
                StepInput(
                    obs,
                    prev_action,
                    prev_reward,
                    prev_done,
                    trial_start,
                    episode_step,
                    episodes_done,
                ),
                state,
                generator,
            )
            state = out.state
            step = env.step(out.action, live=active) if self._pass_live else env.step(out.action)
            if not bool(torch.isfinite(step.reward).all()):
                bad = step.reward[~torch.isfinite(step.reward)][0]
                raise NonFiniteError("reward returned by the env", float(bad))
            truncated = step.truncated | ((episode_step + 1 >= horizon) & ~step.terminated)
            done = step.terminated | truncated

            if action_buf is None:
                action_buf = out.action.new_zeros((t_max, *out.action.shape))
            obs_buf[t] = obs
            action_buf[t] = out.action
            reward_buf[t] = step.reward * active
            logp_buf[t] = out.log_prob
            value_buf[t] = out.value
            terminated_buf[t] = step.terminated & active
            truncated_buf[t] = truncated & active
            ep_start_buf[t] = episode_start & active
            trial_start_buf[t] = trial_start & active
            valid_buf[t] = active
            final_obs_buf[t] = torch.where(_expand(done, step.obs), step.obs, 0.0)

            # Not in place: the policy may keep the StepInput that carried this tensor.
            episodes_done = episodes_done + (done & active).long()
            active = active & (episodes_done < episodes)
            any_done = bool(done.any())  # one host sync per step, reused below
            if t + 1 == t_max or (any_done and not bool(active.any())):
                break
            # Reset every row whose episode ended, finished rows too: backends that step
            # every row (tensor envs, AsyncVectorEnv) may refuse to step an ended episode.
            # Backends that skip finished rows (``live``) see them end only at the horizon.
            obs = env.reset(mask=done) if any_done else step.obs
            episode_step = torch.where(done, 0, episode_step + 1)
            episode_start = done
            trial_start = torch.zeros_like(trial_start)
            prev_action = out.action
            prev_reward = step.reward
            prev_done = done.float()

        n = t + 1
        return TrajectoryBatch(
            obs=obs_buf[:n],
            action=action_buf[:n],
            reward=reward_buf[:n],
            terminated=terminated_buf[:n],
            truncated=truncated_buf[:n],
            episode_start=ep_start_buf[:n],
            trial_start=trial_start_buf[:n],
            valid=valid_buf[:n],
            log_prob=logp_buf[:n],
            value=value_buf[:n],
            final_obs=final_obs_buf[:n],
        )


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _zero_action(env: BatchedTaskEnv, b: int, device: torch.device) -> torch.Tensor:
    space = env.single_action_space
    if hasattr(space, "n"):
        return torch.zeros(b, dtype=torch.long, device=device)
    return torch.zeros(b, *space.shape, device=device)
