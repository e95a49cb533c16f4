"""The trusted judge and its value encoding: exact Python semantics on the trusted side, strict
decoding of what the program sends, and the kernel limits of a run (cgroup, IPC, inodes)."""

from __future__ import annotations

import math
import os
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from rewards import RewardConfig, cgroups, score
from rewards import _wire as wire
from rewards import sandbox
from rewards.judge import CandidateAbort, CandidateError, SandboxEnded, _exception, _sync, compile_trusted

CFG = RewardConfig(code_test_timeout_s=8.0, code_total_timeout_s=20.0, hard_timeout_grace_s=1.0)
P = 2**61 - 1  # CPython's hash modulus for ints: x and x + k*P hash alike


class ListNode:
    def __init__(self, val=0, next=None):
        self.val, self.next = val, next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val, self.left, self.right = val, left, right


CLASSES = {"ListNode": ListNode, "TreeNode": TreeNode}


def roundtrip(value, known=None):
    enc = wire.Encoder()
    message = {"v": enc.value(value), "nodes": enc.table}
    back = wire.loads(wire.dumps(message))
    return wire.Decoder(CLASSES, back["nodes"], known).value(back["v"])


def fence(program: str) -> str:
    return "```python\n" + textwrap.dedent(program).strip("\n") + "\n```"


# ----------------------------------------------------------------------------- encoding
def test_roundtrip_keeps_types_and_values_exactly() -> None:
    from collections import Counter, OrderedDict, deque, namedtuple

    values = [None, True, False, 0, -7, 10**200, 1.5, -0.0, math.inf, -math.inf, "é\udcff", b"\x00\xff",
              bytearray(b"ab"), 2 + 3j, range(1, 10, 3), (1, (2, [3])), {1, 2.5, "x", (1, 2)}, frozenset({1}),
              {(1, 2): [1], frozenset({3}): {"a": None}, 1.5: True}, deque([1, 2]), [[]]]
    for v in values:
        back = roundtrip(v)
        assert type(back) is type(v) and back == v, (v, back)
    assert str(roundtrip(-0.0)) == "-0.0" and math.isnan(roundtrip(math.nan))
    assert roundtrip(True) is True and roundtrip(1) is not True and type(roundtrip(1)) is int
    # subclasses travel as their base type, with the base type's value
    Point = namedtuple("Point", "x y")
    assert type(roundtrip(Point(1, 2))) is tuple and roundtrip(Point(1, 2)) == (1, 2)
    assert type(roundtrip(Counter("aab"))) is dict and roundtrip(Counter("aab")) == {"a": 2, "b": 1}
    assert type(roundtrip(OrderedDict(a=1))) is dict
    it = roundtrip(iter([1, 2]))
    assert it != [1, 2] and list(it) == [1, 2]
    assert roundtrip({1: 2}.keys()) == {1} and list(roundtrip({1: 2}.items())) == [(1, 2)]


def test_nodes_keep_cycles_sharing_and_long_chains() -> None:
    a, b = ListNode(1), ListNode(2)
    a.next, b.next = b, a
    back = roundtrip(a)
    assert back.val == 1 and back.next.val == 2 and back.next.next is back
    leaf = TreeNode(3)
    root = TreeNode(1, leaf, leaf)
    back = roundtrip(root)
    assert back.left is back.right and back.left.val == 3 and back.left.left is None
    head = None
    for i in range(100_000):
        head = ListNode(i, head)
    back, n = roundtrip(head), 0
    while back:
        back, n = back.next, n + 1
    assert n == 100_000


def test_known_nodes_are_updated_in_place() -> None:
    a, b = ListNode(1), ListNode(2, None)
    a.next = b
    enc = wire.Encoder()
    enc.value(a)
    known = {enc.ids[id(n)]: n for n in enc.keep}
    # the sandbox reversed the list in place: 2 -> 1, same node ids
    table = [[enc.ids[id(b)], "ListNode", 2, enc.ids[id(a)]], [enc.ids[id(a)], "ListNode", 1, None]]
    head = wire.Decoder(CLASSES, table, known).value({"n": enc.ids[id(b)]})
    assert head is b and b.next is a and a.next is None


@pytest.mark.parametrize("message", [
    {"x": [1]}, {"t": [1], "s": [2]}, {"s": [[1]]}, {"d": [[[1], 2]]}, {"d": [[1]]}, {"n": 0}, {"c": [1, "2"]},
    {"r": [1, 2, 0]}, {"y": "zz"}, {"s": [i * P + 5 for i in range(1, 70)]}, {"d": [[i * P + 5, 0] for i in range(1, 70)]},
])
def test_decoder_refuses_malformed_or_hostile_values(message) -> None:
    with pytest.raises(wire.WireError):
        wire.Decoder(CLASSES, []).value(message)


