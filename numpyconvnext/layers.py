"""ConvNeXt layers on channels-last activations [B, T, C], each a forward() and a backward().

A layer holds views of its parameters and gradients (named as in the official ConvNeXt code,
relative to the layer), keeps in `forward` exactly what `backward` needs, and in `backward`
writes its parameter gradients and returns dL/dx. Pass `cache=False` to forward for inference:
nothing is kept and backward is unavailable.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

from kernels.block import (
    BLOCK_ROWS,
    block_forward_rows,
    block_parts,
    matmul_cols_address,
    matmul_rows,
)
from kernels.dwconv import (
    dwconv_backward,
    dwconv_layernorm_forward_into,
    dwconv_layernorm_inference_into,
)
from kernels.gelu import (
    bias_gelu_backward,
    bias_gelu_forward_into,
    bias_gelu_inplace,
    gelu_forward_into,
)
from kernels.layernorm import layernorm_backward, layernorm_forward, layernorm_forward_serial
from kernels.linear import (
    linear_backward,
    linear_forward,
    matmul,
    matmul_pair,
    patchify_backward,
    patchify_forward,
)
from kernels.residual import bias_residual_forward, residual_backward
from numpyconvnext.threads import numba_threads, set_numba_threads, split_work

LAYERNORM_EPS = 1e-6


class Workspace:
    """Scratch buffers by (name, shape, dtype), reused from call to call and shared by layers.

    A buffer holds only values consumed within one layer call (or, for the `out` ping-pong of
    inference, until the next layer has read it); anything `backward` needs is a fresh array.
    Each Python thread has buffers of its own (so predict may run in several threads at once),
    grouped by the input shape of the model call that uses them (`select`): a thread keeps the
    groups of its `max_groups` most recently used input shapes and drops older ones, so a
    stream of varying batch sizes does not grow memory. `clear()` drops every thread's buffers.
    """

    def __init__(self, max_groups: int = 4):
        self.max_groups = max_groups
        self._local = threading.local()
        self._stores: weakref.WeakSet[_Store] = weakref.WeakSet()
        self._lock = threading.Lock()

    def _store(self) -> _Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = _Store()
            with self._lock:
                self._stores.add(store)
        return store

    def select(self, key: Hashable) -> None:
        """Make the buffers of `key` (a model call's input shape) this thread's current group."""
        store = self._store()
        group = store.groups.pop(key, None)
        store.groups[key] = group = {} if group is None else group
        while len(store.groups) > self.max_groups:
            store.groups.popitem(last=False)
        store.current = group

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        store = self._store()
        if store.current is None:
            self.select(None)
        buffers = store.current
        key = (name, shape, np.dtype(dtype).char)
        buffer = buffers.get(key)
        if buffer is None:
            buffer = buffers[key] = np.empty(shape, dtype=dtype)
        return buffer

    def nbytes(self) -> int:
        """Bytes held by this thread's buffers."""
        return sum(b.nbytes for group in self._store().groups.values() for b in group.values())

    def clear(self) -> None:
        with self._lock:
            stores = list(self._stores)
        for store in stores:
            store.groups = OrderedDict()
            store.current = None


class _Store:
    """One thread's buffers: input shape -> {(name, shape, dtype): array}, oldest first."""

    def __init__(self):
        self.groups: OrderedDict[Hashable, dict] = OrderedDict()
        self.current: dict | None = None


class Layer:
    """Base: `params` and `grads` are dicts of arrays (views into the model's flat buffers).

    `workspace` is this layer's scratch space; the model shares one among all its layers.
    `eps` is the LayerNorm epsilon.
    """

    def __init__(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray],
                 eps: float = LAYERNORM_EPS):
        self.params = params
        self.grads = grads
        self.eps = eps
        self._cache: tuple | None = None
        self.workspace = Workspace()

    def _take_cache(self) -> tuple:
        if self._cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a forward(cache=True) before it"
            )
        cache, self._cache = self._cache, None
        return cache


# below this many elements a LayerNorm runs serially (an OpenMP fork/join costs more)
SERIAL_ELEMENTS = 1 << 14


def _layernorm(rows: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float):
    fn = layernorm_forward_serial if rows.size <= SERIAL_ELEMENTS else layernorm_forward
    return fn(rows, weight, bias, eps)


