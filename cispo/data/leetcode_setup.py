"""Code that LeetCode-style solutions and tests assume but never define.

The rllm LeetCode files use `List`, `Optional`, `inf`, `defaultdict`, `pairwise`, ... without imports,
and their tests build linked lists and trees with `list_node`, `tree_node`, `is_same_list`,
`is_same_tree`. This prelude goes into the ground truth's `setup`, to run before the candidate's code.
`math` and `operator` names are imported one by one: a star import of either would shadow the builtin
(3-argument) `pow`.
"""

LEETCODE_SETUP = '''\
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
