"""Run every `>>>` example in kernels/README.md, so the learner's page cannot drift from the code."""

from __future__ import annotations

import doctest
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "kernels" / "README.md"


def test_kernels_readme_examples(monkeypatch):
    # the page's snippets use paths relative to the repository root, as a reader would run them
    monkeypatch.chdir(ROOT)
    result = doctest.testfile(
        os.fspath(README),
        module_relative=False,
        optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
        verbose=False,
        report=True,
    )
    assert result.failed == 0, f"{result.failed} of {result.attempted} README examples failed"
    assert result.attempted >= 5