def _layernorm_rows(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float):
    rows = x.reshape(-1, x.shape[-1])
    y, mean, rstd = _layernorm(rows, weight, bias, eps)
    return y.reshape(x.shape), mean, rstd


def _layernorm_rows_backward(dy, x, weight, mean, rstd):
    rows = x.reshape(-1, x.shape[-1])
    dx, dw, db = layernorm_backward(dy.reshape(rows.shape), rows, weight, mean, rstd)
    return dx.reshape(x.shape), dw, db


class Stem(Layer):
    """Patchify conv (kernel = stride = 4) then LayerNorm. Takes the public layout [B, C_in, T].

    Parameters: `0.weight [d0, C_in, 4]`, `0.bias [d0]` (conv), `1.weight`, `1.bias [d0]` (norm).
    """

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        p = self.params
        x_last = np.ascontiguousarray(x.transpose(0, 2, 1))
        y = patchify_forward(x_last, p["0.weight"], p["0.bias"])
        z, mean, rstd = _layernorm_rows(y, p["1.weight"], p["1.bias"], self.eps)
        if cache:
            self._cache = (x_last, y, mean, rstd)
        return z

    def backward(self, dz: np.ndarray, need_dx: bool = True) -> np.ndarray | None:
        x_last, y, mean, rstd = self._take_cache()
        p, g = self.params, self.grads
        dy, g["1.weight"][...], g["1.bias"][...] = _layernorm_rows_backward(
            dz, y, p["1.weight"], mean, rstd
        )
        dx, g["0.weight"][...], g["0.bias"][...] = patchify_backward(
            dy, x_last, p["0.weight"], need_dx
        )
        return None if dx is None else dx.transpose(0, 2, 1)


class Downsample(Layer):
    """LayerNorm then patchify conv (kernel = stride = 2): [B, T, C] -> [B, T/2, C'].

    Parameters: `0.weight`, `0.bias [C]` (norm), `1.weight [C', C, 2]`, `1.bias [C']` (conv).
    """

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        p = self.params
        z, mean, rstd = _layernorm_rows(x, p["0.weight"], p["0.bias"], self.eps)
        y = patchify_forward(z, p["1.weight"], p["1.bias"])
        if cache:
            self._cache = (x, z, mean, rstd)
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        x, z, mean, rstd = self._take_cache()
        p, g = self.params, self.grads
        dz, g["1.weight"][...], g["1.bias"][...] = patchify_backward(dy, z, p["1.weight"])
        dx, g["0.weight"][...], g["0.bias"][...] = _layernorm_rows_backward(
            dz, x, p["0.weight"], mean, rstd
        )
        return dx


def _rows_kernel_fits(x: np.ndarray, w: np.ndarray) -> bool:
    return (x.dtype == w.dtype and x.dtype in (np.float32, np.float64) and x.flags.c_contiguous
            and w.flags.c_contiguous)


