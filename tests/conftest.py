"""Suite-wide settings: vLLM's in-process engine and small CPU KV cache (vLLM CPU facts: docs/rollout.md);
tests marked ``isolated`` run in a fresh interpreter of their own."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ISOLATION_ENV = "CISPO_TEST_IN_ISOLATION"
ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _run_isolated(item: pytest.Item) -> None:
    """Run one test in a new interpreter: process-wide state it leaves (torch.distributed groups, vLLM's
    engine) cannot leak into the tests after it, whatever their order."""
    env = dict(os.environ, **{ISOLATION_ENV: "1"})
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", item.nodeid],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"isolated run of {item.nodeid} failed:\n{proc.stdout[-6000:]}{proc.stderr[-2000:]}", pytrace=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(ISOLATION_ENV):
        return
    for item in items:
        if item.get_closest_marker("isolated"):
            item.runtest = functools.partial(_run_isolated, item)
