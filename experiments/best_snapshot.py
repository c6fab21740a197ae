"""Picks a run's best snapshot on validation tasks and reports it on fresh test tasks.

A run trained with ``train.snapshot_every=N`` keeps ``checkpoints/iter_NNNNNN.pt``. When
the held-out return peaks before the end of training (MAML on nav2d: the 1-step return
peaks within 50 iterations, then drifts down), the last checkpoint under-reports what the
run reached, and the best of many noisy periodic meta-tests over-reports it (the maximum
of noisy readings is biased upwards). This script does the standard thing instead:

1. every snapshot (optionally only those within ``--max-minutes`` of training time, as
   the checkpoint records it) is meta-tested on ``--val-tasks`` tasks of the held-out
   seed ``--val-seed``;
2. the snapshot with the best mean at ``--x`` (a gradient step for MAML and Meta-SGD, an
   episode for RL² and SNAIL) is meta-tested again on ``--test-tasks`` tasks of a
   different seed, ``--test-seed``; that second figure, with its 95% CI, is the result.

Both stages use ``metarl eval``'s code path (:func:`metarl.evaluate.evaluate_run`,
learner curve only) and the same meta-test protocol: the run's own, or the one that
``--set algo.eval_*=VALUE`` gives (as ``metarl eval --set``, e.g. the MAML authors'
``--set algo.eval_trajectories=40 --set "algo.eval_lr_scale=[1.0, 0.5]"``). Outputs go
under ``RUN_DIR/best_snapshot/`` (``--out`` to change it): ``val/`` and ``test/``
(``metarl eval``'s files), ``selection.csv`` (every figure above, with the protocol
overrides) and ``selection.png`` (validation curve against training time, and the test
figure).

Usage::

    python experiments/best_snapshot.py RUN_DIR [--max-minutes 10] [--x 1]
        [--val-seed 100] [--val-tasks 300] [--test-seed 101] [--test-tasks 2000]
        [--set algo.eval_KEY=VALUE ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from metarl.checkpoint import CheckpointError, load_checkpoint
from metarl.config import ConfigError
from metarl.evaluate import evaluate_run, mean_ci


def mean_and_ci(curve, x: float) -> tuple[float, float]:
    """Mean over tasks at ``x``, and the half-width of its 95% CI (as in adaptation.csv)."""
    if x not in curve.x:
        raise SystemExit(f"best_snapshot.py: --x {x:g} is not on the curve (x = {curve.x})")
    mean, low, high = mean_ci(curve.values[list(curve.x).index(x)])
    return mean, (high - low) / 2


def plot(rows: list, best: tuple, test: tuple[float, float], args, path: Path) -> None:
    """Validation mean ± CI per snapshot against training minutes, and the test figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    minutes = [r[2] for r in rows]
    ax.errorbar(
        minutes,
        [r[3] for r in rows],
        yerr=[r[4] for r in rows],
        fmt="o-",
        ms=3,
        capsize=2,
        label=f"validation ({args.val_tasks} tasks, seed {args.val_seed})",
    )
    ax.errorbar(
        [best[2]],
        [test[0]],
        yerr=[test[1]],
        fmt="s",
        color="C3",
        capsize=3,
        label=f"selected, test ({args.test_tasks} tasks, seed {args.test_seed})",
    )
    ax.set_xlabel("training time of the snapshot (min)")
    ax.set_ylabel(f"mean at x = {args.x:g}")
    ax.set_title(args.run_dir.name, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--max-minutes", type=float, default=0.0, help="0: every snapshot")
    p.add_argument("--x", type=float, default=1, help="gradient step or episode to compare")
    p.add_argument("--val-seed", type=int, default=100)
    p.add_argument("--val-tasks", type=int, default=300)
    p.add_argument("--test-seed", type=int, default=101)
    p.add_argument("--test-tasks", type=int, default=2000)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="algo.eval_KEY=VALUE",
        help="meta-test protocol override for both stages, as metarl eval --set (repeatable)",
    )
    p.add_argument("--out", type=Path, help="output directory (default RUN_DIR/best_snapshot)")
    args = p.parse_args()
    try:
        return select(p, args)
    except (ConfigError, CheckpointError) as e:
        # One line and exit 2, as from metarl eval (argparse's usage dump would not help).
        print(f"best_snapshot.py: error: {e}", file=sys.stderr)
        return 2


def select(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Stage 1 on every snapshot, stage 2 on the best; writes selection.csv and .png.

    Usage errors go through ``p.error`` (argparse's usage line and the message, exit 2).
    """
    if args.val_seed == args.test_seed:
        p.error("--val-seed and --test-seed must differ (selection and report on fresh tasks)")
    snapshots = sorted((args.run_dir / "checkpoints").glob("iter_*.pt"))
    if not snapshots:
        p.error(f"no snapshots in {args.run_dir}/checkpoints (train with train.snapshot_every)")
    out = args.out or args.run_dir / "best_snapshot"
    protocol = "; ".join(args.set) or "default"
    rows = []
    for path in snapshots:
        state = load_checkpoint(path)
        minutes = state["elapsed"] / 60
        if args.max_minutes and minutes > args.max_minutes:
            continue
        curves = evaluate_run(
            args.run_dir,
            args.val_tasks,
            args.val_seed,
            out / "val" / path.stem,
            baselines=False,
            checkpoint=path.name,
            sets=args.set,
        )
        (curve,) = curves.values()
        mean, ci = mean_and_ci(curve, args.x)
        rows.append((path.name, state["iteration"], minutes, mean, ci))
        print(
            f"{path.name}  it. {state['iteration']:4d}  {minutes:5.1f} min  {mean:9.3f} ± {ci:.3f}",
            flush=True,
        )
    if not rows:
        p.error(f"no snapshot within {args.max_minutes:g} minutes of training")
    best = max(rows, key=lambda r: r[3])
    curves = evaluate_run(
        args.run_dir,
        args.test_tasks,
        args.test_seed,
        out / "test",
        baselines=False,
        checkpoint=best[0],
        sets=args.set,
    )
    (curve,) = curves.values()
    mean, ci = mean_and_ci(curve, args.x)
    with open(out / "selection.csv", "w", newline="") as f:
        w = csv.writer(f)
        header = ["snapshot", "iteration", "minutes", "stage", "seed", "tasks", "mean", "ci95"]
        w.writerow([*header, "protocol"])
        val = [
            (name, it, mins, "val", args.val_seed, args.val_tasks, m, c)
            for name, it, mins, m, c in rows
        ]
        test = (best[0], best[1], best[2], "test", args.test_seed, args.test_tasks, mean, ci)
        for name, it, mins, stage, seed, tasks, m, c in [*val, test]:
            w.writerow([name, it, f"{mins:.2f}", stage, seed, tasks, m, c, protocol])
    plot(rows, best, (mean, ci), args, out / "selection.png")
    print(
        f"best on validation: {best[0]} (it. {best[1]}, {best[2]:.1f} min of training); "
        f"at x = {args.x:g} on {args.test_tasks} test tasks (seed {args.test_seed}): "
        f"{mean:.3f} ± {ci:.3f} (95% CI); wrote {out / 'selection.csv'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
