"""MAML-TRPO iteration cost.

(1) ``nav2d``: seconds per meta-iteration at the paper's 2D-navigation settings: 20 tasks ×
    20 trajectories × horizon 100, pre- and post-update sampling, one inner step, an exact
    second-order TRPO outer step (10 CG iterations), 100×100 ReLU policy. Target: <= 0.5
    s/iteration (peers on this machine type: pytorch-maml-rl 5.1 s, learn2learn 34 s).
    All variants run in the same process, interleaved iteration by iteration (same tasks
    and seeds, same machine load): the default (``hvp=gauss-newton``: the KL's Hessian as
    ``Σ Jᵀ F J``, each factor one autograd backward through a kept graph) and a baseline
    written the usual way, as pytorch-maml-rl does it (``hvp=autograd``: Hessian-vector
    products by double-backprop of the KL through the whole inner update); every line
    shows its speed-up over that baseline. Also shown: ``hvp_subsample=0.2``
    (CG curvature on every 5th step; gradient, inner step, KL check and line search stay
    exact), first-order MAML, and the exact step with pytorch-maml-rl's smaller 64x64
    tanh policy.
(2) ``cheetah``: the time split of one MAML-TRPO iteration on HalfCheetahDir (paper: 40
    tasks × 20 trajectories × horizon 200): sampling, inner adaptation (baseline fit,
    advantages, inner step), outer TRPO (meta-gradient, Hessian-vector-product setup, CG,
    line search).
(3) ``overhead``: :func:`mujoco_overhead_ratio`, env-steps/s of ``RLProblem.collect`` with
    the MAML per-task policy against a bare loop (``SyncVectorEnv.step`` plus one batched
    policy forward) of the same width. Target: >= 0.85.
(4) ``ant``: :func:`ant_sampling_ratio`, one MAML sampling pass on AntDir (rows end early
    when the ant becomes unhealthy) with the collector stepping only live sub-envs (the
    default) against stepping every sub-env until the horizon, in the same run.

Wall-clock times on a shared machine include time the process waits for a core; every
line therefore also shows the process CPU time (``cpu``), and ``uptime``'s load average is
printed before and after. CPU time is still inflated by the neighbours' use of the shared
caches and memory bandwidth, so compare figures as ratios within one run.

Usage:
    python benchmarks/maml_iteration.py [--sections nav2d,cheetah,overhead,ant] [--threads 1]
        [--iterations 3] [--cheetah-tasks 40] [--ant-tasks 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import gymnasium as gym
import numpy as np
import torch

from agents.maml import MAMLTRPO, MAMLTRPOConfig, repeat_tasks
from envs.mujoco_dirvel import AntDirEnv, HalfCheetahDirEnv
from envs.nav2d import Nav2DDistribution
from metarl.problem import RLProblem


class Clock:
    """Wall and process-CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0


def iterations(learner: MAMLTRPO, problem: RLProblem, n: int, warmup: int = 1) -> list[dict]:
    """Runs ``warmup + n`` meta-iterations; returns the metrics (+ wall/cpu) of the last n."""
    return interleaved([learner], problem, n, warmup)[0]


def interleaved(
    learners: list[MAMLTRPO], problem: RLProblem, n: int, warmup: int = 1
) -> list[list[dict]]:
    """``warmup + n`` meta-iterations of every learner, alternating iteration by iteration
    (same tasks and seeds); per learner the metrics (+ wall/cpu) of the last ``n``."""
    out: list[list[dict]] = [[] for _ in learners]
    for it in range(warmup + n):
        tasks = problem.sample_train_tasks(learners[0].tasks_per_iteration(), 0, it)
        for learner, ms in zip(learners, out):
            with Clock() as c:
                m = learner.train_iteration(tasks, torch.Generator().manual_seed(it))
            m["wall"], m["cpu"] = c.wall, c.cpu
            if it >= warmup:
                ms.append(m)
    return out


def median(ms: list[dict], key: str) -> float:
    return statistics.median(m[key] for m in ms)


