"""MAML's MuJoCo task distributions (envs/mujoco_dirvel.py) on gymnasium v5.

Rewards are checked against the formulas written out by hand (not through the module's
``reward_terms``), on states set with ``set_state`` and fixed actions, so a wrong
coefficient or velocity definition fails here rather than agreeing with itself.
"""

from __future__ import annotations

import inspect
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("mujoco", reason="the mujoco extra is not installed")

import gymnasium as gym
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from envs.mujoco_dirvel import (
    ANT_FRAME_SKIP,
    AntDirEnv,
    AntVelEnv,
    HalfCheetahDirEnv,
    HalfCheetahVelEnv,
    reward_terms,
)

ALL = [HalfCheetahDirEnv, HalfCheetahVelEnv, AntDirEnv, AntVelEnv]
NAMES = {
    HalfCheetahDirEnv: "halfcheetah-dir",
    HalfCheetahVelEnv: "halfcheetah-vel",
    AntDirEnv: "ant-dir",
    AntVelEnv: "ant-vel",
}
# One action component out of range, so clipping before the control cost is exercised.
CHEETAH_ACTION = np.array([0.5, -0.3, 1.7, 0.2, -0.9, 0.1], dtype=np.float32)
ANT_ACTION = np.array([0.3, -0.2, 0.4, 0.1, -1.6, 0.05, 0.0, 0.2], dtype=np.float32)


@pytest.fixture(autouse=True)
def _quiet_mujoco_warnings(tmp_path, monkeypatch):
    # MuJoCo appends compiler warnings (plain v5's half_cheetah.xml, built by some tests,
    # uses the deprecated settotalmass) to MUJOCO_LOG.TXT in the working directory: keep
    # it out of the repo.
    monkeypatch.chdir(tmp_path)
    # gymnasium's checkers warn about infinite observation bounds (v5's own spaces).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _make(cls, **kwargs):
    env = cls(**kwargs)
    env.reset(seed=0)
    return env


# ---------------------------------------------------------------------------------------
# The task-distribution contract
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_class_contract(cls):
    assert cls.name == NAMES[cls]
    assert cls.description and "\n" not in cls.description
    assert cls.default_episodes == 1
    assert cls.horizon == 200
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert params[0].name == "horizon" and params[0].default == 200
    assert "render_mode" in [p.name for p in params]
    for p in params:  # every kwarg becomes a --set env.X= option
        assert p.default is not inspect.Parameter.empty, p.name
        assert p.annotation is not inspect.Parameter.empty, p.name
    env = cls(horizon=7)
    assert env.horizon == env.max_episode_steps == 7
    assert isinstance(env, gym.Env)
    env.close()


@pytest.mark.parametrize("cls", ALL)
def test_passes_gymnasium_and_sb3_env_checkers(cls):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = cls(horizon=5)
    check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=False)
    env.close()


@pytest.mark.parametrize("cls", ALL)
def test_passes_metarl_check_env(cls):
    """What `metarl check-env` and training run first: seeded reset, deterministic and
    picklable tasks, observations of the declared shape, dtype and bounds."""
    from metarl.testing import check_task_env

    assert check_task_env(cls, {"horizon": 30}) == []


@pytest.mark.parametrize("cls", ALL)
def test_sample_tasks_is_deterministic_and_in_range(cls):
    env = cls(horizon=2)
    a = env.sample_tasks(64, np.random.default_rng(123))
    b = env.sample_tasks(64, np.random.default_rng(123))
    c = env.sample_tasks(64, np.random.default_rng(124))
    assert a == b and a != c
    assert env.sample_tasks(0, np.random.default_rng(0)) == []
    for task in a:
        ((_, value),) = task.items()
        assert type(value) is float  # plain data, not numpy scalars
    values = np.array([next(iter(t.values())) for t in a])
    if cls in (HalfCheetahDirEnv, AntDirEnv):
        assert all(set(t) == {"direction"} for t in a)
        assert set(values) == {-1.0, 1.0}
    else:
        high = 2.0 if cls is HalfCheetahVelEnv else 3.0
        assert all(set(t) == {"velocity"} for t in a)
        assert values.min() >= 0.0 and values.max() <= high
        assert values.max() - values.min() > high / 2  # spread over the range
    env.close()


def test_velocity_range_is_configurable():
    env = HalfCheetahVelEnv(horizon=2, velocity_low=0.0, velocity_high=3.0)
    values = [t["velocity"] for t in env.sample_tasks(200, np.random.default_rng(0))]
    assert max(values) > 2.0 and max(values) <= 3.0
    env.close()


