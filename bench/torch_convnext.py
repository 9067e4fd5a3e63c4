"""A 1D ConvNeXt in plain PyTorch: the reference twin of ``numpyconvnext.ConvNeXt1D``.

This mirrors facebookresearch/ConvNeXt ``models/convnext.py`` with every 2D layer replaced by
its 1D counterpart, so ``state_dict()`` names and shapes are exactly those listed in
``/work/shared/ARCHITECTURE.md`` (``downsample_layers.i.k.*``, ``stages.i.j.{dwconv, norm,
pwconv1, pwconv2, gamma}``, ``norm.*``, ``head.*``). Weights therefore move between this module
and the NumPy model by name, unchanged.

Input is ``[B, C_in, T]`` (``T`` divisible by 32), output is logits ``[B, num_classes]``.

torch is NOT a dependency of the project. This file is imported only by the benchmark
(``bench/``) and by ``tests/make_torch_fixture.py``; the test suite never imports it.

Besides the model it provides two small helpers for the benchmark:

* :func:`export_onnx` - ``torch.onnx.export`` with opset 17 and a dynamic batch axis;
* :func:`train_step_fn` - a closure doing forward + cross-entropy + backward + AdamW step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F  # noqa: N812  (the universal torch convention)
from torch import nn

LN_EPS = 1e-6

#: Variants as ``name -> (dims, depths)``; same table as ARCHITECTURE.md.
VARIANTS: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int, int]]] = {
    "atto": ((40, 80, 160, 320), (2, 2, 6, 2)),
    "femto": ((48, 96, 192, 384), (2, 2, 6, 2)),
    "pico": ((64, 128, 256, 512), (2, 2, 6, 2)),
    "nano": ((80, 160, 320, 640), (2, 2, 8, 2)),
    "tiny": ((96, 192, 384, 768), (3, 3, 9, 3)),
    "small": ((96, 192, 384, 768), (3, 3, 27, 3)),
    "base": ((128, 256, 512, 1024), (3, 3, 27, 3)),
}


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth as in timm: zero whole samples, scale survivors by ``1 / keep_prob``."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    if keep_prob > 0.0:
        mask.div_(keep_prob)
    return x * mask


class DropPath(nn.Module):
    """Per-sample stochastic depth on the residual branch (no parameters)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class LayerNorm(nn.Module):
    """LayerNorm for ``channels_last`` ``[..., C]`` or ``channels_first`` ``[B, C, T]`` input.

    Same as the official ConvNeXt class: channels_first normalises over dim 1 with the biased
    variance ``(x - u).pow(2).mean(1)``.
    """

    def __init__(
        self, normalized_shape: int, eps: float = LN_EPS, data_format: str = "channels_last"
    ) -> None:
        super().__init__()
        if data_format not in ("channels_last", "channels_first"):
            raise ValueError(f"unknown data_format {data_format!r}")
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.data_format = data_format
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.data_format == "channels_last":
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None] * x + self.bias[:, None]


class Block(nn.Module):
    """ConvNeXt block: ``x + drop_path(gamma * pwconv2(GELU(pwconv1(LN(dwconv7(x))))))``."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()  # exact (erf) form
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # as the official code: no gamma when layer_scale_init <= 0 (the NumPy model too)
        self.gamma = (nn.Parameter(layer_scale_init * torch.ones(dim)) if layer_scale_init > 0
                      else None)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 1)  # [B, C, T] -> [B, T, C]
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 2, 1)  # [B, T, C] -> [B, C, T]
        return inp + self.drop_path(x)


class ConvNeXt1DTorch(nn.Module):
    """1D ConvNeXt classifier: ``[B, in_channels, T] -> [B, num_classes]``.

    Args:
        in_channels: input features per time step.
        num_classes: output logits.
        dims: channel widths of the four stages.
        depths: blocks per stage.
        drop_path_rate: stochastic depth rate of the last block (linear from 0 over all blocks).
        layer_scale_init: initial value of every block's ``gamma``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dims: Sequence[int] = VARIANTS["tiny"][0],
        depths: Sequence[int] = VARIANTS["tiny"][1],
        drop_path_rate: float = 0.0,
        layer_scale_init: float = 1e-6,
    ) -> None:
        super().__init__()
        dims = tuple(int(d) for d in dims)
        depths = tuple(int(d) for d in depths)
        if len(dims) != len(depths):
            raise ValueError("dims and depths must have the same length")
        self.dims, self.depths = dims, depths

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(
                nn.Conv1d(in_channels, dims[0], kernel_size=4, stride=4),
                LayerNorm(dims[0], eps=LN_EPS, data_format="channels_first"),
            )
        )
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i - 1], eps=LN_EPS, data_format="channels_first"),
                    nn.Conv1d(dims[i - 1], dims[i], kernel_size=2, stride=2),
                )
            )

        rates = torch.linspace(0, drop_path_rate, sum(depths), dtype=torch.float64).tolist()
        self.stages = nn.ModuleList()
        cur = 0
        for i, (dim, depth) in enumerate(zip(dims, depths, strict=True)):
            self.stages.append(
                nn.Sequential(
                    *[Block(dim, rates[cur + j], layer_scale_init) for j in range(depth)]
                )
            )
            cur += depths[i]

        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Conv1d | nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, stages, global average pool over T and the final LayerNorm: ``[B, d3]``."""
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.norm(x.mean(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters in ``model``."""
    return sum(p.numel() for p in model.parameters())


def export_onnx(model: nn.Module, path: str, T: int, in_channels: int) -> str:
    """Export ``model`` (eval mode, float32) to ONNX at ``path``; batch axis is dynamic.

    Uses opset 17, constant folding and the TorchScript exporter (``dynamo=False``) where torch
    still has it: what a PyTorch user gets from ``torch.onnx.export`` with the classic exporter.
    Raises ``ImportError`` when the ``onnx`` package is missing. Returns ``path``.
    """
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("export_onnx needs the 'onnx' package: pip install onnx") from exc
    was_training = model.training
    model.eval()
    dummy = torch.randn(2, in_channels, T, dtype=next(model.parameters()).dtype)
    kwargs = dict(
        input_names=["x"],
        output_names=["logits"],
        opset_version=17,
        do_constant_folding=True,  # torch's default, stated: the graph a user exports
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    try:
        with torch.no_grad():
            torch.onnx.export(model, (dummy,), path, dynamo=False, **kwargs)
    except TypeError:  # very old torch without the ``dynamo`` argument
        with torch.no_grad():
            torch.onnx.export(model, (dummy,), path, **kwargs)
    finally:
        model.train(was_training)
    return path


def train_step_fn(
    model: nn.Module,
    batch: int,
    T: int,
    in_channels: int,
    num_classes: int,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
) -> Callable[[], float]:
    """Return ``step()``: one forward + cross-entropy + backward + AdamW update on a fixed batch.

    The batch is random but fixed (drawn once), so repeated calls time the same work.
    ``step()`` returns the loss as a Python float.
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    x = torch.randn(batch, in_channels, T, generator=gen, dtype=dtype)
    y = torch.randint(0, num_classes, (batch,), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


if __name__ == "__main__":
    for name, (dims, depths) in VARIANTS.items():
        m = ConvNeXt1DTorch(20, 3, dims, depths)
        print(f"{name:6s} params (in_channels=20, num_classes=3): {count_parameters(m):,}")
