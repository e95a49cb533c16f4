"""``python -m cispo.eval`` end to end on the tiny model (real vLLM), and model path resolution."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cispo.cli.eval import resolve_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_eval_command_writes_json_markdown_and_table(tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "cispo.eval", "model=tiny", "data=arithmetic", "eval=heldout", "eval.k=3",
         "eval.max_tokens=8", "limit=5", "dtype=float32", f"out_dir={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((out / "heldout.json").read_text())
    assert result["num_problems"] == 5 and result["num_samples"] == 3
    assert len(result["table"]) == 5 and all(row["samples"] == 3 for row in result["table"])
    assert 0.0 <= result["avg_at_k"] <= 1.0
    assert set(result["pass_at_k"]) == {"1", "2", "3"}
    assert "| problem | gold | correct |" in (out / "heldout.md").read_text()
    assert "avg@3" in proc.stdout


def test_resolve_model_accepts_hf_checkpoint_and_run_folders(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert resolve_model(str(hf)) == str(hf)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    (ckpt / "trainer" / "model").mkdir(parents=True)
    (ckpt / "trainer" / "model" / "config.json").write_text("{}")
    assert resolve_model(str(ckpt)) == str(ckpt / "trainer" / "model")
    assert resolve_model("tiny") == "tiny"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not an HF model folder"):
        resolve_model(str(empty))
