"""experiments/best_snapshot.py: select a snapshot on validation tasks, report on test tasks."""

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
