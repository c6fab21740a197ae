"""The CLI contract: train, eval, resume, listings, and one-line errors with exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_trained, read_csv

from metarl.checkpoint import load_checkpoint
from metarl.cli import main

SMALL = [
    "--set",
    "algo.trials_per_iteration=8",
    "--set",
    "algo.hidden_size=8",
    "--set",
    "train.eval_tasks=4",
    "--set",
    "train.eval_every=2",
    "--no-progress",
]


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_envs_and_algos_listings(capsys):
    code, out, _ = run(["envs"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.strip().splitlines()]
    assert {"bandit", "tabular-mdp", "nav2d"} <= set(names)
    assert all(len(line.split(None, 1)) == 2 for line in out.strip().splitlines())
    code, out, _ = run(["algos"], capsys)
    assert code == 0
    rows = [line.split(None, 1) for line in out.strip().splitlines()]
    meta_rl = [name for name, text in rows if not text.startswith("few-shot:")]
    few_shot = [name for name, text in rows if text.startswith("few-shot:")]
    assert {"rl2", "snail", "maml-trpo", "meta-sgd"} <= set(meta_rl)
    assert {"maml", "snail", "protonet"} <= set(few_shot)
    kinds = [text.startswith("few-shot:") for _, text in rows]
    assert kinds == sorted(kinds)  # meta-RL algorithms first, then few-shot learners


@pytest.mark.parametrize("env", ["bandit", "tabular-mdp", "nav2d"])
def test_train_eval_smoke(env, tmp_path, capsys):
    run_dir = tmp_path / env
    code, _, err = run(
        [
            "train",
            "rl2",
            env,
            "--iterations",
            "2",
            "--logdir",
            str(run_dir),
            "--set",
            "trial.episodes=2",
            *([] if env == "bandit" else ["--set", "trial.max_episode_steps=10"]),
            *SMALL,
        ],
        capsys,
    )
    assert code == 0, err
    assert_trained(run_dir)
    assert {"config.yaml", "metrics.csv", "checkpoints", "run.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert list(run_dir.glob("events.out.tfevents.*"))
    rows = read_csv(run_dir / "metrics.csv")
    assert [r["iteration"] for r in rows] == ["0", "1"]
    assert rows[1]["meta_test/return"] != ""
    assert any(k.startswith("losses/") for k in rows[0])
    code, _, err = run(["eval", str(run_dir), "--tasks", "6"], capsys)
    assert code == 0, err
    table = read_csv(run_dir / "eval" / "adaptation.csv")
    assert list(table[0]) == ["learner", "x", "mean_return", "ci_low", "ci_high", "n_tasks"]
    learners = {r["learner"] for r in table}
    assert {"rl2", "random", "oracle"} <= learners
    assert {r["x"] for r in table if r["learner"] == "rl2"} == {"1", "2"}
    assert all(r["n_tasks"] == "6" for r in table)
    per_task = read_csv(run_dir / "eval" / "per_task.csv")
    assert list(per_task[0]) == ["learner", "x", "task", "value"]  # tensor tasks: no params
    assert len([r for r in per_task if r["learner"] == "rl2"]) == 2 * 6
    assert (run_dir / "eval" / "adaptation.png").stat().st_size > 1000
    # --no-baselines: the learner's curve alone, with the same values.
    out = tmp_path / "learner_only"
    code, _, err = run(
        ["eval", str(run_dir), "--tasks", "6", "--no-baselines", "--out", str(out)], capsys
    )
    assert code == 0, err
    alone = read_csv(out / "adaptation.csv")
    assert {r["learner"] for r in alone} == {"rl2"}
    assert alone == [r for r in table if r["learner"] == "rl2"]


def test_resume_matches_uninterrupted_run(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert (
        run(["train", "rl2", "bandit", "--iterations", "4", "--logdir", str(full), *SMALL], capsys)[
            0
        ]
        == 0
    )
    assert (
        run(["train", "rl2", "bandit", "--iterations", "2", "--logdir", str(part), *SMALL], capsys)[
            0
        ]
        == 0
    )
    code, _, err = run(
        ["train", "--resume", "--logdir", str(part), "--iterations", "4", "--no-progress"], capsys
    )
    assert code == 0, err
    a = load_checkpoint(full / "checkpoints/last.pt")["learner"]["model"]
    b = load_checkpoint(part / "checkpoints/last.pt")["learner"]["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = read_csv(part / "metrics.csv")
    assert [r["iteration"] for r in rows] == ["0", "1", "2", "3"]


def test_yaml_config_and_overrides(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "algorithm: rl2\nenvironment: bandit\nenv: {arms: 3}\ntrial: {episodes: 4}\n"
        "algo: {hidden_size: 8, trials_per_iteration: 4}\ntrain: {eval_tasks: 2}\n"
    )
    run_dir = tmp_path / "r"
    code, _, err = run(
        [
            "train",
            "--config",
            str(cfg),
            "--set",
            "env.arms=4",
            "--iterations",
            "1",
            "--logdir",
            str(run_dir),
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["env"]["arms"] == 4 and saved["trial"]["episodes"] == 4
    assert saved["algo"]["hidden_size"] == 8 and saved["train"]["iterations"] == 1


def _one_line_error(code, err, expected):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["train", "rl2", "bandti"], "did you mean 'bandit'"),
        (["train", "rl3", "bandit"], "unknown algorithm 'rl3'"),
        (["train", "rl2", "bandit", "--set", "env.armz=3"], "did you mean 'arms'"),
        (["train", "rl2", "bandit", "--set", "env.arms=many"], "env.arms must be int"),
        (["train", "rl2", "bandit", "--set", "env.arms=1"], "arms"),
        (["train", "rl2", "bandit", "--set", "algo.optimizer=adam"], "algo.optimizer"),
        (["train", "rl2", "bandit", "--set", "trian.iterations=3"], "unknown section 'trian'"),
        (["train", "rl2", "bandit", "--set", "noequals"], "expected section.key=value"),
        (["train", "rl2", "bandit", "--iterations", "0"], "train.iterations"),
        (["train", "rl2", "bandit", "--bogus"], "unrecognized arguments"),
        (["train", "rl2", "nowhere/file.py:Env"], "no such file"),
        (["eval", "/nonexistent/run"], "not a metarl run directory"),
        (["eval", "/nonexistent/run", "--seed", "-1"], "--seed must be in [0, 2**63 - 1]"),
        (["train", "rl2", "bandit", "--set", "algo.clip=inf"], "algo.clip must be a finite"),
        (["train", "rl2", "bandit", "--set", "algo.minibatches=9", *SMALL], "minibatches=9"),
        (["check-env", "sinusoid"], "few-shot dataset"),
        (["check-env", "my_env.py"], "use my_env.py:ClassName"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage_is_one_line_exit_2(args, expected, capsys, tmp_path):
    args = [*args, "--logdir", str(tmp_path / "r")] if args[0] == "train" else args
    code, _, err = run(args, capsys)
    _one_line_error(code, err, expected)
    assert not (tmp_path / "r" / "run.json").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("algo: {hidden_size: 8\ntrain: [\n", "malformed YAML"),
        ("algo:\n  hiden_size: 8\n", "did you mean 'hidden_size'"),
        # PyYAML keeps the last of two equal keys: a config must not pass with one ignored.
        ("algo:\n  lr: 0.001\n  epochs: 2\n  lr: 0.5\n", "line 4: key 'lr' appears twice"),
        ("algo: {lr: 0.1, lr: 0.2}\n", "key 'lr' appears twice"),
    ],
)
def test_malformed_yaml(text, expected, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    code, _, err = run(["train", "rl2", "bandit", "--config", str(bad)], capsys)
    _one_line_error(code, err, expected)


BROKEN_ENV = """
import gymnasium as gym
import numpy as np


