"""The meta-training loop: iterate, log, meta-test, checkpoint, resume.

Every source of randomness of iteration ``i`` is derived from ``(seed, i)``: its training
tasks, the env noise and the policy's sampling. A checkpoint therefore only has to hold
the learner's parameters and optimiser state plus the iteration counter, and a run resumed
from it continues exactly as the uninterrupted run would have (on CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from metarl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from metarl.config import RunConfig, dump_yaml
from metarl.learner import Curve, Learner, NonFiniteError
from metarl.logging import MetricsLogger, namespace
from metarl.problem import RLProblem
from metarl.tasks import torch_generator

CHECKPOINT = Path("checkpoints") / "last.pt"
EVAL_STREAM = 1


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the message is one line for the user."""


class EnvError(ValueError):
    """A task distribution could not be built or used."""


def build_problem(config: RunConfig, env_cls: Any, device: torch.device) -> RLProblem:
    """Instantiates the task distribution and wraps it in an :class:`RLProblem`."""
    name = config.environment
    try:
        distribution = env_cls(**config.env)
    except (TypeError, ValueError) as e:
        raise EnvError(f"env {name!r}: {e}") from None
    if hasattr(distribution, "make_batched_env"):
        factory = None
    elif isinstance(distribution, gym.Env):
        missing = [
            m for m in ("sample_tasks", "set_task") if not callable(getattr(distribution, m, None))
        ]
        if missing:
            raise EnvError(
                f"env {name!r} is a gymnasium.Env without {' and '.join(missing)}(); "
                "a task env needs sample_tasks(n, rng) and set_task(task)"
            )
        # Catch a broken user env here, with a precise message, rather than mid-training.
        from metarl.testing import check_task_env

        problems = check_task_env(env_cls, config.env)
        if problems:
            raise EnvError(
                f"env {name!r} ({env_cls.__name__}) breaks the task-env API: {problems[0]}"
            )
        factory = functools.partial(env_cls, **config.env)
    else:
        raise EnvError(
            f"env {name!r} ({type(distribution).__name__}) is neither a batched task "
            "distribution (make_batched_env) nor a gymnasium.Env with sample_tasks/set_task"
        )
    try:
        return RLProblem(
            distribution, config.trial.episodes, device, config.trial.max_episode_steps, factory
        )
    except Exception as e:
        raise EnvError(f"env {name!r} failed to start: {type(e).__name__}: {e}") from None


def build_learner(
    config: RunConfig, learner_cls: Any, problem: RLProblem, device: torch.device
) -> Learner:
    torch.manual_seed(config.train.seed)  # parameter initialisation
    learner = learner_cls(problem, config.algo, device)
    learner.registered_name = config.algorithm
    return learner


def mean_curve_metrics(
    prefix: str, curves: dict[str, Curve], name: str, learner: Learner
) -> dict[str, float]:
    curve = curves[name]
    means = curve.values.float().mean(1)
    return {
        f"{prefix}/return": learner.summary_metric(curves, name),
        f"{prefix}/return_first": float(means[0]),
        f"{prefix}/return_last": float(means[-1]),
    }


