"""Research at scale (issue 16): tasks and executors, a basket with a grid, the HTML report.

The executors are checked with cheap task functions (tests/research_tasks.py) for the mechanics
(resume, a worker killed once and retried, a worker that always dies, a task that raises), and
with the real basket task for the claim that matters: the same seeds give bit-identical task
results and reports in-process, on 2 local processes and on a local Ray instance.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from research_tasks import square
from test_evaluate import TINY, echo_market

from cli import main
from numpyconvnext.evaluate import EvaluationConfig
from numpyconvnext.research import basket as basket_module
from numpyconvnext.research.basket import evaluate_basket, strip_volatile, task_key
from numpyconvnext.research.executors import TaskStore, run_tasks
from numpyconvnext.research.grid import apply_overrides, parse_grid
from numpyconvnext.research.html import BAND_BAD, BAND_GOOD, BAND_MIXED, verdict_colour

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ("AAA", "BBB")
GRID = [{"window": 32}, {"window": 64}]
BASKET_CONFIG = EvaluationConfig(folds=2, **{**TINY, "epochs": 1, "bootstrap_samples": 100},
                                 funding_rate=0.0001)


def small_basket(n_bars: int = 1500):
    candles = {s: echo_market(n_bars, seed=i + 1) for i, s in enumerate(SYMBOLS)}
    sources = {s: {"kind": "test", "symbol": s, "interval": "1h"} for s in SYMBOLS}
    return candles, sources


def run_basket(out: Path, **options):
    candles, sources = small_basket()
    return evaluate_basket(candles, sources, BASKET_CONFIG, GRID, out, report_dir=out / "report",
                           quiet=True, command="test", trials_log=out / "trials.jsonl", **options)


def task_results(report_dir: Path) -> dict:
    store = TaskStore(report_dir / basket_module.TASK_DIR)
    keys = [task_key(i, k) for i in range(len(GRID)) for k in (1, 2)]
    return {key: store.load(key)["result"] for key in keys}


# --- executors with cheap tasks ----------------------------------------------------------------------


def misbehaving_tasks(tmp_path: Path) -> dict:
    return {"t0": {"x": 0}, "t1": {"x": 1, "die_once": str(tmp_path / "died")},
            "t2": {"x": 2, "always_die": True}, "t3": {"x": 3, "fail": True}, "t4": {"x": 4}}


def check_misbehaving_run(summary, store: TaskStore, tmp_path: Path, t2_runs=(2,)) -> None:
    assert (tmp_path / "died").exists()  # t1 really killed its worker once ...
    assert sorted(summary.ran) == ["t0", "t1", "t4"]  # ... was retried and finished
    failed = {f.key: f for f in summary.failed}
    assert sorted(failed) == ["t2", "t3"]  # the others are not lost
    assert failed["t2"].attempts in t2_runs and "died 2 times" in failed["t2"].error
    # a raising task is not retried for raising; it runs a second time only when a worker
    # crash took it down with the pool before it could raise
    assert failed["t3"].attempts in (1, 2) and "fails on purpose" in failed["t3"].error
    for key, x in (("t0", 0), ("t1", 1), ("t4", 4)):
        assert store.load(key)["result"] == {"value": x * x + 7, "threads": 1, "blas_threads": 1}
    assert not store.has("t2") and not store.has("t3")


def test_local_pool_retries_a_killed_worker_once_and_keeps_the_others(tmp_path):
    store = TaskStore(tmp_path / "store")
    summary = run_tasks(square, misbehaving_tasks(tmp_path), {"offset": 7}, store, jobs=2, quiet=True)
    # t2 runs 3 times when its first crash took another task with it (that one does not count)
    check_misbehaving_run(summary, store, tmp_path, t2_runs=(2, 3))
    # a rerun skips what is stored and tries the failed ones again (now well behaved)
    fixed = {**misbehaving_tasks(tmp_path), "t2": {"x": 2}, "t3": {"x": 3}}
    again = run_tasks(square, fixed, {"offset": 7}, store, jobs=2, quiet=True)
    assert sorted(again.skipped) == ["t0", "t1", "t4"] and sorted(again.ran) == ["t2", "t3"]
    assert not again.failed and store.load("t3")["result"]["value"] == 16


@pytest.mark.parametrize("own_crash,finishes", [(False, True), (True, False)])
def test_a_bystander_of_a_crash_keeps_its_retry(tmp_path, own_crash, finishes):
    """A task whose pool crashed while others ran may not have caused it: alone, it may still
    die once of its own and be retried (a clean-clone CI run saw t1 failed for another's crash)."""
    from numpyconvnext.research.executors import _retry_alone

    done, failures = {}, {}
    todo = {"t1": {"x": 1, "die_once": str(tmp_path / "died")}}
    _retry_alone(square, todo, {"offset": 7}, ["t1"], own_crash, done.__setitem__,
                 lambda key, error, runs: failures.__setitem__(key, (error, runs)))
    assert (tmp_path / "died").exists()
    if finishes:  # died alone once (its first own death), then finished on the retry
        assert done["t1"]["result"]["value"] == 8 and not failures
    else:  # the pool's crash was its own: dying alone again is the second death
        assert failures["t1"] == ("its worker process died 2 times (killed or out of memory)", 2)


def test_local_pool_survives_a_worker_dying_between_wait_and_submit(tmp_path, monkeypatch):
    """A worker that dies after a wait() returned makes the next submit() raise
    BrokenProcessPool (a race a clean-clone CI run hit): that task must go back to the queue."""
    from concurrent.futures.process import BrokenProcessPool

    from numpyconvnext.research import executors

    real_pool, submits = executors._pool, []

    class DiesOnThirdSubmit:
        def __init__(self, pool):
            self.pool = pool

        def submit(self, *args):
            submits.append(args)
            if len(submits) == 3:
                raise BrokenProcessPool("a worker died since the last wait")
            return self.pool.submit(*args)

        def shutdown(self, **options):
            self.pool.shutdown(**options)

    monkeypatch.setattr(executors, "_pool", lambda shared, workers: DiesOnThirdSubmit(
        real_pool(shared, workers)))
    store = TaskStore(tmp_path / "store")
    tasks = {f"t{i}": {"x": i} for i in range(4)}
    summary = run_tasks(square, tasks, {"offset": 7}, store, jobs=2, quiet=True)
    assert len(submits) == 5  # the refused task was submitted again, to a fresh pool
    assert sorted(summary.ran) == ["t0", "t1", "t2", "t3"] and not summary.failed
    assert [store.load(f"t{i}")["result"]["value"] for i in range(4)] == [7, 8, 11, 16]


def test_in_process_runs_single_threaded_and_reports_a_failing_task(tmp_path):
    from numpyconvnext import threads

    store = TaskStore(tmp_path / "store")
    tasks = {"a": {"x": 2}, "b": {"x": 3, "fail": True}}
    before = threads._requested
    summary = run_tasks(square, tasks, {"offset": 0}, store, jobs=1, quiet=True)
    assert threads._requested == before  # the caller's setting is restored
    assert summary.ran == ["a"] and [f.key for f in summary.failed] == ["b"]
    assert store.load("a")["result"] == {"value": 4, "threads": 1, "blas_threads": 1}
    with pytest.raises(ValueError, match="unknown executor"):
        run_tasks(square, tasks, {}, store, executor="slurm")


def test_progress_bar_counts_tasks_with_an_eta(tmp_path, capsys):
    run_tasks(square, {f"t{i}": {"x": i} for i in range(3)}, {"offset": 0},
              TaskStore(tmp_path / "s"), jobs=1, label="tasks")
    err = capsys.readouterr().err
    assert "tasks [" in err and "3/3" in err and "eta" in err


# --- grid ---------------------------------------------------------------------------------------------


def test_grid_is_every_combination_and_bad_grids_name_the_key():
    grid = parse_grid({"window": [64, 128], "horizon": 12, "confidence": ["auto", 0.5]})
    assert grid == [{"window": 64, "horizon": 12, "confidence": "auto"},
                    {"window": 64, "horizon": 12, "confidence": 0.5},
                    {"window": 128, "horizon": 12, "confidence": "auto"},
                    {"window": 128, "horizon": 12, "confidence": 0.5}]
    config = apply_overrides(EvaluationConfig(), grid[1])
    assert config.window == 64 and config.strategy.confidence == 0.5
    assert apply_overrides(EvaluationConfig(), grid[0]).strategy.confidence is None
    for bad, message in (({"windows": 64}, "unknown setting 'windows'"),
                         ({"window": []}, "window has no values"),
                         ({"window": "64"}, "window = '64' is not an integer"),
                         ({"confidence": 2}, "confidence = 2")):
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_grid(bad)


# --- the basket ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs1")
    return out, run_basket(out, jobs=1)


def test_basket_report_selects_on_validation_and_counts_every_configuration(in_process):
    out, result = in_process
    report = result.report
    assert result.tasks_done == result.tasks_total == 4
    # each fold's configuration is the best on validation (never a test figure)
    for row in report["selection"]:  # ties: the lower validation loss
        best = max(range(len(GRID)), key=lambda i: (row["scores"][i], -row["best_val_loss"][i]))
        assert row["chosen"] == best
    # every configuration (and each confidence threshold tried) is a logged trial, per symbol and
    # for the portfolio; N counts them all
    logged = [json.loads(line) for line in (out / "trials.jsonl").read_text().splitlines()]
    basket_trials = [e for e in logged if e["dataset"].startswith("BASKET[AAA+BBB]")]
    assert len(basket_trials) == len(GRID) + 1  # each configuration, and the selected one
    assert report["trials"]["n_trials"] == len(GRID) + 1
    per_symbol = [e for e in logged if e["dataset"] == "AAA|linear|1h"]
    assert len(per_symbol) == len(GRID) * 7 + 1  # each configuration + its 6 thresholds, selected
    assert report["symbols_reports"]["AAA"]["trials"]["n_trials"] == len(per_symbol)
    assert "2 configuration(s) x 2 folds = 4 trainings" in report["selection_text"]
    # the planted pattern is found in the pool and traded per symbol
    assert report["verdict"]["beats_all_baselines"]
    for symbol in SYMBOLS:
        model = report["symbols_reports"][symbol]["pooled"]["model"]
        assert model["sharpe"] > report["symbols_reports"][symbol]["pooled"]["buy_and_hold"]["sharpe"]
        assert (result.report_dir / "symbols" / symbol / "report.md").exists()


def test_portfolio_is_the_equal_weight_mean_of_the_symbols(in_process):
    _, result = in_process
    import pandas as pd

    returns = pd.read_csv(result.report_dir / "returns.csv")
    mean = (returns["AAA_model"] + returns["BBB_model"]) / 2
    np.testing.assert_allclose(returns["portfolio_model"], mean, rtol=0, atol=1e-15)
    pooled = result.report["portfolio"]["pooled"]["model"]
    assert pooled["total_return"] == pytest.approx(float(np.prod(1 + mean) - 1), rel=1e-12)
    assert pooled["direction_accuracy"] is None  # per symbol only
    symbols = result.report["symbols_reports"]
    assert pooled["trades"] == sum(symbols[s]["pooled"]["model"]["trades"] for s in SYMBOLS)


def test_two_processes_give_bit_identical_tasks_and_report(in_process, tmp_path):
    out1, first = in_process
    second = run_basket(tmp_path, jobs=2)
    assert second.run.executor == "local" and second.run.workers == 2
    assert task_results(second.report_dir) == task_results(first.report_dir)
    assert strip_volatile(_without_paths(second.report)) == strip_volatile(_without_paths(first.report))


def _without_paths(report: dict) -> dict:
    """The report with the run folder and trials-log paths (which differ between the runs
    compared) removed."""
    text = json.dumps(report)
    text = re.sub(r'"text": "N = [^"]*"', '"text": ""', text)
    return json.loads(text)


def test_a_rerun_skips_finished_tasks_and_resumes_after_a_failure(tmp_path):
    candles, sources = small_basket()
    calls = []

    def failing_once(spec, shared):  # jobs=1 runs in this process, so a closure is fine
        calls.append((spec["configuration"], spec["fold"]))
        if (spec["configuration"], spec["fold"]) == (1, 2) and len(calls) <= 4:
            raise RuntimeError("simulated crash in one task")
        return basket_module.basket_task(spec, shared)

    options = dict(report_dir=tmp_path / "r", quiet=True, command="test",
                   trials_log=tmp_path / "trials.jsonl", jobs=1, task_function=failing_once)
    broken = evaluate_basket(candles, sources, BASKET_CONFIG, GRID, tmp_path, **options)
    assert broken.interrupted and broken.tasks_done == 3
    assert [f.key for f in broken.failed] == [task_key(1, 2)]
    assert not (tmp_path / "r" / "report.md").exists() and not (tmp_path / "trials.jsonl").exists()
    fixed = evaluate_basket(candles, sources, BASKET_CONFIG, GRID, tmp_path, **options)
    assert calls[4:] == [(1, 2)]  # only the failed task ran again
    assert fixed.report is not None and (tmp_path / "r" / "report.html").exists()
    with pytest.raises(ValueError, match="other settings"):
        evaluate_basket(candles, sources, BASKET_CONFIG, [{"window": 32}], tmp_path, **options)


# --- Ray ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray():
    try:
        import ray
    except ImportError:
        pytest.skip('Ray is not installed (pip install -e ".[cluster]"): Ray executor not tested')
    paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}})
    yield ray
    ray.shutdown()


