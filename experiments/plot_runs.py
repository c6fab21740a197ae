"""Plots the meta-training curve of every run under ``experiments/runs/``.

For each run directory with a ``metrics.csv``, writes ``experiments/plots/<run>.png``: the
meta-training metric (return, or few-shot accuracy / MSE) per iteration, a moving average,
and the periodic meta-test points on held-out tasks, against iterations (top axis: training
time in minutes).

Usage:
    python experiments/plot_runs.py [RUN_DIR ...]   # default: every run in experiments/runs
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
METRICS = ("return", "accuracy", "mse")


def read_metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> tuple[list[int], list[float]]:
    """Iterations and values of the rows where ``key`` is set and finite."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key, "")
        if value not in ("", None) and math.isfinite(float(value)):
            xs.append(int(row["iteration"]))
            ys.append(float(value))
    return xs, ys


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: Path, out_dir: Path) -> Path | None:
    """Writes ``out_dir/<run>.png``; returns its path (None if the run has no metrics)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    rows = read_metrics(path)
    if not rows:
        return None
    metric = next((m for m in METRICS if f"meta_train/{m}" in rows[0]), None)
    test_metric = next((m for m in METRICS if f"meta_test/{m}" in rows[0]), metric)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if metric:
        xs, ys = column(rows, f"meta_train/{metric}")
        ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=0.8, label=f"meta-train {metric}")
        # Short runs (tens of noisy iterations) still need some smoothing to show a trend.
        window = max(1, len(ys) // 50, min(10, len(ys) // 10))
        ax.plot(
            xs,
            moving_average(ys, window),
            color="tab:blue",
            linewidth=1.8,
            label=f"meta-train (moving average of {window})",
        )
    if test_metric:
        xs, ys = column(rows, f"meta_test/{test_metric}")
        ax.plot(xs, ys, "o-", color="tab:red", label=f"meta-test {test_metric} (held-out tasks)")
    if metric == "mse":
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(metric or test_metric or "")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    its, minutes = column(rows, "time/elapsed_s")
    if len(its) > 1 and minutes[-1] > 0:
        scale = (minutes[-1] / 60) / max(its[-1], 1)
        top = ax.secondary_xaxis("top", functions=(lambda i: i * scale, lambda m: m / scale))
        top.set_xlabel("training time (min)")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{run_dir.name}.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run directories")
    parser.add_argument("--out", type=Path, default=HERE / "plots")
    args = parser.parse_args(argv)
    runs = args.runs or sorted(p for p in (HERE / "runs").iterdir() if p.is_dir())
    for run in runs:
        out = plot_run(run, args.out)
        if out:
            print(f"wrote {out}")


if __name__ == "__main__":
    main()
