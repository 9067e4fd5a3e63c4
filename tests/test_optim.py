"""AdamW, the warm-up + cosine schedule and gradient clipping against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernels import reference
from kernels.adamw import adamw_update
from numpyconvnext.optim import (
    DEFAULT_MIN_LR,
    AdamW,
    WarmupCosineSchedule,
    clip_grad_norm,
    cosine_lr,
)

adamw_reference = reference.adamw_update  # the plain-NumPy oracle


def torch_adamw_by_hand(p, grads_per_step, lr, beta1, beta2, eps, weight_decay):
    """torch.optim.AdamW's single-tensor loop, element by element in Python floats."""
    p, m, v = list(p), [0.0] * len(p), [0.0] * len(p)
    for t, grad in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grad):
            p[i] *= 1 - lr * weight_decay
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            step_size = lr / (1 - beta1**t)
            denom = math.sqrt(v[i]) / math.sqrt(1 - beta2**t) + eps
            p[i] -= step_size * m[i] / denom
    return p, m, v


# ---------------------------------------------------------------- AdamW update rule


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-6)])
def test_adamw_three_steps_equal_hand_computed_torch_recurrence(dtype, rtol):
    lr, betas, eps, wd = 0.1, (0.9, 0.99), 1e-8, 0.05
    weight0 = [1.0, -2.0, 0.5]
    bias0 = [0.3, -0.1]
    weight_grads = [[0.5, -1.0, 2.0], [-0.3, 0.2, 1.5], [0.1, 0.4, -0.7]]
    bias_grads = [[1.0, 0.0], [-2.0, 0.5], [0.25, -0.5]]
    params = {
        "weight": np.array([weight0], dtype=dtype),  # [1, 3]: 2-D, decayed
        "bias": np.array(bias0, dtype=dtype),        # 1-D: no decay by default
    }
    weight_array, bias_array = params["weight"], params["bias"]
    opt = AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for gw, gb in zip(weight_grads, bias_grads, strict=True):
        opt.step({"weight": np.array([gw]), "bias": np.array(gb)})

    exp_w, exp_mw, exp_vw = torch_adamw_by_hand(weight0, weight_grads, lr, *betas, eps, wd)
    exp_b, _, _ = torch_adamw_by_hand(bias0, bias_grads, lr, *betas, eps, 0.0)
    # the updates landed in the caller's arrays, which kept their dtype
    assert params["weight"] is weight_array and params["bias"] is bias_array
    assert weight_array.dtype == dtype and opt.m["weight"].dtype == dtype
    np.testing.assert_allclose(weight_array[0], exp_w, rtol=rtol)
    np.testing.assert_allclose(bias_array, exp_b, rtol=rtol)
    np.testing.assert_allclose(opt.m["weight"][0], exp_mw, rtol=rtol)
    np.testing.assert_allclose(opt.v["weight"][0], exp_vw, rtol=rtol)
    assert opt.step_count == 3
    # and weight decay mattered: without it the weight ends elsewhere
    no_wd, _, _ = torch_adamw_by_hand(weight0, weight_grads, lr, *betas, eps, 0.0)
    assert not np.allclose(weight_array[0], no_wd, rtol=1e-4)


def test_adamw_first_step_is_lr_times_sign_plus_decay():
    # at t=1, m_hat = g and v_hat = g^2, so the step is lr * g / (|g| + eps) ~ lr * sign(g)
    params = {"w": np.array([[1.0, 1.0], [1.0, 1.0]])}
    opt = AdamW(params, lr=0.01, weight_decay=0.1, eps=0.0)
    opt.step({"w": np.array([[3.0, -0.001], [1e4, -7.0]])})
    expected = 1.0 * (1 - 0.01 * 0.1) - 0.01 * np.array([[1.0, -1.0], [1.0, -1.0]])
    np.testing.assert_allclose(params["w"], expected, rtol=1e-13)


def test_step_lr_override_is_used_for_that_step_only():
    params = {"b": np.zeros(2)}
    opt = AdamW(params, lr=1.0, eps=0.0)
    opt.step({"b": np.ones(2)}, lr=0.5)
    np.testing.assert_allclose(params["b"], [-0.5, -0.5], rtol=1e-14)
    assert opt.lr == 1.0


