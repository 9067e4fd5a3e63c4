"""`python cli.py` and the installed `numpyconvnext` console script are one program: the script
named in pyproject.toml is importable from what the package installs and runs the same group."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def entry_point() -> tuple[str, str]:
    module, function = PYPROJECT["project"]["scripts"]["numpyconvnext"].split(":")
    return module, function


def test_the_entry_point_is_installed_with_the_package():
    module, _ = entry_point()
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert module in setuptools.get("py-modules", []) or module.split(".")[0] in setuptools["packages"]


def test_the_entry_point_is_the_cli_group():
    module, function = entry_point()
    run = getattr(importlib.import_module(module), function)
    cli = importlib.import_module("cli")
    assert run is cli.run and callable(run)


def test_python_cli_py_help(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], cwd=tmp_path,
                            env=child_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "backtest" in result.stdout


def test_entry_point_function_help(tmp_path):
    """What the console script does: import the entry point's module and call the function."""
    module, function = entry_point()
    code = (f"import sys; from {module} import {function}; "
            f"sys.argv = ['numpyconvnext', '--help']; {function}()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Usage: numpyconvnext" in result.stdout and "train" in result.stdout


@pytest.mark.skipif(shutil.which("numpyconvnext") is None,
                    reason="the numpyconvnext script is not on PATH (package not installed here)")
def test_installed_console_script_help(tmp_path):
    result = subprocess.run(["numpyconvnext", "--help"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "backtest" in result.stdout