class NoTasks(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)


class BadStep(gym.Env):
    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def sample_tasks(self, n, rng):
        return [float(x) for x in rng.random(n)]

    def set_task(self, task):
        self.task = task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        return np.zeros(1, np.float32), 0.0, False  # wrong arity


class FailsToConstruct(BadStep):
    def __init__(self):
        raise RuntimeError("no licence server")


class OutOfBounds(BadStep):
    def step(self, action):
        return np.full(1, 50.0, np.float32), 0.0, False, False, {}  # space is [-1, 1]
"""


def test_broken_user_env(tmp_path, capsys):
    path = tmp_path / "broken.py"
    path.write_text(BROKEN_ENV)
    code, _, err = run(["train", "rl2", f"{path}:NoTasks", "--logdir", str(tmp_path / "a")], capsys)
    _one_line_error(code, err, "without sample_tasks")
    code, _, err = run(["train", "rl2", f"{path}:BadStep", "--logdir", str(tmp_path / "b")], capsys)
    _one_line_error(code, err, "BadStep")
    code, out, err = run(["check-env", f"{path}:BadStep"], capsys)
    assert code == 1 and "FAIL" in out
    code, _, err = run(
        ["train", "rl2", f"{path}:FailsToConstruct", "--logdir", str(tmp_path / "c")], capsys
    )
    _one_line_error(code, err, "constructing FailsToConstruct raised RuntimeError: no licence")
    code, _, err = run(
        ["train", "rl2", f"{path}:OutOfBounds", "--logdir", str(tmp_path / "d")], capsys
    )
    _one_line_error(code, err, "element (0,) is 50, bounds [-1, 1]")
    code, out, _ = run(["check-env", f"{path}:OutOfBounds"], capsys)
    assert code == 1 and "FAIL observation from step() lies outside observation_space" in out


def test_missing_and_corrupt_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "r"
    assert (
        run(
            ["train", "rl2", "bandit", "--iterations", "1", "--logdir", str(run_dir), *SMALL],
            capsys,
        )[0]
        == 0
    )
    ckpt = run_dir / "checkpoints" / "last.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    code, _, err = run(["eval", str(run_dir)], capsys)
    _one_line_error(code, err, "corrupt")
    code, _, err = run(["train", "--resume", "--logdir", str(run_dir)], capsys)
    _one_line_error(code, err, "corrupt")
    ckpt.write_bytes(b"not a checkpoint at all")
    code, _, err = run(["eval", str(run_dir)], capsys)
    _one_line_error(code, err, "not a metarl checkpoint")
    ckpt.unlink()
    code, _, err = run(["eval", str(run_dir)], capsys)
    _one_line_error(code, err, "no checkpoint")
    # run.json records a checkpoint at iteration 1: starting over would discard it.
    code, _, err = run(["train", "--resume", "--logdir", str(run_dir)], capsys)
    _one_line_error(code, err, "is missing, but run.json records one at iteration 1")


def test_eval_output_and_device_errors(tmp_path, capsys):
    run_dir = tmp_path / "r"
    args = ["train", "rl2", "bandit", "--iterations", "1", "--logdir", str(run_dir), *SMALL]
    assert run(args, capsys)[0] == 0
    a_file = tmp_path / "afile"
    a_file.write_text("")
    code, _, err = run(["eval", str(run_dir), "--tasks", "2", "--out", str(a_file)], capsys)
    _one_line_error(code, err, f"cannot write the evaluation to {a_file}")
    if not torch.cuda.is_available():
        code, _, err = run(["eval", str(run_dir), "--tasks", "2", "--device", "cuda"], capsys)
        _one_line_error(code, err, "device cuda requested but torch sees no CUDA device")


def test_snapshots_are_kept_and_evaluable(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "r"
    saves = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda *a, **k: saves.append(1) or real_save(*a, **k))
    # nav2d: continuous returns, so two different checkpoints cannot score the same.
    args = ["train", "rl2", "nav2d", "--iterations", "4", "--logdir", str(run_dir), *SMALL]
    args += ["--set", "trial.max_episode_steps=5", "--set", "train.snapshot_every=2"]
    assert run(args, capsys)[0] == 0
    # A checkpoint every iteration; the two snapshots fall on checkpointed iterations and
    # reuse that serialisation (4 serialisations, not 6).
    assert len(saves) == 4
    monkeypatch.undo()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["iter_000002.pt", "iter_000004.pt", "last.pt"]
    last, final, early = (
        load_checkpoint(run_dir / "checkpoints" / name)
        for name in ("last.pt", "iter_000004.pt", "iter_000002.pt")
    )
    assert final["iteration"] == last["iteration"] == 4 and early["iteration"] == 2
    weights = last["learner"]["model"]
    assert all(torch.equal(final["learner"]["model"][k], v) for k, v in weights.items())
    assert any(not torch.equal(early["learner"]["model"][k], v) for k, v in weights.items())

    outs = iter(range(100))

    def evaluate(*extra):
        out = tmp_path / f"eval{next(outs)}"
        code, _, err = run(
            ["eval", str(run_dir), "--tasks", "4", "--no-baselines", "--out", str(out), *extra],
            capsys,
        )
        assert code == 0, err
        return read_csv(out / "adaptation.csv")

    # By name (in RUN/checkpoints) or by path; the final snapshot scores as last.pt does.
    assert evaluate("--checkpoint", "iter_000004.pt") == evaluate()
    by_path = evaluate("--checkpoint", str(run_dir / "checkpoints" / "iter_000002.pt"))
    assert by_path == evaluate("--checkpoint", "iter_000002.pt")
    assert by_path != evaluate()
    code, _, err = run(["eval", str(run_dir), "--checkpoint", "iter_000003.pt"], capsys)
    _one_line_error(code, err, "no checkpoint at")


def test_user_gym_env_trains_with_rl2(tmp_path, capsys):
    path = tmp_path / "user_env.py"
    path.write_text('''
import gymnasium as gym
import numpy as np


class GoLeftOrRight(gym.Env):
    """Reward 1 for the task's side; episode of 3 steps."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 3):
        self.length = length
        self.task = 0

    def sample_tasks(self, n, rng):
        return [int(x) for x in rng.integers(0, 2, n)]

    def set_task(self, task):
        self.task = task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(1, np.float32), float(action == self.task), False, self.t >= self.length, {}
