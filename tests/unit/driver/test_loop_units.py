"""The loop's glue around the workers, with stand-ins for the trainer and rollout groups (their real
versions are tested in test_train_loop.py): which log-probs become pi_old, what is synced."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import torch

from cispo.config import TrainConfig
from cispo.driver.loop import Group, train_on_groups
from cispo.driver.dynamic_sampling import KeepRateEstimate
from cispo.driver.pipeline import PolicyVersions
from cispo.driver.state import LoopState
from cispo.driver.weights import ObjectStoreBroadcast
from cispo.tracking import PhaseTimer
from rewards import RewardResult
from rollout.types import RolloutResult


class RecordingTrainer:
    def __init__(self) -> None:
        self.log_prob_calls = 0
        self.batch = None

    def compute_log_probs(self, batch):
        self.log_prob_calls += 1
        return torch.full(batch.input_ids.shape, -9.0)

    def update(self, batch):
        self.batch = batch
        return {"actor/loss": 0.5}

    def export_weights_ref(self):
        return ("weights-ref", 123)

    def save(self, directory):
        raise AssertionError("train_on_groups never saves")

    def load(self, directory):
        raise AssertionError("train_on_groups never loads")

    def shutdown(self):
        pass


class RecordingRollout:
    def __init__(self) -> None:
        self.pushed = []
        self.finished = []

    def generate(self, prompts, sampling):
        raise AssertionError("train_on_groups never generates")

    def submit(self, prompts, sampling):
        raise AssertionError("train_on_groups never generates")

    def collect(self, pending):
        raise AssertionError("train_on_groups never generates")

    def update_weights(self, weights):
        self.pushed.append(weights)

    def submit_weights(self, weights):
        self.pushed.append(weights)
        return len(self.pushed)

    def finish_weights(self, pending):
        self.finished.append(pending)

    def shutdown(self):
        pass


def components(old_log_probs: str, mode: str = "sync") -> SimpleNamespace:
    cfg = TrainConfig()
    cfg.algorithm.old_log_probs = old_log_probs
    cfg.trainer.mini_batch_size = 2
    cfg.rollout.mode = mode
    trainer, rollout = RecordingTrainer(), RecordingRollout()
    state = LoopState(0, 0.0, KeepRateEstimate(cfg.algorithm.keep_rate_memory), PolicyVersions(0))
    return SimpleNamespace(cfg=cfg, pad_token_id=0, trainer=trainer, rollout=rollout, state=state,
                           weights=ObjectStoreBroadcast(trainer, rollout))


def group() -> Group:
    results = [RolloutResult(prompt_ids=[5, 6], response_ids=[7, 8, 2], logprobs=np.array([-0.5, -1.5, -0.25]),
                             finish_reason="stop", group_id=0, text="a"),
               RolloutResult(prompt_ids=[5, 6], response_ids=[9], logprobs=np.array([-2.0]),
                             finish_reason="stop", group_id=0, text="b")]
    verdicts = [RewardResult(score=1.0, correct=True, extracted="1", reason="correct"),
                RewardResult(score=0.0, correct=False, extracted="2", reason="wrong_answer")]
    return Group(results, [1.0, 0.0], verdicts)


def test_recompute_takes_pi_old_from_the_trainer_and_syncs_by_reference():
    c = components("recompute")
    metrics = train_on_groups(c, [group()], PhaseTimer())
    assert c.trainer.log_prob_calls == 1
    assert torch.equal(c.trainer.batch.old_log_probs, torch.full((2, 5), -9.0))
    assert c.rollout.pushed == [("weights-ref", 123)]
    assert metrics["actor/loss"] == 0.5 and metrics["actor/rows"] == 2.0


def test_rollout_mode_uses_the_engine_log_probs_without_a_trainer_pass():
    c = components("rollout")
    train_on_groups(c, [group()], PhaseTimer())
    assert c.trainer.log_prob_calls == 0
    old = c.trainer.batch.old_log_probs
    assert torch.equal(old, c.trainer.batch.rollout_log_probs)
    # Row 0: prompt (2 tokens) then the response's log-probs on positions 2-4; row 1 on position 2.
    assert old[0].tolist() == [0.0, 0.0, -0.5, -1.5, -0.25] and old[1].tolist() == [0.0, 0.0, -2.0, 0.0, 0.0]


def test_async_mode_queues_the_weights_and_waits_only_for_the_previous_update():
    c = components("rollout", mode="async")
    train_on_groups(c, [group()], PhaseTimer(), staleness=[1])
    assert c.rollout.pushed == [("weights-ref", 123)] and c.rollout.finished == [] and c.state.versions.queued == 1
    assert c.trainer.batch.staleness.tolist() == [1, 1]  # one tag per row of the group
    train_on_groups(c, [group()], PhaseTimer(), staleness=[0])
    assert c.rollout.finished == [1] and c.state.versions.queued == 2 and c.state.pending_weights == 2


def test_sync_mode_counts_a_version_per_update():
    c = components("rollout")
    train_on_groups(c, [group()], PhaseTimer())
    assert c.state.versions.queued == 1 and c.trainer.batch.staleness is None


def test_async_mode_exports_the_weights_outside_the_policy_version_lock():
    """Exporting takes seconds on real workers (a gather under ZeRO-3): the producer must be able to
    submit generations meanwhile, so only the queueing itself holds the lock."""
    c = components("rollout", mode="async")
    free_during_export = []

    def export_weights_ref():
        def probe_lock() -> None:  # from another thread, as the producer would
            lock = c.state.versions._cond
            got = lock.acquire(blocking=False)
            if got:
                lock.release()
            free_during_export.append(got)

        probe = threading.Thread(target=probe_lock)
        probe.start()
        probe.join()
        return ("weights-ref", 123)

    c.trainer.export_weights_ref = export_weights_ref
    train_on_groups(c, [group()], PhaseTimer(), staleness=[0])
    assert free_during_export == [True] and c.rollout.pushed == [("weights-ref", 123)]