@pytest.mark.parametrize("cls", ALL)
def test_set_task_survives_pickle_round_trip(cls):
    env = cls(horizon=4)
    task = env.sample_tasks(3, np.random.default_rng(5))[2]
    sent = pickle.loads(pickle.dumps(task))  # what an AsyncVectorEnv worker receives
    assert sent == task
    env.set_task(sent)
    assert env.task == task
    # The env itself pickles to a rebuilt env with the same arguments and task.
    clone = pickle.loads(pickle.dumps(env))
    assert type(clone) is cls and clone.task == task
    assert clone.horizon == 4
    clone.reset(seed=0)
    _, _, _, _, info = clone.step(np.zeros(clone.action_space.shape, np.float32))
    assert {k: info[k] for k in task} == task
    clone.close()
    env.close()


@pytest.mark.parametrize("cls", ALL)
def test_set_task_rejects_malformed_tasks(cls):
    env = cls(horizon=2)
    wrong_key = {"velocity": 1.0} if "direction" in env.task else {"direction": 1.0}
    for bad in (wrong_key, {"direction": 0.5}, {"velocity": float("nan")}, {}, 1.0):
        with pytest.raises(ValueError):
            env.set_task(bad)
    env.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"horizon": 0}, {"horizon": True}, {"horizon": 2.5}, {"frame_skip": 0}],
)
@pytest.mark.parametrize("cls", [HalfCheetahDirEnv, AntVelEnv])
def test_invalid_kwargs_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_invalid_velocity_range_raises():
    with pytest.raises(ValueError):
        AntVelEnv(velocity_low=2.0, velocity_high=1.0)


# ---------------------------------------------------------------------------------------
# Rewards against hand-written formulas on scripted states
# ---------------------------------------------------------------------------------------


def _cheetah_state(env):
    qpos = env.init_qpos.copy()
    qpos[0], qpos[3], qpos[6] = 0.3, 0.2, -0.3
    qvel = np.zeros(env.model.nv)
    qvel[0], qvel[4] = 1.2, -0.5
    return qpos, qvel


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_halfcheetah_dir_reward_matches_formula(direction):
    env = _make(HalfCheetahDirEnv, horizon=10)
    env.set_task({"direction": direction})
    env.set_state(*_cheetah_state(env))
    x_before = env.data.qpos[0]
    _, reward, terminated, truncated, info = env.step(CHEETAH_ACTION)
    v = (env.data.qpos[0] - x_before) / env.dt
    a = np.clip(CHEETAH_ACTION.astype(np.float64), -1.0, 1.0)
    assert abs(v) > 0.1  # the scripted state actually moves
    assert reward == pytest.approx(direction * v - 0.05 * np.sum(a**2), rel=1e-12)
    assert info["x_velocity"] == pytest.approx(v, rel=1e-12)
    assert info["reward_ctrl"] == pytest.approx(-0.05 * np.sum(a**2))
    assert not terminated and not truncated
    env.close()


def test_halfcheetah_vel_reward_matches_formula():
    env = _make(HalfCheetahVelEnv, horizon=10)
    env.set_task({"velocity": 1.5})
    env.set_state(*_cheetah_state(env))
    x_before = env.data.qpos[0]
    _, reward, terminated, _, _ = env.step(CHEETAH_ACTION)
    v = (env.data.qpos[0] - x_before) / env.dt
    a = np.clip(CHEETAH_ACTION.astype(np.float64), -1.0, 1.0)
    assert reward == pytest.approx(-abs(v - 1.5) - 0.05 * np.sum(a**2), rel=1e-12)
    assert not terminated
    env.close()


def test_halfcheetah_velocity_and_obs_match_plain_v5():
    """Same dynamics, observation and ``x_velocity`` as gymnasium's HalfCheetah-v5."""
    ours = _make(HalfCheetahDirEnv, horizon=10)
    v5 = HalfCheetahEnv()
    v5.reset(seed=0)
    state = _cheetah_state(ours)
    ours.set_state(*state)
    v5.set_state(*state)
    obs, _, _, _, info = ours.step(CHEETAH_ACTION)
    obs_v5, _, _, _, info_v5 = v5.step(np.clip(CHEETAH_ACTION, -1, 1))
    np.testing.assert_allclose(obs, obs_v5, rtol=0, atol=0)
    assert info["x_velocity"] == pytest.approx(info_v5["x_velocity"], rel=1e-12)
    assert obs.shape == ours.observation_space.shape == (17,)
    ours.close()
    v5.close()


@pytest.mark.parametrize("cls", [HalfCheetahDirEnv, HalfCheetahVelEnv])
def test_halfcheetah_model_equals_v5_without_the_settotalmass_warning(cls, capfd, tmp_path):
    ours = cls()
    out, err = capfd.readouterr()
    assert "settotalmass" not in out + err
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
    v5 = HalfCheetahEnv()  # compiles the XML as is (and may warn)
    arrays = [n for n in dir(v5.model) if isinstance(getattr(v5.model, n, None), np.ndarray)]
    assert "body_mass" in arrays and len(arrays) > 100
    for name in arrays:
        np.testing.assert_array_equal(getattr(ours.model, name), getattr(v5.model, name), name)
    assert ours.model.body_mass.sum() == pytest.approx(14.0)
    ours.close()
    v5.close()


