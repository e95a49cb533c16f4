"""Batch scoring (process pool, order, robustness, threads/processes/Ray), shaping and config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rewards import RewardConfig, RewardPool, apply_overlong_shaping, overlong_keep_mask, overlong_penalty, score, score_batch
from rewards.batch import _Task
from rewards.math_reward import TIMED_OUT

ROOT = Path(__file__).resolve().parents[3]
HANG = "\\boxed{9^{9^{9^{9}}}}"  # math-verify/sympy grinds on this far beyond any limit
CODE_OK = "```python\ndef f(x):\n    return x + 1\n```"
CODE_GT = {"asserts": ["assert f(1) == 2"]}


# ----------------------------------------------------------------------------- batches
def test_order_is_preserved_across_kinds() -> None:
    items = []
    expected = []
    for i in range(12):
        items.append(("math", f"\\boxed{{{i}}}", str(i if i % 3 else i + 1)))
        expected.append(bool(i % 3))
        items.append({"kind": "aime", "response": f"Answer: {i:03d}", "ground_truth": i})
        expected.append(True)
    items.insert(5, ("code", CODE_OK, CODE_GT))
    expected.insert(5, True)
    items.insert(9, ("code", CODE_OK.replace("+ 1", "+ 2"), CODE_GT))
    expected.insert(9, False)
    results = score_batch(items, workers=2)
    assert [r.correct for r in results] == expected
    assert [r.extracted for r in results][:2] == ["0", "000"]


def test_one_bad_item_never_raises() -> None:
    items = [
        ("math", "\\boxed{1}", "1"),
        ("physics", "x", "y"),  # unknown kind
        {"kind": "math", "response": "x"},  # missing ground truth
        ("math", "\\boxed{1}", "1", {"no_such_option": 1}),
        ("math", "\\boxed{1}", "1", {"math_timeout_s": -1}),
        42,
        ("code", CODE_OK, {"bogus": 1}),
        ("math", None, "1"),
        ("math", "\\boxed{2}", "2", {"correct_reward": 5.0}),
    ]
    results = score_batch(items)
    assert [r.reason for r in results] == [
        "correct", "invalid_item", "invalid_item", "invalid_item", "invalid_item", "invalid_item",
        "bad_ground_truth", "no_answer", "correct",
    ]
    assert "reward.math_timeout_s" in results[4].detail
    assert results[8].score == 5.0
    assert score_batch([]) == []


def test_hanging_item_costs_one_timeout_not_the_batch() -> None:
    cfg = RewardConfig(math_timeout_s=1.0, hard_timeout_grace_s=1.0)
    items = [("math", "\\boxed{3}", "3"), ("math", HANG, "1"), ("math", "\\boxed{\\frac{1}{2}}", "0.5")]
    start = time.perf_counter()
    results = score_batch(items, workers=2, config=cfg)
    assert [r.reason for r in results] == ["correct", "timeout", "correct"]
    assert time.perf_counter() - start < 1.0 + 2 * 1.0 + 30


def test_hard_deadline_kills_a_stuck_worker() -> None:
    """The soft SIGALRM limit is set out of reach here: only the pool's SIGKILL can end the task."""
    with RewardPool(1) as pool:
        stuck = _Task("verify", ("1", "9^{9^{9^{9}}}", 1000.0), 1.5, (TIMED_OUT, "killed"), (TIMED_OUT, "died"))
        start = time.perf_counter()
        assert pool.run([stuck]) == [(TIMED_OUT, "killed")]
        assert time.perf_counter() - start < 60  # includes starting the worker
        assert pool._workers[0] is None  # killed, replaced on next use
        assert pool.score_batch([("math", "\\boxed{\\frac{3}{6}}", "0.5")])[0].correct


def test_worker_death_is_one_result_and_the_pool_recovers() -> None:
    slow = "```python\nimport time\ndef f(x):\n    time.sleep(20)\n    return x + 1\n```"
    with RewardPool(1) as pool:
        pool.score_batch([("math", "\\boxed{1}", "1")])  # start the worker
        victim = pool._workers[0].proc.pid

        def kill_soon() -> None:
            time.sleep(1.0)
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        results = pool.score_batch([("code", slow, CODE_GT)])
        killer.join()
        assert results[0].reason == "internal_error" and "died" in results[0].detail
        assert pool.score_batch([("code", CODE_OK, CODE_GT)])[0].correct


def test_workers_are_recycled() -> None:
    with RewardPool(1, config=RewardConfig(pool_max_tasks_per_worker=2)) as pool:
        pids = []
        for i in range(3):
            assert pool.score_batch([("math", f"\\boxed{{{i}}}", str(i))])[0].correct
            pids.append(pool._workers[0].proc.pid if pool._workers[0] is not None else None)
        assert pids[1] is None and pids[0] is not None  # replaced after its second task


def test_pool_arguments() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers"):
            RewardPool(bad)
    pool = RewardPool(1)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.run([])


# ----------------------------------------------------------------------------- callers
def test_score_from_threads() -> None:
    cfg = RewardConfig(math_timeout_s=1.0)

    def job(i: int):
        assert threading.current_thread() is not threading.main_thread()
        if i == 0:
            return score("math", HANG, "1", config=cfg).reason
        if i == 1:
            return score("code", CODE_OK, CODE_GT).reason
        return score("math", f"\\boxed{{\\frac{{{i}}}{{2}}}}", str(i / 2)).reason

    with ThreadPoolExecutor(4) as ex:
        reasons = list(ex.map(job, range(6)))
    assert reasons == ["timeout", "correct", "correct", "correct", "correct", "correct"]