class Block(Layer):
    """x + drop_path(gamma * pwconv2(GELU(pwconv1(LayerNorm(dwconv7(x)))))) on [B, T, C].

    Parameters: `dwconv.weight [C, 1, K]`, `dwconv.bias`, `norm.weight`, `norm.bias`,
    `pwconv1.weight [4C, C]`, `pwconv1.bias [4C]`, `pwconv2.weight [C, 4C]`, `pwconv2.bias`,
    `gamma [C]` (layer scale). `drop_path_rate` is this block's stochastic-depth probability.

    Memory: the forward keeps only x, pre = pwconv1(...) + bias [BT, 4C] and the branch before
    layer scale [BT, C]; the backward recomputes dwconv + LayerNorm from x and a = GELU(pre)
    (cheap elementwise passes) instead of keeping y, z and a, which halves the activations.
    """

    def __init__(self, params, grads, drop_path_rate: float = 0.0):
        super().__init__(params, grads)
        self.drop_path_rate = float(drop_path_rate)
        # a frozen model's pointwise weights packed for our GEMM (ConvNeXt1D.frozen), by name
        self.panels: dict[str, np.ndarray] = {}

    def _norm_input(self, x: np.ndarray, w_taps: np.ndarray):
        """y = dwconv(x), z = LayerNorm(y), mean, rstd into workspace buffers."""
        p, ws = self.params, self.workspace
        B, T, C = x.shape
        return dwconv_layernorm_forward_into(
            x, w_taps, p["dwconv.bias"], p["norm.weight"], p["norm.bias"], self.eps,
            ws.get("y", (B, T, C), x.dtype), ws.get("z", (B, T, C), x.dtype),
            ws.get("mean", (B, T), x.dtype), ws.get("rstd", (B, T), x.dtype),
        )

    def forward(self, x: np.ndarray, keep: np.ndarray, cache: bool = True) -> np.ndarray:
        """x [B, T, C]; keep [B] is the drop-path factor per sample (0 or 1/keep_prob, or 1).

        With cache=False (inference) every intermediate, and the result, lives in workspace
        buffers: the result stays valid until the next-but-one block call of this shape.
        """
        if not cache:
            return self._forward_inference(x, keep)
        p = self.params
        B, T, C = x.shape
        ws = self.workspace
        w_taps = np.ascontiguousarray(p["dwconv.weight"][:, 0, :].T)
        # only z (the backward recomputes y, mean and rstd): the inference kernel, same bits
        z = dwconv_layernorm_inference_into(x, w_taps, p["dwconv.bias"], p["norm.weight"],
                                            p["norm.bias"], self.eps,
                                            ws.get("z", (B, T, C), x.dtype))
        # few rows: the same matmul kernel as block_forward_rows, so that forward() in eval mode
        # and predict() give the same bits
        if B * T <= BLOCK_ROWS and _rows_kernel_fits(z, p["pwconv1.weight"]):
            pre = matmul_rows(z.reshape(B * T, C), p["pwconv1.weight"],
                              np.empty((B * T, 4 * C), x.dtype))
            a, pre = bias_gelu_forward_into(pre, p["pwconv1.bias"], ws.get("a", pre.shape, x.dtype))
            branch = matmul_rows(a, p["pwconv2.weight"], np.empty((B * T, C), x.dtype))
        else:
            pre = linear_forward(z.reshape(B * T, C), p["pwconv1.weight"], None)
            a, pre = bias_gelu_forward_into(pre, p["pwconv1.bias"], ws.get("a", pre.shape, x.dtype))
            branch = linear_forward(a, p["pwconv2.weight"], None)
        # pwconv2's bias added to the kept branch in the residual's pass (same bits as `+=`)
        branch = branch.reshape(B, T, C)
        out = bias_residual_forward(x, branch, p["pwconv2.bias"], p["gamma"], keep, np.empty_like(x))
        self._cache = (x, w_taps, pre, branch, keep)
        return out

    def _forward_inference(self, x: np.ndarray, keep: np.ndarray) -> np.ndarray:
        p, ws = self.params, self.workspace
        B, T, C = x.shape
        w_taps = np.ascontiguousarray(p["dwconv.weight"][:, 0, :].T)
        wide = (B * T, 4 * C)
        out = ws.get("out0", x.shape, x.dtype)
        if np.shares_memory(out, x):  # ping-pong so that out never aliases x
            out = ws.get("out1", x.shape, x.dtype)
        if B * T <= BLOCK_ROWS:  # few rows: one call, big matmuls split by columns over threads
            threads = numba_threads()
            parts = block_parts(B * T, C, threads, split_work())
            if parts < threads:  # small block: no fork/join at all (it costs more than it saves)
                set_numba_threads(parts)
            try:
                return block_forward_rows(
                    x, w_taps, p["dwconv.bias"], p["norm.weight"], p["norm.bias"], self.eps,
                    p["pwconv1.weight"], p["pwconv1.bias"], p["pwconv2.weight"],
                    p["pwconv2.bias"], p["gamma"], keep, ws.get("z", (parts, B * T, C), x.dtype),
                    ws.get("a", wide, x.dtype), out, parts,
                    matmul_cols_address(x.dtype, p["pwconv1.weight"].dtype),
                )
            finally:
                if parts < threads:
                    set_numba_threads(threads)
        z = dwconv_layernorm_inference_into(x, w_taps, p["dwconv.bias"], p["norm.weight"],
                                          p["norm.bias"], self.eps, ws.get("z", (B, T, C), x.dtype))
        h = matmul(z.reshape(B * T, C), p["pwconv1.weight"].T, out=ws.get("pre", wide, x.dtype),
                   panels=self.panels.get("pwconv1.weight"))
        a = bias_gelu_inplace(h, p["pwconv1.bias"])
        branch = ws.get("branch", (B, T, C), x.dtype)
        matmul(a, p["pwconv2.weight"].T, out=branch.reshape(B * T, C),
               panels=self.panels.get("pwconv2.weight"))
        return bias_residual_forward(x, branch, p["pwconv2.bias"], p["gamma"], keep, out)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        x, w_taps, pre, branch, keep = self._take_cache()
        p, g, ws = self.params, self.grads, self.workspace
        B, T, C = x.shape
        a = gelu_forward_into(pre, ws.get("a", pre.shape, x.dtype))  # again, not kept
        dout = np.ascontiguousarray(dout)
        dbranch, g["gamma"][...] = residual_backward(dout, branch, p["gamma"], keep,
                                                     g["pwconv2.bias"])
        dbranch = dbranch.reshape(B * T, C)
        _, da = matmul_pair((dbranch.T, a, g["pwconv2.weight"]),
                            (dbranch, p["pwconv2.weight"], ws.get("da", pre.shape, x.dtype)))
        dpre, g["pwconv1.bias"][...] = bias_gelu_backward(da, pre)
        y, z, mean, rstd = self._norm_input(x, w_taps)
        _, dz = matmul_pair((dpre.T, z.reshape(B * T, C), g["pwconv1.weight"]),
                            (dpre, p["pwconv1.weight"], ws.get("dz", (B * T, C), x.dtype)))
        dy, g["norm.weight"][...], g["norm.bias"][...] = layernorm_backward(
            dz, y.reshape(B * T, C), p["norm.weight"], mean.reshape(-1), rstd.reshape(-1)
        )
        # the residual's dout added to dx as the conv's backward stores it
        dx, dw_taps, g["dwconv.bias"][...] = dwconv_backward(dy.reshape(B, T, C), x, w_taps,
                                                             dout)
        g["dwconv.weight"][:, 0, :] = dw_taps.T
        return dx


