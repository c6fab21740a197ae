"""Every docstring example in the three packages runs and prints what it says.

Modules are discovered by scanning the sources for ``>>>``, so a new example is checked
without registering it here.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("metarl", "envs", "agents")


def _modules_with_examples() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                parts = path.relative_to(ROOT).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                names.append(".".join(parts))
    return names


MODULES = _modules_with_examples()


def test_the_scan_finds_the_known_examples():
    # Guards the scan itself: if it silently found nothing, every case below would vanish.
    assert {"metarl.collect", "agents.functional", "agents.snail"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, verbose=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has '>>>' in its source but no example ran"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
