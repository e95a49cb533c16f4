"""Chaos trials: kill a random worker, or the whole driver, at a random moment of a quick run, and
check that the run finishes exactly as a run that was never touched, with no process left behind.

Each trial launches ``python -m cispo.train experiment=quick`` in its own session, waits until a
random step k (1 <= k < total_steps) is logged plus a random 0-``--window`` s (so the kill lands in
generation, the update, the weight sync, evaluation or a checkpoint write of step k+1), and then:
- ``worker``: kill -9 a random trainer or rollout worker (from the run's ``.owner.json``). The driver
  must recover in-run (``fault_tolerance.max_restarts``) and exit 0 by itself.
- ``driver``: kill -9 the driver's whole process group (its Ray workers live on in their own groups
  for a few seconds), then relaunch on the same run folder at once, as a supervisor would. The
  relaunch must wait for or kill the orphans and resume.

Every run uses a snapshot of the working tree taken at the start, so edits in the (shared) checkout
during the benchmark cannot make the reference and the trials differ.

A trial passes when metrics.jsonl equals the reference run's line for line (timings and ``fault/``
counters aside), the final checkpoint's weights are bit-identical, every step folder verifies, and
none of the worker processes ever recorded for the run is alive 15 s after it ended.

    flock /tmp/cispo-heavy.lock .venv/bin/python benchmarks/bench_chaos.py --trials 6
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULT = HERE / "results" / "chaos.md"
# Metric keys that legitimately differ between an interrupted and an uninterrupted run.
VOLATILE = ("time/", "perf/", "actor/perf/", "fault/")
ORPHAN_GRACE_S = 15.0
RUN_TIMEOUT_S = 900.0
TOTAL_STEPS = 12
QUICK = ("experiment=quick", "logger=disabled", f"total_steps={TOTAL_STEPS}", "checkpoint.save_every=1",
         "eval.every=2")


def snapshot(dest: Path) -> Path:
    """The working tree as it is now (tracked and untracked, not ignored files) copied into `dest`:
    what every run of the benchmark executes, whatever is edited in the checkout meanwhile."""
    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True).stdout
    present = b"\0".join(f for f in files.split(b"\0") if f and (ROOT / f.decode()).is_file())
    subprocess.run(["tar", "-c", "-C", str(ROOT), "--null", "-T", "-", "-f", str(dest / ".src.tar")],
                   input=present, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest), "-f", str(dest / ".src.tar")], check=True)
    return dest


def launch(run_dir: Path, *overrides: str, log: Path | None = None, src: Path = ROOT) -> subprocess.Popen:
    """`python -m cispo.train` on `run_dir` in a new session (its own process group, like a job),
    running the code in `src` (the checkout, or a `snapshot`)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(src))
    out = open(log or run_dir.with_suffix(".log"), "a")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "cispo.train", *QUICK, f"run_dir={run_dir}", *overrides],
                            cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue
    return steps


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> bool:
    """True once `step` is logged; False if the process ended first or the timeout passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(s >= step for s in logged_steps(run_dir)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


@dataclass
class WorkerWatch:
    """Every worker process the run ever recorded in `.owner.json` (to look for orphans at the end)."""

    run_dir: Path
    seen: dict[tuple[str, int], dict] = field(default_factory=dict)

    def poll(self) -> list[dict]:
        try:
            owner = json.loads((self.run_dir / ".owner.json").read_text())
        except (FileNotFoundError, ValueError):
            return []
        workers = owner.get("workers") or []
        for w in workers:
            self.seen[(w["host"], w["pid"])] = w
        return workers

    def alive(self) -> list[dict]:
        from cispo.checkpoint.lock import WorkerRecord

        return [w for w in self.seen.values()
                if WorkerRecord(w["role"], w["host"], w["pid"], w["start_time"]).alive_here()]


def wait_workers(watch: WorkerWatch, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        workers = watch.poll()
        if workers:
            return workers
        time.sleep(0.2)
    return []


def finish(proc: subprocess.Popen, watch: WorkerWatch, timeout: float = RUN_TIMEOUT_S) -> int:
    """Wait for the run to end (recording its workers meanwhile); returns its exit code."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        watch.poll()
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return 124
        time.sleep(0.5)
    return proc.returncode


def orphans_after(watch: WorkerWatch, grace: float = ORPHAN_GRACE_S) -> list[dict]:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and watch.alive():
        time.sleep(0.5)
    return watch.alive()


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


def compare(reference: Path, run: Path) -> list[str]:
    """Differences between two finished runs (empty: identical apart from timings and fault counters)."""
    from safetensors.torch import load_file

    from cispo.checkpoint import CheckpointManager, verify
    from cispo.tracking import read_metrics

    problems = []
    ref, got = stable(read_metrics(reference)), stable(read_metrics(run))
    if [r["step"] for r in ref] != [r["step"] for r in got]:
        problems.append(f"steps {[r['step'] for r in got]} != reference {[r['step'] for r in ref]}")
    else:
        for a, b in zip(ref, got):
            if a != b:
                keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                problems.append(f"step {a['step']}: {keys[:5]} differ")
    ckpts = CheckpointManager(run, keep_last=None).checkpoints()
    for c in ckpts:
        bad = verify(c.path)
        if bad:
            problems.append(f"{c.path.name} does not verify: {bad[0]}")
    names = {p.name for p in (run / "checkpoints").iterdir()}
    if any(n.startswith((".tmp_", ".trash_")) for n in names):
        problems.append(f"leftover temp folders: {sorted(names)}")
    latest_ref = (reference / "checkpoints" / "latest").read_text().strip()
    latest_run = (run / "checkpoints" / "latest").read_text().strip()
    if latest_ref != latest_run:
        problems.append(f"latest {latest_run} != reference {latest_ref}")
    else:
        a = load_file(str(reference / "checkpoints" / latest_ref / "trainer" / "model" / "model.safetensors"))
        b = load_file(str(run / "checkpoints" / latest_run / "trainer" / "model" / "model.safetensors"))
        if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
            problems.append("final weights differ from the reference")
    return problems


