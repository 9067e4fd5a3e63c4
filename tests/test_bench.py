"""Smoke test of the benchmark script: it runs (our framework only) and writes valid JSON.

Timings are never asserted (CI machines are small and shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "bench") not in sys.path:  # the tests import bench/measure.py as `measure`
    sys.path.insert(0, str(ROOT / "bench"))
# a child may compile every kernel first (an empty Numba cache): about a minute on an idle
# 2-core machine, several times that on a busy one
CHILD_TIMEOUT_S = 900


def _load_bench(name: str):
    """bench/<name>.py as a module (bench/ is a folder of scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_quick_runs_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--variants", "atto", "--no-torch",
         "--no-kernels", "--threads", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    ours = results["variants"]["atto"]["ours"]
    assert {"b1_ms", "b256_samples_s", "train_samples_s", "train_peak_rss_mb"} <= set(ours)
    assert "torch" not in results["variants"]["atto"]
    assert results["variants"]["atto"]["ours_bf16"]["b1_ms"] > 0  # model.frozen("bfloat16")
    assert "| atto |" in proc.stdout
    machine = results["machine"]  # every result says where it was measured
    assert {"cpu", "isa", "cpu_count", "blas", "numba", "numba_threading_layer"} <= set(machine)
    assert {"internal_api", "architecture"} <= set(machine["blas"])
    assert "Machine: " in proc.stdout and "sgemm rate" in proc.stdout
    assert results["fma_peak_gflops"] > 0 and "FMA peak on 1 threads" in proc.stdout


def test_rounds_combine_to_medians_and_per_round_ratios():
    bench = _load_bench("run")
    rounds = [
        {"ours": {"b1_ms": 2.0, "train_peak_rss_mb": 300.0}, "ort": {"b1_ms": 3.0}},
        {"ours": {"b1_ms": 4.0, "train_peak_rss_mb": 310.0}, "ort": {"b1_ms": 4.0}},
        {"ours": {"b1_ms": 1.0, "train_peak_rss_mb": 305.0}, "ort": {"b1_ms": 3.0}},
    ]
    entry = bench.combine_rounds(rounds)
    assert entry["ours"]["b1_ms"] == 2.0 and entry["ort"]["b1_ms"] == 3.0
    assert entry["ours"]["train_peak_rss_mb"] == 310.0  # the largest peak, not a median
    # per-round ratios 1.5, 1.0, 3.0 -> 1.5
    assert entry["ratios"]["ort_over_ours_b1"] == 1.5
    rounds[0]["ort"]["b1_ms"] = 10.0  # ratios 5, 1, 3 -> 3; medians 2 and 4 would give 2
    assert bench.combine_rounds(rounds)["ratios"]["ort_over_ours_b1"] == 3.0
    assert bench.combine_rounds(rounds)["ratios"]["ours_over_torch_train"] is None


def test_batch1_ab_runs_configurations_in_turn():
    proc = subprocess.run(
        [sys.executable, "bench/batch1_ab.py", "--variants", "atto", "--rounds", "2",
         "--config", "a:NUMBA_NUM_THREADS=1",
         "--config", "b:NUMBA_NUM_THREADS=1,BENCH_PRECISION=bfloat16"],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].split()[0] == "a:" and lines[2].split()[0] == "b:"
    assert "atto" in lines[2] and lines[1].endswith("(1.000x)")  # a / a is 1 in every round
    assert lines[-1].startswith("Reproduce: python bench/batch1_ab.py")


def test_cohabit_skips_cleanly_without_torch():
    import os

    proc = subprocess.run([sys.executable, "bench/cohabit.py", "--rounds", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, BENCH_NO_TORCH="1"))
    assert proc.returncode == 0, proc.stderr
    assert "nothing to compare" in proc.stdout and "Reproduce: python bench/cohabit.py" in proc.stdout


def test_summary_groups_ratios_by_machine(tmp_path):
    bench = _load_bench("run")
    amd = {"machine": {"cpu": "AMD EPYC", "isa": ["avx2"]}, "threads": 2, "variants": {
        "pico": {"ours": {"b1_ms": 2.0}, "ratios": {"ort_over_ours_b1": 0.5,
                                                     "ort_over_ours_bf16_b1": 1.1,
                                                     "ours_over_torch_train": 1.2}}}}
    old = {"threads": 1, "variants": {"atto": {"ours": {"b1_ms": 2.0, "train_samples_s": 30.0},
                                                "ort": {"b1_ms": 3.0},
                                                "torch": {"train_samples_s": 20.0}}}}
    limited = {"machine": {"cpu": "AMD EPYC", "isa": ["avx2"],
                           "isa_limits": {"NUMBA_CPU_NAME": "haswell"}}, "threads": 2,
               "variants": {"atto": {"ours": {}, "ratios": {"ours_over_torch_train": 2.0}}}}
    (tmp_path / "a.json").write_text(json.dumps(amd))
    (tmp_path / "b.json").write_text(json.dumps(old))
    (tmp_path / "c.json").write_text(json.dumps(limited))
    text = bench.summary([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"])
    lines = text.splitlines()
    assert lines[0] == "AMD EPYC (avx2)"
    assert ("pico: ORT/ours b1 0.50x, ORT/ours b1 bf16 1.10x, ours/torch train 1.20x, "
            "ours/torch b256 -x") in lines[1]
    assert lines[2] == "CPU not recorded"  # ratios of a single-round result from its figures
    assert "atto: ORT/ours b1 1.50x, ours/torch train 1.50x" in lines[3]
    assert "bf16" not in lines[3]  # older results have no bfloat16 figure: not shown as "-"
    # code held below the CPU is another machine kind, not mixed with the CPU's own runs
    assert lines[4] == "AMD EPYC (avx2) with NUMBA_CPU_NAME=haswell"
    assert "atto: ORT/ours b1 -x, ours/torch train 2.00x" in lines[5]


def test_fma_peak_kernel_does_the_multiply_adds_it_counts():
    """The peak is FLOPs counted / time: the kernel must do CHAINS chains of `steps` fused
    multiply-adds on every lane, acc <- acc * m + b from seed[c], and nothing less."""
    import numpy as np

    peak = _load_bench("fma_peak")
    seed = np.linspace(0.5, 0.6, 16, dtype=np.float32)
    seed[10], seed[11] = 0.75, 0.125
    lanes = peak.lanes_of_float32()
    for steps in (0, 1, 7):
        chains = seed[:peak.CHAINS].astype(np.float64)
        for _ in range(steps):
            chains = chains * 0.75 + 0.125
        expected = lanes * chains.sum()
        assert abs(peak._chains(seed, steps) - expected) <= 1e-5 * abs(expected)
        assert abs(peak._chains_on_threads(seed, steps, 2) - 2 * expected) <= 2e-5 * abs(expected)
    assert peak.fma_peak_gflops(1, seconds=0.01, repeat=1) > 0


def test_shares_put_ours_and_pytorch_against_a_rate():
    bench = _load_bench("run")
    results = {"variants": {
        "atto": {"forward_gflop_per_sample": 0.5, "ours": {"gflops_b256": 100.0,
                                                            "gflops_train": 50.0},
                 "torch": {"b256_samples_s": 120.0, "train_samples_s": 24.0}},
        "pico": {"forward_gflop_per_sample": 1.0, "ours": {"gflops_b256": 150.0}}}}
    # PyTorch: 120 samples/s x 0.5 GFLOP = 60 GFLOP/s, training 24 x 3 x 0.5 = 36; the goals
    # (1.3x, 1.5x) ask 1.3 x 30 % and 1.5 x 18 % of ours
    assert bench.shares_text(results, 200.0) == (
        "atto 50 % / 25 % (PyTorch 30 % / 18 %; the goals ask 39 % / 27 %), pico 75 % / 0 %")


def test_machine_info_records_the_variables_that_limit_the_isa(monkeypatch):
    from measure import ISA_LIMITS, machine_info, machine_line

    for name in ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    assert "isa_limits" not in machine_info()
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("NUMBA_CPU_NAME", "haswell")
    info = machine_info()
    assert info["isa_limits"] == {"NUMBA_CPU_NAME": "haswell", "ATEN_CPU_CAPABILITY": "avx2"}
    assert "with NUMBA_CPU_NAME=haswell ATEN_CPU_CAPABILITY=avx2, " in machine_line(info)
    monkeypatch.setenv("NUMBA_CPU_FEATURES", "+avx2,+fma,-avx512f,-avx512bw")
    assert "NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=<no AVX-512> ATEN" in machine_line(machine_info())


def test_machine_key_names_the_microarchitecture_of_a_generic_cpu_name():
    from llvmlite import binding
    from measure import machine_info, machine_key

    info = machine_info()
    assert info["microarchitecture"] == binding.get_host_cpu_name()
    # two cloud CPUs both named "AMD EPYC" (Zen 4, Zen 5) are two machine kinds
    zen4 = {"cpu": "AMD EPYC", "isa": ["avx2", "avx512f"], "microarchitecture": "znver4"}
    assert machine_key(zen4) == "AMD EPYC [znver4] (avx2/avx512f)"
    assert machine_key(dict(zen4, microarchitecture="znver5")) != machine_key(zen4)


def test_bf16_accuracy_compares_decisions_of_a_checkpoint(tmp_path):
    from numpyconvnext.data.store import save_candles
    from tests.test_trading_cli import make_checkpoint

    path, candles = make_checkpoint(tmp_path, bars=700)
    data = save_candles(candles, tmp_path / "BTCUSDT_1h.csv")
    out = tmp_path / "accuracy.json"
    proc = subprocess.run(
        [sys.executable, "bench/bf16_accuracy.py", str(path), "--data", str(data), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(out.read_text())["rows"]
    assert row["bars"] > 300 and row["data"] == "BTCUSDT_1h.csv"
    assert 0 < row["max_abs_probability_change"] < 0.05  # rounded weights: close, not equal
    assert 0.9 <= row["same_class"] <= 1 and 0.9 <= row["same_signal"] <= 1
    assert row["batch1_vs_batched_max_gap"] < 1e-4
    assert "same class" in proc.stdout and "Reproduce: python bench/bf16_accuracy.py" in proc.stdout


def test_bf16_accuracy_says_in_one_line_what_it_cannot_read(tmp_path):
    proc = subprocess.run(
        [sys.executable, "bench/bf16_accuracy.py", str(tmp_path / "missing.npz"), "--data",
         str(tmp_path / "missing.csv")],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("bf16_accuracy: ") and "missing.npz" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_matmul_shapes_compares_the_blas_or_says_it_needs_torch():
    proc = subprocess.run(
        [sys.executable, "bench/matmul_shapes.py", "--variant", "atto", "--batch", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    try:
        import torch  # noqa: F401
    except ImportError:  # the test extra has no torch: the script must say so in one line
        assert proc.returncode == 1 and proc.stderr.strip() == (
            "matmul_shapes: needs torch (pip install -e .[bench])")
        return
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert sum("torch/NumPy" in line and "GFLOP/s" in line for line in lines) == 24
    assert lines[-1] == "Reproduce: python bench/matmul_shapes.py --variant atto --batch 1"


def test_gemm_ab_times_blas_and_our_gemm_in_turn():
    proc = subprocess.run(
        [sys.executable, "bench/gemm_ab.py", "--variants", "atto", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for task in ("train", "b256"):
        assert any(line.startswith(f"atto {task}") and "BLAS/ours" in line for line in lines)
    assert lines[-1] == "Reproduce: python bench/gemm_ab.py --variants atto --rounds 1"


def test_gemm_source_ab_runs_the_source_it_is_given(tmp_path):
    """The products of `own_products_of(source)` come from that source, not kernels/gemm.py;
    a source from before round 24 (a `gemm_block` without `panels`) too."""
    import numpy as np

    from kernels.gemm import panel_operand, strided

    ab = _load_bench("gemm_source_ab")
    source = (ROOT / "kernels" / "gemm.py").read_text()
    marked = source.replace('    if rows1 <= rows0 or cols1 <= cols0:\n        return\n',
                            '    if rows1 <= rows0 or cols1 <= cols0:\n        return\n'
                            '    out[:] = 7.0\n    return\n')
    assert marked != source
    rng = np.random.default_rng(0)
    a = rng.standard_normal((20, 30)).astype(np.float32)
    b = rng.standard_normal((30, 40)).astype(np.float32)
    old_style = ("from numba import njit\n\n\n@njit(nogil=True, cache=True)\n"
                 "def gemm_block(a, sa, sk, b, sb, sn, depth, out, ldo, rows0, rows1, cols0,"
                 " cols1):\n    out[:] = 5.0\n")
    results = []
    for tag, text in (("same", source), ("marked", marked), ("old", old_style)):
        products = ab.own_products_of(text, f"test_{tag}", tmp_path)
        out = np.zeros((20, 40), np.float32)
        (a_flat, sa, sk), (b_flat, sb, sn) = strided(a), strided(b)
        layout = np.array([sa, sk, sb, sn, 30, 40], np.int64)
        tasks = np.array([[0, 0, 20, 0, 40]], np.int64)
        none = panel_operand(None, b)
        products(tasks, a_flat, b_flat, out.reshape(-1), layout, none, a_flat, b_flat,
                 out.reshape(-1), layout, none)
        results.append(out)
    np.testing.assert_allclose(results[0], a @ b, rtol=1e-5, atol=1e-5)
    assert (results[1] == 7.0).all()
    assert (results[2] == 5.0).all()


@pytest.mark.parametrize("kernel, options", [("gemm", ["--gemm", "own"]), ("dwconv", [])])
def test_gemm_source_ab_pairs_two_sources_in_one_model(kernel, options):
    proc = subprocess.run(
        [sys.executable, "bench/gemm_source_ab.py", f"kernels/{kernel}.py", "--kernel", kernel,
         "--variant", "atto", "--steps", "2", *options],
        cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("atto train: old ") and "old/new median" in line
               and "(2 pairs)" in line for line in lines)
    gemm = "own" if options else "auto"
    assert lines[-1] == (f"Reproduce: python bench/gemm_source_ab.py kernels/{kernel}.py "
                         f"{ROOT / 'kernels' / f'{kernel}.py'} --kernel {kernel} --task train "
                         f"--variant atto --steps 2 --gemm {gemm}")


def test_gemm_source_ab_swaps_the_blocks_dwconv_kernels(tmp_path):
    """--kernel dwconv: the block calls the given source's kernels while a version is installed,
    and the original ones afterwards."""
    import numpy as np

    from numpyconvnext import layers

    ab = _load_bench("gemm_source_ab")
    source = (ROOT / "kernels" / "dwconv.py").read_text()
    line = "    return dx, total[:K * C]"
    assert line in source
    marked = source.replace(line, "    dx[...] = 7.0\n" + line, 1)
    original = {name: getattr(layers, name) for name in ab.DWCONV_KERNELS}
    install = ab.installer("dwconv", {"old": source, "new": marked}, tmp_path)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 2, 5, 8)).astype(np.float32)
    w = rng.standard_normal((7, 8)).astype(np.float32)
    try:
        install("old")
        dx_old = layers.dwconv_backward(dy, x, w)[0]
        install("new")
        dx_new = layers.dwconv_backward(dy, x, w)[0]
    finally:
        install(None)
    assert {name: getattr(layers, name) for name in ab.DWCONV_KERNELS} == original
    np.testing.assert_array_equal(dx_old, original["dwconv_backward"](dy, x, w)[0])
    assert (dx_new == 7.0).all()
