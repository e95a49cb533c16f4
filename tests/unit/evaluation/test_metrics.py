"""Evaluation metrics against brute force and hand-computed values."""

from __future__ import annotations

import itertools
from fractions import Fraction
from math import comb

import pytest

from cispo.evaluation import (
    ProblemSamples,
    avg_at_k,
    default_pass_ks,
    evaluate_samples,
    length_stats,
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
    truncation_rate,
)


def brute_force_pass_at_k(flags: list[bool], k: int) -> Fraction:
    """Exact fraction of all k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(range(len(flags)), k))
    hits = sum(any(flags[i] for i in subset) for subset in subsets)
    return Fraction(hits, len(subsets))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 10])
def test_pass_at_k_equals_brute_force_over_all_subsets(n):
    for c in range(n + 1):
        flags = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            exact = brute_force_pass_at_k(flags, k)
            assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)
            assert float(exact) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_hand_values_and_stability():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 3 of the 6 pairs contain the correct one
    assert pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    assert pass_at_k(5, 0, 3) == 0.0 and pass_at_k(5, 3, 3) == 1.0
    # n = 1024: C(1024, 512) overflows a float; the product form does not
    expected = 1 - float(Fraction(comb(1000, 512), comb(1024, 512)))
    assert pass_at_k(1024, 24, 512) == pytest.approx(expected, rel=1e-12)
    assert pass_at_k(32, 1, 1) == pytest.approx(1 / 32)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, -1, 1), (4, 1, 5), (4, 1, 0), (0, 0, 1), (4.0, 1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k_and_avg_at_k_by_hand():
    correct = [[True, False, False, False], [True, True, False, False], [False] * 4]
    # avg@4 = (1/4 + 2/4 + 0) / 3 = 0.25
    assert avg_at_k(correct) == pytest.approx(0.25)
    # pass@1 equals avg@k; pass@2 = (1/2 + 5/6 + 0) / 3
    assert mean_pass_at_k(correct, 1) == pytest.approx(0.25)
    assert mean_pass_at_k(correct, 2) == pytest.approx((0.5 + 5 / 6) / 3)
    assert mean_pass_at_k(correct, 4) == pytest.approx(2 / 3)
    assert avg_at_k([[True], [False, True]]) == pytest.approx((1 + 0.5) / 2)
    with pytest.raises(ValueError, match="no problems"):
        avg_at_k([])
    with pytest.raises(ValueError, match="problem 1: no samples"):
        avg_at_k([[True], []])


def test_majority_vote_and_ties():
    vote = majority_vote(["3", "5", "5", None, "3", "7"], [False, True, True, False, False, False])
    # "3" and "5" both have 2 votes: "3" voted first, so it wins (and it is wrong)
    assert (vote.answer, vote.votes, vote.correct) == ("3", 2, False)
    vote = majority_vote(["5", "3", "3", "5"], [True, False, False, True])
    assert (vote.answer, vote.votes, vote.correct) == ("5", 2, True)
    vote = majority_vote([None, "4", None, None], [False, True, False, False])
    assert (vote.answer, vote.votes, vote.correct) == ("4", 1, True)  # None never votes
    vote = majority_vote([None, None], [False, False])
    assert (vote.answer, vote.votes, vote.correct) == (None, 0, False)
    with pytest.raises(ValueError, match="answers has 2 entries but correct has 1"):
        majority_vote(["1", "2"], [True])


def test_maj_at_k_uses_the_first_k_samples():
    answers = [["1", "2", "2", "2"], ["9", "9", "8", "8"], ["4", "5", "6", "7"]]
    correct = [[True, False, False, False], [False, False, True, True], [False, False, False, True]]
    # k=4: p0 majority "2" wrong; p1 tie 9/8 -> "9" (first) wrong; p2 all ties -> "4" wrong
    assert maj_at_k(answers, correct, 4) == 0.0
    # k=1: majority is the first sample: p0 right, p1 wrong, p2 wrong
    assert maj_at_k(answers, correct, 1) == pytest.approx(1 / 3)
    # k=3: p0 "2" (2 votes) wrong; p1 "9" wrong; p2 "4" wrong
    assert maj_at_k(answers, correct, 3) == 0.0
    answers[1] = ["8", "9", "8", "9"]
    correct[1] = [True, False, True, False]
    assert maj_at_k(answers, correct, 4) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="k=5"):
        maj_at_k(answers, correct, 5)


def test_lengths_and_truncation():
    assert length_stats([10, 20, 60]) == (30.0, 60)
    assert truncation_rate(["stop", "length", "repetition", "length"]) == 0.5
    with pytest.raises(ValueError):
        length_stats([])


def test_evaluate_samples_end_to_end():
    problems = [
        ProblemSamples("p0", "5", [True, True, False, False], ["5", "5", "6", None], [10, 12, 30, 40],
                       ["stop", "stop", "stop", "length"]),
        ProblemSamples("p1", "7", [False, False, False, True], ["1", "2", "1", "7"], [5, 5, 5, 5],
                       ["stop"] * 4),
    ]
    metrics = evaluate_samples(problems)
    assert metrics.num_problems == 2 and metrics.num_samples == 4
    assert metrics.avg_at_k == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert sorted(metrics.pass_at_k) == [1, 2, 4]
    assert metrics.pass_at_k[2] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert metrics.pass_at_k[4] == 1.0
    assert metrics.maj_at_k == {4: 0.5}
    assert metrics.mean_length == pytest.approx(112 / 8) and metrics.max_length == 40
    assert metrics.truncation_rate == pytest.approx(1 / 8)
    first, second = metrics.table
    assert (first.id, first.gold, first.samples, first.correct) == ("p0", "5", 4, 2)
    assert (first.majority_answer, first.majority_votes, first.majority_correct) == ("5", 2, True)
    assert (second.majority_answer, second.majority_votes, second.majority_correct) == ("1", 2, False)
    flat = metrics.flat()
    assert flat["avg@4"] == metrics.avg_at_k and flat["pass@1"] == pytest.approx(metrics.avg_at_k)
    assert flat["maj@4"] == 0.5 and flat["truncation_rate"] == pytest.approx(1 / 8)
    assert metrics.as_dict()["table"][1]["majority_answer"] == "1"
    assert evaluate_samples(problems, pass_ks=[3], maj_ks=[1, 2]).maj_at_k == {1: 0.5, 2: 0.5}


def test_evaluate_samples_errors():
    ok = ProblemSamples("a", "1", [True, False], ["1", "2"], [1, 1], ["stop", "stop"])
    short = ProblemSamples("b", "1", [True], ["1"], [1], ["stop"])
    with pytest.raises(ValueError, match="same number of samples.*\\['b'\\]"):
        evaluate_samples([ok, short])
    with pytest.raises(ValueError, match="pass_ks=\\[3\\]"):
        evaluate_samples([ok], pass_ks=[3])
    with pytest.raises(ValueError, match="problem 'c': correct has 2 entries but lengths has 1"):
        ProblemSamples("c", "1", [True, False], ["1", "2"], [1], ["stop", "stop"])
    with pytest.raises(ValueError, match="no problems"):
        evaluate_samples([])
    assert default_pass_ks(32) == [1, 2, 4, 8, 16, 32] and default_pass_ks(5) == [1, 2, 4, 5]
    assert default_pass_ks(1) == [1]