def test_decoder_refuses_bad_node_tables() -> None:
    for table in ([[0, "Evil", 1, None]], [[0, "ListNode", 1, 7]], [[0, "ListNode", 1]], [[0, "ListNode", 1, None]] * 2, "x"):
        with pytest.raises(wire.WireError):
            wire.Decoder(CLASSES, table)
    with pytest.raises(wire.WireError):
        wire.loads(b"[1, 2")


def test_encoder_refuses_objects_of_other_classes() -> None:
    class Anything:
        def __eq__(self, other):
            return True

    for value in (Anything(), [1, Anything()], {"k": object()}, lambda: 1):
        with pytest.raises(wire.WireError):
            wire.Encoder().value(value)


# ----------------------------------------------------------------------------- judge pieces
def test_candidate_exceptions_are_rebuilt_from_builtins_only() -> None:
    assert type(_exception("ValueError", "bad", "error")) is ValueError
    assert type(_exception("KeyError", "k", "error")) is KeyError
    assert type(_exception("AssertionError", "no", "assert")) is AssertionError
    assert isinstance(_exception("MyError", "x", "error"), CandidateError)
    assert isinstance(_exception("SystemExit", "0", "error"), CandidateAbort)
    assert isinstance(_exception("__import__", "x", "error"), CandidateError)
    for kind, status in (("memory", "memory"), ("file_size", "output_limit")):
        e = _exception("MemoryError", "", kind)
        assert isinstance(e, SandboxEnded) and e.status == status
    assert not issubclass(SandboxEnded, Exception) and not issubclass(CandidateAbort, Exception)


def test_sync_writes_back_in_place() -> None:
    board = [[1, 2], [3]]
    row = board[0]
    _sync(board, [[9, 2], [3, 4], [5]])
    assert board == [[9, 2], [3, 4], [5]] and board[0] is row
    d = {"a": [1], "b": 2}
    _sync(d, {"a": [1, 2], "c": 3})
    assert d == {"a": [1, 2], "c": 3}
    s = {1}
    _sync(s, {2, 3})
    assert s == {2, 3}


def test_compile_trusted_finds_the_names_the_program_must_provide() -> None:
    _, free, self_invoking = compile_trusted(
        "import math\ndef check(candidate):\n    x = helper(1)\n    assert candidate(x) == math.pi\ncheck(Solution().f)\n", "t")
    assert free == {"helper", "Solution"} and self_invoking
    _, free, self_invoking = compile_trusted("assert f(1) == len([g])", "t2")
    assert free == {"f", "g"} and not self_invoking
    # a builtin name is the program's only as the function under test (MBPP 126 defines `sum`)
    assert compile_trusted("assert sum(10, 15) == 6", "t3")[1] == {"sum"}
    assert compile_trusted("assert sorted(f()) == [1, 2] and len(g(1)) == 2", "t4")[1] == {"f", "g"}
    assert compile_trusted("assert max([3, 1]) == 3 or min(x(2)) == 1", "t5")[1] == {"max", "x"}


# ----------------------------------------------------------------------------- through the sandbox
def test_an_error_the_test_would_swallow_still_fails() -> None:
    """The test catches every Exception; the program ending mid-call must not become a pass."""
    gt = {"check": "def check(candidate):\n    try:\n        candidate(1)\n    except Exception:\n        pass\n",
          "entry_point": "f"}
    programs = ("import os\ndef f(x):\n    os._exit(0)", "def f(x):\n    raise SystemExit(0)",
                "def f(x):\n    while True:\n        pass")
    for program in programs:
        result = score("code", fence(program), gt, config=CFG.replace(code_test_timeout_s=1.0))
        assert not result.correct, (program, result)
    assert score("code", fence("def f(x):\n    raise ValueError(x)"), gt, config=CFG).correct


def test_in_place_linked_list_and_values_the_test_keeps() -> None:
    from rewards import code_data

    program = """
    class Solution:
        def reorderList(self, head: Optional[ListNode]) -> None:
            nodes = []
            while head:
                nodes.append(head)
                head = head.next
            i, j = 0, len(nodes) - 1
            while i < j:
                nodes[i].next = nodes[j]
                i += 1
                if i == j:
                    break
                nodes[j].next = nodes[i]
                j -= 1
            nodes[i].next = None
    """
    check = ("def check(candidate):\n    head = list_node([1, 2, 3, 4])\n    assert candidate(head) is None\n"
             "    assert is_same_list(head, list_node([1, 4, 2, 3]))\n")
    gt = {"check": check, "entry_point": "Solution().reorderList", "setup": code_data.LEETCODE_PRELUDE}
    assert score("code", fence(program), gt, config=CFG).correct
    wrong = program.replace("nodes[i].next = None", "nodes[i].next = None\n            nodes[0].next = None")
    assert score("code", fence(wrong), gt, config=CFG).reason == "wrong_answer"


