"""Sampler backends: local, process and Ray give identical batches and survive failures.

The Ray tests need the ``ray`` extra; without it they are skipped (``importorskip``), and
only the "Ray missing" error is checked. Worker pools are module-scoped: starting worker
processes and actors costs seconds, collecting with them milliseconds.
"""

import dataclasses
import functools
import importlib.util
import math
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from envs.nav2d import Nav2DGymEnv
from metarl.batch import TrajectoryBatch
from metarl.problem import RLProblem
from metarl.samplers import SamplerError, TaskEnvError, shard_bounds

WORKERS = 2
N_TASKS = 5
EPISODES = 2


class FaultyNav(Nav2DGymEnv):
    """Nav2D that misbehaves inside sampler workers when a control file exists.

    ``crash``: the first worker to see it removes it and exits at once (``os._exit``).
    ``hang``: the first worker to see it removes it and sleeps for ten minutes.
    ``raise``: the env whose goal x-coordinate is the file's content raises in ``step``.
    ``nan``: every step's reward is NaN.
    Nothing happens in the driver process (``driver_pid``), so local runs stay clean.
    """

    def __init__(self, horizon: int = 6, control: str = "", driver_pid: int = 0):
        super().__init__(horizon=horizon)
        self.control = Path(control) if control else None
        self.driver_pid = driver_pid

    def step(self, action):
        if self.control is not None and os.getpid() != self.driver_pid:
            if _consume(self.control / "crash"):
                os._exit(17)
            if _consume(self.control / "hang"):
                time.sleep(600)
            if (self.control / "nan").exists():
                obs, _, terminated, truncated, info = super().step(action)
                return obs, float("nan"), terminated, truncated, info
            target = self.control / "raise"
            if target.exists() and math.isclose(
                float(self.task.goal[0, 0]), float(target.read_text()), abs_tol=1e-6
            ):
                raise ValueError("simulated env failure")
        return super().step(action)


def _consume(path: Path) -> bool:
    try:
        path.unlink()  # atomic: exactly one worker wins
    except FileNotFoundError:
        return False
    return True


def assert_same(a: TrajectoryBatch, b: TrajectoryBatch) -> None:
    for f in dataclasses.fields(TrajectoryBatch):
        assert torch.equal(getattr(a, f.name), getattr(b, f.name)), f.name


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    return tmp_path_factory.mktemp("control")


def _problem(control, sampler: str, env_cls=FaultyNav, **kwargs) -> RLProblem:
    if env_cls is FaultyNav:
        factory = functools.partial(
            FaultyNav, horizon=6, control=str(control), driver_pid=os.getpid()
        )
    else:
        factory = functools.partial(env_cls, **kwargs)
    return RLProblem(
        factory(),
        EPISODES,
        env_factory=factory,
        sampler=sampler,
        workers=WORKERS,
        worker_timeout=30.0,
    )


@pytest.fixture(scope="module")
def local(control):
    problem = _problem(control, "local")
    yield problem
    problem.close()


@pytest.fixture(scope="module")
def process(control):
    problem = _problem(control, "process")
    yield problem
    problem.close()


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray not installed: Ray sampler tests skipped")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    # Ray workers do not have tests/ on sys.path: ship this module's env class by value,
    # as Ray does for classes defined in a user's script.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def raysampled(control, ray_cluster):
    problem = _problem(control, "ray")
    yield problem
    problem.close()


@pytest.fixture(scope="module")
def policy(local):
    from agents.rl2 import RL2, RL2Config

    torch.manual_seed(0)
    return RL2(local, RL2Config(hidden_size=8, trials_per_iteration=N_TASKS)).policy


@pytest.fixture(scope="module")
def tasks(local):
    return local.sample_train_tasks(N_TASKS, seed=0, iteration=0)


def collect(problem, policy, tasks, seed=3):
    generator = torch.Generator().manual_seed(seed)
    batch = problem.collect(policy, tasks, generator)
    # The caller's generator must advance identically too (the learner keeps using it).
    return batch, int(torch.randint(0, 2**31, (1,), generator=generator))


# ---------------------------------------------------------------------------- unit
def test_shard_bounds_are_contiguous_and_balanced():
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(2, 8) == [(0, 1), (1, 2)]
    assert shard_bounds(7, 1) == [(0, 7)]
    with pytest.raises(ValueError):
        shard_bounds(0, 2)


