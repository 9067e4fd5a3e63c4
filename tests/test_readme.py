"""The README's promises: .ci/run runs its test command, and every `python cli.py ...` line it
shows is a command the CLI accepts (its --help parses)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main

ROOT = Path(__file__).resolve().parents[1]
READMES = ["README.md", "README.ru.md", "readme.simple.md", "readme.simple.ru.md"]
TEST_COMMAND = 'pip install -e ".[test]" && pytest'
MAIN_COMMAND = "pip install -e . && python cli.py train"


def cli_lines(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        match = re.search(r"python cli\.py[^`|#\n]*", line)
        if match:
            lines.append(match.group(0).strip().rstrip(".,;:)"))
    return lines


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert TEST_COMMAND in readme and MAIN_COMMAND in readme
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert TEST_COMMAND in commands


@pytest.mark.parametrize("name", [n for n in READMES if (ROOT / n).exists()])
def test_every_cli_line_parses(name):
    lines = cli_lines((ROOT / name).read_text())
    assert lines, f"{name} shows no python cli.py command"
    runner = CliRunner()
    for line in lines:
        words = shlex.split(line.replace("...", ""))[2:]
        command = [w for w in words if not w.startswith("<")]
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0, f"{name}: `{line}` is not accepted: {result.output}"
        # every option shown must be one the command knows
        known = result.output
        for word in command:
            if word.startswith("--"):
                assert word.split("=")[0] in known, f"{name}: `{line}`: unknown option {word}"


def test_all_four_readmes_exist():
    for name in READMES:
        assert (ROOT / name).exists(), name