def test_ray_gives_bit_identical_tasks_and_report(local_ray, in_process, tmp_path):
    _, first = in_process
    result = run_basket(tmp_path, executor="ray")
    assert result.run.executor == "ray" and result.run.workers == 2
    assert task_results(result.report_dir) == task_results(first.report_dir)
    assert strip_volatile(_without_paths(result.report)) == strip_volatile(_without_paths(first.report))


def test_ray_retries_a_killed_worker_once_and_keeps_the_others(local_ray, tmp_path):
    store = TaskStore(tmp_path / "store")
    summary = run_tasks(square, misbehaving_tasks(tmp_path), {"offset": 7}, store, executor="ray",
                        quiet=True)
    check_misbehaving_run(summary, store, tmp_path)
    again = run_tasks(square, misbehaving_tasks(tmp_path), {"offset": 7}, store, executor="ray",
                      quiet=True)
    assert sorted(again.skipped) == ["t0", "t1", "t4"]


# --- the HTML report -----------------------------------------------------------------------------------


def test_html_report_is_self_contained(in_process):
    _, result = in_process
    page = (result.report_dir / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    # nothing is fetched: no src= at all, and every href= is a relative link to a report file
    assert not re.search(r"\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"@import", page)
    for link in re.findall(r'href\s*=\s*"([^"]*)"', page, re.IGNORECASE):
        assert not re.match(r"^[a-z]+:|^//", link, re.IGNORECASE), link
    assert page.count('class="sortable"') == 3  # portfolio, per symbol, per configuration
    assert page.count("<svg") == 2 and "<script>" in page
    assert result.report["verdict"]["text"].split(".")[0] in page


def test_verdict_colours():
    assert verdict_colour({"beats_all_baselines": True, "deflated_sharpe": 0.99}) == BAND_GOOD
    assert verdict_colour({"beats_all_baselines": True, "deflated_sharpe": 0.5}) == BAND_MIXED
    assert verdict_colour({"beats_all_baselines": False, "deflated_sharpe": 0.99}) == BAND_BAD


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_html_report_renders_in_headless_chromium(in_process, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install chromium): the browser "
                    "rendering of report.html is not checked")
    _, result = in_process
    colour = verdict_colour(result.report["verdict"])
    shot = tmp_path / "page.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
               "--window-size=1280,900", (result.report_dir / "report.html").as_uri()]
    subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert shot.exists(), "Chromium wrote no screenshot"
    pixels = _png_pixels(shot)
    assert pixels.shape[0] >= 800 and pixels.shape[1] >= 1200
    assert len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 50  # not blank
    band = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    top = pixels[:40, :, :3].reshape(-1, 3).astype(int)  # the verdict band at the very top
    assert np.mean(np.all(np.abs(top - band) <= 3, axis=1)) > 0.5
    # the equity chart: pixels of the first line colour somewhere below the band
    line = np.array([0x1F, 0x77, 0xB4])
    rest = pixels[40:, :, :3].reshape(-1, 3).astype(int)
    assert np.sum(np.all(np.abs(rest - line) <= 12, axis=1)) > 100