def test_local_sharding_only_with_workers(control, local, policy, tasks):
    one = _problem(control, "local")
    one.sampler.workers = 1
    a, _ = collect(one, policy, tasks)
    # workers=1 is the unsharded collector, drawing from the caller's generator directly.
    from metarl.collect import Collector

    gen = torch.Generator().manual_seed(3)
    b = Collector(one._env(N_TASKS), one.max_episode_steps).collect(policy, tasks, EPISODES, gen)
    assert_same(a, b)
    sharded, _ = collect(local, policy, tasks)
    assert sharded.num_trials == N_TASKS and not torch.equal(sharded.action, a.action)
    one.close()


# ---------------------------------------------------------------------------- determinism
def test_process_matches_local(local, process, policy, tasks):
    ref = collect(local, policy, tasks)
    got = collect(process, policy, tasks)
    assert_same(ref[0], got[0])
    assert ref[1] == got[1]
    # One shard (workers=1) ships the generator's state: identical to today's local.
    local.sampler.workers = process.sampler.workers = 1
    try:
        ref, got = collect(local, policy, tasks, seed=4), collect(process, policy, tasks, seed=4)
    finally:
        local.sampler.workers = process.sampler.workers = WORKERS
    assert_same(ref[0], got[0])
    assert ref[1] == got[1]


def test_ray_matches_local(local, raysampled, policy, tasks):
    ref = collect(local, policy, tasks)
    got = collect(raysampled, policy, tasks)
    assert_same(ref[0], got[0])
    assert ref[1] == got[1]


def test_halfcheetah_dir_identical_across_backends(request):
    pytest.importorskip("mujoco")
    from agents.rl2 import RL2, RL2Config
    from envs.mujoco_dirvel import HalfCheetahDirEnv

    kinds = ["local", "process"]
    if importlib.util.find_spec("ray") is not None:
        request.getfixturevalue("ray_cluster")
        kinds.append("ray")
    problems = {kind: _problem(None, kind, HalfCheetahDirEnv, horizon=5) for kind in kinds}
    if "ray" in problems:
        # The 2-CPU test cluster already hosts the Nav2D actors (1 CPU each).
        problems["ray"].sampler.num_cpus = 0
    try:
        torch.manual_seed(0)
        policy = RL2(problems["local"], RL2Config(hidden_size=8)).policy
        tasks = problems["local"].sample_train_tasks(3, seed=0, iteration=0)
        ref = collect(problems["local"], policy, tasks)
        for kind in kinds[1:]:
            got = collect(problems[kind], policy, tasks)
            assert_same(ref[0], got[0])
            assert ref[1] == got[1], kind
    finally:
        for problem in problems.values():
            problem.close()


def test_maml_fast_weight_policy_shards_like_local(local, process):
    """Per-task fast weights (rows counted across chunks) survive sharding."""
    import agents.maml as maml  # the project's own module: a broken import must fail

    results = []
    for problem in (local, process):
        torch.manual_seed(0)
        learner = maml.MAMLTRPO(
            problem,
            maml.MAMLTRPOConfig(meta_batch_size=3, trajectories_per_task=2, hidden_sizes=(8,)),
        )
        tasks = problem.sample_train_tasks(learner.tasks_per_iteration(), seed=0, iteration=1)
        metrics = learner.train_iteration(tasks, torch.Generator().manual_seed(0))
        results.append({k: v for k, v in metrics.items() if not k.startswith("time/")})
    assert results[0] == results[1]


# ---------------------------------------------------------------------------- faults
@pytest.mark.parametrize("backend", ["process", "ray"])
def test_worker_crash_mid_iteration_is_replaced_and_rerun(
    backend, request, control, local, policy, tasks
):
    problem = request.getfixturevalue("raysampled" if backend == "ray" else "process")
    ref = collect(local, policy, tasks)
    restarts = problem.sampler.restarts
    (control / "crash").write_text("")
    got = collect(problem, policy, tasks)
    assert not (control / "crash").exists()  # a worker did crash
    assert problem.sampler.restarts == restarts + 1
    assert_same(ref[0], got[0])  # complete, and identical to the uninterrupted batch
    assert ref[1] == got[1]


def test_hung_process_worker_times_out_and_is_replaced(control, local, process, policy, tasks):
    ref = collect(local, policy, tasks)
    (control / "hang").write_text("")
    process.sampler.worker_timeout = 2.0
    try:
        t0 = time.monotonic()
        got = collect(process, policy, tasks)
    finally:
        process.sampler.worker_timeout = 30.0
    assert not (control / "hang").exists()
    assert time.monotonic() - t0 < 25
    assert_same(ref[0], got[0])


