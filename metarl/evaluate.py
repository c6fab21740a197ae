"""Meta-test a trained run: adaptation curves with 95% CIs, next to the baselines.

Writes, in the output directory:

* ``adaptation.csv``: ``learner,x,mean_return,ci_low,ci_high,n_tasks``, one row per
  learner and x (episode index within the trial, or gradient step);
* ``summary.csv``: each learner's mean trial return with its CI, and the return normalised
  by the env's exact optimum where the env provides one;
* ``adaptation.png``: the curves with shaded CIs;
* ``per_task.csv``: ``learner,x,task,value`` plus the task's parameters (e.g.
  ``direction``) where tasks are plain dicts of numbers, so a mean can be split by task
  kind (forward against backward, say) without re-running the evaluation;
* for few-shot runs, query accuracy (or MSE) in place of the return, against inner
  gradient steps or shots seen, with a chance-level baseline (and ``fits.png`` for
  sinusoid regression);
* a TensorBoard event file with the same curves (``adaptation/<learner>`` against x).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metarl.checkpoint import CheckpointError, load_checkpoint, load_error_line
from metarl.config import INT_MAX, ConfigError, build_run_config, parse_set
from metarl.learner import Curve
from metarl.registry import resolve_algo, resolve_env
from metarl.runner import (
    CHECKPOINT,
    RunDirError,
    atomic_write_text,
    available_device,
    build_learner,
    build_problem,
    load_run,
)
from metarl.tasks import torch_generator

EVAL_SEED_STREAM = 2


def mean_ci(values: torch.Tensor) -> tuple[float, float, float]:
    """Mean and normal-approximation 95% confidence interval over the last dim."""
    values = values.double()
    n = values.shape[-1]
    mean = float(values.mean())
    half = 1.96 * float(values.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
    return mean, mean - half, mean + half


def baseline_curves(problem: Any, tasks: Any, generator: torch.Generator) -> dict[str, Curve]:
    """Runs every baseline policy of the problem through the collector on ``tasks``."""
    curves = {}
    x = list(range(1, problem.episodes + 1))
    for name, factory in problem.baselines().items():
        batch = problem.collect(factory(), tasks, generator)
        curves[name] = Curve(
            x,
            batch.episode_returns(problem.episodes).cpu(),
            "episode",
            lengths=batch.episode_lengths(problem.episodes).cpu(),
            batch=batch,
        )
    return curves


def task_parameter_columns(tasks: Any) -> tuple[list[str], list[list[Any]]]:
    """Column names and per-task rows for tasks given as flat dicts of numbers.

    Gymnasium-backed task distributions (MuJoCo direction/velocity, user envs) describe a
    task as a ``set_task`` dict; tensor envs keep tasks in batched tensors, which get no
    parameter columns (their ``task`` index still identifies them).
    """
    if not isinstance(tasks, (list, tuple)) or not tasks or not isinstance(tasks[0], dict):
        return [], []
    keys = list(tasks[0])
    flat = all(
        isinstance(t, dict)
        and list(t) == keys
        and all(isinstance(v, (bool, int, float)) for v in t.values())
        for t in tasks
    )
    return (keys, [[t[k] for k in keys] for t in tasks]) if flat else ([], [])


def write_per_task(out: Path, curves: dict[str, Curve], tasks: Any = None) -> None:
    """Writes ``per_task.csv``: every curve's value per task and x, with task parameters.

    Only curves on the main x axis (the first curve's) and over all the tasks are written:
    others, such as SB3 PPO's learning curve on a few tasks against env steps, would not
    line up with the task index.
    """
    first = next(iter(curves.values()))
    main_label = first.x_label
    n_tasks = len(tasks) if isinstance(tasks, (list, tuple)) else first.values.shape[1]
    keys, params = task_parameter_columns(tasks)
    with open(out / "per_task.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["learner", "x", "task", "value", *keys])
        for name, curve in curves.items():
            if curve.values.shape[1] != n_tasks or curve.x_label != main_label:
                continue
            values = curve.values.double().cpu().tolist()
            for i, x in enumerate(curve.x):
                for task, value in enumerate(values[i]):
                    writer.writerow(
                        [name, x, task, f"{value:.6g}", *(params[task] if params else [])]
                    )


def write_outputs(
    out: Path,
    curves: dict[str, Curve],
    optimum: torch.Tensor | None = None,
    title: str = "",
    tasks: Any = None,
) -> None:
    """Writes adaptation.csv, summary.csv, adaptation.png and TensorBoard curves.

    ``optimum`` is the best expected return of one *episode* of each task, ``[tasks]``
    (e.g. value iteration's); when it is positive, summary.csv's ``normalised`` column
    divides each curve's summary by it: an episode curve's trial return by ``episodes``
    optima, any other curve's headline value (a mean return per episode, e.g. after the
    last gradient step) by one. Curves measured on other tasks (an SB3 learning curve on
    the first few) are left blank.

    ``adaptation.csv`` keeps its fixed columns and holds the curves measured on the main x
    axis (the first curve's: episode or gradient step). Curves on another axis, such as an
    SB3 learning curve against env steps, go to ``other_curves.csv`` (with an ``x_label``
    column) and to their own panel of ``adaptation.png``. ``per_task.csv`` holds the
    per-task values behind every mean (see :func:`write_per_task`); ``tasks``, when given,
    adds their parameters to it.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_per_task(out, curves, tasks)
    main_label = next(iter(curves.values())).x_label
    columns = ["learner", "x", "mean_return", "ci_low", "ci_high", "n_tasks"]
    with (
        open(out / "adaptation.csv", "w", newline="") as f,
        open(out / "other_curves.csv", "w", newline="") as g,
    ):
        main, other = csv.writer(f), csv.writer(g)
        main.writerow(columns)
        other.writerow([*columns, "x_label"])
        for name, curve in curves.items():
            for i, x in enumerate(curve.x):
                m, lo, hi = mean_ci(curve.values[i])
                row = [name, x, f"{m:.6g}", f"{lo:.6g}", f"{hi:.6g}", curve.values.shape[1]]
                if curve.x_label == main_label:
                    main.writerow(row)
                else:
                    other.writerow([*row, curve.x_label])
    if not any(c.x_label != main_label for c in curves.values()):
        (out / "other_curves.csv").unlink()
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["learner", "mean_total", "ci_low", "ci_high", "normalised", "n_tasks"])
        for name, curve in curves.items():
            # Episode curves: the whole trial's return. Other curves: the headline x (by
            # default the last: after the last gradient step, or at the end of a
            # from-scratch learning curve).
            total = curve.total()
            m, lo, hi = mean_ci(total)
            norm = ""
            if optimum is not None and bool((optimum > 0).all()) and total.shape == optimum.shape:
                best = optimum.double().cpu()
                if curve.x_label == "episode":
                    best = best * len(curve.x)
                norm = f"{float((total.double() / best).mean()):.6g}"
            writer.writerow(
                [name, f"{m:.6g}", f"{lo:.6g}", f"{hi:.6g}", norm, curve.values.shape[1]]
            )
    if any(c.lengths is not None for c in curves.values()):
        with open(out / "episode_lengths.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["learner", "episode", "mean_length", "ci_low", "ci_high", "n_tasks"])
            for name, curve in curves.items():
                if curve.lengths is None:
                    continue
                for i, x in enumerate(curve.x):
                    m, lo, hi = mean_ci(curve.lengths[i])
                    n = curve.lengths.shape[1]
                    writer.writerow([name, x, f"{m:.6g}", f"{lo:.6g}", f"{hi:.6g}", n])
    _plot(out / "adaptation.png", curves, title)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out)) as tb:
        for name, curve in curves.items():
            means = curve.values.double().mean(1)
            for x, m in zip(curve.x, means.tolist()):
                tb.add_scalar(f"adaptation/{name}", m, x)


