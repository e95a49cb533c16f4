"""Trainer -> vLLM weight sync: after ``export_weights`` -> ``RolloutEngine.update_weights``, the
log-probs vLLM reports for its own samples equal the trainer's recomputation (fp32, tied head,
ZeRO-3 gathered weights).

Runs in its own interpreter (``isolated``): an in-process vLLM engine and an in-process DeepSpeed worker
share torch.distributed, and vLLM's teardown leaves DeepSpeed's backend bound to a group it destroyed,
so PolicyWorkers created later in the same process would fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from cispo.trainer import TrainBatch, TrainerConfig
from cispo.trainer.synthetic import random_batch
from cispo.trainer.worker import PolicyWorker
from rollout.config import EngineConfig, SamplingConfig
from rollout.models import prepare_model

pytestmark = [pytest.mark.slow, pytest.mark.isolated]

PROMPTS = [[5, 17, 42, 8], [9, 3, 77, 21, 30]]
TOLERANCE = 1e-4


def _rollout_batch(engine, seed: int) -> TrainBatch:
    results = engine.generate(PROMPTS, SamplingConfig(n=4, max_tokens=12, temperature=1.0, seed=seed))
    return TrainBatch.from_sequences(
        [r.prompt_ids for r in results], [r.response_ids for r in results],
        advantages=np.zeros(len(results)), group_ids=[r.group_id for r in results],
        rollout_log_probs=[r.logprobs for r in results])


def test_exported_weights_give_vllm_the_trainer_log_probs():
    from rollout.engine import RolloutEngine

    path = prepare_model("tiny-tied")
    engine = RolloutEngine(EngineConfig(model=str(path), dtype="float32", max_model_len=64))
    try:
        cfg = TrainerConfig(zero_stage=3, precision="fp32", lm_head_fp32=True, batch_size=8, mini_batch_size=8,
                            lr=5e-2, micro_batch_max_tokens=64, logprob_chunk_size=16)
        worker = PolicyWorker(cfg, path)
        vocab = engine.vocab_size
        worker.update(random_batch(8, prompt_len=4, max_response_len=8, vocab_size=vocab, seed=1))

        stale = _rollout_batch(engine, seed=0)  # vLLM still has the initial weights
        stale_gap = (worker.compute_log_probs(stale) - stale.rollout_log_probs)[stale.response_mask.bool()].abs()
        assert float(stale_gap.max()) > 100 * TOLERANCE  # the update changed the policy visibly

        stats = engine.update_weights(worker.export_weights())
        assert stats["num_tensors"] >= 1
        fresh = _rollout_batch(engine, seed=0)
        gap = (worker.compute_log_probs(fresh) - fresh.rollout_log_probs)[fresh.response_mask.bool()].abs()
        assert int(fresh.response_mask.sum()) >= 8 and float(gap.max()) <= TOLERANCE

        # The same agreement, seen through the update's mismatch metrics.
        metrics = worker.update(fresh)
        assert metrics["actor/mismatch/logprob_abs_diff_max"] <= TOLERANCE
        assert metrics["actor/mismatch/prob_corr"] > 0.999
    finally:
        engine.close()