def test_ray_kill_actor_mid_iteration(control, local, raysampled, policy, tasks, ray_cluster):
    ref = collect(local, policy, tasks)
    (control / "hang").write_text("")  # one actor stalls, so the kill lands mid-collection
    restarts = raysampled.sampler.restarts

    def kill_all():
        for actor in raysampled.sampler.actors:
            if actor is not None:
                ray_cluster.kill(actor, no_restart=True)

    timer = threading.Timer(1.5, kill_all)
    timer.start()
    try:
        got = collect(raysampled, policy, tasks)
    finally:
        timer.cancel()
    assert raysampled.sampler.restarts > restarts
    assert_same(ref[0], got[0])


@pytest.mark.parametrize("backend", ["process", "ray"])
def test_env_error_in_worker_names_env_and_task(backend, request, control, local, policy, tasks):
    problem = request.getfixturevalue("raysampled" if backend == "ray" else "process")
    culprit = tasks[3]  # the first task of shard 1
    (control / "raise").write_text(repr(float(culprit.goal[0, 0])))
    # A long timeout: the error must come from the worker's report, not from a timeout. The
    # margin is wide because a loaded machine can take tens of seconds to restart workers.
    timeout, problem.sampler.worker_timeout = problem.sampler.worker_timeout, 600.0
    try:
        t0 = time.monotonic()
        with pytest.raises(TaskEnvError) as info:
            collect(problem, policy, tasks)
        assert time.monotonic() - t0 < 300  # reported at once, not after worker_timeout
    finally:
        (control / "raise").unlink()
        problem.sampler.worker_timeout = timeout
    message = str(info.value)
    assert "FaultyNav" in message and "step()" in message and "simulated env failure" in message
    assert " ".join(repr(culprit).split()) in message  # the task, as the user would print it
    assert "\n" not in message
    # The pool recovers for the next iteration.
    assert_same(collect(local, policy, tasks)[0], collect(problem, policy, tasks)[0])


def test_nan_reward_in_worker_is_the_collectors_nonfinite_error(control, process, policy, tasks):
    from metarl.learner import NonFiniteError

    (control / "nan").write_text("")
    try:
        with pytest.raises(NonFiniteError, match="reward returned by the env"):
            collect(process, policy, tasks)
    finally:
        (control / "nan").unlink()


def test_env_error_locally_names_env_and_task(control, policy, tasks):
    problem = _problem(control, "local")
    factory = problem.env_factory
    problem.env_factory = functools.partial(factory, driver_pid=-1)  # misbehave here too
    culprit = tasks[1]
    (control / "raise").write_text(repr(float(culprit.goal[0, 0])))
    try:
        with pytest.raises(TaskEnvError, match=r"FaultyNav raised ValueError.*step\(\)"):
            collect(problem, policy, tasks)
    finally:
        (control / "raise").unlink()


def test_unpicklable_policy_is_a_clear_error(process, tasks):
    class Local:  # defined in a function: pickle cannot find it
        def initial_state(self, n, device):
            return None

    with pytest.raises(SamplerError, match="does not pickle"):
        collect(process, Local(), tasks)


# ---------------------------------------------------------------------------- CLI
ENV = "envs.nav2d:Nav2DGymEnv"


def test_cli_train_with_process_sampler(tmp_path, capsys):
    from metarl.cli import main

    run_dir = tmp_path / "run"
    code = main(
        [
            "train", "rl2", ENV, "--iterations", "1", "--logdir", str(run_dir), "--no-progress",
            "--set", "train.sampler=process", "--set", "train.workers=2",
            "--set", "env.horizon=5", "--set", "algo.trials_per_iteration=4",
            "--set", "algo.hidden_size=8", "--set", "train.eval_tasks=3",
        ]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (run_dir / "checkpoints" / "last.pt").exists()
    assert "meta-test return" in out


def test_cli_ray_sampler_without_ray_is_one_line(monkeypatch, tmp_path, capsys):
    import metarl.samplers
    from metarl.cli import main

    monkeypatch.setattr(metarl.samplers, "ray_available", lambda: False)
    code = main(
        [
            "train",
            "rl2",
            ENV,
            "--iterations",
            "1",
            "--logdir",
            str(tmp_path / "r"),
            "--no-progress",
            "--set",
            "train.sampler=ray",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "needs Ray" in err and "pip install" in err
