"""Few-shot learning through the CLI: ``metarl train LEARNER omniglot|sinusoid``, eval, resume."""

import csv
import json

import pytest
import torch

from agents.fewshot.problem import OmniglotTasks, SinusoidTasks
from metarl.checkpoint import load_checkpoint
from metarl.cli import main

FEWSHOT = ["maml", "meta-sgd", "snail", "protonet", "matchingnet", "reptile", "metanet"]

# Tiny runs: 2 tasks of 5-way 1-shot with 2 queries per class, 8 Conv-4 filters.
TINY = [
    "--set", "data.queries=2",
    "--set", "algo.meta_batch=2",
    "--set", "train.eval_tasks=4",
    "--set", "train.eval_every=2",
    "--no-progress",
]  # fmt: skip


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def hidden(name):
    """The width option of each learner, set small for speed."""
    return [] if name == "metanet" else ["--set", "algo.hidden=8"]


@pytest.mark.parametrize("name", FEWSHOT)
def test_every_fewshot_learner_trains_and_evaluates_on_omniglot(name, tmp_path, capsys):
    run_dir = tmp_path / name
    code, out, err = run(
        [
            "train",
            name,
            "omniglot",
            "--iterations",
            "2",
            "--logdir",
            str(run_dir),
            *TINY,
            *hidden(name),
        ],
        capsys,
    )
    assert code == 0, err
    assert "meta-test accuracy" in out
    rows = read_csv(run_dir / "metrics.csv")
    assert len(rows) == 2 and float(rows[-1]["meta_test/accuracy"]) >= 0
    assert {"losses/loss", "meta_train/grad_norm"} <= set(rows[0])
    code, out, err = run(["eval", str(run_dir), "--tasks", "6"], capsys)
    assert code == 0, err
    rows = read_csv(run_dir / "eval" / "adaptation.csv")
    assert list(rows[0]) == ["learner", "x", "mean_return", "ci_low", "ci_high", "n_tasks"]
    learners = {r["learner"] for r in rows}
    assert learners == {name, "random"}
    mine = [r for r in rows if r["learner"] == name]
    assert all(r["n_tasks"] == "6" and 0 <= float(r["mean_return"]) <= 1 for r in mine)
    # x = inner gradient steps for gradient-based learners, shots seen for the others
    expected = {"maml": 4, "meta-sgd": 4, "reptile": 11}.get(name, 1)
    assert len(mine) == expected
    if name not in ("maml", "meta-sgd", "reptile"):
        assert mine[0]["x"] == "1"
    assert (run_dir / "eval" / "adaptation.png").stat().st_size > 0


def test_omniglot_tasks_are_seeded_and_test_classes_are_held_out():
    problem = OmniglotTasks(ways=5, shots=1, queries=3).to("cpu")
    a = problem.sample_train_tasks(3, seed=0, iteration=4)
    b = problem.sample_train_tasks(3, seed=0, iteration=4)
    c = problem.sample_train_tasks(3, seed=0, iteration=5)
    assert torch.equal(a.support_x, b.support_x) and not torch.equal(a.support_x, c.support_x)
    assert a.support_x.shape == (3, 5, 1, 28, 28) and a.query_x.shape == (3, 15, 1, 28, 28)
    test = problem.sample_test_tasks(120, seed=0, chunk=50)
    chunks = list(test)
    assert [c.support_x.shape[0] for c in chunks] == [50, 50, 20]
    assert all(torch.equal(x.support_x, y.support_x) for x, y in zip(chunks, list(test)))
    train_chars = set(problem.splits["train"].char_ids.tolist())
    test_chars = set(problem.splits["test"].char_ids.tolist())
    assert len(train_chars) == 1200 and len(test_chars) == 423
    assert train_chars.isdisjoint(test_chars)


def test_train_queries_shrink_training_batches_only():
    problem = OmniglotTasks(ways=5, shots=1, queries=4, train_queries=1).to("cpu")
    train = problem.sample_train_tasks(2, seed=0, iteration=0)
    assert train.query_x.shape == (2, 5, 1, 28, 28)
    assert sorted(train.query_y[0].tolist()) == [0, 1, 2, 3, 4]
    test = next(iter(problem.sample_test_tasks(2, seed=0)))
    assert test.query_x.shape == (2, 20, 1, 28, 28)


def test_dataset_options_are_checked():
    with pytest.raises(ValueError, match="20 drawings"):
        OmniglotTasks(shots=10, queries=15)
    with pytest.raises(ValueError, match=r"data\.train_queries"):
        OmniglotTasks(shots=5, queries=5, train_queries=16)
    with pytest.raises(ValueError, match=r"data\.ways"):
        OmniglotTasks(ways=1)
    with pytest.raises(ValueError, match=r"data\.amplitude"):
        SinusoidTasks(amplitude=(5.0, 0.1))


