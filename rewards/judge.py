"""The trusted judge: runs the tests here, against proxies of the program in the sandbox.

Why: when tests run in the program's own process, the program can answer `==` with anything,
find the harness's report function, read the expected values or patch the helpers the tests
use. Here the test code (asserts, `check(candidate)`, the ground truth's setup) runs in this
process, which never executes model code; every name the tests use that the trusted setup does
not define is looked up in the program (a callable or class becomes a proxy, data becomes a
value), every call crosses to the sandbox as data (`rewards._wire`), and every comparison
happens here, on built-in values. In-place changes the program makes to its arguments are
written back into the caller's objects (lists, dicts, sets, linked-list and tree nodes).
"""

from __future__ import annotations

import ast
import builtins
import functools
import os
import re
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rewards import _wire as wire

FRAME_HEADER = 8
CTL_MAX = 1 << 16
DETAIL_CAP = 300
_ENTRY = re.compile(r"([A-Za-z_]\w*)(?:\(\))?\.([A-Za-z_]\w*)")


class SandboxEnded(BaseException):
    """The test process ended (limit, crash, exit) or broke the protocol: the test is over.

    A BaseException so that a test's `except Exception` cannot turn it into a pass."""

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(f"{status}: {detail}")
        self.status, self.detail = status, detail


class CandidateAbort(BaseException):
    """The candidate raised SystemExit, KeyboardInterrupt or another non-Exception."""


class CandidateError(Exception):
    """The candidate raised an exception that is not a built-in one (its name is in the message)."""


@dataclass
class Outcome:
    """One test's verdict: pass, fail, error, timeout, memory, output_limit, leftover, skipped."""

    status: str
    detail: str = ""
    extra: dict = field(default_factory=dict)


def _exception(name: Any, msg: Any, kind: Any) -> BaseException:
    """The candidate's exception, rebuilt from its name: built-in Exception types only."""
    name, msg = str(name)[:DETAIL_CAP], str(msg)[:DETAIL_CAP]
    if kind == "memory":
        return SandboxEnded("memory", f"{name}: {msg}")
    if kind == "file_size":
        return SandboxEnded("output_limit", f"{name}: {msg}")
    cls = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, Warning):
        try:
            return cls(msg)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs five arguments
            return CandidateError(f"{name}: {msg}")
    if isinstance(cls, type) and issubclass(cls, BaseException):
        return CandidateAbort(f"{name}: {msg}")
    return CandidateError(f"{name}: {msg}")


