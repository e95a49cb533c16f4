"""Evaluation metrics over k sampled responses per problem: pure functions, no model, no I/O.

- avg@k: mean over problems of (correct samples / samples), M1's and DAPO's AIME number.
- pass@k: the unbiased estimator of Chen et al. 2021 (Codex), 1 - C(n-c, k) / C(n, k), computed as
  the product 1 - prod_{i=n-c+1}^{n} (1 - k/i), which never forms a huge binomial.
- maj@k: majority vote over the extracted answers of the first k samples. Samples with no extracted
  answer (None) do not vote. Ties go to the answer whose first vote came earliest in sample order
  (deterministic, and independent of the gold answer, so a tie is never resolved optimistically).
  The majority answer counts as correct when its first voter was graded correct: answers are
  compared as strings, so the grader's verdict on one voter stands for all identical strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

TRUNCATED_REASON = "length"
"""The finish reason of a response cut at max_tokens (RolloutResult.finish_reason)."""


# ---- per-problem estimators ---------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"pass_at_k: {name}={value!r}: expected an integer")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k: n={n}, c={c}: expected n >= 1 and 0 <= c <= n")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k={k}: expected 1 <= k <= n={n}")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


@dataclass(frozen=True)
class MajorityVote:
    answer: str | None
    """None when no sample had an extracted answer."""
    votes: int
    correct: bool


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool]) -> MajorityVote:
    """The most frequent non-None answer; ties to the earliest first occurrence (see module doc)."""
    _check_same_length(answers, correct, "answers", "correct")
    counts: dict[str, int] = {}
    first_index: dict[str, int] = {}
    for index, answer in enumerate(answers):
        if answer is None:
            continue
        counts[answer] = counts.get(answer, 0) + 1
        first_index.setdefault(answer, index)
    if not counts:
        return MajorityVote(None, 0, False)
    best = min(counts, key=lambda answer: (-counts[answer], first_index[answer]))
    return MajorityVote(best, counts[best], bool(correct[first_index[best]]))


# ---- means over problems ------------------------------------------------------------------------


def _check_same_length(a: Sequence[Any], b: Sequence[Any], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} entries but {name_b} has {len(b)}")


def _check_problems(correct: Sequence[Sequence[bool]]) -> None:
    if len(correct) == 0:
        raise ValueError("no problems: expected at least one problem")
    for index, flags in enumerate(correct):
        if len(flags) == 0:
            raise ValueError(f"problem {index}: no samples")


def avg_at_k(correct: Sequence[Sequence[bool]]) -> float:
    """Mean over problems of the fraction of correct samples."""
    _check_problems(correct)
    return sum(sum(map(bool, flags)) / len(flags) for flags in correct) / len(correct)


def mean_pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over problems (every problem needs at least k samples)."""
    _check_problems(correct)
    return sum(pass_at_k(len(flags), sum(map(bool, flags)), k) for flags in correct) / len(correct)


def maj_at_k(answers: Sequence[Sequence[str | None]], correct: Sequence[Sequence[bool]], k: int) -> float:
    """Fraction of problems whose majority answer over the first k samples is correct."""
    _check_problems(correct)
    _check_same_length(answers, correct, "answers", "correct")
    total = 0
    for index, (problem_answers, flags) in enumerate(zip(answers, correct)):
        if not 1 <= k <= len(flags):
            raise ValueError(f"maj_at_k: k={k}: problem {index} has {len(flags)} samples")
        total += majority_vote(problem_answers[:k], flags[:k]).correct
    return total / len(correct)


def length_stats(lengths: Sequence[int]) -> tuple[float, int]:
    """(mean, max) response length in tokens."""
    if len(lengths) == 0:
        raise ValueError("length_stats: no responses")
    return sum(lengths) / len(lengths), max(lengths)


def truncation_rate(finish_reasons: Sequence[str]) -> float:
    """Fraction of responses that hit the token limit (finish reason `length`)."""
    if len(finish_reasons) == 0:
        raise ValueError("truncation_rate: no responses")
    return sum(reason == TRUNCATED_REASON for reason in finish_reasons) / len(finish_reasons)