def _plot(path: Path, curves: dict[str, Curve], title: str) -> None:
    """One panel per x axis (e.g. gradient steps, and env steps for SB3 PPO from scratch)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(c.x_label for c in curves.values()))
    fig, axes = plt.subplots(1, len(labels), figsize=(7 * len(labels), 4.5), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for name, curve in curves.items():
            if curve.x_label != label:
                continue
            stats = [mean_ci(curve.values[i]) for i in range(len(curve.x))]
            style = "-" if len(curve.x) > 1 else "o"
            width = 2.2 if name == title.split()[0] else 1.2
            ax.plot(curve.x, [s[0] for s in stats], style, label=name, linewidth=width)
            ax.fill_between(curve.x, [s[1] for s in stats], [s[2] for s in stats], alpha=0.2)
        ax.set_xlabel(label)
        y_label = next(c.y_label for c in curves.values() if c.x_label == label)
        ax.set_ylabel(f"{y_label} (95% CI)")
        if "MSE" in y_label:
            # Errors span decades, and an inner loop iterated past its training can diverge:
            # a log axis, capped at 10x the largest unadapted (x = first) error.
            ax.set_yscale("log")
            start = [float(c.values[0].double().mean()) for c in curves.values()]
            finite = [v for v in start if math.isfinite(v) and v > 0]
            if finite:
                ax.set_ylim(top=10 * max(finite))
        ax.set_title(title if label == labels[0] else f"from scratch, against {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _save_trial_images(
    out: Path, distribution: Any, tasks: Any, batch: Any, count: int = 4
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for i, image in enumerate(distribution.trial_images(tasks, batch, count)):
        plt.imsave(out / f"trial_{i}.png", image)


def evaluate_run(
    run_dir: str | Path,
    num_tasks: int = 1000,
    seed: int | None = None,
    out: str | Path | None = None,
    device: str | None = None,
    *,
    baselines: bool = True,
    checkpoint: str | Path | None = None,
    sets: Sequence[str] = (),
) -> dict[str, Curve]:
    """Meta-tests a checkpoint of ``run_dir`` (by default its last) on held-out tasks.

    Args:
        run_dir: A directory written by ``metarl train``.
        num_tasks: Held-out tasks to evaluate on.
        seed: Seed of the held-out split (default: the run's seed, so the split is disjoint
            from the tasks it trained on).
        out: Output directory (default ``RUN_DIR/eval``).
        device: Override the run's device.
        baselines: Add the env's baselines and the learner's own (e.g. MAML's fine-tuned
            random init); False gives the trained learner's curve alone, whose values do
            not depend on this flag.
        checkpoint: Which checkpoint: a file name in ``RUN_DIR/checkpoints`` (e.g. a
            ``train.snapshot_every`` snapshot, ``iter_000050.pt``) or a path to a checkpoint
            whose networks fit this run's configuration (default ``checkpoints/last.pt``).
        sets: ``algo.eval_*=VALUE`` overrides of the meta-test protocol (e.g.
            ``algo.eval_trajectories=40``); other keys would change what was trained and
            are refused. They are recorded in ``evaluation.json``.

    Returns:
        The curves, keyed by learner name (the trained learner under its algorithm name).
    """
    run_dir = Path(run_dir)
    if seed is not None and not 0 <= seed <= INT_MAX:
        raise ConfigError(f"evaluation seed must be in [0, 2**63 - 1], got {seed}")
    for item in sets:
        section, key, _ = parse_set(item)
        if section != "algo" or not key.startswith("eval_"):
            raise ConfigError(
                f"eval --set only takes algo.eval_* options (the meta-test protocol), "
                f"got {section}.{key}"
            )
    data = load_run(run_dir)
    flags = {"device": device} if device else {}
    config, env_cls, learner_cls = build_run_config(
        None, None, data, list(sets), flags, resolve_env, resolve_algo
    )
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    dev = available_device(config.train.device)
    out_dir = Path(out) if out else run_dir / "eval"
    # Before the evaluation, which can take minutes: an unwritable --out fails now.
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(
            f"cannot write the evaluation to {out_dir}: {e.strerror or type(e).__name__}"
        ) from None
    problem = build_problem(config, env_cls, dev)
    learner = build_learner(config, learner_cls, problem, dev)
    path = run_dir / CHECKPOINT
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        # A bare file name means one of this run's checkpoints; anything else is a path.
        in_run = checkpoint.name == str(checkpoint)
        path = run_dir / CHECKPOINT.parent / checkpoint if in_run else checkpoint
    state = load_checkpoint(path, map_location=dev)
    try:
        learner.load_state_dict(state["learner"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint does not fit this run's learner: {load_error_line(e)}"
        ) from None
    seed = config.train.seed if seed is None else seed
    tasks = problem.sample_test_tasks(num_tasks, seed)
    generator = torch_generator(seed, EVAL_SEED_STREAM, device=dev)
    # Only "no" is passed on, so a plug-in learner's two-argument evaluate() still works.
    curves = (
        learner.evaluate(tasks, generator)
        if baselines
        else learner.evaluate(tasks, generator, baselines=False)
    )
    baseline_generator = torch_generator(seed, EVAL_SEED_STREAM, 1, device=dev)
    learner_curve = curves[config.algorithm]
    if baselines and learner_curve.x_label == "episode":
        curves.update(baseline_curves(problem, tasks, baseline_generator))
    elif baselines and hasattr(problem, "baseline_values"):
        # Few-shot: chance-level baselines, flat across the learner's x (they do not adapt).
        for name, values in problem.baseline_values(tasks, baseline_generator).items():
            curves[name] = Curve(
                learner_curve.x,
                values.cpu().expand(len(learner_curve.x), -1),
                learner_curve.x_label,
                y_label=learner_curve.y_label,
                headline=learner_curve.headline,
            )
    distribution = getattr(problem, "distribution", None)
    optimum = None
    if hasattr(distribution, "optimal_episode_return"):
        optimum = distribution.optimal_episode_return(tasks)
    title = f"{config.algorithm} on {config.environment}"
    write_outputs(out_dir, curves, optimum, title=title, tasks=tasks)
    # What produced these files, so an evaluation directory can be read on its own.
    record = {
        "run_dir": str(run_dir),
        "checkpoint": str(path),
        "iteration": state.get("iteration"),
        "tasks": num_tasks,
        "seed": seed,
        "baselines": baselines,
        "overrides": list(sets),
    }
    atomic_write_text(out_dir / "evaluation.json", json.dumps(record, indent=2) + "\n")
    if hasattr(distribution, "trial_images") and learner_curve.batch is not None:
        # Envs that can draw trials (the maze: episode paths side by side) get a few PNGs.
        _save_trial_images(out_dir, distribution, tasks, learner_curve.batch)
    if hasattr(learner, "save_figures"):
        learner.save_figures(out_dir, tasks)  # e.g. sinusoid fits against the true curves
    problem.close()
    return curves
