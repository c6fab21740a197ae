"""Regenerates the bandit and tabular-MDP tables of ``experiments/RESULTS.md``.

Every baseline is evaluated here, on the same held-out tasks as the learners (the test
stream of seed 0). Learner cells are read from ``experiments/runs/<config>/eval/summary.csv``,
written by ``metarl eval experiments/runs/<config> --tasks 1000``; a cell whose run does not
exist is printed as "not run".

Usage:
    python experiments/tables.py [--tasks 1000] [--cells n10k5,n100k10,...] [--mdp 10,25]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from envs.bandit import BanditDistribution
from envs.tabular_mdp import TabularMDPDistribution
from metarl.evaluate import mean_ci
from metarl.problem import RLProblem
from metarl.tasks import torch_generator

RUNS = Path(__file__).parent / "runs"
BANDIT_BASELINES = [
    "random",
    "gittins",
    "ucb1",
    "thompson",
    "optimistic-thompson",
    "eps-greedy",
    "greedy",
    "oracle",
]
MDP_BASELINES = ["random", "psrl", "opsrl", "ucrl2", "beb", "eps-greedy", "greedy", "oracle"]


def learner_cell(config: str, algo: str, normalised: bool) -> str:
    path = RUNS / config / "eval" / "summary.csv"
    if not path.exists():
        return "not run"
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["learner"] == algo:
                if normalised:
                    return f"{float(row['normalised']):.3f}"
                half = (float(row["ci_high"]) - float(row["ci_low"])) / 2
                return f"{float(row['mean_total']):.2f} ± {half:.2f}"
    return "not run"


def baseline_cells(problem: RLProblem, names: list[str], tasks, optimum=None) -> dict[str, str]:
    out = {}
    factories = problem.baselines()
    for name in names:
        batch = problem.collect(factories[name](), tasks, torch_generator(0, 2, 1))
        total = batch.trial_returns().cpu()
        if optimum is not None:
            out[name] = f"{float((total / optimum).mean()):.3f}"
        else:
            m, lo, hi = mean_ci(total)
            out[name] = f"{m:.2f} ± {(hi - lo) / 2:.2f}"
    return out


def bandit_table(cells: list[tuple[int, int]], num_tasks: int) -> str:
    header = ["setting", "rl2", "snail", *BANDIT_BASELINES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n, k in cells:
        t0 = time.perf_counter()
        problem = RLProblem(BanditDistribution(arms=k), episodes=n)
        tasks = problem.sample_test_tasks(num_tasks, seed=0)
        base = baseline_cells(problem, BANDIT_BASELINES, tasks)
        config = f"bandit_k{k}_n{n}"
        row = [
            f"n={n}, k={k}",
            learner_cell(f"{config}_rl2", "rl2", False),
            learner_cell(f"{config}_snail", "snail", False),
            *[base[b] for b in BANDIT_BASELINES],
        ]
        lines.append("| " + " | ".join(row) + " |")
        print(f"bandit n={n} k={k}: {time.perf_counter() - t0:.0f}s", flush=True)
    return "\n".join(lines)


def mdp_table(ns: list[int], num_tasks: int) -> str:
    header = ["n", "rl2", "snail", *MDP_BASELINES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in ns:
        t0 = time.perf_counter()
        dist = TabularMDPDistribution()
        problem = RLProblem(dist, episodes=n)
        tasks = problem.sample_test_tasks(num_tasks, seed=0)
        optimum = dist.optimal_episode_return(tasks).cpu() * n
        base = baseline_cells(problem, MDP_BASELINES, tasks, optimum)
        row = [
            str(n),
            learner_cell(f"mdp_n{n}_rl2", "rl2", True),
            learner_cell(f"mdp_n{n}_snail", "snail", True),
            *[base[b] for b in MDP_BASELINES],
        ]
        lines.append("| " + " | ".join(row) + " |")
        print(f"mdp n={n}: {time.perf_counter() - t0:.0f}s", flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument(
        "--cells", default="n10k5,n10k10,n10k50,n100k5,n100k10,n100k50,n500k5,n500k10,n500k50"
    )
    parser.add_argument("--mdp", default="10,25,50,75,100")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cells = []
    for cell in args.cells.split(","):
        n, k = cell[1:].split("k")
        cells.append((int(n), int(k)))
    print("## Bandits: mean trial return ± 95% CI\n")
    print(bandit_table(cells, args.tasks))
    print("\n## Tabular MDPs: trial return / value-iteration optimum\n")
    print(mdp_table([int(n) for n in args.mdp.split(",")], args.tasks))


if __name__ == "__main__":
    main()
