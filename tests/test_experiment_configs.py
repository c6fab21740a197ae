"""Every shipped experiment config is a valid run configuration.

A reader reproducing a table runs ``metarl train --config experiments/X.yaml`` on a fresh
clone, so a config that no longer matches the code (a renamed option, a moved checkpoint)
must fail here, not an hour into someone's run.
"""

from pathlib import Path

import pytest

from metarl import registry
from metarl.config import build_run_config, load_yaml
from metarl.runner import CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").glob("*.yaml"))


def test_configs_are_found():
    assert len(CONFIGS) >= 40


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_experiment_config_validates(path: Path):
    data = load_yaml(path)
    config, env_cls, learner_cls = build_run_config(
        None, None, data, [], {}, registry.resolve_env, registry.resolve_algo
    )
    assert config.algorithm == data["algorithm"]
    assert config.environment == data["environment"]
    # Every algo.* key in the file reached the learner's typed config.
    assert isinstance(config.algo, learner_cls.config_cls)
    for key, value in (data.get("algo") or {}).items():
        got = getattr(config.algo, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key
    if getattr(env_cls, "is_fewshot_dataset", False):
        assert config.data is not None
    if config.train.init_from:
        # Warm-start sources are committed runs, named relative to the repository root.
        source = ROOT / config.train.init_from
        assert (source / CHECKPOINT).is_file(), source
