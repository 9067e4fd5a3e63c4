"""Generate ``tests/fixtures/torch_reference.npz``: PyTorch reference values for the 1D ConvNeXt.

Run by hand, never by pytest (the name does not start with ``test_``); the test suite only reads
the committed ``.npz`` and never imports torch. To regenerate::

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # CPU wheel
    python tests/make_torch_fixture.py

What it builds (all float64): ``bench/torch_convnext.ConvNeXt1DTorch`` with dims (8, 16, 24, 32),
depths (1, 1, 2, 1), in_channels 5, num_classes 3. Every parameter is redrawn from a fixed NumPy
seed so nothing sits at its init value: conv/linear weights ``randn / sqrt(fan_in)`` (so the
pre-activations are O(1) and GELU's curvature matters), conv/linear biases ``0.1 * randn``,
LayerNorm weights ``1 + 0.3 * randn`` and biases ``0.1 * randn``, ``gamma`` uniform in
[0.5, 1.5] with random signs. Input ``x`` is ``randn [3, 5, 64]``; the loss is
``sum(logits * loss_weights)`` with ``loss_weights`` a fixed ``randn [3, 3]``.

Keys of the archive:

* ``x``, ``logits``, ``loss``, ``loss_weights``, ``dx`` - eval-mode case (no drop path);
* ``param/<name>`` and ``grad/<name>`` for every state-dict entry (official ConvNeXt names);
* ``dp_rates`` [n_blocks], ``dp_masks/<stage>.<block>`` [B] (0/1 keep masks), ``dp_logits``,
  ``dp_loss``, ``dp_dx``, ``dp_grad/<name>`` - train-mode case with drop path, same parameters,
  same input and loss weights. Block k's residual branch is multiplied by
  ``mask[b] / (1 - dp_rates[k])``: timm's ``drop_path`` with the random mask replaced by the
  stored one. Blocks are numbered in order stage 0 block 0, stage 0 block 1, ..., and
  ``dp_rates = linspace(0, 0.3, n_blocks)``;
* ``config_json`` - a 0-d string array holding a JSON object (dims, depths, in_channels,
  num_classes, eps, torch version, ...).

The file is written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "torch_reference.npz"

SEED = 20240601
DIMS = (8, 16, 24, 32)
DEPTHS = (1, 1, 2, 1)
IN_CHANNELS = 5
NUM_CLASSES = 3
BATCH = 3
T = 64
DP_RATE_MAX = 0.3
# Per-block keep masks for the drop-path case, in block order. Block 0 has rate 0 and keeps all;
# every sample is dropped somewhere and no block drops every sample.
DP_MASKS = (
    (1, 1, 1),
    (1, 0, 1),
    (0, 1, 1),
    (1, 1, 0),
    (0, 1, 1),
)


def _randomise(model, rng: np.random.Generator) -> None:
    """Redraw every parameter of ``model`` from ``rng`` (see the module docstring)."""
    import torch
    from torch import nn
    from torch_convnext import Block, LayerNorm

    def put(p: torch.nn.Parameter, a: np.ndarray) -> None:
        with torch.no_grad():
            p.copy_(torch.from_numpy(np.asarray(a, dtype=np.float64).reshape(p.shape)))

    for m in model.modules():
        if isinstance(m, nn.Conv1d | nn.Linear):
            fan_in = m.weight[0].numel()
            put(m.weight, rng.standard_normal(m.weight.shape) / np.sqrt(fan_in))
            put(m.bias, 0.1 * rng.standard_normal(m.bias.shape))
        elif isinstance(m, LayerNorm | nn.LayerNorm):
            put(m.weight, 1.0 + 0.3 * rng.standard_normal(m.weight.shape))
            put(m.bias, 0.1 * rng.standard_normal(m.bias.shape))
        if isinstance(m, Block):
            d = m.gamma.shape[0]
            sign = rng.choice(np.array([-1.0, 1.0]), size=d)
            put(m.gamma, sign * rng.uniform(0.5, 1.5, size=d))


def _run(model, x_np: np.ndarray, R_np: np.ndarray):
    """Forward, ``loss = sum(logits * R)``, backward; return (logits, loss, dx, grads by name)."""
    import torch

    model.zero_grad(set_to_none=True)
    x = torch.from_numpy(x_np).requires_grad_(True)
    logits = model(x)
    loss = (logits * torch.from_numpy(R_np)).sum()
    loss.backward()
    grads = {n: p.grad.detach().numpy().copy() for n, p in model.named_parameters()}
    return logits.detach().numpy().copy(), float(loss.detach()), x.grad.numpy().copy(), grads


def _fd_check(model, x_np: np.ndarray, R_np: np.ndarray, dx: np.ndarray, grads, rng) -> None:
    """Directional finite differences (central, float64) as a sanity check of torch's grads."""
    import torch

    def loss_at(x: np.ndarray) -> float:
        with torch.no_grad():
            return float((model(torch.from_numpy(x)) * torch.from_numpy(R_np)).sum())

    h = 1e-5
    v = rng.standard_normal(x_np.shape)
    fd = (loss_at(x_np + h * v) - loss_at(x_np - h * v)) / (2 * h)
    an = float((dx * v).sum())
    assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), ("dx", fd, an)

    params = dict(model.named_parameters())
    for name in ("downsample_layers.0.0.weight", "stages.2.1.gamma", "stages.3.0.norm.weight"):
        p = params[name]
        v = rng.standard_normal(tuple(p.shape))
        base = p.detach().clone()
        vals = []
        for s in (h, -h):
            with torch.no_grad():
                p.copy_(base + s * torch.from_numpy(v))
            vals.append(loss_at(x_np))
        with torch.no_grad():
            p.copy_(base)
        fd = (vals[0] - vals[1]) / (2 * h)
        an = float((grads[name] * v).sum())
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (name, fd, an)


