"""Collector throughput, as ratios against baselines measured in the same run.

(a) Env + collector: env-steps/s of metarl's batched tensor env driven by the Collector,
    against the *same dynamics* as gymnasium envs (the registered single-env views) in a
    ``gymnasium.vector.SyncVectorEnv`` of the same width, both driven by uniform random
    actions drawn in torch. Target: >= 50x.
(b) With the RL² GRU policy (256 units): the share of collection time spent outside the
    policy's own forward pass (env stepping + collector bookkeeping). Target: <= 15%.
(c) SNAIL vs RL² collector throughput on bandit n=500 at the same width (SNAIL acts
    incrementally from its caches). Target: SNAIL within 3x of RL².

Usage:
    python benchmarks/collector.py [--width 4096] [--sections a,b,c,d] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import envs  # noqa: F401 - registers the gymnasium views
from metarl.baselines import RandomPolicy
from metarl.collect import Collector
from metarl.policy import StepInput


def collector_steps_per_s(
    dist, width: int, episodes: int, policy, repeats: int = 3, max_episode_steps: int | None = None
) -> float:
    env = dist.make_batched_env(width, "cpu")
    collector = Collector(env, max_episode_steps)
    tasks = dist.sample_tasks(width, np.random.default_rng(0))
    gen = torch.Generator().manual_seed(0)
    collector.collect(policy, tasks, 1, gen)  # warm-up
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        batch = collector.collect(policy, tasks, episodes, gen)
        dt = time.perf_counter() - t0
        best = max(best, float(batch.valid.sum()) / dt)
    return best


def sync_vector_steps_per_s(gym_id: str, kwargs: dict, width: int, steps: int) -> float:
    vec = gym.vector.SyncVectorEnv(
        [lambda: gym.make(gym_id, **kwargs)] * width,
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )
    vec.reset(seed=0)
    space = vec.single_action_space
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        if isinstance(space, gym.spaces.Discrete):
            act = torch.randint(0, int(space.n), (width,), generator=gen).numpy()
        else:
            low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
            act = (low + torch.rand((width, *space.shape), generator=gen) * (high - low)).numpy()
        _, _, term, trunc, _ = vec.step(act)
        done = term | trunc
        if done.any():
            vec.reset(options={"reset_mask": done})
    dt = time.perf_counter() - t0
    vec.close()
    return width * steps / dt


def section_a(width: int) -> None:
    from envs.bandit import BanditDistribution
    from envs.nav2d import Nav2DDistribution

    print(f"(a) env + collector, uniform random actions, B={width}")
    for name, dist, gym_id, kwargs, episodes, sync_steps in [
        ("bandit", BanditDistribution(arms=5), "metarl/Bandit-v0", {"arms": 5}, 100, 10),
        ("nav2d", Nav2DDistribution(), "metarl/Nav2D-v0", {}, 1, 10),
    ]:
        ours = collector_steps_per_s(dist, width, episodes, RandomPolicy(dist.action_space))
        theirs = sync_vector_steps_per_s(gym_id, kwargs, width, sync_steps)
        print(
            f"  {name:7s} metarl collector {ours:12,.0f} steps/s | SyncVectorEnv {theirs:10,.0f} "
            f"steps/s | ratio {ours / theirs:7.1f}x  (target >= 50x)"
        )


class TimedPolicy:
    """Wraps a policy and accumulates the wall time of its ``step``."""

    def __init__(self, policy):
        self.policy = policy
        self.seconds = 0.0

    def initial_state(self, num_rows, device):
        return self.policy.initial_state(num_rows, device)

    def step(self, inp: StepInput, state, generator):
        t0 = time.perf_counter()
        out = self.policy.step(inp, state, generator)
        self.seconds += time.perf_counter() - t0
        return out


def section_b(width: int) -> None:
    from agents.rl2 import RL2, RL2Config
    from envs.bandit import BanditDistribution
    from envs.nav2d import Nav2DDistribution
    from metarl.problem import RLProblem

    print(f"(b) RL² GRU-256 policy, B={width}: share of collection time outside the policy forward")
    for name, dist, episodes, steps in [
        ("bandit", BanditDistribution(arms=5), 10, None),
        ("nav2d", Nav2DDistribution(), 1, 50),
    ]:
        problem = RLProblem(dist, episodes, max_episode_steps=steps)
        learner = RL2(problem, RL2Config(hidden_size=256))
        env = dist.make_batched_env(width, "cpu")
        collector = Collector(env, steps)
        tasks = dist.sample_tasks(width, np.random.default_rng(0))
        gen = torch.Generator().manual_seed(0)
        collector.collect(learner.policy, tasks, 1, gen)  # warm-up
        timed = TimedPolicy(learner.policy)
        t0 = time.perf_counter()
        batch = collector.collect(timed, tasks, episodes, gen)
        total = time.perf_counter() - t0
        share = 1.0 - timed.seconds / total
        print(
            f"  {name:7s} {float(batch.valid.sum()) / total:10,.0f} steps/s; "
            f"policy {timed.seconds:.2f}s "
            f"of {total:.2f}s -> outside the policy: {100 * share:4.1f}%  (target <= 15%)"
        )


def section_c(width: int) -> None:
    from agents.rl2 import RL2, RL2Config
    from agents.snail import SNAIL, SNAILAgentConfig
    from envs.bandit import BanditDistribution
    from metarl.problem import RLProblem

    episodes = 500
    print(f"(c) SNAIL vs RL² collection on bandit k=5, n={episodes}, B={width}")
    dist = BanditDistribution(arms=5)
    problem = RLProblem(dist, episodes)
    rates = {}
    for name, learner in [
        ("rl2", RL2(problem, RL2Config(hidden_size=256))),
        ("snail", SNAIL(problem, SNAILAgentConfig())),
    ]:
        rates[name] = collector_steps_per_s(dist, width, episodes, learner.policy, repeats=1)
        print(f"  {name:6s} {rates[name]:10,.0f} steps/s")
    print(
        f"  RL² / SNAIL time ratio: {rates['rl2'] / rates['snail']:.2f}x  (target: SNAIL within 3x)"
    )


def section_d(width: int) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from maze_speed import maze_steps_per_second

    print(f"(d) maze env-steps/s at B={width}, observation rendering included (target >= 200k)")
    for size in (5, 9):
        for view in ("rays", "topdown"):
            rate = maze_steps_per_second(width, 50, view=view, size=size)
            print(f"  size {size} {view:8s} {rate:12,.0f} steps/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--sections", default="a,b,c,d")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    if "a" in sections:
        section_a(args.width)
    if "b" in sections:
        section_b(args.width)
    if "c" in sections:
        section_c(min(args.width, 1024))
    if "d" in sections:
        section_d(args.width)


if __name__ == "__main__":
    main()