@dataclass
class Trial:
    kind: str
    target: str
    delay_s: float
    exit_code: int
    restarts: int
    problems: list[str]
    orphans: int
    seconds: float
    killed_at_step: int | None

    @property
    def injected(self) -> bool:
        """False when the run had already ended before the kill (the trial tested nothing)."""
        return "already gone" not in self.target and self.kind != "-"

    @property
    def identical(self) -> bool:
        return self.exit_code == 0 and not self.problems


def run_trial(run_dir: Path, kind: str, rng: random.Random, window: float, src: Path = ROOT) -> Trial:
    """One chaos trial on a fresh `run_dir` (see the module docstring)."""
    from cispo.driver.supervisor import iter_events

    start = time.monotonic()
    watch = WorkerWatch(run_dir)
    proc = launch(run_dir, src=src)
    workers = wait_workers(watch, proc)
    after = rng.randrange(1, TOTAL_STEPS)
    if not wait_for_step(run_dir, after, proc) or not workers:
        code = finish(proc, watch)
        return Trial(kind, "-", 0.0, code, 0, [f"run ended before step {after}"], len(orphans_after(watch)),
                     time.monotonic() - start, None)
    delay = rng.uniform(0.0, window)
    time.sleep(delay)
    at_step = max(logged_steps(run_dir), default=0)
    if proc.poll() is not None:
        code = finish(proc, watch)
        return Trial(kind, "run already over (already gone)", delay, code, 0, [], len(orphans_after(watch)),
                     time.monotonic() - start, at_step)
    if kind == "worker":
        victim = rng.choice(watch.poll() or workers)
        target = f"{victim['role']} pid {victim['pid']}"
        try:
            os.kill(victim["pid"], signal.SIGKILL)
        except ProcessLookupError:
            target += " (already gone)"
        code = finish(proc, watch)
    else:
        target = f"driver pgid {proc.pid}"
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            target += " (already gone)"
        proc.wait()
        watch.poll()
        proc = launch(run_dir, src=src)  # a supervisor relaunching at once
        code = finish(proc, watch)
    restarts = sum(1 for e in iter_events(run_dir) if e.get("action") == "restart")
    orphans = orphans_after(watch)
    return Trial(kind, target, delay, code, restarts, [], len(orphans), time.monotonic() - start, at_step)


def write_report(trials: list[Trial], reference_s: float, args: argparse.Namespace) -> None:
    injected = [t for t in trials if t.injected]
    identical = sum(t.identical for t in injected)
    orphans = sum(t.orphans for t in trials)
    missed = len(trials) - len(injected)
    lines = [
        "# Chaos trials (fault tolerance)",
        "",
        f"`flock /tmp/cispo-heavy.lock .venv/bin/python benchmarks/bench_chaos.py --trials {args.trials} "
        f"--seed {args.seed} --window {args.window:g}`: the quick preset ({' '.join(QUICK[2:])}), a random "
        f"kill -9 0-{args.window:g} s after a random step k < {TOTAL_STEPS} is logged; code: a snapshot of the "
        f"working tree. Reference run: {reference_s:.0f} s.",
        "",
        f"**{identical}/{len(injected)} identical, {orphans} orphans.**"
        + (f" ({missed} more trial(s) drew a moment after the run had ended: not counted.)" if missed else ""),
        "",
        "| # | kill | target | after step k | delay s | exit | in-run restarts | trial s | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, t in enumerate(trials, 1):
        result = "identical" if t.identical else "; ".join(t.problems) or f"exit {t.exit_code}"
        lines.append(f"| {i} | {t.kind} | {t.target} | {t.killed_at_step} | {t.delay_s:.1f} | {t.exit_code} | "
                     f"{t.restarts} | {t.seconds:.0f} | {result} |")
    lines += ["", "`worker`: the driver recovers in-run (rebuilds the workers, resumes from the latest checkpoint). "
              "`driver`: the whole process group is killed and the run relaunched at once on the same folder. "
              "Identical = same metrics lines (timings and `fault/` counters aside), bit-identical final "
              "weights, every checkpoint verifies, no temp folders left. Orphans = recorded worker processes "
              f"alive {ORPHAN_GRACE_S:.0f} s after the run ended.", ""]
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=float, default=0.4,
                        help="seconds after step k to pick the kill from (a quick step takes ~0.3 s)")
    parser.add_argument("--kinds", default="worker,driver")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cispo_chaos"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    src = snapshot(args.workdir / f"{stamp}-src")
    reference = args.workdir / f"{stamp}-reference"
    t0 = time.monotonic()
    code = launch(reference, src=src).wait()
    reference_s = time.monotonic() - t0
    if code != 0:
        raise SystemExit(f"reference run failed (exit {code}); see {reference.with_suffix('.log')}")
    kinds = args.kinds.split(",")
    trials = []
    for i in range(args.trials):
        kind = kinds[i % len(kinds)]
        run_dir = args.workdir / f"{stamp}-trial{i + 1}-{kind}"
        trial = run_trial(run_dir, kind, rng, args.window, src)
        if trial.exit_code == 0:
            trial.problems = compare(reference, run_dir)
        trials.append(trial)
        print(f"trial {i + 1}: {trial}", flush=True)
    write_report(trials, reference_s, args)


if __name__ == "__main__":
    main()
