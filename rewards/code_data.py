"""Map the shared code data sets' rows onto the three ground-truth forms.

Data loaders (cispo/data) call these so that rewards and loaders agree on one mapping; the
benchmark uses them too. Each `*_ground_truth` returns the dict `score("code", ...)` takes;
`*_reference` returns the data set's own solution as a program.
"""

from __future__ import annotations

import ast
import re
from typing import Any

# LeetCode solutions use these names without importing them (the judge pre-imports them), and
# the tests use the list/tree helpers. Written for this project.
LEETCODE_PRELUDE = '''\
import bisect
import collections
import datetime
import functools
import heapq
import itertools
import math
import operator
import random
import re
import string
import sys
from typing import *  # first: its Counter, OrderedDict, ... aliases are replaced by the real classes below
from bisect import *
from collections import *
from functools import *
from heapq import *
from itertools import *
from math import (
    acos, asin, atan, atan2, ceil, comb, cos, degrees, exp, factorial, floor, gcd, hypot, inf, isqrt, lcm, log,
    log2, log10, perm, pi, prod, radians, sin, sqrt, tan,
)
from operator import add, and_, attrgetter, floordiv, itemgetter, methodcaller, mod, mul, neg, or_, sub, truediv, xor
from string import ascii_letters, ascii_lowercase, ascii_uppercase


class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right


def list_node(values):
    head = ListNode()
    tail = head
    for value in values:
        tail.next = ListNode(value)
        tail = tail.next
    return head.next


def is_same_list(a, b):
    while a is not None and b is not None:
        if a.val != b.val:
            return False
        a, b = a.next, b.next
    return a is None and b is None


def tree_node(values):
    """A tree from LeetCode's level-order list, None marking a missing child."""
    if not values or values[0] is None:
        return None
    root = TreeNode(values[0])
    frontier = collections.deque([root])
    index = 1
    while frontier and index < len(values):
        node = frontier.popleft()
        for side in ("left", "right"):
            if index < len(values):
                if values[index] is not None:
                    child = TreeNode(values[index])
                    setattr(node, side, child)
                    frontier.append(child)
                index += 1
    return root


def is_same_tree(a, b):
    if a is None or b is None:
        return a is b
    return a.val == b.val and is_same_tree(a.left, b.left) and is_same_tree(a.right, b.right)
'''

_CHECK_CALL = re.compile(r"^check\((.+)\)\s*$")


def humaneval_ground_truth(row: dict[str, Any]) -> dict[str, Any]:
    """The check, plus the prompt's helpers (imports, `poly`, `encode_cyclic`, ...) as trusted-only
    setup: a test that calls a helper by name then calls the data set's, not the program's."""
    gt: dict[str, Any] = {"check": row["test"], "entry_point": row["entry_point"]}
    helpers = prompt_helpers(row["prompt"], row["entry_point"])
    if helpers:
        gt["test_setup"] = helpers
    return gt


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's code without the function the model must write (empty if it has nothing else)."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    keep = [n for n in tree.body
            if not (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point)
            and not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    return ast.unparse(ast.Module(body=keep, type_ignores=[])) if keep else ""


def humaneval_reference(row: dict[str, Any]) -> str:
    return row["prompt"] + row["canonical_solution"]


def mbpp_ground_truth(row: dict[str, Any]) -> dict[str, Any]:
    gt: dict[str, Any] = {"asserts": list(row["test_list"])}
    if row.get("test_imports"):
        gt["setup"] = "\n".join(row["test_imports"])
    return gt


def mbpp_reference(row: dict[str, Any]) -> str:
    return row["code"]


def leetcode_ground_truth(row: dict[str, Any]) -> dict[str, Any]:
    """rllm's `check(candidate)` test; its trailing `check(Solution().m)` becomes the entry point."""
    tests = row["tests"]
    source = tests["functional"] if isinstance(tests, dict) else str(tests)
    lines = source.rstrip().splitlines()
    entry_point = None
    if lines:
        m = _CHECK_CALL.match(lines[-1].strip())
        if m:
            entry_point = m.group(1).strip()
            source = "\n".join(lines[:-1]) + "\n"
    gt: dict[str, Any] = {"check": source, "setup": LEETCODE_PRELUDE}
    if entry_point:
        gt["entry_point"] = entry_point
    return gt


def leetcode_reference(row: dict[str, Any]) -> str:
    return row["solutions"] if isinstance(row["solutions"], str) else row["solutions"][0]


class BadTestsError(ValueError):
    """A row's tests cannot become a ground truth; names the field (``tests[3].output``)."""

    def __init__(self, field_name: str, problem: str) -> None:
        self.field, self.problem = field_name, problem
        super().__init__(f"field {field_name!r}: {problem}")


def codeforces_ground_truth(row: dict[str, Any]) -> dict[str, Any]:
    """A Codeforces row's ``tests`` (a non-empty list of {input, output} strings) as stdin/stdout cases."""
    tests = row.get("tests")
    if not isinstance(tests, list) or not tests:
        raise BadTestsError("tests", f"expected a non-empty list of {{input, output}}, got {tests!r:.80}")
    cases = []
    for number, case in enumerate(tests):
        if not isinstance(case, dict):
            raise BadTestsError(f"tests[{number}]", f"expected an object, got {type(case).__name__}")
        for key in ("input", "output"):
            if not isinstance(case.get(key), str):
                raise BadTestsError(f"tests[{number}].{key}", f"expected a string, got {case.get(key)!r:.80}")
        cases.append({"input": case["input"], "output": case["output"]})
    return {"io": cases}
