"""experiments/plot_runs.py draws a run's meta-training curve from its metrics.csv."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_module():
    spec = importlib.util.spec_from_file_location(
        "plot_runs", ROOT / "experiments" / "plot_runs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_run_reads_metrics_and_writes_png(tmp_path):
    plot_runs = load_module()
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
