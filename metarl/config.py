"""Run configuration: defaults ← YAML file ← ``--set`` overrides ← CLI flags.

A meta-RL run's configuration has four sections:

* ``env.*``: the task distribution's constructor keyword arguments;
* ``trial.*``: :class:`TrialConfig` (episodes per trial, time limit);
* ``algo.*``: the learner's config dataclass (one per algorithm);
* ``train.*``: :class:`TrainConfig` (iterations, evaluation, checkpoints, device, seed).

A few-shot run (ENV is a dataset such as ``omniglot``) has ``data.*`` (the dataset's
constructor keyword arguments: ways, shots, queries, ...) in place of ``env.*`` and
``trial.*``; a section that does not apply to the run's kind is an error.

Every key is checked against the dataclass fields or constructor signature; unknown keys
are rejected with a did-you-mean hint and wrong types with the expected type; integers must
fit in 64 bits and floats must be finite and within float32 range. YAML is read with a
``yaml.SafeLoader`` subclass only (``safe_load`` semantics: Python tags such as
``!!python/object`` are refused).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

SECTIONS = ("env", "trial", "data", "algo", "train")
TOP_LEVEL = ("algorithm", "environment", *SECTIONS)

#: Integers must fit in a signed 64-bit word: torch, numpy and the seed derivation cannot
#: represent larger ones and would fail deep inside training instead of here.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: Floats must be finite and fit in float32, the dtype of every tensor they scale: a
#: larger value (``algo.clip=1e39``) becomes inf inside torch and fails mid-training.
FLOAT_MAX = 3.4028234663852886e38
#: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``; anything else makes ``torch.device`` raise later.
DEVICE_PATTERN = re.compile(r"cpu|mps|cuda(:[0-9]+)?")

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 6
_REPR.maxlevel = 3


def show_name(name: Any) -> str:
    """A key as typed if it is a short printable string, else its bounded repr."""
    if isinstance(name, str) and name.isprintable() and len(name) <= 60:
        return name
    return short_repr(name)


def short_repr(value: Any) -> str:
    """A bounded ``repr`` for error messages.

    YAML aliases can build values whose full repr is exponentially long (``&a [*a, *a]``
    nested a few levels), and a message must stay one short line.
    """
    return _REPR.repr(value)


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
    """Torch device: ``cpu``, ``cuda`` (``cuda:N``) or ``mps``."""
    eval_every: int = 10
    """Meta-test on held-out tasks every N iterations (0 disables; the last always runs)."""
    eval_tasks: int = 200
    """Held-out tasks used by the periodic meta-test."""
    checkpoint_every: int = 1
    """Write ``checkpoints/last.pt`` every N iterations (and at the end)."""
    snapshot_every: int = 0
    """Also keep ``checkpoints/iter_NNNNNN.pt`` every N iterations (0: ``last.pt`` only), so
    that earlier points of a run can be evaluated (``metarl eval RUN --checkpoint
    iter_000050.pt``): e.g. to pick a checkpoint on validation tasks when the held-out
    return peaks before the end of training."""
    max_minutes: float = 0.0
    """Training-time budget of one ``metarl train`` invocation: stop after the iteration
    that reaches it, with a meta-test and a checkpoint (0 = none). ``--resume`` trains for
    up to another budget, toward ``iterations``."""
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
    init_from: str | None = None
    """Warm start: a checkpoint file, or a run directory (its ``checkpoints/last.pt``),
    whose parameters initialise the learner. The algorithm must be the same and the
    networks the same shape; env and algorithm options may differ (e.g. fine-tune with a
    smaller entropy bonus). The optimiser state and the iteration count start afresh."""

    def __post_init__(self) -> None:
        minimum = {
            "iterations": 1,
            "seed": 0,
            "eval_every": 0,
            "eval_tasks": 1,
            "checkpoint_every": 1,
            "snapshot_every": 0,
            "threads": 0,
            "workers": 1,
        }
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(f"train.{name} must be >= {low}, got {getattr(self, name)}")
        if not self.max_minutes >= 0:
            raise ValueError(f"train.max_minutes must be >= 0, got {self.max_minutes}")
        if not self.worker_timeout > 0:
            raise ValueError(f"train.worker_timeout must be > 0, got {self.worker_timeout}")
        if self.sampler not in ("local", "process", "ray"):
            raise ValueError(
                f"train.sampler must be local, process or ray, got {short_repr(self.sampler)}"
            )
        if self.nan_policy not in ("stop", "skip"):
            raise ValueError(
                f"train.nan_policy must be 'stop' or 'skip', got {short_repr(self.nan_policy)}"
            )
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(
                f"train.init_from must be a checkpoint path, got {short_repr(self.init_from)}"
            )
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ValueError(
                f"train.device must be cpu, cuda[:N] or mps, got {short_repr(self.device)}"
            )


@dataclasses.dataclass
class RunConfig:
    """The fully resolved configuration written to ``config.yaml``."""

    algorithm: str
    environment: str
    env: dict[str, Any]
    trial: TrialConfig
    algo: Any
    train: TrainConfig
    data: dict[str, Any] | None = None
    """The few-shot dataset's options (None for meta-RL runs, which use env and trial)."""

    @property
    def fewshot(self) -> bool:
        return self.data is not None

    def to_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"algorithm": self.algorithm, "environment": self.environment}
        if self.fewshot:
            head["data"] = dict(self.data)
        else:
            head["env"] = dict(self.env)
            head["trial"] = dataclasses.asdict(self.trial)
        return _lists(
            {
                **head,
                "algo": dataclasses.asdict(self.algo),
                "train": dataclasses.asdict(self.train),
            }
        )