class Runner:
    """Runs (or resumes) meta-training in ``run_dir``.

    Args:
        run_dir: Directory holding ``config.yaml``, ``metrics.csv``, TensorBoard events,
            ``checkpoints/`` and ``run.json`` (status: running, complete or failed).
        config: The resolved configuration.
        env_cls: Task-distribution class.
        learner_cls: Learner class.
        resume: Continue from ``checkpoints/last.pt``.
        progress: Show a progress bar on stderr.
    """

    def __init__(
        self,
        run_dir: str | Path,
        config: RunConfig,
        env_cls: Any,
        learner_cls: Any,
        resume: bool = False,
        progress: bool = True,
    ):
        self.run_dir = Path(run_dir)
        self.config = config
        self.progress = progress
        if config.train.threads:
            torch.set_num_threads(config.train.threads)
        self.device = torch.device(config.train.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise EnvError("train.device is cuda but torch sees no CUDA device")
        self.problem = build_problem(config, env_cls, self.device)
        self.learner = build_learner(config, learner_cls, self.problem, self.device)
        self.start_iteration = 0
        self.elapsed = 0.0
        if resume:
            state = load_checkpoint(self.run_dir / CHECKPOINT, map_location=self.device)
            try:
                self.learner.load_state_dict(state["learner"])
                self.start_iteration = int(state["iteration"])
                self.elapsed = float(state.get("elapsed", 0.0))
            except (KeyError, RuntimeError, ValueError, TypeError) as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise CheckpointError(
                    f"checkpoint does not fit this run's learner: {first}"
                ) from None
        self.test_tasks = self.problem.sample_test_tasks(config.train.eval_tasks, config.train.seed)

    def _status(self, status: str, **extra: Any) -> None:
        info = {
            "status": status,
            "algorithm": self.config.algorithm,
            "environment": self.config.environment,
            **extra,
        }
        tmp = self.run_dir / ".run.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.run_dir / "run.json")

    def _save(self, iteration: int) -> None:
        save_checkpoint(
            self.run_dir / CHECKPOINT,
            {
                "iteration": iteration,
                "learner": self.learner.state_dict(),
                "config": self.config.to_dict(),
                "elapsed": self.elapsed,
            },
        )

    def meta_test(self, iteration: int) -> dict[str, float]:
        generator = torch_generator(
            self.config.train.seed, EVAL_STREAM, iteration, device=self.device
        )
        curves = self.learner.evaluate(self.test_tasks, generator)
        return mean_curve_metrics("meta_test", curves, self.learner.registered_name, self.learner)

    def run(self) -> dict[str, float]:
        """Trains until ``train.iterations``; returns the last logged metrics."""
        cfg = self.config.train
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_yaml(self.config))
        self._status("running", iteration=self.start_iteration)
        logger = MetricsLogger(self.run_dir, self.start_iteration)
        bar = _progress(self.start_iteration, cfg.iterations, self.progress)
        last: dict[str, float] = {}
        try:
            for it in range(self.start_iteration, cfg.iterations):
                t0 = time.perf_counter()
                tasks = self.problem.sample_train_tasks(
                    self.learner.tasks_per_iteration(), cfg.seed, it
                )
                generator = torch_generator(cfg.seed, 0, it, device=self.device)
                snapshot = (
                    copy.deepcopy(self.learner.state_dict()) if cfg.nan_policy == "skip" else None
                )
                try:
                    metrics = namespace(self.learner.train_iteration(tasks, generator))
                except NonFiniteError as e:
                    if snapshot is None:
                        raise TrainingError(
                            f"iteration {it}: {e.name} is {e.value}; training stopped, last good "
                            f"checkpoint kept at {self.run_dir / CHECKPOINT} "
                            "(set train.nan_policy=skip to skip such updates)"
                        ) from None
                    self.learner.load_state_dict(snapshot)
                    metrics = {"meta_train/skipped_nonfinite": 1.0}
                    print(
                        f"metarl: iteration {it}: {e.name} is {e.value}; update skipped", flush=True
                    )
                if cfg.eval_every and ((it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations):
                    metrics.update(self.meta_test(it))
                dt = time.perf_counter() - t0
                self.elapsed += dt
                metrics["time/iteration_s"] = dt
                metrics["time/elapsed_s"] = self.elapsed
                if "meta_train/env_steps" in metrics:
                    metrics["time/env_steps_per_s"] = metrics["meta_train/env_steps"] / dt
                logger.log(it, metrics)
                last = metrics
                if (it + 1) % cfg.checkpoint_every == 0 or it + 1 == cfg.iterations:
                    self._save(it + 1)
                    self._status("running", iteration=it + 1)
                bar.update(metrics)
        except BaseException as e:
            bar.close()
            logger.close()
            reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {e}"
            self._status(reason.split(":")[0], iteration=self.start_iteration, reason=reason)
            raise
        bar.close()
        logger.close()
        self._status(
            "complete",
            iteration=cfg.iterations,
            elapsed_s=round(self.elapsed, 2),
            **{k: v for k, v in last.items() if k.startswith("meta_test/")},
        )
        return last


class _progress:
    """A tqdm bar showing the current and meta-test return (silent when disabled)."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, disable=None)
        self.test = math.nan

    def update(self, metrics: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.test = metrics.get("meta_test/return", self.test)
        self.bar.set_postfix(
            ret=f"{metrics.get('meta_train/return', math.nan):.3g}",
            test=f"{self.test:.3g}",
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Reads a run directory's ``config.yaml`` as a dict."""
    from metarl.config import load_yaml

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not a metarl run directory (no config.yaml)")
    return load_yaml(path)


__all__ = [
    "CHECKPOINT",
    "EnvError",
    "Runner",
    "TrainingError",
    "build_learner",
    "build_problem",
    "dataclasses",
    "load_run",
]
