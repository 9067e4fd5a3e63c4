"""The library as a guest in someone else's process: no side effects on import, scoped threads,
a safe first call from a cold or warm Numba cache, thread-safe predict, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import numpyconvnext
from kernels.linear import numpy_blas
from numpyconvnext import ConvNeXt1D, threads

ROOT = Path(__file__).resolve().parent.parent


def run_python(code: str, env: dict | None = None, args: tuple = (), timeout: float = 600) -> str:
    environ = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=environ, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_import_changes_no_environment_variable():
    run_python("import os; e = dict(os.environ); import numpyconvnext; assert dict(os.environ) == e")


@pytest.mark.parametrize("cli_blas_threads", [None, "2"])
def test_import_and_calls_leave_blas_threads_and_environment_alone(cli_blas_threads):
    """threadpoolctl sees the same thread counts before and after import, and (for the
    libraries loaded before) after predict, training and a large batch, which limit BLAS only
    while they run; numba's modules are not patched; the environment is the same throughout."""
    code = """
import json, os
import numba.np.linalg
from threadpoolctl import threadpool_info
probe = numba.np.linalg.ensure_blas
env = dict(os.environ)
counts = lambda: sorted((i["filepath"], i["num_threads"]) for i in threadpool_info())
before = counts()
import numpy as np, numpyconvnext
after_import = counts()
from numpyconvnext.losses import cross_entropy
model = numpyconvnext.ConvNeXt1D((8, 16, 24, 32), (1, 1, 1, 1), 3, 3)
x = np.random.default_rng(0).standard_normal((40, 3, 64)).astype(np.float32)
model.predict(x[:1])
model.predict(x)
_, d = cross_entropy(model.forward(x), np.zeros(40, dtype=int))
model.backward(d)
after_calls = [c for c in counts() if c[0] in dict(before)]  # Numba loaded OpenMP meanwhile
print(json.dumps({"import": after_import == before, "calls": after_calls == before,
                  "env": dict(os.environ) == env, "probe": numba.np.linalg.ensure_blas is probe,
                  "blas": [c for _, c in before]}))
"""
    env = {"OPENBLAS_NUM_THREADS": cli_blas_threads} if cli_blas_threads else {}
    result = json.loads(run_python(code, env))
    assert result == {"import": True, "calls": True, "env": True, "probe": True,
                      "blas": result["blas"]}
    if cli_blas_threads:
        assert 2 in result["blas"]


def test_blas_single_threaded_inside_our_calls_and_restored_after_concurrent_ones():
    """Several threads inside our calls at once: BLAS stays at one thread until the last one
    leaves, then gets its own count back (reference-counted, not save/restore per call)."""
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    if not blas.lib_controllers:
        pytest.skip("threadpoolctl finds no BLAS library in this NumPy")
    # this thread sets BLAS threads through threadpoolctl first: for OpenBLAS it then ignores
    # what other Python threads ask for, which must not stop our calls from worker threads
    for lib in blas.lib_controllers:
        lib.set_num_threads(lib.get_num_threads())
    original = [lib.get_num_threads() for lib in numpy_blas()]
    inside: list[list[int]] = []
    entered = threading.Barrier(3)
    release = threading.Event()

    def call():
        with threads.compute():
            entered.wait(timeout=30)
            release.wait(timeout=30)
            inside.append([lib.get_num_threads() for lib in numpy_blas()])

    workers = [threading.Thread(target=call) for _ in range(2)]
    for worker in workers:
        worker.start()
    entered.wait(timeout=30)
    during = [lib.get_num_threads() for lib in numpy_blas()]
    release.set()
    for worker in workers:
        worker.join(timeout=30)
    assert during == [1] * len(original)
    assert inside == [[1] * len(original)] * 2
    assert [lib.get_num_threads() for lib in numpy_blas()] == original


def test_set_num_threads_applies_to_our_calls_only_and_is_checked():
    import numba

    limit = numba.config.NUMBA_NUM_THREADS
    outside = numba.get_num_threads()
    seen = []
    try:
        numpyconvnext.set_num_threads(1)
        assert numpyconvnext.get_num_threads() == 1
        with threads.compute():
            seen.append(numba.get_num_threads())
        assert numba.get_num_threads() == outside  # Numba's own setting is restored
        with pytest.raises(ValueError, match="between 1 and"):
            numpyconvnext.set_num_threads(limit + 1)
        with pytest.raises(ValueError, match="between 1 and"):
            numpyconvnext.set_num_threads(0)
        with pytest.raises(TypeError):
            numpyconvnext.set_num_threads(1.5)
    finally:
        numpyconvnext.set_num_threads(None)
    assert seen == [1]
    assert numpyconvnext.get_num_threads() == numba.get_num_threads()


