"""Two versions of kernels/gemm.py (or kernels/dwconv.py) inside the model, in one process, step
by step.

    python bench/gemm_source_ab.py OLD.py [NEW.py] [--kernel gemm|dwconv] [--task train|b256]
                                   [--variant tiny] [--steps 40] [--gemm auto|own]

Each source is compiled as a module of its own (no cache); every step of the model then runs
with one version's kernels, the versions alternating step by step (the order flips every step).
`--kernel gemm` (the default): kernels/gemm.py's, through a copy of kernels/split.py bound to
each, whose `own_products` is put in `kernels.linear`. `--kernel dwconv`: the depthwise conv's
kernels that the block calls (`dwconv_backward`, `dwconv_layernorm_forward_into`,
`dwconv_layernorm_inference_into`), put in `numpyconvnext.layers`. NEW defaults to the working
tree's file; OLD is e.g. `git show HEAD~1:kernels/gemm.py > /tmp/old.py`. Prints each version's
median step and the median and interquartile range of old time / new time over the pairs: a
change of ~1 % shows, where separate processes on a noisy VM differ by +-10 % (bench/NOTES.md
round 22: the same file against itself 0.995, 0.986-1.011; DEPTH = 64 against 512 0.80). With
`--kernel gemm` only products that go to our GEMM in a parallel region change
(`kernels.linear.uses_own_gemm`). Run it in the CLI's environment (GOMP_SPINCOUNT=3000 and the
malloc settings of `cli.set_process_defaults`) to match `cli.py train`.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from measure import machine_info, machine_line, software_info, training_step  # noqa: E402

from kernels import linear  # noqa: E402
from numpyconvnext import layers  # noqa: E402
from numpyconvnext.model import ConvNeXt1D  # noqa: E402

C_IN, T, CLASSES = 20, 256, 3
# the names of kernels/dwconv.py that the block calls, swapped in numpyconvnext.layers
DWCONV_KERNELS = ("dwconv_backward", "dwconv_layernorm_forward_into",
                  "dwconv_layernorm_inference_into")


def _module(name: str, source: str, folder: Path):
    """`source` imported as module `name` from a file in `folder`."""
    path = folder / f"{name}.py"
    path.write_text(source.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def own_products_of(gemm_source: str, tag: str, folder: Path):
    """`kernels.split.own_products` compiled against `gemm_source` instead of kernels/gemm.py."""
    _module(f"ab_gemm_{tag}", gemm_source, folder)
    split = (ROOT / "kernels" / "split.py").read_text()
    line = "from kernels.gemm import gemm_block"
    if line not in split:
        raise SystemExit(f"gemm_source_ab: kernels/split.py no longer has `{line}`")
    bound = f"from ab_gemm_{tag} import gemm_block"
    if not re.search(r"def gemm_block\([^)]*panels", gemm_source):
        # a kernels/gemm.py from before round 24: no packed `panels` argument, which it ignores
        bound = (f"from ab_gemm_{tag} import gemm_block as _gemm_block_of_{tag}\n\n\n"
                 "@njit(nogil=True, inline=\"always\")\n"
                 "def gemm_block(a, sa, sk, b, sb, sn, depth, out, ldo, rows0, rows1, cols0, cols1,\n"
                 "               panels):\n"
                 f"    _gemm_block_of_{tag}(a, sa, sk, b, sb, sn, depth, out, ldo, rows0, rows1,"
                 " cols0, cols1)\n")
    return _module(f"ab_split_{tag}", split.replace(line, bound), folder).own_products


def dwconv_kernels_of(dwconv_source: str, tag: str, folder: Path) -> dict:
    """The block's depthwise conv kernels (`DWCONV_KERNELS`) compiled from `dwconv_source`."""
    module = _module(f"ab_dwconv_{tag}", dwconv_source, folder)
    return {name: getattr(module, name) for name in DWCONV_KERNELS}


def installer(kernel: str, sources: dict[str, str], folder: Path):
    """A function install(tag) that makes the model run the version compiled from sources[tag],
    or with tag None what ran before."""
    if kernel == "gemm":
        products = {tag: own_products_of(text, tag, folder) for tag, text in sources.items()}
        products[None] = linear.own_products

        def install(tag: str | None) -> None:
            linear.own_products = products[tag]
        return install
    kernels = {tag: dwconv_kernels_of(text, tag, folder) for tag, text in sources.items()}
    kernels[None] = {name: getattr(layers, name) for name in DWCONV_KERNELS}

    def install(tag: str | None) -> None:
        for name, function in kernels[tag].items():
            setattr(layers, name, function)
    return install


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path, nargs="?",
                        help="default: the working tree's kernels/<kernel>.py")
    parser.add_argument("--kernel", choices=("gemm", "dwconv"), default="gemm")
    parser.add_argument("--task", choices=("train", "b256"), default="train")
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--gemm", choices=("auto", "own"), default="auto",
                        help="own: our GEMM even where BLAS is the default (kernels.linear)")
    args = parser.parse_args()
    args.new = args.new or ROOT / "kernels" / f"{args.kernel}.py"
    print(machine_line({**machine_info(), **software_info()}))
    rng = np.random.default_rng(0)
    model = ConvNeXt1D.from_config(args.variant, C_IN, CLASSES)
    if args.task == "train":
        step = training_step(model, rng, 32, C_IN, T, CLASSES)
    else:
        model = model.frozen("float32")
        x = rng.standard_normal((256, C_IN, T)).astype(np.float32)

        def step():
            model.predict(x)
    if args.gemm != "auto":
        linear.set_gemm(args.gemm)
    folder = tempfile.TemporaryDirectory()
    install = installer(args.kernel, {"old": args.old.read_text(), "new": args.new.read_text()},
                        Path(folder.name))
    seconds = {"old": [], "new": []}
    try:
        for tag in ("old", "new"):  # compile and warm both
            install(tag)
            step()
            step()
        for i in range(args.steps):
            for tag in ("old", "new") if i % 2 == 0 else ("new", "old"):
                install(tag)
                start = time.perf_counter()
                step()
                seconds[tag].append(time.perf_counter() - start)
    finally:
        install(None)
        folder.cleanup()
    old, new = np.array(seconds["old"]), np.array(seconds["new"])
    ratio = old / new
    print(f"{args.variant} {args.task}: old {np.median(old) * 1e3:.1f} ms, new "
          f"{np.median(new) * 1e3:.1f} ms; old/new median {np.median(ratio):.3f}, "
          f"IQR {np.percentile(ratio, 25):.3f}-{np.percentile(ratio, 75):.3f} ({args.steps} pairs)")
    if args.kernel == "gemm" and not linear.uses_own_gemm():
        print("note: this machine's products go to BLAS (kernels.linear.uses_own_gemm), so both "
              "versions ran the same code: try --gemm own")
    print(f"Reproduce: python bench/gemm_source_ab.py {args.old} {args.new} --kernel {args.kernel} "
          f"--task {args.task} --variant {args.variant} --steps {args.steps} --gemm {args.gemm}")


if __name__ == "__main__":
    main()