class Channel:
    """The judge's side of one run: the control socket to the supervisor and, during a test, the
    data socket to the test process. Every wait has a deadline and watches the control socket."""

    def __init__(self, ctl: socket.socket, max_message: int) -> None:
        self.ctl = ctl
        self.max_message = max_message
        self.data: socket.socket | None = None
        self.deadline = float("inf")
        self.ended: dict | None = None  # the supervisor's `ended` event of the current test

    # -- control
    def ctl_send(self, msg: dict) -> None:
        try:
            self.ctl.send(wire.dumps(msg))
        except OSError as e:
            raise SandboxEnded("error", f"the sandbox is gone ({e})") from None

    def _ctl_event(self) -> dict:
        try:
            data, fds, _, _ = socket.recv_fds(self.ctl, CTL_MAX, 1)
        except OSError as e:
            raise SandboxEnded("error", f"the sandbox is gone ({e})") from None
        if not data:
            for fd in fds:
                os.close(fd)
            raise SandboxEnded("error", "the sandbox ended unexpectedly")
        msg = wire.loads(data)
        if not isinstance(msg, dict):
            raise SandboxEnded("error", "bad control message")
        if msg.get("event") == "started" and len(fds) == 1:
            self.data = socket.socket(fileno=fds[0])
            self.data.setblocking(False)
        else:
            for fd in fds:
                os.close(fd)
        if msg.get("event") == "ended":
            self.ended = msg
        if msg.get("event") == "failed":
            raise SandboxEnded("error", f"harness failed: {str(msg.get('detail'))[:DETAIL_CAP]}")
        return msg

    def wait_event(self, deadline: float, *names: str) -> dict:
        """The next control event with one of these names (an `ended` is also remembered)."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SandboxEnded("timeout", f"no {'/'.join(names)} event from the sandbox in time")
            ready, _, _ = select.select([self.ctl], [], [], left)
            if ready:
                msg = self._ctl_event()
                if msg.get("event") in names:
                    return msg

    # -- data
    def _wait(self, write: bool) -> None:
        """Until the data socket is ready; SandboxEnded when the test ended or time ran out."""
        assert self.data is not None
        while True:
            if self.ended is not None:
                raise SandboxEnded(str(self.ended.get("status")), str(self.ended.get("detail", "")))
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise SandboxEnded("timeout", "the test ran out of time")
            r, w, _ = select.select([self.ctl] + ([] if write else [self.data]), [self.data] if write else [], [], left)
            if self.ctl in r:
                self._ctl_event()
                continue
            if r or w:
                return

    def _send(self, payload: bytes) -> None:
        view = memoryview(len(payload).to_bytes(FRAME_HEADER, "big") + payload)
        while view:
            self._wait(write=True)
            try:
                view = view[self.data.send(view):]
            except BlockingIOError:
                continue
            except OSError as e:
                raise SandboxEnded("error", f"the test process closed its channel ({e})") from None

    def _recv_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            self._wait(write=False)
            try:
                data = self.data.recv(min(n - got, 1 << 20))
            except BlockingIOError:
                continue
            except OSError as e:
                raise SandboxEnded("error", f"the test process closed its channel ({e})") from None
            if not data:
                # The process is gone; its `ended` event (with the reason) is on its way.
                if self.ended is None:
                    self.wait_event(self.deadline, "ended")
                raise SandboxEnded(str(self.ended.get("status")), str(self.ended.get("detail", "")))
            chunks.append(data)
            got += len(data)
        return b"".join(chunks)

    def receive(self) -> Any:
        size = int.from_bytes(self._recv_exact(FRAME_HEADER), "big")
        if size > self.max_message:
            raise SandboxEnded("output_limit", f"a value of {size} bytes is larger than {self.max_message}")
        try:
            return wire.loads(self._recv_exact(size))
        except wire.WireError as e:
            raise SandboxEnded("error", f"bad message from the program: {e}") from None

    def request(self, msg: dict) -> dict:
        self._send(wire.dumps(msg))
        reply = self.receive()
        if not isinstance(reply, dict):
            raise SandboxEnded("error", "bad reply from the program")
        if "raise" in reply:
            info = reply["raise"]
            if not isinstance(info, list) or len(info) != 3:
                raise SandboxEnded("error", "bad reply from the program")
            raise _exception(*info)
        return reply


def _sync(old: Any, new: Any) -> None:
    """Write the sandbox's post-call state of an argument back into the caller's object."""
    if type(old) is list and type(new) is list:
        for i in range(min(len(old), len(new))):
            if type(old[i]) in (list, dict, set) and type(old[i]) is type(new[i]):
                _sync(old[i], new[i])
            else:
                old[i] = new[i]
        del old[len(new):]
        old.extend(new[len(old):])
    elif type(old) is dict and type(new) is dict:
        for k in [k for k in old if k not in new]:
            del old[k]
        for k, v in new.items():
            if k in old and type(old[k]) in (list, dict, set) and type(old[k]) is type(v):
                _sync(old[k], v)
            else:
                old[k] = v
    elif type(old) is set and type(new) is set:
        old.clear()
        old.update(new)


class Remote:
    """Proxies of the program's objects. They hold a handle, never a value: any data they hand
    to the tests comes from a strict decode; comparing a proxy is by identity (never equal)."""

    def __init__(self, judge: "Judge", handle: int, kind: str, name: str) -> None:
        object.__setattr__(self, "_judge", judge)
        object.__setattr__(self, "_handle", handle)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_name", name)

    def __repr__(self) -> str:
        return f"<sandboxed {self._kind} {self._name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._kind not in ("callable", "class"):
            raise TypeError(f"{self._name} is not callable")
        return self._judge.call(self, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._judge.getattr(self, name)


class Judge:
    """Runs one program's trusted tests over a Channel."""

    def __init__(self, channel: Channel, node_classes: dict[str, type]) -> None:
        self.channel = channel
        self.node_classes = node_classes

    def _from_description(self, reply: dict, name: str) -> Any:
        kind = reply.get("kind")
        if kind == "missing":
            raise NameError(f"name {name!r} is not defined")
        if kind in ("callable", "class", "object"):
            h = reply.get("h")
            if type(h) is not int:
                raise SandboxEnded("error", "bad reply from the program")
            return Remote(self, h, kind, name)
        if kind == "value":
            try:
                return wire.Decoder(self.node_classes, reply.get("nodes", [])).value(reply.get("v"))
            except (wire.WireError, RecursionError) as e:
                raise SandboxEnded("error", f"bad value from the program: {e}") from None
        raise SandboxEnded("error", "bad reply from the program")

    def lookup(self, name: str) -> Any:
        return self._from_description(self.channel.request({"op": "lookup", "name": name}), name)

    def getattr(self, obj: Remote, name: str) -> Any:
        reply = self.channel.request({"op": "getattr", "h": obj._handle, "name": name})
        if reply.get("kind") == "missing":
            raise AttributeError(name)
        return self._from_description(reply, f"{obj._name}.{name}")

    def call(self, fn: Remote, args: tuple, kwargs: dict) -> Any:
        enc = wire.Encoder()
        try:
            msg = {"op": "call", "h": fn._handle, "args": enc.value(list(args)),
                   "kwargs": enc.value(dict(kwargs)), "nodes": enc.table}
        except wire.WireError as e:
            raise TypeError(f"cannot pass these arguments to the sandboxed program: {e}") from None
        known = {nid: obj for obj in enc.keep for nid in [enc.ids[id(obj)]]}
        reply = self.channel.request(msg)
        kind = reply.get("kind")
        try:
            dec = wire.Decoder(self.node_classes, reply.get("nodes", []), known)
            if kind == "value":
                result = dec.value(reply.get("v"))
            elif kind == "object" and type(reply.get("h")) is int:
                result = Remote(self, reply["h"], "object", f"{fn._name}(...)")
            else:
                raise wire.WireError("bad call reply")
            if "args" in reply and "kwargs" in reply:
                new_args, new_kwargs = dec.value(reply["args"]), dec.value(reply["kwargs"])
                if type(new_args) is list and len(new_args) == len(args):
                    for old, new in zip(args, new_args):
                        _sync(old, new)
                if type(new_kwargs) is dict:
                    for k, old in kwargs.items():
                        if k in new_kwargs:
                            _sync(old, new_kwargs[k])
        except (wire.WireError, RecursionError) as e:
            raise SandboxEnded("error", f"bad value from the program: {e}") from None
        return result

    def entry_point(self, entry: str | None) -> Any:
        """The candidate handed to check(): a function, or a method of a fresh `Solution()`."""
        if not entry:
            raise NameError("no entry point given for check(candidate)")
        m = _ENTRY.fullmatch(entry)
        if m:
            return getattr(self.lookup(m.group(1))(), m.group(2))
        try:
            return self.lookup(entry)
        except NameError:
            pass
        try:
            solution = self.lookup("Solution")
        except NameError:
            raise NameError(f"entry point {entry!r} is not defined") from None
        if isinstance(solution, Remote) and solution._kind == "class":
            try:
                return getattr(solution(), entry)
            except AttributeError:
                pass
        raise NameError(f"entry point {entry!r} is not defined")


