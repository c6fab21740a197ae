"""Prints the few-shot tables of ``experiments/RESULTS.md`` from the runs' eval outputs.

Reads ``experiments/runs/<config>/eval/adaptation.csv`` and ``summary.csv`` (written by
``metarl eval RUN_DIR --tasks 1000``) and ``run.json`` (training time, iterations); a run
that does not exist is printed as "not run". Nothing is recomputed.

Usage:
    python experiments/fewshot_tables.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

RUNS = Path(__file__).parent / "runs"

#: learner -> (target, paper) for Omniglot 5-way 1-shot (issue 5; papers' test accuracy).
OMNIGLOT_5W1S = {
    "maml": ("≥ 97%", "98.7"),
    "meta-sgd": ("≥ 97%", "99.5"),
    "protonet": ("≥ 98%", "98.8"),
    "snail": ("≥ 97%", "99.07"),
    "matchingnet": ("≥ 96%", "98.1"),
    "metanet": ("≥ 95%", "98.95"),
    "reptile": ("≥ 95%", "97.7"),
}
#: (setting, learner) -> paper accuracy for the other Omniglot settings.
OMNIGLOT_OTHER = {
    ("5w5s", "maml"): "99.9",
    ("5w5s", "protonet"): "99.7",
    ("5w5s", "snail"): "99.78",
    ("20w1s", "maml"): "95.8",
    ("20w1s", "protonet"): "96.0",
    ("20w1s", "snail"): "97.64",
}
#: shots -> (MAML, Meta-SGD) MSE after one step in the Meta-SGD paper (Table 1).
SINUSOID_PAPER = {5: ("0.686", "0.482"), 10: ("0.435", "0.258"), 20: ("0.228", "0.127")}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_info(run: Path) -> str:
    """Training minutes and iterations from ``run.json``."""
    path = run / "run.json"
    if not path.exists():
        return "?"
    info = json.loads(path.read_text())
    minutes = float(info.get("elapsed_s", 0)) / 60
    return f"{minutes:.1f} min, {info.get('iteration', '?')} it."


def accuracy_cell(run: Path, learner: str) -> str:
    """Headline accuracy ± half CI (percent) from ``summary.csv``."""
    path = run / "eval" / "summary.csv"
    if not path.exists():
        return "not run"
    for row in read_rows(path):
        if row["learner"] == learner:
            mean, half = (
                float(row["mean_total"]),
                (float(row["ci_high"]) - float(row["ci_low"])) / 2,
            )
            return f"{100 * mean:.2f} ± {100 * half:.2f} ({row['n_tasks']} tasks)"
    return "not run"


def curve_at(run: Path, learner: str, x: int) -> tuple[float, float] | None:
    """(mean, CI half-width) of ``learner`` at ``x`` in ``adaptation.csv``, if present."""
    path = run / "eval" / "adaptation.csv"
    if not path.exists():
        return None
    for row in read_rows(path):
        if row["learner"] == learner and int(row["x"]) == x:
            return float(row["mean_return"]), (float(row["ci_high"]) - float(row["ci_low"])) / 2
    return None


def mse_at(run: Path, learner: str, step: int) -> str:
    point = curve_at(run, learner, step)
    if point is None:
        return "not run"
    mean, half = point
    return f"{mean:.3f} ± {half:.3f}" if half == half else f"{mean:.3g}"


#: Gradient-based learners: their headline is after the last evaluated inner step; the
#: tables also give the accuracy after one step (MAML and Meta-SGD train with one).
TRAINED_ONE_STEP = ("maml", "meta-sgd", "reptile")


def one_step_note(run: Path, learner: str) -> str:
    point = curve_at(run, learner, 1) if learner in TRAINED_ONE_STEP else None
    return "" if point is None else f"; 1 step: {100 * point[0]:.2f} ± {100 * point[1]:.2f}"


def omniglot_tables() -> str:
    lines = [
        "| learner | 5-way 1-shot accuracy (%) | target | paper | training |",
        "|---|---|---|---|---|",
    ]
    for learner, (target, paper) in OMNIGLOT_5W1S.items():
        run = RUNS / f"omniglot_5w1s_{learner}"
        cell = accuracy_cell(run, learner) + one_step_note(run, learner)
        lines.append(f"| {learner} | {cell} | {target} | {paper} | {run_info(run)} |")
    lines += [
        "",
        "| setting | learner | accuracy (%) | paper | training |",
        "|---|---|---|---|---|",
    ]
    for (setting, learner), paper in OMNIGLOT_OTHER.items():
        run = RUNS / f"omniglot_{setting}_{learner}"
        cell = accuracy_cell(run, learner) + one_step_note(run, learner)
        lines.append(f"| {setting} | {learner} | {cell} | {paper} | {run_info(run)} |")
    return "\n".join(lines)


def sinusoid_table() -> str:
    lines = [
        "| shots | MAML, 1 step | Meta-SGD, 1 step | MAML, 10 steps | Meta-SGD, 10 steps | "
        "paper (MAML / Meta-SGD, 1 step) |",
        "|---|---|---|---|---|---|",
    ]
    for shots, (maml_paper, sgd_paper) in SINUSOID_PAPER.items():
        maml, sgd = RUNS / f"sinusoid_{shots}shot_maml", RUNS / f"sinusoid_{shots}shot_metasgd"
        lines.append(
            f"| {shots} | {mse_at(maml, 'maml', 1)} | {mse_at(sgd, 'meta-sgd', 1)} | "
            f"{mse_at(maml, 'maml', 10)} | {mse_at(sgd, 'meta-sgd', 10)} | "
            f"{maml_paper} / {sgd_paper} |"
        )
    return "\n".join(lines)


def main() -> None:
    print("## Omniglot: query accuracy on held-out characters ± 95% CI\n")
    print(omniglot_tables())
    print("\n## Sinusoid regression: query MSE ± 95% CI\n")
    print(sinusoid_table())


if __name__ == "__main__":
    main()
