"""Tests of the batched tensor envs (bandit, tabular MDP, nav2d) and their gymnasium views."""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401 - registers the metarl/* gymnasium ids
from envs.bandit import BanditDistribution, BanditGymEnv, BanditTasks
from envs.nav2d import Nav2DDistribution, Nav2DGymEnv, Nav2DTasks
from envs.tabular_mdp import (
    MDPTasks,
    TabularMDPDistribution,
    TabularMDPGymEnv,
    value_iteration,
)
from metarl.policy import Policy, PolicyStep, StepInput

DISTRIBUTIONS = [BanditDistribution, TabularMDPDistribution, Nav2DDistribution]


# ----------------------------------------------------------------------------- helpers
class UniformRandom:
    """Uniform random actions over a single-env action space, for every row."""

    def __init__(self, space: gym.spaces.Space):
        self.space = space

    def initial_state(self, num_rows: int, device: torch.device) -> None:
        return None

    def step(self, inp: StepInput, state: None, generator: torch.Generator) -> PolicyStep:
        rows, device = inp.obs.shape[0], inp.obs.device
        if isinstance(self.space, gym.spaces.Discrete):
            action = torch.randint(int(self.space.n), (rows,), generator=generator, device=device)
        else:
            low = torch.as_tensor(self.space.low, device=device)
            high = torch.as_tensor(self.space.high, device=device)
            u = torch.rand(rows, *self.space.shape, generator=generator, device=device)
            action = low + u * (high - low)
        zeros = torch.zeros(rows, device=device)
        return PolicyStep(action, zeros, zeros, None)


def episode_returns(dist, policy, tasks, seed: int = 0) -> torch.Tensor:
    """Undiscounted return of one episode per task, rows stepped until every episode ends."""
    rows = len(tasks)
    env = dist.make_batched_env(rows, "cpu")
    env.set_tasks(tasks)
    if hasattr(policy, "set_tasks"):
        policy.set_tasks(tasks)
    generator = torch.Generator().manual_seed(seed + 1)
    obs = env.reset(seed=seed)
    state = policy.initial_state(rows, env.device)
    discrete = isinstance(env.single_action_space, gym.spaces.Discrete)
    prev_action = (
        torch.zeros(rows, dtype=torch.long)
        if discrete
        else torch.zeros(rows, *env.single_action_space.shape)
    )
    prev_reward = torch.zeros(rows)
    total = torch.zeros(rows)
    active = torch.ones(rows, dtype=torch.bool)
    t = 0
    while bool(active.any()):
        inp = StepInput(
            obs=obs,
            prev_action=prev_action,
            prev_reward=prev_reward,
            prev_done=torch.zeros(rows),
            trial_start=torch.full((rows,), t == 0),
            episode_step=torch.full((rows,), t, dtype=torch.long),
        )
        out = policy.step(inp, state, generator)
        step = env.step(out.action)
        # Rows whose episode already ended keep stepping (no auto-reset) but stop counting.
        total = total + torch.where(active, step.reward, 0.0)
        active = active & ~(step.terminated | step.truncated)
        obs, prev_action, prev_reward, state = step.obs, out.action, step.reward, out.state
        t += 1
    return total


def repeat_task(tasks, rows: int):
    """A batch of ``rows`` copies of the first task."""
    return tasks[torch.zeros(rows, dtype=torch.long)]


# ----------------------------------------------------------------------------- bandit
def test_bandit_empirical_arm_means_match_task_means():
    dist = BanditDistribution(arms=5)
    tasks = dist.sample_tasks(4, np.random.default_rng(0))
    rows, pulls = 4000, 50
    row = torch.arange(rows)
    task_of_row, arm_of_row = row % 4, (row // 4) % 5  # every (task, arm) gets 200 rows
    env = dist.make_batched_env(rows, "cpu")
    env.set_tasks(tasks[task_of_row])
    env.reset(seed=1)
    total = torch.zeros(rows)
    for _ in range(pulls):
        env.reset()
        step = env.step(arm_of_row)
        assert bool(step.terminated.all()) and not bool(step.truncated.any())
        assert torch.equal(step.obs, torch.zeros(rows, 1))
        assert set(step.reward.unique().tolist()) <= {0.0, 1.0}
        total += step.reward
    for k in range(4):
        for a in range(5):
            sel = (task_of_row == k) & (arm_of_row == a)
            n = int(sel.sum()) * pulls
            p = float(tasks.means[k, a])
            empirical = float(total[sel].sum()) / n
            tol = 5 * math.sqrt(p * (1 - p) / n) + 1e-3
            assert abs(empirical - p) < tol, (k, a, empirical, p)


def test_bandit_oracle_pulls_best_arm():
    dist = BanditDistribution(arms=3)
    tasks = BanditTasks(means=torch.tensor([[0.1, 0.9, 0.2], [0.7, 0.3, 0.8]]))
    oracle = dist.baselines()["oracle"]()
    assert isinstance(oracle, Policy)
    oracle.set_tasks(tasks)
    long0 = torch.zeros(2, dtype=torch.long)
    inp = StepInput(
        torch.zeros(2, 1),
        long0,
        torch.zeros(2),
        torch.zeros(2),
        torch.ones(2, dtype=torch.bool),
        long0,
    )
    out = oracle.step(inp, oracle.initial_state(2, torch.device("cpu")), torch.Generator())
    assert out.action.tolist() == [1, 2]
    assert torch.equal(dist.optimal_episode_return(tasks), torch.tensor([0.9, 0.8]))


# ----------------------------------------------------------------------------- tabular MDP
def test_mdp_transitions_are_row_stochastic():
    tasks = TabularMDPDistribution(states=7, actions=3).sample_tasks(32, np.random.default_rng(0))
    assert tasks.transitions.shape == (32, 7, 3, 7)
    assert tasks.reward_mean.shape == (32, 7, 3)
    assert bool((tasks.transitions >= 0).all())
    torch.testing.assert_close(tasks.transitions.sum(-1), torch.ones(32, 7, 3), atol=1e-6, rtol=0)


def test_mdp_empirical_transitions_and_reward_noise():
    states, actions, rows = 6, 3, 20000
    dist = TabularMDPDistribution(states=states, actions=actions, horizon=5)
    task = dist.sample_tasks(1, np.random.default_rng(1))
    # Force (0, 0) -> 3 so that the second step samples from a state other than the start.
    transitions = task.transitions.clone()
    transitions[0, 0] = F.one_hot(torch.tensor(3), states).float()
    task = MDPTasks(reward_mean=task.reward_mean, transitions=transitions)
    env = dist.make_batched_env(rows, "cpu")
    env.set_tasks(repeat_task(task, rows))
    obs = env.reset(seed=2)
    assert torch.equal(obs, F.one_hot(torch.zeros(rows, dtype=torch.long), states).float())
    step = env.step(torch.zeros(rows, dtype=torch.long))
    assert torch.equal(step.obs.argmax(-1), torch.full((rows,), 3))
    step = env.step(torch.ones(rows, dtype=torch.long))
    assert not bool(step.terminated.any()) and not bool(step.truncated.any())
    # One-hot observations, so column means are the empirical next-state frequencies.
    assert torch.equal(step.obs.sum(-1), torch.ones(rows))
    freq = step.obs.mean(0)
    p = transitions[0, 3, 1]
    tol = 5 * torch.sqrt(p * (1 - p) / rows) + 1e-4
    assert bool(((freq - p).abs() < tol).all()), (freq, p)
    noise = step.reward - task.reward_mean[0, 3, 1]
    assert abs(float(noise.mean())) < 5 / math.sqrt(rows)
    assert abs(float(noise.std()) - 1.0) < 0.03


def test_mdp_truncates_at_horizon_and_never_terminates():
    dist = TabularMDPDistribution(states=4, actions=2, horizon=3)
    env = dist.make_batched_env(8, "cpu")
    env.set_tasks(dist.sample_tasks(8, np.random.default_rng(0)))
    env.reset(seed=0)
    for t in range(1, 4):
        step = env.step(torch.zeros(8, dtype=torch.long))
        assert not bool(step.terminated.any())
        assert step.truncated.tolist() == [t == 3] * 8


def two_state_mdp() -> MDPTasks:
    """State 0: a0 pays 1 and stays, a1 pays 0 and moves to 1.
    State 1: a0 pays 3 and stays, a1 pays 2 and moves to 0 or 1 with probability 1/2.
    The second task is the first with rewards doubled (all values double)."""
    reward = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    transitions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.5, 0.5]]])
    return MDPTasks(
        reward_mean=torch.stack([reward, 2 * reward]),
        transitions=torch.stack([transitions, transitions]),
    )


def test_value_iteration_hand_solved_two_state_mdp():
    tasks = two_state_mdp()
    # H=2. Last step (t=1): q = R, v1 = [1, 3].
    # t=0: q[0] = [1 + v1[0], 0 + v1[1]] = [2, 3]; q[1] = [3 + 3, 2 + (1 + 3)/2] = [6, 4].
    q, v0 = value_iteration(tasks, horizon=2)
    expected = torch.tensor([[[2.0, 3.0], [6.0, 4.0]], [[1.0, 0.0], [3.0, 2.0]]])
    assert q.shape == (2, 2, 2, 2)
    torch.testing.assert_close(q[0], expected)
    torch.testing.assert_close(q[1], 2 * expected)
    torch.testing.assert_close(v0, torch.tensor([3.0, 6.0]))
    # H=3: t=2 and t=1 as above, v1 = [3, 6];
    # t=0: q[0] = [1 + 3, 0 + 6] = [4, 6]; q[1] = [3 + 6, 2 + (3 + 6)/2] = [9, 6.5].
    q, v0 = value_iteration(tasks, horizon=3)
    torch.testing.assert_close(q[0, 0], torch.tensor([[4.0, 6.0], [9.0, 6.5]]))
    torch.testing.assert_close(v0, torch.tensor([6.0, 12.0]))
    dist = TabularMDPDistribution(states=2, actions=2, horizon=3)
    torch.testing.assert_close(dist.optimal_episode_return(tasks), torch.tensor([6.0, 12.0]))
    with pytest.raises(ValueError):
        value_iteration(tasks, horizon=0)


def test_mdp_oracle_uses_time_dependent_q():
    dist = TabularMDPDistribution(states=2, actions=2, horizon=2)
    oracle = dist.baselines()["oracle"]()
    assert isinstance(oracle, Policy)
    oracle.set_tasks(two_state_mdp())
    obs = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both rows in state 0
    for t, best in ((0, 1), (1, 0)):  # move to state 1 early, collect the 1 at the end
        inp = StepInput(
            obs,
            torch.zeros(2, dtype=torch.long),
            torch.zeros(2),
            torch.zeros(2),
            torch.zeros(2, dtype=torch.bool),
            torch.full((2,), t),
        )
        assert oracle.step(inp, None, torch.Generator()).action.tolist() == [best, best]


def test_mdp_oracle_return_matches_value_iteration():
    dist = TabularMDPDistribution(states=5, actions=3, horizon=6)
    tasks = repeat_task(dist.sample_tasks(1, np.random.default_rng(3)), 4096)
    returns = episode_returns(dist, dist.baselines()["oracle"](), tasks)
    v0 = float(dist.optimal_episode_return(tasks[0]))
    stderr = float(returns.std()) / math.sqrt(len(returns))
    assert abs(float(returns.mean()) - v0) < 5 * stderr


# ----------------------------------------------------------------------------- nav2d
def nav_env(goal, rows: int = 1, **kwargs):
    dist = Nav2DDistribution(**kwargs)
    env = dist.make_batched_env(rows, "cpu")
    env.set_tasks(Nav2DTasks(goal=torch.tensor(goal, dtype=torch.float32).expand(rows, 2)))
    env.reset(seed=0)
    return env


def test_nav2d_clips_actions_and_rewards_negative_distance():
    env = nav_env([0.5, -0.25], max_action=0.125)
    step = env.step(torch.tensor([[1.0, -3.0]]))  # clipped to (0.125, -0.125)
    assert step.obs.tolist() == [[0.125, -0.125]]
    step = env.step(torch.tensor([[0.0625, -0.03125]]))  # inside the bounds: unchanged
    assert step.obs.tolist() == [[0.1875, -0.15625]]
    expected = -math.hypot(0.1875 - 0.5, -0.15625 + 0.25)
    assert step.reward.item() == pytest.approx(expected, abs=1e-6)
    assert not step.terminated.item()


def test_nav2d_terminates_within_tolerance_on_both_coordinates():
    env = nav_env([0.25, 0.0], max_action=0.125, goal_tolerance=0.0625)
    step = env.step(torch.tensor([[0.125, 0.0625]]))  # dx = 0.125, dy = 0.0625
    assert not step.terminated.item()
    step = env.step(torch.tensor([[0.0625, 0.0]]))  # dx = 0.0625 = tolerance: not inside
    assert not step.terminated.item()
    step = env.step(torch.tensor([[0.03125, -0.03125]]))  # dx = 0.03125, dy = 0.03125
    assert step.terminated.item() and not step.truncated.item()
    assert step.reward.item() == pytest.approx(-math.hypot(0.03125, 0.03125), abs=1e-7)


def test_nav2d_truncates_at_horizon():
    env = nav_env([0.5, 0.5], rows=2, horizon=3)
    for t in range(1, 4):
        step = env.step(torch.zeros(2, 2))
        assert not bool(step.terminated.any())
        assert step.truncated.tolist() == [t == 3] * 2
    # A partial reset restarts only the masked row's clock and position.
    env.reset(mask=torch.tensor([True, False]))
    step = env.step(torch.full((2, 2), 0.1))
    assert step.truncated.tolist() == [False, True]


def test_nav2d_scripted_positions_are_exact():
    env = nav_env([-5.0, 5.0], horizon=10, max_action=4.0, goal_low=-5.0, goal_high=5.0)
    actions = [(3.0, -1.0), (5.0, -4.0), (4.0, -4.0), (0.5, 2.0), (-4.5, 0.25)]
    # Clipped to +-4 per coordinate, then clamped to the [-10, 10] box.
    expected = [(3.0, -1.0), (7.0, -5.0), (10.0, -9.0), (10.0, -7.0), (6.0, -6.75)]
    for action, pos in zip(actions, expected):
        step = env.step(torch.tensor([action]))
        assert tuple(step.obs[0].tolist()) == pos
        assert step.reward.item() == pytest.approx(-math.hypot(pos[0] + 5, pos[1] - 5), rel=1e-6)
    obs = env.reset()
    assert obs.tolist() == [[0.0, 0.0]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=1, max_size=20))
def test_nav2d_moves_at_most_max_action_and_stays_in_box(actions):
    env = nav_env([0.0, 0.5], max_action=3.0)
    prev = torch.zeros(1, 2)
    for action in actions:
        obs = env.step(torch.tensor([action], dtype=torch.float32)).obs
        assert bool(((obs - prev).abs() <= 3.0 + 1e-5).all())
        assert bool((obs.abs() <= 10.0).all())
        prev = obs


def test_nav2d_optimal_return_is_closed_form():
    dist = Nav2DDistribution(horizon=20, max_action=0.1)
    tasks = dist.sample_tasks(64, np.random.default_rng(0))
    # The k-step reachable set is the box of half-width 0.1 k, whose closest point to the
    # goal is clip(goal); the oracle reaches it every step and ends on the goal itself.
    expected = torch.zeros(64, dtype=torch.float64)
    goal = tasks.goal.double()
    for k in range(1, 21):
        expected -= torch.linalg.vector_norm(goal - goal.clamp(-0.1 * k, 0.1 * k), dim=-1)
    torch.testing.assert_close(
        dist.optimal_episode_return(tasks).double(), expected, atol=1e-4, rtol=0
    )
    oracle_returns = episode_returns(dist, dist.baselines()["oracle"](), tasks)
    torch.testing.assert_close(oracle_returns, dist.optimal_episode_return(tasks))


# ----------------------------------------------------------------------------- all envs
def deterministic_tasks(dist, rows: int):
    """Tasks whose dynamics have no randomness in the parts the test compares."""
    g = torch.Generator().manual_seed(0)
    if isinstance(dist, BanditDistribution):  # 0/1 means: deterministic rewards
        return BanditTasks(means=(torch.rand(rows, dist.arms, generator=g) < 0.5).float())
    if isinstance(dist, TabularMDPDistribution):  # one-hot transitions: deterministic states
        nxt = torch.randint(dist.states, (rows, dist.states, dist.actions), generator=g)
        tasks = dist.sample_tasks(rows, np.random.default_rng(0))
        return MDPTasks(
            reward_mean=tasks.reward_mean, transitions=F.one_hot(nxt, dist.states).float()
        )
    return dist.sample_tasks(rows, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("metarl/Bandit-v0", {"arms": 4}),
        ("metarl/TabularMDP-v0", {"states": 5, "actions": 3, "horizon": 7}),
        ("metarl/Nav2D-v0", {"horizon": 12, "max_action": 0.2, "goal_high": 1.0}),
    ],
)
def test_batched_step_equals_gym_view_step(env_id, kwargs):
    view = gym.make(env_id, **kwargs)
    dist = view.unwrapped.distribution
    rows, row = 3, 1
    tasks = deterministic_tasks(dist, rows)
    view.unwrapped.set_task(tasks[row])
    batched = dist.make_batched_env(rows, "cpu")
    batched.set_tasks(tasks)
    batched_obs = batched.reset(seed=5)
    obs, _ = view.reset(seed=5)
    np.testing.assert_array_equal(obs, batched_obs[row].numpy())
    dist.action_space.seed(0)
    for _ in range(15):
        action = dist.action_space.sample()
        batched_action = torch.as_tensor(
            np.stack([dist.action_space.sample(), action, dist.action_space.sample()])
        )
        out = batched.step(batched_action)
        obs, reward, terminated, truncated, _ = view.step(action)
        assert obs.dtype == np.float32 and obs in view.observation_space
        np.testing.assert_array_equal(obs, out.obs[row].numpy())
        assert (terminated, truncated) == (bool(out.terminated[row]), bool(out.truncated[row]))
        if not isinstance(dist, TabularMDPDistribution):  # MDP rewards carry N(0, 1) noise
            assert reward == float(out.reward[row])
        if terminated or truncated:
            obs, _ = view.reset()
            batched_obs = batched.reset(mask=torch.arange(rows) == row)
            np.testing.assert_array_equal(obs, batched_obs[row].numpy())


@pytest.mark.parametrize("env_id", ["metarl/Bandit-v0", "metarl/TabularMDP-v0", "metarl/Nav2D-v0"])
@pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric and normalized Box")
@pytest.mark.filterwarnings("error")
def test_env_checkers_pass(env_id):
    env = gym.make(env_id)
    gym_check_env(env.unwrapped)
    sb3_check_env(env)
    env.close()


@pytest.mark.parametrize("view_cls", [BanditGymEnv, TabularMDPGymEnv, Nav2DGymEnv])
def test_gym_view_matches_distribution_spaces(view_cls):
    env = view_cls()
    assert isinstance(env.distribution, view_cls.distribution_cls)
    assert env.observation_space == env.distribution.observation_space
    assert env.action_space == env.distribution.action_space
    assert env.observation_space.dtype == np.float32


@pytest.mark.parametrize("dist_cls", DISTRIBUTIONS)
def test_distribution_contract(dist_cls):
    dist = dist_cls()
    assert isinstance(dist.name, str) and isinstance(dist.description, str)
    assert isinstance(dist.default_episodes, int) and dist.default_episodes >= 1
    assert "oracle" in dist.baselines()
    env = dist.make_batched_env(3, torch.device("cpu"))
    assert env.single_observation_space == dist.observation_space
    assert env.single_action_space == dist.action_space


@pytest.mark.parametrize("dist_cls", DISTRIBUTIONS)
def test_sample_tasks_reproducible(dist_cls):
    dist = dist_cls()
    a = dist.sample_tasks(16, np.random.default_rng(7))
    b = dist.sample_tasks(16, np.random.default_rng(7))
    c = dist.sample_tasks(16, np.random.default_rng(8))
    assert type(a) is type(b) and len(a) == 16
    for field in dataclasses.fields(a):
        name = field.name
        ta, tb, tc = getattr(a, name), getattr(b, name), getattr(c, name)
        assert ta.dtype == torch.float32 and ta.device.type == "cpu"
        assert torch.equal(ta, tb)
        assert not torch.equal(ta, tc)


@pytest.mark.parametrize(
    ("dist_cls", "kwargs"),
    [
        (BanditDistribution, {"arms": 1}),
        (BanditDistribution, {"arms": 0}),
        (BanditDistribution, {"arms": 2.5}),
        (BanditDistribution, {"arms": True}),
        (TabularMDPDistribution, {"states": 0}),
        (TabularMDPDistribution, {"actions": 1}),
        (TabularMDPDistribution, {"horizon": 0}),
        (TabularMDPDistribution, {"horizon": 2.0}),
        (Nav2DDistribution, {"horizon": 0}),
        (Nav2DDistribution, {"goal_low": 1.0, "goal_high": 0.0}),
        (Nav2DDistribution, {"goal_high": 11.0}),
        (Nav2DDistribution, {"goal_low": "a"}),
        (Nav2DDistribution, {"max_action": 0.0}),
        (Nav2DDistribution, {"max_action": -0.1}),
        (Nav2DDistribution, {"max_action": float("nan")}),
        (Nav2DDistribution, {"goal_tolerance": 0.0}),
    ],
)
def test_constructor_validation(dist_cls, kwargs):
    with pytest.raises(ValueError):
        dist_cls(**kwargs)


def test_gym_make_validates_kwargs():
    with pytest.raises(ValueError, match="arms"):
        gym.make("metarl/Bandit-v0", arms=1)


@pytest.mark.parametrize(
    ("dist", "rows"),
    [
        (BanditDistribution(arms=5), 2048),
        (TabularMDPDistribution(), 1024),
        (Nav2DDistribution(horizon=30), 256),
    ],
)
def test_oracle_beats_uniform_random(dist, rows):
    tasks = dist.sample_tasks(rows, np.random.default_rng(11))
    oracle = episode_returns(dist, dist.baselines()["oracle"](), tasks)
    random = episode_returns(dist, UniformRandom(dist.action_space), tasks)
    diff = oracle - random
    stderr = float(diff.std()) / math.sqrt(rows)
    assert float(diff.mean()) > 5 * stderr > 0


def test_step_accepts_other_action_dtypes_and_returns_float32():
    for dist in (BanditDistribution(), TabularMDPDistribution(), Nav2DDistribution()):
        env = dist.make_batched_env(2, torch.device("cpu"))
        env.set_tasks(dist.sample_tasks(2, np.random.default_rng(0)))
        env.reset(seed=0)
        if isinstance(dist.action_space, gym.spaces.Discrete):
            action = torch.tensor([1.0, 0.0])  # float indices are cast to long
        else:
            action = torch.zeros(2, 2, dtype=torch.float64)
        out = env.step(action)
        assert out.obs.dtype == torch.float32 and out.reward.dtype == torch.float32
        assert out.obs.device.type == "cpu" and out.terminated.dtype == torch.bool
