"""Layers, a block and whole models: backward == finite differences (float64), PyTorch parity,
parameter counts, state dicts and input validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyconvnext import ConvNeXt1D
from numpyconvnext.layers import Block, Downsample, Head, Stem
from tests.gradcheck import directional_check, elementwise_check

FIXTURE = Path(__file__).parent / "fixtures" / "torch_reference.npz"
SMALL = dict(dims=(4, 6, 8, 10), depths=(1, 1, 2, 1), in_channels=3, num_classes=3)


def randomised(model: ConvNeXt1D, seed: int) -> ConvNeXt1D:
    """Move every parameter off its init so gamma, norms and biases all matter."""
    rng = np.random.default_rng(seed)
    for name, p in model.state_dict().items():
        if p.ndim > 1:
            p[...] = rng.standard_normal(p.shape) / np.sqrt(np.prod(p.shape[1:]))
        elif name.endswith("gamma") or name.endswith("norm.weight") or ".1.weight" in name:
            p[...] = 1.0 + 0.3 * rng.standard_normal(p.shape)
        else:
            p[...] = 0.1 * rng.standard_normal(p.shape)
    return model


def layer_params(shapes: dict[str, tuple], rng: np.random.Generator):
    params = {k: rng.standard_normal(s) * (0.5 if len(s) > 1 else 1.0) for k, s in shapes.items()}
    grads = {k: np.zeros(s) for k, s in shapes.items()}
    return params, grads


def check_layer(forward, backward, x, params, grads, out_shape, rng):
    r = rng.standard_normal(out_shape)

    def loss():
        return float(np.sum(forward(x) * r))

    forward(x)
    dx = backward(r)
    snapshot = {k: g.copy() for k, g in grads.items()}
    directional_check(loss, x, dx, rng)
    for name, p in params.items():
        directional_check(loss, p, snapshot[name], rng, directions=2)
        elementwise_check(loss, p, snapshot[name], rng, samples=3)


# LayerNorm over 2 channels is sharply curved where the two values meet (its output jumps from
# -1 to +1 over a width of sqrt(eps)), beyond what a central difference can follow: the checks
# through a LayerNorm use >= 3 channels (the kernels' own tests cover C = 1 and 2 exactly).
@given(B=st.integers(1, 3), T=st.sampled_from([4, 8, 16]), C=st.integers(3, 6),
       C_out=st.integers(3, 6), seed=st.integers(0, 2**16))
@settings(max_examples=8, deadline=None)
def test_stem_and_downsample_backward(B, T, C, C_out, seed):
    rng = np.random.default_rng(seed)
    p, g = layer_params({"0.weight": (C_out, C, 4), "0.bias": (C_out,), "1.weight": (C_out,),
                         "1.bias": (C_out,)}, rng)
    stem = Stem(p, g)
    x = rng.standard_normal((B, C, T))
    check_layer(stem.forward, stem.backward, x, p, g, (B, T // 4, C_out), rng)

    p, g = layer_params({"0.weight": (C,), "0.bias": (C,), "1.weight": (C_out, C, 2),
                         "1.bias": (C_out,)}, rng)
    down = Downsample(p, g)
    x = rng.standard_normal((B, T, C))
    check_layer(down.forward, down.backward, x, p, g, (B, T // 2, C_out), rng)


@given(B=st.integers(1, 3), T=st.integers(1, 12), C=st.integers(3, 6), seed=st.integers(0, 2**16))
@settings(max_examples=10, deadline=None)
def test_block_backward_with_layer_scale_and_drop_path(B, T, C, seed):
    rng = np.random.default_rng(seed)
    shapes = {"dwconv.weight": (C, 1, 7), "dwconv.bias": (C,), "norm.weight": (C,),
              "norm.bias": (C,), "pwconv1.weight": (4 * C, C), "pwconv1.bias": (4 * C,),
              "pwconv2.weight": (C, 4 * C), "pwconv2.bias": (C,), "gamma": (C,)}
    p, g = layer_params(shapes, rng)
    block = Block(p, g, drop_path_rate=0.2)
    keep = np.array([1.25, 0.0, 1.25])[:B]
    x = rng.standard_normal((B, T, C))
    check_layer(lambda a: block.forward(a, keep), block.backward, x, p, g, (B, T, C), rng)


@given(B=st.integers(1, 3), T=st.integers(1, 8), C=st.integers(3, 6), K=st.integers(1, 4),
       seed=st.integers(0, 2**16))
@settings(max_examples=8, deadline=None)
def test_head_backward(B, T, C, K, seed):
    rng = np.random.default_rng(seed)
    p, g = layer_params({"norm.weight": (C,), "norm.bias": (C,), "head.weight": (K, C),
                         "head.bias": (K,)}, rng)
    head = Head(p, g)
    x = rng.standard_normal((B, T, C))
    check_layer(head.forward, head.backward, x, p, g, (B, K), rng)


@pytest.mark.parametrize("train", [False, True])
def test_whole_model_backward(train):
    model = randomised(ConvNeXt1D(**SMALL, drop_path_rate=0.3, dtype=np.float64), seed=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 3, 64))
    r = rng.standard_normal((3, 3))
    masks = [np.array([1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]), np.array([1.0, 1.0, 0.0]),
             np.array([1.0, 1.0, 1.0]), np.array([0.0, 1.0, 0.0])]
    model.train() if train else model.eval()

    def loss():
        return float(np.sum(model.forward(x, drop_path_masks=masks) * r))

    loss()
    dx = model.backward(r)
    grads = {k: v.copy() for k, v in model.grads().items()}
    directional_check(loss, x, dx, rng, rtol=1e-5)
    directional_check(loss, model.flat_params, model.flat_grads.copy(), rng, rtol=1e-5)
    for name, p in model.state_dict().items():
        elementwise_check(loss, p, grads[name], rng, samples=2, rtol=1e-4)


def test_drop_path_only_in_train_mode():
    model = randomised(ConvNeXt1D(**SMALL, drop_path_rate=0.5, seed=3), seed=3)
    x = np.random.default_rng(0).standard_normal((8, 3, 32))
    model.eval()
    a, b = model.forward(x), model.forward(x)
    np.testing.assert_array_equal(a, b)
    # predict runs these 64 rows in one call (kernels/network.py): the same math, other rounding
    np.testing.assert_allclose(model.predict(x), a, rtol=1e-5, atol=1e-6)
    model.train()
    assert not np.allclose(model.forward(x), a)


@pytest.fixture(scope="module")
def torch_reference():
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def reference_model(ref: dict, dtype) -> ConvNeXt1D:
    """The fixture's architecture (drop-path rates included) holding its PyTorch weights."""
    cfg = json.loads(str(ref["config_json"]))
    model = ConvNeXt1D(cfg["dims"], cfg["depths"], cfg["in_channels"], cfg["num_classes"],
                       drop_path_rate=cfg["dp_rate_max"], dtype=dtype)
    model.load_state_dict({k[6:]: v for k, v in ref.items() if k.startswith("param/")})
    return model


