"""Code rewards: extraction, the three ground-truth forms, LeetCode binding, values and reasons.

A sample of 5 rows of each data set in data/code runs here; all rows run in benchmarks/bench_rewards.py.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

from rewards import RewardConfig, score, score_batch
from rewards import code_data
from rewards.code_reward import BadGroundTruth, outputs_match, parse_ground_truth
from rewards.extract import extract_code, fenced_blocks

ROOT = Path(__file__).resolve().parents[3]
CODE = ROOT / "data" / "code"
FAST = RewardConfig()  # default limits: verdicts here must not depend on machine load
SAMPLE = (0, 41, 87, 130, 163)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rewards", ROOT / "benchmarks" / "bench_rewards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fence(program: str, lang: str = "python") -> str:
    return f"Sure.\n```{lang}\n{program}\n```\nDone."


# ----------------------------------------------------------------------------- extraction
def test_fenced_blocks_and_modes() -> None:
    text = "a\n```python\nx = 1\n```\nb\n```\nplain = 2\n```\n```js\nlet y\n```\n```python\nunclosed = 3\n"
    assert fenced_blocks(text) == [("python", "x = 1"), ("", "plain = 2"), ("js", "let y")]
    assert extract_code(text, "last_python_block") == "plain = 2"  # an untagged block counts as python
    assert extract_code(text, "last_block") == "let y"
    assert extract_code(text, "raw") == text
    assert extract_code("```py\n\n```", "last_python_block") is None
    assert extract_code("<think>```python\nx=1\n```</think>no code", "last_python_block") is None
    assert extract_code("<think>```python\nx=1\n```", "last_python_block") is None
    assert extract_code("````python\na = '```'\n````", "last_python_block") == "a = '```'"
    with pytest.raises(ValueError, match="code_extraction"):
        extract_code("x", "first_block")


def test_ground_truth_validation() -> None:
    assert parse_ground_truth({"asserts": ["assert f(1) == 1"]}).count == 1
    assert parse_ground_truth(json.dumps({"io": [{"input": "1", "output": "1"}] * 3})).count == 3
    for bad in (None, [], "not json", {}, {"asserts": []}, {"asserts": ["ok"], "check": "x"}, {"check": ""},
                {"check": "def check(c): pass", "entry_point": 3}, {"io": [{"input": 1, "output": "x"}]}, {"io": []},
                {"asserts": ["a"], "setup": 5}):
        with pytest.raises(BadGroundTruth):
            parse_ground_truth(bad)
    r = score("code", fence("x = 1"), {"asserts": []})
    assert (r.reason, r.correct) == ("bad_ground_truth", False)


def test_outputs_match() -> None:
    assert outputs_match("1 2\n3\n\n", "1 2\n3", 1e-6)
    assert outputs_match("1  2 \n3", "1 2\n3\n", 1e-6)
    assert not outputs_match("1 2 3", "1 2\n3", 1e-6)
    assert outputs_match("0.3333333", "0.333333333", 1e-6)
    assert not outputs_match("0.3334", "0.333333333", 1e-6)
    assert not outputs_match("0.3333333", "0.333333333", 0.0)
    assert not outputs_match("3", "3.5", 1e-6)
    assert not outputs_match("YES", "yes", 1e-6)


# ----------------------------------------------------------------------------- the three forms
def test_asserts_form_partial_credit_and_reasons() -> None:
    gt = {"asserts": ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(-1, 1) == 0"], "setup": "import math"}
    assert score("code", fence("def add(a, b):\n    return a + b"), gt, config=FAST).reason == "correct"
    wrong = fence("def add(a, b):\n    return 4 if a == 2 else a + b + (a < 0)")
    all_or_nothing = score("code", wrong, gt, config=FAST)
    assert (all_or_nothing.score, all_or_nothing.reason) == (0.0, "wrong_answer")
    partial = score("code", wrong, gt, config=FAST.replace(code_partial_credit=True))
    assert partial.score == pytest.approx(2 / 3) and not partial.correct
    dapo = FAST.replace(code_partial_credit=True, correct_reward=1.0, wrong_reward=-1.0)
    assert score("code", wrong, gt, config=dapo).score == pytest.approx(-1 + 2 * 2 / 3)
    fmt = FAST.replace(format_reward=0.5)
    assert score("code", wrong, gt, config=fmt).score == pytest.approx(0.5)
    assert score("code", "no code here", gt, config=fmt).score == 0.0
    assert score("code", "no code here", gt).reason == "no_answer"
    assert score("code", fence("def add(a, b)\n    return a"), gt).reason == "compile_error"
    assert score("code", fence("def add(a, b):\n    return a / 0"), gt).reason == "runtime_error"
    assert score("code", fence("import nonexistent_module_xyz"), gt).reason == "runtime_error"


def test_check_form_entry_points() -> None:
    check = "def check(candidate):\n    assert candidate(3) == 9\n    assert candidate(-2) == 4\n"
    fn = fence("def square(x):\n    return x * x")
    method = fence("class Solution:\n    def square(self, x: int) -> int:\n        return x * x")
    assert score("code", fn, {"check": check, "entry_point": "square"}).correct
    for ep in ("Solution().square", "Solution.square", "square"):
        assert score("code", method, {"check": check, "entry_point": ep}).correct, ep
    self_invoking = {"check": check + "\ncheck(Solution().square)\n"}
    assert score("code", method, self_invoking).correct
    doubled = fence("class Solution:\n    def square(self, x):\n        return x + x")
    assert score("code", doubled, self_invoking).reason == "wrong_answer"
    missing = score("code", fn, {"check": check, "entry_point": "cube"})
    assert missing.reason == "runtime_error" and "cube" in missing.detail
    assert score("code", fn, {"check": "def check(c):\n  assert c(1) ==", "entry_point": "square"}).reason == "bad_ground_truth"


def test_io_form_codeforces() -> None:
    rows = json.loads((CODE / "rllm_codeforces_test.json").read_text())
    solutions = {
        0: "t = int(input())\nfor _ in range(t):\n    x, y = map(int, input().split())\n    print(min(x, y), max(x, y))",
        3: "import sys\ndata = sys.stdin.read().split()\nfor s in data[1:]:\n"
           "    blocks = 1 + sum(s[i] != s[i + 1] for i in range(len(s) - 1))\n    print(blocks - ('01' in s))",
        5: "from math import isqrt\nimport sys\nfor r in map(int, sys.stdin.read().split()[1:]):\n    total = 0\n"
           "    for x in range(1, r + 1):\n        lo, hi = r * r - x * x, (r + 1) ** 2 - 1 - x * x\n"
           "        low = 0 if lo <= 0 else isqrt(lo - 1) + 1\n        total += isqrt(hi) - low + 1\n    print(4 * total)",
    }
    for i, program in solutions.items():
        gt = code_data.codeforces_ground_truth(rows[i])
        assert score("code", fence(program), gt).correct, i
        assert score("code", fence(program + "\nprint(0)"), gt).reason == "wrong_answer", i
    gt = {"io": [{"input": "2 3\n", "output": "5\n"}, {"input": "10 -4\n", "output": "6"}]}
    assert score("code", fence("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(0)"), gt).correct
    hard_exit = "import os, sys\na, b = map(int, input().split())\nprint(a + b)\nsys.stdout.flush()\nos._exit(0)"
    assert score("code", fence(hard_exit), gt).correct
    exit_3 = fence("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)")
    assert score("code", exit_3, gt).reason == "runtime_error"
    assert score("code", fence("print(input())"), gt).reason == "wrong_answer"


# ----------------------------------------------------------------------------- shared data samples
def _rows() -> list[tuple[str, str, str, dict]]:
    """(name, reference response, broken response, ground truth) for 5 rows of each data set."""
    bench = _bench()
    with gzip.open(CODE / "HumanEval.jsonl.gz", "rt") as fh:
        he = [json.loads(line) for line in fh]
    mbpp = json.loads((CODE / "prime_new_mbpp.json").read_text())
    lc = json.loads((CODE / "rllm_leetcode_test.json").read_text())
    rows = []
    for i in SAMPLE:
        r = he[i]
        ref = code_data.humaneval_reference(r)
        rows.append((r["task_id"], fence(ref), fence(bench.broken_function(ref, r["entry_point"])),
                     code_data.humaneval_ground_truth(r)))
    for i in SAMPLE:
        r = mbpp[i * 2]
        ref = code_data.mbpp_reference(r)
        name = bench.mbpp_entry_point(r)
        assert name, r["task_id"]
        rows.append((f"mbpp/{r['task_id']}", fence(ref), fence(bench.broken_function(ref, name)), code_data.mbpp_ground_truth(r)))
    for i in (0, 50, 100, 150, 199):
        r = lc[i]
        gt = code_data.leetcode_ground_truth(r)
        ref = code_data.leetcode_reference(r)
        rows.append((f"leetcode/{i}", fence(ref), fence(bench.broken_solution(ref, gt["entry_point"].split(".")[-1])), gt))
    return rows


def test_shared_data_sample_references_pass_and_broken_fail() -> None:
    rows = _rows()
    assert len(rows) == 15
    items = [("code", good, gt) for _, good, _, gt in rows] + [("code", bad, gt) for _, _, bad, gt in rows]
    results = score_batch(items)
    good, bad = results[:15], results[15:]
    assert [(n, r.reason, r.detail) for (n, *_), r in zip(rows, good) if not r.correct] == []
    assert [n for (n, *_), r in zip(rows, bad) if r.correct] == []
    assert all(r.score == 1.0 for r in good) and all(r.score == 0.0 for r in bad)


def test_leetcode_prelude_helpers() -> None:
    program = (
        "class Solution:\n    def mirror(self, root: Optional[TreeNode]) -> Optional[TreeNode]:\n"
        "        if root is None:\n            return None\n"
        "        root.left, root.right = self.mirror(root.right), self.mirror(root.left)\n        return root\n"
        "    def rev(self, head: Optional[ListNode]) -> Optional[ListNode]:\n        prev = None\n"
        "        while head:\n            head.next, prev, head = prev, head, head.next\n        return prev\n"
    )
    tree = {"check": "def check(candidate):\n"
                     "    assert is_same_tree(candidate(tree_node([1, 2, 3, None, 4])), tree_node([1, 3, 2, None, None, 4]))\n",
            "entry_point": "Solution().mirror", "setup": code_data.LEETCODE_PRELUDE}
    lst = {"check": "def check(candidate):\n    assert is_same_list(candidate(list_node([1, 2, 3])), list_node([3, 2, 1]))\n"
                    "    assert candidate(list_node([])) is None\n",
           "entry_point": "Solution().rev", "setup": code_data.LEETCODE_PRELUDE}
    assert score("code", fence(program), tree).correct
    assert score("code", fence(program), lst).correct
    wrong_tree = {**tree, "check": tree["check"].replace("[1, 3, 2,", "[1, 2, 3,")}
    assert not score("code", fence(program), wrong_tree).correct
    # pow keeps its three-argument builtin meaning under the prelude
    gt = {"asserts": ["assert f() == 1"], "setup": code_data.LEETCODE_PRELUDE}
    assert score("code", fence("def f():\n    return pow(3, 4, 5)"), gt).correct


def test_humaneval_helpers_are_the_data_sets() -> None:
    """HumanEval/32's check calls `poly` by name: the trusted copy from the prompt, not the program's."""
    with gzip.open(CODE / "HumanEval.jsonl.gz", "rt") as fh:
        row = [json.loads(line) for line in fh][32]
    gt = code_data.humaneval_ground_truth(row)
    assert "def poly" in gt["test_setup"] and "def find_zero" not in gt["test_setup"]
    reference = code_data.humaneval_reference(row)
    assert score("code", fence(reference), gt).correct
    cheat = reference + "\n\ndef poly(xs, x):\n    return 0.0\n\ndef find_zero(xs):\n    return 0.0\n"
    assert score("code", fence(cheat), gt).reason == "wrong_answer"
    stub = "from typing import List\n\ndef f(x: List[int]):\n    '''doc'''\n"
    assert code_data.prompt_helpers(stub, "f") == "from typing import List"
    with pytest.raises(BadGroundTruth, match="test_setup"):
        parse_ground_truth({"io": [{"input": "", "output": ""}], "test_setup": "x = 1"})