def test_score_from_a_worker_process_thread() -> None:
    """A child process (like a Ray worker) calling score from a non-main thread, without a __main__ guard."""
    script = textwrap.dedent(f"""
        import sys, threading
        sys.path.insert(0, {str(ROOT)!r})
        from rewards import score, score_batch, RewardConfig
        out = []
        def work():
            cfg = RewardConfig(math_timeout_s=1.0)
            out.append(score("math", {HANG!r}, "1", config=cfg).reason)
            out.append(score_batch([("math", "\\\\boxed{{2}}", "2"), ("code", {CODE_OK!r}, {CODE_GT!r})])[1].reason)
        t = threading.Thread(target=work)
        t.start()
        t.join()
        print(",".join(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "timeout,correct"


@pytest.mark.slow
def test_score_inside_a_ray_actor_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    @ray.remote(max_concurrency=2)
    class Scorer:
        def run(self) -> tuple[bool, str, str]:
            import threading as th

            from rewards import RewardConfig as Cfg, score as sc

            on_main = th.current_thread() is th.main_thread()
            math_reason = sc("math", HANG, "1", config=Cfg(math_timeout_s=1.0)).reason
            code_reason = sc("code", CODE_OK, CODE_GT).reason
            return on_main, math_reason, code_reason

    started = not ray.is_initialized()  # another test module may have left a cluster up
    if started:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actor = Scorer.remote()
        on_main, math_reason, code_reason = ray.get(actor.run.remote(), timeout=240)
        assert (on_main, math_reason, code_reason) == (False, "timeout", "correct")
        ray.kill(actor)
    finally:
        if started:
            ray.shutdown()


# ----------------------------------------------------------------------------- shaping
def _penalty_by_hand(length: int, max_len: int, cache_len: int) -> float:
    """Second formula: the overshoot into the cache window as a fraction, capped at -1."""
    if length > max_len:
        return -1.0
    overshoot = length - (max_len - cache_len)
    return -max(0.0, overshoot / cache_len) if cache_len else 0.0


@pytest.mark.parametrize(
    "length, expected",
    [(0, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (19, -0.75), (20, -1.0), (21, -1.0), (10**6, -1.0)],
)
def test_overlong_penalty_small(length: int, expected: float) -> None:
    assert overlong_penalty(length, 20, 4) == expected
    assert overlong_penalty(length, 20, 4) == pytest.approx(_penalty_by_hand(length, 20, 4))


def test_overlong_penalty_paper_values() -> None:
    # DAPO: L_max = 20480, L_cache = 4096 -> free up to 16384 tokens
    assert overlong_penalty(16384, 20480, 4096) == 0.0
    assert overlong_penalty(18432, 20480, 4096) == -0.5
    assert overlong_penalty(20480, 20480, 4096) == -1.0
    assert overlong_penalty(20481, 20480, 4096) == -1.0
    for n in range(16000, 21000, 37):
        assert overlong_penalty(n, 20480, 4096) == pytest.approx(_penalty_by_hand(n, 20480, 4096))
    assert overlong_penalty(11, 10, 0) == -1.0 and overlong_penalty(10, 10, 0) == 0.0
    for bad in ((-1, 10, 2), (5, 0, 0), (5, 10, 11), (5.0, 10, 2), (5, 10, -1)):
        with pytest.raises(ValueError, match="overlong_penalty"):
            overlong_penalty(*bad)


def test_loop_helpers() -> None:
    off = RewardConfig()
    on = RewardConfig(overlong_shaping=True, overlong_max_len=20, overlong_cache_len=4, overlong_filtering=True)
    assert apply_overlong_shaping([1.0, 0.0, 1.0], [10, 18, 25], off) == [1.0, 0.0, 1.0]
    assert apply_overlong_shaping([1.0, 0.0, 1.0], [10, 18, 25], on) == [1.0, -0.5, 0.0]
    with pytest.raises(ValueError, match="lengths"):
        apply_overlong_shaping([1.0], [1, 2], on)
    reasons = ["stop", "length", "repetition", "length"]
    assert overlong_keep_mask(reasons, off) == [True] * 4
    assert overlong_keep_mask(reasons, on) == [True, False, True, False]


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field, value",
    [
        ("correct_reward", float("nan")),
        ("wrong_reward", "0"),
        ("math_formats", ("boxed", "latex")),
        ("math_formats", ()),
        ("math_timeout_s", 0),
        ("code_test_timeout_s", -1.0),
        ("code_memory_mb", 10),
        ("code_max_processes", 0),
        ("code_max_open_files", 3),
        ("code_output_cap_bytes", 1.5),
        ("code_extraction", "first"),
        ("code_uid_range", (5, 10)),
        ("code_uid_range", (2_000_000, 1_000_000)),
        ("code_partial_credit", "yes"),
        ("code_io_float_tolerance", 2.0),
        ("aime_max", -1),
        ("overlong_max_len", 0),
        ("overlong_cache_len", 30000),
    ],
)
def test_config_validation_names_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=rf"reward\.{field}"):
        RewardConfig(**{field: value})


def test_config_defaults_and_replace() -> None:
    cfg = RewardConfig()
    assert (cfg.correct_reward, cfg.wrong_reward, cfg.format_reward) == (1.0, 0.0, 0.0)
    assert cfg.math_formats == ("boxed", "answer_line", "gsm8k")
    assert (cfg.overlong_max_len, cfg.overlong_cache_len) == (20480, 4096)
    dapo = cfg.replace(wrong_reward=-1, overlong_shaping=True)
    assert dapo.wrong_reward == -1.0 and isinstance(dapo.wrong_reward, float) and cfg.wrong_reward == 0.0
    with pytest.raises(ValueError, match="unknown reward option"):
        cfg.replace(max_len=3)
