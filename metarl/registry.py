"""Names → implementations, for envs and algorithms.

``metarl`` never imports ``envs`` or ``agents`` directly: it looks them up here as
``"module:attr"`` strings, imported only when used. Third-party packages add task
distributions through the ``metarl.envs`` entry-point group (and algorithms through
``metarl.algos``). A user's own class can be named directly as ``path/to/file.py:Class``
or ``package.module:Class``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any


class RegistryError(ValueError):
    """An unknown name or an import target that cannot be loaded."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered env or algorithm.

    Attributes:
        name: The CLI name.
        target: ``"module:attr"`` of the implementation.
        description: One line shown by ``metarl envs`` / ``metarl algos``.
    """

    name: str
    target: str
    description: str


ENVS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "bandit",
            "envs.bandit:BanditDistribution",
            "Bernoulli multi-armed bandit, arm means ~ U[0,1]; one pull per episode",
        ),
        Entry(
            "tabular-mdp",
            "envs.tabular_mdp:TabularMDPDistribution",
            "random tabular MDP: 10 states, 5 actions, horizon 10, Dirichlet transitions",
        ),
        Entry(
            "nav2d",
            "envs.nav2d:Nav2DDistribution",
            "2D point navigation to a goal ~ U[-0.5,0.5]^2, reward = -distance",
        ),
        Entry(
            "maze",
            "envs.maze:MazeDistribution",
            "perfect-maze navigation from a ray-cast first-person view; explore, then exploit",
        ),
        Entry(
            "halfcheetah-dir",
            "envs.mujoco_dirvel:HalfCheetahDirEnv",
            "MuJoCo HalfCheetah (v5), run forward or backward (MAML); needs the mujoco extra",
        ),
        Entry(
            "halfcheetah-vel",
            "envs.mujoco_dirvel:HalfCheetahVelEnv",
            "MuJoCo HalfCheetah (v5), reach a target velocity ~ U[0,2] (MAML)",
        ),
        Entry(
            "ant-dir",
            "envs.mujoco_dirvel:AntDirEnv",
            "MuJoCo Ant (v5), walk forward or backward (MAML)",
        ),
        Entry(
            "ant-vel",
            "envs.mujoco_dirvel:AntVelEnv",
            "MuJoCo Ant (v5), reach a target velocity ~ U[0,3] (MAML)",
        ),
    ]
}

#: Few-shot datasets: trained on by the few-shot learners (:data:`FEWSHOT_ALGOS`), with
#: ``data.*`` options where envs take ``env.*``.
DATASETS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "omniglot",
            "agents.fewshot.problem:OmniglotTasks",
            "few-shot: Omniglot N-way K-shot classification (1,200/423 characters, rotations)",
        ),
        Entry(
            "sinusoid",
            "agents.fewshot.problem:SinusoidTasks",
            "few-shot: sinusoid regression, A ~ U[0.1,5], phase ~ U[0,pi] (MAML)",
        ),
    ]
}

#: Meta-RL algorithm name → implementation (trained on the envs above).
ALGOS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "rl2",
            "agents.rl2:RL2",
            "RL²: GRU/LSTM policy over (obs, prev action, prev reward, done); PPO or TRPO",
        ),
        Entry(
            "snail",
            "agents.snail:SNAIL",
            "SNAIL: temporal convolutions + causal attention over the trial; PPO or TRPO",
        ),
        Entry(
            "maml-trpo",
            "agents.maml:MAMLTRPO",
            "MAML: policy-gradient inner steps, TRPO outer step through them (second order)",
        ),
        Entry(
            "meta-sgd",
            "agents.meta_sgd:MetaSGD",
            "Meta-SGD: MAML-TRPO with a meta-learned per-parameter inner step size",
        ),
    ]
}


#: Few-shot learner name → implementation (trained on :data:`DATASETS`). ``maml``,
#: ``meta-sgd`` and ``snail`` share their adaptation code and blocks with the RL learners.
FEWSHOT_ALGOS: dict[str, Entry] = {
    e.name: e
    for e in [
        Entry(
            "maml",
            "agents.fewshot.algorithms:MAMLAlgorithm",
            "MAML on Conv-4 (second or first order), inner SGD via torch.func",
        ),
        Entry(
            "meta-sgd",
            "agents.fewshot.algorithms:MetaSGDAlgorithm",
            "Meta-SGD: MAML with a meta-learned per-parameter inner step",
        ),
        Entry(
            "snail",
            "agents.fewshot.algorithms:SNAILAlgorithm",
            "SNAIL: TC + attention over (embedding, label) pairs, query last",
        ),
        Entry(
            "protonet",
            "agents.fewshot.algorithms:ProtoNetAlgorithm",
            "Prototypical Networks: nearest class mean in a Conv-4 embedding",
        ),
        Entry(
            "matchingnet",
            "agents.fewshot.algorithms:MatchingNetAlgorithm",
            "Matching Networks: cosine attention over the support set (optional FCE)",
        ),
        Entry(
            "reptile",
            "agents.fewshot.algorithms:ReptileAlgorithm",
            "Reptile: first-order, moves the weights toward task-adapted weights",
        ),
        Entry(
            "metanet",
            "agents.fewshot.algorithms:MetaNetAlgorithm",
            "MetaNet: fast weights from loss gradients, layer augmentation, task memory",
        ),
    ]
}


def _entry_points(group: str) -> dict[str, Entry]:
    found = {}
    for ep in importlib.metadata.entry_points(group=group):
        found[ep.name] = Entry(ep.name, ep.value, "")
    return found


def all_envs() -> dict[str, Entry]:
    """Built-in envs and few-shot datasets plus envs registered by installed plug-ins."""
    return {**_entry_points("metarl.envs"), **ENVS, **DATASETS}


def all_algos() -> dict[str, Entry]:
    """Meta-RL algorithms, including plug-ins' (few-shot learners: :func:`fewshot_algos`)."""
    return {**_entry_points("metarl.algos"), **ALGOS}


