"""Plain-NumPy versions of every kernel: the readable spec and the test oracle.

Layout is channels-last: activations `x[B, T, C]`, rows are (b, t) pairs, channels contiguous.
Each function is the math of its docstring and nothing else; the Numba kernels in the sibling
modules must agree with these to rounding. This module needs only NumPy and the standard
library (no Numba), so it can be read and run anywhere.

Names (as in kernels/README.md): in a block, `x` is its input, `y = dwconv(x)`, `z = LN(y)`,
`h = z W1^T` (pwconv1 without its bias), `pre = h + b1`, `a = GELU(pre)`, `branch = a W2^T + b2`
and `out = x + keep * gamma * branch`; `act` is the activations between blocks.
"""

from __future__ import annotations

import math

import numpy as np

# --- depthwise conv1d, 'same' zero padding -------------------------------------------------


def dwconv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y[b, t, c] = b[c] + sum_k w[k, c] * x[b, t + k - P, c],  P = (K - 1) // 2.

    x [B, T, C], w [K, C] (tap-major), b [C] -> y [B, T, C]; outside [0, T) x counts as 0.
    """
    K = w.shape[0]
    P = (K - 1) // 2
    T = x.shape[1]
    xp = np.pad(x, ((0, 0), (P, P), (0, 0)))
    return b + sum(w[k] * xp[:, k : k + T] for k in range(K))


def dwconv_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray):
    """dx[b, t, c] = sum_k w[k, c] * dy[b, t - k + P, c]   (the same conv with the taps flipped)
    dw[k, c]    = sum_{b,t} dy[b, t, c] * x[b, t + k - P, c]
    db[c]       = sum_{b,t} dy[b, t, c]
    """
    K = w.shape[0]
    P = (K - 1) // 2
    T = x.shape[1]
    xp = np.pad(x, ((0, 0), (P, P), (0, 0)))
    dyp = np.pad(dy, ((0, 0), (P, P), (0, 0)))
    dx = sum(w[k] * dyp[:, K - 1 - k : K - 1 - k + T] for k in range(K))
    dw = np.stack([(dy * xp[:, k : k + T]).sum(axis=(0, 1)) for k in range(K)])
    db = dy.sum(axis=(0, 1))
    return dx, dw, db


# --- LayerNorm over the last axis -----------------------------------------------------------


def layernorm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-6):
    """mean = E_c[x], rstd = 1 / sqrt(Var_c[x] + eps) (biased variance), y = (x - mean) * rstd * w + b.

    x [..., C] -> y [..., C], mean [...], rstd [...].
    """
    mean = x.mean(axis=-1)
    rstd = 1.0 / np.sqrt(x.var(axis=-1) + eps)
    xhat = (x - mean[..., None]) * rstd[..., None]
    return xhat * w + b, mean, rstd


def layernorm_backward(dy, x, w, mean, rstd):
    """With xhat = (x - mean) * rstd and g = dy * w:
    dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)),  dw = sum dy * xhat,  db = sum dy.
    """
    xhat = (x - mean[..., None]) * rstd[..., None]
    g = dy * w
    dx = rstd[..., None] * (
        g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True)
    )
    axes = tuple(range(dy.ndim - 1))
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


# --- exact GELU -------------------------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])  # the standard library's erf, elementwise


def gelu_forward(x: np.ndarray) -> np.ndarray:
    """y = x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt(2)))."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))).astype(x.dtype)


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx = dy * (Phi(x) + x * phi(x)),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)."""
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return (dy * (cdf + x * pdf)).astype(x.dtype)


def bias_gelu_forward(h: np.ndarray, b: np.ndarray):
    """pre = h + b, y = GELU(pre). Returns (y, pre); the backward needs pre."""
    pre = h + b
    return gelu_forward(pre), pre


def bias_gelu_backward(dy: np.ndarray, pre: np.ndarray):
    """dpre = dy * GELU'(pre) (also dh), db = sum over rows of dpre."""
    dpre = gelu_backward(dy, pre)
    return dpre, dpre.reshape(-1, dpre.shape[-1]).sum(axis=0)


# --- layer scale, drop path and the residual ---------------------------------------------------


def residual_forward(x: np.ndarray, branch: np.ndarray, gamma: np.ndarray, keep: np.ndarray):
    """out[b, t, c] = x[b, t, c] + keep[b] * gamma[c] * branch[b, t, c].

    keep [B] is drop path's per-sample factor (0, or 1 / (1 - rate), in training; 1 in eval),
    gamma [C] the layer scale.
    """
    return x + keep[:, None, None] * gamma * branch


def residual_backward(dout: np.ndarray, branch: np.ndarray, gamma: np.ndarray, keep: np.ndarray):
    """dbranch = dout * keep * gamma,  dgamma = sum_{b,t} dout * keep * branch  (and dx = dout)."""
    scaled = dout * keep[:, None, None]
    return scaled * gamma, (scaled * branch).sum(axis=(0, 1))


def drop_path_keep(rate: float, batch: int, rng: np.random.Generator) -> np.ndarray:
    """Drop path's factors: per sample 0 with probability `rate`, else 1 / (1 - rate)."""
    if rate <= 0.0:
        return np.ones(batch)
    return (rng.random(batch) >= rate) / (1.0 - rate)


