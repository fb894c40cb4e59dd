"""TAR rank-index selection: candidate ranks from residual curves and the selection objective."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tfcompress.select import TarSelection, tar_candidate_ranks, tar_indices_to_evaluate, tar_select


def _residuals(singular_values) -> list[float]:
    """r -> ||W - W_r|| / ||W||, computed directly from the singular values."""
    s2 = np.asarray(singular_values, dtype=float) ** 2
    return [math.sqrt(s2[r:].sum() / s2.sum()) for r in range(len(s2) + 1)]


def test_candidate_ranks_on_a_known_curve():
    # s = 4, 3, 2, 1: residuals 1, 0.683, 0.408, 0.183, 0 (sqrt of 30, 14, 5, 1, 0 over 30)
    residuals = _residuals([4.0, 3.0, 2.0, 1.0])
    assert residuals[1] == pytest.approx(math.sqrt(14 / 30))
    # targets 0.2, 0.4, 0.6, 0.8 -> closest residuals 0.183 (r=3), 0.408 (r=2), 0.683 (r=1), 0.683 (r=1)
    assert tar_candidate_ranks(residuals, 5) == {1: 3, 2: 2, 3: 1, 4: 1}


def test_candidate_ranks_accept_numpy_arrays():
    assert tar_candidate_ranks(np.array([1.0, 0.7, 0.45, 0.2, 0.0]), 4) == {1: 3, 2: 2, 3: 1}


def test_ties_go_to_the_larger_rank():
    # index 1 of 4 wants 0.25: rank 1 (0.5) and rank 2 (0.0) are equally far -> rank 2, the more accurate
    assert tar_candidate_ranks([1.0, 0.5, 0.0], 4) == {1: 2, 2: 1, 3: 1}


def test_zero_matrix_keeps_full_rank():
    assert tar_candidate_ranks([0.0, 0.0, 0.0], 3) == {1: 2, 2: 2}


@pytest.mark.parametrize(
    ("residuals", "num", "match"),
    [
        ([1.0, 0.0], 1, "num_rank_indices"),
        ([1.0, 0.0], 2.5, "num_rank_indices"),
        ([1.0], 4, "R >= 1"),
        ([1.0, 0.2, 0.5, 0.0], 4, "must not increase"),
        ([1.0, math.nan, 0.0], 4, "relative_residuals\\[1\\]"),
        ([1.5, 0.5, 0.0], 4, "relative_residuals\\[0\\]"),
    ],
)
def test_candidate_ranks_reject_bad_input(residuals, num, match):
    with pytest.raises(ValueError, match=match):
        tar_candidate_ranks(residuals, num)


@given(
    singular_values=st.lists(st.floats(0.01, 100.0), min_size=1, max_size=12),
    num=st.integers(2, 20),
)
def test_candidate_ranks_are_the_closest_and_non_increasing(singular_values, num):
    residuals = _residuals(sorted(singular_values, reverse=True))
    ranks = tar_candidate_ranks(residuals, num)
    rank_max = len(residuals) - 1
    assert list(ranks) == list(range(1, num))
    values = list(ranks.values())
    assert all(1 <= r <= rank_max for r in values)
    assert all(a >= b for a, b in itertools.pairwise(values))  # more residual -> lower rank
    for index, rank in ranks.items():
        distances = [abs(residuals[r] - index / num) for r in range(1, rank_max + 1)]
        best = min(distances)
        assert distances[rank - 1] <= best + 1e-12
        # no larger rank is (as) close: ties went to the larger rank
        assert all(d > best + 1e-12 for d in distances[rank:])


# ---------------------------------------------------------------- selection

RATIOS = {1: 0.9, 2: 0.6, 3: 0.45, 4: 0.3}


def test_best_score_among_indices_meeting_the_target():
    sel = tar_select({1: 0.99, 2: 0.95, 3: 0.90, 4: 0.80}, RATIOS, target_ratio=0.5)
    assert isinstance(sel, TarSelection)
    assert (sel.index, sel.model_ratio, sel.score, sel.reached) == (3, 0.45, 0.90, True)
    assert "reached" in sel.message


def test_a_more_compressed_index_wins_if_it_scores_higher():
    sel = tar_select({3: 0.80, 4: 0.85}, RATIOS, target_ratio=0.5)
    assert sel.index == 4 and sel.score == 0.85


def test_score_tie_goes_to_the_ratio_closest_to_the_target_then_smaller_index():
    assert tar_select({3: 0.9, 4: 0.9}, {3: 0.45, 4: 0.49}, target_ratio=0.5).index == 4
    assert tar_select({5: 0.9, 4: 0.9}, {4: 0.45, 5: 0.45}, target_ratio=0.5).index == 4


def test_tolerance_counts_a_ratio_just_above_the_target():
    scores, ratios = {2: 0.95, 3: 0.90}, {2: 0.5005, 3: 0.45}
    assert tar_select(scores, ratios, 0.5, tolerance=1e-3).index == 2
    assert tar_select(scores, ratios, 0.5, tolerance=0.0).index == 3


def test_unreachable_target_warns_with_best_ratio():
    with pytest.warns(UserWarning, match=r"best reachable model ratio is 0\.6\b"):
        sel = tar_select({1: 0.99, 2: 0.95}, RATIOS, target_ratio=0.5)
    assert (sel.index, sel.model_ratio, sel.reached) == (2, 0.6, False)
    assert "not reachable" in sel.message


def test_extra_ratio_entries_are_ignored():
    sel = tar_select({2: 0.95}, RATIOS, target_ratio=0.7)
    assert sel.index == 2  # index 4 (ratio 0.3) was not evaluated


@pytest.mark.parametrize(
    ("scores", "ratios", "target", "match"),
    [
        ({3: 0.9}, {}, 0.5, "index_model_ratios"),
        ({}, RATIOS, 0.5, "index_scores"),
        ({7: 0.9}, RATIOS, 0.5, "\\[7\\]"),
        ({3: math.nan}, RATIOS, 0.5, "index_scores\\[3\\]"),
        ({"3": 0.9}, RATIOS, 0.5, "ints"),
        ({3: 0.9}, RATIOS, 0.0, "target_ratio"),
        ({3: 0.9}, RATIOS, 1.2, "target_ratio"),
    ],
)
def test_selection_rejects_bad_input(scores, ratios, target, match):
    with pytest.raises(ValueError, match=match):
        tar_select(scores, ratios, target)


def test_indices_to_evaluate():
    assert tar_indices_to_evaluate(RATIOS, 0.5) == [3, 4]
    assert tar_indices_to_evaluate(RATIOS, 1.0) == [1, 2, 3, 4]
    assert tar_indices_to_evaluate(RATIOS, 0.2) == [4]  # none meets it: the most compressed one
    assert tar_indices_to_evaluate({2: 0.3, 1: 0.3}, 0.2) == [1]


@given(
    data=st.dictionaries(
        st.integers(1, 30), st.tuples(st.floats(0.0, 1.0), st.floats(0.05, 1.5)), min_size=1, max_size=10
    ),
    target=st.floats(0.05, 1.0),
)
def test_selection_objective_property(data, target):
    scores = {i: s for i, (s, _) in data.items()}
    ratios = {i: r for i, (_, r) in data.items()}
    meeting = [i for i in data if ratios[i] <= target + 1e-3]
    if meeting:
        sel = tar_select(scores, ratios, target)
        assert sel.reached and sel.index in meeting
        assert sel.score == max(scores[i] for i in meeting)
    else:
        with pytest.warns(UserWarning):
            sel = tar_select(scores, ratios, target)
        assert not sel.reached and sel.model_ratio == min(ratios.values())
    assert (sel.model_ratio, sel.score) == (ratios[sel.index], scores[sel.index])
    # evaluating only the suggested indices gives the same choice
    subset = {i: scores[i] for i in tar_indices_to_evaluate(ratios, target)}
    if meeting:
        assert tar_select(subset, ratios, target).index == sel.index
