"""Side-by-side benchmark: numpyconvnext vs PyTorch eager vs ONNX Runtime on the CPU.

    python bench/run.py [--variants atto,pico,tiny] [--quick] [--threads N] [--rounds R]
                        [--no-torch] [--no-kernels] [--cold-compile] [--hide-avx512]

Every figure is a median over repeated timings after warm-up, measured in a fresh child
process per framework and task (so peak RSS is that task's own, and no framework's thread pool
disturbs another's). The frameworks take turns for R rounds (default 3): the table gives the
median of each figure over the rounds and, for each ratio, the median of the ratios measured
within a round, so a load that drifts during the run does not decide a comparison.
Input: C_in=20, T=256, 3 classes, float32. Writes bench/results/<YYYY-MM-DD>.json and prints
a Markdown table plus the command that reproduces it. torch / onnxruntime are optional (extra
`bench`); without them (or with --no-torch) only our figures are printed. --hide-avx512 runs
every child as on a CPU without AVX-512 (bench/hide_avx512.py says how and where it can).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the environment as the user gave it, for every child
USER_ENV = dict(os.environ)
sys.path[:0] = [str(ROOT), str(HERE)]

from measure import machine_key  # noqa: E402 - after the path is set

from cli import set_process_defaults  # noqa: E402

C_IN, T, CLASSES = 20, 256, 3
BATCH_INFER, BATCH_TRAIN = 256, 32


# --- children: one task each, result as one JSON line on stdout ----------------------------------


def _repeats(quick: bool, slow: bool) -> dict:
    if quick:
        return dict(b1=10, big=2, train=3, min_seconds=0.3)
    return dict(b1=50, big=5 if slow else 10, train=8 if slow else 15, min_seconds=2.0)


def child_ours(task: str, variant: str, quick: bool, threads: int) -> dict:
    import numba
    import numpy as np
    from measure import median_seconds, peak_rss_mb, training_step

    from numpyconvnext import ConvNeXt1D

    numba.set_num_threads(threads)
    reps = _repeats(quick, variant == "tiny")
    rng = np.random.default_rng(0)
    model = ConvNeXt1D.from_config(variant, C_IN, CLASSES)
    if task in ("b1", "b1bf16", "infer"):  # b1: the batch-1 figure only
        # the read-only copy for inference that `live` runs (from round 15; before, the model
        # itself: the same but for the packed pointwise weights of the batch-1 network on
        # AVX-512); b1bf16: its pointwise weights in bfloat16
        model = model.frozen("bfloat16" if task == "b1bf16" else "float32")
        x1 = rng.standard_normal((1, C_IN, T)).astype(np.float32)
        b1 = median_seconds(lambda: model.predict(x1), reps["b1"], 5, reps["min_seconds"])
        if task != "infer":
            return {"b1_ms": b1 * 1e3}
        xb = rng.standard_normal((BATCH_INFER, C_IN, T)).astype(np.float32)
        big = median_seconds(lambda: model.predict(xb), reps["big"], 1)
        return {"b1_ms": b1 * 1e3, "b256_samples_s": BATCH_INFER / big}
    step = training_step(model, rng, BATCH_TRAIN, C_IN, T, CLASSES)
    seconds = median_seconds(step, reps["train"], 2)
    return {"train_samples_s": BATCH_TRAIN / seconds, "train_peak_rss_mb": peak_rss_mb()}


def child_torch(task: str, variant: str, quick: bool, threads: int) -> dict:
    import numpy as np
    import torch
    from measure import median_seconds, peak_rss_mb
    from torch_convnext import VARIANTS, ConvNeXt1DTorch, train_step_fn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reps = _repeats(quick, variant == "tiny")
    model = ConvNeXt1DTorch(C_IN, CLASSES, *VARIANTS[variant])
    if task == "train":
        step = train_step_fn(model, BATCH_TRAIN, T, C_IN, CLASSES)
        seconds = median_seconds(step, reps["train"], 2)
        return {"train_samples_s": BATCH_TRAIN / seconds, "train_peak_rss_mb": peak_rss_mb()}
    model.eval()
    x1 = torch.randn(1, C_IN, T)
    xb = torch.randn(BATCH_INFER, C_IN, T)
    result = {}
    with torch.inference_mode():
        b1 = median_seconds(lambda: model(x1), reps["b1"], 5, reps["min_seconds"])
        big = median_seconds(lambda: model(xb), reps["big"], 1)
    result.update(b1_ms=b1 * 1e3, b256_samples_s=BATCH_INFER / big)
    if task == "ort":
        import onnxruntime as ort
        from torch_convnext import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, str(Path(tmp) / "model.onnx"), T, C_IN)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        x1n, xbn = x1.numpy(), xb.numpy()
        b1 = median_seconds(lambda: session.run(None, {"x": x1n}), reps["b1"], 5,
                            reps["min_seconds"])
        big = median_seconds(lambda: session.run(None, {"x": xbn}), reps["big"], 1)
        result = {"b1_ms": b1 * 1e3, "b256_samples_s": BATCH_INFER / big,
                  "baseline": {"exporter": "torch.onnx.export(dynamo=False)", "opset": 17,
                               "constant_folding": True, "onnxruntime": ort.__version__,
                               "graph_optimization_level": str(options.graph_optimization_level),
                               "torch": torch.__version__}}
    del np
    return result


def child_kernels(quick: bool, threads: int) -> dict:
    """Each Numba kernel against its plain-NumPy reference on tiny's stage-0 shapes, batch 32."""
    import numba
    import numpy as np
    from measure import median_seconds

    from kernels import adamw, dwconv, gelu, layernorm, reference, residual

    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    B, Tk, C = BATCH_TRAIN, T // 4, 96
    f32 = np.float32

    def r(*shape):
        return rng.standard_normal(shape).astype(f32)

    x, dy, w, b = r(B, Tk, C), r(B, Tk, C), r(7, C), r(C)
    rows, drows, nw, nb = r(B * Tk, C), r(B * Tk, C), r(C), r(C)
    h, dh, b4 = r(B * Tk, 4 * C), r(B * Tk, 4 * C), r(4 * C)
    wl = r(4 * C, C)
    keep = np.ones(B, f32)
    n = 2_000_000
    p, g, m, v = r(n), r(n), r(n), np.abs(r(n))
    _, mean, rstd = layernorm.layernorm_forward(rows, nw, nb, 1e-6)
    cases = {
        "dwconv forward": (lambda: dwconv.dwconv_forward(x, w, b),
                           lambda: reference.dwconv_forward(x, w, b)),
        "dwconv backward": (lambda: dwconv.dwconv_backward(dy, x, w),
                            lambda: reference.dwconv_backward(dy, x, w)),
        "layernorm forward": (lambda: layernorm.layernorm_forward(rows, nw, nb, 1e-6),
                              lambda: reference.layernorm_forward(rows, nw, nb, 1e-6)),
        "layernorm backward": (lambda: layernorm.layernorm_backward(drows, rows, nw, mean, rstd),
                               lambda: reference.layernorm_backward(drows, rows, nw, mean, rstd)),
        "bias+gelu forward": (lambda: gelu.bias_gelu_forward_into(h.copy(), b4, dh),
                              lambda: reference.bias_gelu_forward(h, b4)),
        "bias+gelu backward": (lambda: gelu.bias_gelu_backward(dh.copy(), h),
                               lambda: reference.bias_gelu_backward(dh, h)),
        "linear forward (BLAS)": (lambda: np.matmul(rows, wl.T),
                                  lambda: reference.linear_forward(rows, wl, b4)),
        "residual forward": (lambda: residual.residual_forward(x, dy, b, keep),
                             lambda: x + keep[:, None, None] * b * dy),
        "adamw (2M params)": (lambda: adamw.adamw_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8,
                                                         0.05, 3),
                              lambda: reference.adamw_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8,
                                                             0.05, 3)),
    }
    repeat = 5 if quick else 20
    out = {}
    for name, (ours, ref) in cases.items():
        ours_s = median_seconds(ours, repeat, 2)
        ref_s = median_seconds(ref, max(3, repeat // 4), 1)
        out[name] = {"numba_us": ours_s * 1e6, "numpy_us": ref_s * 1e6, "speedup": ref_s / ours_s}
    return out


def child_matmul(threads: int) -> dict:
    """The BLAS ceiling as our children run it: the machine's sgemm rate at `threads` threads
    (OpenBLAS's own threads, a large square product), the cores' float32 FMA peak on as many
    threads (bench/fma_peak.py: what no product can pass), and the machine and software."""
    from fma_peak import fma_peak_gflops
    from measure import machine_info, matmul_gflops, software_info

    return {"matmul_gflops": matmul_gflops(), "fma_peak_gflops": fma_peak_gflops(threads),
            "machine": {**machine_info(), **software_info()}}


COLD_CHILD = """
import time
t0 = time.perf_counter()
import numpy as np
from numpyconvnext import ConvNeXt1D
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
model = ConvNeXt1D.from_config({variant!r}, {c}, {classes})
if {task!r}.startswith("train"):
    import sys
    sys.path.insert(0, {bench!r})
    from measure import training_step
    from contextlib import nullcontext
    from numpyconvnext.precompile import compiling_beside
    with compiling_beside("train") if {task!r} == "train_helper" else nullcontext():
        training_step(model, rng, {batch}, {c}, {t}, {classes})()
else:
    model.eval()
    if {task!r} == "b1_helper":
        from numpyconvnext.precompile import ready_for_batch1
        ready_for_batch1(model)
    model.predict(rng.standard_normal((1, {c}, {t})).astype(np.float32))
print(t_import, time.perf_counter() - t0)
"""


def cold_compile(threads: int, variant: str = "atto") -> dict:
    """Wall time of a new process, as after a fresh install (an empty Numba cache), to its first
    training step (batch 32) and to its first batch-1 predict, each alone (`train`, `b1`) and
    with the compile helper of `cli.py train` / `live` (`train_helper`, `b1_helper`;
    numpyconvnext/precompile.py); each with its own empty cache, run as our other children (the
    CLI's environment)."""
    out = {}
    for task in ("train", "train_helper", "b1", "b1_helper"):
        with tempfile.TemporaryDirectory() as cache:
            env = dict(USER_ENV, NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS=str(threads))
            set_process_defaults(env)
            script = COLD_CHILD.format(variant=variant, task=task, c=C_IN, t=T, classes=CLASSES,
                                       batch=BATCH_TRAIN, bench=str(HERE))
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"  [cold {task}] failed: {proc.stderr.strip().splitlines()[-1:]}",
                      file=sys.stderr)
                continue
            import_s, _ = map(float, proc.stdout.split())
            out[f"first_{task}_s"] = wall
            out[f"first_{task}_import_s"] = import_s
    return out


# --- parent ------------------------------------------------------------------------------------


# OpenMP threads that sleep as soon as they are idle, instead of the CLI's short spin
PASSIVE_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def run_child(args: list[str], threads: int, extra_env: dict | None = None) -> dict | None:
    env = dict(USER_ENV)
    # every pool sized like torch's; tests and CI never set these. Our children run as
    # `cli.py` does: with its OpenMP wait (GOMP_SPINCOUNT=3000) unless one is given; BLAS is
    # left as it is (the library runs it single-threaded during its own calls and splits big
    # products over `threads` threads itself; numpyconvnext/threads.py).
    ours = args[0].startswith("ours") or args[0] == "kernels"
    if ours and not extra_env:
        set_process_defaults(env)
    if not ours:
        env["OPENBLAS_NUM_THREADS"] = str(threads)
    env.update(NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), **(extra_env or {}))
    proc = subprocess.run([sys.executable, __file__, "--child", *args, "--threads", str(threads)],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        print(f"  [{' '.join(args)}] failed: {proc.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


COLD_START = """
import time
t0 = time.perf_counter()
import numpy as np
from numpyconvnext import load
model = load({path!r})
model.predict(np.zeros((1, {c}, {t}), np.float32))
print(time.perf_counter() - t0)
"""


def cold_start(threads: int) -> dict:
    """Wall time of a new process that loads a checkpoint and predicts one window (cache warm)."""
    from numpyconvnext import ConvNeXt1D, save

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "atto.npz")
        save(ConvNeXt1D.from_config("atto", C_IN, CLASSES), path)
        script = COLD_START.format(path=path, c=C_IN, t=T)
        env = dict(USER_ENV, NUMBA_NUM_THREADS=str(threads))
        walls = []
        for _ in range(3):  # the first run warms Numba's cache if this checkout never compiled
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, env=env,
                           capture_output=True)
            walls.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "cli.py", "--help"], check=True, cwd=ROOT, env=USER_ENV,
                   capture_output=True)
    help_s = time.perf_counter() - t0
    return {"load_predict_s": min(walls[1:]), "cli_help_s": help_s}


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def ratio(a, b):
    return None if a is None or b is None else a / b


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def combine_rounds(rounds: list[dict]) -> dict:
    """Per framework, the median of each figure over the rounds (peak RSS: the largest); the
    ratios are the medians of the ratios measured within each round."""
    entry: dict = {"rounds": rounds}
    for framework in ("ours", "ours_passive", "ours_bf16", "torch", "ort"):
        keys = sorted({k for row in rounds for k in row.get(framework, {})})
        if not keys:
            continue
        entry[framework] = {}
        for key in keys:
            values = [row[framework][key] for row in rounds if key in row.get(framework, {})]
            if not all(isinstance(value, int | float) for value in values):
                entry[framework][key] = values[-1]  # a description (the ORT baseline's settings)
            else:
                entry[framework][key] = max(values) if key.endswith("rss_mb") else median(values)
    pairs = {"ort_over_ours_b1": ("ort", "b1_ms", "ours", "b1_ms"),
             "ort_over_ours_passive_b1": ("ort", "b1_ms", "ours_passive", "b1_ms"),
             "ort_over_ours_bf16_b1": ("ort", "b1_ms", "ours_bf16", "b1_ms"),
             "ours_over_torch_b256": ("ours", "b256_samples_s", "torch", "b256_samples_s"),
             "ours_over_torch_train": ("ours", "train_samples_s", "torch", "train_samples_s")}
    entry["ratios"] = {}
    for name, (fa, ka, fb, kb) in pairs.items():
        values = [ratio(row.get(fa, {}).get(ka), row.get(fb, {}).get(kb)) for row in rounds]
        values = [v for v in values if v is not None]
        entry["ratios"][name] = median(values) if values else None
    return entry


