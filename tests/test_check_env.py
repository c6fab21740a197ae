"""``metarl check-env``: each broken contract is caught with one precise line.

Every broken env below differs from a correct one in exactly one way, and the check must
report exactly that problem (one ``FAIL`` line naming it), nothing else.
"""

import pytest

from metarl.cli import main
from metarl.testing import check_task_env

ENVS = '''
import dataclasses
import random
import threading

import gymnasium as gym
import numpy as np
import torch

from metarl.testing import CountingDistribution, CountingEnv, CountingTasks


class Good(gym.Env):
    """Walk left or right towards a hidden goal on a line; noisy start and rewards."""

    observation_space = gym.spaces.Box(-10, 10, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int = 5):
        self.length = length
        self.goal = 1.0

    def sample_tasks(self, n, rng):
        return [float(g) for g in rng.uniform(-3, 3, n)]

    def set_task(self, task):
        self.goal = float(task)

    def _start(self):
        return float(self.np_random.uniform(-0.5, 0.5))

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.x = 0, self._start()
        return self._obs(), {}

    def _obs(self):
        return np.array([self.x, self.t], np.float32)

    def _reward(self):
        return -abs(self.x - self.goal) + 0.01 * float(self.np_random.normal())

    def step(self, action):
        self.t += 1
        self.x = float(np.clip(self.x + (1.0 if action == 1 else -1.0), -10, 10))
        return self._obs(), self._reward(), False, self.t >= self.length, {}


class WrongDtype(Good):
    def _obs(self):
        return np.array([self.x, self.t], np.float64)


class WrongShape(Good):
    def _obs(self):
        return np.array([self.x, self.t, 0.0], np.float32)


class NondeterministicSetTask(Good):
    def set_task(self, task):
        self.goal = float(task) + random.random()  # unseeded global randomness


class Task:
    def __init__(self, goal):
        self.goal = goal
        self.lock = threading.Lock()  # cannot be pickled

    def __eq__(self, other):
        return isinstance(other, Task) and self.goal == other.goal


class UnpicklableTasks(Good):
    def sample_tasks(self, n, rng):
        return [Task(float(g)) for g in rng.uniform(-3, 3, n)]

    def set_task(self, task):
        self.goal = task.goal


class LambdaTaskEnv(Good):
    def sample_tasks(self, n, rng):
        return [lambda g=float(g): g for g in rng.uniform(-3, 3, n)]  # new objects each call

    def set_task(self, task):
        self.goal = task()


class NaNReward(Good):
    def _reward(self):
        return float("nan") if self.t == 3 else super()._reward()


class IgnoresSeed(Good):
    def _start(self):
        return float(np.random.default_rng().uniform(-0.5, 0.5))  # not self.np_random


class BatchedIgnoresSeed(CountingDistribution):
    def make_batched_env(self, num_envs, device="cpu"):
        return _NoisyCounting(num_envs, self.episode_length, self.terminate, self.ragged, device)


class _NoisyCounting(CountingEnv):
    def _step(self, action):
        obs, reward, term = super()._step(action)
        return obs, reward + torch.rand(reward.shape), term  # global torch RNG, not seeded


NOT_PICKLABLE = lambda: 0  # noqa: E731 - pickle finds no importable name for a lambda


@dataclasses.dataclass(frozen=True)
class LambdaTasks(CountingTasks):
    fn: object = None

    def __post_init__(self):
        pass

    def to(self, device):
        return self


class BatchedUnpicklable(CountingDistribution):
    def sample_tasks(self, n, rng):
        return LambdaTasks(offset=super().sample_tasks(n, rng).offset, fn=NOT_PICKLABLE)


class BatchedWrongShape(CountingDistribution):
    def make_batched_env(self, num_envs, device="cpu"):
        return _WideCounting(num_envs, self.episode_length, self.terminate, self.ragged, device)


class _WideCounting(CountingEnv):
    def _obs(self):
        return torch.cat([super()._obs(), torch.zeros(self.num_envs, 1)], -1)


class OutOfBounds(Good):
    def _obs(self):
        return np.array([self.x, 20.0 * self.t], np.float32)  # leaves [-10, 10] at t = 1


class BatchedOutOfBounds(CountingDistribution):
    def make_batched_env(self, num_envs, device="cpu"):
        return _HugeCounting(num_envs, self.episode_length, self.terminate, self.ragged, device)


class _HugeCounting(CountingEnv):
    def _obs(self):
        return torch.stack([self.count * 1e7, self.tasks.offset], -1)  # leaves [-1e6, 1e6]
'''


@pytest.fixture(scope="module")
def env_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("envs") / "broken_envs.py"
    path.write_text(ENVS)
    return path


def check(env_file, capsys, name):
    code = main(["check-env", f"{env_file}:{name}"])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def test_correct_env_passes(env_file, capsys):
    code, out, err = check(env_file, capsys, "Good")
    assert code == 0 and out == [f"{env_file}:Good: OK"], (out, err)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "WrongDtype",
            "observation dtype float64 from reset() does not match observation_space dtype float32",
        ),
        (
            "WrongShape",
            "observation shape (3,) from reset() does not match observation_space shape (2,)",
        ),
        ("NondeterministicSetTask", "set_task is not deterministic"),
        (
            "UnpicklableTasks",
            "tasks cannot be pickled (needed by process and Ray samplers): "
            "TypeError: cannot pickle '_thread.lock' object",
        ),
        # The one line: lambdas also compare by identity, which must not add a second
        # "sample_tasks is not deterministic" line (the error text varies by Python version).
        ("LambdaTaskEnv", "tasks cannot be pickled (needed by process and Ray samplers): "),
        ("NaNReward", "step() returned a non-finite reward (nan)"),
        ("IgnoresSeed", "reset ignores the seed"),
        ("BatchedIgnoresSeed", "reset ignores the seed"),
        ("BatchedUnpicklable", "tasks cannot be pickled (needed by process and Ray samplers)"),
        ("BatchedWrongShape", "batched reset() observations have shape (8, 3), expected (8, 2)"),
        (
            "OutOfBounds",
            "observation from step() lies outside observation_space: element (1,) is 20, "
            "bounds [-10, 10]",
        ),
        (
            "BatchedOutOfBounds",
            "observation from batched step() lies outside observation_space: element (0, 0) is "
            "1e+07, bounds [-1e+06, 1e+06]",
        ),
    ],
)
def test_each_broken_contract_is_one_precise_line(env_file, capsys, name, expected):
    code, out, err = check(env_file, capsys, name)
    assert code == 1
    assert len(out) == 1, out  # exactly the one problem, not knock-on reports
    assert out[0].startswith("FAIL ") and expected in out[0], out[0]
    assert err == [f"{env_file}:{name}: 1 problem(s) found"]


def test_builtin_envs_pass():
    from metarl.registry import resolve_env

    for name in ("bandit", "tabular-mdp", "nav2d", "maze"):
        assert check_task_env(resolve_env(name)) == [], name


def test_check_env_rejects_bad_options_in_one_line(env_file, capsys):
    assert main(["check-env", f"{env_file}:Good", "--set", "env.lenght=3"]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "did you mean 'length'" in err
    assert main(["check-env", f"{env_file}:Good", "--set", "train.seed=3"]) == 2
    _, err = capsys.readouterr()
    assert err.count("\n") == 1 and "only takes env.*" in err