def test_pytorch_parity_eval(torch_reference):
    ref = torch_reference
    model = reference_model(ref, np.float64)
    model.eval()
    np.testing.assert_allclose(model.forward(ref["x"]), ref["logits"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.backward(ref["loss_weights"]), ref["dx"], rtol=1e-9,
                               atol=1e-12)
    for name, grad in model.grads().items():
        np.testing.assert_allclose(grad, ref["grad/" + name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_pytorch_parity_drop_path(torch_reference):
    ref = torch_reference
    cfg = json.loads(str(ref["config_json"]))
    model = reference_model(ref, np.float64)
    np.testing.assert_allclose([b.drop_path_rate for b in model.blocks], ref["dp_rates"])
    masks = [ref["dp_masks/" + k] for k in cfg["dp_block_order"]]
    model.train()
    np.testing.assert_allclose(model.forward(ref["x"], drop_path_masks=masks), ref["dp_logits"],
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.backward(ref["loss_weights"]), ref["dp_dx"], rtol=1e-9,
                               atol=1e-12)
    for name, grad in model.grads().items():
        np.testing.assert_allclose(grad, ref["dp_grad/" + name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)


def test_float32_model_close_to_float64_reference(torch_reference):
    ref = torch_reference
    model = reference_model(ref, np.float32)
    model.eval()
    logits = model.forward(ref["x"])
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,count", [("tiny", 26_773_155), ("small", 48_117_411),
                                        ("base", 85_439_363)])
def test_parameter_counts(name, count):
    from numpyconvnext.model import CONFIGS, parameter_shapes

    shapes = parameter_shapes(**CONFIGS[name], in_channels=20, num_classes=3)
    assert sum(int(np.prod(s)) for s in shapes.values()) == count


def test_tiny_model_instance_count():
    assert ConvNeXt1D.from_config("tiny", 20, 3).num_parameters() == 26_773_155


def test_state_dict_names_and_shapes():
    model = ConvNeXt1D(**SMALL)
    state = model.state_dict()
    assert state["downsample_layers.0.0.weight"].shape == (4, 3, 4)
    assert state["downsample_layers.2.1.weight"].shape == (8, 6, 2)
    assert state["stages.2.1.pwconv1.weight"].shape == (32, 8)
    assert state["stages.2.1.dwconv.weight"].shape == (8, 1, 7)
    assert state["head.weight"].shape == (3, 10)
    assert np.all(state["stages.0.0.gamma"] == np.float32(1e-6))
    # views: writing the state dict changes the model
    state["head.bias"][...] = 5.0
    assert np.all(model.state_dict()["head.bias"] == 5.0)


def test_load_state_dict_is_strict():
    model = ConvNeXt1D(**SMALL)
    state = {k: v.copy() for k, v in model.state_dict().items()}
    missing = dict(state)
    missing.pop("head.bias")
    with pytest.raises(ValueError, match="missing head.bias"):
        model.load_state_dict(missing)
    with pytest.raises(ValueError, match="unexpected extra.weight"):
        model.load_state_dict({**state, "extra.weight": np.zeros(1)})
    with pytest.raises(ValueError, match="has shape"):
        model.load_state_dict({**state, "head.bias": np.zeros(4)})


@pytest.mark.parametrize("bad,message", [
    (np.zeros((3, 64)), "batch, channels, time"),
    (np.zeros((2, 4, 64)), "4 channels"),
    (np.zeros((2, 3, 48)), "multiple of 32"),
    (np.full((2, 3, 64), np.nan), "NaN"),
])
def test_bad_input_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        ConvNeXt1D(**SMALL).forward(bad)


def test_variants_and_unknown_name():
    assert ConvNeXt1D.from_config("atto", 20, 3).config["dims"] == [40, 80, 160, 320]
    with pytest.raises(ValueError, match="unknown variant"):
        ConvNeXt1D.from_config("huge", 20, 3)


def test_regression_head_and_seed_determinism():
    a = ConvNeXt1D(**{**SMALL, "num_classes": 1}, seed=7)
    b = ConvNeXt1D(**{**SMALL, "num_classes": 1}, seed=7)
    x = np.random.default_rng(0).standard_normal((2, 3, 32))
    assert a.forward(x).shape == (2, 1)
    np.testing.assert_array_equal(a.flat_params, b.flat_params)
    assert not np.array_equal(a.flat_params, ConvNeXt1D(**SMALL, seed=8).flat_params)


def test_adamw_for_model_matches_per_parameter_adamw():
    from numpyconvnext.optim import AdamW

    models = [randomised(ConvNeXt1D(**SMALL, dtype=np.float64), seed=4) for _ in range(2)]
    x = np.random.default_rng(5).standard_normal((2, 3, 32))
    per_name = AdamW(models[0].state_dict(), lr=1e-2, weight_decay=0.1)
    flat = AdamW.for_model(models[1], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        for model in models:
            model.backward(np.ones_like(model.forward(x)))
        per_name.step(models[0].grads())
        flat.step()
    np.testing.assert_allclose(models[1].flat_params, models[0].flat_params, rtol=1e-12)


@pytest.mark.parametrize("batch", [1, 3])  # one call for the whole network / layer by layer
def test_predict_reuses_workspaces_and_matches_forward(batch):
    from kernels import reference

    model = randomised(ConvNeXt1D(**SMALL, dtype=np.float64), seed=6).eval()
    x = np.random.default_rng(7).standard_normal((batch, 3, 128))
    expected = model.forward(x)
    first = model.predict(x)
    np.testing.assert_allclose(first, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(model.predict(x), first)
    np.testing.assert_allclose(
        first, reference.convnext_forward(model.state_dict(), SMALL["depths"], x.transpose(0, 2, 1)),
        rtol=1e-12, atol=1e-12)


def _trained_like(seed: int = 0) -> ConvNeXt1D:
    """A small float32 model with weights off the init (every parameter matters)."""
    return randomised(ConvNeXt1D((8, 16, 24, 32), (1, 1, 2, 1), 5, 3), seed).eval()


@pytest.mark.parametrize("packed", [False, True])
def test_frozen_float32_is_the_same_model_read_only(packed, monkeypatch):
    """Packed (what `frozen` does) the batch-1 products sum in another order: the same model to
    rounding; as stored (panel_columns patched to 0), the same bits. Batches: the same path."""
    from kernels.block import panel_columns

    monkeypatch.setattr("numpyconvnext.model.panel_columns",
                        panel_columns if packed else lambda _: 0)
    model = _trained_like()
    model.temperature = 1.7
    model.metadata = {"symbol": "BTCUSDT"}
    frozen = model.frozen()
    assert frozen._pointwise_packed == packed
    x = np.random.default_rng(1).standard_normal((1, 5, 64)).astype(np.float32)
    if packed:
        np.testing.assert_allclose(frozen.predict(x), model.predict(x), rtol=1e-5, atol=1e-6)
        assert frozen._pointwise is not frozen.flat_params
    else:
        np.testing.assert_array_equal(frozen.predict(x), model.predict(x))
    batch = np.random.default_rng(2).standard_normal((9, 5, 64)).astype(np.float32)
    np.testing.assert_array_equal(frozen.predict(batch), model.predict(batch))
    assert frozen.temperature == 1.7 and frozen.metadata == {"symbol": "BTCUSDT"}
    assert frozen.precision == "float32" and not frozen.training
    with pytest.raises(ValueError, match="read-only"):
        frozen.state_dict()["head.bias"][0] = 1.0
    with pytest.raises(RuntimeError, match="frozen"):
        frozen.train()
    model.state_dict()["head.bias"][...] += 1.0  # the original stays trainable and separate
    assert not np.array_equal(frozen.predict(x), model.predict(x))


@pytest.mark.parametrize("gemm", ["own", "auto"])
def test_frozen_batches_multiply_by_the_packed_pointwise_weights(gemm):
    """A frozen float32 copy's big batches go layer by layer, and our GEMM reads the blocks'
    pointwise weights from the panels packed for batch 1 instead of packing them: the bits of
    the model's own predict (panels of other values change the result, so they are read
    where our GEMM runs: "own", or "auto" where it is the default). A bfloat16 copy has none."""
    from kernels import linear
    from kernels.block import pack_columns, panel_columns

    model = randomised(ConvNeXt1D((48, 64, 80, 96), (1, 1, 2, 1), 5, 3), 4).eval()
    frozen = model.frozen()
    for block in frozen.blocks:
        assert set(block.panels) == {"pwconv1.weight", "pwconv2.weight"}
        assert not any(view.flags.writeable for view in block.panels.values())
    x = np.random.default_rng(5).standard_normal((32, 5, 64)).astype(np.float32)
    linear.set_gemm(gemm)
    try:
        np.testing.assert_array_equal(frozen.predict(x), model.predict(x))
        block = frozen.blocks[0]
        weight = block.params["pwconv1.weight"]
        block.panels = {**block.panels, "pwconv1.weight": pack_columns(
            2 * weight, panel_columns(np.float32))}
        changed = not np.array_equal(frozen.predict(x), model.predict(x))
        assert changed == (gemm == "own" or linear.uses_own_gemm())
    finally:
        linear.set_gemm("auto")
    assert all(not block.panels for block in model.frozen("bfloat16").blocks)
    assert all(not block.panels for block in model.blocks)


def test_frozen_bfloat16_rounds_only_the_pointwise_weights():
    from kernels.simd import bfloat16_bits, bfloat16_values

    model = _trained_like()
    frozen = model.frozen("bfloat16")
    assert frozen.precision == "bfloat16"
    for name, value in frozen.state_dict().items():
        original = model.state_dict()[name]
        if name.endswith(("pwconv1.weight", "pwconv2.weight")):
            np.testing.assert_array_equal(value, bfloat16_values(bfloat16_bits(original))
                                          .reshape(value.shape))
            assert not np.array_equal(value, original)
        else:
            np.testing.assert_array_equal(value, original)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("batch", [1, 2, 9])
def test_frozen_bfloat16_predicts_alike_one_call_and_layer_by_layer(batch, packed, monkeypatch):
    """Batch 1 streams the bfloat16 bits (packed or not), a batch multiplies their float32
    values: same math."""
    from kernels.block import panel_columns

    monkeypatch.setattr("numpyconvnext.model.panel_columns",
                        panel_columns if packed else lambda _: 0)
    model = _trained_like(3)
    frozen = model.frozen("bfloat16")
    x = np.random.default_rng(2).standard_normal((batch, 5, 64)).astype(np.float32)
    together = frozen.predict(x)
    one_by_one = np.concatenate([frozen.predict(x[i:i + 1]) for i in range(batch)])
    np.testing.assert_allclose(one_by_one, together, rtol=1e-5, atol=1e-5)
    full = model.predict(x)
    assert np.abs(together - full).max() < 0.05 * np.abs(full).max()  # close, not equal
    assert not np.array_equal(together, full)


def test_frozen_rejects_what_it_cannot_do():
    model = _trained_like()
    with pytest.raises(ValueError, match="precision must be"):
        model.frozen("int8")
    with pytest.raises(ValueError, match="needs a float32 model"):
        ConvNeXt1D((4, 4, 4, 4), (1, 1, 1, 1), 2, 3, dtype=np.float64).frozen("bfloat16")
    with pytest.raises(ValueError, match="differs from the model's dtype"):
        model.frozen("float64")