def test_default_rule_exempts_1d_params_from_weight_decay():
    # with zero gradients m = v = 0, so the only change is the decay factor 1 - lr * wd
    params = {
        "conv.weight": np.full((2, 3, 4), 2.0),
        "linear.weight": np.full((3, 2), 2.0),
        "norm.weight": np.full(3, 2.0),
        "conv.bias": np.full(2, 2.0),
        "gamma": np.full(3, 2.0),
    }
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    assert opt.decay_names == {"conv.weight", "linear.weight"}
    opt.step({name: np.zeros_like(p) for name, p in params.items()})
    np.testing.assert_allclose(params["conv.weight"], 2.0 * 0.95, rtol=1e-14)
    np.testing.assert_allclose(params["linear.weight"], 2.0 * 0.95, rtol=1e-14)
    for name in ("norm.weight", "conv.bias", "gamma"):
        np.testing.assert_array_equal(params[name], 2.0)


def test_custom_no_decay_by_names_and_by_callable():
    def make():
        return {"a": np.ones((2, 2)), "b": np.ones((2, 2)), "c": np.ones(2)}

    by_names = AdamW(make(), no_decay={"a", "c"})
    assert by_names.decay_names == {"b"}
    by_callable = AdamW(make(), no_decay=lambda name, p: name == "b")
    assert by_callable.decay_names == {"a", "c"}
    with pytest.raises(ValueError, match="not among the parameters"):
        AdamW(make(), no_decay={"zzz"})


def test_gradients_of_another_dtype_are_cast_and_params_keep_theirs():
    params = {"w": np.ones((2, 2), dtype=np.float32)}
    opt = AdamW(params, lr=0.1, weight_decay=0.0)
    opt.step({"w": np.full((2, 2), 0.5, dtype=np.float64)})
    assert params["w"].dtype == np.float32
    np.testing.assert_allclose(params["w"], 0.9, rtol=1e-6)


def test_adamw_rejects_bad_parameters_and_gradients():
    with pytest.raises(ValueError, match="C-contiguous"):
        AdamW({"w": np.ones((3, 4))[:, ::2]})
    with pytest.raises(ValueError, match="float32 or float64"):
        AdamW({"w": np.ones(3, dtype=np.int64)})
    with pytest.raises(ValueError, match="betas"):
        AdamW({"w": np.ones(3)}, betas=(0.9, 1.0))
    params = {"w": np.ones((2, 2)), "b": np.ones(2)}
    opt = AdamW(params)
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        opt.step({"w": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"unexpected \['x'\]"):
        opt.step({"w": np.ones((2, 2)), "b": np.ones(2), "x": np.ones(1)})
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.ones((2, 2)), "b": np.ones(3)})
    # a rejected step changed nothing
    assert opt.step_count == 0
    np.testing.assert_array_equal(params["w"], 1.0)


# ---------------------------------------------------------------- state round trip


def make_model(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "stem.weight": rng.normal(size=(4, 3, 2)).astype(dtype),
        "stem.bias": rng.normal(size=4).astype(dtype),
        "head.weight": rng.normal(size=(3, 4)).astype(dtype),
    }


def grad_sequence(params, n, seed=1):
    rng = np.random.default_rng(seed)
    return [{k: rng.normal(size=p.shape).astype(p.dtype) for k, p in params.items()}
            for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_state_round_trip_through_npz_continues_exactly(tmp_path, dtype):
    uninterrupted = make_model(dtype)
    grads = grad_sequence(uninterrupted, 6)
    opt = AdamW(uninterrupted, lr=1e-2, weight_decay=0.1)
    for g in grads:
        opt.step(g)

    first = make_model(dtype)
    opt1 = AdamW(first, lr=1e-2, weight_decay=0.1)
    for g in grads[:3]:
        opt1.step(g)
    path = tmp_path / "ckpt.npz"
    np.savez(path, **first, **opt1.state_arrays())

    with np.load(path) as saved:
        resumed = {name: saved[name].copy() for name in first}
        opt2 = AdamW(resumed, lr=123.0, weight_decay=0.0)  # hyperparameters come from the file
        opt2.load_state_arrays(saved)  # model keys in the same file are ignored
    assert opt2.step_count == 3 and opt2.lr == 1e-2 and opt2.weight_decay == 0.1
    for g in grads[3:]:
        opt2.step(g)

    for name in uninterrupted:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name])
        np.testing.assert_array_equal(opt2.m[name], opt.m[name])
        np.testing.assert_array_equal(opt2.v[name], opt.v[name])


