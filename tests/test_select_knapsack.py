"""The least-summed-loss selector (a multiple-choice knapsack): pure tables, no TensorFlow."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tfcompress.select import greedy_select, min_loss_select


def _brute_force(scores, costs, originals, total, target, reference):
    """The least summed loss over every plan within the budget (candidates or uncompressed per layer)."""
    names = list(scores)
    outside = total - sum(originals.values())
    options = [
        [(1.0, originals[n], 0.0)] + [(r, costs[n][r], max(reference - s, 0.0)) for r, s in scores[n].items()]
        for n in names
    ]
    best = None
    for combo in itertools.product(*options):
        cost = outside + sum(c for _, c, _ in combo)
        if cost <= target * total * (1 + 1e-12):
            loss = sum(loss for _, _, loss in combo)
            if best is None or loss < best - 1e-12:
                best = loss
    return best


def _loss(selection, scores, reference):
    return sum(max(reference - scores[n][r], 0.0) for n, r in selection.ratios.items() if r < 1.0)


def test_prefers_spreading_small_losses_over_one_common_threshold():
    # Three equal layers. The threshold search keeps each layer at >= 0.90 (so every layer at 0.5, summed loss
    # 0.15); spending the same budget as one layer at 0.25 (its loss only a bit larger) and one uncompressed
    # loses less in sum.
    scores = {
        "a": {0.25: 0.89, 0.5: 0.90},
        "b": {0.25: 0.89, 0.5: 0.90},
        "c": {0.25: 0.70, 0.5: 0.90},
    }
    costs = {n: {0.25: 25.0, 0.5: 50.0} for n in scores}
    originals = {n: 100.0 for n in scores}
    threshold = greedy_select(scores, costs, originals, 300.0, 0.5)
    assert threshold.ratios == {"a": 0.5, "b": 0.5, "c": 0.5}
    knapsack = min_loss_select(scores, costs, originals, 300.0, 0.5, reference_score=0.95)
    assert knapsack.reached and knapsack.model_ratio <= 0.5
    assert knapsack.ratios == {"a": 0.25, "b": 0.25, "c": 1.0}
    assert _loss(knapsack, scores, 0.95) == pytest.approx(0.12)
    assert _loss(threshold, scores, 0.95) == pytest.approx(0.15)


def test_plans_that_fill_the_budget_exactly_are_allowed():
    scores = {"a": {0.25: 0.80, 0.5: 0.85}, "b": {0.25: 0.86, 0.5: 0.88}}
    costs = {"a": {0.25: 25.0, 0.5: 50.0}, "b": {0.25: 25.0, 0.5: 50.0}}
    sel = min_loss_select(scores, costs, {"a": 100.0, "b": 100.0}, 200.0, 0.375, reference_score=0.9)
    assert sel.ratios == {"a": 0.5, "b": 0.25} and sel.model_ratio == 0.375


def test_equal_losses_spend_more_of_the_budget_and_scores_above_the_reference_lose_nothing():
    scores = {"a": {0.25: 0.95, 0.5: 0.95}}  # both above the reference: no loss either way
    costs = {"a": {0.25: 25.0, 0.5: 50.0}}
    sel = min_loss_select(scores, costs, {"a": 100.0}, 100.0, 0.6, reference_score=0.9)
    assert sel.ratios == {"a": 0.5}  # compresses no more than the target needs


def test_layers_outside_the_table_count_and_unreachable_targets_say_so():
    scores = {"a": {0.5: 0.9}}
    costs = {"a": {0.5: 50.0}}
    # 100 of the 200 are outside the table: at best (100 + 50) / 200 = 0.75
    sel = min_loss_select(scores, costs, {"a": 100.0}, 200.0, 0.5, reference_score=1.0)
    assert not sel.reached and sel.ratios == {"a": 0.5} and sel.model_ratio == 0.75
    assert "not reachable" in sel.message
    sel = min_loss_select(scores, costs, {"a": 100.0}, 200.0, 0.75, reference_score=1.0)
    assert sel.reached and sel.model_ratio == 0.75


def test_monotonic_fit_is_applied_before_the_choice():
    # raw: 0.5 looks better than 0.75 (noise); fitted, they pool and the cheaper one still wins on cost ties
    scores = {"a": {0.25: 0.5, 0.5: 0.9, 0.75: 0.8}}
    costs = {"a": {0.25: 25.0, 0.5: 50.0, 0.75: 75.0}}
    raw = min_loss_select(scores, costs, {"a": 100.0}, 100.0, 0.8, reference_score=1.0)
    assert raw.ratios == {"a": 0.5}
    fitted = min_loss_select(scores, costs, {"a": 100.0}, 100.0, 0.8, reference_score=1.0, use_monotonic_fit=True)
    assert fitted.ratios == {"a": 0.75}  # equal fitted loss (0.15): the plan that spends more wins


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"target_ratio": 0.0}, "target_ratio"),
        ({"target_ratio": 1.5}, "target_ratio"),
        ({"reference_score": float("nan")}, "reference_score"),
        ({"resolution": 3}, "resolution"),
        ({"resolution": True}, "resolution"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    args = {"target_ratio": 0.5, "reference_score": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        min_loss_select({"a": {0.5: 0.9}}, {"a": {0.5: 50.0}}, {"a": 100.0}, 100.0, **args)


def test_bad_tables_are_named():
    with pytest.raises(ValueError, match="'b'"):
        min_loss_select({"b": {0.5: 0.9}}, {"a": {0.5: 50.0}}, {"b": 100.0}, 100.0, 0.5, 1.0)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    n_layers=st.integers(1, 4),
    target=st.floats(0.2, 1.0),
)
def test_matches_brute_force_on_random_tables(data, n_layers, target):
    ratios = (0.2, 0.4, 0.6, 0.8)
    names = [f"l{i}" for i in range(n_layers)]
    originals = {n: float(data.draw(st.integers(10, 1000))) for n in names}
    outside = float(data.draw(st.integers(0, 500)))
    total = sum(originals.values()) + outside
    scores = {n: {r: data.draw(st.floats(0.0, 1.0)) for r in ratios} for n in names}
    costs = {n: {r: r * originals[n] for r in ratios} for n in names}
    reference = 0.9
    sel = min_loss_select(scores, costs, originals, total, target, reference_score=reference, resolution=20000)
    expected = _brute_force(scores, costs, originals, total, target, reference)
    if expected is None:
        assert not sel.reached
        return
    assert sel.reached
    assert sel.model_ratio <= target * (1 + 1e-9)
    assert _loss(sel, scores, reference) <= expected + 1e-9  # the least summed loss of all plans
