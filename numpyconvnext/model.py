"""ConvNeXt1D: the whole network, its variants, initialisation and state dict.

    stem:        Conv(k=4, s=4) C_in -> d0, LayerNorm                 T -> T/4
    stage i>0:   LayerNorm, Conv(k=2, s=2) d(i-1) -> d(i)             T -> T/2
    block:       x + drop_path(gamma * pwconv2(GELU(pwconv1(LN(dwconv7(x))))))
    head:        mean over T -> LayerNorm -> Linear(d3 -> num_classes)

All parameters live in one flat buffer (and their gradients in another) with named views, so
saving, loading and the optimizer each work in one pass. Matrices and convolution kernels come
first in the buffer, then the 1-D parameters (norms, biases, gamma), so that "no weight decay on
1-D parameters" is one contiguous slice: `flat_params[:decay_size]` is what decays.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence

import numpy as np

from kernels.block import BLOCK_ROWS, pack_columns, panel_columns
from kernels.network import addresses, network_forward_rows, stage_parts
from kernels.simd import bfloat16_bits, bfloat16_values
from numpyconvnext.layers import (
    LAYERNORM_EPS,
    Block,
    Downsample,
    Head,
    Stem,
    Workspace,
    drop_path_keep,
)
from numpyconvnext.threads import SplitChooser, compute, computes, numba_threads, split_work

CONFIGS: dict[str, dict[str, tuple[int, ...]]] = {
    "atto": {"dims": (40, 80, 160, 320), "depths": (2, 2, 6, 2)},
    "femto": {"dims": (48, 96, 192, 384), "depths": (2, 2, 6, 2)},
    "pico": {"dims": (64, 128, 256, 512), "depths": (2, 2, 6, 2)},
    "nano": {"dims": (80, 160, 320, 640), "depths": (2, 2, 8, 2)},
    "tiny": {"dims": (96, 192, 384, 768), "depths": (3, 3, 9, 3)},
    "small": {"dims": (96, 192, 384, 768), "depths": (3, 3, 27, 3)},
    "base": {"dims": (128, 256, 512, 1024), "depths": (3, 3, 27, 3)},
}

DWCONV_KERNEL = 7
STEM_STRIDE = 4
DOWNSAMPLE_STRIDE = 2
INIT_STD = 0.02
INIT_BOUND = 2.0  # absolute, as timm's trunc_normal_(std=.02) (a=-2, b=2): no cut in practice


def parameter_shapes(
    dims: Sequence[int], depths: Sequence[int], in_channels: int, num_classes: int,
    kernel_size: int = DWCONV_KERNEL, layer_scale: bool = True,
) -> dict[str, tuple[int, ...]]:
    """Official ConvNeXt state-dict names (1D) -> shapes, in the official order (no `gamma`
    entries without layer scale)."""
    shapes: dict[str, tuple[int, ...]] = {
        "downsample_layers.0.0.weight": (dims[0], in_channels, STEM_STRIDE),
        "downsample_layers.0.0.bias": (dims[0],),
        "downsample_layers.0.1.weight": (dims[0],),
        "downsample_layers.0.1.bias": (dims[0],),
    }
    for i in range(1, len(dims)):
        shapes[f"downsample_layers.{i}.0.weight"] = (dims[i - 1],)
        shapes[f"downsample_layers.{i}.0.bias"] = (dims[i - 1],)
        shapes[f"downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], DOWNSAMPLE_STRIDE)
        shapes[f"downsample_layers.{i}.1.bias"] = (dims[i],)
    for i, (d, depth) in enumerate(zip(dims, depths, strict=True)):
        for j in range(depth):
            prefix = f"stages.{i}.{j}."
            shapes[prefix + "dwconv.weight"] = (d, 1, kernel_size)
            shapes[prefix + "dwconv.bias"] = (d,)
            shapes[prefix + "norm.weight"] = (d,)
            shapes[prefix + "norm.bias"] = (d,)
            shapes[prefix + "pwconv1.weight"] = (4 * d, d)
            shapes[prefix + "pwconv1.bias"] = (4 * d,)
            shapes[prefix + "pwconv2.weight"] = (d, 4 * d)
            shapes[prefix + "pwconv2.bias"] = (d,)
            if layer_scale:
                shapes[prefix + "gamma"] = (d,)
    shapes["norm.weight"] = (dims[-1],)
    shapes["norm.bias"] = (dims[-1],)
    shapes["head.weight"] = (num_classes, dims[-1])
    shapes["head.bias"] = (num_classes,)
    return shapes


def forward_flops(
    dims: Sequence[int], depths: Sequence[int], in_channels: int, num_classes: int, length: int,
    kernel_size: int = DWCONV_KERNEL,
) -> int:
    """Floating-point operations (2 per multiply-add) of one sample's forward pass."""
    t = length // STEM_STRIDE
    flops = 2 * t * dims[0] * in_channels * STEM_STRIDE
    for i, (d, depth) in enumerate(zip(dims, depths, strict=True)):
        if i > 0:
            t //= DOWNSAMPLE_STRIDE
            flops += 2 * t * d * dims[i - 1] * DOWNSAMPLE_STRIDE
        flops += depth * (2 * t * d * kernel_size + 2 * 2 * t * d * 4 * d)
    return flops + 2 * dims[-1] * num_classes


