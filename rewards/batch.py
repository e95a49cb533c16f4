"""Scoring many responses in parallel: a process pool with a hard deadline per task.

Workers are plain subprocesses (`python -c "from rewards._worker import main; main()"`)
talking length-prefixed pickles over pipes: no multiprocessing start-method pitfalls, no
re-import of the caller's `__main__`, no preexec_fn, so a pool works from any thread (Ray
actors included). A task that outlives its deadline gets its worker SIGKILLed (with its
process group) and replaced; its result says `timeout`. A worker that dies turns only its
current task into a result. `score_batch` never raises because of one item; it raises
`SandboxUnavailableError` for code items when `reward.code_isolation` cannot be met here.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from rewards import kinds
from rewards import types as R
from rewards.config import DEFAULT_CONFIG, RewardConfig, resolve_config
from rewards.extract import extract_code, extract_math_answer
from rewards.math_reward import TIMED_OUT
from rewards.types import RewardResult

HEADER = 8
PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
WORKER_CMD = (sys.executable, "-c", "from rewards._worker import main; main()")
MAX_START_FAILURES = 3


def default_workers() -> int:
    """One worker per CPU this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def send_frame(fd: int, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(len(data).to_bytes(HEADER, "big") + data)
    while view:
        view = view[os.write(fd, view):]


def recv_frame(fd: int) -> Any:
    """Read one frame; EOFError when the other side is gone."""
    size = int.from_bytes(_read_exact(fd, HEADER), "big")
    return pickle.loads(_read_exact(fd, size))


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        data = os.read(fd, n - got)
        if not data:
            raise EOFError("pipe closed")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


@dataclass
class _Task:
    op: str  # "score" or "verify"
    args: tuple
    deadline_s: float
    on_timeout: Any  # the result if the worker has to be killed
    on_crash: Any  # the result if the worker dies


class _Worker:
    def __init__(self, start_timeout_s: float) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            WORKER_CMD, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
            start_new_session=True, close_fds=True,
        )
        self.ready = False
        self.start_deadline = time.monotonic() + start_timeout_s
        self.task: int | None = None
        self.task_deadline = 0.0
        self.tasks_done = 0

    @property
    def out_fd(self) -> int:
        return self.proc.stdout.fileno()

    def send(self, obj: Any) -> None:
        send_frame(self.proc.stdin.fileno(), obj)

    def kill(self) -> None:
        if self.proc.returncode is None:  # never signal a reaped (reusable) pid
            try:
                os.killpg(self.proc.pid, 9)
            except OSError:
                pass
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class RewardPool:
    """A fixed number of scoring worker processes; reuse one across training steps."""

    def __init__(self, workers: int | None = None, *, config: RewardConfig | None = None) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int or None, got {workers!r}")
        self.size = workers or default_workers()
        self.config = config or DEFAULT_CONFIG
        self._workers: list[_Worker | None] = [None] * self.size
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._closed = False

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (they also exit by themselves when this process dies)."""
        with self._lock:
            self._closed = True
            if os.getpid() != self._owner:
                self._workers = [None] * self.size
                return
            for w in self._workers:
                if w is not None:
                    w.kill()
            self._workers = [None] * self.size

    # ------------------------------------------------------------------ public
    def score_batch(self, items: Iterable[Any], *, config: RewardConfig | None = None) -> list[RewardResult]:
        """Score items in parallel; results in input order. Never raises because of one item.

        An item is `{"kind", "response", "ground_truth", **options}` or a tuple
        `(kind, response, ground_truth[, options])`; options as in `rewards.score`.
        """
        items = list(items)
        results: list[Any] = [None] * len(items)
        tasks: list[_Task] = []
        index: list[int] = []
        for i, item in enumerate(items):
            try:
                kind, response, ground_truth, cfg = _normalize_item(item, config or self.config)
            except Exception as e:  # noqa: BLE001 - one bad item is one result
                cfg = config or self.config
                results[i] = RewardResult(cfg.wrong_reward, False, None, R.INVALID_ITEM, f"{type(e).__name__}: {e}")
                continue
            if kinds.get(kind).runs_code:
                _require_isolation(cfg)
            tasks.append(_score_task(kind, response, ground_truth, cfg))
            index.append(i)
        for i, res in zip(index, self.run(tasks)):
            results[i] = res
        return results

    def verify(self, gold: str, pred: str, timeout_s: float, grace_s: float, rel_tol: float | None = None) -> tuple[str, str]:
        """One math-verify equivalence check under a hard deadline (rel_tol: see verify_inline)."""
        task = _Task("verify", (gold, pred, timeout_s, rel_tol), timeout_s + grace_s,
                     (TIMED_OUT, f"math-verify worker killed after {timeout_s + grace_s:g}s"),
                     (TIMED_OUT, "math-verify worker died"))
        return self.run([task])[0]

    # ------------------------------------------------------------------ engine
    def run(self, tasks: Sequence[_Task]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise RuntimeError("RewardPool is closed")
            if os.getpid() != self._owner:  # forked: the workers belong to the parent
                self._workers, self._owner = [None] * self.size, os.getpid()
            return self._run(tasks)

    def _spawn(self, slot: int) -> _Worker | None:
        try:
            w = _Worker(self.config.pool_start_timeout_s)
        except OSError:
            return None
        self._workers[slot] = w
        return w

    def _run(self, tasks: Sequence[_Task]) -> list[Any]:
        results: list[Any] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        start_failures = 0
        done = 0
        while done < len(tasks):
            now = time.monotonic()
            # keep enough workers alive and hand out tasks
            needed = min(self.size, len(pending) + sum(1 for w in self._workers if w is not None and w.task is not None))
            for slot in range(self.size):
                w = self._workers[slot]
                if w is None and slot < max(needed, 1) and pending:
                    w = self._spawn(slot)
                    if w is None:
                        start_failures += 1
                if w is None or not w.ready or w.task is not None or not pending:
                    continue
                if w.proc.poll() is not None:  # died while idle: replace it, the task is not to blame
                    w.kill()
                    self._workers[slot] = None
                    continue
                i = pending.popleft()
                try:
                    w.send((i, tasks[i].op, tasks[i].args))
                except (BrokenPipeError, OSError):
                    pending.appendleft(i)
                    w.kill()
                    self._workers[slot] = None
                    continue
                w.task, w.task_deadline = i, now + tasks[i].deadline_s
            if start_failures > MAX_START_FAILURES * self.size:
                for i in pending:
                    results[i] = tasks[i].on_crash
                    done += 1
                pending.clear()
                if done >= len(tasks):
                    break
            live = [w for w in self._workers if w is not None]
            if not live:
                time.sleep(0.05)
                continue
            deadlines = [w.task_deadline if w.task is not None else (w.start_deadline if not w.ready else float("inf"))
                         for w in live]
            wait = max(0.0, min(deadlines) - time.monotonic())
            fds = [w.out_fd for w in live if not w.ready or w.task is not None]
            ready = select.select(fds, [], [], min(wait, 1.0))[0] if fds else []
            for slot, w in enumerate(self._workers):
                if w is None:
                    continue
                if w.out_fd in ready:
                    try:
                        msg = recv_frame(w.out_fd)
                    except (EOFError, OSError, pickle.UnpicklingError):
                        msg = None
                    if msg is None:  # worker died
                        if w.task is not None:
                            results[w.task] = tasks[w.task].on_crash
                            done += 1
                        else:
                            start_failures += 1
                        w.kill()
                        self._workers[slot] = None
                        continue
                    if not w.ready:
                        w.ready = True
                        continue
                    task_id, value = msg
                    if task_id == w.task:
                        results[task_id] = value
                        done += 1
                        w.task = None
                        w.tasks_done += 1
                        if w.tasks_done >= self.config.pool_max_tasks_per_worker:
                            w.kill()
                            self._workers[slot] = None
                    continue
                now = time.monotonic()
                if w.task is not None and now > w.task_deadline:
                    results[w.task] = tasks[w.task].on_timeout
                    done += 1
                    w.kill()
                    self._workers[slot] = None
                elif not w.ready and now > w.start_deadline:
                    start_failures += 1
                    w.kill()
                    self._workers[slot] = None
        return results


def _require_isolation(cfg: RewardConfig) -> None:
    """Code items: refuse the whole batch here, in the caller, when `reward.code_isolation` cannot
    be met (SandboxUnavailableError, one line), instead of one error result per item."""
    from rewards import sandbox  # lazily: math-only callers never load the sandbox

    sandbox.isolation(cfg)


def _normalize_item(item: Any, base: RewardConfig) -> tuple[str, Any, Any, RewardConfig]:
    if isinstance(item, dict):
        missing = [k for k in ("kind", "response", "ground_truth") if k not in item]
        if missing:
            raise ValueError(f"item is missing {missing}")
        options = {k: v for k, v in item.items() if k not in ("kind", "response", "ground_truth")}
        kind, response, ground_truth = item["kind"], item["response"], item["ground_truth"]
    elif isinstance(item, (tuple, list)) and len(item) in (3, 4):
        kind, response, ground_truth = item[0], item[1], item[2]
        options = dict(item[3]) if len(item) == 4 and item[3] is not None else {}
    else:
        raise ValueError("item must be a dict with kind/response/ground_truth or a "
                         "(kind, response, ground_truth[, options]) tuple")
    kinds.get(kind)  # ValueError naming the known kinds
    options.setdefault("config", base)
    return kind, response, ground_truth, resolve_config(options)


def _score_task(kind: str, response: Any, ground_truth: Any, cfg: RewardConfig) -> _Task:
    """A scoring task with the results to use if its worker must be killed or dies."""
    if kinds.get(kind).runs_code:
        deadline = cfg.code_total_timeout_s + 4 * cfg.hard_timeout_grace_s
        extracted = extract_code(response, cfg.code_extraction, think=cfg.strip_think) if isinstance(response, str) else None
    else:
        deadline = cfg.math_timeout_s + 2 * cfg.hard_timeout_grace_s
        extracted = extract_math_answer(response, cfg.math_formats, think=cfg.strip_think) if isinstance(response, str) else None
    value = cfg.wrong_reward + (cfg.format_reward if extracted is not None else 0.0)
    on_timeout = RewardResult(value, False, extracted, R.TIMEOUT, f"scoring worker killed after {deadline:g}s")
    on_crash = RewardResult(value, False, extracted, R.INTERNAL_ERROR, "scoring worker died")
    # The kind travels whole: a kind registered in this process is registered in the worker too.
    return _Task("score", (kinds.get(kind), response, ground_truth, cfg), deadline, on_timeout, on_crash)


# ---------------------------------------------------------------------- shared pools
_shared_lock = threading.Lock()
_shared: dict[int, RewardPool] = {}


def shared_pool(workers: int | None = None) -> RewardPool:
    """A process-wide pool per size, created on first use and closed at exit."""
    size = workers or default_workers()
    with _shared_lock:
        pool = _shared.get(size)
        if pool is None or pool._closed:
            pool = RewardPool(size)
            _shared[size] = pool
        return pool


@atexit.register
def _close_shared() -> None:
    for pool in list(_shared.values()):
        pool.close()


def score_batch(items: Iterable[Any], *, workers: int | None = None, config: RewardConfig | None = None) -> list[RewardResult]:
    """Score many items in parallel on a shared pool of `workers` processes (default: one per CPU)."""
    return shared_pool(workers).score_batch(items, config=config)


def guarded_verify(gold: str, pred: str, timeout_s: float, rel_tol: float | None = None) -> tuple[str, str]:
    """math-verify off this process, so a hang costs one killed worker, not the caller."""
    return shared_pool(1).verify(gold, pred, timeout_s, DEFAULT_CONFIG.hard_timeout_grace_s, rel_tol)
