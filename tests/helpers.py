"""Assertions shared by test modules (imported as ``helpers``: pytest puts tests/ on the path)."""

import csv
import importlib.util
import math
from pathlib import Path

import torch

from metarl.checkpoint import load_checkpoint


def _tensors(tree, prefix=""):
    """Every tensor leaf of a nested state dict, keyed by its path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree}
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_tensors(value, f"{prefix}/{key}"))
        return out
    return {}


def assert_trained(run_dir):
    """The run logged finite numbers and its checkpoint moved away from the initialisation.

    A learner that skipped its update (or wrote NaNs) would still exit 0 and write every
    file; this tells it apart. The initial parameters are rebuilt from the run's own
    config.yaml: parameter initialisation is seeded by train.seed.
    """
    from metarl.config import build_run_config
    from metarl.registry import resolve_algo, resolve_env
    from metarl.runner import build_learner, build_problem, load_run

    rows = read_csv(run_dir / "metrics.csv")
    for row in rows:
        for key, value in row.items():
            if key.split("/")[0] in ("losses", "meta_train", "meta_test") and value != "":
                assert math.isfinite(float(value)), (key, value, row["iteration"])
    config, env_cls, learner_cls = build_run_config(
        None, None, load_run(run_dir), [], {}, resolve_env, resolve_algo
    )
    problem = build_problem(config, env_cls, torch.device("cpu"))
    initial, again = (
        _tensors(build_learner(config, learner_cls, problem, torch.device("cpu")).state_dict())
        for _ in range(2)
    )
    problem.close()
    # The premise: the initialisation is a function of the config (else "moved" is vacuous).
    assert all(torch.equal(initial[k], again[k]) for k in initial)
    trained = _tensors(load_checkpoint(run_dir / "checkpoints" / "last.pt")["learner"])
    params = [k for k in initial if k.startswith("/model") and initial[k].is_floating_point()]
    assert params and set(params) <= set(trained)
    assert all(torch.isfinite(trained[k]).all() for k in params)
    assert any(not torch.equal(initial[k], trained[k]) for k in params), "no parameter moved"


def read_csv(path):
    """Rows of a CSV file as dicts."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def load_experiment_script(name):
    """Imports ``experiments/<name>.py`` (a script, not a package module) as a module."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