''')
    run_dir = tmp_path / "r"
    code, _, err = run(
        [
            "train",
            "rl2",
            f"{path}:GoLeftOrRight",
            "--iterations",
            "2",
            "--set",
            "env.length=2",
            "--logdir",
            str(run_dir),
            *SMALL,
        ],
        capsys,
    )
    assert code == 0, err
    code, _, err = run(["eval", str(run_dir), "--tasks", "4"], capsys)
    assert code == 0, err
    code, out, _ = run(["check-env", f"{path}:GoLeftOrRight"], capsys)
    assert code == 0 and "OK" in out


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "metarl.cli", "train", "rl2", "nope"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown env" in proc.stderr


NAN_LEARNER = '''
from agents.rl2 import RL2

CALLS = {"n": 0}


class NaNLater(RL2):
    """RL² whose loss turns NaN from its 3rd update on."""

    def train_iteration(self, tasks, generator):
        CALLS["n"] += 1
        return super().train_iteration(tasks, generator)

    def _adam_step(self, loss, name):
        super()._adam_step(loss * float("nan") if CALLS["n"] > 2 else loss, name)
'''

NAN_ENV = """
from metarl.testing import CountingDistribution, CountingEnv


class NaNEnv(CountingEnv):
    def _step(self, action):
        obs, reward, term = super()._step(action)
        return obs, reward * float("nan"), term


class NaNRewards(CountingDistribution):
    def make_batched_env(self, num_envs, device="cpu"):
        return NaNEnv(num_envs, self.episode_length, self.terminate, self.ragged, device)
"""


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_loss_stops_with_message_or_skips(policy, tmp_path, capsys):
    path = tmp_path / f"nan_learner_{policy}.py"
    path.write_text(NAN_LEARNER)
    run_dir = tmp_path / "r"
    args = [
        "train",
        f"{path}:NaNLater",
        "bandit",
        "--iterations",
        "4",
        "--logdir",
        str(run_dir),
        "--set",
        f"train.nan_policy={policy}",
        "--set",
        "train.eval_every=0",
        *SMALL,
    ]
    code, out, err = run(args, capsys)
    if policy == "stop":
        assert code == 1
        assert len(err.strip().splitlines()) == 1
        assert "iteration 2" in err and "loss" in err and "nan" in err
        # The last good checkpoint (after iterations 0 and 1) is kept and loads.
        assert load_checkpoint(run_dir / "checkpoints/last.pt")["iteration"] == 2
        assert "failed" in (run_dir / "run.json").read_text()
    else:
        assert code == 0, err
        assert "update skipped" in out
        rows = read_csv(run_dir / "metrics.csv")
        assert [r.get("meta_train/skipped_nonfinite", "") for r in rows] == ["", "", "1", "1"]
        state = load_checkpoint(run_dir / "checkpoints/last.pt")["learner"]["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_reward_from_env_is_named(tmp_path, capsys):
    path = tmp_path / "nan_env.py"
    path.write_text(NAN_ENV)
    args = [
        "train",
        "rl2",
        f"{path}:NaNRewards",
        "--iterations",
        "2",
        "--logdir",
        str(tmp_path / "r"),
        *SMALL,
    ]
    code, _, err = run(args, capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "iteration 0" in err and "reward" in err


@pytest.mark.parametrize(
    ("algo", "env", "optimizer"),
    [
        ("snail", "bandit", "ppo"),
        ("snail", "tabular-mdp", "trpo"),
        ("snail", "nav2d", "ppo"),
        ("rl2", "tabular-mdp", "trpo"),
        ("rl2", "bandit", "vpg"),
        ("rl2", "maze", "ppo"),
        ("snail", "maze", "ppo"),
        ("rl2", "halfcheetah-dir", "ppo"),
        ("snail", "halfcheetah-dir", "trpo"),
    ],
)
def test_algorithm_smoke(algo, env, optimizer, tmp_path, capsys):
    run_dir = tmp_path / "r"
    extra = ["--set", "trial.max_episode_steps=8"] if env in ("nav2d", "maze") else []
    if env == "maze":
        extra += ["--set", "algo.obs_embed=16"]
    if env == "halfcheetah-dir":
        pytest.importorskip("mujoco", reason="the mujoco extra is not installed")
        extra += ["--set", "env.horizon=6"]
    code, _, err = run(
        [
            "train",
            algo,
            env,
            "--iterations",
            "2",
            "--logdir",
            str(run_dir),
            "--set",
            f"algo.optimizer={optimizer}",
            "--set",
            "trial.episodes=3",
            "--set",
            "algo.trials_per_iteration=8",
            "--set",
            "train.eval_tasks=4",
            "--set",
            "train.eval_every=2",
            "--no-progress",
            *extra,
        ],
        capsys,
    )
    assert code == 0, err
    assert_trained(run_dir)
    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) == 2 and rows[1]["meta_test/return"] != ""
    if optimizer == "trpo":
        assert rows[0]["meta_train/trpo_accepted"] in ("0", "1")


def test_entropy_and_lr_schedules_are_linear_and_logged(tmp_path, capsys):
    run_dir = tmp_path / "sched"
    code, _, err = run(
        ["train", "rl2", "bandit", "--iterations", "5", "--logdir", str(run_dir), *SMALL,
         "--set", "algo.entropy_coef=0.04", "--set", "algo.entropy_coef_final=0",
         "--set", "algo.lr=0.002", "--set", "algo.lr_final=0.001"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = read_csv(run_dir / "metrics.csv")
    entropy = [float(r["meta_train/entropy_coef"]) for r in rows]
    lr = [float(r["meta_train/lr"]) for r in rows]
    assert entropy == pytest.approx([0.04, 0.03, 0.02, 0.01, 0.0])
    assert lr == pytest.approx([0.002, 0.00175, 0.0015, 0.00125, 0.001])
    # A run without schedules logs neither (the weights stay the configured constants).
    plain = tmp_path / "plain"
    assert run(["train", "rl2", "bandit", "--iterations", "2", "--logdir", str(plain), *SMALL],
               capsys)[0] == 0  # fmt: skip
    assert "meta_train/lr" not in read_csv(plain / "metrics.csv")[0]


def test_init_from_warm_starts_parameters_not_optimiser(tmp_path, capsys):
    from metarl import registry
    from metarl.config import build_run_config
    from metarl.runner import Runner

    src = tmp_path / "src"
    args = ["train", "rl2", "bandit", "--iterations", "2", "--logdir", str(src), *SMALL]
    assert run(args, capsys)[0] == 0
    trained = load_checkpoint(src / "checkpoints/last.pt")["learner"]
    sets = ["algo.trials_per_iteration=8", "algo.hidden_size=8", "algo.lr=0.01"]
    config, env_cls, learner_cls = build_run_config(
        "rl2", "bandit", {}, sets, {"init_from": str(src)}, registry.resolve_env,
        registry.resolve_algo,
    )  # fmt: skip
    runner = Runner(tmp_path / "warm", config, env_cls, learner_cls, progress=False)
    try:
        state = runner.learner.state_dict()
        for key, value in trained["model"].items():
            assert torch.equal(state["model"][key], value), key
        assert state["optimizer"]["state"] == {}  # fresh moments
        assert state["optimizer"]["param_groups"][0]["lr"] == 0.01  # this run's options
        assert runner.start_iteration == 0
    finally:
        runner.close()
    assert "initialised from" in capsys.readouterr().out


def test_snail_warm_starts_onto_longer_trials_with_tc_span(tmp_path, capsys):
    """SNAIL's TC depth follows the trial length, so a run on longer trials takes a
    shorter run's weights only when ``algo.tc_span`` pins the depth (the maze curriculum)."""
    tiny = ["--set", "algo.trials_per_iteration=8", "--set", "algo.filters=4",
            "--set", "algo.key_size=4", "--set", "algo.value_size=4",
            "--set", "algo.embed_size=4", "--set", "train.eval_tasks=4",
            "--set", "train.eval_every=2", "--no-progress"]  # fmt: skip
    src = tmp_path / "short"
    argv = ["train", "snail", "bandit", "--set", "trial.episodes=8", "--iterations", "1"]
    assert run([*argv, "--logdir", str(src), *tiny], capsys)[0] == 0
    longer = ["train", "snail", "bandit", "--set", "trial.episodes=40", "--iterations", "1"]
    code, _, err = run([*longer, "--logdir", str(tmp_path / "a"), "--init-from", str(src), *tiny],
                       capsys)  # fmt: skip
    assert code == 2 and "does not fit this run's learner: Missing key(s)" in err, err
    assert "set algo.tc_span" in err and len(err.strip().splitlines()) == 1, err
    code, out, err = run(
        [*longer, "--logdir", str(tmp_path / "b"), "--init-from", str(src), "--set",
         "algo.tc_span=8", *tiny],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "initialised from" in out
    warm = load_checkpoint(tmp_path / "b/checkpoints/last.pt")["learner"]["model"]
    source = load_checkpoint(src / "checkpoints/last.pt")["learner"]["model"]
    assert warm.keys() == source.keys()
    # One iteration of Adam (4 epochs x 4 minibatches at lr 1e-3) moves a weight by about
    # 0.016 at most: the warm run started from the source's weights, a cold one (another
    # seed: the same seed would draw the source's initialisation) did not.
    argv_cold = [*longer, "--logdir", str(tmp_path / "c"), "--set", "algo.tc_span=8",
                 "--seed", "1", *tiny]  # fmt: skip
    assert run(argv_cold, capsys)[0] == 0
    cold = load_checkpoint(tmp_path / "c/checkpoints/last.pt")["learner"]["model"]

    def distance(a):
        return max(float((a[k] - source[k]).abs().max()) for k in source if "weight" in k)

    assert distance(warm) < 0.03 < distance(cold), (distance(warm), distance(cold))


def test_init_from_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    args = ["train", "rl2", "bandit", "--iterations", "1", "--logdir", str(src), *SMALL]
    assert run(args, capsys)[0] == 0
    cases = [
        (["rl2", "bandit", "--set", "algo.hidden_size=16"], "does not fit this run's learner"),
        (["snail", "bandit"], "was trained by 'rl2', this run is 'snail'"),
    ]
    for i, (head, message) in enumerate(cases):
        argv = ["train", *head, "--iterations", "1", "--logdir", str(tmp_path / f"w{i}")]
        code, _, err = run([*argv, "--init-from", str(src), "--no-progress"], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run(
        ["train", "rl2", "bandit", "--init-from", str(tmp_path / "nowhere"), "--no-progress"],
        capsys,
    )
    assert code == 2 and "no checkpoint at" in err, err
    code, _, err = run(["train", "--resume", "--logdir", str(src), "--init-from", str(src)], capsys)
    assert code == 2 and "--init-from" in err, err


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
        ),
    ],
)
def test_resume_restores_optimizer_state_on_the_right_devices(tmp_path, capsys, device):
    from metarl import registry
    from metarl.config import build_run_config, load_yaml
    from metarl.runner import Runner

    run_dir = tmp_path / "r"
    args = ["train", "rl2", "bandit", "--iterations", "2", "--logdir", str(run_dir), *SMALL]
    assert run([*args, "--device", device], capsys)[0] == 0
    saved = load_checkpoint(run_dir / "checkpoints/last.pt")["learner"]["optimizer"]["state"]
    config, env_cls, learner_cls = build_run_config(
        None, None, load_yaml(run_dir / "config.yaml"), [], {}, registry.resolve_env,
        registry.resolve_algo,
    )  # fmt: skip
    runner = Runner(run_dir, config, env_cls, learner_cls, resume=True, progress=False)
    try:
        params = dict(enumerate(runner.learner.optimizer.param_groups[0]["params"]))
        state = runner.learner.optimizer.state_dict()["state"]
        assert state.keys() == saved.keys() and len(state) > 0
        for index, moments in state.items():
            # Adam's step counters stay on the CPU (torch's convention without
            # capturable/fused); the moments live with their parameter.
            assert moments["step"].device.type == "cpu"
            assert float(moments["step"]) == float(saved[index]["step"]) > 0
            for key in ("exp_avg", "exp_avg_sq"):
                assert moments[key].device == params[index].device
                assert torch.equal(moments[key].cpu(), saved[index][key])
    finally:
        runner.close()
