"""experiments/best_snapshot.py: select a snapshot on validation tasks, report on test tasks."""

import json
import sys

import pytest
from helpers import load_experiment_script, read_csv

from metarl.cli import main as metarl_main


def test_selects_on_validation_and_reports_on_test(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    args = ["train", "rl2", "nav2d", "--iterations", "4", "--logdir", str(run_dir)]
    args += ["--set", "algo.trials_per_iteration=8", "--set", "algo.hidden_size=8"]
    args += ["--set", "trial.max_episode_steps=5", "--set", "train.eval_every=0"]
    args += ["--set", "train.snapshot_every=2", "--no-progress"]
    assert metarl_main(args) == 0
    module = load_experiment_script("best_snapshot")
    argv = ["best_snapshot.py", str(run_dir), "--val-tasks", "5", "--test-tasks", "7"]
    monkeypatch.setattr(sys, "argv", argv)
    assert module.main() == 0
    rows = read_csv(run_dir / "best_snapshot" / "selection.csv")
    val = [r for r in rows if r["stage"] == "val"]
    (test,) = [r for r in rows if r["stage"] == "test"]
    assert [r["snapshot"] for r in val] == ["iter_000002.pt", "iter_000004.pt"]
    assert all(r["tasks"] == "5" and r["seed"] == "100" for r in val)
    assert test["snapshot"] == max(val, key=lambda r: float(r["mean"]))["snapshot"]
    assert (test["tasks"], test["seed"]) == ("7", "101")
    # The reported figure is the test evaluation's own (adaptation.csv, episode 1).
    (first,) = [
        r for r in read_csv(run_dir / "best_snapshot" / "test" / "adaptation.csv") if r["x"] == "1"
    ]
    assert float(first["mean_return"]) == pytest.approx(float(test["mean"]), rel=1e-5)
    assert "best on validation" in capsys.readouterr().out
    assert (run_dir / "best_snapshot" / "selection.png").stat().st_size > 1000
    # A budget no snapshot fits in is refused.
    monkeypatch.setattr(sys, "argv", [*argv, "--max-minutes", "1e-9"])
    with pytest.raises(SystemExit):
        module.main()


def test_protocol_overrides_reach_both_stages(tmp_path, monkeypatch, capsys):
    """``--set algo.eval_*`` evaluates every stage under that protocol and records it; other
    keys get one line and exit 2, as from ``metarl eval --set``."""
    run_dir = tmp_path / "run"
    args = ["train", "maml-trpo", "nav2d", "--iterations", "2", "--logdir", str(run_dir)]
    for item in [
        "env.horizon=5",
        "algo.meta_batch_size=2",
        "algo.trajectories_per_task=2",
        "algo.hidden_sizes=[8]",
        "algo.eval_steps=1",
        "train.eval_every=0",
        "train.snapshot_every=1",
    ]:
        args += ["--set", item]
    assert metarl_main([*args, "--no-progress"]) == 0
    module = load_experiment_script("best_snapshot")
    out = tmp_path / "sel"
    argv = ["best_snapshot.py", str(run_dir), "--val-tasks", "3", "--test-tasks", "4"]
    argv += ["--out", str(out), "--set", "algo.eval_steps=2"]
    argv += ["--set", "algo.eval_lr_scale=[1.0, 0.5]"]
    monkeypatch.setattr(sys, "argv", argv)
    assert module.main() == 0
    overrides = ["algo.eval_steps=2", "algo.eval_lr_scale=[1.0, 0.5]"]
    rows = read_csv(out / "selection.csv")
    assert len(rows) == 3 and {r["protocol"] for r in rows} == {"; ".join(overrides)}
    for stage in ["val/iter_000001", "val/iter_000002", "test"]:
        assert json.loads((out / stage / "evaluation.json").read_text())["overrides"] == overrides
        # The run was trained with eval_steps=1: x = 2 exists only under the override.
        assert [r["x"] for r in read_csv(out / stage / "adaptation.csv")] == ["0", "1", "2"]
    assert not (run_dir / "best_snapshot").exists()
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [*argv[:6], "--set", "algo.fast_lr=1.0"])
    assert module.main() == 2
    err = capsys.readouterr().err
    assert "eval --set only takes algo.eval_*" in err and len(err.strip().splitlines()) == 1