def split_line(ms: list[dict]) -> str:
    keys = [
        ("sampling", "time/sampling_s"),
        ("inner adaptation", "time/adaptation_s"),
        ("meta-gradient", "time/outer_grad_s"),
        ("HVP setup", "time/outer_hvp_setup_s"),
        ("CG (HVPs)", "time/outer_cg_s"),
        ("line search", "time/outer_line_search_s"),
    ]
    total = statistics.median(m["wall"] for m in ms)
    parts = []
    for label, key in keys:
        v = statistics.median(m[key] for m in ms)
        parts.append(f"{label} {v:.3f}s ({100 * v / total:.0f}%)")
    return ", ".join(parts)


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_nav2d(n_iter: int) -> None:
    print(
        "(1) MAML-TRPO on nav2d: 20 tasks x 20 trajectories x horizon 100, 1 inner step, "
        f"TRPO 10 CG iterations, policy 100x100 ReLU; median of {n_iter} iterations after 1 "
        f"warm-up (load average {load()})"
    )
    problem = RLProblem(Nav2DDistribution(horizon=100), episodes=1)

    def learner(**extra) -> MAMLTRPO:
        torch.manual_seed(0)
        return MAMLTRPO(
            problem, MAMLTRPOConfig(meta_batch_size=20, trajectories_per_task=20, **extra)
        )

    def report(label: str, ms: list[dict], base: list[dict]) -> None:
        wall, cpu = median(ms, "wall"), median(ms, "cpu")
        hvp = statistics.median(m["time/outer_cg_s"] / max(1.0, m["trpo_hvp_calls"]) for m in ms)
        print(
            f"    {label:<42} {wall:6.2f} s/it wall, {cpu:6.2f} s cpu, {1e3 * hvp:4.0f} ms/HVP, "
            f"{median(base, 'wall') / wall:5.2f}x vs baseline (target <= 0.5 s)"
        )
        print(f"        split (wall): {split_line(ms)}")

    variants = [
        ("exact second order (default, Gauss-Newton form)", {}),
        ("baseline: the usual way (hvp=autograd)", {"hvp": "autograd"}),
        ("hvp_subsample=0.2", {"hvp_subsample": 0.2}),
        ("first_order=true", {"first_order": True}),
        ("first_order + hvp_subsample=0.2", {"first_order": True, "hvp_subsample": 0.2}),
        # pytorch-maml-rl's 2D-navigation policy, for comparison with its 5.1 s.
        ("exact, 64x64 tanh policy", {"hidden_sizes": (64, 64), "activation": "tanh"}),
    ]
    # All variants alternate iteration by iteration (same tasks and seeds), so that every
    # one of them sees the same machine load and their ratios are meaningful.
    results = interleaved([learner(**extra) for _, extra in variants], problem, n_iter)
    ours, base = results[0], results[1]
    for (label, _), ms in zip(variants, results):
        report(label, ms, base)
    print(
        "    speed-up of the default (exact second order) over the baseline, same run: "
        f"{median(base, 'wall') / median(ours, 'wall'):.2f}x wall, "
        f"{median(base, 'cpu') / median(ours, 'cpu'):.2f}x cpu"
    )
    print(f"    load average after: {load()}")


def bench_cheetah(n_tasks: int, n_iter: int) -> None:
    print(
        f"(2) MAML-TRPO on halfcheetah-dir: {n_tasks} tasks x 20 trajectories x horizon 200, "
        "1 inner step, exact second order"
    )
    env = HalfCheetahDirEnv()
    problem = RLProblem(env, episodes=1, env_factory=HalfCheetahDirEnv)
    torch.manual_seed(0)
    learner = MAMLTRPO(problem, MAMLTRPOConfig(meta_batch_size=n_tasks, trajectories_per_task=20))
    ms = iterations(learner, problem, n_iter, warmup=0)
    wall = statistics.median(m["wall"] for m in ms)
    cpu = statistics.median(m["cpu"] for m in ms)
    steps = statistics.median(m["env_steps"] for m in ms)
    print(f"    {wall:.1f} s/iteration wall, {cpu:.1f} s cpu, {steps:.0f} env steps")
    print(f"    split (wall): {split_line(ms)}")
    problem.close()


def _bare_loop_steps_per_s(learner: MAMLTRPO, tasks: list, traj: int, horizon: int) -> float:
    """SyncVectorEnv.step plus one batched per-task policy forward per step."""
    width = len(tasks) * traj
    vec = gym.vector.SyncVectorEnv(
        [lambda: HalfCheetahDirEnv(horizon=horizon)] * width,
        autoreset_mode=gym.vector.AutoresetMode.DISABLED,
    )
    for i, task in enumerate(repeat_tasks(tasks, traj)):
        vec.envs[i].unwrapped.set_task(task)
    fast = {
        k: v.detach().unsqueeze(0).repeat(len(tasks), *([1] * v.dim()))
        for k, v in learner.net.named_parameters()
    }
    gen = torch.Generator().manual_seed(0)
    std = fast["log_std"].exp().repeat_interleave(traj, 0)
    obs, _ = vec.reset(seed=0)
    with Clock() as c, torch.no_grad():
        for _ in range(horizon):
            x = torch.from_numpy(obs.astype(np.float32)).view(len(tasks), traj, -1)
            mean = learner.net.mean(fast, x).reshape(width, -1)
            act = mean + std * torch.randn(mean.shape, generator=gen)
            obs, *_ = vec.step(act.numpy())
    vec.close()
    return width * horizon / c.wall


