"""Tests of the accuracy-target search (``tfcompress.select.target``) on hand-written tables, without TensorFlow
models: the plans come from the real greedy selector, the "whole-model" score from a known function of the plan."""

from __future__ import annotations

import warnings

import pytest

from tfcompress.select import greedy_select
from tfcompress.select.target import search_score_drop

# four layers of cost 100 each in a model of cost 500; per-layer scores at candidate ratios (baseline 0.9)
SCORES = {
    "a": {0.25: 0.89, 0.5: 0.895, 0.75: 0.899},  # insensitive
    "b": {0.25: 0.80, 0.5: 0.88, 0.75: 0.897},
    "c": {0.25: 0.60, 0.5: 0.80, 0.75: 0.89},  # sensitive
    "d": {0.25: 0.70, 0.5: 0.85, 0.75: 0.895},
}
COSTS = {name: {r: 100.0 * r for r in row} for name, row in SCORES.items()}
ORIGINALS = dict.fromkeys(SCORES, 100.0)
BASELINE = 0.9


def plan_at(goal):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selection = greedy_select(SCORES, COSTS, ORIGINALS, 500.0, goal)
    return {p: r for p, r in selection.ratios.items() if r < 1.0}, selection.model_ratio


def whole_model(plan):
    """Losses add up on the whole model (the table's per-layer losses, summed)."""
    return BASELINE - sum(BASELINE - SCORES[p][r] for p, r in plan.items())


def every_plan():
    """Every distinct plan the selector can give, by brute force over fine goals."""
    plans = {}
    for i in range(1, 1001):
        plan, ratio = plan_at(i / 1000)
        plans[tuple(sorted(plan.items()))] = (plan, ratio)
    return list(plans.values())


@pytest.mark.parametrize("drop", [0.0, 0.005, 0.02, 0.06, 0.15, 1.0])
def test_finds_the_cheapest_selector_plan_within_the_drop(drop):
    calls = []
    found = search_score_drop(plan_at, lambda p: calls.append(p) or whole_model(p), BASELINE, drop)
    ok = [ratio for plan, ratio in every_plan() if whole_model(plan) >= BASELINE - drop - 1e-12]
    assert found.score >= BASELINE - drop - 1e-12
    assert found.model_ratio == pytest.approx(min(ok))  # the cheapest verified plan (scores fall with the ratio)
    assert found.evaluations == len(calls) == len(found.tried) <= 12
    assert len({tuple(sorted(p.items())) for p in calls}) == len(calls)  # each distinct plan is scored once
    assert found.found == bool(found.plan)


def test_everything_within_the_drop_costs_one_evaluation():
    found = search_score_drop(plan_at, whole_model, BASELINE, 1.0)
    assert found.evaluations == 1 and found.model_ratio == pytest.approx(0.4)  # all four layers at 0.25


def test_nothing_within_the_drop_returns_the_uncompressed_plan():
    found = search_score_drop(plan_at, lambda p: -1.0 if p else BASELINE, BASELINE, 0.01)
    assert not found.found and found.plan == {} and found.model_ratio == 1.0 and found.score == BASELINE
    assert found.evaluations >= 1


def test_evaluation_cap_is_kept_and_a_verified_plan_returned():
    found = search_score_drop(plan_at, whole_model, BASELINE, 0.02, max_evaluations=2)
    assert found.evaluations == 2
    assert found.score >= BASELINE - 0.02 or not found.found


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_drop_is_refused(bad):
    with pytest.raises(ValueError, match="max_score_drop"):
        search_score_drop(plan_at, whole_model, BASELINE, bad)