def fewshot_algos() -> dict[str, Entry]:
    """The few-shot learners, trained on the datasets of :data:`DATASETS`."""
    return dict(FEWSHOT_ALGOS)


def is_dataset(env_cls: Any) -> bool:
    """Whether a resolved ``ENV`` is a few-shot dataset rather than a task distribution."""
    return bool(getattr(env_cls, "is_fewshot_dataset", False))


def load_target(spec: str) -> Any:
    """Imports ``"module:attr"`` or ``"path/to/file.py:attr"``.

    Raises:
        RegistryError: With a one-line reason if the module or attribute cannot be loaded.
    """
    if ":" not in spec:
        raise RegistryError(f"{spec!r} is not of the form module:Class or file.py:Class")
    module_part, _, attr = spec.rpartition(":")
    try:
        if module_part.endswith(".py"):
            path = Path(module_part).expanduser().resolve()
            if not path.is_file():
                raise RegistryError(f"no such file: {module_part}")
            # A stable name (not hash(), which is salted per process) so that objects
            # defined in the file unpickle in sampler worker processes too.
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
            mod_name = f"metarl_user_{path.stem}_{digest}"
            if mod_name in sys.modules:
                module = sys.modules[mod_name]
            else:
                file_spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(file_spec)
                sys.modules[mod_name] = module
                sys.path.insert(0, str(path.parent))
                try:
                    file_spec.loader.exec_module(module)
                finally:
                    sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(module_part)
    except RegistryError:
        raise
    except ModuleNotFoundError as e:
        raise RegistryError(f"cannot import {module_part!r}: {e}") from None
    except Exception as e:  # a user's module that fails at import time
        raise RegistryError(f"importing {module_part!r} failed: {type(e).__name__}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"{module_part!r} has no attribute {attr!r}") from None


def _unknown(kind: str, name: str, known: dict[str, Entry]) -> RegistryError:
    hint = difflib.get_close_matches(name, known, n=1)
    did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
    return RegistryError(
        f"unknown {kind} {name!r} (known: {', '.join(sorted(known))}{did_you_mean})"
    )


def resolve_env(name: str) -> Any:
    """The task-distribution class registered as ``name`` (or named by a path/module)."""
    known = all_envs()
    if name in known:
        return load_target(known[name].target)
    if ":" in name:
        return load_target(name)
    if name.endswith(".py"):
        raise RegistryError(f"env {name!r} names a file but no class; use {name}:ClassName")
    raise _unknown("env", name, known)


def resolve_algo(name: str, env_cls: Any = None) -> Any:
    """The learner class registered as ``name`` for the kind of ``env_cls``.

    Few-shot datasets take the few-shot learners, task distributions the meta-RL ones; a
    name that exists only for the other kind gets an error saying so.
    """
    fewshot = is_dataset(env_cls)
    known, other = (fewshot_algos(), all_algos()) if fewshot else (all_algos(), fewshot_algos())
    if name not in known and name in other:
        if fewshot:
            raise RegistryError(
                f"algorithm {name!r} is a meta-RL learner and trains on envs, not on a few-shot "
                f"dataset; few-shot learners: {', '.join(sorted(known))}"
            )
        raise RegistryError(
            f"algorithm {name!r} is a few-shot learner and trains on a dataset "
            f"({', '.join(sorted(DATASETS))}), not on an env; meta-RL learners: "
            f"{', '.join(sorted(known))}"
        )
    if name in known:
        cls = load_target(known[name].target)
        cls.registered_name = name
        return cls
    if ":" in name:
        return load_target(name)
    raise _unknown("algorithm", name, known)