# --- pointwise (linear) layer, PyTorch weight layout [C_out, C_in] ----------------------------


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """y = x @ w.T + b;  x [N, C_in], w [C_out, C_in], b [C_out] -> y [N, C_out]."""
    return x @ w.T + b


def linear_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray):
    """dx = dy @ w,  dw = dy.T @ x,  db = sum_n dy."""
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# --- patchify conv (stride == kernel == s) ----------------------------------------------------


def patchify_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Conv1d with kernel = stride = s and no padding, channels-last.

    y[b, t, o] = b[o] + sum_{c, j} w[o, c, j] * x[b, s*t + j, c]
    x [B, T, C_in], w [C_out, C_in, s] (PyTorch Conv1d layout), b [C_out] -> y [B, T/s, C_out].
    """
    B, T, C = x.shape
    C_out, _, s = w.shape
    y = np.zeros((B, T // s, C_out), dtype=x.dtype)
    for j in range(s):
        y += x[:, j::s, :] @ w[:, :, j].T
    return y + b


def patchify_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray):
    """dx[b, s*t + j, c] = sum_o dy[b, t, o] w[o, c, j];  dw[o, c, j] = sum_{b,t} dy[b,t,o] x[b,s*t+j,c]."""
    s = w.shape[2]
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for j in range(s):
        dx[:, j::s, :] = dy @ w[:, :, j]
        dw[:, :, j] = np.einsum("bto,btc->oc", dy, x[:, j::s, :])
    return dx, dw, dy.sum(axis=(0, 1))


# --- AdamW (PyTorch semantics) -----------------------------------------------------------------


def adamw_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step; returns new (p, m, v). step is 1-based.

    p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """
    p = p * (1.0 - lr * weight_decay)
    m = beta1 * m + (1.0 - beta1) * g
    v = beta2 * v + (1.0 - beta2) * g * g
    m_hat = m / (1.0 - beta1**step)
    v_hat = v / (1.0 - beta2**step)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


# --- the fused depthwise conv + LayerNorm, a block, the whole network ----------------------------


def dwconv_layernorm_forward(x, w, b, norm_w, norm_b, eps: float = 1e-6):
    """y = dwconv(x), z = LayerNorm(y) over C. Returns (y, z, mean, rstd)."""
    y = dwconv_forward(x, w, b)
    z, mean, rstd = layernorm_forward(y, norm_w, norm_b, eps)
    return y, z, mean, rstd


def block_forward(x: np.ndarray, state: dict[str, np.ndarray], prefix: str, keep: np.ndarray | None = None,
                  eps: float = 1e-6) -> np.ndarray:
    """One ConvNeXt block on x [B, T, C] with parameters `state[prefix + name]` (official names):
    out = x + keep * gamma * (GELU(LN(dwconv(x)) W1^T + b1) W2^T + b2); keep None: 1 (eval);
    gamma = 1 when the state has none (no layer scale)."""
    B, T, C = x.shape
    _, z, _, _ = dwconv_layernorm_forward(x, state[prefix + "dwconv.weight"][:, 0, :].T,
                                          state[prefix + "dwconv.bias"], state[prefix + "norm.weight"],
                                          state[prefix + "norm.bias"], eps)
    h = linear_forward(z.reshape(B * T, C), state[prefix + "pwconv1.weight"], 0.0)
    a, _ = bias_gelu_forward(h, state[prefix + "pwconv1.bias"])
    branch = linear_forward(a, state[prefix + "pwconv2.weight"], state[prefix + "pwconv2.bias"])
    gamma = state.get(prefix + "gamma", np.ones(C))
    return residual_forward(x, branch.reshape(B, T, C), gamma, np.ones(B) if keep is None else keep)



def convnext_forward(state: dict[str, np.ndarray], depths, x: np.ndarray, eps: float = 1e-6):
    """Logits [B, classes] of a 1D ConvNeXt for x [B, T, C_in] (channels-last), with `state` the
    official state dict (`downsample_layers.*`, `stages.i.j.*`, `norm.*`, `head.*`):

        act = LN(patchify_4(x));  for stage i: act = patchify_2(LN(act)) if i > 0, then per
        block act = block_forward(act);  logits = LN(mean_t act) W^T + b
    """
    def ln(v, prefix):
        rows = v.reshape(-1, v.shape[-1])
        return layernorm_forward(rows, state[prefix + "weight"], state[prefix + "bias"],
                                 eps)[0].reshape(v.shape)

    act = patchify_forward(x, state["downsample_layers.0.0.weight"], state["downsample_layers.0.0.bias"])
    act = ln(act, "downsample_layers.0.1.")
    for i, depth in enumerate(depths):
        if i > 0:
            p = f"downsample_layers.{i}."
            act = patchify_forward(ln(act, p + "0."), state[p + "1.weight"], state[p + "1.bias"])
        for j in range(depth):
            act = block_forward(act, state, f"stages.{i}.{j}.", eps=eps)
    pooled = ln(act.mean(axis=1), "norm.")
    return linear_forward(pooled, state["head.weight"], state["head.bias"])