def _png_pixels(path: Path) -> np.ndarray:
    """The PNG's pixels [H, W, channels]: Pillow when installed, else a decoder of 8-bit RGB/RGBA
    non-interlaced PNGs (what Chromium writes) with zlib only."""
    import struct
    import zlib

    try:
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except ImportError:
        pass
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0
    channels = 3 if colour_type == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), dtype=np.uint8)
    raw = raw.reshape(height, 1 + width * channels)
    out = np.zeros((height, width * channels), dtype=np.int32)
    for y in range(height):
        kind, row = raw[y, 0], raw[y, 1:].astype(np.int32)
        prior = out[y - 1] if y else np.zeros_like(row)
        if kind == 0:
            out[y] = row
        elif kind == 2:
            out[y] = (row + prior) & 255
        else:
            line = np.zeros_like(row)
            for x in range(len(row)):
                left = line[x - channels] if x >= channels else 0
                up, corner = prior[x], (prior[x - channels] if x >= channels else 0)
                if kind == 1:
                    predictor = left
                elif kind == 3:
                    predictor = (left + up) // 2
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                line[x] = (row[x] + predictor) & 255
            out[y] = line
    return out.reshape(height, width, channels).astype(np.uint8)


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_basket_errors_are_one_line(tmp_path):
    runner = CliRunner()
    grid = tmp_path / "grid.toml"
    grid.write_text("windows = [64]\n")
    cases = [
        (["evaluate", "--source", "synthetic", "--symbols", "BTCUSDT,ETHUSDT", "--grid", str(grid)],
         "unknown setting 'windows'"),
        (["evaluate", "--source", "synthetic", "--jobs", "2"], "apply to a basket"),
        (["evaluate", "--source", "synthetic", "--symbols", "BTCUSDT,BTCUSDT"], "named twice"),
        (["evaluate", "--symbols", "BTCUSDT,ETHUSDT", "--address", "auto"], "give --executor ray"),
        (["evaluate", "--symbols", "BTCUSDT,ETHUSDT", "--executor", "ray", "--jobs", "2"],
         "--jobs is for --executor local"),
    ]
    for args, message in cases:
        result = runner.invoke(main, [*args, "--out", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_cli_basket_from_files(tmp_path):
    candles, _ = small_basket(1300)
    paths = []
    for symbol, frame in candles.items():
        path = tmp_path / f"{symbol}USDT_1h.csv"
        frame.to_csv(path, index=False)
        paths += ["--data", str(path)]
    args = ["evaluate", *paths, "--folds", "2", "--epochs", "1", "--window", "32", "--horizon", "1",
            "--model", "atto", "--jobs", "1", "--confidence", "0.4", "--quiet",
            "--trials-log", str(tmp_path / "trials.jsonl"), "--out", str(tmp_path / "out")]
    result = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True,
                            text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "equal-weight portfolio" in result.stdout and "report.html" in result.stdout
    report_dir = next((tmp_path / "out").iterdir())
    report = json.loads((report_dir / "report.json").read_text())
    assert report["symbols"] == ["AAAUSDT", "BBBUSDT"]
    assert report["command"].startswith("python cli.py evaluate --data")
