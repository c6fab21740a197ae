"""Run configuration: defaults ← YAML file ← ``--set`` overrides ← CLI flags.

A run's configuration has four sections:

* ``env.*``: the task distribution's constructor keyword arguments;
* ``trial.*``: :class:`TrialConfig` (episodes per trial, time limit);
* ``algo.*``: the learner's config dataclass (one per algorithm);
* ``train.*``: :class:`TrainConfig` (iterations, evaluation, checkpoints, device, seed).

Every key is checked against the dataclass fields or constructor signature; unknown keys
are rejected with a did-you-mean hint and wrong types with the expected type. YAML is read
with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("env", "trial", "algo", "train")
TOP_LEVEL = ("algorithm", "environment", *SECTIONS)


class ConfigError(ValueError):
    """A malformed or invalid configuration; the message is one line for the user."""


@dataclasses.dataclass
class TrialConfig:
    """How trials are laid out."""

    episodes: int | None = None
    """Episodes per trial (K). Default: the env's ``default_episodes``."""
    max_episode_steps: int | None = None
    """Optional per-episode time limit below the env's own horizon."""


@dataclasses.dataclass
class TrainConfig:
    """The meta-training loop."""

    iterations: int = 100
    """Meta-training iterations."""
    seed: int = 0
    """Seed of everything: task splits, env noise, policy sampling, initialisation."""
    device: str = "cpu"
    """Torch device: ``cpu`` or ``cuda`` (``cuda:N``)."""
    eval_every: int = 10
    """Meta-test on held-out tasks every N iterations (0 disables; the last always runs)."""
    eval_tasks: int = 200
    """Held-out tasks used by the periodic meta-test."""
    checkpoint_every: int = 1
    """Write ``checkpoints/last.pt`` every N iterations (and at the end)."""
    nan_policy: str = "stop"
    """On a NaN/inf loss or gradient: ``stop`` (keep the last good checkpoint) or ``skip``."""
    threads: int = 0
    """torch intra-op threads (0: torch's default)."""
    sampler: str = "local"
    """Where gymnasium task envs run: ``local`` (in this process), ``process``
    (``AsyncVectorEnv`` worker processes) or ``ray`` (Ray actors; needs the ``ray`` extra).
    Tensor envs always run locally, batched."""
    workers: int = 1
    """Number of sampler shards (processes or Ray actors)."""
    ray_address: str | None = None
    """Ray cluster address for ``sampler=ray`` (None: start or join a local cluster)."""
    worker_timeout: float = 300.0
    """Seconds to wait for one shard of trajectories before declaring its worker dead."""

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"train.iterations must be >= 1, got {self.iterations}")
        if self.eval_every < 0 or self.eval_tasks < 1 or self.checkpoint_every < 1:
            raise ValueError(
                "train.eval_every must be >= 0, train.eval_tasks and train.checkpoint_every >= 1"
            )
        if self.sampler not in ("local", "process", "ray"):
            raise ValueError(f"train.sampler must be local, process or ray, got {self.sampler!r}")
        if self.workers < 1 or self.worker_timeout <= 0:
            raise ValueError("train.workers must be >= 1 and train.worker_timeout > 0")
        if self.nan_policy not in ("stop", "skip"):
            raise ValueError(f"train.nan_policy must be 'stop' or 'skip', got {self.nan_policy!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ValueError(f"train.device must be cpu or cuda[:N], got {self.device!r}")


@dataclasses.dataclass
class RunConfig:
    """The fully resolved configuration written to ``config.yaml``."""

    algorithm: str
    environment: str
    env: dict[str, Any]
    trial: TrialConfig
    algo: Any
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "environment": self.environment,
            "env": dict(self.env),
            "trial": dataclasses.asdict(self.trial),
            "algo": dataclasses.asdict(self.algo),
            "train": dataclasses.asdict(self.train),
        }


