"""How long Ant episodes last, and why they end, at different control periods.

Rolls out a MAML Gaussian MLP policy on ``ant-vel`` or ``ant-dir`` for a few episodes per
``frame_skip`` (v5's timestep is 0.01 s, so ``dt = 0.01 * frame_skip``) and prints the mean
episode length, the lengths, and how each episode ended:

* ``z>1``: terminated because the torso rose above the healthy range ``[0.2, 1.0]`` (the
  ant jumped);
* ``z<0.2``: terminated below it (or a non-finite state);
* ``horizon``: truncated at ``env.horizon``.

The policy is either a freshly initialised one (the MAML initialisation: Xavier weights,
log-std 0, as at iteration 0 of training), or the pre-update policy θ of a run's
checkpoint (``--run``). Actions are sampled (not the mean), as in training.

Usage:
    python experiments/ant_episode_lengths.py                       # random init, fs 5 2 1
    python experiments/ant_episode_lengths.py --run experiments/runs/ant_vel_maml --frame-skips 5
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from agents.maml import GaussianMLP
from envs.mujoco_dirvel import AntDirEnv, AntVelEnv
from metarl.checkpoint import load_checkpoint

ENVS = {"ant-vel": AntVelEnv, "ant-dir": AntDirEnv}


def load_policy(run: str | None, obs_size: int, action_size: int) -> GaussianMLP:
    """θ from ``run``'s last checkpoint, or a fresh MAML initialisation."""
    net = GaussianMLP(obs_size, action_size)
    if run is not None:
        payload = load_checkpoint(f"{run}/checkpoints/last.pt")
        net.load_state_dict(payload["learner"]["model"]["policy"])
    return net


def episode(env, net: GaussianMLP, task: dict, seed: int) -> tuple[int, float, str]:
    """(length, return, how it ended) of one sampled episode."""
    env.set_task(task)
    obs, _ = env.reset(seed=seed)
    length, total = 0, 0.0
    while True:
        with torch.no_grad():
            mean = net(torch.as_tensor(obs, dtype=torch.float32))
            action = mean + torch.randn(mean.shape) * net.log_std.exp()
        obs, reward, terminated, truncated, _ = env.step(action.numpy())
        length += 1
        total += float(reward)
        if terminated:
            z = float(env.unwrapped.data.qpos[2])
            return length, total, "z>1" if z > 1.0 else "z<0.2"
        if truncated:
            return length, total, "horizon"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", choices=sorted(ENVS), default="ant-vel")
    parser.add_argument("--run", help="run directory whose checkpoint θ to roll out")
    parser.add_argument("--frame-skips", type=int, nargs="+", default=[5, 2, 1])
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"{args.env}, policy: {args.run or 'fresh MAML initialisation'}, seed {args.seed}")
    print("frame_skip  dt     mean length  ended by                 return  lengths")
    for frame_skip in args.frame_skips:
        env = ENVS[args.env](horizon=args.horizon, frame_skip=frame_skip)
        # Same policy weights and the same tasks and reset seeds for every frame skip.
        torch.manual_seed(args.seed)
        net = load_policy(args.run, env.observation_space.shape[0], env.action_space.shape[0])
        rng = np.random.default_rng(args.seed)
        tasks = env.sample_tasks(args.episodes, rng)
        runs = [episode(env, net, t, int(rng.integers(2**31))) for t in tasks]
        lengths = [n for n, _, _ in runs]
        ends = Counter(how for _, _, how in runs)
        ended = ", ".join(f"{k} {v}" for k, v in sorted(ends.items()))
        print(
            f"{frame_skip:>10}  {env.dt:.2f}  {np.mean(lengths):>11.1f}  {ended:<22}"
            f"  {np.mean([r for _, r, _ in runs]):>6.1f}  {sorted(lengths)}"
        )
        env.close()


if __name__ == "__main__":
    main()