# ---- a whole eval set ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemSamples:
    """The graded samples of one problem (all lists have one entry per sample)."""

    id: str
    gold: str
    correct: Sequence[bool]
    answers: Sequence[str | None]
    lengths: Sequence[int]
    finish_reasons: Sequence[str]

    def __post_init__(self) -> None:
        if len(self.correct) == 0:
            raise ValueError(f"problem {self.id!r}: no samples")
        for name in ("answers", "lengths", "finish_reasons"):
            _check_same_length(self.correct, getattr(self, name), f"problem {self.id!r}: correct", name)


@dataclass(frozen=True)
class ProblemRow:
    """One line of the per-problem table."""

    id: str
    gold: str
    samples: int
    correct: int
    majority_answer: str | None
    majority_votes: int
    majority_correct: bool


@dataclass(frozen=True)
class EvalMetrics:
    num_problems: int
    num_samples: int
    """Samples per problem: the k of avg@k."""
    avg_at_k: float
    pass_at_k: dict[int, float]
    maj_at_k: dict[int, float]
    mean_length: float
    max_length: int
    truncation_rate: float
    table: list[ProblemRow] = field(default_factory=list)

    def flat(self) -> dict[str, float]:
        """Scalar metrics named like the papers: `avg@32`, `pass@1`, `maj@32`, ... (for JSONL / wandb)."""
        out: dict[str, float] = {f"avg@{self.num_samples}": self.avg_at_k}
        out.update({f"pass@{k}": value for k, value in self.pass_at_k.items()})
        out.update({f"maj@{k}": value for k, value in self.maj_at_k.items()})
        out.update(
            {
                "mean_length": self.mean_length,
                "max_length": float(self.max_length),
                "truncation_rate": self.truncation_rate,
                "num_problems": float(self.num_problems),
            }
        )
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable, table included."""
        return asdict(self)


def default_pass_ks(num_samples: int) -> list[int]:
    """1, 2, 4, ... up to num_samples, and num_samples itself."""
    ks, k = [], 1
    while k < num_samples:
        ks.append(k)
        k *= 2
    return ks + [num_samples]


def evaluate_samples(
    problems: Sequence[ProblemSamples],
    *,
    pass_ks: Sequence[int] | None = None,
    maj_ks: Sequence[int] | None = None,
) -> EvalMetrics:
    """Every metric of an eval set. Defaults: pass@{1,2,4,..,n} and maj@n, n = samples per problem."""
    if len(problems) == 0:
        raise ValueError("evaluate_samples: no problems")
    correct = [list(problem.correct) for problem in problems]
    answers = [list(problem.answers) for problem in problems]
    num_samples = len(correct[0])
    uneven = [problem.id for problem, flags in zip(problems, correct) if len(flags) != num_samples]
    if uneven:
        raise ValueError(
            f"evaluate_samples: every problem needs the same number of samples ({num_samples}, as "
            f"{problems[0].id!r}); these differ: {uneven[:5]}"
        )
    pass_ks = default_pass_ks(num_samples) if pass_ks is None else list(pass_ks)
    maj_ks = [num_samples] if maj_ks is None else list(maj_ks)
    for name, ks in (("pass_ks", pass_ks), ("maj_ks", maj_ks)):
        bad = [k for k in ks if not isinstance(k, int) or not 1 <= k <= num_samples]
        if bad:
            raise ValueError(f"{name}={ks}: every k must be an integer in 1..{num_samples} (samples per problem)")
    lengths = [length for problem in problems for length in problem.lengths]
    reasons = [reason for problem in problems for reason in problem.finish_reasons]
    mean_length, max_length = length_stats(lengths)
    table = []
    for problem, flags, problem_answers in zip(problems, correct, answers):
        vote = majority_vote(problem_answers, flags)
        table.append(
            ProblemRow(
                id=problem.id,
                gold=problem.gold,
                samples=len(flags),
                correct=sum(map(bool, flags)),
                majority_answer=vote.answer,
                majority_votes=vote.votes,
                majority_correct=vote.correct,
            )
        )
    return EvalMetrics(
        num_problems=len(problems),
        num_samples=num_samples,
        avg_at_k=avg_at_k(correct),
        pass_at_k={k: mean_pass_at_k(correct, k) for k in pass_ks},
        maj_at_k={k: maj_at_k(answers, correct, k) for k in maj_ks},
        mean_length=mean_length,
        max_length=max_length,
        truncation_rate=truncation_rate(reasons),
        table=table,
    )
