"""The ``metarl`` command line.

Commands: ``train``, ``eval``, ``envs``, ``algos``, ``check-env``. Bad usage or input exits
with status 2 and a single line on stderr; a run that fails while training (e.g. a NaN
loss) exits with status 1, also with one line. Other tools script against this contract.
"""

from __future__ import annotations

import argparse
import datetime
import signal
import sys
from pathlib import Path

from metarl import registry

USAGE_ERROR = 2
RUN_ERROR = 1


class UsageError(Exception):
    """Bad usage or input: exit 2 with one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM during training, raised like Ctrl-C so the run is recorded as interrupted."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="metarl", description="Meta-reinforcement learning toolkit.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="meta-train a learner on a task distribution")
    t.add_argument("algo", nargs="?", help="registered algorithm (see `metarl algos`)")
    t.add_argument(
        "env", nargs="?", help="registered env, path/file.py:Class or package.module:Class"
    )
    t.add_argument(
        "--config", help="YAML config file (sections env, trial, algo, train; data for datasets)"
    )
    t.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one option, e.g. --set env.arms=10 (repeatable)",
    )
    t.add_argument("--seed", type=int)
    t.add_argument("--iterations", type=int)
    t.add_argument(
        "--max-minutes",
        type=float,
        help="training-time budget of this invocation (train.max_minutes; 0 = none); "
        "with --resume it gives the continued run a new budget",
    )
    t.add_argument("--device", help="cpu, cuda, cuda:N or mps")
    t.add_argument("--logdir", help="run directory (default runs/ALGO-ENV-seedN-TIME)")
    t.add_argument("--resume", action="store_true", help="continue the run in --logdir")
    t.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="warm start from another run's checkpoint or run directory (train.init_from)",
    )
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="meta-test a trained run: adaptation curves and baselines")
    e.add_argument("run_dir")
    e.add_argument("--tasks", type=int, default=1000, help="held-out tasks (default 1000)")
    e.add_argument("--seed", type=int, help="seed of the held-out split (default: the run's)")
    e.add_argument("--out", help="output directory (default RUN_DIR/eval)")
    e.add_argument("--device", help="override the run's device")
    e.add_argument(
        "--checkpoint",
        help="a file in RUN_DIR/checkpoints (e.g. a train.snapshot_every snapshot, "
        "iter_000050.pt) or a checkpoint path (default: checkpoints/last.pt)",
    )
    e.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="algo.eval_KEY=VALUE",
        help="change the meta-test protocol, e.g. algo.eval_trajectories=40 (repeatable)",
    )
    e.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="the trained learner's curve only (the MuJoCo baselines train for minutes)",
    )

    sub.add_parser("envs", help="list task distributions")
    sub.add_parser("algos", help="list algorithms")

    c = sub.add_parser("check-env", help="validate a task distribution")
    c.add_argument("env")
    c.add_argument("--set", dest="sets", action="append", default=[], metavar="env.KEY=VALUE")
    return p


def _describe(entry: registry.Entry) -> str:
    """The listing's description: built-in text, else the plug-in class's ``description``.

    A plug-in that fails to import is listed with the reason instead of breaking the
    listing; whitespace is collapsed so every entry stays on one line.
    """
    if entry.description:
        return entry.description
    try:
        text = getattr(registry.load_target(entry.target), "description", "")
    except registry.RegistryError as e:
        text = f"(failed to load: {e})"
    return " ".join(str(text or "(plug-in)").split())


def cmd_list(kind: str) -> int:
    """Lists envs (then few-shot datasets) or meta-RL algorithms (then few-shot learners).

    A few-shot learner may share its name with a meta-RL one (``snail``, ``meta-sgd``):
    which one trains is decided by ENV, so both are listed, the few-shot one marked.
    """
    if kind == "envs":
        groups = [registry.all_envs()]
    else:
        groups = [registry.all_algos(), registry.fewshot_algos()]
    width = max(len(n) for group in groups for n in group)
    for group in groups:
        for name in sorted(group):
            text = _describe(group[name])
            if group is not groups[0] and not text.startswith("few-shot"):
                text = f"few-shot: {text}"
            print(f"{name:<{width}}  {text}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``metarl train``: validates everything, then creates (or resumes) the run directory.

    All configuration errors are raised before the run directory is created.
    """
    from metarl.config import build_run_config, load_yaml
    from metarl.runner import Runner

    file_data: dict = {}
    if args.resume:
        if not args.logdir:
            raise UsageError("--resume needs --logdir RUN_DIR")
        if args.config or args.sets or args.seed is not None or args.init_from:
            raise UsageError(
                "--resume takes its configuration from RUN_DIR/config.yaml; "
                "drop --config/--set/--seed/--init-from "
                "(only --iterations, --max-minutes and --device may change)"
            )
        cfg_path = Path(args.logdir) / "config.yaml"
        if not cfg_path.exists():
            raise UsageError(
                f"cannot resume: {args.logdir} is not a metarl run directory (no config.yaml)"
            )
        file_data = load_yaml(cfg_path)
    elif args.config:
        file_data = load_yaml(args.config)
    flags = {
        "seed": args.seed,
        "iterations": args.iterations,
        "device": args.device,
        "max_minutes": args.max_minutes,
        "init_from": args.init_from,
    }
    config, env_cls, learner_cls = build_run_config(
        args.algo,
        args.env,
        file_data,
        args.sets,
        flags,
        registry.resolve_env,
        registry.resolve_algo,
    )
    # config.yaml records file.py:Class targets as absolute paths, so that `metarl eval`
    # and `--resume` work from any working directory.
    config.environment = _absolute_target(config.environment)
    config.algorithm = _absolute_target(config.algorithm)
    if config.train.init_from and not args.resume:
        config.train.init_from = str(Path(config.train.init_from).expanduser().resolve())
    if args.logdir:
        run_dir = Path(args.logdir)
    else:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        names = f"{_short_name(config.algorithm)}-{_short_name(config.environment)}"
        run_dir = Path("runs") / f"{names}-seed{config.train.seed}-{stamp}"
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--logdir {run_dir} exists and is not a directory")
    # Dot-files (the lock, temporary files) do not count: a run killed while creating its
    # directory leaves only those, and its original command must still work.
    if (
        not args.resume
        and run_dir.exists()
        and any(not p.name.startswith(".") for p in run_dir.iterdir())
    ):
        raise UsageError(
            f"run directory {run_dir} already exists; use --resume or another --logdir"
        )
    runner = Runner(
        run_dir, config, env_cls, learner_cls, resume=args.resume, progress=not args.no_progress
    )
    try:
        last = runner.run()
    finally:
        runner.close()
    key = next((k for k in ("return", "accuracy", "mse") if f"meta_test/{k}" in last), None)
    summary = f"meta-test {key} {last[f'meta_test/{key}']:.4g}" if key else "done"
    print(f"{summary}; run directory: {run_dir}")
    return 0