class ConvNeXt1D:
    """A 1D ConvNeXt on public input x[B, C_in, T] -> logits[B, num_classes].

    T must be divisible by 32 (stem 4 x three downsamples of 2). num_classes=1 is a regression
    head. Weights start as in the official code and timm: normal with std 0.02 (truncated at
    +-2 absolute, i.e. in practice not at all), biases 0, LayerNorm weight 1, gamma =
    layer_scale_init; layer_scale_init None or <= 0 means no layer scale (no `gamma`
    parameters). Drop-path rates grow linearly from 0 to drop_path_rate. kernel_size is the
    depthwise conv's (odd), layernorm_eps every LayerNorm's epsilon.
    """

    def __init__(
        self,
        dims: Sequence[int],
        depths: Sequence[int],
        in_channels: int,
        num_classes: int,
        drop_path_rate: float = 0.0,
        layer_scale_init: float | None = 1e-6,
        dtype=np.float32,
        seed: int = 0,
        kernel_size: int = DWCONV_KERNEL,
        layernorm_eps: float = LAYERNORM_EPS,
    ):
        dims = tuple(int(d) for d in dims)
        depths = tuple(int(d) for d in depths)
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"dims and depths need 4 stages each, got {dims} and {depths}")
        if min(dims) < 1 or min(depths) < 0 or in_channels < 1 or num_classes < 1:
            raise ValueError("dims, in_channels and num_classes must be positive, depths >= 0")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if isinstance(kernel_size, bool) or int(kernel_size) != kernel_size or kernel_size < 1 \
                or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        if not 0.0 < float(layernorm_eps) < 1.0:
            raise ValueError(f"layernorm_eps must be in (0, 1), got {layernorm_eps}")
        layer_scale = layer_scale_init is not None and float(layer_scale_init) > 0.0
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.config = {
            "dims": list(dims),
            "depths": list(depths),
            "in_channels": int(in_channels),
            "num_classes": int(num_classes),
            "drop_path_rate": float(drop_path_rate),
            "layer_scale_init": float(layer_scale_init) if layer_scale else None,
            "dtype": self.dtype.name,
            "seed": int(seed),
            "kernel_size": int(kernel_size),
            "layernorm_eps": float(layernorm_eps),
        }
        self.training = True
        # temperature scaling of predict_proba (1 = the plain softmax); a checkpoint written
        # after calibration on a validation block sets it when loaded
        self.temperature = 1.0
        self.rng = np.random.default_rng(seed)
        # without layer scale the blocks keep a gamma of ones in the flat buffer (x + 1.0 * branch
        # is exact), outside the state dict and never trained, so the kernels stay the same
        self._allocate(parameter_shapes(dims, depths, in_channels, num_classes, int(kernel_size)))
        self._fixed = set() if layer_scale else {n for n in self._params if n.endswith(".gamma")}
        self._build_layers(dims, depths, drop_path_rate)
        self._init_weights(self.config["layer_scale_init"] or 1.0, np.random.default_rng(seed))
        self._keep: list[np.ndarray] = []
        self.precision = self.dtype.name
        # what the one-call inference reads the blocks' pointwise weights from: flat_params, or
        # a frozen copy's own buffer (bfloat16 bits, packed in column panels)
        self._pointwise: np.ndarray = self.flat_params
        self._pointwise_packed = False

    @classmethod
    def from_config(cls, name: str, in_channels: int, num_classes: int, **options) -> ConvNeXt1D:
        """A named variant (atto, femto, pico, nano, tiny, small, base)."""
        if name not in CONFIGS:
            raise ValueError(f"unknown variant {name!r}; choose from {', '.join(CONFIGS)}")
        return cls(**CONFIGS[name], in_channels=in_channels, num_classes=num_classes, **options)

    # --- parameters ---------------------------------------------------------------------------

    def _allocate(self, shapes: dict[str, tuple[int, ...]]) -> None:
        order = [n for n, s in shapes.items() if len(s) > 1] + [
            n for n, s in shapes.items() if len(s) <= 1
        ]
        sizes = {n: math.prod(shapes[n]) for n in order}
        total = sum(sizes.values())
        self.flat_params = np.zeros(total, dtype=self.dtype)
        self.flat_grads = np.zeros(total, dtype=self.dtype)
        self.decay_size = sum(sizes[n] for n in order if len(shapes[n]) > 1)
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        offset = 0
        views: dict[str, tuple[int, int]] = {}
        for name in order:
            end = offset + sizes[name]
            views[name] = (offset, end)
            offset = end
        # (start, end) of each parameter in the official order, for the one-call inference
        self._spans = np.array([views[name] for name in shapes], dtype=np.int64)
        for name in shapes:  # dicts keep the official order
            start, end = views[name]
            self._params[name] = self.flat_params[start:end].reshape(shapes[name])
            self._grads[name] = self.flat_grads[start:end].reshape(shapes[name])

    def _sub(self, prefix: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        n = len(prefix)
        params = {k[n:]: v for k, v in self._params.items() if k.startswith(prefix)}
        grads = {k[n:]: v for k, v in self._grads.items() if k.startswith(prefix)}
        return params, grads

    def _build_layers(self, dims, depths, drop_path_rate) -> None:
        self.stem = Stem(*self._sub("downsample_layers.0."))
        self.downsamples = [
            Downsample(*self._sub(f"downsample_layers.{i}.")) for i in range(1, len(dims))
        ]
        rates = np.linspace(0.0, drop_path_rate, sum(depths)) if sum(depths) else []
        self.stages: list[list[Block]] = []
        k = 0
        for i, depth in enumerate(depths):
            stage = []
            for j in range(depth):
                stage.append(Block(*self._sub(f"stages.{i}.{j}."), drop_path_rate=rates[k]))
                k += 1
            self.stages.append(stage)
        head_params, head_grads = self._sub("")
        self.head = Head(
            {k: head_params[k] for k in ("norm.weight", "norm.bias", "head.weight", "head.bias")},
            {k: head_grads[k] for k in ("norm.weight", "norm.bias", "head.weight", "head.bias")},
        )
        # one scratch space for all layers: buffers are keyed by shape, so blocks of a stage
        # share theirs and a step allocates nothing new after the first
        self.workspace = Workspace()
        self._split_chooser = SplitChooser()  # batch-1 predict: split over threads or not
        eps = self.config["layernorm_eps"]
        for layer in [self.stem, *self.downsamples, *self.blocks, self.head]:
            layer.workspace = self.workspace
            layer.eps = eps

    def _init_weights(self, layer_scale_init: float, rng: np.random.Generator) -> None:
        for name, p in self._params.items():
            if p.ndim > 1:
                p[...] = _truncated_normal(rng, p.shape, INIT_STD, INIT_BOUND)
            elif name.endswith("gamma"):
                p[...] = layer_scale_init
            elif name.endswith("weight"):  # LayerNorm weights
                p[...] = 1.0
            else:
                p[...] = 0.0

    @property
    def blocks(self) -> list[Block]:
        return [block for stage in self.stages for block in stage]

    def num_parameters(self) -> int:
        return int(self.flat_params.size) - sum(self._params[n].size for n in self._fixed)

    def flops(self, length: int) -> int:
        """Forward FLOPs per sample at sequence length `length`."""
        c = self.config
        return forward_flops(c["dims"], c["depths"], c["in_channels"], c["num_classes"], length,
                             c["kernel_size"])

    def state_dict(self) -> dict[str, np.ndarray]:
        """Official ConvNeXt names -> the live parameter arrays (views, not copies)."""
        return {k: v for k, v in self._params.items() if k not in self._fixed}

    def grads(self) -> dict[str, np.ndarray]:
        """Same names -> gradients of the last backward()."""
        return {k: v for k, v in self._grads.items() if k not in self._fixed}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays into the parameters. Official names, or timm's (`stem.0`,
        `stages.i.blocks.j.conv_dw`, `.mlp.fc1`, `head.fc`, ...: detected and renamed).
        Strict: missing, extra or mis-shaped keys raise."""
        state = from_timm_names(state) if uses_timm_names(state) else state
        params = self.state_dict()
        missing = [k for k in params if k not in state]
        extra = [k for k in state if k not in params]
        if missing or extra:
            raise ValueError(
                "state dict does not match the model: "
                + (f"missing {_few(missing)}" if missing else "")
                + ("; " if missing and extra else "")
                + (f"unexpected {_few(extra)}" if extra else "")
            )
        for name, value in state.items():
            value = np.asarray(value)
            if value.shape != self._params[name].shape:
                raise ValueError(
                    f"state dict entry {name!r} has shape {value.shape}, "
                    f"the model expects {self._params[name].shape}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"state dict entry {name!r} holds NaN or inf")
        for name, value in state.items():
            self._params[name][...] = value

    def frozen(self, precision: str = "float32") -> ConvNeXt1D:
        """An inference-only copy of this model, its weights read-only.

        precision "float32" (or the model's own dtype): the same weights. "bfloat16": the
        blocks' pointwise weights (pwconv1, pwconv2: nearly all the parameters) rounded to
        bfloat16 (8 significant bits, nearest, ties to even); activations, accumulation and
        every other parameter stay float32. Batch-1 inference then streams 2 bytes per weight
        instead of 4; a batch runs the same math with the rounded values. Changes to this
        model afterwards do not reach the copy. README "Speed" gives the measured effect on
        the decisions of trained models. Temperature and checkpoint metadata are copied;
        `train()` on the copy raises.

        The copy also keeps the pointwise weights transposed, in column panels, for its
        batch-1 predict (outer products instead of dot products, bench/NOTES.md rounds 15 and
        19; a float32 copy then holds them twice). That predict differs from this model's in
        rounding only (another order of the sums). A float32 (float64) copy's batches read the
        same panels in our GEMM instead of packing the weights at every call: the same bits as
        this model's predict, tiny's batch 256 ~1.02x (bench/NOTES.md round 24).
        """
        if precision not in ("float32", "float64", "bfloat16"):
            raise ValueError(f"precision must be float32, float64 or bfloat16, got {precision!r}")
        if precision != "bfloat16" and precision != self.dtype.name:
            raise ValueError(f"precision {precision!r} differs from the model's dtype "
                             f"{self.dtype.name}; only bfloat16 changes it")
        if precision == "bfloat16" and self.dtype != np.float32:
            raise ValueError("precision bfloat16 needs a float32 model")
        copy = ConvNeXt1D(**self.config)
        copy.flat_params[...] = self.flat_params
        copy.temperature = self.temperature
        if hasattr(self, "metadata"):
            copy.metadata = self.metadata
        panel = panel_columns(copy.dtype)  # 0 (only the tests patch it so) keeps them as stored
        if precision == "bfloat16" or panel:
            # what the batch-1 network reads the pointwise weights from, at their spans only
            pointwise = np.zeros(copy.flat_params.size,
                                 dtype=np.uint16 if precision == "bfloat16" else copy.dtype)
            runs = {}  # each pointwise weight's run of `pointwise`, by name
            for (start, end), (name, param) in zip(copy._spans, copy._params.items(),
                                                   strict=True):
                if name.endswith((".pwconv1.weight", ".pwconv2.weight")):
                    weight = copy.flat_params[start:end]
                    if precision == "bfloat16":
                        weight = bfloat16_bits(weight)
                        copy.flat_params[start:end] = bfloat16_values(weight)
                    weight = weight.reshape(param.shape)
                    pointwise[start:end] = (pack_columns(weight, panel) if panel
                                            else weight.reshape(-1))
                    runs[name] = pointwise[start:end]
            copy._pointwise = pointwise
            copy._pointwise_packed = bool(panel)
            if panel and precision != "bfloat16":  # the blocks' batched products read them too
                for i, stage in enumerate(copy.stages):
                    for j, block in enumerate(stage):
                        block.panels = {name: runs[f"stages.{i}.{j}.{name}"]
                                        for name in ("pwconv1.weight", "pwconv2.weight")}
        panels = [view for block in copy.blocks for view in block.panels.values()]
        for array in [copy.flat_params, *copy._params.values(), copy._pointwise, *panels]:
            array.flags.writeable = False  # the layers hold views of flat_params
        copy.precision = precision
        copy.training = False
        return copy

    # --- modes ----------------------------------------------------------------------------

    def train(self) -> ConvNeXt1D:
        if not self.flat_params.flags.writeable:
            raise RuntimeError(f"this model is a frozen ({self.precision}) copy for inference; "
                               "train the model it was made from")
        self.training = True
        return self

    def eval(self) -> ConvNeXt1D:
        self.training = False
        return self

    # --- forward / backward -----------------------------------------------------------------

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate x[B, C_in, T] and return it as a C-contiguous array of the model's dtype."""
        x = np.asarray(x)
        c_in = self.config["in_channels"]
        if x.ndim != 3:
            raise ValueError(f"input must be [batch, channels, time], got shape {x.shape}")
        if x.shape[1] != c_in:
            raise ValueError(f"input has {x.shape[1]} channels, the model expects {c_in}")
        if x.shape[0] < 1 or x.shape[2] < 32 or x.shape[2] % 32:
            raise ValueError(
                f"input length T={x.shape[2]} must be a positive multiple of 32, batch >= 1"
            )
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"input must be numeric, got dtype {x.dtype}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not np.all(np.isfinite(x)):
            raise ValueError("input contains NaN or inf")
        return x

    @computes()
    def forward(self, x: np.ndarray, drop_path_masks: Sequence[np.ndarray] | None = None):
        """Logits [B, num_classes] for x[B, C_in, T]; keeps what backward() needs.

        In train mode each block drops its residual branch per sample with its drop-path rate
        (scaling kept samples by 1/keep_prob), drawing from `self.rng`; `drop_path_masks`, one
        0/1 keep mask [B] per block, fixes those draws (for tests).
        """
        x = self.check_input(x)
        self.workspace.select(x.shape)
        return self._run(x, cache=True, drop_path_masks=drop_path_masks)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Inference: logits [B, num_classes] with no drop path and nothing kept for backward.

        Few rows (batch * T / 4 <= 64, e.g. one window of 256 bars) run the whole network in
        one compiled call (`kernels.network`); larger batches go layer by layer. Safe to call
        from several Python threads at once (each has its own scratch buffers).
        """
        x = self.check_input(x)
        few_rows = x.shape[0] * x.shape[2] // STEM_STRIDE <= BLOCK_ROWS
        with compute(blas=not few_rows):  # the one-call path uses no BLAS
            if few_rows:
                config = self.config
                # the blocks of big stages split their matmuls over the threads our call runs
                # the kernels on, small ones run on this thread alone; or all of them do, if
                # that has been faster lately (a busy machine)
                threads = numba_threads()
                parts = stage_parts(x.shape[0] * x.shape[2] // STEM_STRIDE, config["dims"],
                                    threads, split_work())
                choice = parts.max() > 1
                split = not choice or self._split_chooser.split()
                start = time.perf_counter()
                logits = network_forward_rows(
                    np.ascontiguousarray(x.transpose(0, 2, 1)), self.flat_params, self._spans,
                    np.array(config["dims"], dtype=np.int64),
                    np.array(config["depths"], dtype=np.int64), config["kernel_size"],
                    config["layernorm_eps"], parts if split else np.ones_like(parts), threads,
                    self._pointwise, addresses(self.dtype, self._pointwise.dtype,
                                               self._pointwise_packed),
                )
                if choice:
                    self._split_chooser.record(split, time.perf_counter() - start)
                return logits
            self.workspace.select(x.shape)
            return self._run(x, cache=False, drop_path_masks=None, inference=True)

    def clear_cache(self) -> None:
        """Free the scratch buffers of every thread and the activations kept for backward
        (a backward() then needs a new forward()). They are allocated again when needed."""
        self.workspace.clear()
        for layer in [self.stem, *self.downsamples, *self.blocks, self.head]:
            layer._cache = None

    def predict_proba(self, x: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """Class probabilities [B, num_classes]: ``softmax(predict(x) / temperature)``, with the
        temperature fitted on the validation block after training (``calibration``); the plain
        softmax (temperature 1) when ``calibrated`` is False or the model was never calibrated."""
        logits = self.predict(x)
        if calibrated and self.temperature != 1.0:
            logits = logits / np.asarray(self.temperature, dtype=logits.dtype)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)

    def _run(self, x, cache, drop_path_masks, inference=False):
        batch = x.shape[0]
        blocks = self.blocks
        if drop_path_masks is not None and len(drop_path_masks) != len(blocks):
            raise ValueError(f"need one drop-path mask per block ({len(blocks)})")
        self._keep = []
        h = self.stem.forward(x, cache=cache)
        k = 0
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = self.downsamples[i - 1].forward(h, cache=cache)
            for block in stage:
                keep = self._keep_factors(block, k, batch, drop_path_masks, inference)
                h = block.forward(h, keep, cache=cache)
                k += 1
        return self.head.forward(h, cache=cache)

    def _keep_factors(self, block, k, batch, masks, inference) -> np.ndarray:
        rate = block.drop_path_rate
        if inference or not self.training or rate == 0.0:
            return np.ones(batch, dtype=self.dtype)
        if masks is not None:
            mask = np.asarray(masks[k], dtype=self.dtype)
            if mask.shape != (batch,):
                raise ValueError(f"drop-path mask {k} must have shape ({batch},)")
            return mask / self.dtype.type(1.0 - rate)
        return drop_path_keep(rate, batch, self.rng, self.dtype.type)

    @computes()
    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """Gradients of the last forward: fills grads(), returns dL/dx [B, C_in, T]."""
        dlogits = np.ascontiguousarray(dlogits, dtype=self.dtype)
        dh = self.head.backward(dlogits)
        for i in range(len(self.stages) - 1, -1, -1):
            for block in reversed(self.stages[i]):
                dh = block.backward(dh)
            if i > 0:
                dh = self.downsamples[i - 1].backward(dh)
        for name in self._fixed:  # constant gamma of ones: an optimizer must leave it alone
            self._grads[name][...] = 0.0
        return self.stem.backward(dh)

    def config_json(self) -> str:
        return json.dumps(self.config)


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], std: float,
                      bound: float) -> np.ndarray:
    """Normal(0, std) cut at +-bound (absolute; the values outside are drawn again)."""
    values = std * rng.standard_normal(shape)
    outside = np.abs(values) > bound
    while outside.any():
        values[outside] = std * rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > bound
    return values


_TIMM_RENAMES = [  # timm name pattern -> official name, in the order they are applied
    (re.compile(r"^stem\."), "downsample_layers.0."),
    (re.compile(r"^stages\.(\d+)\.downsample\."), r"downsample_layers.\1."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), r"stages.\1.\2."),
    (re.compile(r"\.conv_dw\."), ".dwconv."),
    (re.compile(r"\.mlp\.fc([12])\."), r".pwconv\1."),
    (re.compile(r"^head\.norm\."), "norm."),
    (re.compile(r"^head\.fc\."), "head."),
]


def uses_timm_names(state: dict) -> bool:
    """True if a state dict names its parameters as timm's ConvNeXt does (`stem.0.weight`,
    `stages.0.blocks.0.conv_dw.weight`, `head.fc.weight`, ...)."""
    return any(k.startswith(("stem.", "head.fc.", "head.norm.")) or ".blocks." in k for k in state)


def from_timm_names(state: dict) -> dict:
    """The same arrays under the official names (the inverse of timm's checkpoint_filter_fn)."""
    renamed = {}
    for name, value in state.items():
        for pattern, replacement in _TIMM_RENAMES:
            name = pattern.sub(replacement, name)
        renamed[name] = value
    return renamed


def to_timm_names(state: dict) -> dict:
    """Official names -> timm's (what timm's checkpoint_filter_fn produces), for export."""
    renamed = {}
    for name, value in state.items():
        name = re.sub(r"^downsample_layers\.0\.", "stem.", name)
        name = re.sub(r"^downsample_layers\.(\d+)\.", r"stages.\1.downsample.", name)
        name = re.sub(r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2.", name)
        name = name.replace(".dwconv.", ".conv_dw.").replace(".pwconv", ".mlp.fc")
        name = re.sub(r"^norm\.", "head.norm.", name)
        name = re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", name)
        renamed[name] = value
    return renamed


def _few(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