def test_sinusoid_eval_reports_mse_per_step_and_draws_fits(tmp_path, capsys):
    run_dir = tmp_path / "sin"
    code, out, err = run(
        ["train", "maml", "sinusoid", "--iterations", "3", "--logdir", str(run_dir),
         "--set", "data.shots=5", "--set", "algo.inner_lr=0.01",
         "--set", "algo.eval_inner_steps=10", *TINY[2:]],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "meta-test mse" in out
    code, out, err = run(["eval", str(run_dir), "--tasks", "20"], capsys)
    assert code == 0, err
    rows = read_csv(run_dir / "eval" / "adaptation.csv")
    steps = [int(r["x"]) for r in rows if r["learner"] == "maml"]
    assert steps == list(range(11))
    zero = [float(r["mean_return"]) for r in rows if r["learner"] == "zero"]
    assert len(zero) == 11 and len(set(zero)) == 1 and zero[0] > 0  # E[y^2] > 0
    assert (run_dir / "eval" / "fits.png").stat().st_size > 0


def test_fewshot_resume_is_bit_identical(tmp_path, capsys):
    base = ["protonet", "omniglot", *TINY, "--set", "algo.hidden=8"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run(["train", *base, "--iterations", "4", "--logdir", str(straight)], capsys)[0] == 0
    assert run(["train", *base, "--iterations", "2", "--logdir", str(split)], capsys)[0] == 0
    code, _, err = run(
        ["train", "--resume", "--logdir", str(split), "--iterations", "4", "--no-progress"],
        capsys,
    )
    assert code == 0, err
    a = load_checkpoint(straight / "checkpoints" / "last.pt")["learner"]["model"]["nets"]
    b = load_checkpoint(split / "checkpoints" / "last.pt")["learner"]["model"]["nets"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_with_a_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "budget"
    code, out, err = run(
        ["train", "protonet", "omniglot", "--iterations", "50", "--logdir", str(run_dir),
         *TINY, "--set", "algo.hidden=8", "--set", "train.max_minutes=0.0001"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "max_minutes" in out
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "stopped (time budget)" and status["iteration"] == 1
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["iteration"] == 1
    assert "meta_test/accuracy" in status  # the last iteration was meta-tested

    # --resume --max-minutes gives the continued run a new budget (0: none), recorded in
    # config.yaml, and the run finishes its iterations.
    code, _, err = run(
        ["train", "--resume", "--logdir", str(run_dir), "--iterations", "3", "--max-minutes",
         "0", "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "complete" and status["iteration"] == 3
    assert "max_minutes: 0.0" in (run_dir / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["maml-trpo", "omniglot"], "meta-RL learner"),
        (["protonet", "bandit"], "few-shot learner"),
        (["protonet", "omniglot", "--set", "env.arms=3"], "takes data.* options"),
        (["rl2", "bandit", "--set", "data.ways=3"], "data.* options are for few-shot"),
        (["protonet", "omniglot", "--set", "data.shots=30"], "20 drawings"),
        (["protonet", "omniglot", "--set", "data.wayz=3"], "did you mean 'ways'"),
        (["protonet", "omniglot", "--set", "data.dir=/nonexistent"], "nothing is downloaded"),
        (["maml", "omniglot", "--set", "algo.meta_batch=0"], "algo.meta_batch"),
    ],
)
def test_fewshot_bad_input_is_one_line_exit_2(args, message, tmp_path, capsys):
    code, _, err = run(["train", *args, "--logdir", str(tmp_path / "r"), "--no-progress"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "r").exists()


def test_algos_listing_marks_fewshot_learners(capsys):
    code, out, _ = run(["algos"], capsys)
    assert code == 0
    lines = out.strip().splitlines()
    fewshot = {line.split()[0] for line in lines if "few-shot" in line}
    assert set(FEWSHOT) <= fewshot
    code, out, _ = run(["envs"], capsys)
    assert {"omniglot", "sinusoid"} <= {line.split()[0] for line in out.strip().splitlines()}


def test_snail_tc_depth_follows_the_task_sequence():
    """5-way 1-shot sequences have 6 steps: each TC block gets ceil(log2 6) = 3 dense blocks."""
    from agents.fewshot.algorithms import SNAILAlgorithm
    from agents.fewshot.snail import SNAILClassifierConfig
    from agents.snail import TCBlock

    problem = OmniglotTasks(ways=5, shots=1, queries=2).to("cpu")
    algo = SNAILAlgorithm(problem, SNAILClassifierConfig(hidden=8), "cpu")
    depths = [len(m.blocks) for m in algo.learner.nets["stack"].modules() if isinstance(m, TCBlock)]
    assert depths == [3, 3]
    assert algo.config.sequence_length == 0  # the run's config keeps "derive from the data"