def _absolute_target(name: str) -> str:
    """``rel/file.py:Class`` → ``/abs/rel/file.py:Class``; other names unchanged."""
    module, sep, attr = name.rpartition(":")
    if sep and module.endswith(".py"):
        return f"{Path(module).expanduser().resolve()}:{attr}"
    return name


def _short_name(name: str) -> str:
    """A file-name-safe short form of a registered name or ``module:Class`` target."""
    short = name.rpartition(":")[2] if ":" in name else name
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in short)[:60] or "env"


def cmd_eval(args: argparse.Namespace) -> int:
    from metarl.config import INT_MAX
    from metarl.evaluate import evaluate_run

    if args.tasks < 1:
        raise UsageError("--tasks must be >= 1")
    if args.seed is not None and not 0 <= args.seed <= INT_MAX:
        raise UsageError(f"--seed must be in [0, 2**63 - 1], got {args.seed}")
    curves = evaluate_run(
        args.run_dir,
        args.tasks,
        args.seed,
        args.out,
        args.device,
        baselines=args.baselines,
        checkpoint=args.checkpoint,
        sets=args.sets,
    )
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    for name, curve in curves.items():
        total = curve.total()
        print(f"{name:<22} {float(total.double().mean()):10.4g}")
    print(f"wrote {out / 'adaptation.csv'}, {out / 'summary.csv'} and {out / 'adaptation.png'}")
    return 0


