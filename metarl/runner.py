"""The meta-training loop: iterate, log, meta-test, checkpoint, resume.

Every source of randomness of iteration ``i`` is derived from ``(seed, i)``: its training
tasks, the env noise and the policy's sampling. A checkpoint therefore only has to hold
the learner's parameters and optimiser state plus the iteration counter, and a run resumed
from it continues exactly as the uninterrupted run would have (on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import time

try:  # advisory run-directory lock; POSIX only
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from metarl.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_error_line,
    save_checkpoint,
)
from metarl.config import RunConfig, dump_yaml
from metarl.learner import Curve, Learner, NonFiniteError
from metarl.logging import MetricsLogger, namespace
from metarl.problem import RLProblem
from metarl.tasks import torch_generator

CHECKPOINT = Path("checkpoints") / "last.pt"


def snapshot_path(iteration: int) -> Path:
    """Where ``train.snapshot_every`` keeps the checkpoint taken after ``iteration``."""
    return CHECKPOINT.parent / f"iter_{iteration:06d}.pt"


EVAL_STREAM = 1


class TrainingError(RuntimeError):
    """Training stopped (e.g. a non-finite loss); the message is one line for the user."""


class EnvError(ValueError):
    """A task distribution could not be built or used."""


class RunDirError(ValueError):
    """The run directory cannot be written, or another process is training in it."""


def available_device(name: str) -> torch.device:
    """``torch.device(name)``, or an :class:`EnvError` if this machine does not have it.

    Checked before any env or network is built: otherwise a missing CUDA build surfaces
    deep inside the first env or generator as a long, misleading error.
    """
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnvError(f"device {name} requested but torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise EnvError(f"device {name} requested but torch sees {count} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise EnvError(f"device {name} requested but torch sees no MPS device")
    return device


def build_problem(config: RunConfig, env_cls: Any, device: torch.device) -> RLProblem:
    """Instantiates the task distribution and wraps it in an :class:`RLProblem`.

    A few-shot dataset (``config.data`` set) is its own problem: it is built from the
    ``data.*`` options and loaded onto ``device``.
    """
    name = config.environment
    if config.fewshot:
        try:
            return env_cls(**config.data).to(device)
        except (TypeError, ValueError) as e:
            raise EnvError(f"dataset {name!r}: {e}") from None
        except OSError as e:  # e.g. a data.dir without the Omniglot files
            raise EnvError(f"dataset {name!r}: {e}") from None
    try:
        distribution = env_cls(**config.env)
    except (TypeError, ValueError) as e:
        raise EnvError(f"env {name!r}: {e}") from None
    except Exception as e:  # a user env's constructor failing is bad input, not a crash
        raise EnvError(
            f"env {name!r}: constructing {getattr(env_cls, '__name__', env_cls)} raised "
            f"{type(e).__name__}: {e}"
        ) from None
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
        if env_cls.__module__.startswith("metarl_user_"):
            # Loaded from a .py file under a private module name that sampler workers do not
            # know: they load the file by path instead.
            import sys

            from metarl.samplers import FileEnvFactory

            path = getattr(sys.modules.get(env_cls.__module__), "__file__", None)
            if path:
                factory = FileEnvFactory(os.path.abspath(path), env_cls.__name__, dict(config.env))
    else:
        raise EnvError(
            f"env {name!r} ({type(distribution).__name__}) is neither a batched task "
            "distribution (make_batched_env) nor a gymnasium.Env with sample_tasks/set_task"
        )
    from metarl.config import ConfigError
    from metarl.samplers import SamplerError

    train = config.train
    try:
        return RLProblem(
            distribution,
            config.trial.episodes,
            device,
            config.trial.max_episode_steps,
            factory,
            sampler=train.sampler,
            workers=train.workers,
            ray_address=train.ray_address,
            worker_timeout=train.worker_timeout,
        )
    except SamplerError as e:  # e.g. sampler=ray without Ray installed: a setup problem
        raise ConfigError(str(e)) from None
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
    # "return" for meta-RL; few-shot learners report "accuracy" or "mse".
    metric = getattr(learner, "metric_name", "return")
    return {
        f"{prefix}/{metric}": learner.summary_metric(curves, name),
        f"{prefix}/{metric}_first": float(means[0]),
        f"{prefix}/{metric}_last": float(means[-1]),
    }


class Runner:
    """Runs (or resumes) meta-training in ``run_dir``.

    Args:
        run_dir: Directory holding ``config.yaml``, ``metrics.csv``, TensorBoard events,
            ``checkpoints/`` and ``run.json`` (status: running, complete, failed or
            interrupted; see :meth:`run`).
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
        self.device = available_device(config.train.device)
        self.problem = build_problem(config, env_cls, self.device)
        self.learner = build_learner(config, learner_cls, self.problem, self.device)
        self.start_iteration = 0
        self.elapsed = 0.0
        self.resume = resume
        if resume:
            self._load_for_resume()
        # A warm-started run that is resumed before its first checkpoint starts over, so it
        # must take the warm-start weights again to be the run it would have been.
        if config.train.init_from and self.start_iteration == 0:
            self._warm_start(Path(config.train.init_from))
        #: Iteration count stored in the newest checkpoint on disk (what a resume restarts at).
        self.checkpointed = self.start_iteration
        self._lock_file: Any = None
        self.test_tasks = self.problem.sample_test_tasks(config.train.eval_tasks, config.train.seed)

    def _load_for_resume(self) -> None:
        """Restores the learner and iteration counter from ``checkpoints/last.pt``.

        A run killed before its first checkpoint saved no progress; it restarts from
        iteration 0, which is exactly what the uninterrupted run did, so the result is the
        same. A checkpoint written under a different configuration, or past
        ``train.iterations``, is refused rather than silently continued.
        """
        path = self.run_dir / CHECKPOINT
        if not path.exists():
            recorded = _recorded_checkpoint(self.run_dir)
            if recorded:
                # Restarting from scratch would silently discard that many iterations.
                raise CheckpointError(
                    f"checkpoint {path} is missing, but run.json records one at iteration "
                    f"{recorded}; restore the file, or train in a new --logdir"
                )
            print(
                f"metarl: no checkpoint in {self.run_dir} yet; starting from iteration 0",
                flush=True,
            )
            return
        # Loaded to the CPU: load_state_dict then moves weights and optimiser moments to
        # the parameters' device but keeps Adam's step counters on the CPU, where torch
        # expects them (mapped to CUDA they stay there and cost a host sync per step).
        state = load_checkpoint(path, map_location="cpu")
        saved = state.get("config")
        if isinstance(saved, dict):
            mismatch = config_mismatch(saved, self.config.to_dict())
            if mismatch:
                raise CheckpointError(
                    f"checkpoint {path} belongs to a different configuration ({mismatch})"
                )
        try:
            self.learner.load_state_dict(state["learner"])
            self.start_iteration = int(state["iteration"])
            self.elapsed = float(state.get("elapsed", 0.0))
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise CheckpointError(
                f"checkpoint does not fit this run's learner: {load_error_line(e)}"
            ) from None
        if self.start_iteration > self.config.train.iterations:
            raise CheckpointError(
                f"checkpoint {path} is at iteration {self.start_iteration}, past "
                f"train.iterations={self.config.train.iterations}; "
                f"pass --iterations {self.start_iteration} or more"
            )

    def _warm_start(self, path: Path) -> None:
        """Initialises the learner's parameters from another run (``train.init_from``)."""
        if path.is_dir():
            path = path / CHECKPOINT
        state = load_checkpoint(path, map_location="cpu")  # load_weights copies to the device
        saved = state.get("config")
        algorithm = saved.get("algorithm") if isinstance(saved, dict) else None
        if algorithm is not None and algorithm != self.config.algorithm:
            raise CheckpointError(
                f"train.init_from: {path} was trained by {algorithm!r}, "
                f"this run is {self.config.algorithm!r}"
            )
        try:
            self.learner.load_weights(state["learner"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            problem = load_error_line(e)
            hint = self.learner.mismatch_hint(problem)
            raise CheckpointError(
                f"train.init_from: {path} does not fit this run's learner: "
                f"{problem}{f' ({hint})' if hint else ''}"
            ) from None
        print(
            f"metarl: initialised from {path} (iteration {state.get('iteration', '?')})",
            flush=True,
        )

    def _status(self, status: str, **extra: Any) -> None:
        # pid and time tell a reader whether "running" is current: a SIGKILLed process
        # cannot update run.json, but its lock on RUN_DIR/.lock is released by the kernel.
        info = {
            "status": status,
            "algorithm": self.config.algorithm,
            "environment": self.config.environment,
            "pid": os.getpid(),
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        atomic_write_text(self.run_dir / "run.json", json.dumps(info, indent=2) + "\n")

    def _lock(self) -> None:
        """Takes an exclusive lock on the run directory (two trainers would interleave)."""
        if fcntl is None:
            return
        lock = open(self.run_dir / ".lock", "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise RunDirError(
                f"run directory {self.run_dir} is in use by another metarl process"
            ) from None
        self._lock_file = lock

    def _unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def close(self) -> None:
        """Releases the lock and the problem's envs and sampler workers."""
        self._unlock()
        close = getattr(self.problem, "close", None)
        if close is not None:
            close()

    def _save(self, iteration: int, *paths: Path) -> None:
        """Writes the learner's state after ``iteration`` to each of ``paths`` (relative to
        the run directory), serialising it once."""
        first, *rest = paths
        save_checkpoint(
            self.run_dir / first,
            {
                "iteration": iteration,
                "learner": self.learner.state_dict(),
                "config": self.config.to_dict(),
                "elapsed": self.elapsed,
            },
            *(self.run_dir / p for p in rest),
        )

    def meta_test(self, iteration: int) -> dict[str, float]:
        generator = torch_generator(
            self.config.train.seed, EVAL_STREAM, iteration, device=self.device
        )
        curves = self.learner.evaluate(self.test_tasks, generator)
        return mean_curve_metrics("meta_test", curves, self.learner.registered_name, self.learner)

    def run(self) -> dict[str, float]:
        """Trains until ``train.iterations``; returns the last logged metrics.

        ``run.json`` says ``running`` while training, ``complete`` only once every
        iteration ran and the final checkpoint is on disk, ``stopped (time budget)`` when
        ``train.max_minutes`` ended it early (with a checkpoint), ``failed`` or ``interrupted``
        (with the iteration of the last checkpoint) when an exception ends the run.

        Raises:
            RunDirError: If the run directory cannot be written or is locked by another run.
            TrainingError: On a non-finite loss with ``train.nan_policy=stop``.
        """
        cfg = self.config.train
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock()
            # Atomic: a kill mid-write must not leave a truncated config.yaml that still
            # parses (missing sections would silently fall back to defaults on --resume).
            atomic_write_text(self.run_dir / "config.yaml", dump_yaml(self.config))
            self._status("running", iteration=self.start_iteration)
        except OSError as e:
            self._unlock()
            raise RunDirError(
                f"cannot write run directory {self.run_dir}: {e.strerror or e}"
            ) from None
        logger = bar = None
        last: dict[str, float] = {}
        try:
            logger = MetricsLogger(self.run_dir, self.start_iteration, resume=self.resume)
            bar = _progress(self.start_iteration, cfg.iterations, self.progress)
            session_start = time.perf_counter()
            for it in range(self.start_iteration, cfg.iterations):
                t0 = time.perf_counter()
                tasks = self.problem.sample_train_tasks(
                    self.learner.tasks_per_iteration(), cfg.seed, it
                )
                generator = torch_generator(cfg.seed, 0, it, device=self.device)
                snapshot = (
                    copy.deepcopy(self.learner.state_dict()) if cfg.nan_policy == "skip" else None
                )
                self.learner.set_progress(it, cfg.iterations)
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
                out_of_time = bool(cfg.max_minutes) and (
                    time.perf_counter() - session_start >= cfg.max_minutes * 60
                )
                last_iteration = it + 1 == cfg.iterations or out_of_time
                if cfg.eval_every and ((it + 1) % cfg.eval_every == 0 or last_iteration):
                    metrics.update(self.meta_test(it))
                dt = time.perf_counter() - t0
                self.elapsed += dt
                metrics["time/iteration_s"] = dt
                metrics["time/elapsed_s"] = self.elapsed
                if "meta_train/env_steps" in metrics:
                    metrics["time/env_steps_per_s"] = metrics["meta_train/env_steps"] / dt
                logger.log(it, metrics)
                last = metrics
                checkpoint = (it + 1) % cfg.checkpoint_every == 0 or last_iteration
                keep = bool(cfg.snapshot_every) and (it + 1) % cfg.snapshot_every == 0
                paths = []
                if checkpoint:
                    paths.append(CHECKPOINT)
                if keep:
                    paths.append(snapshot_path(it + 1))
                if paths:
                    self._save(it + 1, *paths)
                if checkpoint:
                    self.checkpointed = it + 1
                    self._status("running", iteration=it + 1)
                bar.update(metrics)
                if out_of_time and it + 1 < cfg.iterations:
                    stopped_at = it + 1
                    print(
                        f"metarl: train.max_minutes={cfg.max_minutes:g} reached after "
                        f"iteration {stopped_at}; stopped with a checkpoint",
                        flush=True,
                    )
                    break
        except BaseException as e:
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
            if isinstance(e, KeyboardInterrupt):
                status, reason = "interrupted", "interrupted"
            else:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                status, reason = "failed", f"failed: {first}"
            # "iteration" is what a resume restarts from: the last checkpoint, not the
            # iteration that failed.
            with contextlib.suppress(OSError):  # e.g. disk full: report the original error
                self._status(status, iteration=self.checkpointed, reason=reason)
            self._unlock()
            self.problem.close()  # sampler workers (processes, Ray actors) end with the run
            raise
        bar.close()
        logger.close()
        self.problem.close()
        done = self.checkpointed
        self._status(
            "complete" if done >= cfg.iterations else "stopped (time budget)",
            iteration=done,
            elapsed_s=round(self.elapsed, 2),
            **{k: v for k, v in last.items() if k.startswith("meta_test/")},
        )
        self._unlock()
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
        for key in ("meta_test/return", "meta_test/accuracy", "meta_test/mse"):
            self.test = metrics.get(key, self.test)
        train = next(
            (
                metrics[k]
                for k in ("meta_train/return", "meta_train/accuracy", "meta_train/mse")
                if k in metrics
            ),
            math.nan,
        )
        self.bar.set_postfix(
            train=f"{train:.3g}",
            test=f"{self.test:.3g}",
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _recorded_checkpoint(run_dir: Path) -> int:
    """The checkpoint iteration ``run.json`` records (0 if none, or no readable run.json).

    ``run.json``'s ``iteration`` is always the last *checkpointed* iteration.
    """
    try:
        info = json.loads((run_dir / "run.json").read_text())
        iteration = info.get("iteration", 0) if isinstance(info, dict) else 0
        return iteration if isinstance(iteration, int) and iteration > 0 else 0
    except (OSError, ValueError):
        return 0


def atomic_write_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` so that readers see the old or the new file, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: config.yaml turns tuples into lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first setting that differs between a checkpoint's config and the run's, or None.

    ``train.*`` options other than the seed may change on resume (iterations, device,
    threads, evaluation and sampler settings): they do not change what the checkpoint is.
    Nor do ``algo.eval_*`` options (the meta-test protocol, the keys ``metarl eval --set``
    accepts), so they are not compared either; nor are options present on one side only
    (added in a newer metarl).
    """
    saved, current = _plain(saved), _plain(current)
    for key in ("algorithm", "environment"):
        if saved.get(key) != current.get(key):
            return f"{key}: {saved.get(key)!r} in the checkpoint, {current.get(key)!r} now"
    for section in ("env", "trial", "data", "algo"):
        old, new = saved.get(section) or {}, current.get(section) or {}
        # Only options both sides know: an option added to metarl after the checkpoint was
        # written (with a default that keeps the old behaviour) must not block a resume.
        for name in sorted(set(old) & set(new), key=str):
            if section == "algo" and str(name).startswith("eval_"):
                continue  # meta-test protocol only: training is the same either way
            a, b = old[name], new[name]
            if a != b:
                return f"{section}.{name}: {a!r} in the checkpoint, {b!r} now"
    old_seed = (saved.get("train") or {}).get("seed")
    new_seed = (current.get("train") or {}).get("seed")
    if old_seed != new_seed:
        return f"train.seed: {old_seed!r} in the checkpoint, {new_seed!r} now"
    return None


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
    "RunDirError",
    "Runner",
    "TrainingError",
    "available_device",
    "build_learner",
    "build_problem",
    "dataclasses",
    "load_run",
    "snapshot_path",
]