def markdown(results: dict) -> str:
    lines = [
        "| variant | ours b1 ms | ours b1 ms, passive | ours b1 ms, bf16 | torch b1 ms | ORT b1 ms | "
        "ORT/ours b1 | ORT/ours b1, passive | ORT/ours b1, bf16 | ours b256 /s | "
        "torch b256 /s | ours/torch b256 | ours train /s | torch train /s | ours/torch train | "
        "ours train RSS MB | torch train RSS MB | ours GFLOP/s (b256, train) |",
        "|" + "---|" * 18,
    ]
    for v, r in results["variants"].items():
        o, t, x = r["ours"], r.get("torch") or {}, r.get("ort") or {}
        passive = r.get("ours_passive") or {}
        bf16 = r.get("ours_bf16") or {}
        q = r.get("ratios") or {}
        lines.append(
            f"| {v} | {fmt(o.get('b1_ms'))} | {fmt(passive.get('b1_ms'))} | "
            f"{fmt(bf16.get('b1_ms'))} | {fmt(t.get('b1_ms'))} | "
            f"{fmt(x.get('b1_ms'))} | {fmt(q.get('ort_over_ours_b1'))}x | "
            f"{fmt(q.get('ort_over_ours_passive_b1'))}x | "
            f"{fmt(q.get('ort_over_ours_bf16_b1'))}x | {fmt(o.get('b256_samples_s'), 0)} | "
            f"{fmt(t.get('b256_samples_s'), 0)} | "
            f"{fmt(q.get('ours_over_torch_b256'))}x | "
            f"{fmt(o.get('train_samples_s'), 0)} | {fmt(t.get('train_samples_s'), 0)} | "
            f"{fmt(q.get('ours_over_torch_train'))}x | "
            f"{fmt(o.get('train_peak_rss_mb'), 0)} | {fmt(t.get('train_peak_rss_mb'), 0)} | "
            f"{fmt(o.get('gflops_b256'), 0)}, {fmt(o.get('gflops_train'), 0)} |"
        )
    lines.append("")
    lines.append(f"Large float32 matmul (NumPy BLAS): {fmt(results['matmul_gflops'], 0)} GFLOP/s. "
                 f"Cold start (new process: load checkpoint + predict one window, Numba cache "
                 f"warm): {fmt(results['cold_start'].get('load_predict_s'))} s; "
                 f"`cli.py --help`: {fmt(results['cold_start'].get('cli_help_s'))} s. "
                 f"\"passive\": our batch-1 figure with OMP_WAIT_POLICY=PASSIVE (idle OpenMP "
                 f"threads sleep at once) instead of the CLI's spin (GOMP_SPINCOUNT=3000). "
                 f"\"bf16\": `model.frozen(\"bfloat16\")`, the blocks' pointwise weights in "
                 f"bfloat16 (accuracy: README \"Speed\").")
    ceiling = results.get("matmul_gflops")
    if ceiling:
        lines.append(f"Share of the machine's sgemm rate (b256 forward / training): "
                     f"{shares_text(results, ceiling)}.")
    peak = results.get("fma_peak_gflops")
    if peak:
        sgemm = f"; sgemm {fmt(ceiling / peak * 100, 0)} % of it" if ceiling else ""
        lines.append(f"float32 FMA peak on {results['threads']} threads (bench/fma_peak.py): "
                     f"{fmt(peak, 0)} GFLOP/s{sgemm}; shares of it: "
                     f"{shares_text(results, peak)}.")
    cold = results.get("cold_compile")
    if cold:
        lines.append(f"Empty Numba cache (as after a fresh install), new process to the first "
                     f"training step {fmt(cold.get('first_train_s'), 1)} s (with the compile "
                     f"helper of `cli.py train`: {fmt(cold.get('first_train_helper_s'), 1)} s), "
                     f"to the first batch-1 "
                     f"predict {fmt(cold.get('first_b1_s'), 1)} s (helper of `cli.py live`: "
                     f"{fmt(cold.get('first_b1_helper_s'), 1)} s; imports "
                     f"{fmt(cold.get('first_train_import_s'))} s).")
    if results["machine"].get("cpu"):
        from measure import machine_line

        lines.append(f"Machine: {machine_line(results['machine'])}; {results['threads']} threads.")
    if results.get("kernels"):
        lines += ["", "| kernel (B=32, T=64, C=96) | Numba us | NumPy reference us | speedup |",
                  "|---|---|---|---|"]
        for name, k in results["kernels"].items():
            lines.append(f"| {name} | {k['numba_us']:.0f} | {k['numpy_us']:.0f} | "
                         f"{k['speedup']:.1f}x |")
    return "\n".join(lines)