def test_too_large_a_value_is_an_output_limit() -> None:
    cfg = CFG.replace(code_max_message_mb=1)
    result = score("code", fence("def f():\n    return 'x' * (2 << 20)"), {"asserts": ["assert len(f()) > 0"]}, config=cfg)
    assert result.reason == "output_limit", result


# ----------------------------------------------------------------------------- kernel limits
needs_cgroups = pytest.mark.skipif(cgroups.detect().version is None, reason="no cgroups here (not root, or none mounted)")


@needs_cgroups
def test_each_run_gets_a_cgroup_that_is_removed_after() -> None:
    support = cgroups.detect()
    program = """
    def f():
        text = open("/proc/self/cgroup").read()
        return [line for line in text.splitlines() if "cispo-sandbox" in line]
    """
    test = "assert len(f()) >= 2 or (len(f()) == 1 and f()[0].startswith('0::'))"  # v1: memory and pids; v2: one line
    result = score("code", fence(program), {"asserts": [test]}, config=CFG)
    assert result.correct, result
    mine = [p for root in support.roots for p in Path(root).iterdir() if p.name.startswith(f"{os.getpid()}-")]
    assert mine == []


@needs_cgroups
def test_run_cgroup_limits_and_kill_by_membership() -> None:
    """Limits are written where the kernel enforces them; destroy() kills a double-forked daemon."""
    support = cgroups.detect()
    run = cgroups.create(support, 96 << 20, 5)
    try:
        memory = Path(run.memory_dir)
        limit_file = "memory.limit_in_bytes" if run.version == 1 else "memory.max"
        assert int((memory / limit_file).read_text()) == 96 << 20
        pids_dir = Path(run.dirs[-1])
        assert (pids_dir / "pids.max").read_text().strip() == "5"
        # a daemon (its parent exited) inside the cgroup: only membership can find it
        proc = subprocess.Popen(["sh", "-c", f"for d in {' '.join(run.dirs)}; do echo $$ > $d/cgroup.procs; done; "
                                 "sleep 60 >/dev/null 2>&1 & echo $!"], stdout=subprocess.PIPE, text=True)
        daemon = int(proc.communicate(timeout=10)[0].strip())
        assert daemon in cgroups.tasks(memory, run.version)
    finally:
        assert cgroups.destroy(run)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{daemon}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{daemon}").exists() and not memory.exists()


def _namespaces_here() -> bool:
    try:
        return sandbox.isolation(CFG).namespaces
    except sandbox.SandboxUnavailableError:
        return False


@pytest.mark.skipif(not _namespaces_here(), reason="namespace mode is not available here")
def test_ipc_and_inode_limits_in_namespace_mode() -> None:
    """As root and (in a user namespace) as an ordinary user; the program cannot raise them back."""
    cfg = CFG.replace(code_ipc_shm_mb=4, code_ipc_max_objects=3, code_max_inodes=200)
    program = """
    import os
    def f():
        read = lambda name: int(open(f"/proc/sys/kernel/{name}").read())
        n = 0
        try:
            for i in range(1000):
                open(f"f{i}", "w").close()
                n += 1
        except OSError:
            pass
        try:
            open("/proc/sys/kernel/shmmax", "w").write(str(1 << 40))
        except OSError:
            pass
        return read("shmmax"), read("shmmni"), read("msgmni"), n
    """
    test = f"m, s, q, n = f()\nassert (m, s, q) == ({4 << 20}, 3, 3) and n < 200, (m, s, q, n)"
    result = score("code", fence(program), {"asserts": [test]}, config=cfg)
    assert result.correct, result


def test_without_cgroups_it_warns_or_refuses() -> None:
    off = CFG.replace(code_use_cgroups=False)
    iso = sandbox.isolation(off)
    assert iso.cgroup is None and "no per-run cgroup" in iso.note and "memfd refused" in iso.note
    assert iso.level == sandbox.LEVEL_RLIMITS
    ok = score("code", fence("def f():\n    return 1"), {"asserts": ["assert f() == 1"]}, config=off)
    assert ok.correct, ok
    refused = score("code", fence("def f():\n    return 1"), {"asserts": ["assert f() == 1"]},
                    config=off.replace(code_require_cgroups=True))
    assert (refused.correct, refused.reason) == (False, "sandbox_error") and "refused" in refused.detail
