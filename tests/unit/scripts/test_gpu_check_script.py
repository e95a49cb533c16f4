"""scripts/gpu_check.sh on a machine without a GPU: argument handling and a clear refusal (what can
be checked on CPU; the checks themselves run on a GPU machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args: str, nvidia_smi: str | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the script with a PATH whose nvidia-smi (if any) prints `nvidia_smi`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("bash", "sed", "grep", "date", "mkdir", "dirname", "timeout", "cat", "head"):
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    if nvidia_smi is not None:
        fake = bin_dir / "nvidia-smi"
        fake.write_text(f"#!{shutil.which('bash')}\nprintf '%s' '{nvidia_smi}'\n")
        fake.chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([shutil.which("bash"), str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)


def test_help_lists_the_checks_and_exit_codes(tmp_path):
    r = run("--help", tmp_path=tmp_path)
    assert r.returncode == 0
    for word in ("--venv", "--skip-install", "--checks", "--time-limit", "quick_collective", "agreement_collective",
                 "throughput", "3 no NVIDIA GPU"):
        assert word in r.stdout, word


@pytest.mark.parametrize(("args", "message"), [
    (("--bogus",), "unknown argument '--bogus'"),
    (("--checks", "quick_collective,warp_drive"), "unknown check 'warp_drive'"),
    (("--time-limit", "5"), "--time-limit must be whole seconds >= 60, got '5'"),
    (("--time-limit", "ten"), "--time-limit must be whole seconds >= 60, got 'ten'"),
    (("--venv",), "--venv needs a folder"),
])
def test_bad_arguments_exit_2_naming_the_problem(tmp_path, args, message):
    r = run(*args, nvidia_smi="GPU 0: NVIDIA H100 (UUID: GPU-x)\n", tmp_path=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "gpu_check: 1 GPU" not in r.stdout  # stopped before looking for GPUs or making a run folder


@pytest.mark.parametrize("nvidia_smi", [None, ""], ids=["no nvidia-smi", "nvidia-smi lists no GPU"])
def test_without_a_gpu_it_refuses_clearly_and_installs_nothing(tmp_path, nvidia_smi):
    r = run("--checks", "throughput", nvidia_smi=nvidia_smi, tmp_path=tmp_path)
    assert r.returncode == 3
    assert "no NVIDIA GPU visible" in r.stderr and "scripts/test.sh" in r.stderr
    assert "CHECK" not in r.stdout and "logs in" not in r.stdout  # nothing installed or run


def test_the_check_helper_parses_its_commands():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_checks.py"), "agreement", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--channel" in r.stdout and "collective" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_checks.py"), "quick", "--gpus", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--channel" in r.stderr