def test_state_dict_is_a_copy_with_flat_keys():
    params = make_model(np.float64)
    opt = AdamW(params)
    opt.step(grad_sequence(params, 1)[0])
    state = opt.state_dict()
    assert list(state) == opt.state_dict_keys()
    assert set(state) >= {"step", "m.stem.weight", "v.head.weight"}
    assert all(isinstance(value, np.ndarray) for value in state.values())
    state["m.stem.weight"][...] = 0.0
    assert np.any(opt.m["stem.weight"] != 0.0)


def test_load_state_dict_is_strict_and_atomic():
    params = make_model(np.float64)
    opt = AdamW(params)
    opt.step(grad_sequence(params, 1)[0])
    good = opt.state_dict()
    fresh = AdamW(make_model(np.float64))

    missing = dict(good)
    del missing["v.stem.bias"]
    with pytest.raises(ValueError, match=r"missing keys \['v.stem.bias'\]"):
        fresh.load_state_dict(missing)
    extra = dict(good, **{"m.other": np.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['m.other'\]"):
        fresh.load_state_dict(extra)
    wrong_shape = dict(good, **{"m.head.weight": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="m.head.weight has shape"):
        fresh.load_state_dict(wrong_shape)
    with pytest.raises(ValueError, match="step"):
        fresh.load_state_dict(dict(good, step=np.array(-1)))
    # nothing was half-loaded
    assert fresh.step_count == 0
    assert all(not np.any(m) for m in fresh.m.values())

    fresh.load_state_dict(good)
    assert fresh.step_count == 1
    np.testing.assert_array_equal(fresh.v["stem.weight"], opt.v["stem.weight"])


# ---------------------------------------------------------------- kernel vs reference


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 300),
    dtype=st.sampled_from([np.float32, np.float64]),
    step=st.integers(1, 50),
    weight_decay=st.sampled_from([0.0, 0.05, 0.3]),
    seed=st.integers(0, 2**32 - 1),
)
@example(n=26, dtype=np.float64, step=26, weight_decay=0.0, seed=102975785)
def test_numba_kernel_matches_numpy_reference(n, dtype, step, weight_decay, seed):
    rng = np.random.default_rng(seed)
    p = rng.normal(size=n).astype(dtype)
    g = rng.normal(size=n).astype(dtype)
    m = (0.1 * rng.normal(size=n)).astype(dtype)
    v = (0.01 * rng.uniform(size=n)).astype(dtype)
    args = (1e-3, 0.9, 0.999, 1e-8, weight_decay, step)
    expected = adamw_reference(p.copy(), g, m.copy(), v.copy(), *args)
    # the same math in float64 on the same inputs: the kernel rounds to float32 only on store
    exact = adamw_reference(p.astype(np.float64), g.astype(np.float64), m.astype(np.float64),
                            v.astype(np.float64), *args)
    adamw_update(p, g, m, v, *args)
    for got, want, want_exact in zip((p, m, v), expected, exact, strict=True):
        if dtype == np.float64:
            # beta1 * m + (1 - beta1) * g can cancel to a small m: its rounding error is
            # absolute, at the scale of the O(1) operands (seed 250: m = -4.9e-7, off by 7e-19)
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        else:
            # a float32 reference loses digits to cancellation in beta1 * m + (1 - beta1) * g
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(got, want_exact.astype(np.float32), rtol=2.5e-7, atol=0)
    assert p.dtype == dtype


# ---------------------------------------------------------------- schedule


def test_schedule_values_at_known_points():
    base, floor = 1e-3, 1e-5
    sched = WarmupCosineSchedule(base, warmup_steps=10, total_steps=110, min_lr=floor)
    assert sched(0) == pytest.approx(base / 10, rel=1e-14)       # warm-up starts near 0
    assert sched(4) == pytest.approx(base * 5 / 10, rel=1e-14)
    assert sched(9) == pytest.approx(base, rel=1e-14)            # warm-up ends at base
    assert sched(10) == pytest.approx(base, rel=1e-14)           # cosine starts at base
    assert sched(60) == pytest.approx((base + floor) / 2, rel=1e-14)  # halfway: the mean
    quarter = floor + (base - floor) * 0.5 * (1 + math.cos(math.pi / 4))
    assert sched(35) == pytest.approx(quarter, rel=1e-14)
    assert sched(110) == floor                                   # the end is the floor
    assert sched(10_000) == floor
    assert sched.lr_at(60) == cosine_lr(60, base, 10, 110, floor)


def test_schedule_rises_during_warmup_and_decays_monotonically_after():
    sched = WarmupCosineSchedule.from_epochs(4e-4, warmup_epochs=2, epochs=20,
                                             steps_per_epoch=7)
    assert (sched.warmup_steps, sched.total_steps) == (14, 140)
    lrs = np.array([sched(step) for step in range(150)])
    assert np.all(np.diff(lrs[:14]) > 0)
    assert np.all(np.diff(lrs[14:]) <= 0)
    assert np.all(np.diff(lrs[14:140]) < 0)
    assert lrs.max() == pytest.approx(4e-4) and lrs.min() == DEFAULT_MIN_LR
    assert np.all(lrs > 0)


def test_schedule_without_warmup_starts_at_base():
    assert cosine_lr(0, 1e-3, 0, 100) == pytest.approx(1e-3)
    assert cosine_lr(100, 1e-3, 0, 100) == DEFAULT_MIN_LR


@pytest.mark.parametrize(
    "args, message",
    [
        ((1e-3, 10, 100, 2e-3), "min_lr"),
        ((1e-3, 200, 100), "warmup_steps"),
        ((1e-3, 0, 0), "total_steps"),
        ((-1.0, 0, 10), "base_lr"),
    ],
)
def test_schedule_rejects_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        WarmupCosineSchedule(*args)


def test_schedule_rejects_negative_step():
    with pytest.raises(ValueError, match="step"):
        cosine_lr(-1, 1e-3, 10, 100)


# ---------------------------------------------------------------- clipping


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-6), (np.float64, 1e-13)])
def test_clip_grad_norm_hand_case(dtype, rtol):
    grads = {"a": np.array([3.0, 0.0], dtype=dtype), "b": np.array([[0.0, 4.0]], dtype=dtype)}
    a_array = grads["a"]
    total = clip_grad_norm(grads, max_norm=1.0)
    assert total == pytest.approx(5.0, rel=1e-7)
    scale = 1.0 / (5.0 + 1e-6)
    assert grads["a"] is a_array  # in place
    np.testing.assert_allclose(grads["a"], [3.0 * scale, 0.0], rtol=rtol)
    np.testing.assert_allclose(grads["b"], [[0.0, 4.0 * scale]], rtol=rtol)
    norm_after = math.hypot(*grads["a"], *grads["b"].ravel())
    assert norm_after == pytest.approx(1.0, rel=1e-5)


def test_clip_grad_norm_is_a_no_op_under_the_max():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[0.0, 4.0]])}
    before = {k: v.copy() for k, v in grads.items()}
    assert clip_grad_norm(grads, max_norm=5.1) == pytest.approx(5.0, rel=1e-14)
    for name in grads:
        np.testing.assert_array_equal(grads[name], before[name])


def test_clip_grad_norm_leaves_non_finite_gradients_alone_or_raises():
    grads = {"a": np.array([1.0, np.inf]), "b": np.array([2.0])}
    assert clip_grad_norm(grads, 1.0) == math.inf
    np.testing.assert_array_equal(grads["b"], [2.0])
    with pytest.raises(ValueError, match="norm"):
        clip_grad_norm({"a": np.array([np.nan])}, 1.0, error_if_nonfinite=True)
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(grads, 0.0)
