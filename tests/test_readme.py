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
MAIN_COMMAND = 'pip install -e ".[plot]" && python cli.py train'


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


def test_exactly_two_set_up_commands_after_the_virtual_environment():
    """The front page: clone + venv first, then the main command and the test command, each once."""
    readme = (ROOT / "README.md").read_text()
    venv = "python3 -m venv .venv && . .venv/bin/activate"
    assert venv in readme and readme.index(venv) < readme.index(MAIN_COMMAND)
    pip_lines = [line.strip() for line in readme.splitlines() if line.strip().startswith("pip install")]
    assert pip_lines == [MAIN_COMMAND, TEST_COMMAND]


def supported_pythons() -> tuple[str, str]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = sorted(int(c.rsplit(".", 1)[1]) for c in project["classifiers"]
                       if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    assert versions == list(range(versions[0], versions[-1] + 1)), "classifiers skip a version"
    assert project["requires-python"] == f">=3.{versions[0]}"
    return f"3.{versions[0]}", f"3.{versions[-1]}"


@pytest.mark.parametrize("name", READMES)
def test_supported_pythons_are_stated_as_in_pyproject(name):
    oldest, newest = supported_pythons()
    assert f"Python {oldest}–{newest}" in (ROOT / name).read_text()


def test_front_page_shape():
    readme = (ROOT / "README.md").read_text()
    assert "## Contents" in readme and len(readme.splitlines()) <= 320  # "about 300"
    assert readme.index("## Does it make money?") < readme.index("## Set up")
    for phrase in ("this machine", "../shared", "/work/"):
        assert phrase not in readme, phrase


DOC_PAGES = [*READMES, "kernels/README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]


@pytest.mark.parametrize("name", DOC_PAGES)
def test_relative_links_resolve(name):
    path = ROOT / name
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{name} links to missing {target}"


def test_all_four_readmes_exist():
    for name in READMES:
        assert (ROOT / name).exists(), name
