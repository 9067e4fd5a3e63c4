"""The whole ConvNeXt forward for few rows (batch-1 inference) in one call.

At batch 1 and T=256 the four stages have 64, 32, 16 and 8 rows. Layer by layer from Python,
each of the ~40 kernel calls pays for the interpreter, Numba's argument unboxing and a few
small copies (the stem, downsamples and head alone took 0.35 ms of an atto predict's 2-3 ms).
Here the same computation runs as one compiled function over the model's flat parameter buffer:

    act = LN(patchify_4(x))                                        stem
    for stage i: act = patchify_2(LN(act)) (i > 0); act = block(act) for each block
    logits = LN(mean_t act) W^T + b                                head

(`act`: the activations between blocks, [B, steps, d], the `x` of each block)

where patchify_s(x)[t] = b + sum_{c, j} w[:, c, j] x[s t + j, c] (Conv1d, kernel = stride = s),
computed as one product of the patches, rearranged channel-major [rows, C*s], with w viewed as
[C_out, C*s]; each block is `kernels.block.block_forward_rows`, its two matmuls split by output
columns over `parts[i]` threads in stage i, the downsample's product into stage i likewise
over `parts[n + i]` (`kernels.block.matmul_split`; n stages). A parallel loop costs a
fork/join of the thread pool (10-40 us on 2-vCPU VMs, more than a small block's matmul), also
when it has one piece, so the network sets the thread count to those parts (through Numba's C
setter: `set_num_threads` itself would bake an address into the code and defeat the disk
cache) and back to `threads` before it returns. The blocks and the few-row matmuls of the
stem, downsamples and head run through the addresses of their compiled code (`addresses`,
kernels/pointer.py), so that they compile apart from this function. Parameters are read in
place: `spans[i]` = (start, end) of the i-th parameter of the official state-dict order in
`flat`.

Layout: x [B, T, C_in] channels-last, C-contiguous. Results equal the layer-by-layer path to
rounding (the products are reassociated), not bit for bit.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

from kernels.block import (
    block_parts,
    block_rows_address,
    matmul_cols_address,
    matmul_cols_packed_address,
    matmul_split_address,
)
from kernels.layernorm import layernorm_forward_serial
from kernels.pointer import (
    call_block_rows,
    call_matmul_cols,
    call_matmul_split,
    call_set_threads,
    thread_setter_address,
)


@functools.cache  # per predict it costs a dictionary lookup
def addresses(dtype, pointwise, packed: bool = False) -> np.ndarray:
    """The functions `network_forward_rows` calls, for `dtype` activations and `pointwise`
    weights (dtype, or uint16 bfloat16 bits), stored as in the state dict or `packed`
    (`kernels.block.pack_columns`): int64 [block, matmul of the activations' dtype, matmul
    with the pointwise weights, Numba's thread-count setter (0: none), 1 if packed else 0,
    that matmul split over threads (`kernels.block.matmul_split`)]; compiled if needed.
    Read-only."""
    pointwise_matmul = (matmul_cols_packed_address if packed else matmul_cols_address)(
        dtype, pointwise)
    found = np.array([block_rows_address(dtype, pointwise), matmul_cols_address(dtype, dtype),
                      pointwise_matmul, thread_setter_address(), int(packed),
                      matmul_split_address(dtype)],
                     dtype=np.int64)
    found.flags.writeable = False
    return found


def stage_parts(rows: int, dims, threads: int, min_work: int) -> np.ndarray:
    """`network_forward_rows`'s `parts` for an input of `rows` = B*T/4 stem rows: per stage,
    `kernels.block.block_parts` of its rows (halved by each downsample) and width (its blocks'
    threads); then per stage the downsample's into it by the same rule (its product, rows x
    d x d, is a quarter of a pwconv's: the block rule at half the width), 1 for the stem."""
    blocks = [block_parts(rows >> i, d, threads, min_work) for i, d in enumerate(dims)]
    downsamples = [1] + [block_parts(rows >> i, d // 2, threads, min_work)
                         for i, d in enumerate(dims) if i > 0]
    return np.array(blocks + downsamples, dtype=np.int64)


@njit(cache=True, inline="always")  # inlined: no specialisation per literal index
def _param(flat, spans, i):
    return flat[spans[i, 0]:spans[i, 1]]


@njit(cache=True)
def _patchify_rows(x, w, b, out, matmul, split, parts):
    """out[B*T/s, C_out] = patchify_s(x) for x [B, T, C], w [C_out, C*s] (Conv1d weight
    [C_out, C, s] flattened), b [C_out]; `matmul`: the few-row matmul's address, run on
    `parts` threads through `split` (`kernels.block.matmul_split`'s address) if parts > 1."""
    B, T, C = x.shape
    s = w.shape[1] // C
    steps = T // s
    patches = np.empty((B * steps, C * s), dtype=x.dtype)
    for r in range(B * steps):
        bi = r // steps
        t0 = (r % steps) * s
        row = patches[r]
        for j in range(s):
            xs = x[bi, t0 + j]
            for c in range(C):
                row[c * s + j] = xs[c]
    if parts > 1:
        call_matmul_split(split, patches, w, out, parts, matmul)
    else:
        call_matmul_cols(matmul, patches, w, out, 0, w.shape[0])
    out += b
    return out


@njit(cache=True)
def network_forward_rows(x, flat, spans, dims, depths, kernel, eps, parts, threads, pointwise,
                         functions):
    """Logits [B, classes] of the ConvNeXt whose parameters `flat`/`spans` hold, for x
    [B, T, C_in] (channels-last); dims, depths int64 [n], parts int64 [2n]; kernel = dwconv
    taps; parts[i] = threads for the matmuls of each block of stage i, parts[n + i] for the
    product of the downsample into stage i (1 <= parts <= NUMBA_NUM_THREADS; `stage_parts`),
    `threads` = the calling thread's Numba thread count, set again before returning. The
    blocks' pointwise weights (pwconv1, pwconv2: nearly all the bytes) are read from
    `pointwise` at the same spans: `flat` itself, or the bfloat16 bits of `flat` (uint16,
    `kernels.simd.bfloat16_bits`; widened to float32 as they are loaded), each weight there
    packed by `kernels.block.pack_columns` if functions[4] is 1 (`_matmul_cols_packed` reads
    it; its array then has the shape [in, out], for the sizes only).
    `functions` = `addresses(x.dtype, pointwise.dtype, packed)`."""
    B, T, C_in = x.shape
    dt = x.dtype
    block, matmul, pointwise_matmul = functions[0], functions[1], functions[2]
    set_threads = functions[3]
    packed = functions[4] == 1
    split = functions[5]
    n = dims.shape[0]
    d = dims[0]
    steps = T // 4
    stem = np.empty((B * steps, d), dtype=dt)
    _patchify_rows(x, _param(flat, spans, 0).reshape((d, C_in * 4)), _param(flat, spans, 1), stem,
                   matmul, split, 1)
    act = layernorm_forward_serial(stem, _param(flat, spans, 2), _param(flat, spans, 3),
                                   eps)[0].reshape((B, steps, d))
    keep = np.ones(B, dtype=dt)
    block_param = 4 + 4 * (n - 1)  # first block parameter after all downsamples
    for i in range(n):
        if i > 0:
            first = 4 + 4 * (i - 1)
            normed = layernorm_forward_serial(act.reshape((B * steps, d)), _param(flat, spans, first),
                                              _param(flat, spans, first + 1), eps)[0]
            c_prev = d
            d = dims[i]
            act = np.empty((B, steps // 2, d), dtype=dt)
            call_set_threads(set_threads, parts[n + i])
            _patchify_rows(normed.reshape((B, steps, c_prev)),
                           _param(flat, spans, first + 2).reshape((d, c_prev * 2)),
                           _param(flat, spans, first + 3), act.reshape((B * (steps // 2), d)), matmul,
                           split, parts[n + i])
            steps //= 2
        rows = B * steps
        taps = np.empty((kernel, d), dtype=dt)
        call_set_threads(set_threads, parts[i])
        z = np.empty((parts[i], rows, d), dtype=dt)
        a = np.empty((rows, 4 * d), dtype=dt)
        other = np.empty_like(act)
        for _ in range(depths[i]):
            k = block_param
            w_dw = _param(flat, spans, k).reshape((d, kernel))
            for c in range(d):
                for j in range(kernel):
                    taps[j, c] = w_dw[c, j]
            w1 = _param(pointwise, spans, k + 4)
            w2 = _param(pointwise, spans, k + 6)
            if packed:  # sized [in, out]: [C, 4C] and [4C, C]
                w1, w2 = w1.reshape((d, 4 * d)), w2.reshape((4 * d, d))
            else:
                w1, w2 = w1.reshape((4 * d, d)), w2.reshape((d, 4 * d))
            call_block_rows(
                block, act, taps, _param(flat, spans, k + 1), _param(flat, spans, k + 2),
                _param(flat, spans, k + 3), eps, w1, _param(flat, spans, k + 5), w2,
                _param(flat, spans, k + 7), _param(flat, spans, k + 8), keep, z, a, other,
                parts[i], pointwise_matmul,
            )
            act, other = other, act
            block_param += 9
    call_set_threads(set_threads, threads)
    pooled = np.empty((B, d), dtype=dt)
    for bi in range(B):
        for c in range(d):
            s = 0.0
            for t in range(steps):
                s += act[bi, t, c]
            pooled[bi, c] = s / steps
    k = block_param
    normed = layernorm_forward_serial(pooled, _param(flat, spans, k), _param(flat, spans, k + 1),
                                      eps)[0]
    classes = (spans[k + 2, 1] - spans[k + 2, 0]) // d
    logits = np.empty((B, classes), dtype=dt)
    call_matmul_cols(matmul, normed, _param(flat, spans, k + 2).reshape((classes, d)), logits, 0,
                     classes)
    logits += _param(flat, spans, k + 3)
    return logits
