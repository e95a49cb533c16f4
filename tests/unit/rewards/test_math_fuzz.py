"""Property: math/AIME `score` never raises and never needs its last-resort guard, on any text.

A seeded fuzzer (hypothesis is not a dependency) builds responses and ground truths from LaTeX
fragments, hostile structure (unclosed braces, comments, `####`, `<think>`), numbers past
Python's int-string limit and Unicode. Scoring goes through the real pool (`score_batch`), so a
pathological math-verify call costs a killed worker (`timeout`), not the test. An exception
inside the scorer would surface as `internal_error` (the guard) or a raise: both fail here.
"""

from __future__ import annotations

import math
import random
import time

import pytest

from rewards import REASONS, RewardConfig, RewardPool, score, scoring
from rewards.math_answer import answer_candidates
from rewards.math_strict import prepare

SEED = 19
N_ITEMS = 240
FRAGMENTS = [
    "\\boxed{", "}", "{", "\\frac{1}{2}", "\\dfrac{3}{4}", "\\text{ or }", "\\text{ kg}", "\\text{(C)}", "\\lor",
    "\\\\", "\\begin{cases}", "\\end{cases}", "\\neq", "\\neg", "=", "x", "y_1", "%", "\\%", "<!--", "-->",
    "\\phantom{", "\\iffalse", "\\fi", "####", "\n", "Answer:", "**Final Answer:**", "<think>", "</think>", "$",
    "$$", "\\overline{3}", "0.", "^\\circ", "\\,", "{,}", ",", ";", " or ", " and ", "\\sqrt{", "^{", "_", "\\pm",
    "\\infty", "1e-7", "10^{-7}", "\\left(", "\\right)", "\\begin{pmatrix}", "\\end{pmatrix}", "&", "\\$", " ",
    "wait", "actually", "\\mathrm{cm}", "\\mbox{ inches}^2", "\\in", "\\cup", "(", ")", "[", "]", "\\fbox{",
    "\u200b", "²", "½", "\u2212", "π", "√", "°", "≠", "中文", "\ufeff", "\x00", "😀", "ﬁ", "５", "\\", "\\\\boxed",
]
GOLDS = ["5", "\\frac{1}{2}", "x=5", "500 \\text{ g}", "\\text{(C)}", 7.5, 33, "#### 12", "10\\%", "\\pm 2",
         "(1, 2)", "y = 2x + 3", "0.0000001", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"]


def _number(rng: random.Random) -> str:
    size = rng.choice([1, 2, 3, 8, 30, 4299, 4301, 6000])
    digits = "".join(rng.choice("0123456789") for _ in range(size))
    return rng.choice(["", "-", "0" * rng.randint(1, 5)]) + digits + rng.choice(["", ".5", ".000", "e5", "/7"])


def _text(rng: random.Random, parts: int) -> str:
    out = []
    for _ in range(parts):
        out.append(_number(rng) if rng.random() < 0.15 else rng.choice(FRAGMENTS))
    return "".join(out)


def _items(rng: random.Random) -> list[tuple[str, str, object]]:
    items = []
    for _ in range(N_ITEMS):
        body = _text(rng, rng.randint(1, 12))
        prefix = _text(rng, rng.randint(0, 12)) if rng.random() < 0.5 else "So "
        response = prefix + ("\\boxed{" + body + "}" if rng.random() < 0.7 else body)
        roll = rng.random()
        gold = rng.choice(GOLDS) if roll < 0.6 else (_number(rng) if roll < 0.8 else _text(rng, rng.randint(1, 6)))
        if rng.random() < 0.05:
            gold = int("7" * 40) * 10 ** 4500  # an int past the int-string limit
        kind = "aime" if rng.random() < 0.25 else "math"
        items.append((kind, response, gold))
    return items


def test_seeded_fuzz_never_raises_and_never_hits_the_guard() -> None:
    rng = random.Random(SEED)
    items = _items(rng)
    cfg = RewardConfig(math_timeout_s=2.0, hard_timeout_grace_s=1.0)
    with RewardPool(2, config=cfg) as pool:
        results = pool.score_batch(items)
    assert len(results) == len(items)
    for (kind, response, gold), r in zip(items, results):
        shown = "<huge int>" if isinstance(gold, int) and gold.bit_length() > 10_000 else repr(gold)[:40]
        where = f"{kind} {response[:80]!r} / {shown}: {r.detail[:120]}"
        assert r.reason in REASONS and r.reason != "internal_error", where
        assert math.isfinite(r.score) and r.score in (0.0, 1.0), where
        assert r.extracted is None or isinstance(r.extracted, str), where
    assert sum(r.reason == "timeout" for r in results) <= len(items) // 20  # pathological inputs are rare
    assert sum(r.reason != "no_answer" for r in results) >= len(items) // 3  # a good share reach the judge


def test_public_score_on_hostile_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scoring, "IN_WORKER", True)  # math-verify inline: the scorer itself must not raise
    hostile = [
        "\\boxed{" + "9" * 5000 + "}", "\\boxed{" * 3000, "}" * 3000 + "\\boxed{1}", "%" * 5000, "{" + "%" * 5000,
        "#### " + "1" * 5000, "Answer: " + "\u200b" * 5000, "\\boxed{x" + "=" * 3000 + "}", "\\boxed{" + " " * 50000 + "x}",
        "\\boxed{a" + " " * 2000 + "b!}", "\\boxed{" + "\\text{a}" * 300 + "}", "\\boxed{1}" * 3000,
    ]
    for kind in ("math", "aime"):
        for response in hostile:
            for gold in ("5", 5, "\\text{(C)}"):
                start = time.perf_counter()
                r = score(kind, response, gold, math_timeout_s=2.0)
                assert r.reason in REASONS and r.reason != "internal_error", (response[:40], r.detail)
                assert time.perf_counter() - start < 5.0, response[:40]


def test_strict_extraction_and_prepare_are_linear() -> None:
    hostile = ("\\boxed{" * 20000 + "{" * 20000 + "Answer:" * 2000 + "<!--" + "%" * 20000 + "\n####" * 2000
               + "\\phantom{" * 5000)
    start = time.perf_counter()
    answer_candidates(hostile, ("boxed", "answer_line", "gsm8k"))
    prepare("x" + " " * 100000 + "y" + "\\," * 20000 + "z" + "\\text{a}" * 20000 + " =" * 20000)
    assert time.perf_counter() - start < 3.0
