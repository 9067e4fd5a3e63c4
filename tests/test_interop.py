"""PyTorch and timm interoperability: optional layer scale, the official init, timm's names,
safetensors in and out, kernel size and LayerNorm eps in the config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

import numpyconvnext
from kernels import reference
from numpyconvnext import CheckpointError, ConvNeXt1D
from numpyconvnext.losses import cross_entropy
from numpyconvnext.model import from_timm_names, to_timm_names, uses_timm_names
from numpyconvnext.optim import AdamW

FIXTURE = Path(__file__).parent / "fixtures" / "torch_reference.npz"
ROOT = Path(__file__).resolve().parent.parent


def randomised(model: ConvNeXt1D, seed: int = 0) -> ConvNeXt1D:
    rng = np.random.default_rng(seed)
    for name, p in model.state_dict().items():
        scale = 1.0 / np.sqrt(np.prod(p.shape[1:])) if p.ndim > 1 else 0.3
        p[...] = rng.standard_normal(p.shape) * scale + (1.0 if name.endswith("gamma") else 0.0)
    return model


@pytest.fixture(scope="module")
def torch_reference():
    with np.load(FIXTURE) as f:
        ref = {k: f[k] for k in f.files}
    cfg = json.loads(str(ref["config_json"]))
    state = {k[6:]: v for k, v in ref.items() if k.startswith("param/")}
    return cfg, state, ref


@pytest.mark.parametrize("layer_scale_init", [None, 0.0, -1.0])
def test_no_layer_scale_means_no_gamma_and_the_reference_without_it(layer_scale_init):
    model = randomised(ConvNeXt1D((6, 8, 10, 12), (1, 2, 1, 1), 3, 3,
                                  layer_scale_init=layer_scale_init, dtype=np.float64))
    state = model.state_dict()
    assert not any(k.endswith("gamma") for k in state)
    assert model.config["layer_scale_init"] is None
    with_gamma = ConvNeXt1D((6, 8, 10, 12), (1, 2, 1, 1), 3, 3, dtype=np.float64)
    assert model.num_parameters() == with_gamma.num_parameters() - (6 + 2 * 8 + 10 + 12)
    x = np.random.default_rng(1).standard_normal((2, 3, 64))
    expected = reference.convnext_forward(state, (1, 2, 1, 1),
                                          np.ascontiguousarray(x.transpose(0, 2, 1)))
    np.testing.assert_allclose(model.eval().forward(x), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.predict(x[:1]), expected[:1], rtol=1e-9, atol=1e-12)
    # a state dict without gamma keys loads; one with them does not
    other = ConvNeXt1D((6, 8, 10, 12), (1, 2, 1, 1), 3, 3, layer_scale_init=None, dtype=np.float64)
    other.load_state_dict({k: v.copy() for k, v in state.items()})
    np.testing.assert_array_equal(other.predict(x), model.predict(x))
    with pytest.raises(ValueError, match="unexpected"):
        other.load_state_dict(with_gamma.state_dict())


def test_no_layer_scale_trains_without_a_gamma():
    model = ConvNeXt1D((6, 8, 10, 12), (1, 1, 1, 1), 3, 3, layer_scale_init=None)
    optimizer = AdamW.for_model(model, lr=1e-2, weight_decay=0.05)
    x = np.random.default_rng(0).standard_normal((4, 3, 64)).astype(np.float32)
    for _ in range(3):
        _, dlogits = cross_entropy(model.forward(x), np.array([0, 1, 2, 0]))
        model.backward(dlogits)
        optimizer.step()
    assert not any(k.endswith("gamma") for k in model.grads())
    fixed = [model._params[k] for k in model._fixed]
    assert fixed and all(np.all(g == 1.0) for g in fixed)  # the blocks' residual stays x + branch


def test_init_is_the_official_truncated_normal_with_absolute_bounds():
    """timm/official: trunc_normal_(std=.02) cuts at +-2 absolute, i.e. practically not at all:
    the std is 0.02 (a cut at 2 std would give 0.0176) and values beyond 2 std exist."""
    model = ConvNeXt1D((16, 32, 64, 768), (0, 0, 0, 1), 3, 3, seed=7)
    weight = model.state_dict()["stages.3.0.pwconv1.weight"]  # 2.4M values
    assert abs(weight.std() / 0.02 - 1) < 0.005
    assert abs(weight.mean()) < 1e-4
    assert np.abs(weight).max() > 3 * 0.02
    assert np.all(model.state_dict()["stages.3.0.pwconv1.bias"] == 0)


def test_timm_names_are_detected_and_give_identical_logits(torch_reference):
    cfg, state, ref = torch_reference
    timm_state = to_timm_names(state)
    assert uses_timm_names(timm_state) and not uses_timm_names(state)
    names = set(timm_state)
    for expected in ("stem.0.weight", "stem.1.bias", "stages.1.downsample.0.weight",
                     "stages.1.downsample.1.weight", "stages.2.blocks.1.conv_dw.weight",
                     "stages.2.blocks.1.norm.weight", "stages.2.blocks.1.mlp.fc1.weight",
                     "stages.2.blocks.1.mlp.fc2.bias", "stages.2.blocks.1.gamma",
                     "head.norm.weight", "head.fc.weight", "head.fc.bias"):
        assert expected in names, expected
    assert from_timm_names(timm_state).keys() == state.keys()

    def build(weights):
        model = ConvNeXt1D(cfg["dims"], cfg["depths"], cfg["in_channels"], cfg["num_classes"],
                           dtype=np.float64)
        model.load_state_dict(weights)
        return model.eval()

    official, timm = build(state), build(timm_state)
    np.testing.assert_array_equal(timm.forward(ref["x"]), official.forward(ref["x"]))
    np.testing.assert_allclose(timm.forward(ref["x"]), ref["logits"], rtol=1e-10, atol=1e-12)


def test_kernel_size_and_eps_are_in_the_config_and_used():
    model = randomised(ConvNeXt1D((6, 8, 10, 12), (1, 1, 1, 1), 3, 3, kernel_size=5,
                                  layernorm_eps=1e-2, dtype=np.float64))
    assert model.config["kernel_size"] == 5 and model.config["layernorm_eps"] == 1e-2
    assert model.state_dict()["stages.0.0.dwconv.weight"].shape == (6, 1, 5)
    x = np.random.default_rng(2).standard_normal((3, 3, 64))
    expected = reference.convnext_forward(model.state_dict(), (1, 1, 1, 1),
                                          np.ascontiguousarray(x.transpose(0, 2, 1)), eps=1e-2)
    np.testing.assert_allclose(model.eval().forward(x), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.predict(x[:1]), expected[:1], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="odd"):
        ConvNeXt1D((6, 8, 10, 12), (1, 1, 1, 1), 3, 3, kernel_size=4)


def test_old_checkpoint_without_kernel_size_and_eps_loads_with_defaults(tmp_path):
    model = ConvNeXt1D((6, 8, 10, 12), (1, 1, 1, 1), 3, 3, seed=4)
    old_config = {k: v for k, v in model.config.items() if k not in ("kernel_size", "layernorm_eps")}
    entries = {"format": np.array(1), "config": np.array(json.dumps(old_config)),
               "metadata": np.array("{}")}
    entries.update({"param/" + k: v for k, v in model.state_dict().items()})
    np.savez(tmp_path / "old.npz", **entries)
    loaded = numpyconvnext.load(tmp_path / "old.npz")
    assert loaded.config == model.config
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_safetensors_round_trip_with_config_and_metadata_in_the_header(tmp_path):
    model = randomised(ConvNeXt1D((6, 8, 10, 12), (1, 1, 2, 1), 3, 3, kernel_size=3))
    path = numpyconvnext.save(model, tmp_path / "m.safetensors", metadata={"symbol": "BTCUSDT"},
                              arrays={"optim.step": np.array(3)})
    with safe_open(str(path), framework="numpy") as f:
        header = f.metadata()
        keys = set(f.keys())
    assert header["format"] == "numpyconvnext" and header["format_version"] == "2"
    assert json.loads(header["config"]) == model.config
    assert json.loads(header["metadata"]) == {"symbol": "BTCUSDT"}
    assert keys == set(model.state_dict()) | {"extra/optim.step"}  # official names
    checkpoint = numpyconvnext.load_checkpoint(path)
    assert checkpoint.model.config == model.config and checkpoint.metadata == {"symbol": "BTCUSDT"}
    assert checkpoint.arrays["optim.step"] == 3
    x = np.random.default_rng(0).standard_normal((2, 3, 64)).astype(np.float32)
    np.testing.assert_array_equal(checkpoint.model.predict(x), model.predict(x))


@pytest.mark.parametrize("names", ["official", "timm"])
def test_plain_state_dict_safetensors_loads_given_the_architecture(tmp_path, names):
    """A file as `safetensors.torch.save_file(model.state_dict())` writes it: tensors only, no
    metadata. safetensors.numpy.save_file writes the same bytes for the same arrays (the format
    has no framework field), so the test needs no torch."""
    model = randomised(ConvNeXt1D.from_config("atto", 7, 2, layer_scale_init=None))
    state = model.state_dict() if names == "official" else to_timm_names(model.state_dict())
    path = tmp_path / "plain.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    x = np.random.default_rng(0).standard_normal((2, 7, 64)).astype(np.float32)
    for config in ("atto", {"dims": [40, 80, 160, 320], "depths": [2, 2, 6, 2]}):
        loaded = numpyconvnext.load(path, config=config)
        assert loaded.config["in_channels"] == 7 and loaded.config["num_classes"] == 2
        assert loaded.config["layer_scale_init"] is None  # no gamma in the file
        np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    with pytest.raises(CheckpointError, match="pass the architecture"):
        numpyconvnext.load(path)
    with pytest.raises(CheckpointError, match="incompatible"):
        numpyconvnext.load(path, config="pico")


def test_torch_state_dict_file_loads_with_identical_logits(tmp_path):
    """Optional: with torch installed, a real `safetensors.torch.save_file` of the PyTorch twin."""
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from torch_convnext import ConvNeXt1DTorch
    finally:
        sys.path.remove(str(ROOT / "bench"))
    torch.manual_seed(0)
    for layer_scale in (0.5, 0.0):
        twin = ConvNeXt1DTorch(4, 3, (8, 16, 24, 32), (1, 1, 2, 1),
                               layer_scale_init=layer_scale).eval()
        path = tmp_path / f"torch-{layer_scale}.safetensors"
        safetensors_torch.save_file(twin.state_dict(), str(path))
        x = np.random.default_rng(0).standard_normal((2, 4, 64)).astype(np.float32)
        model = numpyconvnext.load(path, config={"dims": [8, 16, 24, 32], "depths": [1, 1, 2, 1]})
        with torch.no_grad():
            expected = twin(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(model.predict(x), expected, rtol=1e-4, atol=1e-5)