def achieved_gflops(figures: dict, gflop_per_sample: float) -> dict:
    """GFLOP/s of the batch-256 forward and of training (a step does 3x the forward's FLOPs:
    the forward and the backward's two products per layer) from a framework's samples/s, for
    those of the two it has."""
    rates = {}
    if figures.get("b256_samples_s") is not None:
        rates["gflops_b256"] = figures["b256_samples_s"] * gflop_per_sample
    if figures.get("train_samples_s") is not None:
        rates["gflops_train"] = figures["train_samples_s"] * 3 * gflop_per_sample
    return rates


# issue 13's goals against PyTorch: batch-256 forward 1.3x, training 1.5x
GOAL_B256, GOAL_TRAIN = 1.3, 1.5


def shares_text(results: dict, rate: float) -> str:
    """Per variant, ours (and PyTorch's, when measured) b256 forward / training GFLOP/s as
    percentages of `rate`, and with PyTorch's the shares that the goals would ask of ours
    (goal x PyTorch's share): where those near 100 %, a goal is out of reach of any product."""
    parts = []
    for variant, entry in results["variants"].items():
        flops = entry.get("forward_gflop_per_sample")
        text = (f"{variant} {fmt(entry['ours'].get('gflops_b256', 0) / rate * 100, 0)} % / "
                f"{fmt(entry['ours'].get('gflops_train', 0) / rate * 100, 0)} %")
        torch_rates = achieved_gflops(entry.get("torch") or {}, flops) if flops else {}
        if len(torch_rates) == 2 and all(torch_rates.values()):
            b256, train = (torch_rates[key] / rate * 100 for key in ("gflops_b256", "gflops_train"))
            text += (f" (PyTorch {fmt(b256, 0)} % / {fmt(train, 0)} %; the goals ask "
                     f"{fmt(GOAL_B256 * b256, 0)} % / {fmt(GOAL_TRAIN * train, 0)} %)")
        parts.append(text)
    return ", ".join(parts)


