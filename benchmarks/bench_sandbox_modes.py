"""Code-reward throughput as root and as an ordinary user, interleaved (root, user, root, user, ...).

    nice -n 5 .venv/bin/python benchmarks/bench_sandbox_modes.py --pairs 3 --limit 40

Each run is `benchmarks/bench_rewards.py --only code --limit N --no-write` in a fresh process: as root
the sandbox gets level `namespaces+cgroup`; as the unprivileged account (created once with useradd,
see tests/unprivileged.py) it gets `namespaces+rlimits` (a user namespace, no cgroup). Prints one row
per run (programs/s, all references passing and all broken versions failing) and the ratio
user/root of each adjacent pair with its min/median/max. Must be started as root.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.unprivileged import account, drop_to  # noqa: E402

THROUGHPUT = re.compile(r"([\d.]+) programs/s")
ALL_GOOD = re.compile(r"^\| (?:humaneval|mbpp|leetcode) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|", re.M)
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def run_once(limit: int, as_user: bool) -> tuple[float, bool, float]:
    """(programs per second, every reference passed and every broken version failed, load before)."""
    load = os.getloadavg()[0]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_rewards.py"), "--only", "code", "--limit", str(limit),
           "--no-write"]
    home = tempfile.mkdtemp(prefix="cispo-bench-")
    env = dict(ENV, HOME=home, TMPDIR=home)
    preexec = None
    stage = None
    if as_user:
        user = account()
        os.chown(home, user.pw_uid, user.pw_gid)
        stage = tempfile.mkdtemp(prefix="cispo-interp-")
        preexec = drop_to(user, Path(sys.base_prefix).resolve(), stage)
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True,
                             preexec_fn=preexec).stdout
    finally:
        if stage:
            os.rmdir(stage)
    rates = [float(x) for x in THROUGHPUT.findall(out)]
    checks = ALL_GOOD.findall(out)
    good = bool(checks) and all(a == b and c == d for a, b, c, d in checks)
    if not rates:
        raise SystemExit(f"no 'programs/s' in the benchmark's output:\n{out[-2000:]}")
    return rates[-1], good, load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=40, help="rows per code data set")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("start as root: the benchmark drops to the ordinary user for half of the runs")
    print("| order | run as | 1-min load before | programs/s | references pass, broken fail |")
    print("|---|---|---|---|---|")
    ratios = []
    for pair in range(args.pairs):
        rates = {}
        for as_user in (False, True):
            rate, good, load = run_once(args.limit, as_user)
            rates[as_user] = rate
            who = "ordinary user" if as_user else "root"
            print(f"| {2 * pair + as_user + 1} | {who} | {load:.1f} | {rate:.1f} | {'yes' if good else 'NO'} |", flush=True)
        ratios.append(rates[True] / rates[False])
    print(f"\nuser/root throughput per pair: {', '.join(f'{r:.2f}' for r in ratios)}; "
          f"min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f}")


if __name__ == "__main__":
    main()
