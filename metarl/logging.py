"""Run-directory metrics: ``metrics.csv`` (one row per iteration) and TensorBoard scalars.

Scalars are namespaced ``meta_train/…`` (rollout statistics), ``meta_test/…`` (held-out
tasks) and ``losses/…``. On resume, rows and events past the checkpoint are dropped so the
resumed run's records read as if it had never stopped.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


def namespace(metrics: dict[str, float]) -> dict[str, float]:
    """Puts a learner's metric names under ``losses/`` or ``meta_train/``."""
    out = {}
    for key, value in metrics.items():
        if "/" in key:
            out[key] = value
        elif key.startswith("loss") or key.endswith("_loss"):
            out[f"losses/{key}"] = value
        else:
            out[f"meta_train/{key}"] = value
    return out


class MetricsLogger:
    """Writes ``metrics.csv`` and a TensorBoard event file in ``run_dir``.

    Args:
        run_dir: The run directory.
        start_iteration: First iteration to be logged; existing rows at or past it (work
            lost in a crash: logged after the last checkpoint) are removed.
        resume: Continuing an interrupted run. Also when ``start_iteration`` is 0 (a run
            killed before its first checkpoint), old rows and TensorBoard events are then
            discarded instead of duplicated.
    """

    def __init__(self, run_dir: str | Path, start_iteration: int = 0, resume: bool = False):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, str]] = []
        self.columns: list[str] = ["iteration"]
        if self.path.exists() and start_iteration > 0:
            self.columns, self.rows = _read_rows(self.path, start_iteration)
        self._rewrite()
        purge = start_iteration if (start_iteration or resume) else None
        self.writer = SummaryWriter(str(run_dir), purge_step=purge)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        row = {"iteration": str(iteration), **{k: f"{v:.6g}" for k, v in metrics.items()}}
        new_columns = [k for k in row if k not in self.columns]
        self.rows.append(row)
        if new_columns:
            self.columns += sorted(new_columns)
            self._rewrite()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.columns).writerow(row)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, iteration)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _read_rows(path: Path, before: int) -> tuple[list[str], list[dict[str, str]]]:
    """Header and the rows of iterations ``< before``, one per iteration, in order.

    Tolerates what a crash can leave behind: a row cut short (fewer fields than the
    header, or an unparsable iteration) is dropped, and if an iteration appears twice the
    later row wins.
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or ["iteration"])
        by_iteration: dict[int, dict[str, str]] = {}
        for row in reader:
            if None in row.values() or None in row:
                continue  # torn row: too few or too many fields
            try:
                it = int(float(row["iteration"]))
            except (KeyError, TypeError, ValueError):
                continue
            if 0 <= it < before:
                by_iteration[it] = row
    return columns, [by_iteration[i] for i in sorted(by_iteration)]