def _uses_a_name(node: ast.AST) -> bool:
    """Whether an expression reads any name that is not a builtin (a variable, a program function)."""
    return any(isinstance(n, ast.Name) and not hasattr(builtins, n.id) for n in ast.walk(node))


def _builtins_under_test(tree: ast.Module) -> frozenset[str]:
    """Builtin names an assert calls as the function under test: the outermost call of a side of
    the comparison, on arguments made of literals and builtins only (MBPP's `assert sum(10, 15) == 6`
    tests a program's `sum`; in `assert sorted(f()) == [...]` or `len(x)` the builtin stays)."""
    found: set[str] = set()
    for stmt in tree.body:
        if not isinstance(stmt, ast.Assert):
            continue
        for cmp in [n for n in ast.walk(stmt.test) if isinstance(n, ast.Compare)]:
            for side in [cmp.left, *cmp.comparators]:
                if (isinstance(side, ast.Call) and isinstance(side.func, ast.Name) and hasattr(builtins, side.func.id)
                        and not any(_uses_a_name(a) for a in [*side.args, *side.keywords])):
                    found.add(side.func.id)
    return frozenset(found)


@functools.lru_cache(maxsize=256)
def compile_trusted(source: str, filename: str) -> tuple[Any, frozenset[str], bool]:
    """(code, names to look up in the program, calls check() itself). The names: those the code
    reads but never binds and that are not builtins, plus builtins called as the function under
    test (`_builtins_under_test`)."""
    tree = ast.parse(source, filename)
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    loaded = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    stored |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    self_invoking = any(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name) and node.value.func.id == "check"
        for node in tree.body
    )
    free = frozenset(n for n in loaded - bound - stored if not hasattr(builtins, n)) | _builtins_under_test(tree)
    return compile(tree, filename, "exec"), free, self_invoking


