"""A synthetic multi-digit arithmetic task: cheap to generate, exact to grade, hard enough for tiny models.

Problems are drawn from `random.Random(seed)` (whose integer draws are stable across Python versions),
kept only if not seen before, held-out ones first. The answer is computed with Python integers and
the usual precedence (`*` before `+`/`-`), so the ground truth is exact at any size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from cispo.config.data import ArithmeticConfig
from cispo.data.types import PromptRow

DATA_SOURCE = "arithmetic"
REWARD_KIND = "math"


@dataclass(frozen=True)
class ArithmeticProblem:
    expression: str
    answer: int


def evaluate_expression(operands: list[int], operators: list[str]) -> int:
    """`a op b op c ...` with `*` binding tighter than `+` and `-` (left to right otherwise)."""
    if len(operators) != len(operands) - 1:
        raise ValueError(f"{len(operands)} operands need {len(operands) - 1} operators, got {len(operators)}")
    total, term = 0, operands[0]
    sign = 1
    for op, value in zip(operators, operands[1:]):
        if op == "*":
            term *= value
        elif op in ("+", "-"):
            total += sign * term
            sign, term = (1 if op == "+" else -1), value
        else:
            raise ValueError(f"operator {op!r}: expected one of '+', '-', '*'")
    return total + sign * term


def _operand_range(digits: int) -> tuple[int, int]:
    """Integers with exactly `digits` digits; one digit includes 0."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return low, 10**digits - 1


def problem_space_size(cfg: ArithmeticConfig) -> int:
    """How many distinct expressions the configuration can produce (an upper bound on the task size)."""
    values = sum(high - low + 1 for low, high in map(_operand_range, range(cfg.min_digits, cfg.max_digits + 1)))
    return values**cfg.num_operands * len(cfg.operations) ** (cfg.num_operands - 1)


def _draw(rng: random.Random, cfg: ArithmeticConfig) -> ArithmeticProblem:
    operands = []
    for _ in range(cfg.num_operands):
        low, high = _operand_range(rng.randint(cfg.min_digits, cfg.max_digits))
        operands.append(rng.randint(low, high))
    operators = [rng.choice(cfg.operations) for _ in range(cfg.num_operands - 1)]
    pieces = [str(operands[0])]
    for op, value in zip(operators, operands[1:]):
        pieces += [op, str(value)]
    return ArithmeticProblem(" ".join(pieces), evaluate_expression(operands, operators))


def generate_problems(cfg: ArithmeticConfig) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """(train, heldout): distinct problems, deterministic from `cfg.seed`, held-out drawn first."""
    wanted = cfg.num_train + cfg.num_heldout
    space = problem_space_size(cfg)
    if wanted > space:
        raise ValueError(
            f"arithmetic: num_train + num_heldout = {wanted} distinct problems wanted, but these digits, "
            f"operands and operations allow only {space}"
            + ("" if cfg.allow_negative else " (fewer with allow_negative=false)")
        )
    rng = random.Random(cfg.seed)
    seen: set[str] = set()
    problems: list[ArithmeticProblem] = []
    budget = wanted * cfg.max_draws_per_problem
    draws = 0
    while len(problems) < wanted:
        if draws >= budget:
            raise ValueError(
                f"arithmetic: found only {len(problems)} of {wanted} distinct problems in {draws} draws; "
                "ask for fewer problems or widen min_digits/max_digits/num_operands/operations"
            )
        draws += 1
        problem = _draw(rng, cfg)
        if problem.expression in seen or (not cfg.allow_negative and problem.answer < 0):
            continue
        seen.add(problem.expression)
        problems.append(problem)
    return problems[cfg.num_heldout :], problems[: cfg.num_heldout]


def arithmetic_rows(cfg: ArithmeticConfig, split: str, *, data_source: str = DATA_SOURCE) -> list[PromptRow]:
    """Rows of `split` (`train`, `heldout` or `all` = heldout then train) with exact integer answers."""
    train, heldout = generate_problems(cfg)
    parts = {"train": [("train", train)], "heldout": [("heldout", heldout)]}
    parts["all"] = parts["heldout"] + parts["train"]
    if split not in parts:
        raise ValueError(f"split={split!r}: expected one of {sorted(parts)}")
    rows = []
    for part, problems in parts[split]:
        for index, problem in enumerate(problems):
            rows.append(
                PromptRow(
                    prompt=cfg.question.replace("{expression}", problem.expression),
                    ground_truth=str(problem.answer),
                    reward_kind=REWARD_KIND,
                    data_source=data_source,
                    id=f"{data_source}-{part}-{index}",
                )
            )
    return rows