def mujoco_overhead_ratio(
    tasks: int = 3, traj: int = 20, horizon: int = 200, repeats: int = 5
) -> float:
    """Env-steps/s through ``RLProblem.collect`` with the MAML policy / a bare loop.

    Both run ``tasks * traj`` HalfCheetahDir envs in one ``SyncVectorEnv`` (width <= 64,
    RLProblem's default chunk, so one chunk) for one ``horizon``-step episode, with the
    same per-task batched policy forward; the best of ``repeats`` runs each.

    Returns:
        The ratio (1.0: no overhead). Target: >= 0.85.
    """
    env = HalfCheetahDirEnv(horizon=horizon)
    problem = RLProblem(env, episodes=1, env_factory=lambda: HalfCheetahDirEnv(horizon=horizon))
    torch.manual_seed(0)
    learner = MAMLTRPO(problem, MAMLTRPOConfig(meta_batch_size=tasks, trajectories_per_task=traj))
    task_list = problem.sample_train_tasks(tasks, 0, 0)
    fast = {
        k: v.detach().unsqueeze(0).repeat(tasks, *([1] * v.dim()))
        for k, v in learner.net.named_parameters()
    }
    learner.sampler.collect(learner.net, fast, task_list, traj, torch.Generator().manual_seed(0))
    collect_best = bare_best = 0.0
    for r in range(repeats):
        with Clock() as c:
            batch = learner.sampler.collect(
                learner.net, fast, task_list, traj, torch.Generator().manual_seed(r)
            )
        collect_best = max(collect_best, float(batch.valid.sum()) / c.wall)
        bare_best = max(bare_best, _bare_loop_steps_per_s(learner, task_list, traj, horizon))
    problem.close()
    ratio = collect_best / bare_best
    print(
        f"(3) MuJoCo sampling overhead, width {tasks * traj} ({tasks} tasks x {traj} "
        f"trajectories), horizon {horizon}: RLProblem.collect {collect_best:.0f} env-steps/s, "
        f"bare SyncVectorEnv loop {bare_best:.0f} env-steps/s, ratio {ratio:.3f} "
        "(target >= 0.85)"
    )
    return ratio


def _step_every_row(env) -> None:
    """Makes a gym-backed env ignore ``live``: the collector's former behaviour, as a baseline."""
    step = env.step
    env.step = lambda action, live=None: step(action)


def ant_sampling_ratio(tasks: int = 8, traj: int = 20, repeats: int = 3) -> float:
    """Seconds of one AntDir sampling pass, stepping every sub-env / only live ones.

    Both variants sample the same tasks with the same seeds through ``TaskSampler.collect``
    (the MAML sampler, chunks of 64 rows), so their batches are identical; they differ only
    in whether rows whose episode ended keep simulating until the horizon. The best of
    ``repeats`` runs each (live rows first, then every row).

    Returns:
        The speed-up (time stepping every row / time stepping live rows).
    """
    problem = RLProblem(AntDirEnv(), episodes=1, env_factory=AntDirEnv)
    torch.manual_seed(0)
    learner = MAMLTRPO(problem, MAMLTRPOConfig(meta_batch_size=tasks, trajectories_per_task=traj))
    task_list = problem.sample_train_tasks(tasks, 0, 0)
    params = dict(learner.net.named_parameters())

    def sample(seed: int) -> tuple[float, float, float]:
        with Clock() as c, torch.no_grad():
            batch = learner.sampler.collect(
                learner.net, params, task_list, traj, torch.Generator().manual_seed(seed)
            )
        return c.wall, c.cpu, float(batch.valid.sum())

    sample(0)  # warm-up, builds the vector envs
    live = min(sample(r) for r in range(repeats))
    for env in problem._envs.values():
        _step_every_row(env)
    every = min(sample(r) for r in range(repeats))
    problem.close()
    rows = tasks * traj
    ratio = every[0] / live[0]
    print(
        f"(4) AntDir sampling, {tasks} tasks x {traj} trajectories x horizon 200 "
        f"({live[2]:.0f} of {rows * 200} row-steps live, {live[2] / (rows * 200):.0%}):\n"
        f"    every row: {every[0]:.2f} s wall ({every[1]:.2f} cpu) | live rows only: "
        f"{live[0]:.2f} s wall ({live[1]:.2f} cpu) | speed-up {ratio:.2f}x"
    )
    return ratio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="nav2d,cheetah,overhead,ant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--cheetah-tasks", type=int, default=40)
    p.add_argument("--ant-tasks", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {args.threads}, load average {load()} "
        f"on {os.cpu_count()} cores"
    )
    sections = args.sections.split(",")
    if "nav2d" in sections:
        bench_nav2d(args.iterations)
    if "cheetah" in sections:
        bench_cheetah(args.cheetah_tasks, 1)
    if "overhead" in sections:
        mujoco_overhead_ratio()
    if "ant" in sections:
        ant_sampling_ratio(args.ant_tasks)


if __name__ == "__main__":
    main()
