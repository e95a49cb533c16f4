"""In-run recovery end to end (real Ray, vLLM, DeepSpeed; the quick preset): a hung trainer worker
and a killed one are recovered without a relaunch, and the run ends exactly as an untouched run; with
no restarts left the run stops with a clear message and exit code instead of a traceback.

The long randomized version (N trials, driver kills too) is `benchmarks/bench_chaos.py`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from cispo.driver.failures import EXIT_WORKER_FAILURE
from cispo.driver.supervisor import RESTARTS_KEY, iter_events
from cispo.tracking import read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
HANG_TIMEOUT_S = 10  # fault_tolerance.call_timeout_s in the test: a stopped worker is declared hung after this
# (a quick step's longest call takes ~2 s on two busy cores, the first after a rebuild included)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_chaos", ROOT / "benchmarks" / "bench_chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _wait(predicate, timeout: float, proc) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        assert proc.poll() is None, f"the run ended early with exit code {proc.returncode}"
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The untouched run the hung-then-killed run must end exactly as. Launched when the module starts, so
    that it runs alongside the no-restarts test's run (neither measures time; the hang test, which
    does, starts its own run only once this one has ended)."""
    path = tmp_path_factory.mktemp("chaos") / "reference"
    proc = _bench().launch(path)
    yield proc, path
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def test_no_restarts_left_stops_with_a_message_and_exit_code(reference, tmp_path: Path) -> None:
    # `reference` (unused here) runs meanwhile: this test comes first so that the two runs overlap.
    chaos = _bench()
    run = tmp_path / "run"
    log = tmp_path / "run.log"
    proc = chaos.launch(run, "fault_tolerance.max_restarts=0", "total_steps=50", log=log)
    watch = chaos.WorkerWatch(run)
    try:
        workers = chaos.wait_workers(watch, proc)
        assert chaos.wait_for_step(run, 1, proc)
        os.kill(next(w for w in workers if w["role"] == "trainer")["pid"], signal.SIGKILL)
        code = chaos.finish(proc, watch)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = log.read_text()
    assert code == EXIT_WORKER_FAILURE, out[-3000:]
    message = next(line for line in out.splitlines() if "stopping:" in line)
    assert "died" in message and "max_restarts=0" in message and "resumes from checkpoint step_" in message
    assert "Traceback" not in out.split("stopping:")[-1]  # no traceback wall after the message
    assert [e["action"] for e in iter_events(run)] == ["stop"]
    assert chaos.orphans_after(watch) == []


def test_hung_then_killed_trainer_is_recovered_in_run_identically(reference, tmp_path: Path) -> None:
    chaos = _bench()
    ref_proc, reference = reference
    assert ref_proc.wait(timeout=chaos.RUN_TIMEOUT_S) == 0, reference.with_suffix(".log").read_text()[-3000:]

    run = tmp_path / "run"
    proc = chaos.launch(run, f"fault_tolerance.call_timeout_s={HANG_TIMEOUT_S}", "fault_tolerance.max_restarts=2")
    watch = chaos.WorkerWatch(run)
    try:
        first = chaos.wait_workers(watch, proc)
        assert chaos.wait_for_step(run, 1, proc)
        trainer = next(w for w in first if w["role"] == "trainer")
        os.kill(trainer["pid"], signal.SIGSTOP)  # a hang: alive, silent

        def rebuilt() -> bool:
            now = watch.poll()
            return bool(now) and trainer["pid"] not in {w["pid"] for w in now}

        assert _wait(rebuilt, HANG_TIMEOUT_S + chaos.RUN_TIMEOUT_S, proc)
        logged = max(chaos.logged_steps(run))
        assert _wait(lambda: max(chaos.logged_steps(run)) > logged, chaos.RUN_TIMEOUT_S, proc)
        second = next(w for w in watch.poll() if w["role"] == "trainer")
        os.kill(second["pid"], signal.SIGKILL)  # a death (the OOM killer's signal)
        assert chaos.finish(proc, watch) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)

    events = list(iter_events(run))
    assert [(e["kind"], e["action"]) for e in events] == [("hang", "restart"), ("died", "restart")]
    assert events[0]["where"].startswith("TrainerGroup.") and events[0]["worker"] == events[1]["worker"] == "PolicyActor"
    assert chaos.compare(reference, run) == []  # same lines, same weights, every checkpoint verifies
    assert read_metrics(run)[-1][RESTARTS_KEY] == 2
    assert chaos.orphans_after(watch) == []
