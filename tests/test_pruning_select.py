"""Channel selection (numpy only): magnitude and greedy least-squares forward selection."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _brute_force_greedy(x, y, keep, fixed=()):
    """Forward selection by refitting lstsq on samples for every candidate (the definition)."""
    chosen = list(fixed)
    order = []
    for _ in range(keep):
        rest = [c for c in range(x.shape[1]) if c not in chosen]
        errors = [reconstruction_error(x, y, [*chosen, c]) for c in rest]
        best = rest[int(np.argmin(errors))]
        chosen.append(best)
        order.append(best)
    return order


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channel_order_matches_brute_force_forward_selection(seed):
    from tfcompress.pruning import ChannelProblem, channel_order

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(120, 7, 3)) * rng.uniform(0.2, 2.0, size=(1, 7, 1))
    x[:, 5] = x[:, 1] + 0.05 * rng.normal(size=(120, 3))  # a near-duplicate channel
    y = np.einsum("sct,ctn->sn", x, rng.normal(size=(7, 3, 4))) + rng.normal(size=(120, 4))
    problem = ChannelProblem.from_samples(x, y)
    assert channel_order([problem], 6).tolist() == _brute_force_greedy(x, y, 6)


def test_channel_order_with_fixed_channels_and_two_problems():
    from tfcompress.pruning import ChannelProblem, channel_order

    rng = np.random.default_rng(4)
    shared = rng.normal(size=(200, 5, 2))
    # problem A reads the 5 group channels plus 2 channels of its own (kept, e.g. another concat input)
    own = rng.normal(size=(200, 2, 2))
    xa = np.concatenate([own, shared], axis=1)
    ya = np.einsum("sct,ctn->sn", xa, rng.normal(size=(7, 2, 3)))
    # problem B reads the group channels only, and depends on channel 4 alone
    yb = 5.0 * shared[:, 4, :1]
    pa = ChannelProblem.from_samples(xa, ya, channels=np.arange(2, 7), fixed=np.array([0, 1]))
    pb = ChannelProblem.from_samples(shared, yb)
    order = channel_order([pa, pb], 5)
    assert sorted(order.tolist()) == [0, 1, 2, 3, 4]

    # the first pick maximises the summed gain: check against brute force on the summed error
    def total_error(kept):
        return reconstruction_error(xa, ya, [0, 1, *[c + 2 for c in kept]]) + reconstruction_error(shared, yb, kept)

    singles = [total_error([c]) for c in range(5)]
    assert order[0] == int(np.argmin(singles))
    with pytest.raises(ValueError, match="same number"):
        channel_order([pa, ChannelProblem.from_samples(shared[:, :4], yb)], 2)


def test_channel_order_ignores_dead_channels():
    from tfcompress.pruning import ChannelProblem, channel_order

    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 4, 9))
    x[:, 2] = 0.0  # a dead (always zero) channel
    y = np.einsum("sct,ctn->sn", x, rng.normal(size=(4, 9, 3)))
    assert 2 not in channel_order([ChannelProblem.from_samples(x, y)], 3).tolist()


def test_channel_order_in_batches_for_large_keeps():
    from tfcompress.pruning import ChannelProblem, channel_order

    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 40, 1))
    y = x[:, :10, 0] @ rng.normal(size=(10, 3)) * 5 + 0.1 * x[:, 10:, 0] @ rng.normal(size=(30, 3))
    problem = ChannelProblem.from_samples(x, y)
    exact = channel_order([problem], 20)
    batched = channel_order([problem], 20, max_steps=5)  # 4 channels per step
    assert sorted(batched[:10].tolist()) == sorted(exact[:10].tolist()) == list(range(10))
    assert len(set(batched.tolist())) == 20
    with pytest.raises(ValueError, match="max_steps"):
        channel_order([problem], 3, max_steps=0)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    samples=st.integers(3, 30),
    channels=st.integers(2, 9),
    k=st.sampled_from([1, 2, 4]),
    intercept=st.booleans(),
    with_fixed=st.booleans(),
)
def test_sample_space_selection_picks_the_gram_space_order(seed, samples, channels, k, intercept, with_fixed):
    """Fewer samples than columns: the problem is kept as samples (no (C*k)^2 Gram matrix), and the order is the
    one the Gram-space selection gives on the same data (issue 19: a 3x3 conv reading 512 channels has a 170 MB
    Gram matrix)."""
    from tfcompress.pruning import ChannelProblem, channel_order

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, channels, k)) * rng.uniform(0.1, 3.0, size=(1, channels, 1))
    if channels > 2:
        x[:, 1] = 0.0  # a dead channel
    y = np.einsum("sct,ctn->sn", x, rng.normal(size=(channels, k, 3))) + 0.1 * rng.normal(size=(samples, 3))
    fixed = np.array([0]) if with_fixed else None
    selectable = np.arange(1 if with_fixed else 0, channels)
    problem = ChannelProblem.from_samples(x, y, fit_intercept=intercept, channels=selectable, fixed=fixed)
    design = x.reshape(samples, -1)
    target = y
    if intercept:
        design, target = design - design.mean(axis=0), target - target.mean(axis=0)
    gram = ChannelProblem(design.T @ design, design.T @ target, k, selectable, fixed)
    keep = max(1, len(selectable) - 1)
    if samples < channels * k:
        assert problem.gram is None and problem.design is not None
    else:
        assert problem.design is None
    sample_order = channel_order([problem], keep)
    gram_order = channel_order([gram], keep)
    # same picks; equal gains (ties within rounding, e.g. channels with nothing left to explain) may swap order
    assert sorted(sample_order.tolist()) == sorted(gram_order.tolist()) or _errors_equal(
        x, y, intercept, fixed, selectable, sample_order, gram_order
    )


def _errors_equal(x, y, intercept, fixed, selectable, a, b):
    base = [] if fixed is None else fixed.tolist()
    for n in range(1, len(a) + 1):
        ea = reconstruction_error(x, y, base + selectable[a[:n]].tolist(), fit_intercept=intercept)
        eb = reconstruction_error(x, y, base + selectable[b[:n]].tolist(), fit_intercept=intercept)
        if not np.isclose(ea, eb, rtol=1e-6, atol=1e-8 * (1 + float(np.sum(y * y)))):
            return False
    return True