def build() -> dict[str, np.ndarray]:
    """Build the model, run both cases and return the arrays to save."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from torch_convnext import LN_EPS, Block, ConvNeXt1DTorch

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    model = ConvNeXt1DTorch(IN_CHANNELS, NUM_CLASSES, DIMS, DEPTHS, drop_path_rate=0.0).double()
    _randomise(model, rng)
    x = rng.standard_normal((BATCH, IN_CHANNELS, T))
    R = rng.standard_normal((BATCH, NUM_CLASSES))

    out: dict[str, np.ndarray] = {"x": x, "loss_weights": R}
    for name, t in model.state_dict().items():
        out[f"param/{name}"] = t.detach().numpy().copy()

    # Case 1: eval mode, no drop path.
    model.eval()
    logits, loss, dx, grads = _run(model, x, R)
    _fd_check(model, x, R, dx, grads, rng)
    out.update(logits=logits, loss=np.float64(loss), dx=dx)
    out.update({f"grad/{n}": g for n, g in grads.items()})

    # Case 2: train mode with drop path, the random masks replaced by the fixed DP_MASKS.
    blocks = [(f"{i}.{j}", b) for i, st in enumerate(model.stages) for j, b in enumerate(st)]
    assert all(isinstance(b, Block) for _, b in blocks) and len(blocks) == len(DP_MASKS)
    rates = np.linspace(0.0, DP_RATE_MAX, len(blocks))
    for (key, blk), rate, mask in zip(blocks, rates, DP_MASKS, strict=True):
        m = np.asarray(mask, dtype=np.float64)
        keep = 1.0 - float(rate)
        blk.drop_path.drop_prob = float(rate)
        scale = torch.from_numpy(m / keep).reshape(-1, 1, 1)
        # Monkeypatch this DropPath instance: deterministic mask instead of bernoulli.
        blk.drop_path.forward = lambda y, s=scale: y * s
        out[f"dp_masks/{key}"] = m
    model.train()
    dp_logits, dp_loss, dp_dx, dp_grads = _run(model, x, R)
    out.update(dp_rates=rates, dp_logits=dp_logits, dp_loss=np.float64(dp_loss), dp_dx=dp_dx)
    out.update({f"dp_grad/{n}": g for n, g in dp_grads.items()})

    # The state dict must not have been touched by the second case.
    for name, t in model.state_dict().items():
        assert np.array_equal(out[f"param/{name}"], t.numpy()), name

    config = {
        "dims": list(DIMS),
        "depths": list(DEPTHS),
        "in_channels": IN_CHANNELS,
        "num_classes": NUM_CLASSES,
        "batch": BATCH,
        "T": T,
        "eps": LN_EPS,
        "gelu": "exact (erf)",
        "loss": "sum(logits * loss_weights)",
        "dp_rate_max": DP_RATE_MAX,
        "dp_block_order": [k for k, _ in blocks],
        "seed": SEED,
        "dtype": "float64",
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
    }
    out["config_json"] = np.array(json.dumps(config, sort_keys=True))
    for k, v in out.items():
        if k != "config_json":
            out[k] = np.asarray(v, dtype=np.float64)
    return out


def save_atomic(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write ``arrays`` to ``path`` as a compressed .npz via a temporary file + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def main() -> None:
    """Build the fixture, write it and print a summary."""
    arrays = build()
    save_atomic(arrays, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes, {len(arrays)} arrays)")
    print(f"logits:\n{arrays['logits']}\ndp_logits:\n{arrays['dp_logits']}")


if __name__ == "__main__":
    main()
