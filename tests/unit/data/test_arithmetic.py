"""The synthetic arithmetic task: exact answers, determinism, disjoint splits, difficulty knobs."""

from __future__ import annotations

import ast
import operator
import re

import pytest

from cispo.data import (
    ArithmeticConfig,
    DataConfig,
    DatasetSpec,
    arithmetic_rows,
    evaluate_expression,
    generate_problems,
    load_data,
    load_prompt_dataset,
    problem_space_size,
)

OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def reference_value(expression: str) -> int:
    """An independent evaluator: Python's own parser and precedence."""

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.BinOp):
            return OPS[type(node.op)](walk(node.left), walk(node.right))
        assert isinstance(node, ast.Constant) and isinstance(node.value, int)
        return node.value

    return walk(ast.parse(expression, mode="eval").body)


def test_evaluate_expression_precedence_by_hand():
    assert evaluate_expression([2, 3, 4], ["+", "*"]) == 14
    assert evaluate_expression([2, 3, 4], ["*", "-"]) == 2
    assert evaluate_expression([10, 3, 2, 5], ["-", "*", "+"]) == 9
    assert evaluate_expression([7, 8], ["-"]) == -1
    with pytest.raises(ValueError, match="operator '/'"):
        evaluate_expression([1, 2], ["/"])


def test_answers_are_exact_and_operands_have_the_asked_digits():
    cfg = ArithmeticConfig(num_train=300, num_heldout=50, min_digits=3, max_digits=5, num_operands=4, seed=7)
    train, heldout = generate_problems(cfg)
    for problem in train + heldout:
        assert problem.answer == reference_value(problem.expression)
        tokens = problem.expression.split(" ")
        numbers, ops = tokens[0::2], tokens[1::2]
        assert len(numbers) == 4 and set(ops) <= {"+", "-", "*"}
        assert all(3 <= len(n) <= 5 and not n.startswith("0") for n in numbers)
    big = [p for p in train if "*" in p.expression]
    assert big and max(abs(p.answer) for p in big) > 2**53  # exact beyond float precision


def test_deterministic_from_seed_and_splits_disjoint():
    cfg = ArithmeticConfig(num_train=500, num_heldout=100, seed=3)
    train, heldout = generate_problems(cfg)
    assert (train, heldout) == generate_problems(ArithmeticConfig(num_train=500, num_heldout=100, seed=3))
    assert len(train) == 500 and len(heldout) == 100
    expressions = [p.expression for p in train + heldout]
    assert len(set(expressions)) == 600
    other_train, other_heldout = generate_problems(ArithmeticConfig(num_train=500, num_heldout=100, seed=4))
    assert [p.expression for p in other_heldout] != [p.expression for p in heldout]
    more_train, same_heldout = generate_problems(ArithmeticConfig(num_train=900, num_heldout=100, seed=3))
    assert same_heldout == heldout and more_train[:500] == train


def test_rows_and_dataset_spec():
    cfg = ArithmeticConfig(num_train=20, num_heldout=5, min_digits=2, max_digits=2, operations=["+"])
    rows = arithmetic_rows(cfg, "train")
    assert len(rows) == 20 and rows[0].id == "arithmetic-train-0"
    assert {r.reward_kind for r in rows} == {"math"} and {r.data_source for r in rows} == {"arithmetic"}
    for row in rows:
        a, b = map(int, re.fullmatch(r"What is (\d\d) \+ (\d\d)\?", row.prompt).groups())
        assert row.ground_truth == str(a + b)
    held = load_prompt_dataset(DatasetSpec(source="arithmetic", split="heldout", arithmetic=cfg)).rows
    assert [r.id for r in held] == [f"arithmetic-heldout-{i}" for i in range(5)]
    everything = arithmetic_rows(cfg, "all")
    assert everything == arithmetic_rows(cfg, "heldout") + rows


def test_default_data_config_is_the_arithmetic_task():
    data = load_data(DataConfig())
    train_prompts = {r.prompt for r in data.train}
    heldout = data.eval["arithmetic"].rows
    assert len(data.train) == ArithmeticConfig().num_train and len(heldout) == ArithmeticConfig().num_heldout
    assert not train_prompts & {r.prompt for r in heldout}


def test_no_negative_answers_when_asked():
    cfg = ArithmeticConfig(num_train=200, num_heldout=0, operations=["-"], allow_negative=False)
    assert all(p.answer >= 0 for p in generate_problems(cfg)[0])


def test_too_many_problems_for_the_space():
    cfg = ArithmeticConfig(num_train=300, num_heldout=1, min_digits=1, max_digits=1, operations=["+", "-", "*"])
    assert problem_space_size(cfg) == 10 * 10 * 3
    with pytest.raises(ValueError, match="301 distinct problems wanted.* only 300"):
        generate_problems(cfg)
    full = ArithmeticConfig(num_train=290, num_heldout=10, min_digits=1, max_digits=1)
    assert len({p.expression for p in sum(generate_problems(full), [])}) == 300


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_digits": 0}, "min_digits=0"),
        ({"min_digits": 3, "max_digits": 2}, "max_digits=2"),
        ({"num_operands": 1}, "num_operands=1"),
        ({"operations": ["/"]}, "operations=\\['/'\\]"),
        ({"operations": []}, "operations=\\[\\]"),
        ({"question": "Compute"}, "question='Compute'"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArithmeticConfig(**kwargs)
