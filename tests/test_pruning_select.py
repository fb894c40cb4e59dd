"""Channel selection (numpy only): magnitude and greedy least-squares forward selection."""

import itertools

import numpy as np
import pytest

from tfcompress.pruning import greedy_channels, magnitude_channels, reconstruction_error


def test_magnitude_keeps_upper_half_of_arange_kernel():
    kernel = np.arange(5 * 5 * 32 * 64, dtype=np.float64).reshape(5, 5, 32, 64)
    kept = magnitude_channels(kernel, 16)
    np.testing.assert_array_equal(kept, np.arange(16, 32))
    assert kept.dtype == np.int64


def test_magnitude_dense_ties_go_to_lower_index_and_result_is_sorted():
    kernel = np.array([[1.0, 0.0], [0.0, 5.0], [0.0, 1.0], [3.0, 4.0]])  # norms 1, 5, 1, 5
    np.testing.assert_array_equal(magnitude_channels(kernel, 2), [1, 3])
    np.testing.assert_array_equal(magnitude_channels(kernel, 3), [0, 1, 3])


@pytest.mark.parametrize("keep", [0, 5, 2.0, True])
def test_magnitude_rejects_bad_keep(keep):
    with pytest.raises((ValueError, TypeError), match="keep"):
        magnitude_channels(np.ones((4, 3)), keep)


def test_magnitude_rejects_bad_kernel_rank():
    with pytest.raises(ValueError, match="kernel"):
        magnitude_channels(np.ones((3, 4, 3)), 1)


def test_greedy_finds_the_two_informative_channels():
    rng = np.random.default_rng(1)
    samples, channels, taps = 400, 12, 9
    x = np.zeros((samples, channels, taps))
    x[:, 3] = rng.normal(size=(samples, taps))
    x[:, 8] = rng.normal(size=(samples, taps))
    x[:, [0, 5, 10]] = 1e-6 * rng.normal(size=(samples, 3, taps))  # tiny noise channels
    w = rng.normal(size=(channels, taps, 6))
    y = np.einsum("sct,ctn->sn", x[:, [3, 8]], w[[3, 8]]) + 0.5
    np.testing.assert_array_equal(greedy_channels(x, y, 2), [3, 8])
    assert reconstruction_error(x, y, [3, 8]) < 1e-12


def test_greedy_beats_magnitude_on_correlated_inputs():
    # channels 0..3 are near-copies of one signal and carry the large weights; 4..7 are independent
    rng = np.random.default_rng(2)
    samples = 500
    base = rng.normal(size=(samples, 1))
    x = np.concatenate([base + 0.01 * rng.normal(size=(samples, 4)), rng.normal(size=(samples, 4))], axis=1)
    w = np.concatenate([3.0 + rng.uniform(size=(4, 5)), 0.5 + rng.uniform(size=(4, 5))])
    y = x @ w
    by_magnitude = magnitude_channels(w, 4)
    by_greedy = greedy_channels(x, y, 4)
    np.testing.assert_array_equal(by_magnitude, [0, 1, 2, 3])
    err_magnitude = reconstruction_error(x, y, by_magnitude)
    err_greedy = reconstruction_error(x, y, by_greedy)
    # greedy keeps one of the near-copies and three independent channels: only one small channel is lost
    assert len(set(by_greedy.tolist()) & {0, 1, 2, 3}) == 1
    assert err_greedy < 0.25 * err_magnitude


def test_greedy_error_matches_lstsq_and_decreases_with_keep():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6, 4))
    y = rng.normal(size=(300, 3)) + np.einsum("sct,ctn->sn", x, rng.normal(size=(6, 4, 3)))
    errors = [reconstruction_error(x, y, greedy_channels(x, y, k)) for k in range(1, 7)]
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-6 * errors[0] + 300 * 3  # all channels: only the unexplained noise remains
    # a single step must pick the best single channel, as exhaustive lstsq says
    single = [reconstruction_error(x, y, [c]) for c in range(6)]
    np.testing.assert_array_equal(greedy_channels(x, y, 1), [int(np.argmin(single))])


def test_greedy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="samples"):
        greedy_channels(np.ones((10, 3)), np.ones((9, 2)), 1)
