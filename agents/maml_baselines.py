"""Meta-test baselines of MAML-TRPO and Meta-SGD (Finn et al. 2017, Section 5.3).

* ``random``: freshly initialised policies of the same architecture, fine-tuned exactly
  like the meta-learner (same inner steps, step size ``fast_lr``, trajectories);
  ``algo.random_inits`` initialisations, each on an equal share of the tasks.
* ``pretrained``: one policy trained with TRPO on all tasks jointly (every trajectory on a
  fresh task, no adaptation), then fine-tuned the same way.
* ``oracle``: a policy that sees the task: the task's parameters (goal, direction or
  velocity) are appended to its observation; trained like ``pretrained``. It does not adapt,
  so its curve is flat.
* ``sb3-ppo``: Stable-Baselines3 PPO (default hyperparameters) learning one held-out task
  from scratch: its return per rollout against env steps (``x_label = "env steps"``), to
  show how many samples plain RL needs where the meta-learner needs one gradient step.

Training ``pretrained``, ``oracle`` and ``sb3-ppo`` costs time, so it happens only when the
learner's ``evaluate`` is asked for baselines (by default in ``metarl eval``, not in the
periodic meta-tests of training), with the budgets ``algo.baseline_iterations``,
``algo.baseline_trajectories``, ``algo.sb3_tasks`` and ``algo.sb3_timesteps``; trained
weights (and PPO curves) are cached on the learner for the rest of the process.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from agents.maml import MetaObjective, PolicyMLP, meta_trpo_step, repeat_tasks, task_features
from metarl.learner import Curve

if TYPE_CHECKING:
    from agents.maml import MAMLTRPO


def _say(message: str) -> None:
    print(f"metarl: {message}", file=sys.stderr, flush=True)


def _seeded_net(learner: MAMLTRPO, obs_size: int, seed: int) -> PolicyMLP:
    # Initialisation draws from the global RNG; fork it so the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return learner._make_net(obs_size)


def random_init_curve(
    learner: MAMLTRPO, tasks: Any, seed: int, generator: torch.Generator
) -> torch.Tensor:
    """The ``random`` baseline: ``[eval_steps + 1, len(tasks)]`` returns of fresh policies.

    The tasks are split into ``algo.random_inits`` contiguous shares, each fine-tuned from
    its own initialisation (seeds ``seed``, ``seed + 1``, ...). One initialisation would make
    the baseline a property of one draw: two evaluations of the same HalfCheetahDir run, one
    initialisation each, measured -16.7 and +62.6 after three steps.
    """
    n = len(tasks)
    k = min(learner.config.random_inits, n)
    bounds = [n * j // k for j in range(k + 1)]
    parts = []
    for j in range(k):
        net = _seeded_net(learner, learner.obs_size, seed + j)
        share = tasks[bounds[j] : bounds[j + 1]]
        parts.append(
            learner.adaptation_curve(
                net, dict(net.named_parameters()), learner.config.fast_lr, share, generator
            )
        )
    return torch.cat(parts, dim=1)


def train_joint_policy(learner: MAMLTRPO, seed: int, oracle: bool = False) -> PolicyMLP:
    """TRPO on trajectories from many tasks at once (no adaptation).

    Args:
        learner: Provides the problem, sampler and TRPO settings.
        seed: Seeds the initialisation, the training tasks and the sampling.
        oracle: Append the task's parameters to the observation.
    """
    cfg, problem = learner.config, learner.problem
    extra = task_features(problem.sample_train_tasks(1, seed, 0)).shape[-1] if oracle else 0
    net = _seeded_net(learner, learner.obs_size + extra, seed)
    features = task_features if oracle else None
    for it in range(cfg.baseline_iterations):
        tasks = problem.sample_train_tasks(cfg.baseline_trajectories, seed, it)
        generator = torch.Generator(device=problem.device).manual_seed(seed * 100003 + it)
        params = {k: v.detach() for k, v in net.named_parameters()}
        batch = learner.sampler.collect(net, params, tasks, 1, generator, features=features)
        data = learner.sampler.prepare(
            batch, 1, extra_obs=task_features(repeat_tasks(tasks, 1)) if oracle else None
        )
        meta_trpo_step(MetaObjective(net, [], data), dict(net.named_parameters()), None, 0.0, cfg)
    return net


class _RolloutReturns:
    """SB3 callback body: mean return of the episodes finished in each rollout."""

    def __init__(self, monitor: Any):
        self.monitor = monitor
        self.seen = 0
        self.points: list[tuple[int, float]] = []

    def on_rollout_end(self, num_timesteps: int) -> None:
        returns = self.monitor.get_episode_rewards()
        new = returns[self.seen :]
        self.seen = len(returns)
        # No episode ended in this rollout: carry the last value.
        last = self.points[-1][1] if self.points else float("nan")
        value = float(np.mean(new)) if new else last
        self.points.append((int(num_timesteps), value))


def single_task_env(learner: MAMLTRPO, tasks: Any, index: int) -> gym.Env:
    """A gymnasium env of task ``tasks[index]`` with the problem's time limit."""
    problem = learner.problem
    if problem.batched:
        from metarl.vector import BatchedEnvView

        # A TaskBatch indexed by an int is a batch of one task, what the view takes.
        env: gym.Env = BatchedEnvView(problem.distribution, task=tasks[index])
    else:
        env = problem.env_factory()
        env.set_task(tasks[index])
    env = gym.wrappers.TimeLimit(env, max_episode_steps=problem.max_episode_steps)
    space = env.action_space
    if (
        learner.config.normalize_actions
        and isinstance(space, gym.spaces.Box)
        and np.all(np.isfinite(space.low))
        and np.all(np.isfinite(space.high))
        and not (np.all(space.low == -1) and np.all(space.high == 1))
    ):
        # The same action scaling as the meta-learner's policy (rllab's normalize).
        ones = np.ones(space.shape, dtype=space.dtype)
        env = gym.wrappers.RescaleAction(env, -ones, ones)
    return env


