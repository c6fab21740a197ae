"""Task distributions as plug-ins (the ``metarl.envs`` entry-point group).

A plug-in is "installed" here the way pip installs it, minus the copying: a
``*.dist-info`` directory with ``METADATA`` and ``entry_points.txt`` on a path added to
``sys.path``; ``importlib.metadata`` finds it exactly as it finds installed packages.
The example package ``examples/custom_env`` gets its entry points from its own
``pyproject.toml``, so the test checks what a user would install.
"""

import csv
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metarl.cli import main

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).parents[1]
EXAMPLE = REPO / "examples" / "custom_env"
TINY = [
    "--set", "algo.trials_per_iteration=8",
    "--set", "algo.hidden_size=8",
    "--set", "train.eval_tasks=4",
    "--set", "train.eval_every=2",
    "--set", "train.threads=1",
    "--no-progress",
]  # fmt: skip


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def listing(capsys, kind="envs"):
    code, out, _ = run([kind], capsys)
    assert code == 0
    return dict(line.split(None, 1) for line in out.strip().splitlines())


def write_dist_info(site: Path, name: str, entry_points: dict[str, dict[str, str]]) -> None:
    """What ``pip install`` writes for a package's metadata and entry points."""
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = []
    for group, points in entry_points.items():
        lines += [f"[{group}]", *(f"{k} = {v}" for k, v in points.items()), ""]
    (info / "entry_points.txt").write_text("\n".join(lines))


@pytest.fixture
def install(tmp_path, monkeypatch):
    """Makes a package and its entry points visible; everything is undone at teardown."""
    before = set(sys.modules)

    def _install(name, entry_points, source_dir=None):
        site = tmp_path / f"site-{name}"
        write_dist_info(site, name, entry_points)
        monkeypatch.syspath_prepend(str(site))  # also invalidates importlib caches
        if source_dir is not None:
            monkeypatch.syspath_prepend(str(source_dir))
        return site

    yield _install
    for module in set(sys.modules) - before:
        if module.split(".")[0] in ("tinyplug", "metarl_darkroom"):
            del sys.modules[module]
    importlib.invalidate_caches()


TINY_PLUGIN = """
from metarl.testing import CountingDistribution


class TinyCounting(CountingDistribution):
    description = "tiny counting plug-in for tests"
"""


def test_entry_point_plugins_are_listed_and_usable_by_name(install, tmp_path, capsys):
    assert "tiny-counting" not in listing(capsys)
    site = install(
        "tinyplug",
        {
            "metarl.envs": {
                "tiny-counting": "tinyplug:TinyCounting",
                "broken-plugin": "no_such_module_for_metarl:Env",
                "bandit": "tinyplug:TinyCounting",  # may not shadow a built-in
            },
            "metarl.algos": {"rl2-again": "agents.rl2:RL2"},
        },
    )
    (site / "tinyplug.py").write_text(TINY_PLUGIN)
    envs = listing(capsys)
    assert envs["tiny-counting"] == "tiny counting plug-in for tests"
    assert envs["broken-plugin"].startswith("(failed to load: cannot import")  # listing survives
    assert envs["bandit"].startswith("Bernoulli multi-armed bandit")
    assert "rl2-again" in listing(capsys, "algos")

    run_dir = tmp_path / "run"
    code, _, err = run(["train", "rl2-again", "tiny-counting", "--iterations", 1,
                        "--logdir", run_dir, *TINY], capsys)  # fmt: skip
    assert code == 0, err
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["environment"] == "tiny-counting"
    code, out, _ = run(["check-env", "tiny-counting"], capsys)
    assert code == 0 and out.strip() == "tiny-counting: OK"
    code, _, err = run(["train", "rl2", "broken-plugin", "--logdir", tmp_path / "b"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no_such_module_for_metarl" in err


@pytest.fixture
def darkroom(install):
    """The example plug-in, with the entry points its pyproject.toml declares."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]
    assert set(entry_points["metarl.envs"]) == {"dark-room", "dark-room-gym"}
    install(project["name"], entry_points, source_dir=EXAMPLE)
    return entry_points["metarl.envs"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_example_plugin_listed_with_descriptions(darkroom, capsys):
    envs = listing(capsys)
    assert envs["dark-room"].startswith("dark room: find a hidden goal cell")
    assert envs["dark-room-gym"].startswith("dark room as a plain gymnasium env")


@pytest.mark.parametrize("name", ["dark-room", "dark-room-gym"])
def test_example_trains_and_evaluates_by_entry_point(name, darkroom, tmp_path, capsys):
    run_dir = tmp_path / name
    args = ["train", "rl2", name, "--iterations", 2, "--logdir", run_dir, "--set", "env.size=4"]
    code, _, err = run([*args, "--set", "trial.episodes=2", *TINY], capsys)
    assert code == 0, err
    assert [r["iteration"] for r in read_csv(run_dir / "metrics.csv")] == ["0", "1"]
    code, _, err = run(["eval", run_dir, "--tasks", 8], capsys)
    assert code == 0, err
    learners = {r["learner"] for r in read_csv(run_dir / "eval" / "adaptation.csv")}
    summary = {r["learner"]: r for r in read_csv(run_dir / "eval" / "summary.csv")}
    if name == "dark-room":  # the batched form adds its oracle and exact optimum
        assert learners == {"rl2", "random", "oracle"}
        assert float(summary["oracle"]["normalised"]) == pytest.approx(1.0)
    else:
        assert learners == {"rl2", "random"}


def test_example_trains_by_file_path_and_evaluates_elsewhere(
    tmp_path, capsys, monkeypatch, darkroom
):
    target = "examples/custom_env/metarl_darkroom/darkroom.py:DarkRoomDistribution"
    monkeypatch.chdir(REPO)
    run_dir = tmp_path / "by-path"
    code, _, err = run(["train", "rl2", target, "--iterations", 1, "--logdir", run_dir,
                        "--set", "env.slip=0.1", *TINY], capsys)  # fmt: skip
    assert code == 0, err
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["environment"]
    assert recorded == f"{REPO / target}"  # absolute, so eval works from anywhere
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["eval", run_dir, "--tasks", 4], capsys)
    assert code == 0, err


@pytest.mark.parametrize("name", ["dark-room", "dark-room-gym"])
def test_example_passes_check_env(name, darkroom, capsys):
    for options in ([], ["--set", "env.slip=0.3", "--set", "env.size=3"]):
        code, out, err = run(["check-env", name, *options], capsys)
        assert code == 0 and out.strip() == f"{name}: OK", (out, err)
    code, out, _ = run(["check-env", name, "--set", "env.slip=2"], capsys)
    assert code == 1 and "slip must be a number in [0, 1], got 2" in out


@pytest.mark.slow
def test_pip_installed_example_appears_in_a_fresh_process(tmp_path):
    """The real thing: pip install the example into this venv, list it, uninstall."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = tmp_path / "build"  # pip builds in place; keep the repo clean
    subprocess.run(["cp", "-r", str(EXAMPLE), str(build)], check=True)
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(build)], check=True)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "metarl.cli", "envs"],
            capture_output=True, text=True, cwd=tmp_path, check=True,
        ).stdout  # fmt: skip
        assert "dark-room " in out and "dark-room-gym " in out
        proc = subprocess.run(
            [sys.executable, "-m", "metarl.cli", "train", "rl2", "dark-room", "--iterations", "1",
             "--logdir", str(tmp_path / "r"), *TINY],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    finally:
        subprocess.run([*pip, "uninstall", "-y", "metarl-darkroom"], check=True)
