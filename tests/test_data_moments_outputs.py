"""Moments whose target is the original layer's OUTPUTS (what the forward refit reads) give the same fits as
moments paired with its inputs, and the same output errors (``tfcompress.data_moments``, ``data_aware``)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress import data_aware as da
from tfcompress.data_moments import output_error

FAST = settings(max_examples=20, deadline=None, database=None)


def both_moments(x_hat, x, w, b):
    """Input-paired and output-target moments of the same samples (streamed in uneven batches)."""
    y = x @ w + (0 if b is None else b)
    paired = da.MomentAccumulator(x.shape[1], paired=True)
    outs = da.MomentAccumulator(x.shape[1], outputs=w.shape[1])
    for lo in range(0, len(x), 29):
        paired.add(x_hat[lo : lo + 29], x[lo : lo + 29])
        outs.add(x_hat[lo : lo + 29], outputs=y[lo : lo + 29])
    return paired.moments(), outs.moments(), y


def samples(seed, n, taps, d):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(taps * d, taps * d)) * np.geomspace(1.0, 0.05, taps * d)[:, None]
    x = rng.normal(size=(n, taps * d)) @ mix + rng.normal(size=taps * d)
    x_hat = x + 0.1 * rng.normal(size=x.shape)  # the compressed model's inputs: near, not equal
    return rng, x_hat, x


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(2, 5), st.booleans())
def test_output_targets_give_the_same_two_stage_fit_as_paired_inputs(seed, taps, d, with_bias):
    rng, x_hat, x = samples(seed, 300, taps, d)
    w = rng.normal(size=(taps * d, 4))
    b = rng.normal(size=4) if with_bias else None
    paired, outs, y = both_moments(x_hat, x, w, b)
    rank = int(rng.integers(1, min(d, taps * 4) + 1))
    a = da.fit_two_stage(w, b, paired, taps, rank)
    o = da.fit_two_stage(w, b, outs, taps, rank)
    assert o.error == pytest.approx(a.error, rel=1e-6, abs=1e-9)
    assert o.reference == pytest.approx(a.reference, rel=1e-9, abs=1e-12)
    assert o.data_free_error == pytest.approx(a.data_free_error, rel=1e-6, abs=1e-9)
    # the reported error is the empirical output error on the samples
    first, second = o.factors
    fitted = np.kron(np.eye(taps), first) @ second
    y_hat = x_hat @ fitted + (0 if o.bias is None else o.bias)
    assert float(np.mean(np.sum((y - y_hat) ** 2, axis=1))) == pytest.approx(o.error, rel=1e-6, abs=1e-9)


@FAST
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_output_targets_give_the_same_tucker_fit_and_output_error(seed, with_bias):
    rng, x_hat, x = samples(seed, 400, 4, 3)
    w = rng.normal(size=(12, 5))
    b = rng.normal(size=5) if with_bias else None
    paired, outs, _ = both_moments(x_hat, x, w, b)
    a = da.fit_tucker(w, b, paired, 4, (2, 3))
    o = da.fit_tucker(w, b, outs, 4, (2, 3))
    assert o.error == pytest.approx(a.error, rel=1e-6, abs=1e-9)
    p = rng.normal(size=w.shape)
    pb = rng.normal(size=5)
    assert output_error(outs, w, b, p, pb) == pytest.approx(output_error(paired, w, b, p, pb), rel=1e-9)


def test_output_targets_are_checked():
    acc = da.MomentAccumulator(3, outputs=2)
    with pytest.raises(ValueError, match="outputs"):
        acc.add(np.ones((4, 3)))
    with pytest.raises(ValueError, match="outputs"):
        acc.add(np.ones((4, 3)), outputs=np.ones((4, 3)))
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.ones((1, 3)), outputs=np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match="outputs"):
        da.MomentAccumulator(3, paired=True, outputs=2)
    acc.add(np.ones((4, 3)), outputs=np.ones((4, 2)))
    with pytest.raises(ValueError, match="2 outputs, the kernel 5"):
        da.FitProblem(np.ones((3, 5)), None, acc.moments(), 1)
    with pytest.raises(ValueError, match="output_targets"):
        acc.moments().augmented(True)
    assert acc.moments().permuted(np.array([2, 0, 1])).output_cross.shape == (3, 2)