def _lists(value: Any) -> Any:
    """Tuples as lists, recursively: YAML's safe dumper has no tuples."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


# ---------------------------------------------------------------------------- parsing
class _SafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3`` and ``1.0e5`` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so
    ``--set algo.lr=1e-3`` would arrive as the string ``'1e-3'``. Only a resolver is added:
    the loader still constructs nothing but plain scalars, lists and mappings.

    A key given twice in one mapping is an error: PyYAML keeps the last one silently, so
    ``lr: 0.001`` followed later by ``lr: 0.5`` would train at 0.5 without a word.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {short_repr(key)} appears twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def safe_load(text: str) -> Any:
    """Parses YAML with the safe loader (no Python tags, no code execution).

    Raises:
        yaml.YAMLError: On malformed YAML or a tag outside the YAML core schema.
        RecursionError: On pathologically deep nesting.
    """
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass: no Python tags


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line describing a YAML error (without PyYAML's multi-line excerpt)."""
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    tag = re.search(r"tag '([^']*)'", problem)
    if isinstance(e, yaml.constructor.ConstructorError) and tag:
        return f"tag {tag.group(1)!r} is not allowed (configs are plain YAML, loaded safely)"
    return problem


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Reads a config file with the safe loader; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror or e}") from None
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"malformed YAML in {path}: nested too deeply") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_set(item: str) -> tuple[str, str, Any]:
    """Parses ``section.key=value`` (the value as a YAML scalar or flow collection).

    Raises:
        ConfigError: If the item is not ``section.key=value``, the section is unknown or
            the value is not valid (safe) YAML.
    """
    shown = short_repr(item)
    if "=" not in item:
        raise ConfigError(f"--set {shown}: expected section.key=value")
    key, _, raw = item.partition("=")
    key = key.strip()
    if key.count(".") != 1:
        raise ConfigError(
            f"--set {shown}: key must be section.key with section in {', '.join(SECTIONS)}"
        )
    section, name = key.split(".")
    if section not in SECTIONS:
        message = f"--set {shown}: unknown section {short_repr(section)}"
        raise ConfigError(_did_you_mean(message, section, SECTIONS))
    if not name:
        raise ConfigError(f"--set {shown}: empty key after {section}.")
    try:
        value = safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {shown}: value is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"--set {shown}: value is nested too deeply") from None
    return section, name, value


def _did_you_mean(message: str, name: Any, options) -> str:
    hint = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
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


def _is_non_finite_word(text: str) -> bool:
    """``inf``, ``-Infinity``, ``nan``...: YAML reads these as strings (its own spellings
    are ``.inf`` and ``.nan``), but either way they are not a usable setting."""
    return text.strip().lower().lstrip("+-.") in ("inf", "infinity", "nan")