@pytest.mark.parametrize(
    "layer, environ, vendor, wait",
    [("omp", {}, "GNU", "long"),
     ("omp", {"OMP_WAIT_POLICY": "passive"}, "GNU", "short"),
     ("omp", {"OMP_WAIT_POLICY": "ACTIVE"}, "GNU", "long"),
     ("omp", {"GOMP_SPINCOUNT": "300"}, "GNU", "short"),
     ("omp", {"GOMP_SPINCOUNT": "1999"}, "GNU", "short"),
     ("omp", {"GOMP_SPINCOUNT": "3000"}, "GNU", "bridging"),
     ("omp", {"GOMP_SPINCOUNT": "10k"}, "GNU", "bridging"),
     ("omp", {"GOMP_SPINCOUNT": "1M"}, "GNU", "long"),
     ("omp", {"GOMP_SPINCOUNT": "infinite"}, "GNU", "long"),
     ("omp", {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": "3000"}, "GNU", "short"),
     ("omp", {"KMP_BLOCKTIME": "0"}, "GNU", "long"),  # GNU OpenMP ignores KMP_*
     ("omp", {"KMP_BLOCKTIME": "0"}, "Intel", "short"),
     ("omp", {"KMP_BLOCKTIME": "1"}, "Intel", "bridging"),
     ("omp", {"KMP_BLOCKTIME": "200ms"}, "Intel", "long"),
     ("tbb", {}, "GNU", "short"),
     ("workqueue", {}, "GNU", "short")],
)
def test_openmp_wait_detection(monkeypatch, layer, environ, vendor, wait):
    from numba.np.ufunc import omppool

    monkeypatch.setattr(omppool, "openmp_vendor", vendor, raising=False)
    assert threads._openmp_wait_kind(layer, environ) == wait


def test_kernels_leave_a_long_spinning_openmp_pool_asleep(monkeypatch):
    """Under an OpenMP pool that spins long, our kernels run on the calling thread while big
    matmuls still use every thread; an explicit set_num_threads overrides that."""
    import numba

    threads.start()
    monkeypatch.setattr(threads, "_openmp_wait", "long")
    assert threads.thread_counts() == (1, numba.get_num_threads())
    for wait in ("short", "bridging"):
        monkeypatch.setattr(threads, "_openmp_wait", wait)
        assert threads.thread_counts() == (numba.get_num_threads(),) * 2
    monkeypatch.setattr(threads, "_openmp_wait", "long")
    monkeypatch.setattr(threads, "_requested", 1)
    assert threads.thread_counts() == (1, 1)


def test_products_split_in_numbas_pool_only_when_the_kernels_use_it_too(monkeypatch):
    """Inside our calls the big products split over Numba's pool (one parallel loop) when the
    kernels run on all its threads; under a long OpenMP wait (kernels on the calling thread)
    over Python helper threads, as with one thread."""
    import numba

    from kernels import linear

    threads.start()
    seen = []
    for wait, requested in (("bridging", None), ("short", None), ("long", None), ("long", 1)):
        monkeypatch.setattr(threads, "_openmp_wait", wait)
        monkeypatch.setattr(threads, "_requested", requested)
        with threads.compute():
            seen.append((linear._split.threads, linear._split.region))
    every = numba.get_num_threads()
    if numpy_blas():
        assert seen == [(every, every > 1), (every, every > 1), (every, False), (1, False)]
    assert getattr(linear._split, "region", False) is False


def test_batch1_blocks_all_split_only_when_the_pool_stays_awake_between_loops(monkeypatch):
    from kernels.block import SPLIT_WORK

    threads.start()
    monkeypatch.setattr(threads, "_openmp_wait", "bridging")
    assert threads.split_work() == 0
    for wait in ("short", "long"):
        monkeypatch.setattr(threads, "_openmp_wait", wait)
        assert threads.split_work() == SPLIT_WORK


def test_split_chooser_takes_the_faster_way_and_tries_the_other_now_and_then():
    chooser = threads.SplitChooser()
    explore = threads.SplitChooser.EXPLORE
    seconds = {True: 1e-3, False: 2e-3}  # splitting faster (an idle machine)
    taken = []
    for _ in range(96):
        split = chooser.split()
        taken.append(split)
        chooser.record(split, seconds[split])
    # each way timed three times first (the first call of each not timed)
    assert taken[:8] == [True] * 4 + [False] * 4
    # then splitting, but for two calls in every EXPLORE
    serial_calls = [k + 1 for k, split in enumerate(taken) if not split]
    assert serial_calls[4:] == [k for k in range(9, 97) if k % explore in (0, 1)]
    seconds = {True: 4e-3, False: 2e-3}  # then another process takes a core
    taken = []
    for _ in range(96):
        split = chooser.split()
        taken.append(split)
        chooser.record(split, seconds[split])
    # (call 97 ends a look at serial) the first split after it is not timed, then two slow
    # splits move the median
    assert taken[:5] == [False, True, True, True, False]
    split_calls = [97 + k for k, split in enumerate(taken) if split]
    assert split_calls[3:] == [k for k in range(101, 193) if k % explore in (0, 1)]


def test_split_chooser_does_not_time_the_first_call_after_a_change_of_way():
    chooser = threads.SplitChooser()
    for split, seconds, kept in [(True, 9.0, ([], [])), (True, 1.0, ([1.0], [])),
                                 (False, 9.0, ([1.0], [])), (False, 2.0, ([1.0], [2.0])),
                                 (True, 9.0, ([1.0], [2.0])), (True, 3.0, ([1.0, 3.0], [2.0]))]:
        chooser.record(split, seconds)
        assert chooser._times == kept


def test_batch1_predict_gives_the_same_bits_split_or_not(monkeypatch):
    import numba

    model = ConvNeXt1D([8, 16, 16, 24], [1, 1, 2, 1], 3, 3).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 256)).astype(np.float32)
    threads.start()
    saved = numba.get_num_threads()
    monkeypatch.setattr(threads, "_openmp_wait", "bridging")  # every block may split
    try:
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        # the chooser times each way three times (after one untimed call each)
        got = [model.predict(x) for _ in range(8)]
        assert numba.get_num_threads() == min(2, numba.config.NUMBA_NUM_THREADS)
    finally:
        numba.set_num_threads(saved)
    if numba.config.NUMBA_NUM_THREADS > 1:
        assert [len(times) for times in model._split_chooser._times] == [3, 3]
    for logits in got[1:]:
        np.testing.assert_array_equal(logits, got[0])