def _node_classes(ns: dict) -> dict[str, type]:
    out = {}
    for name, fallback in (("ListNode", _ListNode), ("TreeNode", _TreeNode)):
        cls = ns.get(name)
        out[name] = cls if isinstance(cls, type) else fallback
    return out


class _ListNode:
    def __init__(self, val: Any = 0, next: Any = None) -> None:
        self.val, self.next = val, next


class _TreeNode:
    def __init__(self, val: Any = 0, left: Any = None, right: Any = None) -> None:
        self.val, self.left, self.right = val, left, right


@dataclass(frozen=True)
class TrustedTest:
    """One test: its compiled code, and for `check` tests the entry point to hand to check()."""

    source: str
    entry_point: str | None = None
    is_check: bool = False


def run_test(channel: Channel, test: TrustedTest, setup: Any, deadline: float) -> Outcome:
    """Run one test against the test process that was just started; the supervisor is told to
    stop it afterwards. `setup` is the compiled trusted setup (or None)."""
    channel.deadline = deadline
    outcome: Outcome
    try:
        ready = channel.receive()
        if not isinstance(ready, dict):
            raise SandboxEnded("error", "bad ready message")
        if "raise" in ready:
            info = ready["raise"] if isinstance(ready["raise"], list) and len(ready["raise"]) == 3 else ["?", "", "error"]
            status = "memory" if info[2] == "memory" else "output_limit" if info[2] == "file_size" else "error"
            return Outcome(status, f"the program raised {str(info[0])[:80]}: {str(info[1])[:DETAIL_CAP]}")
        code, free, self_invoking = compile_trusted(test.source, "test.py")
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        if setup is not None:
            exec(setup, ns)
        judge = Judge(channel, _node_classes(ns))
        for name in sorted(free - set(ns)):
            try:
                ns[name] = judge.lookup(name)
            except NameError:
                pass
        exec(code, ns)
        if test.is_check and not self_invoking:
            check: Callable = ns["check"]
            check(judge.entry_point(test.entry_point))
        outcome = Outcome("pass")
    except SandboxEnded as e:
        outcome = Outcome(e.status, e.detail)
    except AssertionError as e:
        outcome = Outcome("fail", f"AssertionError: {str(e)[:DETAIL_CAP]}")
    except CandidateAbort as e:
        outcome = Outcome("error", str(e)[:DETAIL_CAP])
    except Exception as e:  # noqa: BLE001 - any other failure of the tests is this test's error
        outcome = Outcome("error", f"{type(e).__name__}: {str(e)[:DETAIL_CAP]}")
    if channel.ended is not None and outcome.status == "pass":
        outcome = Outcome(str(channel.ended.get("status")), str(channel.ended.get("detail", "")))
    return outcome


def combine(judged: Outcome, supervised: dict) -> Outcome:
    """The test's verdict from the judge's outcome and the supervisor's `ended` event."""
    status = str(supervised.get("status"))
    detail = str(supervised.get("detail", ""))[:DETAIL_CAP]
    tail = supervised.get("stderr_tail")
    extra = {"stderr_tail": str(tail)[-DETAIL_CAP:]} if tail else {}
    if status == "ok":
        return Outcome(judged.status, judged.detail, extra)
    if status == "leftover":
        return Outcome(judged.status, judged.detail, extra) if judged.status != "pass" else Outcome(status, detail, extra)
    if judged.status in ("fail", "error") and status not in ("timeout", "memory", "output_limit"):
        return Outcome(judged.status, judged.detail, extra)
    return Outcome(status, detail, extra)