def check_fields(section: str, values: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """Validates keys and value types of one section against ``fields`` (name → type)."""
    out = {}
    for key, value in values.items():
        if not isinstance(key, str) or key not in fields:
            raise ConfigError(_did_you_mean(f"unknown key {section}.{show_name(key)}", key, fields))
        ok, coerced = _type_ok(value, fields[key])
        if not ok and isinstance(value, str) and _is_non_finite_word(value):
            raise ConfigError(f"{section}.{key} must be a finite number, got {value}")
        if not ok:
            raise ConfigError(
                f"{section}.{key} must be {_type_name(fields[key])}, "
                f"got {short_repr(value)} ({type(value).__name__})"
            )
        if isinstance(coerced, int) and not isinstance(coerced, bool):
            if not INT_MIN <= coerced <= INT_MAX:
                raise ConfigError(
                    f"{section}.{key} = {short_repr(coerced)} is out of range "
                    "(integers must fit in 64 bits)"
                )
        elif isinstance(coerced, float) and not math.isfinite(coerced):
            raise ConfigError(f"{section}.{key} must be a finite number, got {coerced}")
        elif isinstance(coerced, float) and abs(coerced) > FLOAT_MAX:
            raise ConfigError(
                f"{section}.{key} = {coerced:g} is out of range (|x| <= 3.4e38, the float32 limit)"
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
    unknown = [k for k in file_data if k not in TOP_LEVEL]
    if unknown:
        key = unknown[0]  # keys may be of any YAML type, so no sorting
        raise ConfigError(
            _did_you_mean(f"unknown top-level key {short_repr(key)} in config", key, TOP_LEVEL)
        )
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
    for key, value in (("algorithm", algorithm), ("environment", environment)):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a name (str), got {short_repr(value)}")

    env_cls = resolve_env(str(environment))
    learner_cls = resolve_algo(str(algorithm), env_cls)
    fewshot = bool(getattr(env_cls, "is_fewshot_dataset", False))

    merged: dict[str, dict[str, Any]] = {s: dict(file_data.get(s) or {}) for s in SECTIONS}
    for item in sets:
        section, key, value = parse_set(item)
        merged[section][key] = value
    for key, value in flags.items():
        if value is not None:
            merged["train"][key] = value

    fields = {
        "env": {} if fewshot else constructor_fields(env_cls),
        "trial": {} if fewshot else dataclass_fields(TrialConfig),
        "data": constructor_fields(env_cls) if fewshot else {},
        "train": dataclass_fields(TrainConfig),
        "algo": dataclass_fields(learner_cls.config_cls),
    }
    for section in ("env", "trial") if fewshot else ("data",):
        if merged[section]:
            key = next(iter(merged[section]))
            if fewshot:
                raise ConfigError(
                    f"{section}.{show_name(key)}: {environment!r} is a few-shot dataset, which "
                    f"takes data.* options ({', '.join(fields['data'])}), not {section}.*"
                )
            raise ConfigError(
                f"data.{show_name(key)}: data.* options are for few-shot datasets "
                f"(omniglot, sinusoid); env {environment!r} takes env.* and trial.*"
            )
    for section in SECTIONS:
        for key in merged[section]:
            if key in fields[section]:
                continue
            # A key put in the wrong section (train.lr) gets pointed to the right one.
            home = [s for s in SECTIONS if isinstance(key, str) and key in fields[s]]
            if home:
                raise ConfigError(f"unknown key {section}.{key}; did you mean {home[0]}.{key}?")
    if fewshot:
        data_kwargs = {
            **constructor_defaults(env_cls),
            **check_fields("data", merged["data"], fields["data"]),
        }
        env_kwargs = {}
    else:
        data_kwargs = None
        env_kwargs = {
            **constructor_defaults(env_cls),
            **check_fields("env", merged["env"], fields["env"]),
        }
    trial_kwargs = check_fields("trial", merged["trial"], fields["trial"])
    train_kwargs = check_fields("train", merged["train"], fields["train"])
    algo_kwargs = check_fields("algo", merged["algo"], fields["algo"])
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
    config = RunConfig(
        str(algorithm), str(environment), env_kwargs, trial, algo, train, data_kwargs
    )
    return config, env_cls, learner_cls


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