def cmd_check_env(args: argparse.Namespace) -> int:
    from metarl.config import check_fields, constructor_fields, parse_set
    from metarl.testing import check_task_env

    env_cls = registry.resolve_env(args.env)
    if registry.is_dataset(env_cls):
        raise UsageError(f"{args.env} is a few-shot dataset; check-env checks meta-RL task envs")
    kwargs = {}
    for item in args.sets:
        section, key, value = parse_set(item)
        if section != "env":
            raise UsageError(f"check-env only takes env.* options, got {section}.{key}")
        kwargs[key] = value
    kwargs = check_fields("env", kwargs, constructor_fields(env_cls))
    problems = check_task_env(env_cls, kwargs)
    if problems:
        for line in problems:
            print(f"FAIL {line}")
        print(f"{args.env}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.env}: OK")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``metarl`` console script.

    Returns:
        0 on success, 2 for bad usage or input, 1 when a run fails, 130/143 when
        interrupted by SIGINT/SIGTERM. Every failure prints exactly one line on stderr.
    """
    import os
    import warnings

    # Python warnings raised on the way to an error would add lines to stderr: they are
    # held back, shown after a successful command and dropped after a failed one (unless
    # METARL_DEBUG is set).
    with warnings.catch_warnings(record=True) as caught:
        code = _main(argv)
    if code == 0 or os.environ.get("METARL_DEBUG"):
        for w in caught:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
    return code


def _main(argv: list[str] | None) -> int:
    from metarl.checkpoint import CheckpointError
    from metarl.config import ConfigError

    try:
        args = _parser().parse_args(argv)
        if args.command in ("envs", "algos"):
            return cmd_list(args.command)
        if args.command == "train":
            # SIGTERM (a scheduler, `kill`) ends training like Ctrl-C: the run is recorded as
            # interrupted and the last checkpoint kept. Restored after, for in-process callers.
            previous = _install_sigterm()
            try:
                return cmd_train(args)
            finally:
                _restore_sigterm(previous)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_check_env(args)
    except (UsageError, ConfigError, registry.RegistryError, CheckpointError) as e:
        return _fail(str(e), USAGE_ERROR)
    except Terminated:
        return _fail("terminated (SIGTERM); continue with --resume --logdir RUN_DIR", 143)
    except KeyboardInterrupt:
        return _fail("interrupted; continue with --resume --logdir RUN_DIR", 130)
    except RecursionError:
        return _fail("input nested too deeply", USAGE_ERROR)
    except Exception as e:
        from metarl.learner import IncompatibleEnvError
        from metarl.runner import EnvError, RunDirError, TrainingError

        if isinstance(e, EnvError | RunDirError | IncompatibleEnvError):
            return _fail(str(e), USAGE_ERROR)
        if isinstance(e, TrainingError):
            return _fail(str(e), RUN_ERROR)
        if isinstance(e, SystemExit):
            raise
        # Unexpected errors still get one line; METARL_DEBUG=1 shows the traceback.
        import os

        if os.environ.get("METARL_DEBUG"):
            raise
        return _fail(f"{type(e).__name__}: {e}".splitlines()[0], RUN_ERROR)


def _install_sigterm():
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        return None


def _restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _fail(message: str, code: int) -> int:
    # The contract is exactly one line: user-controlled text (keys, values, file names)
    # may contain newlines, so every run of whitespace becomes one space.
    one_line = " ".join(str(message).split()) or "unknown error"
    print(f"metarl: error: {one_line}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