# ratios that results before 2026-12-03 (round 2) do not have: left out there, not shown as "-"
NEWER_RATIOS = {"ort_over_ours_bf16_b1"}
RATIO_NAMES = {"ort_over_ours_b1": "ORT/ours b1", "ort_over_ours_bf16_b1": "ORT/ours b1 bf16",
               "ours_over_torch_train": "ours/torch train",
               "ours_over_torch_b256": "ours/torch b256"}


def summary(paths: list[Path]) -> str:
    """The ratios of saved results, grouped by machine (CPU model and ISA, or 'not recorded'
    for results older than the machine record), one line per run and variant."""
    by_machine: dict[str, list[str]] = {}
    for path in sorted(paths):
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        machine = results.get("machine", {})
        key = machine_key(machine) if machine.get("cpu") else "CPU not recorded"
        for variant, entry in results.get("variants", {}).items():
            q = entry.get("ratios") or {  # single-round results: ratios of the figures
                "ort_over_ours_b1": ratio((entry.get("ort") or {}).get("b1_ms"),
                                          entry["ours"].get("b1_ms")),
                "ours_over_torch_train": ratio(entry["ours"].get("train_samples_s"),
                                               (entry.get("torch") or {}).get("train_samples_s")),
                "ours_over_torch_b256": ratio(entry["ours"].get("b256_samples_s"),
                                              (entry.get("torch") or {}).get("b256_samples_s"))}
            figures = ", ".join(f"{label} {fmt(q.get(name))}x" for name, label in RATIO_NAMES.items()
                                if q.get(name) is not None or name not in NEWER_RATIOS)
            by_machine.setdefault(key, []).append(
                f"  {path.name} ({results.get('threads')} threads) {variant}: {figures}")
    return "\n".join(f"{key}\n" + "\n".join(rows) for key, rows in by_machine.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="atto,pico,tiny")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, one round")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds in which the frameworks take turns (default 3, --quick 1)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-torch", action="store_true", help="hide torch and onnxruntime")
    parser.add_argument("--no-kernels", action="store_true", help="skip per-kernel timings")
    parser.add_argument("--cold-compile", action="store_true",
                        help="also time a new process with an empty Numba cache to its first "
                             "training step and first batch-1 predict (about a minute each)")
    parser.add_argument("--hide-avx512", action="store_true",
                        help="run every child as on a CPU without AVX-512: CPUID hides it from "
                             "every framework, ONNX Runtime included (bench/hide_avx512.c)")
    parser.add_argument("--summary", action="store_true",
                        help="print the ratios of every saved result, grouped by machine, and exit")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/<date>.json)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    if args.summary:
        print(summary(list((HERE / "results").glob("*.json"))))
        return
    if args.child:
        kind = args.child[0]
        if kind == "kernels":
            result = child_kernels(args.quick, args.threads)
        elif kind == "matmul":
            result = child_matmul(args.threads)
        else:
            framework, task = kind.split("-")
            fn = child_ours if framework == "ours" else child_torch
            result = fn(task, args.child[1], args.quick, args.threads)
        print(json.dumps(result))
        return

    if args.hide_avx512:
        from hide_avx512 import build, environment

        try:
            USER_ENV.update(environment(build(), USER_ENV))
        except RuntimeError as error:
            parser.error(str(error))
    torch_ok = not args.no_torch and os.environ.get("BENCH_NO_TORCH") != "1" and have("torch")
    ort_ok = torch_ok and have("onnxruntime") and have("onnx")
    flag = " --quick" if args.quick else ""
    command = (f"python bench/run.py --variants {args.variants} --threads {args.threads}"
               f" --rounds {args.rounds}{flag}"
               + (" --no-torch" if args.no_torch else "")
               + (" --no-kernels" if args.no_kernels else "")
               + (" --cold-compile" if args.cold_compile else "")
               + (" --hide-avx512" if args.hide_avx512 else ""))
    results: dict = {
        "date": dt.date.today().isoformat(), "command": command, "threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_avg_start": os.getloadavg(),
                    "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
                    "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE")},
        "shape": {"in_channels": C_IN, "T": T, "classes": CLASSES, "batch_infer": BATCH_INFER,
                  "batch_train": BATCH_TRAIN},
        "variants": {},
    }
    from numpyconvnext.model import CONFIGS, forward_flops

    quick = ["--quick"] if args.quick else []
    ceiling = run_child(["matmul", *quick], args.threads) or {}
    results["matmul_gflops"] = ceiling.get("matmul_gflops")
    results["fma_peak_gflops"] = ceiling.get("fma_peak_gflops")
    results["machine"].update(ceiling.get("machine", {}))
    for variant in args.variants.split(","):
        print(f"{variant}...", file=sys.stderr, flush=True)
        flops = forward_flops(**CONFIGS[variant], in_channels=C_IN, num_classes=CLASSES, length=T)
        rounds = []
        for _ in range(args.rounds):  # frameworks take turns, so drifting load hits all alike
            row: dict = {"ours": {}}
            for task in ("infer", "train"):
                row["ours"].update(run_child([f"ours-{task}", variant, *quick], args.threads) or {})
                if torch_ok:
                    row.setdefault("torch", {}).update(
                        run_child([f"torch-{task}", variant, *quick], args.threads) or {})
            row["ours_passive"] = run_child(["ours-b1", variant, *quick], args.threads,
                                            PASSIVE_ENV) or {}
            row["ours_bf16"] = run_child(["ours-b1bf16", variant, *quick], args.threads) or {}
            if ort_ok:
                row["ort"] = run_child(["torch-ort", variant, *quick], args.threads) or {}
            rounds.append(row)
        entry = combine_rounds(rounds)
        ours = entry["ours"]
        ours.update(achieved_gflops(ours, flops / 1e9))
        entry["forward_gflop_per_sample"] = flops / 1e9
        results["variants"][variant] = entry
    if not args.no_kernels:
        results["kernels"] = run_child(["kernels", *quick], args.threads)
    results["cold_start"] = cold_start(args.threads)
    if args.cold_compile:
        results["cold_compile"] = cold_compile(args.threads)
    results["machine"]["load_avg_end"] = os.getloadavg()

    out = Path(args.out) if args.out else HERE / "results" / f"{results['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"\nReproduce: `{command}`  (results: {out})")


if __name__ == "__main__":
    main()
