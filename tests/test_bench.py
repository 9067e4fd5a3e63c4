"""Smoke test of the benchmark script: it runs (our framework only) and writes valid JSON.

Timings are never asserted (CI machines are small and shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--variants", "atto", "--no-torch",
         "--no-kernels", "--threads", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    ours = results["variants"]["atto"]["ours"]
    assert {"b1_ms", "b256_samples_s", "train_samples_s", "train_peak_rss_mb"} <= set(ours)
    assert "torch" not in results["variants"]["atto"]
    assert "| atto |" in proc.stdout