def _ant_standing_state(env):
    """A state with feet on the floor (contact forces > 0), moving forward."""
    env.reset(seed=0)
    for _ in range(round(1.0 / env.dt)):  # let the ant drop onto its legs (1 s)
        env.step(np.zeros(8, np.float32))
    qpos, qvel = env.data.qpos.copy(), env.data.qvel.copy()
    qvel[0] += 0.5
    return qpos, qvel


def _ant_expected_costs(env, action):
    a = np.clip(action.astype(np.float64), -1.0, 1.0)  # v5's ctrlrange is ±1: scale 1
    ctrl = 0.5 * 1e-2 * np.sum(a**2)
    contact = 0.5 * 1e-3 * np.sum(np.clip(env.data.cfrc_ext, -1.0, 1.0) ** 2)
    return ctrl, contact


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_ant_dir_reward_matches_formula(direction):
    env = AntDirEnv(horizon=100)  # the standing state takes 50 steps
    env.set_task({"direction": direction})
    env.set_state(*_ant_standing_state(env))
    x_before = env.data.qpos[0]
    _, reward, terminated, truncated, info = env.step(ANT_ACTION)
    v = (env.data.qpos[0] - x_before) / env.dt
    ctrl, contact = _ant_expected_costs(env, ANT_ACTION)
    assert contact > 0  # the contact term is exercised
    assert reward == pytest.approx(direction * v - ctrl - contact + 0.05, rel=1e-12)
    assert info["reward_contact"] == pytest.approx(-contact)
    assert info["reward_survive"] == 0.05
    assert not terminated and not truncated
    env.close()


def test_ant_vel_reward_matches_formula():
    env = AntVelEnv(horizon=100)
    env.set_task({"velocity": 2.25})
    env.set_state(*_ant_standing_state(env))
    x_before = env.data.qpos[0]
    _, reward, terminated, _, _ = env.step(ANT_ACTION)
    v = (env.data.qpos[0] - x_before) / env.dt
    ctrl, contact = _ant_expected_costs(env, ANT_ACTION)
    assert contact > 0
    expected = -abs(v - 2.25) + 1.0 - ctrl - contact + 0.05
    assert reward == pytest.approx(expected, rel=1e-12)
    assert not terminated
    env.close()


@pytest.mark.parametrize("cls", [AntDirEnv, AntVelEnv])
def test_ant_terminates_when_unhealthy(cls):
    env = _make(cls, horizon=50)
    qpos = env.init_qpos.copy()
    qpos[2] = 1.5  # torso above the healthy range [0.2, 1.0]
    env.set_state(qpos, np.zeros(env.model.nv))
    _, reward, terminated, truncated, info = env.step(np.zeros(8, np.float32))
    assert terminated and not truncated
    assert info["reward_survive"] == 0.05  # rllab pays it on the terminal step too
    assert np.isfinite(reward)
    env.close()

    lenient = _make(cls, horizon=50, terminate_when_unhealthy=False)
    lenient.set_state(qpos, np.zeros(lenient.model.nv))
    assert not lenient.step(np.zeros(8, np.float32))[2]
    lenient.close()


@pytest.mark.parametrize("cls", [AntDirEnv, AntVelEnv])
def test_ant_steps_at_rllabs_control_period(cls):
    """Ant defaults to rllab's dt = 0.02 s; v5's 0.05 s stays one argument away."""
    env = cls(horizon=3)
    assert env.frame_skip == ANT_FRAME_SKIP == 2
    assert env.dt == pytest.approx(0.02)
    assert cls(horizon=3, frame_skip=5).dt == pytest.approx(0.05)
    assert HalfCheetahDirEnv(horizon=3).dt == pytest.approx(0.05)  # cheetah keeps v5's
    env.close()


def test_ant_obs_without_contact_forces():
    env = AntDirEnv(horizon=3, include_cfrc_ext_in_observation=False)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (27,)
    assert AntDirEnv(horizon=3).observation_space.shape == (105,)
    env.close()


