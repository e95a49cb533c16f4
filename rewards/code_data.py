"""Map the shared code data sets' rows onto the three ground-truth forms.

Data loaders (cispo/data) call these so that rewards and loaders agree on one mapping; the
benchmark uses them too. Each `*_ground_truth` returns the dict `score("code", ...)` takes;
`*_reference` returns the data set's own solution as a program.
"""

from __future__ import annotations

import re
from typing import Any

# LeetCode solutions use these names without importing them (the judge pre-imports them), and
# the tests use the list/tree helpers. Written for this project.
LEETCODE_PRELUDE = '''\
import bisect, collections, functools, heapq, itertools, math, operator, random, re, string
from bisect import *
from collections import *
from functools import *
from heapq import *
from itertools import *
from string import *
from typing import *
from math import (
    ceil, comb, factorial, floor, gcd, inf, isqrt, lcm, log, log2, log10, perm, prod, sqrt,
)


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
    """Linked list from a Python list (None for an empty list)."""
    head = None
    for v in reversed(list(values)):
        head = ListNode(v, head)
    return head


def is_same_list(a, b):
    while a is not None and b is not None:
        if a.val != b.val:
            return False
        a, b = a.next, b.next
    return a is None and b is None


def tree_node(values):
    """Binary tree from LeetCode's level-order list (None marks a missing child)."""
    values = list(values)
    if not values or values[0] is None:
        return None
    root = TreeNode(values[0])
    queue = deque([root])
    i = 1
    while queue and i < len(values):
        node = queue.popleft()
        if i < len(values) and values[i] is not None:
            node.left = TreeNode(values[i])
            queue.append(node.left)
        i += 1
        if i < len(values) and values[i] is not None:
            node.right = TreeNode(values[i])
            queue.append(node.right)
        i += 1
    return root


def is_same_tree(a, b):
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is None and y is None:
            continue
        if x is None or y is None or x.val != y.val:
            return False
        stack.append((x.left, y.left))
        stack.append((x.right, y.right))
    return True
'''

_CHECK_CALL = re.compile(r"^check\((.+)\)\s*$")


def humaneval_ground_truth(row: dict[str, Any]) -> dict[str, Any]:
    return {"check": row["test"], "entry_point": row["entry_point"]}


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


def codeforces_ground_truth(row: dict[str, Any]) -> dict[str, Any]:
    return {"io": [{"input": t["input"], "output": t["output"]} for t in row["tests"]]}