def sb3_ppo_curve(learner: MAMLTRPO, tasks: Any, seed: int) -> Curve:
    """SB3 PPO learning curves on the first ``algo.sb3_tasks`` of ``tasks``.

    Returns:
        A curve with ``x`` = env steps at the end of each PPO rollout and values the mean
        return of the episodes that ended in that rollout, ``[rollouts, tasks]``.
    """
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor

    class Callback(BaseCallback):
        def __init__(self, body: _RolloutReturns):
            super().__init__()
            self.body = body

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self) -> None:
            self.body.on_rollout_end(self.num_timesteps)

    cfg = learner.config
    k = min(cfg.sb3_tasks, len(tasks))
    n_steps = max(min(2048, cfg.sb3_timesteps), learner.problem.max_episode_steps)
    curves = []
    for i in range(k):
        env = Monitor(single_task_env(learner, tasks, i))
        body = _RolloutReturns(env)
        model = PPO(
            "MlpPolicy",
            env,
            n_steps=n_steps,
            batch_size=min(64, n_steps),
            seed=seed + i,
            device="cpu",
            verbose=0,
        )
        model.learn(total_timesteps=cfg.sb3_timesteps, callback=Callback(body))
        env.close()
        curves.append(body.points)
    rollouts = min(len(c) for c in curves)
    x = [curves[0][j][0] for j in range(rollouts)]
    values = torch.tensor([[c[j][1] for c in curves] for j in range(rollouts)])
    return Curve(x, values, "env steps")


def baseline_curves(learner: MAMLTRPO, tasks: Any, generator: torch.Generator) -> dict[str, Curve]:
    """The curves of ``learner.config.eval_baselines`` on ``tasks``."""
    cfg = learner.config
    cache = learner._baseline_cache
    seed = int(torch.randint(0, 2**30, (1,), generator=generator, device=generator.device))
    x = list(range(cfg.eval_steps + 1))
    out: dict[str, Curve] = {}

    def stream(i: int) -> torch.Generator:
        return torch.Generator(device=generator.device).manual_seed(seed + 7919 * (i + 1))

    for i, name in enumerate(cfg.eval_baselines):
        t0 = time.perf_counter()
        if name == "random":
            values = random_init_curve(learner, tasks, seed, stream(i))
        elif name == "pretrained":
            if "pretrained" not in cache:
                _say(f"training the pretrained baseline ({cfg.baseline_iterations} TRPO its)")
                cache["pretrained"] = train_joint_policy(learner, seed=1000 + seed % 1000)
            net = cache["pretrained"]
            params = dict(net.named_parameters())
            values = learner.adaptation_curve(net, params, cfg.fast_lr, tasks, stream(i))
        elif name == "oracle":
            try:
                task_features(tasks[:1])
            except TypeError as e:
                _say(f"skipping the oracle baseline: {e}")
                continue
            if "oracle" not in cache:
                _say(f"training the oracle baseline ({cfg.baseline_iterations} TRPO its)")
                cache["oracle"] = train_joint_policy(learner, seed=2000 + seed % 1000, oracle=True)
            net = cache["oracle"]
            params = {k: v.detach() for k, v in net.named_parameters()}
            batch = learner.sampler.collect(
                net, params, tasks, cfg.meta_test_trajectories, stream(i), features=task_features
            )
            flat = learner.sampler.task_returns(batch, len(tasks)).cpu()
            values = flat.unsqueeze(0).expand(len(x), -1).clone()
        else:  # sb3-ppo
            k = min(cfg.sb3_tasks, len(tasks))
            key = f"sb3-ppo:{task_features(tasks[:k]).numpy().tobytes().hex()}"
            if key not in cache:
                _say(f"training SB3 PPO from scratch on {k} task(s), {cfg.sb3_timesteps} steps")
                cache[key] = sb3_ppo_curve(learner, tasks, seed)
            out[name] = cache[key]
            _say(f"baseline {name}: {time.perf_counter() - t0:.1f}s")
            continue
        out[name] = Curve(x, values, "gradient step")
        _say(f"baseline {name}: {time.perf_counter() - t0:.1f}s")
    return out
