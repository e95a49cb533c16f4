"""The loop's state: fresh, or restored from a checkpoint's trainer_state.json."""

from __future__ import annotations

import json

from cispo.driver.dynamic_sampling import KeepRateEstimate
from cispo.driver.state import LoopState


def test_fresh_state_starts_at_step_zero_with_no_observation():
    s = LoopState.fresh(0.5)
    assert (s.start_step, s.elapsed, s.versions.queued, s.pending_weights) == (0, 0.0, 0, None)
    assert s.keep_rate.rate == KeepRateEstimate(0.5).rate


def test_resumed_state_takes_step_elapsed_and_the_keep_rate_estimate():
    estimate = KeepRateEstimate(0.5)
    estimate.observe(10, 3)
    saved = json.loads(json.dumps({"step": 6, "elapsed": 12.5, "keep_rate": estimate.state_dict()}))
    s = LoopState.resumed(saved, 0.5)
    assert (s.start_step, s.elapsed, s.versions.queued) == (6, 12.5, 6)
    assert s.keep_rate.state_dict() == estimate.state_dict() and s.keep_rate.rate == 0.3


def test_a_checkpoint_from_before_keep_rate_sizing_starts_from_no_observation():
    s = LoopState.resumed({"step": 2, "elapsed": 1.0}, 0.5)
    assert s.keep_rate.state_dict() == KeepRateEstimate(0.5).state_dict()
