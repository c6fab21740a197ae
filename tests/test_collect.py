"""Episode and trial boundaries, the gymnasium adapter, and acting/training consistency."""

import numpy as np
import pytest
import torch

from metarl.batch import TrajectoryBatch
from metarl.collect import Collector
from metarl.policy import PolicyStep
from metarl.problem import RLProblem
from metarl.testing import CountingDistribution
from metarl.vector import BatchedEnvView


class RecordingPolicy:
    """Always action 1; records every StepInput and counts state resets."""

    def __init__(self):
        self.inputs = []
        self.resets = 0

    def initial_state(self, num_rows, device):
        self.resets += 1
        return torch.zeros(num_rows)

    def step(self, inp, state, generator):
        self.inputs.append(inp)
        b = inp.obs.shape[0]
        # State counts steps since the trial start: it must never be reset mid-trial.
        return PolicyStep(torch.ones(b, dtype=torch.long), torch.zeros(b), state.clone(), state + 1)


def collect(dist, rows=4, episodes=3, max_steps=None, policy=None):
    env = dist.make_batched_env(rows)
    tasks = dist.sample_tasks(rows, np.random.default_rng(0))
    policy = policy or RecordingPolicy()
    batch = Collector(env, max_steps).collect(
        policy, tasks, episodes, torch.Generator().manual_seed(0)
    )
    return batch, policy


