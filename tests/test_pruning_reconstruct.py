"""Patch extraction against real Keras convolutions, and least-squares refitting."""

import keras
import numpy as np
import pytest

from tfcompress.pruning import (
    conv_output_size,
    extract_patches,
    greedy_channels,
    reconstruct_weights,
    sample_positions,
)

CASES = [
    dict(kernel_size=3, strides=1, padding="valid", dilation_rate=1),
    dict(kernel_size=3, strides=2, padding="same", dilation_rate=1),
    dict(kernel_size=(2, 4), strides=(2, 3), padding="same", dilation_rate=1),
    dict(kernel_size=(3, 2), strides=1, padding="same", dilation_rate=(2, 3)),
    dict(kernel_size=4, strides=3, padding="valid", dilation_rate=1),
    dict(kernel_size=(1, 1), strides=2, padding="same", dilation_rate=1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['kernel_size']}-{c['strides']}-{c['padding']}")
def test_patches_times_kernel_equal_keras_conv2d(case):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 11, 10, 3)).astype(np.float32)
    conv = keras.layers.Conv2D(5, **case)
    out = keras.ops.convert_to_numpy(conv(x))
    kernel, bias = conv.get_weights()
    assert out.shape[1:3] == conv_output_size(
        (11, 10), case["kernel_size"], case["strides"], case["padding"], case["dilation_rate"]
    )
    positions = sample_positions(2, out.shape[1:3], 25, seed=1)
    patches = extract_patches(
        x, case["kernel_size"], case["strides"], case["padding"], case["dilation_rate"], positions
    )
    got = patches @ kernel.reshape(-1, 5) + bias
    want = out[positions[:, 0], positions[:, 1], positions[:, 2]]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # and all positions at once, in (b, row, col) order
    full = extract_patches(x, case["kernel_size"], case["strides"], case["padding"], case["dilation_rate"])
    np.testing.assert_allclose(full @ kernel.reshape(-1, 5) + bias, out.reshape(-1, 5), rtol=1e-4, atol=1e-4)


def test_extract_patches_rejects_out_of_range_positions():
    with pytest.raises(ValueError, match="positions"):
        extract_patches(np.zeros((1, 4, 4, 1)), 3, positions=np.array([[0, 2, 0]]))


def test_reconstruction_recovers_conv_kernel_and_bias_exactly():
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(3, 3, 4, 6))
    bias = rng.normal(size=6)
    x = rng.normal(size=(3, 9, 9, 4))
    patches = extract_patches(x, 3, padding="same")
    y = patches @ kernel.reshape(-1, 6) + bias
    got_kernel, got_bias = reconstruct_weights(patches, y, kernel_size=3)
    assert got_kernel.shape == (3, 3, 4, 6)
    np.testing.assert_allclose(got_kernel, kernel, atol=1e-9)
    np.testing.assert_allclose(got_bias, bias, atol=1e-9)


def test_reconstruction_dense_without_bias():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(7, 3))
    x = rng.normal(size=(40, 7))
    kernel, bias = reconstruct_weights(x, x @ w, use_bias=False)
    assert bias is None
    np.testing.assert_allclose(kernel, w, atol=1e-10)


def test_prune_then_reconstruct_compensates_for_removed_correlated_channel():
    # channel 2 is a copy of channel 0: dropping it loses nothing once the kept weights are refitted
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 8, 8, 3))
    x[..., 2] = 2.0 * x[..., 0]
    kernel = rng.normal(size=(3, 3, 3, 5))
    bias = rng.normal(size=5)
    cols = extract_patches(x, 3)
    y = cols @ kernel.reshape(-1, 5) + bias
    per_channel = cols.reshape(len(cols), 9, 3).transpose(0, 2, 1)
    kept = greedy_channels(per_channel, y, 2)
    assert 1 in kept and len({0, 2} & set(kept.tolist())) == 1
    new_kernel, new_bias = reconstruct_weights(extract_patches(x[..., kept], 3), y, kernel_size=3)
    pruned_out = extract_patches(x[..., kept], 3) @ new_kernel.reshape(-1, 5) + new_bias
    np.testing.assert_allclose(pruned_out, y, atol=1e-8)


def test_reconstruction_stays_at_the_original_weights_where_the_data_says_nothing():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 6))
    x[:, 5] = 0.0  # never active: the data cannot determine its weights
    w = rng.normal(size=(6, 2))
    b = np.array([0.5, -1.0])
    kernel, bias = reconstruct_weights(x, x @ w + b, initial=(w, b))
    np.testing.assert_allclose(kernel, w, atol=1e-10)  # determined rows exact, the dead row kept as trained
    np.testing.assert_allclose(bias, b, atol=1e-10)
    plain, _ = reconstruct_weights(x, x @ w + b)
    np.testing.assert_allclose(plain[5], 0.0, atol=1e-10)  # min-norm alone would zero it
    with pytest.raises(ValueError, match="initial kernel"):
        reconstruct_weights(x, x @ w, initial=(w[:3], None))