def test_reward_terms_formulas():
    forces = np.array([[0.0] * 6, [2.0, -0.5, 0.0, 0.0, 0.0, -3.0]])
    terms = reward_terms(
        {"velocity": 2.0},
        1.5,
        np.array([0.5, -1.0]),
        ctrl_cost_weight=0.005,
        contact_forces=forces,
        contact_cost_weight=5e-4,
        survive_reward=0.05,
        velocity_offset=1.0,
    )
    assert terms["reward_forward"] == pytest.approx(-0.5 + 1.0)
    assert terms["reward_ctrl"] == pytest.approx(-0.005 * 1.25)
    assert terms["reward_contact"] == pytest.approx(-5e-4 * (1.0 + 0.25 + 1.0))  # clipped
    assert terms["reward"] == pytest.approx(0.5 - 0.00625 - 0.001125 + 0.05)
    # The velocity offset belongs to velocity tasks only; the action scale divides.
    terms = reward_terms(
        {"direction": -1.0},
        1.5,
        np.array([150.0]),
        ctrl_cost_weight=0.005,
        action_scale=150.0,
        velocity_offset=1.0,
    )
    assert terms["reward_forward"] == -1.5
    assert terms["reward_ctrl"] == pytest.approx(-0.005)
    assert terms["reward_contact"] == 0.0 and terms["reward_survive"] == 0.0


# ---------------------------------------------------------------------------------------
# Time limit, gymnasium registration and vector envs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL)
def test_truncates_at_horizon(cls):
    env = _make(cls, horizon=3)
    zero = np.zeros(env.action_space.shape, np.float32)
    flags = [env.step(zero)[2:4] for _ in range(3)]
    assert flags == [(False, False), (False, False), (False, True)]
    env.reset()
    assert env.step(zero)[3] is False  # reset restarts the clock
    env.close()


def test_gymnasium_make_after_import_envs():
    import envs  # noqa: F401 - registers the metarl/* ids

    for env_id, cls in [
        ("metarl/HalfCheetahDir-v0", HalfCheetahDirEnv),
        ("metarl/HalfCheetahVel-v0", HalfCheetahVelEnv),
        ("metarl/AntDir-v0", AntDirEnv),
        ("metarl/AntVel-v0", AntVelEnv),
    ]:
        env = gym.make(env_id, horizon=2)
        assert type(env.unwrapped) is cls
        env.reset(seed=0)
        zero = np.zeros(env.action_space.shape, np.float32)
        assert env.step(zero)[3] is False
        assert env.step(zero)[3] is True  # the env's own limit, no TimeLimit wrapper
        env.close()


def test_sync_vector_env_with_autoreset_disabled():
    tasks = [{"direction": 1.0}, {"direction": -1.0}]

    def factory(task):
        def make():
            env = HalfCheetahDirEnv(horizon=2)
            env.set_task(task)
            return env

        return make

    vec = gym.vector.SyncVectorEnv(
        [factory(t) for t in tasks], autoreset_mode=gym.vector.AutoresetMode.DISABLED
    )
    obs, _ = vec.reset(seed=0)
    assert obs.shape == (2, 17)
    action = np.zeros((2, 6), np.float32)
    _, reward, terminated, truncated, info = vec.step(action)
    assert reward.shape == (2,) and not truncated.any()
    # Same seed offsets differ per sub-env, but the forward terms carry each task's sign.
    np.testing.assert_allclose(info["reward_forward"], info["x_velocity"] * [1.0, -1.0])
    _, _, terminated, truncated, _ = vec.step(action)
    assert truncated.all() and not terminated.any()
    # Autoreset is off: the caller restarts finished sub-envs, here one at a time.
    vec.reset(options={"reset_mask": np.array([True, False])})
    vec.reset(options={"reset_mask": np.array([False, True])})
    _, _, _, truncated, _ = vec.step(action)
    assert not truncated.any()
    assert list(vec.get_attr("task")) == tasks
    vec.close()


def test_metarl_gym_vector_task_env_sets_tasks_per_row():
    import torch

    from metarl.vector import GymVectorTaskEnv

    env = GymVectorTaskEnv(lambda: AntVelEnv(horizon=2), num_envs=2, max_episode_steps=2)
    proto = AntVelEnv(horizon=2)
    tasks = proto.sample_tasks(2, np.random.default_rng(0))
    proto.close()
    env.set_tasks(tasks)
    assert list(env.vec.get_attr("metarl_task")) == tasks
    obs = env.reset(seed=0)
    assert obs.shape == (2, 105) and obs.dtype == torch.float32
    out = env.step(torch.zeros(2, 8))
    assert not out.truncated.any()
    out = env.step(torch.zeros(2, 8))
    assert out.truncated.all()
    env.close()


def test_async_vector_env_receives_pickled_tasks():
    import torch

    from metarl.vector import GymVectorTaskEnv

    env = GymVectorTaskEnv(
        lambda: HalfCheetahVelEnv(horizon=2), num_envs=2, max_episode_steps=2, asynchronous=True
    )
    try:
        tasks = [{"velocity": 0.25}, {"velocity": 1.75}]
        env.set_tasks(tasks)
        assert list(env.vec.get_attr("metarl_task")) == tasks
        env.reset(seed=0)
        assert not env.step(torch.zeros(2, 6)).truncated.any()
        assert env.step(torch.zeros(2, 6)).truncated.all()
    finally:
        env.close()
