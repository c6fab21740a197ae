"""Regenerates the bandit and tabular-MDP tables of ``experiments/RESULTS.md``.

Every baseline is evaluated here, on the same held-out tasks as the learners (the test
stream of seed 0). Learner cells are read from ``experiments/runs/<config>/eval/summary.csv``
(or from ``experiments/runs/<config>_ft/``, a fine-tune warm-started from that run, once it
has been evaluated), written by ``metarl eval RUN_DIR --tasks N`` with N = 10,000 for bandits
and 1,000 for MDPs (the same tasks, so learners and baselines share every task); a cell
whose run does not exist is printed as "not run".

Usage:
    python experiments/tables.py [--tasks 10000] [--cells n10k5,n100k10,...] [--mdp 10,25]

An empty ``--cells ""`` or ``--mdp ""`` skips that table.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import torch
import yaml

from envs.bandit import BanditDistribution
from envs.tabular_mdp import TabularMDPDistribution
from metarl.evaluate import mean_ci
from metarl.problem import RLProblem
from metarl.tasks import torch_generator

RUNS = Path(__file__).parent / "runs"

#: The papers' numbers that this project could check (the PDFs are not available offline):
#: (Gittins, RL², SNAIL) mean trial returns from RL² Table 1 / SNAIL Table 3, None where not
#: transcribed. MDP cells (RL² Table 2 / SNAIL Table 4) are not transcribed; their
#: normalisation also differs from ours (the papers' random policy scores 0.10, ours 0.45).
PAPER_BANDITS: dict[tuple[int, int], tuple[float | None, float | None, float | None]] = {
    (10, 5): (6.6, 6.7, 6.6),
    (100, 10): (82.8, 83.5, None),
}
PAPER_MDPS: dict[int, tuple[float | None, float | None, float | None]] = {}
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


def final_run(config: str) -> str:
    """``<config>_ft`` if that fine-tune (warm-started from ``<config>``) was evaluated."""
    fine_tune = f"{config}_ft"
    return fine_tune if (RUNS / fine_tune / "eval" / "summary.csv").exists() else config


def learner_cell(config: str, algo: str, normalised: bool) -> str:
    path = RUNS / final_run(config) / "eval" / "summary.csv"
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


def paper_cell(values: tuple[float | None, ...] | None) -> str:
    if values is None:
        return "—"
    return " / ".join("?" if v is None else f"{v:g}" for v in values)


def _minutes(run: str) -> float:
    info = json.loads((RUNS / run / "run.json").read_text())
    return float(info.get("elapsed_s") or 0.0) / 60


def run_note(config: str) -> str:
    """``seed s, N min`` from a run's ``config.yaml`` and ``run.json`` ("" if not run).

    A fine-tune's minutes follow its source run's: ``seed 0, 174 + 105 (fine-tune) min``.
    """
    if not (RUNS / config / "run.json").exists():
        return ""
    seed = "?"
    config_file = RUNS / config / "config.yaml"
    if config_file.exists():
        seed = yaml.safe_load(config_file.read_text()).get("train", {}).get("seed", "?")
    minutes = f"{_minutes(config):.0f}"
    fine_tune = final_run(config)
    if fine_tune != config:
        minutes += f" + {_minutes(fine_tune):.0f} (fine-tune)"
    return f"seed {seed}, {minutes} min"


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
    header = [
        "setting",
        "rl2",
        "snail",
        *BANDIT_BASELINES,
        "paper Gittins / RL² / SNAIL",
        "runs (rl2; snail)",
    ]
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
            paper_cell(PAPER_BANDITS.get((n, k))),
            f"{run_note(f'{config}_rl2') or '—'}; {run_note(f'{config}_snail') or '—'}",
        ]
        lines.append("| " + " | ".join(row) + " |")
        print(f"bandit n={n} k={k}: {time.perf_counter() - t0:.0f}s", flush=True)
    return "\n".join(lines)


def mdp_table(ns: list[int], num_tasks: int) -> str:
    header = ["n", "rl2", "snail", *MDP_BASELINES, "paper PSRL / RL² / SNAIL", "runs (rl2; snail)"]
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
            paper_cell(PAPER_MDPS.get(n)),
            f"{run_note(f'mdp_n{n}_rl2') or '—'}; {run_note(f'mdp_n{n}_snail') or '—'}",
        ]
        lines.append("| " + " | ".join(row) + " |")
        print(f"mdp n={n}: {time.perf_counter() - t0:.0f}s", flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10000, help="bandit test tasks")
    parser.add_argument("--mdp-tasks", type=int, default=1000, help="MDP test tasks")
    parser.add_argument(
        "--cells", default="n10k5,n10k10,n10k50,n100k5,n100k10,n100k50,n500k5,n500k10,n500k50"
    )
    parser.add_argument("--mdp", default="10,25,50,75,100")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cells = []
    for cell in filter(None, args.cells.split(",")):
        n, k = cell[1:].split("k")
        cells.append((int(n), int(k)))
    # An empty list skips that table (``--cells ""`` regenerates only the MDP rows).
    if cells:
        print("## Bandits: mean trial return ± 95% CI\n")
        print(bandit_table(cells, args.tasks))
    mdp_ns = [int(n) for n in filter(None, args.mdp.split(","))]
    if mdp_ns:
        print("\n## Tabular MDPs: trial return / value-iteration optimum\n")
        print(mdp_table(mdp_ns, args.mdp_tasks))


if __name__ == "__main__":
    main()
