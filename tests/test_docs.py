"""The reference pages in docs/ against the code: every settings field with its true default,
the output columns a real run writes, and the API page's examples run as a doctest."""

from __future__ import annotations

import dataclasses
import doctest
import os
import re
from pathlib import Path

import pytest

from numpyconvnext.config import TrainingConfig
from numpyconvnext.evaluate import EvaluationConfig
from numpyconvnext.trading.strategy import Strategy

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def section(text: str, heading: str) -> str:
    """The text under `## heading` up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"no section '## {heading}'"
    return match.group(1)


def table_rows(text: str) -> dict[str, str]:
    """`| `name` | `default` | meaning |` rows: name -> default as written."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| `([^`]*)` \|", text, re.M)}


def documented_default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        return f"{field.default_factory.__name__}()"
    return repr(field.default)


@pytest.mark.parametrize("cls", [TrainingConfig, Strategy, EvaluationConfig], ids=lambda c: c.__name__)
def test_every_settings_field_is_documented_with_its_default(cls):
    rows = table_rows(section((DOCS / "configuration.md").read_text(), cls.__name__))
    fields = {f.name: documented_default(f) for f in dataclasses.fields(cls)}
    assert sorted(set(fields) - set(rows)) == [], f"{cls.__name__} fields missing from docs/configuration.md"
    assert sorted(set(rows) - set(fields)) == [], f"docs/configuration.md lists fields {cls.__name__} lacks"
    for name, default in fields.items():
        assert rows[name] == default, f"{cls.__name__}.{name}: the page says {rows[name]}, the code {default}"


def test_the_example_run_toml_is_a_valid_config(tmp_path):
    text = (DOCS / "configuration.md").read_text()
    [toml] = re.findall(r"```toml\n(.*?)```", text, re.S)
    (tmp_path / "run.toml").write_text(toml)
    config = TrainingConfig.from_file(tmp_path / "run.toml")
    assert config.variant == "pico" and config != TrainingConfig()


def test_api_page_examples(monkeypatch, tmp_path):
    """docs/api.md's `>>>` examples, run in a scratch folder (they write a model file there)."""
    monkeypatch.chdir(tmp_path)
    result = doctest.testfile(os.fspath(DOCS / "api.md"), module_relative=False,
                              optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
                              verbose=False, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docs/api.md examples failed"
    assert result.attempted >= 10


def test_every_trade_column_is_documented():
    from numpyconvnext.trading.backtest import TRADE_COLUMNS

    text = section((DOCS / "outputs.md").read_text(), "trades.csv")
    missing = [name for name in TRADE_COLUMNS if f"`{name}`" not in text]
    assert missing == [], f"docs/outputs.md does not describe trades.csv columns {missing}"


def test_every_live_field_is_documented():
    import inspect

    from numpyconvnext.trading import live

    keys = re.findall(r'^        "(\w+)":', inspect.getsource(live.signal_record), re.M)
    assert len(keys) >= 10
    text = section((DOCS / "outputs.md").read_text(), "The live JSON line")
    assert [k for k in keys if f"`{k}`" not in text] == []


def test_the_five_line_recipe_of_data_md(monkeypatch, tmp_path):
    """docs/data.md's recipe, run as written on a CSV and a model at the paths it names."""
    import contextlib
    import io

    from numpyconvnext.config import TrainingConfig
    from numpyconvnext.data import save_candles, synthetic_candles
    from numpyconvnext.workflow import train_run

    monkeypatch.chdir(tmp_path)
    candles = synthetic_candles(1500, seed=4)
    save_candles(candles, "my_candles.csv")
    source = {"kind": "synthetic", "symbol": "SYN", "interval": "1h", "seed": 4}
    result = train_run(candles, source, TrainingConfig(epochs=1, window=32, horizon=4),
                       out_dir="runs", quiet=True)
    (tmp_path / "models" / "my_run").mkdir(parents=True)
    (tmp_path / "models" / "my_run" / "model.npz").write_bytes(result.best_path.read_bytes())

    [recipe] = re.findall(r"```python\n(.*?)```", (DOCS / "data.md").read_text(), re.S)
    assert len([line for line in recipe.splitlines() if line.strip()]) == 5
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(recipe, "docs/data.md", "exec"), namespace)
    decisions = namespace["decisions"]
    assert len(decisions) > 100 and "timestamp" in out.getvalue() and "3 rows" in out.getvalue()