class Head(Layer):
    """Global average pool over T -> LayerNorm -> Linear: [B, T, C] -> logits [B, classes].

    Parameters: `norm.weight`, `norm.bias [C]`, `head.weight [classes, C]`, `head.bias`.
    """

    def forward(self, x: np.ndarray, cache: bool = True) -> np.ndarray:
        p = self.params
        pooled = x.mean(axis=1)
        if not cache:  # inference: the few-row kernels predict() uses, for the same bits
            z, _, _ = _layernorm(pooled, p["norm.weight"], p["norm.bias"], self.eps)
            return linear_forward(z, p["head.weight"], p["head.bias"])
        # training: BLAS and the parallel LayerNorm the stem compiled already, so the first
        # training step compiles no few-row kernel (~3 s on an empty cache)
        z, mean, rstd = layernorm_forward(pooled, p["norm.weight"], p["norm.bias"], self.eps)
        logits = matmul(z, p["head.weight"].T)
        logits += p["head.bias"]
        self._cache = (x.shape, pooled, z, mean, rstd)
        return logits

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        shape, pooled, z, mean, rstd = self._take_cache()
        p, g = self.params, self.grads
        dz, g["head.weight"][...], g["head.bias"][...] = linear_backward(
            dlogits, z, p["head.weight"]
        )
        dpooled, g["norm.weight"][...], g["norm.bias"][...] = layernorm_backward(
            dz, pooled, p["norm.weight"], mean, rstd
        )
        B, T, C = shape
        return np.broadcast_to((dpooled / T)[:, None, :], shape).copy()


def drop_path_keep(rate: float, batch: int, rng: np.random.Generator, dtype) -> np.ndarray:
    """Per-sample stochastic-depth factors: 1/(1-rate) with probability 1-rate, else 0."""
    keep_prob = 1.0 - rate
    if rate <= 0.0:
        return np.ones(batch, dtype=dtype)
    return (rng.random(batch) < keep_prob).astype(dtype) / dtype(keep_prob)
