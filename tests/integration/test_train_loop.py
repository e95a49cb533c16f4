"""The training loop end to end: real vLLM, DeepSpeed, Ray and the tiny model (experiment=quick)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from cispo.config import ConfigError, load_config
from cispo.tracking import read_metrics
from cispo.cli.train import CONFIG_DIR

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VOLATILE = ("time/", "perf/", "actor/perf/")


def make_config(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        raw = compose(config_name="train", overrides=["experiment=quick", "logger=disabled", f"run_dir={run_dir}",
                                                      *overrides])
    from omegaconf import OmegaConf

    return load_config(OmegaConf.to_container(raw, resolve=True))


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    yield
    ray.shutdown()


def run(run_dir: Path, *overrides: str) -> Path:
    from cispo.driver.loop import train

    return train(make_config(run_dir, *overrides))


def stable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


def final_weights(run_dir: Path) -> dict:
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / latest / "trainer" / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def sweep_job(tmp_path_factory):
    """`python -m cispo.train -m` over the non-default algorithm presets, launched as soon as a test of this
    module asks for it (the first one does): the sweep's jobs, in their own processes with their own Ray,
    then run alongside the in-process runs instead of after them. Nothing in either measures time."""
    sweep = tmp_path_factory.mktemp("multirun") / "sweep"
    log = sweep.with_suffix(".log")
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cispo.train", "-m", "experiment=quick", "logger=disabled",
                                 "algorithm=dapo,grpo", "total_steps=1", "eval.at_start=false",
                                 f"hydra.sweep.dir={sweep}"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    yield proc, sweep, log
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# eval.every=2: the first half of the resumed run evaluates at its last step (2) like the straight one.
RESUME_COMMON = ("checkpoint.save_every=2", "eval.every=2")


@pytest.fixture(scope="module")
def straight(ray_cluster, tmp_path_factory) -> Path:
    """One quick run that several tests read (each run costs ~20 s of worker start-up): 4 steps,
    checkpoints at 2 and 4, eval at 0, 2 and 4 (eval.every=2), wandb offline. Tests that alter its files
    work on a copy."""
    return run(tmp_path_factory.mktemp("straight") / "run", *RESUME_COMMON, "total_steps=4", "logger=offline")


def test_quick_run_learns_logs_and_checkpoints(sweep_job, straight):  # sweep_job: started first, checked last
    run_dir = straight
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), "wandb's offline run (what `wandb sync` uploads)"
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert "eval/heldout/avg@2" in records[0] and "eval/heldout/avg@2" in records[-1]
    for r in records[1:]:
        for key in ("reward/mean", "actor/loss", "actor/dropped_token_frac", "time/generate", "time/score", "time/update",
                    "time/sync", "actor/grad_norm"):
            assert key in r, key
        assert r["actor/dropped_token_frac"] == 0.0  # CISPO never drops a token's gradient
    for r in records[2:]:  # sampled by vLLM after a weight sync: vLLM's log-probs are the trainer's
        assert r["actor/mismatch/logprob_abs_diff_max"] < 1e-3, r["actor/mismatch/logprob_abs_diff_max"]
    saved = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "step_00000004" in saved and "latest" in saved
    state = json.loads((run_dir / "checkpoints" / "step_00000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["consumed_prompts"] >= 4 * 4
    assert (run_dir / "config.yaml").is_file()


def test_resume_continues_exactly(straight, tmp_path):
    run(tmp_path / "resumed", "total_steps=2", *RESUME_COMMON)
    resumed = run(tmp_path / "resumed", "total_steps=4", *RESUME_COMMON)
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] == b[name]).all(), name
    assert stable(read_metrics(straight / "metrics.jsonl")) == stable(read_metrics(resumed / "metrics.jsonl"))
    # Training really moved the weights between the two checkpoints (else the comparison is vacuous).
    step2 = load_file(str(straight / "checkpoints" / "step_00000002" / "trainer" / "model" / "model.safetensors"))
    assert any((step2[n] != a[n]).any() for n in a)


def test_dynamic_sampling_cap_trains_on_what_it_has(ray_cluster, tmp_path):
    # An impossible task for the random model: no group has reward variance, so every round is dropped.
    run_dir = run(tmp_path / "cap", "total_steps=1", "eval.at_start=false", "model.warmstart.steps=0",
                  "algorithm.max_gen_rounds=2")
    (record,) = read_metrics(run_dir / "metrics.jsonl")
    assert record["dynamic_sampling/rounds"] == 2
    assert record["dynamic_sampling/shortfall"] == 4
    assert "actor/loss" not in record


def test_corrupted_checkpoint_falls_back_to_the_previous_one(straight, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(straight, run_dir, ignore=shutil.ignore_patterns("wandb"))  # the straight run stays intact
    weights = run_dir / "checkpoints" / "step_00000004" / "trainer" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    from cispo.checkpoint import CheckpointManager

    assert CheckpointManager(run_dir, keep_last=2).find_resume("auto").name == "step_00000002"


def test_bad_config_fails_before_anything_starts(tmp_path):
    with pytest.raises(ConfigError, match="trainer.lr"):
        make_config(tmp_path, "trainer.lr=fast")
    with pytest.raises(ConfigError, match="algorithm.max_gen_rounds"):
        make_config(tmp_path, "algorithm.max_gen_rounds=0")
    with pytest.raises(ConfigError, match="unknown key"):
        make_config(tmp_path, "+trainer.learning_rate=1")
    with pytest.raises(ConfigError, match="mini_batch_size"):
        make_config(tmp_path, "trainer.mini_batch_size=1000")
    with pytest.raises(ConfigError, match="old_log_probs=rollout needs rollout.engine.logprobs_mode"):
        make_config(tmp_path, "algorithm.old_log_probs=rollout", "rollout.engine.logprobs_mode=processed_logprobs")
    proc = subprocess.run([sys.executable, "-m", "cispo.train", "experiment=quick", "trainer.zero_stage=7",
                           f"run_dir={tmp_path / 'x'}"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "trainer.zero_stage" in proc.stderr + proc.stdout


def test_sigterm_during_a_step_checkpoints_and_exits(tmp_path):
    run_dir = tmp_path / "sig"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "cispo.train", "experiment=quick", "logger=disabled",
                             "total_steps=50", "checkpoint.save_every=100", "eval.every=0", f"run_dir={run_dir}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    steps = [r["step"] for r in read_metrics(metrics)]
    last = steps[-1]
    assert 1 <= last < 50
    assert (run_dir / "checkpoints" / f"step_{last:08d}").is_dir()
    # A calm console: step lines only; vLLM / DeepSpeed / Ray output lives in the run folder.
    for noise in (" INFO ", "[INFO]", "RotaryEmbedding", "(RolloutActor", "(PolicyActor", "Token authentication"):
        assert noise not in out, (noise, out[-3000:])
    step_lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert step_lines and all(len(line) <= 100 for line in step_lines), step_lines
    worker_logs = {p.name.split("-")[0] for p in (run_dir / "logs").iterdir()}
    assert worker_logs == {"rollout", "trainer0"}
    assert "Reloading weights inplace" in "".join(p.read_text() for p in (run_dir / "logs").glob("rollout-*.log"))
    assert "checkpoint step" in (run_dir / "train.log").read_text()


def test_multirun_sweep_runs_each_algorithm_preset_and_feeds_the_comparison_report(sweep_job, tmp_path):
    """A Hydra multirun over the non-default algorithm presets (the cispo default runs in the tests above):
    each preset runs a step, each job gets its folder, and cispo.compare reports on the sweep."""
    proc, sweep, log = sweep_job
    assert proc.wait(timeout=600) == 0, log.read_text()[-5000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_dapo_s0", "1_grpo_s0"]
    for job in jobs:
        records = read_metrics(sweep / job / "metrics.jsonl")
        assert [r["step"] for r in records] == [1]
        assert records[0]["actor/optimizer_steps"] >= 1, job
    assert read_metrics(sweep / "1_grpo_s0" / "metrics.jsonl")[0]["actor/kl_ref"] >= 0.0
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "cispo.compare", str(sweep), "--out", str(out), "--no-plots"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "dapo" in report and "grpo" in report
