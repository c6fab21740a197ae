"""Throughput of the batched maze env (envs/maze.py), observation rendering included.

Steps ``B`` rows with uniform random actions and, like the collector, resets the rows
whose episode ended after every step. Prints env-steps per second for each view.

Usage::

    python benchmarks/maze_speed.py                      # B = 4096, size 5, both views
    python benchmarks/maze_speed.py --sizes 5 9 --threads 1 2

Other benchmarks import :func:`maze_steps_per_second`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from envs.maze import MazeDistribution


def maze_steps_per_second(
    num_envs: int,
    steps: int,
    device: torch.device | str = "cpu",
    view: str = "rays",
    size: int = 5,
    seed: int = 0,
    repeats: int = 3,
) -> float:
    """Env-steps per second of :class:`envs.maze.MazeEnv` under random actions.

    Args:
        num_envs: Rows ``B``.
        steps: Timed steps per repeat (each step advances all ``B`` rows).
        device: Torch device.
        view: ``"rays"`` or ``"topdown"``.
        size: Maze size in cells.
        seed: Seeds the tasks and the actions.
        repeats: The best of this many timed runs is reported (the machine may be shared).

    Returns:
        ``num_envs * steps / seconds`` of the fastest repeat.
    """
    dist = MazeDistribution(size=size, view=view)
    env = dist.make_batched_env(num_envs, device)
    env.set_tasks(dist.sample_tasks(num_envs, np.random.default_rng(seed)))
    generator = torch.Generator(device=env.device).manual_seed(seed)
    env.reset(seed=seed)

    def run(n: int) -> None:
        for _ in range(n):
            action = torch.randint(3, (num_envs,), generator=generator, device=env.device)
            out = env.step(action)
            done = out.terminated | out.truncated
            if bool(done.any()):
                env.reset(done)
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)

    run(min(steps, 5))  # warm-up: allocator, lazy tables
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        best = max(best, num_envs * steps / (time.perf_counter() - start))
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num-envs", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5])
    parser.add_argument("--views", nargs="+", default=["rays", "topdown"])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    print(
        f"maze env throughput, B={args.num_envs}, {args.steps} steps x 3 (best), "
        f"device={args.device}, load average {os.getloadavg()[0]:.1f}"
    )
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            for view in args.views:
                sps = maze_steps_per_second(args.num_envs, args.steps, args.device, view, size)
                print(f"  threads={threads} size={size} view={view:8s} {sps:12,.0f} env-steps/s")


if __name__ == "__main__":
    main()
