"""experiments/plot_runs.py draws a run's meta-training curve from its metrics.csv."""

from helpers import load_experiment_script


def test_plot_run_reads_metrics_and_writes_png(tmp_path):
    plot_runs = load_experiment_script("plot_runs")
    run = tmp_path / "bandit_run"
    run.mkdir()
    lines = ["iteration,meta_train/return,meta_test/return,time/elapsed_s"]
    lines += [f"{i},{5 + i / 10},{'' if i % 5 else 6 + i / 10},{i * 2.0}" for i in range(20)]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")
    assert plot_runs.column(plot_runs.read_metrics(run / "metrics.csv"), "meta_test/return")[0] == [
        0,
        5,
        10,
        15,
    ]
    assert plot_runs.moving_average([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]
    out = plot_runs.plot_run(run, tmp_path / "plots")
    assert out == tmp_path / "plots" / "bandit_run.png" and out.stat().st_size > 0
    assert plot_runs.plot_run(tmp_path / "missing", tmp_path / "plots") is None


def test_fewshot_tables_read_eval_outputs(tmp_path, monkeypatch):
    tables = load_experiment_script("fewshot_tables")
    monkeypatch.setattr(tables, "RUNS", tmp_path)
    run = tmp_path / "omniglot_5w1s_protonet"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.csv").write_text(
        "learner,mean_total,ci_low,ci_high,normalised,n_tasks\nprotonet,0.98,0.97,0.99,,1000\n"
    )
    (run / "run.json").write_text('{"elapsed_s": 600, "iteration": 400}')
    sin = tmp_path / "sinusoid_5shot_maml" / "eval"
    sin.mkdir(parents=True)
    (sin / "adaptation.csv").write_text(
        "learner,x,mean_return,ci_low,ci_high,n_tasks\nmaml,1,0.5,0.4,0.6,1000\n"
        "maml,10,inf,nan,nan,1000\n"
    )
    omniglot = tables.omniglot_tables()
    assert "| protonet | 98.00 ± 1.00 (1000 tasks) | ≥ 98% | 98.8 | 10.0 min, 400 it. |" in omniglot
    assert "| maml | not run |" in omniglot
    sinusoid = tables.sinusoid_table()
    assert "| 5 | 0.500 ± 0.100 | not run | inf | not run |" in sinusoid
