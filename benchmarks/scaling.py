"""HalfCheetahDir sampling throughput with 1 vs 2 workers (``process`` and ``ray``).

The default workload is one MAML-TRPO sampling pass of the paper: 40 tasks x 20
trajectories x 200 steps (800 rows, 160k env steps), acted by an RL² GRU policy inside
the workers. Fewer rows per worker make the per-step fixed cost (one policy forward and
the collector's bookkeeping per step, whatever the width) dominate, which no number of
workers removes; ``--per-task 1`` shows that regime.

Every configuration is measured in the same run, interleaved round by round so that
drifting background load hits all of them alike, and reported as env-steps/s and as
ratios: 2 workers over 1 worker per backend, and each over the ``local`` sampler.

From the 1 → 2 worker speedup ``S2`` an Amdahl fit gives the serial fraction
``s = 2 / S2 - 1`` (``S(n) = 1 / (s + (1 - s) / n)``) and its projection to a 64-core
cluster, where at most ``min(64, tasks)`` shards can run at once. The fit rests on one
point measured on whatever machine this runs on; on a shared machine the second worker
competes with other jobs for a core, which shows up as "serial" time. The script prints
the load average before and after so the numbers can be judged.

Usage:
    python benchmarks/scaling.py [--tasks 40] [--per-task 20] [--horizon 200] [--rounds 2]
        [--hidden 64] [--backends process,ray]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import time

import torch


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        load = os.getloadavg()
        return f"load average: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"


def amdahl_serial_fraction(speedup: float, n: int = 2) -> float:
    """``s`` with ``1 / (s + (1 - s) / n) = speedup``, clipped to [0, 1]."""
    s = (n / speedup - 1) / (n - 1)
    return min(1.0, max(0.0, s))


def amdahl_speedup(s: float, n: int) -> float:
    return 1.0 / (s + (1.0 - s) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=40, help="tasks per collection")
    parser.add_argument("--per-task", type=int, default=20, help="trials (rows) per task")
    parser.add_argument("--horizon", type=int, default=200, help="HalfCheetahDir horizon")
    parser.add_argument("--rounds", type=int, default=2, help="timed collections per config")
    parser.add_argument("--hidden", type=int, default=64, help="RL² GRU size of the policy")
    parser.add_argument("--backends", default="process,ray")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from agents.rl2 import RL2, RL2Config
    from envs.mujoco_dirvel import HalfCheetahDirEnv
    from metarl.problem import RLProblem
    from metarl.samplers import ray_available

    backends = [b for b in args.backends.split(",") if b]
    if "ray" in backends and not ray_available():
        print("ray is not installed: skipping the ray backend")
        backends.remove("ray")
    if "ray" in backends:
        import ray

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # Logical CPUs: the 1- and 2-actor pools (1 CPU each) both stay up between rounds;
        # they never collect at the same time.
        ray.init(num_cpus=max(3, os.cpu_count() or 1), include_dashboard=False)

    print(f"machine: {os.cpu_count()} CPUs; before: {uptime()}")
    rows = args.tasks * args.per_task
    print(
        f"HalfCheetahDir, {args.tasks} tasks x {args.per_task} trials x {args.horizon} steps "
        f"= {rows * args.horizon} env steps per collection, RL² GRU({args.hidden}) policy "
        "acting in the workers, 1 torch thread each"
    )
    factory = functools.partial(HalfCheetahDirEnv, horizon=args.horizon)
    configs = [("local", 1)] + [(b, w) for b in backends for w in (1, 2)]
    problems = {
        (kind, w): RLProblem(factory(), 1, env_factory=factory, sampler=kind, workers=w)
        for kind, w in configs
    }
    reference = problems[("local", 1)]
    torch.manual_seed(0)
    policy = RL2(reference, RL2Config(hidden_size=args.hidden)).policy
    distinct = reference.sample_train_tasks(args.tasks, seed=0, iteration=0)
    tasks = [task for task in distinct for _ in range(args.per_task)]  # task-major, as MAML

    rates: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    timings: dict[tuple[str, int], list[dict]] = {c: [] for c in configs}
    t_start = time.perf_counter()
    for rnd in range(args.rounds + 1):  # round 0 warms up: starts workers, builds envs
        for config in configs:
            problem = problems[config]
            gen = torch.Generator().manual_seed(rnd)
            t0 = time.perf_counter()
            batch = problem.collect(policy, tasks, gen)
            dt = time.perf_counter() - t0
            if rnd == 0:
                continue
            rates[config].append(float(batch.valid.sum()) / dt)
            timings[config].append({"wall": dt, **problem.sampler.last_timing})
    elapsed = time.perf_counter() - t_start
    for problem in problems.values():
        problem.close()

    median = {c: statistics.median(v) for c, v in rates.items()}
    header = ["sampler", "workers", "steps/s (median)", "min..max", "vs local"]
    header += ["driver-side s", "worker CPU s", "core share"]
    widths = [10, 8, 18, 18, 10, 15, 14, 12]
    print("\n" + "".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in
                         enumerate(zip(header, widths))))  # fmt: skip
    model: dict[tuple[str, int], float] = {}
    for config in configs:
        kind, w = config
        lo, hi = min(rates[config]), max(rates[config])
        cols = ["-", "-", "-"]
        if kind != "local":
            runs = timings[config]
            # Time in the driver not overlapped by any worker: snapshots, pipes, concat.
            serial = statistics.median(t["wall"] - max(t["shard_s"]) for t in runs)
            cpu = [statistics.median(t["shard_cpu_s"][k] for t in runs) for k in range(w)]
            busy = [statistics.median(t["shard_s"][k] for t in runs) for k in range(w)]
            # With a dedicated core per worker a shard would take its CPU time.
            model[config] = serial + max(cpu)
            share = sum(cpu) / sum(busy)
            cols = [f"{serial:.3f}", "+".join(f"{c:.2f}" for c in cpu), f"{share:.2f}"]
        print(
            f"{kind:<10}{w:>8}{median[config]:>18.0f}{f'{lo:.0f}..{hi:.0f}':>18}"
            f"{median[config] / median[('local', 1)]:>10.2f}{cols[0]:>15}{cols[1]:>14}{cols[2]:>12}"
        )
    print(f"\n(rounds: {args.rounds} per config, {elapsed:.0f} s in all; after: {uptime()})")
    print(
        "core share: worker CPU seconds / worker wall seconds, i.e. how much of a core each "
        "worker actually got while collecting"
    )

    n_max = min(64, rows)
    for kind in backends:
        speedup = median[(kind, 2)] / median[(kind, 1)]
        s = amdahl_serial_fraction(speedup)
        print(
            f"\n{kind}, measured wall clock: 2 workers / 1 worker = {speedup:.2f}x -> Amdahl "
            f"serial fraction s = 2/{speedup:.2f} - 1 = {s:.2f} (clipped to [0, 1]); "
            f"projected on 64 cores: {amdahl_speedup(s, 64):.1f}x "
            f"({amdahl_speedup(s, n_max):.1f}x with at most {n_max} shards for {rows} "
            f"rows), ~{median[(kind, 1)] * amdahl_speedup(s, n_max):.0f} steps/s"
        )
        m_speedup = model[(kind, 1)] / model[(kind, 2)]
        m_s = amdahl_serial_fraction(m_speedup)
        inflation = sum(timings[(kind, 2)][-1]["shard_cpu_s"]) / sum(
            timings[(kind, 1)][-1]["shard_cpu_s"]
        )
        print(
            f"{kind}, dedicated-core model (driver-side time + slowest shard's CPU time): "
            f"{m_speedup:.2f}x -> s = {m_s:.2f}; projected on 64 cores: "
            f"{amdahl_speedup(m_s, 64):.1f}x ({amdahl_speedup(m_s, n_max):.1f}x with "
            f"{n_max} shards); 2 shards use {inflation:.2f}x the CPU of 1 (per-step fixed "
            "costs are paid by every worker)"
        )
    if "ray" in backends:
        ray.shutdown()


if __name__ == "__main__":
    main()
