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
        start_iteration: First iteration to be logged; existing rows at or past it (from
            work lost in a crash) are removed.
    """

    def __init__(self, run_dir: str | Path, start_iteration: int = 0):
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict[str, str]] = []
        self.columns: list[str] = ["iteration"]
        if self.path.exists() and start_iteration > 0:
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or ["iteration"])
                self.rows = [r for r in reader if int(float(r["iteration"])) < start_iteration]
        self._rewrite()
        self.writer = SummaryWriter(
            str(run_dir), purge_step=start_iteration if start_iteration else None
        )

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
