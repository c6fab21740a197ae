"""Crash safety, resume determinism, untrusted files and CLI input fuzzing.

Each test proves one guarantee listed in ``docs/reliability.md``.
"""

import csv
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from metarl.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint
from metarl.cli import main
from metarl.config import INT_MAX, safe_load

REPO = Path(__file__).parents[1]
CKPT = Path("checkpoints") / "last.pt"
TINY = [
    "--set", "algo.trials_per_iteration=8",
    "--set", "algo.hidden_size=8",
    "--set", "train.eval_tasks=2",
    "--set", "train.eval_every=0",
    "--set", "train.checkpoint_every=1",
    "--set", "train.threads=1",
    "--no-progress",
]  # fmt: skip


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, expected="", status=2):
    assert code == status, err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), repr(err)
    assert lines[0].startswith("metarl: error: ") and "Traceback" not in err, lines[0]
    assert expected in lines[0], lines[0]


def assert_same_state(a, b, where="learner"):
    """Exact equality of nested state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def metrics_iterations(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [int(row["iteration"]) for row in csv.DictReader(f)]


def status(run_dir):
    return json.loads((run_dir / "run.json").read_text())


# ------------------------------------------------------------------------ crash safety
KILL_ITERATIONS = 40


#: The resumed processes are started one step ahead and wait on stdin before calling
#: ``metarl.cli.main``, so that their ~3 s of imports overlap the previous process's life.
#: What runs after "go" is exactly ``python -m metarl.cli ARGS``.
PREWARMED = (
    "import sys, metarl.cli, metarl.runner, agents.rl2, envs.bandit; "
    "sys.stdin.readline(); sys.exit(metarl.cli.main(sys.argv[1:]))"
)


def _fresh_command(run_dir):
    return [sys.executable, "-m", "metarl.cli", "train", "rl2", "bandit", "--seed", "3",
            "--iterations", str(KILL_ITERATIONS), "--logdir", str(run_dir), *TINY]  # fmt: skip


def _prewarmed_resume(run_dir, log):
    args = ["train", "--resume", "--logdir", str(run_dir), "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-c", PREWARMED, *args],
        cwd=REPO, stdin=subprocess.PIPE, stdout=log, stderr=log,
    )  # fmt: skip


def _progress(run_dir, pid):
    """The checkpointed iteration if process ``pid`` wrote run.json last, else None.

    run.json carries the writer's pid and is rewritten after every checkpoint.
    """
    try:
        info = status(run_dir)
    except (OSError, ValueError):  # not written yet (it is replaced atomically, never torn)
        return None
    return info.get("iteration") if info.get("pid") == pid else None


def _wait_for(run_dir, proc, at_least, log_path):
    deadline = time.monotonic() + 180
    while True:
        it = _progress(run_dir, proc.pid)
        if it is not None and it >= at_least:
            return it
        assert proc.poll() is None, f"exited early: {log_path.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.002)


@pytest.mark.parametrize(
    "kills",
    # Each kill costs a fresh Python process (~3 s of CPU importing torch); 10 kills take
    # ~100 s on a loaded 2-core machine, so the default suite runs 3 and `-m slow` all 10.
    [3, pytest.param(10, marks=pytest.mark.slow)],
)
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(kills, tmp_path, capsys):
    """SIGKILLs in a row at random moments, each followed by --resume; the result is exact."""
    reference = tmp_path / "reference"
    args = ["train", "rl2", "bandit", "--seed", "3", "--iterations", KILL_ITERATIONS,
            "--logdir", reference, *TINY]  # fmt: skip
    code, _, err = run(args, capsys)
    assert code == 0, err
    per_iteration = status(reference)["elapsed_s"] / KILL_ITERATIONS
    expected = load_checkpoint(reference / CKPT)["learner"]

    rng = random.Random(7)  # the kill moments are seeded; the machine's timing is not
    run_dir, log_path = tmp_path / "killed", tmp_path / "log.txt"
    progress = []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(_fresh_command(run_dir), cwd=REPO, stdout=log, stderr=log)
        following = None
        try:
            for kill in range(kills):
                start = _wait_for(run_dir, proc, 0, log_path)  # training has started
                if kill < kills - 1:
                    following = _prewarmed_resume(run_dir, log)
                # A random moment: after 0-2 of this process's checkpoints, then a random
                # fraction of an iteration: mid-rollout, mid-update, while writing
                # metrics.csv, the checkpoint or run.json. The first kill lands in the
                # run's first iteration, before any checkpoint exists.
                steps = 0 if kill == 0 else rng.choice([0, 1, 1, 2])
                t0 = time.monotonic()
                _wait_for(run_dir, proc, start + steps, log_path)
                window = max(per_iteration, (time.monotonic() - t0) / max(steps, 1))
                time.sleep(rng.uniform(0, 0.3 if kill == 0 else 1.0) * window)
                proc.send_signal(signal.SIGKILL)
                assert proc.wait() == -signal.SIGKILL, "the run finished before it was killed"

                # The state a crash leaves behind is consistent.
                if (run_dir / CKPT).exists():
                    iteration = load_checkpoint(run_dir / CKPT)["iteration"]
                else:
                    iteration = 0  # killed before the first checkpoint: resume starts over
                assert status(run_dir)["status"] == "running"
                rows = metrics_iterations(run_dir)
                assert rows == list(range(len(rows)))
                # Rows are written before the checkpoint that covers them: at most one extra.
                assert iteration <= len(rows) <= iteration + 1, (iteration, rows)
                assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"] == 3
                progress.append(iteration)
                if following is not None:
                    proc, following = following, None
                    proc.stdin.write(b"go\n")
                    proc.stdin.close()
        finally:
            for p in (proc, following):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()

    code, _, err = run(["train", "--resume", "--logdir", run_dir, "--no-progress"], capsys)
    assert code == 0, err
    final = status(run_dir)
    assert final["status"] == "complete" and final["iteration"] == KILL_ITERATIONS
    assert metrics_iterations(run_dir) == list(range(KILL_ITERATIONS))
    assert not list((run_dir / "checkpoints").glob(".*tmp*")), "stale temporary files"
    state = load_checkpoint(run_dir / CKPT)
    assert state["iteration"] == KILL_ITERATIONS
    assert_same_state(state["learner"], expected)
    assert progress == sorted(progress), progress


def _small_run(run_dir, capsys, *extra, iterations=2):
    args = ["train", "rl2", "bandit", "--iterations", iterations, "--logdir", run_dir, *TINY]
    code, _, err = run([*args, *extra], capsys)
    assert code == 0, err


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """A complete 3-iteration run, made once and copied by tests that damage it."""
    run_dir = tmp_path_factory.mktemp("ref") / "run"
    args = ["train", "rl2", "bandit", "--iterations", "3", "--logdir", str(run_dir), *TINY]
    assert main(args) == 0
    return run_dir


def test_kill_before_first_checkpoint_resumes_from_scratch(reference_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    (run_dir / CKPT).unlink()  # as if killed during iteration 0
    (run_dir / "run.json").write_text(json.dumps({"status": "running", "pid": 1}))
    code, out, err = run(["train", "--resume", "--logdir", run_dir, "--no-progress"], capsys)
    assert code == 0, err
    assert "no checkpoint" in out and "starting from iteration 0" in out
    assert metrics_iterations(run_dir) == [0, 1, 2]
    assert_same_state(
        load_checkpoint(run_dir / CKPT)["learner"], load_checkpoint(reference_run / CKPT)["learner"]
    )


def test_kill_between_metrics_row_and_checkpoint(tmp_path, capsys, reference_run):
    """Rows logged after the last checkpoint (and a torn row) are replaced on resume."""
    run_dir = tmp_path / "run"
    _small_run(run_dir, capsys, iterations=2)
    header = (run_dir / "metrics.csv").read_text().splitlines()[0]
    with open(run_dir / "metrics.csv", "a") as f:
        f.write("2," + ",".join(["999"] * (header.count(","))) + "\n")  # lost work
        f.write("3,0.5")  # torn by the kill, no newline
    code, _, err = run(
        ["train", "--resume", "--logdir", run_dir, "--iterations", 3, "--no-progress"], capsys
    )
    assert code == 0, err
    assert metrics_iterations(run_dir) == [0, 1, 2]
    # Compare whole fields: a real value such as 0.1999 contains the substring "999".
    with open(run_dir / "metrics.csv", newline="") as f:
        assert all("999" not in row.values() for row in csv.DictReader(f))
    assert_same_state(
        load_checkpoint(run_dir / CKPT)["learner"], load_checkpoint(reference_run / CKPT)["learner"]
    )


def test_run_json_status_complete_failed_interrupted(tmp_path, capsys):
    run_dir = tmp_path / "ok"
    _small_run(run_dir, capsys)
    info = status(run_dir)
    assert info["status"] == "complete" and info["iteration"] == 2 and info["pid"] == os.getpid()

    # SIGTERM mid-training: recorded as interrupted at the last checkpoint, exit 143.
    before = signal.getsignal(signal.SIGTERM)
    learner = tmp_path / "term_learner.py"
    learner.write_text(
        "import os, signal\nfrom agents.rl2 import RL2\n\n\nclass TermAt2(RL2):\n"
        "    def train_iteration(self, tasks, generator):\n"
        "        if getattr(self, 'calls', 0) == 2:\n"
        "            os.kill(os.getpid(), signal.SIGTERM)\n"
        "        self.calls = getattr(self, 'calls', 0) + 1\n"
        "        return super().train_iteration(tasks, generator)\n"
    )
    run_dir = tmp_path / "term"
    args = ["train", f"{learner}:TermAt2", "bandit", "--iterations", 5, "--logdir", run_dir, *TINY]
    code, _, err = run(args, capsys)
    one_line_error(code, err, "terminated (SIGTERM)", status=143)
    info = status(run_dir)
    assert info["status"] == "interrupted" and info["iteration"] == 2
    assert signal.getsignal(signal.SIGTERM) == before  # restored for the caller

    # A failure records the last checkpoint's iteration, not the failing one.
    learner = tmp_path / "nan_learner.py"
    learner.write_text(
        "from agents.rl2 import RL2\n\n\nclass NaNAt3(RL2):\n"
        "    def _adam_step(self, loss, name):\n"
        "        self.calls = getattr(self, 'calls', 0) + 1\n"
        "        super()._adam_step(loss * float('nan') if self.calls > 32 else loss, name)\n"
    )
    run_dir = tmp_path / "nan"
    args = ["train", f"{learner}:NaNAt3", "bandit", "--iterations", 5, "--logdir", run_dir, *TINY]
    code, _, err = run(args, capsys)
    one_line_error(code, err, "loss is nan; training stopped", status=1)
    info = status(run_dir)
    assert info["status"] == "failed" and info["reason"].startswith("failed: iteration")
    assert info["iteration"] == load_checkpoint(run_dir / CKPT)["iteration"] >= 1


def test_resume_refuses_what_would_break_determinism(reference_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    base = ["train", "--resume", "--logdir", run_dir, "--no-progress"]
    code, _, err = run([*base, "--seed", "5"], capsys)
    one_line_error(code, err, "drop --config/--set/--seed")
    code, _, err = run([*base, "--iterations", 2], capsys)
    one_line_error(code, err, "is at iteration 3, past train.iterations=2")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["algo"]["hidden_size"] = 16
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = run(base, capsys)
    one_line_error(code, err, "different configuration (algo.hidden_size: 8 in the checkpoint")


def test_resume_compares_what_was_trained_not_the_meta_test_protocol():
    from metarl.runner import config_mismatch

    saved = {
        "algorithm": "maml-trpo",
        "environment": "nav2d",
        "algo": {"lr": 0.1, "eval_trajectories": 0, "eval_lr_scale": 1.0},
        "train": {"seed": 0, "iterations": 10},
    }
    protocol = {**saved, "algo": {**saved["algo"], "eval_lr_scale": [1.0, 0.5]}}
    protocol["algo"]["eval_trajectories"] = 40
    assert config_mismatch(saved, protocol) is None
    longer = {**saved, "train": {"seed": 0, "iterations": 20, "threads": 2}}
    assert config_mismatch(saved, longer) is None
    trained = {**saved, "algo": {**saved["algo"], "lr": 0.5}}
    assert config_mismatch(saved, trained) == "algo.lr: 0.1 in the checkpoint, 0.5 now"
    reseeded = {**saved, "train": {"seed": 1}}
    assert config_mismatch(saved, reseeded) == "train.seed: 0 in the checkpoint, 1 now"


def test_second_trainer_on_the_same_run_directory_is_refused(reference_run, tmp_path, capsys):
    import fcntl

    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    with open(run_dir / ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = run(
            ["train", "--resume", "--logdir", run_dir, "--iterations", 4, "--no-progress"], capsys
        )
    one_line_error(code, err, "in use by another metarl process")
    assert status(run_dir)["status"] == "complete"  # the refused trainer touched nothing


# ------------------------------------------------------------------------ untrusted files
def _foreign(path):
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, path)  # another program's


def _flipped(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def _rehashed_pickle_bomb(path):
    """Right magic and a matching digest, but the payload is a pickle that runs code."""

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {path.parent / 'PWNED'}",))

    data = pickle.dumps({"format": "metarl", "x": Exploit()})  # torch.load reads raw pickles
    digest = hashlib.sha256(data).hexdigest().encode()
    path.write_bytes(MAGIC + digest + b"\n" + data)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (_foreign, "is not a metarl checkpoint"),
        (_flipped, "is corrupt (truncated or modified: digest mismatch)"),
        (_truncated, "is corrupt (truncated or modified: digest mismatch)"),
        (_rehashed_pickle_bomb, "cannot be loaded safely"),
    ],
)
def test_untrusted_checkpoints_are_refused_in_one_line(
    damage, expected, reference_run, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run, run_dir)
    damage(run_dir / CKPT)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(run_dir / CKPT)
    assert expected in str(info.value) and "\n" not in str(info.value)
    code, _, err = run(["eval", run_dir, "--tasks", 2], capsys)
    one_line_error(code, err, expected)
    code, _, err = run(["train", "--resume", "--logdir", run_dir, "--no-progress"], capsys)
    one_line_error(code, err, expected)
    assert not (run_dir / "PWNED").exists()


def test_checkpoint_round_trip_and_atomic_replace(tmp_path):
    path = tmp_path / "c" / "last.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.arange(3)})
    (path.parent / ".last.pt.tmp-99999").write_bytes(b"half a checkpoint")  # a killed writer
    save_checkpoint(path, {"iteration": 2, "w": torch.arange(4)})
    state = load_checkpoint(path)
    assert state["iteration"] == 2 and torch.equal(state["w"], torch.arange(4))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_config_with_python_tag_is_refused_in_one_line(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    for text in (
        f"train: !!python/object/apply:os.system ['touch {marker}']\n",
        "algo: !!python/object:argparse.Namespace {hidden_size: 8}\n",
        f"env: {{arms: !!python/name:os.system }}\n# {marker}\n",
    ):
        cfg = tmp_path / "evil.yaml"
        cfg.write_text(text)
        code, _, err = run(["train", "rl2", "bandit", "--config", cfg, "--logdir",
                            tmp_path / "r"], capsys)  # fmt: skip
        one_line_error(code, err, "is not allowed (configs are plain YAML, loaded safely)")
    assert not marker.exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"\xff\xfe\x00garbage", "is not UTF-8 text"),
        (b"[" * 3000 + b"]" * 3000, "nested too deeply"),
        (
            b"a: &a [1, 2]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nalgo: {epochs: *c}\n",
            "unknown top-level key 'a'",
        ),
        (b"algo: &x [*x]\n", "config section 'algo' must be a mapping"),
        (b"env: {1: 2}\n", "unknown key env.1"),
        (b"{[1]: 2}\n", "malformed YAML"),
        (b"- 1\n- 2\n", "must be a mapping of sections, got list"),
        (b"train:\n  lr: 1e-3\n", "unknown key train.lr; did you mean algo.lr?"),
        (b"algo:\n  lr: 1e400\n", "algo.lr must be a finite number, got inf"),
    ],
)
def test_malformed_config_files(text, expected, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(text)
    code, _, err = run(["train", "rl2", "bandit", "--config", cfg, "--logdir", tmp_path / "r"],
                       capsys)  # fmt: skip
    one_line_error(code, err, expected)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("train.seed=-1", "train.seed must be >= 0"),
        ("train.seed=100000000000000000000", "out of range (integers must fit in 64 bits)"),
        ("train.device=cuda:abc", "train.device must be cpu, cuda[:N] or mps"),
        ("train.threads=-3", "train.threads must be >= 0"),
        ("train.worker_timeout=.nan", "must be a finite number"),
        ("algo.lr=.inf", "algo.lr must be a finite number"),
        ("algo.clip=3.5e38", "algo.clip = 3.5e+38 is out of range (|x| <= 3.4e38"),
        ("train.eval_tasks=0", "train.eval_tasks must be >= 1"),
        ("env.a\nb=3", "unknown key env.'a\\nb'"),
        ("algo.epochs=" + "[" * 3000, "--set"),
    ],
)
def test_set_values_found_by_fuzzing(item, expected, tmp_path, capsys):
    code, _, err = run(["train", "rl2", "bandit", "--logdir", tmp_path / "r", "--set", item],
                       capsys)  # fmt: skip
    one_line_error(code, err, expected)
    assert not (tmp_path / "r").exists()


def test_scientific_floats_are_floats(tmp_path, capsys):
    assert safe_load("1e-3") == 0.001 and safe_load("2.5E+2") == 250.0
    run_dir = tmp_path / "r"
    _small_run(run_dir, capsys, "--set", "algo.lr=3e-4", iterations=1)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["algo"]["lr"] == 0.0003


def test_run_dir_with_only_dot_files_is_not_a_run(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / ".lock").write_text("")  # what a kill during directory creation leaves
    _small_run(run_dir, capsys, iterations=1)
    (tmp_path / "file").write_text("x")
    code, _, err = run(["train", "rl2", "bandit", "--logdir", tmp_path / "file"], capsys)
    one_line_error(code, err, "exists and is not a directory")


# ------------------------------------------------------------------------ fuzzing
#: Keys whose in-range values size tensors or thread pools; the fuzzer keeps those small so
#: that valid runs stay quick (huge values are still drawn: they must fail validation).
RESOURCE_KEYS = {
    "env.arms", "trial.episodes", "algo.trials_per_iteration", "algo.hidden_size",
    "algo.epochs", "algo.minibatches", "algo.obs_embed", "train.eval_tasks", "train.workers",
    "train.threads",
}  # fmt: skip
REAL_KEYS = sorted(
    RESOURCE_KEYS
    | {f"train.{k}" for k in ("seed", "device", "eval_every", "checkpoint_every", "nan_policy",
                              "sampler", "ray_address", "worker_timeout", "iterations")}
    | {f"algo.{k}" for k in ("optimizer", "gamma", "gae_lambda", "lr", "clip", "entropy_coef",
                             "value_coef", "max_grad_norm", "normalize_advantages", "max_kl",
                             "damping", "cell")}
    | {"trial.max_episode_steps"}
)  # fmt: skip
WORDS = ["ppo", "trpo", "vpg", "gru", "lstm", "stop", "skip", "cpu", "cuda", "cuda:0", "mps",
         "local", "process", "ray", "true", "no", "null", "~", "", " ", "-0", "1e-3", "1e400",
         ".inf", "-.inf", ".nan", "0x10", "0o7", "1_000", "9223372036854775807",
         "9223372036854775808", "-9223372036854775809", "18446744073709551616", "[", "{a: 1",
         "'open", "*alias",
         "&a [*a]", "!!python/object:os.system", "!!binary aGk=", "a: b: c", "%YAML 1.1",
         "---", "? x", "|\n x", "{a: [1, {b: [2, {c: 3}]}]}", "[[[[[1]]]]]", "2001-01-01",
         "!!float 3", "!!int '3'", "!!str 3", "0.5", "1.0", "3", "8"]  # fmt: skip


def _containers(inner):
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    _containers,
    max_leaves=6,
)  # fmt: skip
values = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=12),
    json_values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)
keys = st.one_of(
    st.sampled_from(REAL_KEYS),
    st.builds(lambda s, k: f"{s}.{k}", st.sampled_from(["env", "trial", "algo", "train", "",
                                                        "tarin", "Env"]), st.text(max_size=10)),
    st.text(max_size=12),
)  # fmt: skip
plausible = st.one_of(
    st.sampled_from(WORDS[:15]),
    st.integers(0, 64).map(str),
    st.floats(0, 1).map(repr),
    st.sampled_from(["1e-3", "0.99", "true", "false", "null"]),
)
set_items = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", keys, values),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(REAL_KEYS), plausible),  # often valid
    st.text(max_size=20),  # no '=' at all, or several
)


def _cheap(item: str) -> bool:
    """False for in-range values of resource keys that would make a valid run slow."""
    key, _, raw = item.partition("=")
    if key.strip() not in RESOURCE_KEYS:
        return True
    try:
        value = safe_load(raw)
    except Exception:
        return True
    limit = 4 if key.strip() == "train.threads" else 64
    return not (isinstance(value, int) and limit < value <= INT_MAX)


def _check_outcome(code, out, err, run_dir):
    event(f"exit {code}")
    if code == 0:
        assert err == "" or "Traceback" not in err, err
        assert status(run_dir)["status"] == "complete"
        assert load_checkpoint(run_dir / CKPT)["iteration"] == 1
        return
    assert code == 2, (code, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("metarl: error: "), repr(err)
    assert "Traceback" not in err
    assert not run_dir.exists(), "a config error created a run directory"


#: METARL_FUZZ_EXAMPLES=2000 METARL_FUZZ_RANDOM=1 runs a deeper, non-repeatable search.
FUZZ = dict(
    max_examples=int(os.environ.get("METARL_FUZZ_EXAMPLES", "70")),
    deadline=None,
    derandomize=not os.environ.get("METARL_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings(**FUZZ)
@given(items=st.lists(set_items, min_size=1, max_size=3))
def test_fuzz_set_options(items, capsys):
    assume(all(_cheap(i) for i in items))
    assume(all("\x00" not in i for i in items))  # argv cannot carry NUL bytes
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        args = ["train", "rl2", "bandit", "--iterations", "1", "--logdir", str(run_dir), *TINY]
        for item in items:
            args += ["--set", item]
        capsys.readouterr()  # only what main() prints counts (not Hypothesis' own warnings)
        try:
            code = main(args)
        finally:
            torch.set_num_threads(1)  # a fuzzed train.threads must not leak into other tests
        out, err = capsys.readouterr()
        _check_outcome(code, out, err, run_dir)


config_docs = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=60),
    st.dictionaries(
        st.sampled_from(["algorithm", "environment", "env", "trial", "algo", "train", "trian"])
        | st.text(max_size=5),
        st.dictionaries(st.sampled_from(REAL_KEYS).map(lambda k: k.split(".")[1])
                        | st.text(max_size=5), json_values, max_size=3)
        | json_values,
        max_size=4,
    ).map(lambda d: yaml.safe_dump(d)),
)  # fmt: skip


@settings(**FUZZ)
@given(doc=config_docs, cut=st.integers(0, 200))
def test_fuzz_config_files(doc, cut, capsys):
    data = doc if isinstance(doc, bytes) else doc.encode("utf-8", "surrogatepass")
    if cut % 3 == 0:
        data = data[: cut % (len(data) + 1)]  # a truncated file
    try:
        parsed = safe_load(data.decode("utf-8"))
    except Exception:
        parsed = None
    assume(all(_cheap(f"{s}.{k}={v}") for s, k, v in _flat(parsed)))
    with tempfile.TemporaryDirectory() as tmp:
        cfg, run_dir = Path(tmp) / "c.yaml", Path(tmp) / "run"
        cfg.write_bytes(data)
        capsys.readouterr()
        # The tiny sizes come after --config, so they win over the file's values.
        args = ["train", "rl2", "bandit", "--config", str(cfg), "--iterations", "1",
                "--logdir", str(run_dir), *TINY]  # fmt: skip
        try:
            code = main(args)
        finally:
            torch.set_num_threads(1)
        out, err = capsys.readouterr()
        _check_outcome(code, out, err, run_dir)


def _flat(data):
    if not isinstance(data, dict):
        return []
    return [
        (s, k, v)
        for s, section in data.items()
        if isinstance(section, dict)
        for k, v in section.items()
    ]