def test_cli_sets_a_short_openmp_wait_and_llvm_o2_for_its_own_process_only():
    from cli import set_process_defaults

    environ: dict[str, str] = {}
    set_process_defaults(environ)
    assert environ == {"GOMP_SPINCOUNT": "3000", "KMP_BLOCKTIME": "0", "NUMBA_OPT": "2",
                       "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                       "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}
    for mine in ({"OMP_WAIT_POLICY": "ACTIVE", "NUMBA_OPT": "3", "MALLOC_TRIM_THRESHOLD_": "0"},
                 {"KMP_BLOCKTIME": "5", "NUMBA_OPT": "1",
                  "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}):
        given = dict(mine)
        set_process_defaults(mine)
        assert mine == given
    # ... and `python cli.py` applies it before it imports the library
    out = subprocess.run([sys.executable, "-c", "import os, runpy, sys; sys.argv = ['cli.py', '--help'];"
                          "\ntry: runpy.run_path('cli.py', run_name='__main__')"
                          "\nexcept SystemExit: pass"
                          "\nprint(os.environ.get('MALLOC_TRIM_THRESHOLD_'))"
                          "\nprint(os.environ.get('GOMP_SPINCOUNT'))"],
                         cwd=ROOT, capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k not in
                              ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
                              and not k.startswith("MALLOC_")}).stdout
    assert out.split()[-2:] == [str(128 << 20), "3000"]


# a process that frees and allocates again, step after step, blocks of the sizes of a small
# model's activations (the page faults of the last steps after the first two warmed up)
FAULTS = """
import resource, sys
import numpy as np
sys.path.insert(0, ".")
if sys.argv[1] == "cli":
    from cli import keep_freed_memory, set_process_defaults
    environ = {}
    set_process_defaults(environ)
    assert keep_freed_memory(environ)
def step():
    kept = [np.ones(n) for n in (40_000, 160_000, 80_000, 160_000) * 6]
    del kept
for _ in range(2):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_cli_keeps_freed_memory_instead_of_faulting_it_in_again():
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    faults = {}
    for how in ("default", "cli"):
        faults[how] = int(subprocess.run([sys.executable, "-c", FAULTS, how], cwd=ROOT,
                                         env=environ, capture_output=True, text=True,
                                         check=True).stdout)
    assert faults["cli"] * 10 < faults["default"], faults


FIRST_CALL = """
import sys, numpy as np, numba
from numpyconvnext import load
model = load(sys.argv[1])
x = np.load(sys.argv[2])
logits = model.predict(x)  # the first kernel call of this process
compiled = [f for name, mod in list(sys.modules.items()) if name.startswith('kernels')
            for f in vars(mod).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]
misses = sum(sum(f.stats.cache_misses.values()) for f in compiled if f.signatures)
np.save(sys.argv[3], logits)
print(misses)
"""


def test_first_call_is_one_window_predict_from_cold_and_warm_cache(tmp_path):
    """A fresh process: load a checkpoint, predict one window as its very first kernel call.
    Run twice on one empty NUMBA_CACHE_DIR: the first compiles, the second loads from the
    cache (where a compiled function that calls a parallel one needs the pool started)."""
    model = ConvNeXt1D.from_config("atto", 6, 3, seed=3).eval()
    path = numpyconvnext.save(model, tmp_path / "model.npz")
    x = np.random.default_rng(1).standard_normal((1, 6, 256)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = model.predict(x)
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    misses = []
    for run in ("cold", "warm"):
        out = tmp_path / f"{run}.npy"
        misses.append(int(run_python(FIRST_CALL, env, (path, tmp_path / "x.npy", out))))
        np.testing.assert_allclose(np.load(out), expected, rtol=1e-5, atol=1e-6)
    assert misses[0] > 0 and misses[1] == 0  # compiled, then loaded


def test_predict_from_four_threads_equals_serial():
    model = ConvNeXt1D((16, 24, 32, 48), (1, 2, 1, 1), 4, 3, seed=2).eval()
    rng = np.random.default_rng(0)
    # batch 1 takes the one-call path, the others go layer by layer through the workspace
    inputs = [rng.standard_normal((b, 4, 128)).astype(np.float32) for b in (1, 3, 7, 16, 2, 9)]
    serial = [model.predict(x) for x in inputs]
    results: dict[tuple[int, int, int], np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(k: int):
        try:
            start.wait(timeout=30)
            for repeat in range(5):
                for i in range((k + repeat) % len(inputs), len(inputs)):
                    results[k, repeat, i] = model.predict(inputs[i])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    assert len(results) > 60
    for (_, _, i), logits in results.items():
        np.testing.assert_array_equal(logits, serial[i])


def test_workspace_keeps_few_input_shapes_and_clear_cache_frees_them():
    model = ConvNeXt1D((16, 24, 32, 48), (1, 1, 1, 1), 4, 3).eval()
    rng = np.random.default_rng(0)
    sizes = []
    for batch in range(2, 12):
        model.predict(rng.standard_normal((batch, 4, 128)).astype(np.float32))
        sizes.append(len(model.workspace._store().groups))
    assert max(sizes) == model.workspace.max_groups
    held = model.workspace.nbytes()
    assert held > 0
    model.clear_cache()
    assert model.workspace.nbytes() == 0
    x = rng.standard_normal((5, 4, 128)).astype(np.float32)
    before = model.predict(x)
    model.clear_cache()
    np.testing.assert_array_equal(model.predict(x), before)


RSS_LOOP = """
import resource, numpy as np
from numpyconvnext import ConvNeXt1D

def rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

model = ConvNeXt1D((32, 64, 128, 256), (1, 1, 1, 1), 8, 3).eval()
rng = np.random.default_rng(0)
xs = [rng.standard_normal((b, 8, 128)).astype(np.float32) for b in range(1, 65)]
for b in (1, 2, 64, 63, 62, 61):  # warm-up: compile, the biggest workspace groups
    model.predict(xs[b - 1])
start = rss_mb()
peak = start
for i in range(1000):
    model.predict(xs[i % 64])
    if i % 50 == 0:
        peak = max(peak, rss_mb())
print(start, max(peak, rss_mb()))
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc for RSS")
def test_rss_flat_over_1000_predicts_with_batch_sizes_cycling():
    start, peak = map(float, run_python(RSS_LOOP).split())
    assert peak - start < 50, f"RSS grew from {start:.0f} to {peak:.0f} MB"