# ---------------------------------------------------------------------------- parsing
def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a config file with the safe loader; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_set(item: str) -> tuple[str, str, Any]:
    """Parses ``section.key=value`` (the value as a YAML scalar or flow collection)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(
            f"--set {item!r}: key must be section.key with section in {', '.join(SECTIONS)}"
        )
    section, name = key.split(".")
    if section not in SECTIONS:
        raise ConfigError(
            _did_you_mean(f"--set {item!r}: unknown section {section!r}", section, SECTIONS)
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {item!r}: value is not valid YAML") from None
    return section, name, value


def _did_you_mean(message: str, name: str, options) -> str:
    hint = difflib.get_close_matches(name, list(options), n=1)
    return (
        f"{message}; did you mean {hint[0]!r}?"
        if hint
        else f"{message} (options: {', '.join(sorted(options))})"
    )


def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Checks ``value`` against a simple annotation; returns (ok, coerced value)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True, value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(annotation):
            ok, coerced = _type_ok(value, arm)
            if ok:
                return True, coerced
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if origin in (list, tuple):
        return isinstance(value, list | tuple), list(value) if isinstance(
            value, list | tuple
        ) else value
    if origin is dict:
        return isinstance(value, dict), value
    return True, value


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_fields(section: str, values: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Validates keys and value types of one section against ``fields`` (name → type)."""
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(_did_you_mean(f"unknown key {section}.{key}", key, fields))
        ok, coerced = _type_ok(value, fields[key])
        if not ok:
            raise ConfigError(
                f"{section}.{key} must be {_type_name(fields[key])}, "
                f"got {value!r} ({type(value).__name__})"
            )
        out[key] = coerced
    return out


def dataclass_fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def constructor_fields(cls: type) -> dict[str, Any]:
    """Keyword parameters of ``cls.__init__`` with their annotations (env options)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    params = inspect.signature(cls.__init__).parameters
    return {
        name: hints.get(name, Any)
        for name, p in params.items()
        if name not in ("self", "render_mode")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def constructor_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        name: p.default
        for name, p in params.items()
        if name in constructor_fields(cls) and p.default is not inspect.Parameter.empty
    }


def build_run_config(
    algorithm: str | None,
    environment: str | None,
    file_data: dict[str, Any],
    sets: list[str],
    flags: dict[str, Any],
    resolve_env,
    resolve_algo,
) -> tuple[RunConfig, Any, Any]:
    """Merges defaults, the config file, ``--set`` items and CLI flags, and validates.

    Returns:
        (config, env class, learner class).
    """
    unknown = set(file_data) - set(TOP_LEVEL)
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(_did_you_mean(f"unknown top-level key {key!r} in config", key, TOP_LEVEL))
    for section in SECTIONS:
        if file_data.get(section) is not None and not isinstance(file_data[section], dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
    for key, given in (("algorithm", algorithm), ("environment", environment)):
        in_file = file_data.get(key)
        if given and in_file and given != in_file:
            raise ConfigError(
                f"{key} {given!r} on the command line disagrees with {in_file!r} in the config"
            )
    algorithm = algorithm or file_data.get("algorithm")
    environment = environment or file_data.get("environment")
    if not algorithm or not environment:
        raise ConfigError(
            "give ALGO and ENV on the command line or as algorithm/environment in --config"
        )

    env_cls = resolve_env(str(environment))
    learner_cls = resolve_algo(str(algorithm))

    merged: dict[str, dict[str, Any]] = {s: dict(file_data.get(s) or {}) for s in SECTIONS}
    for item in sets:
        section, key, value = parse_set(item)
        merged[section][key] = value
    for key, value in flags.items():
        if value is not None:
            merged["train"][key] = value

    env_fields = constructor_fields(env_cls)
    env_kwargs = {**constructor_defaults(env_cls), **check_fields("env", merged["env"], env_fields)}
    trial_kwargs = check_fields("trial", merged["trial"], dataclass_fields(TrialConfig))
    train_kwargs = check_fields("train", merged["train"], dataclass_fields(TrainConfig))
    algo_kwargs = check_fields("algo", merged["algo"], dataclass_fields(learner_cls.config_cls))
    try:
        trial = TrialConfig(**trial_kwargs)
        train = TrainConfig(**train_kwargs)
        algo = learner_cls.config_cls(**algo_kwargs)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    if trial.episodes is None:
        trial.episodes = int(getattr(env_cls, "default_episodes", 1))
    if trial.episodes < 1:
        raise ConfigError(f"trial.episodes must be >= 1, got {trial.episodes}")
    if trial.max_episode_steps is not None and trial.max_episode_steps < 1:
        raise ConfigError(f"trial.max_episode_steps must be >= 1, got {trial.max_episode_steps}")
    config = RunConfig(str(algorithm), str(environment), env_kwargs, trial, algo, train)
    return config, env_cls, learner_cls


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
