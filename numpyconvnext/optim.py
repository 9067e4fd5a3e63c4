"""AdamW with decoupled weight decay, a warm-up + cosine learning-rate schedule, and global
gradient-norm clipping. PyTorch semantics throughout.

Typical use with a model whose ``state_dict()`` returns its live parameter arrays and whose
``grads()`` returns the matching gradients::

    opt = AdamW(model.state_dict(), lr=4e-4, weight_decay=0.05)
    sched = WarmupCosineSchedule.from_epochs(4e-4, warmup_epochs=5, epochs=100,
                                             steps_per_epoch=len(batches))
    for it in range(sched.total_steps):
        ...forward, backward...
        grads = model.grads()
        clip_grad_norm(grads, max_norm=1.0)
        opt.step(grads, lr=sched(it))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from kernels.adamw import adamw_update
from numpyconvnext.threads import computes

__all__ = [
    "DEFAULT_MIN_LR",
    "AdamW",
    "WarmupCosineSchedule",
    "clip_grad_norm",
    "cosine_lr",
]

# Floor of the cosine decay, as in the official ConvNeXt training script (--min_lr 1e-6).
DEFAULT_MIN_LR = 1e-6

NoDecay = Callable[[str, np.ndarray], bool] | Iterable[str] | None


class AdamW:
    """AdamW (Loshchilov & Hutter), the update of ``torch.optim.AdamW`` (amsgrad=False).

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p <- p * (1 - lr * wd)                        (decoupled weight decay)
        m <- beta1 * m + (1 - beta1) * g
        v <- beta2 * v + (1 - beta2) * g^2
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps)

    Parameters are updated in place (through flat views), so ``params`` must be the model's
    live, C-contiguous float32/float64 arrays. Which parameters skip weight decay is chosen by
    ``no_decay``: None (default) exempts every parameter with ``ndim <= 1`` (norm weights,
    biases, layer-scale gamma); a collection of names exempts exactly those; a callable
    ``(name, array) -> bool`` returns True for the exempt ones. The moments m, v have the
    parameter's dtype.
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 4e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.05,
        no_decay: NoDecay = None,
    ) -> None:
        if not params:
            raise ValueError("AdamW got no parameters")
        self.lr = _check_lr(lr)
        beta1, beta2 = (float(b) for b in betas)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.betas = (beta1, beta2)
        self.eps = float(eps)
        if not (self.eps >= 0.0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a non-negative finite number, got {eps}")
        self.weight_decay = float(weight_decay)
        if not (self.weight_decay >= 0.0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a non-negative finite number, got "
                             f"{weight_decay}")

        self.params: dict[str, np.ndarray] = {}
        for name, param in params.items():
            if not isinstance(param, np.ndarray):
                raise ValueError(f"parameter {name!r} must be a numpy array, got {type(param)}")
            if param.dtype not in (np.float32, np.float64):
                raise ValueError(f"parameter {name!r} must be float32 or float64, got "
                                 f"{param.dtype}")
            # A non-contiguous array would need a copy to be flattened, and updates to a copy
            # never reach the model.
            if not param.flags.c_contiguous:
                raise ValueError(f"parameter {name!r} must be C-contiguous")
            if not param.flags.writeable:
                raise ValueError(f"parameter {name!r} is read-only")
            self.params[name] = param

        self.decay_names = frozenset(self.params) - _no_decay_names(self.params, no_decay)
        self.step_count = 0
        self.m = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.v = {name: np.zeros_like(p) for name, p in self.params.items()}
        self.grad_views: dict[str, np.ndarray] | None = None  # set by for_model

    @classmethod
    def for_model(cls, model, **options) -> AdamW:
        """AdamW over a model's flat parameter buffer: two kernel calls a step, not one per array.

        ``model`` has ``flat_params``, ``flat_grads`` (1-D, same length) and ``decay_size``
        (``flat_params[:decay_size]`` decays, the rest does not), as ``ConvNeXt1D``. The
        parameters are named ``decay`` and ``no_decay``; ``step()`` without ``grads`` reads
        the model's live gradients. Same update as ``AdamW(model.state_dict())`` with the
        default ``no_decay`` (element for element); only the state-dict keys differ.
        """
        size = int(model.decay_size)
        params = {"decay": model.flat_params[:size], "no_decay": model.flat_params[size:]}
        optimizer = cls(params, no_decay={"no_decay"}, **options)
        optimizer.grad_views = {"decay": model.flat_grads[:size],
                                "no_decay": model.flat_grads[size:]}
        return optimizer

    @computes(blas=False)
    def step(self, grads: Mapping[str, np.ndarray] | None = None, lr: float | None = None) -> None:
        """Apply one AdamW update with ``grads`` (same names and shapes as the parameters).

        ``lr`` overrides the constructor's learning rate for this step only (pass the
        schedule's value here). Gradients of another float dtype are cast to the parameter's.
        ``grads=None`` is allowed for an optimizer made by ``for_model`` (the model's gradients).
        """
        if grads is None:
            grads = self.grad_views
            if grads is None:
                raise ValueError("step() needs grads (only AdamW.for_model reads them itself)")
        _check_same_names("grads", grads, self.params)
        step_lr = self.lr if lr is None else _check_lr(lr)
        beta1, beta2 = self.betas
        flat_grads = {}
        for name, param in self.params.items():
            grad = np.asarray(grads[name])
            if grad.shape != param.shape:
                raise ValueError(f"gradient {name!r} has shape {grad.shape}, parameter has "
                                 f"{param.shape}")
            # validate every gradient before touching any state, so a bad dict changes nothing
            flat_grads[name] = np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1)

        self.step_count += 1
        for name, param in self.params.items():
            weight_decay = self.weight_decay if name in self.decay_names else 0.0
            adamw_update(
                _flat_view(param), flat_grads[name], _flat_view(self.m[name]),
                _flat_view(self.v[name]), float(step_lr), beta1, beta2, self.eps,
                float(weight_decay), int(self.step_count),
            )

    def state_dict(self) -> dict[str, np.ndarray]:
        """The optimizer state as a flat name -> array dict (copies), savable with np.savez.

        Keys: ``step`` (int64 scalar), ``lr``, ``beta1``, ``beta2``, ``eps``, ``weight_decay``
        (float64 scalars), ``m.<param>`` and ``v.<param>`` (arrays shaped like the parameter).
        """
        state = {
            "step": np.array(self.step_count, dtype=np.int64),
            "lr": np.array(self.lr, dtype=np.float64),
            "beta1": np.array(self.betas[0], dtype=np.float64),
            "beta2": np.array(self.betas[1], dtype=np.float64),
            "eps": np.array(self.eps, dtype=np.float64),
            "weight_decay": np.array(self.weight_decay, dtype=np.float64),
        }
        for name in self.params:
            state[f"m.{name}"] = self.m[name].copy()
            state[f"v.{name}"] = self.v[name].copy()
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore a ``state_dict()``: step, hyperparameters and moments (as PyTorch does).

        Strict: the keys must be exactly those ``state_dict()`` would produce for these
        parameters and every moment must have its parameter's shape; otherwise ValueError and
        the optimizer is left unchanged. Moments are copied into the existing buffers.
        """
        expected = set(self.state_dict_keys())
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"optimizer state does not match the parameters: missing keys "
                             f"{_short(missing)}, unexpected keys {_short(unexpected)}")
        for name, param in self.params.items():
            for kind in ("m", "v"):
                array = np.asarray(state[f"{kind}.{name}"])
                if array.shape != param.shape:
                    raise ValueError(f"optimizer state {kind}.{name} has shape {array.shape}, "
                                     f"parameter has {param.shape}")
        step = np.asarray(state["step"])
        if step.shape != () or not np.issubdtype(step.dtype, np.integer) or int(step) < 0:
            raise ValueError(f"optimizer state 'step' must be a non-negative integer scalar, "
                             f"got {step!r}")
        scalars = {key: float(np.asarray(state[key]))
                   for key in ("lr", "beta1", "beta2", "eps", "weight_decay")}
        if not (0.0 <= scalars["beta1"] < 1.0 and 0.0 <= scalars["beta2"] < 1.0
                and scalars["eps"] >= 0.0 and scalars["weight_decay"] >= 0.0
                and all(math.isfinite(x) for x in scalars.values())):
            raise ValueError(f"optimizer state has invalid hyperparameters: {scalars}")

        self.step_count = int(step)
        self.lr = _check_lr(scalars["lr"])
        self.betas = (scalars["beta1"], scalars["beta2"])
        self.eps = scalars["eps"]
        self.weight_decay = scalars["weight_decay"]
        for name in self.params:
            np.copyto(self.m[name], state[f"m.{name}"], casting="same_kind")
            np.copyto(self.v[name], state[f"v.{name}"], casting="same_kind")

    def state_dict_keys(self) -> list[str]:
        """The keys ``state_dict()`` produces, in order."""
        keys = ["step", "lr", "beta1", "beta2", "eps", "weight_decay"]
        for name in self.params:
            keys += [f"m.{name}", f"v.{name}"]
        return keys

    def state_arrays(self, prefix: str = "optim.") -> dict[str, np.ndarray]:
        """``state_dict()`` with every key prefixed, to share one .npz with the model weights."""
        return {prefix + key: value for key, value in self.state_dict().items()}

    def load_state_arrays(self, arrays: Mapping[str, np.ndarray], prefix: str = "optim.") -> None:
        """Load the entries of ``arrays`` whose keys start with ``prefix`` (others are ignored,
        e.g. the model weights of the same .npz); strict within the prefix."""
        self.load_state_dict({key[len(prefix):]: arrays[key]
                              for key in arrays if key.startswith(prefix)})


def _check_lr(lr: float) -> float:
    lr = float(lr)
    if not (lr >= 0.0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be a non-negative finite number, got {lr}")
    return lr


def _flat_view(array: np.ndarray) -> np.ndarray:
    flat = array.reshape(-1)
    # reshape of a C-contiguous array is a view; anything else would silently drop the update
    assert np.shares_memory(flat, array) or array.size == 0
    return flat


def _no_decay_names(params: Mapping[str, np.ndarray], no_decay: NoDecay) -> frozenset[str]:
    if no_decay is None:
        return frozenset(name for name, p in params.items() if p.ndim <= 1)
    if callable(no_decay):
        return frozenset(name for name, p in params.items() if no_decay(name, p))
    if isinstance(no_decay, str):
        raise ValueError("no_decay must be a collection of names, not a single string")
    names = frozenset(no_decay)
    unknown = sorted(names - set(params))
    if unknown:
        raise ValueError(f"no_decay names not among the parameters: {_short(unknown)}")
    return names


def _check_same_names(what: str, given: Mapping[str, object], params: Mapping[str, object]):
    if given.keys() != params.keys():
        missing = sorted(set(params) - set(given))
        unexpected = sorted(set(given) - set(params))
        raise ValueError(f"{what} do not match the parameters: missing {_short(missing)}, "
                         f"unexpected {_short(unexpected)}")


def _short(names: list[str], limit: int = 5) -> str:
    if len(names) <= limit:
        return repr(names)
    return f"{names[:limit]!r} and {len(names) - limit} more"


def cosine_lr(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr: float = DEFAULT_MIN_LR,
) -> float:
    """Learning rate for the 0-based iteration ``step``: linear warm-up, then cosine decay.

        step < W:        lr = base_lr * (step + 1) / W
        W <= step < N:   lr = min_lr + (base_lr - min_lr) * 0.5 * (1 + cos(pi * (step - W)/(N - W)))
        step >= N:       lr = min_lr

    with W = warmup_steps and N = total_steps. Warm-up starts at base_lr / W (small, but not
    zero, so the first update is not wasted) and reaches base_lr at step W - 1; the cosine
    starts at base_lr at step W and reaches the floor min_lr at step N.
    """
    base_lr = float(base_lr)
    min_lr = float(min_lr)
    _check_schedule(base_lr, warmup_steps, total_steps, min_lr)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _check_schedule(base_lr: float, warmup_steps: int, total_steps: int, min_lr: float) -> None:
    if not (base_lr >= 0.0 and math.isfinite(base_lr)):
        raise ValueError(f"base_lr must be a non-negative finite number, got {base_lr}")
    if not 0.0 <= min_lr <= base_lr:
        raise ValueError(f"min_lr must lie in [0, base_lr={base_lr}], got {min_lr}")
    if int(total_steps) != total_steps or total_steps < 1:
        raise ValueError(f"total_steps must be a positive integer, got {total_steps}")
    if int(warmup_steps) != warmup_steps or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be an integer in [0, total_steps={total_steps}], "
                         f"got {warmup_steps}")


class WarmupCosineSchedule:
    """Per-iteration learning rate: linear warm-up to ``base_lr``, cosine decay to ``min_lr``.

    ``schedule(step)`` (or ``schedule.lr_at(step)``) gives the lr for the 0-based iteration
    ``step``; see ``cosine_lr`` for the formula. The default floor is DEFAULT_MIN_LR = 1e-6,
    as in the official ConvNeXt recipe.
    """

    def __init__(
        self,
        base_lr: float,
        warmup_steps: int,
        total_steps: int,
        min_lr: float = DEFAULT_MIN_LR,
    ) -> None:
        _check_schedule(float(base_lr), warmup_steps, total_steps, float(min_lr))
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)

    @classmethod
    def from_epochs(
        cls,
        base_lr: float,
        warmup_epochs: int,
        epochs: int,
        steps_per_epoch: int,
        min_lr: float = DEFAULT_MIN_LR,
    ) -> WarmupCosineSchedule:
        """Schedule for ``epochs`` epochs of ``steps_per_epoch`` iterations, the first
        ``warmup_epochs`` of them warming up."""
        return cls(base_lr, warmup_epochs * steps_per_epoch, epochs * steps_per_epoch, min_lr)

    def lr_at(self, step: int) -> float:
        """Learning rate for the 0-based iteration ``step``."""
        return cosine_lr(step, self.base_lr, self.warmup_steps, self.total_steps, self.min_lr)

    __call__ = lr_at

    def __repr__(self) -> str:
        return (f"WarmupCosineSchedule(base_lr={self.base_lr}, warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps}, min_lr={self.min_lr})")


def clip_grad_norm(
    grads: Mapping[str, np.ndarray], max_norm: float, error_if_nonfinite: bool = False
) -> float:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``.

        total_norm = sqrt(sum over arrays of sum(g^2))
        if max_norm / (total_norm + 1e-6) < 1:  g <- g * max_norm / (total_norm + 1e-6)

    as ``torch.nn.utils.clip_grad_norm_``. Returns total_norm (before clipping). If it is NaN
    or infinite the gradients are left untouched (PyTorch would fill them with NaN) and the
    norm is returned so the caller can skip the step; with ``error_if_nonfinite`` a
    ValueError is raised instead.
    """
    max_norm = float(max_norm)
    if not (max_norm > 0.0 and math.isfinite(max_norm)):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm}")
    # per-array norms in the gradients' dtype (as PyTorch), combined in float64 by hypot,
    # which cannot overflow where the sum of squares would
    norms = [float(np.linalg.norm(np.asarray(g).reshape(-1))) for g in grads.values()]
    total_norm = math.hypot(*norms)
    if not math.isfinite(total_norm):
        if error_if_nonfinite:
            raise ValueError(f"total gradient norm is {total_norm}; cannot clip")
        return total_norm
    clip_coef = max_norm / (total_norm + 1e-6)
    if clip_coef < 1.0:
        for grad in grads.values():
            grad *= clip_coef
    return total_norm
