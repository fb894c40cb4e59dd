"""Greedy ratio selection and the monotonic (isotonic) fit: pure tables, no TensorFlow."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfcompress.select import Selection, greedy_select, monotonic_fit

RATIOS = (0.25, 0.5, 0.75)


def _linear_costs(originals: dict[str, float], ratios=RATIOS) -> dict[str, dict[float, float]]:
    return {name: {r: r * cost for r in ratios} for name, cost in originals.items()}


# A 3-layer table whose plans are worked out by hand (layer c is twice as big; 100 of the 500 total is outside).
ORIGINALS = {"a": 100.0, "b": 100.0, "c": 200.0}
TOTAL = 500.0
SCORES = {
    "a": {0.25: 0.80, 0.5: 0.90, 0.75: 0.95},
    "b": {0.25: 0.50, 0.5: 0.70, 0.75: 0.93},
    "c": {0.25: 0.85, 0.5: 0.92, 0.75: 0.96},
}
COSTS = _linear_costs(ORIGINALS)


def _select(target: float, **kwargs) -> Selection:
    return greedy_select(SCORES, COSTS, ORIGINALS, TOTAL, target, **kwargs)


# threshold -> (plan, model ratio), by hand: model ratio = (500 - 400 + compressed costs + uncompressed ones) / 500
@pytest.mark.parametrize(
    ("target", "tolerance", "threshold", "ratios", "model_ratio"),
    [
        (0.7, 1e-3, 0.92, {"a": 0.75, "b": 0.75, "c": 0.5}, (100 + 75 + 75 + 100) / 500),
        (0.72, 1e-3, 0.92, {"a": 0.75, "b": 0.75, "c": 0.5}, 0.7),
        (0.8, 1e-3, 0.93, {"a": 0.75, "b": 0.75, "c": 0.75}, 0.8),
        (0.85, 1e-3, 0.95, {"a": 0.75, "b": 1.0, "c": 0.75}, (100 + 75 + 100 + 150) / 500),
        (0.9, 1e-3, 0.96, {"a": 1.0, "b": 1.0, "c": 0.75}, 0.9),
        (0.5, 1e-3, 0.8, {"a": 0.25, "b": 0.75, "c": 0.25}, 0.5),
        (0.6, 1e-3, 0.85, {"a": 0.5, "b": 0.75, "c": 0.25}, 0.55),  # next plan: 0.65
        (0.44, 0.02, 0.7, {"a": 0.25, "b": 0.5, "c": 0.25}, 0.45),  # above the target, within tolerance
        (0.44, 1e-3, 0.5, {"a": 0.25, "b": 0.25, "c": 0.25}, 0.4),  # without it, the next plan down
    ],
)
def test_hand_computed_plans(target, tolerance, threshold, ratios, model_ratio):
    sel = _select(target, tolerance=tolerance)
    assert sel.ratios == ratios
    assert sel.threshold == threshold
    assert sel.model_ratio == pytest.approx(model_ratio)
    assert sel.reached
    assert "reached" in sel.message


def test_equal_cost_candidates_resolve_to_the_better_score():
    # Rank rounding made 0.1 and 0.2 cost the same: thresholds 0.5 and 0.8 give the same model ratio, and the
    # higher threshold (the better-scoring candidate 0.2) is chosen, whether the target is reachable or not.
    scores = {"a": {0.1: 0.5, 0.2: 0.8, 0.5: 0.95}}
    costs = {"a": {0.1: 20.0, 0.2: 20.0, 0.5: 50.0}}
    sel = greedy_select(scores, costs, {"a": 100.0}, 100.0, target_ratio=0.2)
    assert sel.ratios == {"a": 0.2} and sel.threshold == 0.8 and sel.model_ratio == pytest.approx(0.2)
    with pytest.warns(UserWarning, match=r"0\.2\b"):
        low = greedy_select(scores, costs, {"a": 100.0}, 100.0, target_ratio=0.1)
    assert low.ratios == {"a": 0.2} and low.threshold == 0.8 and not low.reached


def test_step_overshoot_is_explained():
    sel = _select(0.6)  # plans jump from 0.55 to 0.65
    assert sel.model_ratio == pytest.approx(0.55)
    assert "step function" in sel.message and "0.65" in sel.message
    assert "step function" not in _select(0.5).message  # 0.5 is hit exactly


def test_target_one_compresses_nothing():
    sel = _select(1.0)
    assert sel.ratios == {"a": 1.0, "b": 1.0, "c": 1.0}
    assert sel.model_ratio == 1.0 and sel.threshold is None and sel.reached


def test_unreachable_target_warns_and_returns_most_compressed_plan():
    with pytest.warns(UserWarning, match=r"best reachable model ratio is 0\.4\b"):
        sel = _select(0.3)
    assert not sel.reached
    assert sel.ratios == {"a": 0.25, "b": 0.25, "c": 0.25}
    assert sel.model_ratio == pytest.approx(0.4)
    assert sel.threshold == 0.5
    assert "0.4" in sel.message and "not reachable" in sel.message
    assert "20.0%" in sel.message  # the 100 of 500 outside the table


def test_candidates_that_save_nothing_are_never_chosen():
    originals = {"a": 100.0, "b": 100.0}
    costs = {"a": {0.25: 25.0, 0.5: 100.0}, "b": {0.25: 25.0, 0.5: 50.0}}
    scores = {"a": {0.25: 0.5, 0.5: 0.99}, "b": {0.25: 0.6, 0.5: 0.9}}
    # Threshold 0.9: a's only qualifying candidate (0.5) costs as much as the original -> a stays at 1.0.
    sel = greedy_select(scores, costs, originals, 200.0, target_ratio=0.75)
    assert sel.ratios == {"a": 1.0, "b": 0.5}
    assert sel.threshold == 0.9
    assert sel.model_ratio == pytest.approx(0.75)
    # With everything at its smallest *useful* candidate the ratio is 0.25; a at 0.5 is never used.
    with pytest.warns(UserWarning):
        low = greedy_select(scores, costs, originals, 200.0, target_ratio=0.1)
    assert low.ratios == {"a": 0.25, "b": 0.25}


def test_layer_without_useful_candidate_is_named_when_unreachable():
    costs = {"a": {0.5: 120.0}, "b": {0.5: 50.0}}
    with pytest.warns(UserWarning, match="'a'"):
        sel = greedy_select({"a": {0.5: 0.9}, "b": {0.5: 0.9}}, costs, {"a": 100.0, "b": 100.0}, 200.0, 0.5)
    assert sel.ratios == {"a": 1.0, "b": 0.5} and sel.model_ratio == pytest.approx(0.75)


# Layer x is noisy: at 0.25 it scores better than at 0.5. Worked out by hand in both modes.
NOISY_SCORES = {"x": {0.25: 0.9, 0.5: 0.6, 0.75: 0.95}, "y": {0.25: 0.7, 0.5: 0.85, 0.75: 0.97}}
NOISY_ORIGINALS = {"x": 100.0, "y": 100.0}


def test_monotonic_fit_changes_the_choice_on_a_noisy_table():
    costs = _linear_costs(NOISY_ORIGINALS)
    raw = greedy_select(NOISY_SCORES, costs, NOISY_ORIGINALS, 200.0, target_ratio=0.5)
    # Raw: threshold 0.9 keeps x at 0.25 thanks to its lucky score, and lets y stay at 0.75.
    assert raw.ratios == {"x": 0.25, "y": 0.75} and raw.threshold == 0.9
    assert raw.model_ratio == pytest.approx(0.5)
    fitted = greedy_select(NOISY_SCORES, costs, NOISY_ORIGINALS, 200.0, target_ratio=0.5, use_monotonic_fit=True)
    # Fitted: x's 0.25 and 0.5 pool to 0.75, so threshold 0.85 would need x at 0.75 (ratio 0.625 > 0.5).
    assert fitted.ratios == {"x": 0.25, "y": 0.5} and fitted.threshold == pytest.approx(0.75)
    assert fitted.model_ratio == pytest.approx(0.375)


def test_tolerance_respected_with_fine_grained_candidates():
    rng = np.random.default_rng(0)
    ratios = [round(0.01 * k, 2) for k in range(1, 100)]
    originals = {f"layer{i:02d}": 5.0 for i in range(20)}  # 100 of 110 in the table
    scores = {}
    for name in originals:
        curve = np.sort(rng.uniform(0.0, 1.0, len(ratios)))
        scores[name] = dict(zip(ratios, curve.tolist(), strict=True))
    costs = _linear_costs(originals, ratios)
    for target in (0.2, 0.35, 0.5, 0.77, 0.95):
        sel = greedy_select(scores, costs, originals, 110.0, target, tolerance=1e-3)
        assert sel.reached
        assert abs(sel.model_ratio - target) <= 1e-3 + 1e-12, (target, sel.model_ratio)
        assert _recomputed_ratio(sel, costs, originals, 110.0) == pytest.approx(sel.model_ratio)


def test_max_iterations_cap_returns_a_feasible_plan_and_says_so():
    ratios = [round(0.01 * k, 2) for k in range(1, 100)]
    originals = {f"l{i}": 10.0 for i in range(10)}
    rng = np.random.default_rng(1)
    scores = {name: dict(zip(ratios, np.sort(rng.uniform(size=99)).tolist(), strict=True)) for name in originals}
    costs = _linear_costs(originals, ratios)
    capped = greedy_select(scores, costs, originals, 100.0, 0.5, max_iterations=1)
    full = greedy_select(scores, costs, originals, 100.0, 0.5)
    assert capped.reached and capped.model_ratio <= 0.5 + 1e-3
    assert "max_iterations=1" in capped.message
    assert "max_iterations" not in full.message
    assert full.threshold > capped.threshold
    assert abs(full.model_ratio - 0.5) <= 1e-3 + 1e-12


def test_score_ratios_are_matched_to_cost_ratios_and_cost_keys_returned():
    cost_ratio = 0.1 * 3  # 0.30000000000000004, as np.linspace / arithmetic would give
    sel = greedy_select({"a": {0.3: 0.9}}, {"a": {cost_ratio: 30.0}}, {"a": 100.0}, 100.0, 0.5)
    assert sel.ratios["a"] == cost_ratio and sel.model_ratio == pytest.approx(0.3)


def test_non_monotone_costs_use_exhaustive_search():
    # Cost of a drops from ratio 0.5 to 0.75 (odd rank rounding): the model ratio is not monotone in the threshold.
    scores = {"a": {0.25: 0.5, 0.5: 0.8, 0.75: 0.9}, "b": {0.5: 0.85}}
    costs = {"a": {0.25: 40.0, 0.5: 90.0, 0.75: 60.0}, "b": {0.5: 50.0}}
    originals = {"a": 100.0, "b": 100.0}
    sel = greedy_select(scores, costs, originals, 200.0, 0.56)
    # t=0.5: 40+50 -> 0.45 ; t=0.8: 90+50 -> 0.70 ; t=0.85: 60+50 -> 0.55 ; t=0.9: 60+100 -> 0.80
    assert sel.threshold == 0.85 and sel.ratios == {"a": 0.75, "b": 0.5}
    assert sel.model_ratio == pytest.approx(0.55)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_ratio": 0.0}, "target_ratio"),
        ({"target_ratio": 1.5}, "target_ratio"),
        ({"target_ratio": math.nan}, "target_ratio"),
        ({"tolerance": -1.0}, "tolerance"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"scores": {}}, "scores"),
        ({"scores": {"a": {}}}, "scores\\['a'\\]"),
        ({"scores": {"a": {0.5: math.nan}}}, "scores\\['a'\\]"),
        ({"scores": {"a": {1.0: 0.9}}}, "'a'.*\\(0, 1\\)"),
        ({"scores": {"zz": {0.5: 0.9}}}, "'zz'.*layer_costs"),
        ({"scores": {"a": {0.3: 0.9}}}, "layer_costs\\['a'\\].*0.3"),
        ({"original_layer_costs": {}}, "'a'.*original_layer_costs"),
        ({"layer_costs": {"a": {0.5: math.inf}}}, "layer_costs\\['a'\\]"),
        ({"total_cost": 50.0}, "total_cost"),
        ({"total_cost": 0.0}, "total_cost"),
    ],
)
def test_bad_input_raises_value_error_naming_it(kwargs, match):
    args = {
        "scores": {"a": {0.5: 0.9}},
        "layer_costs": {"a": {0.5: 50.0}},
        "original_layer_costs": {"a": 100.0},
        "total_cost": 100.0,
        "target_ratio": 0.6,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        greedy_select(**args)


# ---------------------------------------------------------------- property tests


def _recomputed_ratio(sel: Selection, costs, originals, total) -> float:
    used = total
    for name, ratio in sel.ratios.items():
        if ratio != 1.0:
            used += costs[name][ratio] - originals[name]
    return used / total


def _oracle(scores, costs, originals, total, target, tolerance):
    """Brute force: every threshold; highest feasible one, else the lowest ratio."""
    thresholds = sorted({s for name in scores for r, s in scores[name].items() if costs[name][r] < originals[name]})
    plans = []
    for t in [*thresholds, math.inf]:
        ratios, used = {}, total
        for name in scores:
            ok = [r for r in sorted(scores[name]) if scores[name][r] >= t and costs[name][r] < originals[name]]
            ratios[name] = ok[0] if ok else 1.0
            if ok:
                used += costs[name][ok[0]] - originals[name]
        plans.append((t, ratios, used / total))
    feasible = [plan for plan in plans if plan[2] <= target + tolerance]
    if feasible:
        return feasible[-1], True
    return min(reversed(plans), key=lambda plan: plan[2]), False


@st.composite
def tables(draw, monotone_costs=True):
    names = draw(st.lists(st.sampled_from("abcde"), min_size=1, max_size=4, unique=True))
    scores, costs, originals = {}, {}, {}
    for name in names:
        ratios = sorted(draw(st.sets(st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.7, 0.9]), min_size=1, max_size=4)))
        original = draw(st.integers(1, 100)) * 1.0
        # scores from a small set so that ties across layers happen
        scores[name] = {r: draw(st.sampled_from([0.1, 0.3, 0.5, 0.6, 0.8, 0.9, 1.0])) for r in ratios}
        values = [draw(st.integers(0, int(original * 1.2))) * 1.0 for _ in ratios]
        if monotone_costs:
            values.sort()
        costs[name] = dict(zip(ratios, values, strict=True))
        originals[name] = original
    total = sum(originals.values()) + draw(st.integers(0, 200))
    return scores, costs, originals, float(total)


targets = st.floats(0.01, 1.0)
tolerances = st.sampled_from([0.0, 1e-3, 0.05])


def _quiet_select(*args, **kwargs) -> Selection:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return greedy_select(*args, **kwargs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=tables(), target=targets, tolerance=tolerances)
def test_selection_matches_brute_force(table, target, tolerance):
    scores, costs, originals, total = table
    sel = _quiet_select(scores, costs, originals, total, target, tolerance=tolerance)
    assert sel.model_ratio == pytest.approx(_recomputed_ratio(sel, costs, originals, total), abs=1e-12)
    assert sel.reached == (sel.model_ratio <= target + tolerance)
    (threshold, ratios, ratio), reachable = _oracle(scores, costs, originals, total, target, tolerance)
    assert sel.reached == reachable
    assert sel.ratios == ratios
    assert (math.inf if sel.threshold is None else sel.threshold) == threshold
    assert sel.model_ratio == pytest.approx(ratio, abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(table=tables(monotone_costs=False), target=targets)
def test_selection_matches_brute_force_with_any_costs(table, target):
    scores, costs, originals, total = table
    sel = _quiet_select(scores, costs, originals, total, target)
    (threshold, ratios, _), reachable = _oracle(scores, costs, originals, total, target, 1e-3)
    assert sel.reached == reachable
    assert sel.ratios == ratios
    assert (math.inf if sel.threshold is None else sel.threshold) == threshold


@settings(max_examples=100, deadline=None)
@given(table=tables(), targets=st.lists(targets, min_size=2, max_size=2), fit=st.booleans())
def test_raising_the_target_never_lowers_the_threshold(table, targets, fit):
    scores, costs, originals, total = table
    low, high = sorted(targets)
    first = _quiet_select(scores, costs, originals, total, low, use_monotonic_fit=fit)
    second = _quiet_select(scores, costs, originals, total, high, use_monotonic_fit=fit)

    def level(sel):
        return math.inf if sel.threshold is None else sel.threshold

    assert level(first) <= level(second)
    assert first.model_ratio <= second.model_ratio + 1e-12


# ---------------------------------------------------------------- monotonic fit


def test_monotonic_fit_by_hand():
    assert monotonic_fit({0.1: 3.0, 0.2: 1.0, 0.3: 2.0, 0.4: 5.0}) == {0.1: 2.0, 0.2: 2.0, 0.3: 2.0, 0.4: 5.0}
    assert list(monotonic_fit({0.5: 1.0, 0.1: 2.0})) == [0.1, 0.5]  # ordered by ratio
    assert monotonic_fit({0.5: 1.0, 0.1: 2.0}) == {0.1: 1.5, 0.5: 1.5}
    assert monotonic_fit({}) == {}


def test_monotonic_fit_rejects_nan():
    with pytest.raises(ValueError, match="score"):
        monotonic_fit({0.1: math.nan})


curves = st.dictionaries(
    st.floats(0.001, 0.999), st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False), min_size=1, max_size=12
)


def _in_order(fitted: dict[float, float]) -> list[float]:
    return [fitted[r] for r in sorted(fitted)]


@given(curve=curves)
def test_monotonic_fit_is_non_decreasing_and_idempotent(curve):
    fitted = monotonic_fit(curve)
    assert set(fitted) == set(curve)
    values = _in_order(fitted)
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert monotonic_fit(fitted) == fitted


@given(curve=curves)
def test_monotonic_fit_is_identity_on_monotone_input(curve):
    ordered = dict(zip(sorted(curve), sorted(curve.values()), strict=True))
    assert monotonic_fit(ordered) == ordered


@given(curve=curves)
def test_monotonic_fit_preserves_the_mean_of_each_pooled_block(curve):
    fitted = monotonic_fit(curve)
    ratios = sorted(curve)
    start = 0
    while start < len(ratios):
        end = start
        while end + 1 < len(ratios) and fitted[ratios[end + 1]] == fitted[ratios[start]]:
            end += 1
        block = [curve[r] for r in ratios[start : end + 1]]
        assert fitted[ratios[start]] == pytest.approx(sum(block) / len(block), rel=1e-9, abs=1e-9)
        start = end + 1


@settings(max_examples=50, deadline=None)
@given(curve=curves)
def test_monotonic_fit_is_l2_optimal(curve):
    isotonic = pytest.importorskip("sklearn.isotonic")
    ratios = sorted(curve)
    # positions rather than ratios as x: sklearn pools x values that are nearly equal
    expected = isotonic.IsotonicRegression().fit_transform(np.arange(len(ratios)), [curve[r] for r in ratios])
    np.testing.assert_allclose(_in_order(monotonic_fit(curve)), expected, rtol=1e-9, atol=1e-7)


# ---------------------------------------------------------------- no TensorFlow


def test_selector_modules_import_without_keras_or_tensorflow():
    """The selector files load and run with keras/tensorflow made unimportable."""
    package = Path(__file__).resolve().parents[1] / "tfcompress" / "select"
    script = textwrap.dedent(
        f"""
        import importlib, sys, types
        for blocked in ("keras", "tensorflow"):
            sys.modules[blocked] = None  # any import of them now fails
        # the folder as a stand-alone package, so tfcompress/__init__ (which imports Keras) never runs
        sys.modules["sel"] = package = types.ModuleType("sel")
        package.__path__ = [{str(package)!r}]
        modules = {{name: importlib.import_module("sel." + name) for name in ("greedy", "knapsack", "tar", "cache")}}
        sel = modules["greedy"].greedy_select({{"a": {{0.5: 1.0}}}}, {{"a": {{0.5: 5.0}}}}, {{"a": 10.0}}, 10.0, 0.5)
        assert sel.ratios == {{"a": 0.5}}, sel
        sel = modules["knapsack"].min_loss_select({{"a": {{0.5: 1.0}}}}, {{"a": {{0.5: 5.0}}}}, {{"a": 10.0}}, 10.0, 0.5, 1.0)
        assert sel.ratios == {{"a": 0.5}}, sel
        assert not any(m.split(".")[0] in ("keras", "tensorflow") for m in sys.modules if sys.modules[m])
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