def test_episode_and_trial_boundaries_with_counting_env():
    batch, policy = collect(CountingDistribution(episode_length=4, terminate=True))
    assert batch.num_steps == 12 and batch.num_trials == 4
    t = torch.arange(12)
    assert batch.obs[:, 0, 0].tolist() == (t % 4).float().tolist()
    assert batch.episode_start[:, 0].tolist() == (t % 4 == 0).tolist()
    assert batch.trial_start[:, 0].tolist() == (t == 0).tolist()
    assert batch.terminated[:, 0].tolist() == (t % 4 == 3).tolist()
    assert not batch.truncated.any()
    assert batch.valid.all()
    assert batch.trial_end[:, 0].tolist() == (t == 11).tolist()
    assert batch.episode_index[:, 0].tolist() == (t // 4).tolist()
    # Memory: created once per trial, carried across episodes (value = steps since trial start).
    assert policy.resets == 1
    assert batch.value[:, 0].tolist() == t.float().tolist()
    # The final observation of each episode is recorded where it ended.
    assert batch.final_obs[3, 0, 0] == 4 and batch.final_obs[2, 0, 0] == 0


def test_memory_is_reset_between_trials_and_carried_within():
    """Each collection is a new trial: the policy's state starts over, then runs on."""
    dist = CountingDistribution(episode_length=4, terminate=True)
    first, policy = collect(dist)
    second, policy = collect(dist, policy=policy)
    assert policy.resets == 2  # one initial_state per trial, none at episode boundaries
    steps = torch.arange(12, dtype=torch.float32)
    for batch in (first, second):
        # value = steps since the trial started: 0 again at the second trial's first step,
        # and never reset at the episode boundaries (t = 4, 8).
        assert torch.equal(batch.value, steps[:, None].expand(12, 4))
        assert batch.trial_start[0].all() and not batch.trial_start[1:].any()


def test_trial_gae_on_counting_env_has_the_hand_answer():
    """RL²'s advantages run across episode boundaries and stop at the trial end.

    With γ = λ = 1, no normalisation and V(t) = t (the recording policy's value: steps
    since the trial started), a trial of L steps paying ``1 + offset`` each has advantage
    ``(L - t) · (1 + offset) - t`` at step t: the whole rest of the *trial*, not of the
    episode. Ragged rows (L = 12 or 9) check that padding adds nothing.
    """
    from agents.rl2 import RL2, RL2Config

    dist = CountingDistribution(episode_length=4, terminate=True, ragged=True)
    batch, _ = collect(dist, rows=4, episodes=3)
    config = RL2Config(
        gamma=1.0, gae_lambda=1.0, normalize_advantages=False, hidden_size=4,
        trials_per_iteration=4,
    )  # fmt: skip
    adv, ret = RL2(RLProblem(dist, 3), config).advantages(batch)
    for b in range(4):
        offset = float(batch.obs[0, b, 1])
        length = 3 * (4 - int(offset) % 2)
        t = torch.arange(length, dtype=torch.float32)
        expected = (length - t) * (1 + offset) - t
        assert torch.allclose(adv[:length, b], expected), b
        assert torch.allclose(ret[:length, b], (length - t) * (1 + offset)), b
        assert not batch.valid[length:, b].any()


def test_prev_inputs_online_equal_batch_previous():
    batch, policy = collect(CountingDistribution(episode_length=3, terminate=True), episodes=2)
    prev_action, prev_reward, prev_done = batch.previous()
    for t, inp in enumerate(policy.inputs):
        assert torch.equal(inp.prev_done, prev_done[t])
        assert torch.equal(inp.prev_reward, prev_reward[t])
        assert torch.equal(inp.prev_action, prev_action[t])
        assert torch.equal(inp.trial_start, batch.trial_start[t])
    # done flag is raised exactly on the first step of episodes 2.. of the trial.
    assert prev_done[:, 0].tolist() == [0, 0, 0, 1, 0, 0]
    assert prev_reward[0].eq(0).all() and prev_reward[1].gt(0).all()


def test_ragged_trials_are_padded_and_masked():
    batch, _ = collect(CountingDistribution(episode_length=4, terminate=True, ragged=True), rows=4)
    offsets = batch.obs[0, :, 1]
    for b in range(4):
        length = 3 * (4 - int(offsets[b]) % 2)
        assert int(batch.valid[:, b].sum()) == length
        assert not batch.valid[length:, b].any()
        assert batch.reward[length:, b].eq(0).all()
        assert int(batch.terminated[:, b].sum()) == 3
    returns = batch.episode_returns(3)
    assert torch.allclose(returns.sum(0), batch.trial_returns())


def test_truncation_is_kept_apart_from_termination():
    batch, _ = collect(CountingDistribution(episode_length=4, terminate=False))
    assert not batch.terminated.any()
    assert batch.truncated[:, 0].tolist() == [(t % 4 == 3) for t in range(12)]


def test_collector_time_limit_truncates():
    batch, _ = collect(
        CountingDistribution(episode_length=10, terminate=True), max_steps=2, episodes=2
    )
    assert batch.num_steps == 4
    assert batch.truncated[:, 0].tolist() == [False, True, False, True]
    assert not batch.terminated.any()


def test_batch_shape_checks():
    batch, _ = collect(CountingDistribution())
    fields = {f: getattr(batch, f) for f in batch.__dataclass_fields__}
    with pytest.raises(ValueError, match="reward"):
        TrajectoryBatch(**{**fields, "reward": fields["reward"][:-1]})
    with pytest.raises(TypeError, match="valid"):
        TrajectoryBatch(**{**fields, "valid": fields["valid"].float()})
    assert batch.select(torch.tensor([0, 2])).num_trials == 2


def test_gym_vector_adapter_matches_batched_env():
    from envs.bandit import BanditDistribution, BanditGymEnv, BanditTasks

    means = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    tasks = BanditTasks(means=means)
    dist = BanditDistribution(arms=3)
    gym_problem = RLProblem(BanditGymEnv(arms=3), 4, env_factory=lambda: BanditGymEnv(arms=3))
    tensor_problem = RLProblem(dist, 4)
    from metarl.baselines import RandomPolicy

    policy = RandomPolicy(dist.action_space)
    a = gym_problem.collect(policy, tasks.unbind(), torch.Generator().manual_seed(3))
    b = tensor_problem.collect(policy, tasks, torch.Generator().manual_seed(3))
    assert torch.equal(a.action, b.action)
    assert torch.equal(a.reward, b.reward)  # deterministic 0/1 means
    assert torch.equal(a.terminated, b.terminated) and torch.equal(a.episode_start, b.episode_start)


def test_gym_adapter_with_time_limited_user_env():
    from envs.nav2d import Nav2DGymEnv

    problem = RLProblem(Nav2DGymEnv(horizon=5), 2, env_factory=lambda: Nav2DGymEnv(horizon=5))
    tasks = problem.sample_train_tasks(3, seed=0, iteration=0)
    from metarl.baselines import RandomPolicy

    batch = problem.collect(
        RandomPolicy(problem.action_space), tasks, torch.Generator().manual_seed(0)
    )
    assert batch.num_steps == 10
    assert batch.truncated[:, 0].tolist() == [t % 5 == 4 for t in range(10)]
    assert batch.episode_start[5].all() and batch.obs[5].eq(0).all()  # reset by the collector


class CountedCountingEnv(BatchedEnvView):
    """The ragged counting env as a gymnasium env that counts its ``step`` calls."""

    calls = 0  # class-wide: summed over the sub-envs of a SyncVectorEnv

    def __init__(self):
        super().__init__(CountingDistribution(episode_length=4, terminate=True, ragged=True))

    def step(self, action):
        CountedCountingEnv.calls += 1
        return super().step(action)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_gym_backend_steps_only_live_rows_and_matches_tensor_env(asynchronous):
    # Ragged trials: odd offsets end one step earlier, so finished rows wait 3 steps for
    # the others. SyncVectorEnv must not simulate them; AsyncVectorEnv steps every row.
    # Either way the batch must equal the tensor env's on every field of every valid step
    # (the padding after a trial's end holds no defined observation).
    dist = CountingDistribution(episode_length=4, terminate=True, ragged=True)
    tasks = dist.sample_tasks(6, np.random.default_rng(1))
    tensor = RLProblem(dist, 3).collect(RecordingPolicy(), tasks, torch.Generator().manual_seed(0))
    gym_problem = RLProblem(
        CountedCountingEnv(), 3, env_factory=CountedCountingEnv, asynchronous=asynchronous
    )
    CountedCountingEnv.calls = 0
    batch = gym_problem.collect(RecordingPolicy(), tasks.unbind(), torch.Generator().manual_seed(0))
    calls = CountedCountingEnv.calls
    gym_problem.close()
    assert torch.equal(batch.valid, tensor.valid)
    for field in TrajectoryBatch.__dataclass_fields__:
        ours, theirs = getattr(batch, field)[batch.valid], getattr(tensor, field)[tensor.valid]
        assert torch.equal(ours, theirs), field
    valid = int(batch.valid.sum())
    assert valid == 3 * (3 * 4 + 3 * 3)  # three rows of length 12, three of 9
    if not asynchronous:
        assert calls == valid  # no physics for finished rows
    else:
        assert calls == 0  # sub-envs step in worker processes, not counted here


def test_env_without_live_argument_still_collects():
    from metarl.testing import CountingEnv

    class OldStyleEnv(CountingEnv):
        def step(self, action):  # the signature before ``live`` existed
            return super().step(action)

    dist = CountingDistribution(episode_length=4, terminate=True, ragged=True)
    tasks = dist.sample_tasks(4, np.random.default_rng(0))
    old = OldStyleEnv(4, 4, terminate=True, ragged=True)
    a = Collector(old).collect(RecordingPolicy(), tasks, 3, torch.Generator().manual_seed(0))
    b, _ = collect(dist, rows=4, episodes=3)
    for field in TrajectoryBatch.__dataclass_fields__:
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("env_name", ["bandit", "nav2d"])
def test_rl2_training_forward_reproduces_acting_log_probs(cell, env_name):
    from agents.rl2 import RL2, RL2Config
    from metarl.registry import resolve_env

    dist = resolve_env(env_name)()
    problem = RLProblem(dist, episodes=3, max_episode_steps=7)
    learner = RL2(problem, RL2Config(hidden_size=16, cell=cell, trials_per_iteration=5))
    tasks = problem.sample_train_tasks(5, seed=0, iteration=0)
    batch = problem.collect(learner.policy, tasks, torch.Generator().manual_seed(0))
    with torch.no_grad():
        params, value = learner.net.evaluate(batch)
        logp = learner.net.head.log_prob(params, batch.action)
    mask = batch.valid
    assert torch.allclose(logp[mask], batch.log_prob[mask], atol=1e-5)
    assert torch.allclose(value[mask], batch.value[mask], atol=1e-5)


@pytest.mark.parametrize("learner_name", ["rl2", "snail"])
def test_time_features_agree_between_acting_and_training(learner_name):
    """The time inputs the policy builds step by step equal those rebuilt from the batch."""
    from metarl.registry import resolve_algo, resolve_env

    # nav2d episodes end early at the goal only rarely; a 3-step limit makes every row's
    # episodes short and the counters roll over several times.
    problem = RLProblem(resolve_env("nav2d")(), episodes=4, max_episode_steps=3)
    cls = resolve_algo(learner_name)
    extra = {"hidden_size": 8} if learner_name == "rl2" else {}
    learner = cls(
        problem, cls.config_cls(trials_per_iteration=3, minibatches=3, time_features=True, **extra)
    )
    seen = []
    encoder_forward = learner.net.encoder.forward

    def spy(*args):
        seen.append((args[5].clone(), args[6].clone()))
        return encoder_forward(*args)

    learner.net.encoder.forward = spy
    tasks = problem.sample_train_tasks(3, seed=0, iteration=0)
    batch = problem.collect(learner.policy, tasks, torch.Generator().manual_seed(0))
    acting = [torch.stack(x) for x in zip(*seen)]
    seen.clear()
    with torch.no_grad():
        params, value = learner.net.evaluate(batch)
    training = seen[0]
    assert acting[0].tolist() == training[0].tolist() == [[t % 3] * 3 for t in range(12)]
    assert acting[1].tolist() == training[1].tolist() == [[t // 3] * 3 for t in range(12)]
    logp = learner.net.head.log_prob(params, batch.action)
    assert torch.allclose(logp, batch.log_prob, atol=1e-5)
    assert torch.allclose(value, batch.value, atol=1e-5)


@pytest.mark.parametrize("learner_name", ["rl2", "snail"])
def test_previous_observation_input_agrees_between_acting_and_training(learner_name):
    """``algo.prev_obs``: while acting, the encoder sees the observation of the step
    before (zero at a trial start, the previous episode's last one after a boundary), the
    same input the batch rebuilds for training; ``input_embed`` changes nothing there."""
    from metarl.registry import resolve_algo, resolve_env

    problem = RLProblem(resolve_env("tabular-mdp")(), episodes=3)
    cls = resolve_algo(learner_name)
    extra = {"hidden_size": 8} if learner_name == "rl2" else {}
    config = cls.config_cls(
        trials_per_iteration=2, minibatches=2, prev_obs=True, input_embed=16, **extra
    )
    learner = cls(problem, config)
    assert learner.net.encoder.output_size == 16
    seen = []
    encoder_forward = learner.net.encoder.forward

    def spy(*args):
        seen.append(args[7].clone())
        return encoder_forward(*args)

    learner.net.encoder.forward = spy
    tasks = problem.sample_train_tasks(2, seed=0, iteration=0)
    batch = problem.collect(learner.policy, tasks, torch.Generator().manual_seed(0))
    acting = torch.stack(seen)
    # Row by row: what the policy saw as "previous observation" is the batch's observation
    # one step earlier, across the episode boundaries at steps 10 and 20.
    assert torch.equal(acting[1:], batch.obs[:-1])
    assert torch.equal(batch.previous_obs()[1:], batch.obs[:-1])
    assert not batch.previous_obs()[0].any()
    with torch.no_grad():
        params, value = learner.net.evaluate(batch)
    logp = learner.net.head.log_prob(params, batch.action)
    assert torch.allclose(logp, batch.log_prob, atol=1e-5)
    assert torch.allclose(value, batch.value, atol=1e-5)
    assert np.isfinite(learner.train_iteration(tasks, torch.Generator())["loss_value"])


@pytest.mark.parametrize("optimizer", ["ppo", "trpo"])
@pytest.mark.parametrize("learner_name", ["rl2", "snail"])
def test_head_mlp_agrees_between_acting_and_training(learner_name, optimizer):
    """``algo.head_hidden``: the Linear+ReLU between the sequence model and the heads
    sits on every trunk (the critic's too), and the log-probs and values recorded while
    acting equal those recomputed over the whole trial for training."""
    from agents.context_learner import FeatureMLP
    from metarl.registry import resolve_algo, resolve_env

    problem = RLProblem(resolve_env("tabular-mdp")(), episodes=3)
    cls = resolve_algo(learner_name)
    extra = {"hidden_size": 8} if learner_name == "rl2" else {}
    config = cls.config_cls(
        trials_per_iteration=2, minibatches=2, head_hidden=12, optimizer=optimizer, **extra
    )
    learner = cls(problem, config)
    trunks = [learner.net.trunk] + ([learner.net.value_trunk] if optimizer == "trpo" else [])
    assert all(isinstance(t, FeatureMLP) and t.output_size == 12 for t in trunks)
    assert learner.net.head.linear.in_features == learner.net.value_head.in_features == 12
    tasks = problem.sample_train_tasks(2, seed=0, iteration=0)
    batch = problem.collect(learner.policy, tasks, torch.Generator().manual_seed(0))
    with torch.no_grad():
        params, value = learner.net.evaluate(batch)
    logp = learner.net.head.log_prob(params, batch.action)
    assert torch.allclose(logp, batch.log_prob, atol=1e-5)
    assert torch.allclose(value, batch.value, atol=1e-5)
    before = [p.detach().clone() for p in learner.net.trunk.mlp.parameters()]
    assert np.isfinite(learner.train_iteration(tasks, torch.Generator())["loss_value"])
    assert any(not torch.equal(b, p) for b, p in zip(before, learner.net.trunk.mlp.parameters()))


@pytest.mark.parametrize("learner_name", ["rl2", "snail"])
def test_separate_critic_keeps_the_value_loss_off_the_policy(learner_name):
    """``algo.separate_critic``: PPO's value loss trains the critic's own trunk only, and
    the values recorded while acting equal those recomputed for training."""
    from metarl.registry import resolve_algo, resolve_env

    problem = RLProblem(resolve_env("tabular-mdp")(), episodes=2)
    cls = resolve_algo(learner_name)
    extra = {"hidden_size": 8} if learner_name == "rl2" else {}
    config = cls.config_cls(trials_per_iteration=4, separate_critic=True, **extra)
    learner = cls(problem, config)
    net = learner.net
    assert net.value_trunk is not None
    tasks = problem.sample_train_tasks(4, seed=0, iteration=0)
    batch = problem.collect(learner.policy, tasks, torch.Generator().manual_seed(0))
    _, value = net.evaluate(batch)
    assert torch.allclose(value, batch.value, atol=1e-5)
    _, returns = learner.advantages(batch)
    learner._value_loss(value, returns, batch.valid).backward()
    policy_grads = [p.grad for p in [*net.trunk.parameters(), *net.head.parameters()]]
    assert all(g is None or not g.any() for g in policy_grads)
    assert any(p.grad is not None and p.grad.any() for p in net.value_trunk.parameters())
    net.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in net.value_trunk.parameters()]
    metrics = learner.train_iteration(tasks, torch.Generator().manual_seed(1))
    assert np.isfinite(metrics["loss_value"])
    moved = [not torch.equal(b, p) for b, p in zip(before, net.value_trunk.parameters())]
    assert any(moved), "the PPO step did not train the separate critic"


def test_same_seed_same_batch():
    from agents.rl2 import RL2, RL2Config
    from envs.tabular_mdp import TabularMDPDistribution

    problem = RLProblem(TabularMDPDistribution(), episodes=2)
    batches = []
    for _ in range(2):
        torch.manual_seed(0)
        learner = RL2(problem, RL2Config(hidden_size=8, trials_per_iteration=4))
        tasks = problem.sample_train_tasks(4, seed=1, iteration=2)
        batches.append(problem.collect(learner.policy, tasks, torch.Generator().manual_seed(5)))
    for f in batches[0].__dataclass_fields__:
        assert torch.equal(getattr(batches[0], f), getattr(batches[1], f)), f
